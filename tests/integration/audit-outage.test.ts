import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { AuditLog, type CallRecord } from '../../lib/core/audit/audit';
import { UsageAggregates } from '../../lib/core/aggregates/usage';
import { createLogger } from '../../lib/core/log/logger';
import { RedisStore } from '../../lib/store/redis';
import { event } from '../fixtures/detector';
import { startRedisServer } from '../fixtures/redis-server';

/** The next `name` event (unlike events.once, ioredis's reconnect 'error' events do not reject it). */
const next = (emitter: NodeJS.EventEmitter, name: string) => new Promise<void>((resolve) => emitter.once(name, () => resolve()));

/**
 * The audit writer through a Redis outage (a failover: the server goes away for a moment and comes back on the
 * same address): a redis-server of this test's own, killed and started again on the same port.
 */
describe('the audit trail and usage figures through a store outage', () => {
  it('keeps a call recorded while Redis is down and writes it, with its usage, once Redis is back, before later calls', async () => {
    let server = await startRedisServer();
    const store = new RedisStore(server.url, { prefix: 'keyward-test:audit-outage:', commandTimeoutMs: 500 });
    const lines: string[] = [];
    const logger = createLogger({ level: 'info', destination: new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(chunk.toString('utf8')), done()) }) });
    const audit = new AuditLog(store, 86_400_000, logger);
    try {
      await store.ready();
      const started = Date.now();
      const lost = next(store.client, 'close');
      await server.kill();
      await lost;

      audit.recordCall(event({ requestId: 'during-outage', units: 4000 }));
      await expect(audit.flush()).rejects.toThrow();

      const back = next(store.client, 'ready');
      server = await startRedisServer({ port: server.port });
      await back;
      audit.recordCall(event({ requestId: 'after-outage', units: 5 }));
      await audit.flush();

      const { records } = await audit.query({ type: 'call' }, { limit: 10, order: 'asc' });
      expect((records as CallRecord[]).map((record) => record.requestId)).toEqual(['during-outage', 'after-outage']);
      // Read as another process would (the dashboard under npm start): from the store alone.
      const usage = new UsageAggregates(store, async () => {});
      const { total } = await usage.series({ period: 'hour', fromMs: started - 3_600_000, toMs: Date.now() });
      expect(total).toMatchObject({ calls: 2, units: 4005 });
      // Counts only: a record's contents are never logged.
      expect(lines.some((line) => line.includes('during-outage'))).toBe(false);
    } finally {
      await store.close();
      await server.stop();
    }
  });
});
