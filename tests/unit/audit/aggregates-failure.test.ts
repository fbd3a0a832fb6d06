import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { AuditLog } from '../../../lib/core/audit/audit';
import { createLogger } from '../../../lib/core/log/logger';
import { MemoryStore } from '../../../lib/store/memory';
import { StoreUnavailableError, type Store } from '../../../lib/store/types';

/**
 * The audit writer over a store whose usage-aggregates write fails (the memory store, wrapped: its
 * incrementHashes refuses) while the audit log itself is written.
 */
describe('a usage-aggregates write that fails', () => {
  it('does not fail the admin record it went out with: the record is stored and recordAdmin resolves (the failure is logged)', async () => {
    const memory = new MemoryStore();
    const store = new Proxy(memory, {
      get(target, prop, receiver) {
        if (prop === 'incrementHashes') return async () => Promise.reject(new StoreUnavailableError('the store did not answer'));
        const value = Reflect.get(target, prop, receiver) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    }) as Store;
    const lines: string[] = [];
    const destination = new Writable({ write: (chunk: Buffer, _encoding, done) => (lines.push(chunk.toString('utf8')), done()) });
    const logger = createLogger({ level: 'info', destination });
    const audit = new AuditLog(store, 86_400_000, logger);
    // A call's record brings usage increments into the same batch as the admin record.
    audit.recordCall({
      requestId: 'r', userId: 'local:ada', sessionId: 's', upstream: 'openai', route: '/chat', target: null, method: 'POST', status: 200,
      keyFingerprint: null, bytesIn: 1, bytesOut: 1, durationMs: 5, outcome: 'complete', errorCode: null, clientIp: null, units: 3, scrubberHits: 0,
    });
    await expect(audit.recordAdmin({ action: 'detector.throttle', actor: 'detector', targetUser: 'local:ada', outcome: 'calls' })).resolves.toBeUndefined();
    const { records } = await audit.query({ type: 'admin' }, { limit: 10 });
    expect(records).toMatchObject([{ action: 'detector.throttle', outcome: 'calls' }]);
    expect(lines.some((line) => line.includes('usage aggregates write failed'))).toBe(true);
  });
});
