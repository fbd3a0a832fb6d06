import { randomUUID } from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { createLogger } from '../../../lib/core/log/logger';
import type { ProxyEvent } from '../../../lib/core/pipeline';
import { createRuntime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import { event } from '../../fixtures/detector';
import { testSessionSecrets } from '../../fixtures/secrets';

/**
 * A user's admin page (app/admin/users/users-data.ts loadUser) over a real runtime and the in-memory store, with
 * the daily usage kept longer than one usage query may span (3,000 buckets; the setting allows 3,650 days).
 */
const runtime = createRuntime({
  env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory', KEYWARD_USAGE_DAYS_RETENTION_DAYS: '3650' },
  store: new MemoryStore(),
  upstreams: [],
  logger: createLogger({ level: 'silent' }),
  serving: false,
});
vi.mock('@/keyward', () => ({ keyward: { getRuntime: () => runtime, upstreamSummaries: () => [] } }));

/** A completed call, as the pipeline reports it (the detector fixture's event, on this test's upstream). */
function call(userId: string): ProxyEvent {
  const fields = { userId, keyFingerprint: null, requestId: randomUUID(), sessionId: null, clientIp: null, upstream: 'svc', route: '/items', method: 'GET' };
  return event({ ...fields, bytesIn: 0, bytesOut: 10, durationMs: 3, units: 0 });
}

describe("a user's admin page", () => {
  it('shows the user with KEYWARD_USAGE_DAYS_RETENTION_DAYS above 3,000 (not "data unavailable" for a query over the bucket limit)', async () => {
    runtime.onComplete!(call('oidc:ada'));
    await runtime.audit.flush();
    const { loadUser } = await import('../../../app/admin/users/users-data');
    const page = await loadUser('oidc:ada');
    expect(page?.user.summary).toMatchObject({ userId: 'oidc:ada', calls: 1 });
  });
});
