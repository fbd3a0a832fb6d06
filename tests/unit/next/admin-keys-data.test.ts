import { randomUUID } from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { defineUpstream } from '../../../lib/core/config/load';
import { createLogger } from '../../../lib/core/log/logger';
import type { ProxyEvent } from '../../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import { event } from '../../fixtures/detector';
import { randomSecret, testSessionSecrets } from '../../fixtures/secrets';

/**
 * The Keys page's data (app/admin/admin-data.ts loadKeyRings) read from real runtimes sharing one store: the
 * rotation (and the calls) written by an instance whose clock differs from the one that renders the page.
 */
const store = new MemoryStore();
const env = { ...testSessionSecrets(), SVC_KEY: randomSecret('svc'), KEYWARD_VAULT_SECRET: randomSecret('vault'), KEYWARD_STORE: 'memory' };
const upstreams = [
  defineUpstream('svc', {
    baseUrl: 'https://api.svc.test/',
    auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
    routes: [{ method: 'GET', path: '/items' }],
  }),
];
const logger = createLogger({ level: 'silent' });
let page: Runtime;

vi.mock('@/keyward', () => ({ keyward: { getRuntime: () => page } }));

describe('the Keys page', () => {
  it('lists the rings after a rotation made by an instance whose clock runs 90 s ahead (no "from after to" failure)', async () => {
    const ahead = createRuntime({ env, upstreams, store, logger, now: () => Date.now() + 90_000, serving: false });
    page = createRuntime({ env, upstreams, store, logger, serving: false });
    const rotation = await ahead.keyRings.rotate('svc', randomSecret('next'), { actor: 'local:root', skipCanary: true });
    expect(rotation.state).toBe('switched');
    const { loadKeyRings } = await import('../../../app/admin/admin-data');
    const { rings } = await loadKeyRings();
    expect(rings.map((ring) => ring.upstream)).toEqual(['svc']);
    expect(rings[0]!.versions.map((version) => version.status).sort()).toEqual(['fallback', 'serving']);
  });

  it('counts every call since a rotation 10 h ago when minute buckets are kept 1 h (KEYWARD_USAGE_MINUTES_RETENTION_HOURS)', async () => {
    const shared = new MemoryStore();
    const oneHour = { ...env, KEYWARD_USAGE_MINUTES_RETENTION_HOURS: '1' };
    const rotatedAt = Date.now() - 10 * 3_600_000;
    let clock = rotatedAt;
    const writer = createRuntime({ env: oneHour, upstreams, store: shared, logger, now: () => clock, serving: false });
    page = createRuntime({ env: oneHour, upstreams, store: shared, logger, serving: false });
    const rotation = await writer.keyRings.rotate('svc', randomSecret('next'), { actor: 'local:root', skipCanary: true });
    // One call each hour since the rotation: only the last is still in a minute bucket when the page is read.
    for (let hour = 0; hour < 10; hour++) {
      clock = rotatedAt + hour * 3_600_000 + 300_000;
      writer.onComplete!(call(rotation.to));
      await writer.audit.flush();
    }
    const { loadKeyRings } = await import('../../../app/admin/admin-data');
    const { rings } = await loadKeyRings();
    expect(rings[0]!.since).toBe(rotatedAt);
    expect(rings[0]!.versions.find((version) => version.fingerprint === rotation.to)?.callsSince).toBe(10);
  });

  it('says no key serves when the version calls pick is never sent (sealed under another KEYWARD_VAULT_SECRET) or none is left, not while a fallback serves', async () => {
    const shared = new MemoryStore();
    // An operator rotated on a server started with another vault secret: the new version does not open here.
    const otherVault = createRuntime({ env: { ...env, KEYWARD_VAULT_SECRET: randomSecret('vault') }, upstreams, store: shared, logger, serving: false });
    page = createRuntime({ env, upstreams, store: shared, logger, serving: false });
    const { loadKeyRings } = await import('../../../app/admin/admin-data');
    const ring = async () => (await loadKeyRings()).rings[0]!;
    const original = (await ring()).versions[0]!.fingerprint;
    expect((await ring()).noneServes).toBe(false);

    const rotation = await otherVault.keyRings.rotate('svc', randomSecret('next'), { actor: 'cli:root', skipCanary: true });
    expect((await ring()).versions.map((version) => version.status).sort()).toEqual(['fallback', 'unreadable']);
    expect((await ring()).noneServes).toBe(true);
    await expect(page.keyRings.credential(page.registry.get('svc')!)).rejects.toMatchObject({ code: 'credential_unavailable' });

    // The unreadable version revoked: calls fall back to the replaced one in its grace window. It serves, though
    // its status says `fallback` and no version says `serving`.
    await page.keyRings.revoke(rotation.to);
    expect((await ring()).versions.map((version) => version.status).sort()).toEqual(['fallback', 'revoked']);
    await expect(page.keyRings.credential(page.registry.get('svc')!)).resolves.toBeDefined();
    expect((await ring()).noneServes).toBe(false);

    // Every version revoked: none is left.
    await page.keyRings.revoke(original);
    expect((await ring()).noneServes).toBe(true);
  });
});

/** A completed call, as the pipeline reports it (the detector fixture's event, on this test's upstream). */
function call(keyFingerprint: string): ProxyEvent {
  const fields = { keyFingerprint, requestId: randomUUID(), sessionId: null, clientIp: null, upstream: 'svc', route: '/items', method: 'GET' };
  return event({ ...fields, bytesIn: 0, bytesOut: 10, durationMs: 3, units: 0 });
}
