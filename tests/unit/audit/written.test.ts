import { afterEach, describe, expect, it, vi } from 'vitest';
import { AuditLog } from '../../../lib/core/audit/audit';
import { createLogger } from '../../../lib/core/log/logger';
import type { ProxyEvent } from '../../../lib/core/pipeline';
import { MemoryStore } from '../../../lib/store/memory';
import { StoreUnavailableError, type Store } from '../../../lib/store/types';

/**
 * `AuditLog.written()`, which a route handler's `after()` hands to Next (lib/next/proxy-route.ts) so that a stop
 * waits for the call's record: it waits for the batch the call went into, and writes nothing sooner (one batch for
 * many calls, as before). The real audit writer over the memory store, its batch writes counted.
 */
function countingStore(fail = false): { store: Store; batches: number[] } {
  const memory = new MemoryStore();
  const batches: number[] = [];
  const store = new Proxy(memory, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (prop === 'appendBatch') {
        return async (...args: Parameters<MemoryStore['appendBatch']>) => {
          batches.push(args[1].length);
          if (fail) throw new StoreUnavailableError('the store did not answer');
          return memory.appendBatch(...args);
        };
      }
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  }) as Store;
  return { store, batches };
}

function call(requestId: string): ProxyEvent {
  return {
    requestId, userId: 'local:ada', sessionId: 's', upstream: 'echo', route: '/items/:id', target: null, method: 'GET', status: 200,
    keyFingerprint: null, bytesIn: 0, bytesOut: 1, durationMs: 1, outcome: 'complete', errorCode: null, clientIp: null, units: 0, scrubberHits: 0,
  };
}

const silent = createLogger({ level: 'silent' });

describe('AuditLog.written', () => {
  it('resolves once the calls recorded so far are in the store, all in one batch: waiting writes nothing sooner', async () => {
    const { store, batches } = countingStore();
    const audit = new AuditLog(store, 86_400_000, silent);
    const waits: Array<Promise<void>> = [];
    for (const id of ['a', 'b', 'c']) {
      audit.recordCall(call(id));
      waits.push(audit.written());
    }
    expect(batches).toEqual([]);
    await Promise.all(waits);
    expect(batches).toEqual([3]);
    const { records } = await audit.query({ type: 'call' }, { limit: 10 });
    expect(records.map((record) => record.type === 'call' && record.requestId).sort()).toEqual(['a', 'b', 'c']);
  });

  it('waits for the batch under way when there is nothing left to time', async () => {
    const { store, batches } = countingStore();
    const audit = new AuditLog(store, 86_400_000, silent);
    audit.recordCall(call('a'));
    const flushed = audit.flush();
    const written = audit.written();
    await written;
    await flushed;
    expect(batches).toEqual([1]);
    await expect(audit.written()).resolves.toBeUndefined();
  });

  it('resolves when the write fails too (the records are kept for the next one): a stop is never held by it', async () => {
    const { store, batches } = countingStore(true);
    const audit = new AuditLog(store, 86_400_000, silent);
    audit.recordCall(call('a'));
    await expect(audit.written()).resolves.toBeUndefined();
    expect(batches).toEqual([1]);
  });

  describe('while the writer backs off after a failed write', () => {
    afterEach(() => vi.useRealTimers());

    it('resolves with the next batch, not with the retry seconds later: a stop (next start, Vercel) is not held by the back-off', async () => {
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
      const { store, batches } = countingStore(true);
      const audit = new AuditLog(store, 86_400_000, silent, () => Date.now());
      audit.recordCall(call('a'));
      const first = audit.written();
      await vi.advanceTimersByTimeAsync(100);
      await first;
      expect(batches).toEqual([1]);
      // The retry is 500 ms away: a call recorded now resolves within its batch time, with nothing written.
      audit.recordCall(call('b'));
      let settled = false;
      void audit.written().then(() => (settled = true));
      await vi.advanceTimersByTimeAsync(100);
      expect(settled).toBe(true);
      expect(batches).toEqual([1]);
      // The retry still comes, and takes both records.
      await vi.advanceTimersByTimeAsync(500);
      expect(batches).toEqual([1, 2]);
    });
  });
});
