import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { afterAll, expect, it } from 'vitest';
import { AuditLog } from '../../lib/core/audit/audit';
import { Alerts, type Alert, type Decision } from '../../lib/core/detect/alerts';
import { suspensionKey } from '../../lib/core/detect/marks';
import { createLogger } from '../../lib/core/log/logger';
import { SessionRevocations } from '../../lib/core/session/revocation';
import { RedisStore } from '../../lib/store/redis';
import { REDIS_URL } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';

/**
 * A suspension outlives the retention on Redis as on the embedded stores (tests/unit/detect/detector.test.ts):
 * Redis expires keys on its own clock, so the retention here is short and the test waits for the other alerts to
 * expire (polling, no timing assertion).
 */
const prefix = `keyward-test:det-suspend:${randomUUID()}:`;
const RETENTION_MS = 300;
let store: RedisStore | undefined;

afterAll(async () => {
  await store?.close();
  await deleteKeysUnder(REDIS_URL, prefix);
});

async function until(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200 && !(await check()); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  expect(await check()).toBe(true);
}

it('keeps a suspending alert listed and undoable past the retention on Redis, and lets it go once undone', async () => {
  store = new RedisStore(REDIS_URL, { prefix });
  await store.ready();
  const logger = createLogger({ level: 'silent', destination: new Writable({ write: (_c, _e, cb) => cb() }) });
  const revocations = new SessionRevocations(store, 8 * 3_600_000);
  const audit = new AuditLog(store, 86_400_000, logger);
  const alerts = new Alerts(store, revocations, audit, logger, RETENTION_MS, null);
  const throttle = { limit: 1, windowSeconds: 60, forMinutes: 15 };
  const revoke: Decision = { rule: 'decoy', action: 'revoke', reason: 'decoy key used', subject: { userId: 'local:ada' }, evidence: {} };
  const suspending = await alerts.apply(revoke, throttle);
  const other = await alerts.apply({ rule: 'key_calls', action: 'alert', reason: 'busy key', subject: { fingerprint: 'f' }, evidence: {} }, throttle);
  const listed = async (): Promise<Alert[]> => (await alerts.list({ limit: 10 })).alerts;

  // The other alert goes with the retention; the suspending one stays, also once its log entry is trimmed.
  await until(async () => !(await listed()).some((a) => a.id === other.id));
  await store.delete('log:alerts'); // what trimming by the retention does to its entry, which Redis trims lazily
  expect((await listed()).map((a) => [a.id, a.state])).toEqual([[suspending.id, 'active']]);
  expect(await store.get(suspensionKey('local:ada'))).toBe(suspending.id);

  expect((await alerts.undo(suspending.id, 'local:root')).state).toBe('undone');
  expect(await store.get(suspensionKey('local:ada'))).toBeNull();
  expect((await listed()).map((a) => [a.id, a.state])).toEqual([[suspending.id, 'undone']]);
  // Undone, it goes with the retention, and leaves the index.
  await until(async () => (await listed()).length === 0);
  expect(JSON.parse((await store.get('alerts:suspending'))!)).toEqual([]);
});
