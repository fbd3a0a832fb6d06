import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { AuditLog, type CallRecord } from '../../../lib/core/audit/audit';
import { UsageCollector } from '../../../lib/core/aggregates/collector';
import { DEFAULT_RETENTION } from '../../../lib/core/aggregates/model';
import { UsageAggregates } from '../../../lib/core/aggregates/usage';
import { createLogger } from '../../../lib/core/log/logger';
import { MemoryStore } from '../../../lib/store/memory';
import { StoreUnavailableError, type Store } from '../../../lib/store/types';
import { event } from '../../fixtures/detector';

/** A memory store whose writes of the audit log and the usage aggregates fail while `down` is set. */
function setup(limits: { retainedRecords?: number; retainedUsageFields?: number }) {
  const clock = { now: Date.UTC(2026, 11, 2, 10, 0, 0) };
  const memory = new MemoryStore(() => clock.now);
  const state = { down: false };
  const store = new Proxy(memory, {
    get(target, prop, receiver) {
      if ((prop === 'appendBatch' || prop === 'incrementHashes') && state.down) {
        return async () => Promise.reject(new StoreUnavailableError('memory'));
      }
      const value = Reflect.get(target, prop, receiver) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  }) as Store;
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({ write: (chunk: Buffer, _e, done) => (lines.push(JSON.parse(chunk.toString('utf8')) as Record<string, unknown>), done()) });
  const audit = new AuditLog(store, 86_400_000, createLogger({ level: 'info', destination }), () => clock.now, DEFAULT_RETENTION, limits);
  const usage = new UsageAggregates(store, async () => {});
  const calls = (upstream?: string) =>
    usage.series({ period: 'hour', fromMs: clock.now - 3_600_000, toMs: clock.now, ...(upstream ? { upstream } : {}) }).then((series) => series.total.calls);
  return { clock, state, audit, calls, lines };
}

describe('records and usage kept through a store outage, past their bound', () => {
  it('drops the oldest records past the bound, counts them in the log, and writes the rest in order', async () => {
    const { state, audit, lines } = setup({ retainedRecords: 3 });
    state.down = true;
    for (let i = 0; i < 5; i++) {
      audit.recordCall(event({ requestId: `call-${i}` }));
      await expect(audit.flush()).rejects.toThrow();
    }
    const failures = lines.filter((line) => line.msg === 'audit write failed');
    expect(failures.at(-1)).toMatchObject({ kept: 3, droppedTotal: 2 });
    expect(failures.map((line) => line.dropped)).toEqual([0, 0, 0, 1, 1]);

    state.down = false;
    await audit.flush();
    const { records } = await audit.query({ type: 'call' }, { limit: 10, order: 'asc' });
    expect((records as CallRecord[]).map((record) => record.requestId)).toEqual(['call-2', 'call-3', 'call-4']);
    // Written once: the next flush writes nothing more.
    await audit.flush();
    expect((await audit.query({ type: 'call' }, { limit: 10 })).records).toHaveLength(3);
  });

  it('drops the oldest usage counters past the bound, counted, and writes the rest', async () => {
    const first = event({ requestId: 'a', upstream: 'openai', userId: 'local:ada', route: '/v1/chat' });
    const second = event({ requestId: 'b', upstream: 'crm', userId: 'local:bob', route: '/items' });
    // The bound holds one of these calls' counters (they share none: other upstream, route and user).
    const collector = new UsageCollector();
    collector.add(first, Date.UTC(2026, 11, 2, 10, 0, 0));
    const fields = collector.drain(DEFAULT_RETENTION).length;
    const { state, audit, calls, lines } = setup({ retainedUsageFields: fields });

    state.down = true;
    audit.recordCall(first);
    await expect(audit.flush()).rejects.toThrow();
    audit.recordCall(second);
    await expect(audit.flush()).rejects.toThrow();
    expect(lines.filter((line) => line.msg === 'usage aggregates write failed').at(-1)).toMatchObject({ keptFields: fields, droppedFields: fields });

    state.down = false;
    await audit.flush();
    expect(await calls('openai')).toBe(0);
    expect(await calls('crm')).toBe(1);
    expect(await calls()).toBe(1);
  });
});
