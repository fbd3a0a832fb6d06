import { afterEach, describe, expect, it, vi } from 'vitest';
import { AuditLog, REFUSED_RECORDS_PER_MINUTE, type CallRecord } from '../../../lib/core/audit/audit';
import { UsageAggregates } from '../../../lib/core/aggregates/usage';
import { MemoryStore } from '../../../lib/store/memory';
import { Writable } from 'node:stream';
import { createLogger } from '../../../lib/core/log/logger';
import { event } from '../../fixtures/detector';

function setup() {
  const clock = { now: Date.UTC(2026, 11, 2, 10, 0, 0) };
  const store = new MemoryStore(() => clock.now);
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(chunk.toString('utf8'));
      callback();
    },
  });
  const log = { logger: createLogger({ level: 'debug', destination }), lines };
  const audit = new AuditLog(store, 30 * 86_400_000, log.logger, () => clock.now);
  const usage = new UsageAggregates(store, () => audit.flush());
  const calls = async () =>
    (await audit.query({ type: 'call' }, { limit: 100_000, maxScan: 100_000 })).records as CallRecord[];
  return { clock, store, audit, usage, calls, log };
}

const unauthenticated = event({
  userId: null,
  sessionId: null,
  status: 401,
  outcome: 'refused',
  errorCode: 'unauthenticated',
  keyFingerprint: null,
  units: 0,
});

describe('calls Keyward answered with an error, in the audit trail', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it(`are recorded up to ${REFUSED_RECORDS_PER_MINUTE} a minute without a session, and as many per user; the usage figures count them all`, async () => {
    const { clock, audit, usage, calls, log } = setup();
    const flood = REFUSED_RECORDS_PER_MINUTE + 150;
    for (let i = 0; i < flood; i++) audit.recordCall({ ...unauthenticated, requestId: `anon-${i}` });
    // A user over a rate limit has a budget of their own, and calls that went through are always recorded.
    for (let i = 0; i < flood; i++)
      audit.recordCall(
        event({ requestId: `ada-429-${i}`, status: 429, outcome: 'refused', errorCode: 'rate_limited', units: 0 }),
      );
    for (let i = 0; i < 5; i++) audit.recordCall(event({ requestId: `ada-ok-${i}` }));
    audit.recordCall(
      event({ requestId: 'bob-refused', userId: 'local:bob', status: 403, outcome: 'refused', errorCode: 'forbidden', units: 0 }),
    );

    const recorded = await calls();
    const of = (test: (record: CallRecord) => boolean) => recorded.filter(test).length;
    expect(of((record) => record.userId === null)).toBe(REFUSED_RECORDS_PER_MINUTE);
    expect(of((record) => record.requestId.startsWith('ada-429-'))).toBe(REFUSED_RECORDS_PER_MINUTE);
    expect(of((record) => record.requestId.startsWith('ada-ok-'))).toBe(5);
    expect(of((record) => record.requestId === 'bob-refused')).toBe(1);
    // The first ones are kept (the start of a flood is what an investigation needs).
    expect(recorded.some((record) => record.requestId === 'anon-0')).toBe(true);
    expect(recorded.some((record) => record.requestId === `anon-${flood - 1}`)).toBe(false);

    const total = (await usage.series({ period: 'hour', fromMs: clock.now - 3_600_000, toMs: clock.now })).total;
    expect(total.calls).toBe(2 * flood + 6);
    expect(total.status.refused).toBe(2 * flood + 1);

    // The next minute starts a new budget, and says how many were left out.
    clock.now += 60_000;
    audit.recordCall({ ...unauthenticated, requestId: 'anon-next-minute' });
    expect((await calls()).some((record) => record.requestId === 'anon-next-minute')).toBe(true);
    const warning = log.lines.find((line) => line.includes('over the per-minute record limit'));
    expect(warning).toBeDefined();
    expect(JSON.parse(warning!)).toMatchObject({ suppressed: 2 * 150 });
  });

  it('refusals over the limit reach the usage figures within the batch delay, with no later call to carry them', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const { clock, store, audit } = setup();
    // The dashboard as Next's process reads it under `npm start`: from the store, without this log's flush.
    const elsewhere = new UsageAggregates(store, async () => {});
    const calls = async () => (await elsewhere.series({ period: 'hour', fromMs: clock.now - 3_600_000, toMs: clock.now })).total.calls;
    for (let i = 0; i < REFUSED_RECORDS_PER_MINUTE; i++) audit.recordCall({ ...unauthenticated, requestId: `r-${i}` });
    await audit.flush();
    expect(await calls()).toBe(REFUSED_RECORDS_PER_MINUTE);
    // Over the limit: counted, not recorded; and nothing comes after them.
    for (let i = 0; i < 10; i++) audit.recordCall({ ...unauthenticated, requestId: `over-${i}` });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await calls()).toBe(REFUSED_RECORDS_PER_MINUTE + 10);
  });

  it('its own 5xx too (a credential that cannot be opened), and a flood that stops is reported when its minute ends', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout'] });
    const { audit, calls, log } = setup();
    const broken = event({
      status: 503,
      outcome: 'unavailable',
      errorCode: 'credential_unavailable',
      keyFingerprint: null,
      units: 0,
    });
    for (let i = 0; i < REFUSED_RECORDS_PER_MINUTE + 20; i++) audit.recordCall({ ...broken, requestId: `b-${i}` });
    expect((await calls()).length).toBe(REFUSED_RECORDS_PER_MINUTE);
    expect(log.lines.some((line) => line.includes('over the per-minute record limit'))).toBe(false);
    vi.advanceTimersByTime(60_000);
    const warning = log.lines.find((line) => line.includes('over the per-minute record limit'));
    expect(JSON.parse(warning!)).toMatchObject({ suppressed: 20 });
  });

  it('never hide calls the upstream answered, or calls charged to a budget, behind a flood of refusals', async () => {
    const { audit, calls } = setup();
    for (let i = 0; i < REFUSED_RECORDS_PER_MINUTE + 10; i++) {
      audit.recordCall(event({ requestId: `r-${i}`, status: 404, outcome: 'refused', errorCode: 'route_not_found', units: 0 }));
    }
    // Ended with an error code, but answered by the upstream (or sent to it and charged): each is on record.
    const answered = [
      event({ requestId: 'ws-idle', status: 101, outcome: 'aborted', errorCode: 'idle_timeout', units: 5000 }),
      event({ requestId: 'ws-too-big', status: 101, outcome: 'aborted', errorCode: 'payload_too_large', units: 5000 }),
      event({ requestId: 'stream-broke', status: 200, outcome: 'error', errorCode: 'upstream_unreachable', units: 800 }),
      event({ requestId: 'sent-timed-out', status: 504, outcome: 'upstream_error', errorCode: 'upstream_timeout', units: 800 }),
    ];
    for (const call of answered) audit.recordCall(call);
    const ids = new Set((await calls()).map((record) => record.requestId));
    for (const call of answered) expect(ids.has(call.requestId), call.requestId).toBe(true);
    expect([...ids].filter((id) => id.startsWith('r-'))).toHaveLength(REFUSED_RECORDS_PER_MINUTE);
  });
});
