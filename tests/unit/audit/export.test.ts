import { afterAll, describe, expect, it } from 'vitest';
import { handleAudit } from '../../../lib/core/api/admin';
import { createLogger } from '../../../lib/core/log/logger';
import { createRuntime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import { testSessionSecrets } from '../../fixtures/secrets';
import { bearerToken } from '../../fixtures/session';

/**
 * `GET /api/admin/audit?format=jsonl` over a log where a selective filter matches nothing for long stretches:
 * the export reads the log a window at a time (at most 20,000 entries a query), and a window may hold no match.
 * The real runtime, audit log, handler and (in-memory) store; an admin's bearer session.
 */
const secrets = testSessionSecrets();
const store = new MemoryStore();
const runtime = createRuntime({
  env: { ...secrets, KEYWARD_STORE: 'memory' },
  store,
  upstreams: [],
  logger: createLogger({ level: 'silent' }),
});
const ORIGIN = 'https://app.keyward.test';
const DAY = 86_400_000;

afterAll(async () => {
  await runtime.store.close();
});

async function exportOf(query: string): Promise<string[]> {
  const token = await bearerToken(secrets.KEYWARD_SESSION_SECRET, { sub: 'local:root', roles: ['admin'] });
  const response = await handleAudit(new Request(`${ORIGIN}/api/admin/audit?${query}`, { headers: { authorization: `Bearer ${token}` } }), runtime);
  expect(response.status).toBe(200);
  // A body that never ends fails the test by its timeout rather than hanging the run.
  const text = await Promise.race([
    response.text(),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the export never ended')), 10_000)),
  ]);
  return text.split('\n').filter(Boolean);
}

describe('the audit export (JSON Lines)', () => {
  it('goes past windows of the log with no match: 45,000 records of one user, then 3 of another, exported whole', async () => {
    const start = Date.now() - DAY;
    const record = (i: number, actor: string) => ({
      value: JSON.stringify({ type: 'admin', at: new Date(start + i).toISOString(), action: 'user_key.put', actor, outcome: 'stored' }),
      at: start + i,
    });
    const entries = Array.from({ length: 45_000 }, (_, i) => record(i, 'local:ada'));
    entries.push(record(50_000, 'local:mallory'), record(50_001, 'local:mallory'), record(50_002, 'local:mallory'));
    await store.appendBatch('audit', entries, 90 * DAY);

    const lines = await exportOf('format=jsonl&userId=local:mallory');
    expect(lines.map((line) => (JSON.parse(line) as { actor: string }).actor)).toEqual(['local:mallory', 'local:mallory', 'local:mallory']);
    // A filter that matches nothing at all ends too, with an empty body.
    expect(await exportOf('format=jsonl&userId=local:nobody')).toEqual([]);
  });
});
