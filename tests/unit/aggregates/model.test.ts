import { describe, expect, it } from 'vitest';
import { UsageCollector } from '../../../lib/core/aggregates/collector';
import {
  DEFAULT_RETENTION,
  LATENCY_BOUNDS_MS,
  bucketKey,
  bucketStart,
  eventCounters,
  latencyBucket,
  quantile,
  splitField,
  statusClass,
} from '../../../lib/core/aggregates/model';
import { UsageAggregates } from '../../../lib/core/aggregates/usage';
import type { ProxyEvent } from '../../../lib/core/pipeline';
import { MemoryStore } from '../../../lib/store/memory';

const T = Date.parse('2026-11-23T20:11:19.362Z');

function event(fields: Partial<ProxyEvent> = {}): ProxyEvent {
  return {
    requestId: 'r',
    userId: 'local:ada',
    sessionId: 's',
    upstream: 'openai',
    route: '/chat/completions',
    target: null,
    method: 'POST',
    status: 200,
    keyFingerprint: '64a8e56f852b',
    bytesIn: 312,
    bytesOut: 1840,
    durationMs: 40,
    outcome: 'complete',
    errorCode: null,
    clientIp: null,
    units: 431,
    scrubberHits: 0,
    ...fields,
  };
}

/** A histogram with `counts` in the buckets named by their upper bound ('inf' for the last). */
function histogram(counts: Record<string, number>): number[] {
  return [...LATENCY_BOUNDS_MS.map(String), 'inf'].map((bound) => counts[bound] ?? 0);
}

describe('buckets', () => {
  it('start at the minute, hour and UTC day that hold the time', () => {
    expect(new Date(bucketStart(T, 'minute')).toISOString()).toBe('2026-11-23T20:11:00.000Z');
    expect(new Date(bucketStart(T, 'hour')).toISOString()).toBe('2026-11-23T20:00:00.000Z');
    expect(new Date(bucketStart(T, 'day')).toISOString()).toBe('2026-11-23T00:00:00.000Z');
    expect(bucketStart(bucketStart(T, 'hour'), 'hour')).toBe(bucketStart(T, 'hour'));
  });

  it('put a latency in the first bucket whose bound it does not exceed (bounds are inclusive)', () => {
    expect(latencyBucket(0)).toBe(0);
    expect(latencyBucket(5)).toBe(0);
    expect(latencyBucket(5.01)).toBe(1);
    expect(latencyBucket(10_000)).toBe(LATENCY_BOUNDS_MS.length - 1);
    expect(latencyBucket(10_000.5)).toBe(LATENCY_BOUNDS_MS.length);
  });

  it('classify statuses, with Keyward’s own refusals apart', () => {
    expect(statusClass({ status: 204, outcome: 'complete' })).toBe('2xx');
    expect(statusClass({ status: 304, outcome: 'complete' })).toBe('3xx');
    expect(statusClass({ status: 404, outcome: 'complete' })).toBe('4xx');
    expect(statusClass({ status: 502, outcome: 'upstream_error' })).toBe('5xx');
    expect(statusClass({ status: 503, outcome: 'unavailable' })).toBe('5xx');
    expect(statusClass({ status: 429, outcome: 'refused' })).toBe('refused');
  });

  it('count one call, whole bytes and units, an error only for 5xx or a broken stream, and scrubber hits when present', () => {
    const counters = (fields: Partial<ProxyEvent> & { scrubberHits?: number }) => eventCounters(event(fields));
    expect(counters({}).slice(0, 6)).toEqual([1, 0, 312, 1840, 431, 0]);
    expect(counters({ status: 404 })[1]).toBe(0);
    expect(counters({ status: 503, outcome: 'refused' })[1]).toBe(1);
    expect(counters({ outcome: 'error' })[1]).toBe(1);
    expect(counters({ status: 503, outcome: 'unavailable' })[1]).toBe(1);
    expect(counters({ status: 502, outcome: 'upstream_error' })[1]).toBe(1);
    expect(counters({ outcome: 'aborted' })[1]).toBe(0);
    expect(counters({ units: 2.2, bytesIn: Number.NaN })[4]).toBe(3);
    expect(counters({ units: 2.2, bytesIn: Number.NaN })[2]).toBe(0);
    expect(counters({ scrubberHits: 2 })[5]).toBe(2);
  });
});

describe('quantile (Prometheus histogram_quantile)', () => {
  it('interpolates inside the bucket that holds the rank', () => {
    // 10 calls ≤ 5 ms, 10 calls in (5, 10]: the median is the top of the first bucket, p95 at 9/10 of the second.
    const h = histogram({ 5: 10, 10: 10 });
    expect(quantile(h, 0.5)).toBe(5);
    expect(quantile(h, 0.95)).toBe(9.5);
    // 100 calls in (100, 250]: p50 = 100 + 150 × 0.5, p95 = 100 + 150 × 0.95.
    expect(quantile(histogram({ 250: 100 }), 0.5)).toBe(175);
    expect(quantile(histogram({ 250: 100 }), 0.95)).toBe(242.5);
  });

  it('reports the highest bound for a rank among the slowest calls, and null without calls', () => {
    expect(quantile(histogram({ 50: 1, inf: 19 }), 0.95)).toBe(10_000);
    expect(quantile(histogram({}), 0.5)).toBeNull();
  });

  it('skips empty buckets before the rank', () => {
    expect(quantile(histogram({ 5: 1, 1000: 1 }), 0.95)).toBe(500 + 500 * 0.9);
  });
});

describe('UsageCollector', () => {
  it('merges calls of a batch into one increment per field, in every period and rollup, with retention', () => {
    const collector = new UsageCollector();
    collector.add(event(), T);
    collector.add(event({ durationMs: 400, status: 500, outcome: 'upstream_error' }), T + 60_000); // next minute
    expect(collector.size).toBe(2);
    const increments = collector.drain(DEFAULT_RETENTION);
    expect(collector.size).toBe(0);
    const value = (key: string, field: string) =>
      increments.filter((i) => i.key === key && i.field === field).map((i) => i.by);
    const hour = bucketStart(T, 'hour');
    expect(value(bucketKey('hour', 'upstream', hour), '["openai"] c')).toEqual([2]);
    expect(value(bucketKey('hour', 'route', hour), '["openai","/chat/completions"] e')).toEqual([1]);
    expect(value(bucketKey('hour', 'key', hour), '["openai","64a8e56f852b"] bo')).toEqual([3680]);
    expect(value(bucketKey('hour', 'user', hour), '["local:ada","openai"] h50')).toEqual([1]);
    expect(value(bucketKey('hour', 'user', hour), '["local:ada","openai"] h500')).toEqual([1]);
    expect(value(bucketKey('minute', 'upstream', bucketStart(T, 'minute')), '["openai"] c')).toEqual([1]);
    expect(value(bucketKey('minute', 'upstream', bucketStart(T, 'minute') + 60_000), '["openai"] c')).toEqual([1]);
    // Nothing zero is written.
    expect(increments.every((i) => i.by > 0)).toBe(true);
    const minuteKey = increments.find((i) => i.key.startsWith('usage:minute:'))!;
    expect(minuteKey.expiresAt).toBe(bucketStart(T, 'minute') + 60_000 + DEFAULT_RETENTION.minute);
    const dayKey = increments.find((i) => i.key.startsWith('usage:day:'))!;
    expect(dayKey.expiresAt).toBe(bucketStart(T, 'day') + 86_400_000 + DEFAULT_RETENTION.day);
  });

  it('two calls reporting absurd usage (each at the safe-integer cap) do not sink the batch: a sum stops at the cap', async () => {
    const collector = new UsageCollector();
    collector.add(event({ units: Number.MAX_SAFE_INTEGER }), T);
    collector.add(event({ units: Number.MAX_SAFE_INTEGER, userId: 'local:bob' }), T);
    collector.add(event({ userId: 'local:cy' }), T);
    const increments = collector.drain(DEFAULT_RETENTION);
    expect(increments.every((entry) => Number.isSafeInteger(entry.by))).toBe(true);
    // Written, every user's calls with them (before: one TypeError, and the whole batch lost).
    await new MemoryStore().incrementHashes(increments);
  });

  it('keeps null dimensions (no route, no key, no user) apart from any string', () => {
    const collector = new UsageCollector();
    collector.add(event({ route: null, keyFingerprint: null, userId: null }), T);
    collector.add(event({ route: 'null', keyFingerprint: 'null', userId: 'null' }), T);
    const fields = collector
      .drain(DEFAULT_RETENTION)
      .filter((i) => i.key.startsWith('usage:hour:user:'))
      .map((i) => splitField(i.field)!.dimensions);
    expect(new Set(fields)).toEqual(new Set(['[null,"openai"]', '["null","openai"]']));
  });
});

describe('UsageAggregates (series and top from the store only)', () => {
  async function stored(events: Array<[Partial<ProxyEvent>, number]>) {
    const store = new MemoryStore(() => T);
    const collector = new UsageCollector();
    for (const [fields, at] of events) collector.add(event(fields), at);
    await store.incrementHashes(collector.drain(DEFAULT_RETENTION));
    return new UsageAggregates(store, async () => {});
  }

  it('answers one point per bucket (zeros included), filtered by one dimension, with percentiles from merged buckets', async () => {
    const minute = bucketStart(T, 'minute');
    const usage = await stored([
      [{ durationMs: 3 }, minute],
      [{ durationMs: 4, userId: 'local:bo' }, minute],
      [{ durationMs: 200, route: '/models' }, minute + 120_000],
      [
        { durationMs: 20_000, upstream: 'gh', keyFingerprint: 'aaaaaaaaaaaa', status: 429, outcome: 'refused' },
        minute + 120_000,
      ],
    ]);
    const all = await usage.series({ period: 'minute', fromMs: minute, toMs: minute + 120_000 });
    expect(all.points.map((p) => [p.at, p.calls])).toEqual([
      [new Date(minute).toISOString(), 2],
      [new Date(minute + 60_000).toISOString(), 0],
      [new Date(minute + 120_000).toISOString(), 2],
    ]);
    expect(all.points[1]!.p50).toBeNull();
    expect(all.total).toMatchObject({
      calls: 4,
      errors: 0,
      bytesIn: 4 * 312,
      units: 4 * 431,
      status: { '2xx': 3, refused: 1 },
    });
    // (3 ms, 4 ms) ≤ 5, 200 in (100, 250], 20 s beyond every bound: p50 = rank 2 = top of the first bucket.
    expect(all.total.p50).toBe(5);
    expect(all.total.p95).toBe(10_000);
    expect(all.total.latency).toMatchObject({ '5': 2, '250': 1, '+Inf': 1 });

    expect((await usage.series({ period: 'hour', fromMs: T, toMs: T, upstream: 'openai' })).total.calls).toBe(3);
    expect((await usage.series({ period: 'hour', fromMs: T, toMs: T, route: '/models' })).total.calls).toBe(1);
    expect(
      (await usage.series({ period: 'hour', fromMs: T, toMs: T, keyVersion: 'aaaaaaaaaaaa' })).total.status.refused,
    ).toBe(1);
    expect((await usage.series({ period: 'day', fromMs: T, toMs: T, user: 'local:bo' })).total.calls).toBe(1);
    expect(
      (await usage.series({ period: 'day', fromMs: T, toMs: T, user: 'local:ada', upstream: 'gh' })).total.calls,
    ).toBe(1);
    // One read for a user's total and each upstream's share: the same figures as one series per upstream.
    const mine = await usage.seriesByUpstream({ period: 'hour', fromMs: T, toMs: T, user: 'local:ada' });
    expect(mine.series).toEqual(await usage.series({ period: 'hour', fromMs: T, toMs: T, user: 'local:ada' }));
    expect([...mine.upstreams.keys()].sort()).toEqual(['gh', 'openai']);
    for (const upstream of ['gh', 'openai']) {
      expect(mine.upstreams.get(upstream)).toEqual((await usage.series({ period: 'hour', fromMs: T, toMs: T, user: 'local:ada', upstream })).total);
    }
    expect(mine.upstreams.get('gh')!.calls + mine.upstreams.get('openai')!.calls).toBe(mine.series.total.calls);
    // Naming the upstreams reads that user's fields of each bucket only, not every user's rows: the same figures.
    const reads: Array<Array<Record<string, number>>> = [];
    const readHashes = usage['store'].readHashes.bind(usage['store']);
    usage['store'].readHashes = async (keys, fields) => {
      const hashes = await readHashes(keys, fields);
      reads.push(hashes);
      return hashes;
    };
    const named = await usage.seriesByUpstream({ period: 'hour', fromMs: T, toMs: T, user: 'local:ada', upstreams: ['gh', 'openai', 'unused'] });
    expect(named).toEqual(mine);
    expect(reads.flat().flatMap((hash) => Object.keys(hash)).every((field) => field.startsWith('["local:ada",'))).toBe(true);
    expect(reads.flat().flatMap((hash) => Object.keys(hash)).length).toBeGreaterThan(0);
    const ghOnly = await usage.seriesByUpstream({ period: 'hour', fromMs: T, toMs: T, user: 'local:ada', upstreams: ['gh'] });
    expect(ghOnly.series.total).toEqual(mine.upstreams.get('gh'));
    expect([...ghOnly.upstreams.keys()]).toEqual(['gh']);
    await expect(
      usage.series({ period: 'day', fromMs: T, toMs: T, user: 'local:ada', route: '/models' }),
    ).rejects.toMatchObject({ code: 'bad_request' });
    await expect(usage.series({ period: 'minute', fromMs: T, toMs: T - 60_000 })).rejects.toMatchObject({
      code: 'bad_request',
    });
    await expect(usage.series({ period: 'minute', fromMs: T - 3_000 * 60_000, toMs: T })).rejects.toMatchObject({
      code: 'bad_request',
    });
  });

  it('ranks users, key versions, routes and upstreams by calls, ties by name, up to the limit', async () => {
    const usage = await stored([
      [{ userId: 'local:bo' }, T],
      [{ userId: 'local:bo', upstream: 'gh' }, T],
      [{ userId: 'local:cy' }, T],
      [{ userId: 'local:ada', route: '/models' }, T],
    ]);
    const window = { period: 'hour' as const, fromMs: T, toMs: T };
    expect((await usage.top({ ...window, by: 'user', limit: 10 })).map((r) => [r.user, r.calls])).toEqual([
      ['local:bo', 2],
      ['local:ada', 1],
      ['local:cy', 1],
    ]);
    expect(
      (await usage.top({ ...window, by: 'user', limit: 1, upstream: 'openai' })).map((r) => [r.user, r.calls]),
    ).toEqual([['local:ada', 1]]);
    expect((await usage.top({ ...window, by: 'route', limit: 10 })).map((r) => [r.upstream, r.route, r.calls])).toEqual(
      [
        ['openai', '/chat/completions', 2],
        ['gh', '/chat/completions', 1],
        ['openai', '/models', 1],
      ],
    );
    expect(
      (await usage.top({ ...window, by: 'keyVersion', limit: 10 })).map((r) => [r.upstream, r.keyVersion, r.calls]),
    ).toEqual([
      ['openai', '64a8e56f852b', 3],
      ['gh', '64a8e56f852b', 1],
    ]);
    expect((await usage.top({ ...window, by: 'upstream', limit: 10 })).map((r) => [r.upstream, r.calls])).toEqual([
      ['openai', 3],
      ['gh', 1],
    ]);
  });
});
