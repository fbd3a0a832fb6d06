import { afterAll, describe, expect, it } from 'vitest';
import { handleKeyRevoke } from '../../lib/core/api/admin';
import { defineUpstream } from '../../lib/core/config/load';
import { keyAdmin } from '../../lib/core/keys/admin';
import { keyFingerprints } from '../../lib/core/keys/fingerprint';
import { createRuntime } from '../../lib/core/runtime';
import { MemoryStore } from '../../lib/store/memory';
import { StoreUnavailableError } from '../../lib/store/types';
import { capturingLogger, findLeak } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';

/**
 * A revoke by fingerprint goes through every upstream whose ring holds the key. When the store refuses one
 * upstream's write, the others are still revoked (a leaked key is taken out wherever it can be), each one done
 * is on the audit trail, and the admin is told the revoke did not finish. The store is the in-memory one with
 * the key ring's write for one upstream made to fail, as a store outage on that key would; nothing else here is
 * stood in for. The upstreams are never called, so their address needs nothing listening.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const ADMIN = 'root@keyward.test';
const secrets = testSessionSecrets();

class FailingRingStore extends MemoryStore {
  failing: string | null = null;
  /** How many audit writes to fail next. */
  failAppends = 0;

  override async appendBatch(stream: string, entries: readonly { readonly value: string; readonly at: number }[], retentionMs: number): Promise<void> {
    if (this.failAppends > 0 && this.failAppends--) throw new StoreUnavailableError('memory', new Error('connection lost'));
    return super.appendBatch(stream, entries, retentionMs);
  }

  override async replaceIfEquals(key: string, expected: string, value: string): Promise<boolean> {
    if (key === this.failing) throw new StoreUnavailableError('memory', new Error('connection lost'));
    return super.replaceIfEquals(key, expected, value);
  }

  override async setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean> {
    if (key === this.failing) throw new StoreUnavailableError('memory', new Error('connection lost'));
    return super.setIfAbsent(key, value, ttlMs);
  }
}

const ring = (id: string, env: string) =>
  defineUpstream(id, {
    baseUrl: 'http://127.0.0.1:9/v1/',
    auth: { type: 'header', name: 'x-api-key', secret: { env } },
    routes: [{ method: 'GET', path: '/items/:id' }],
    keys: {},
  });

const logs = capturingLogger();
afterAll(() => {
  expect(findLeak(logs.lines.join('\n'), [shared]), 'a key in a log line').toBeNull();
});
const shared = randomSecret('shared');

describe('revoking a key held by several upstreams when one of them cannot be written', () => {
  it('revokes the others, audits each one revoked, and answers with an error', async () => {
    const store = new FailingRingStore();
    const runtime = createRuntime({
      env: { ...secrets, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, FIRST_KEY: shared, SECOND_KEY: shared },
      upstreams: [ring('first', 'FIRST_KEY'), ring('second', 'SECOND_KEY')],
      store,
      logger: logs.logger,
    });
    const print = keyFingerprints(secrets.KEYWARD_SESSION_SECRET).of(shared);
    const cookie = await sessionCookie(secrets.AUTH_SECRET, { sub: ADMIN, roles: ['user', 'admin'], sid: 'sid-admin' });
    const revoke = () =>
      handleKeyRevoke(
        new Request(`${APP_ORIGIN}/api/admin/keys/revoke`, {
          method: 'POST',
          headers: { cookie, origin: APP_ORIGIN, 'x-keyward-csrf': '1', 'content-type': 'application/json' },
          body: JSON.stringify({ fingerprint: print }),
        }),
        runtime,
      );
    const revokes = async () => (await runtime.audit.query({}, { limit: 100 })).records.filter((r) => r.type === 'admin' && r.action === 'key.revoke');

    store.failing = 'keyring:first';
    const failed = await revoke();
    expect(failed.status).toBe(503);
    expect(await failed.json()).toMatchObject({ error: { code: 'store_unavailable' } });
    // The second upstream's version is revoked even though the first's write failed before it.
    const states = async (id: string) => (await runtime.keyRings.list()).find((r) => r.upstream === id)!.versions.map((v) => v.state);
    expect(await states('second')).toEqual(['revoked']);
    expect(await revokes()).toEqual([expect.objectContaining({ actor: ADMIN, upstream: 'second', fingerprint: print, outcome: 'revoked' })]);

    // Once the store answers again, the same revoke finishes the first and records it; the second, revoked
    // already, is reported and recorded again (a first audit write that failed is made good the same way).
    store.failing = null;
    const finished = await revoke();
    expect(finished.status).toBe(200);
    expect(((await finished.json()) as { revoked: Array<{ upstream: string }> }).revoked.map((r) => r.upstream)).toEqual(['first', 'second']);
    expect(await states('first')).toEqual(['revoked']);
    expect((await revokes()).map((r) => r.type === 'admin' && r.upstream).sort()).toEqual(['first', 'second', 'second']);
  });

  it('a revoke whose audit record could not be written is recorded once the store answers, and so is the revoke sent again', async () => {
    const store = new FailingRingStore();
    const runtime = createRuntime({
      env: { ...secrets, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, FIRST_KEY: shared, SECOND_KEY: shared },
      upstreams: [ring('first', 'FIRST_KEY')],
      store,
      logger: logs.logger,
    });
    const print = keyFingerprints(secrets.KEYWARD_SESSION_SECRET).of(shared);
    const admin = keyAdmin(runtime.keyRings, runtime.audit, ADMIN);
    store.failAppends = 1;
    await expect(admin.revoke(print)).rejects.toBeInstanceOf(StoreUnavailableError);
    expect(await admin.revoke(print)).toEqual([{ upstream: 'first', version: 'env:FIRST_KEY' }]);
    const records = (await runtime.audit.query({}, { limit: 100 })).records.filter((r) => r.type === 'admin' && r.action === 'key.revoke');
    // The first attempt's record, kept through the failed write (the revoke it records was done), then the second's.
    const revoked = expect.objectContaining({ upstream: 'first', fingerprint: print, outcome: 'revoked' });
    expect(records).toEqual([revoked, revoked]);
  });
});
