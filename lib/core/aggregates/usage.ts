import { KeywardError } from '../errors';
import type { Store } from '../../store/types';
import {
  LATENCY_BOUNDS_MS,
  M,
  METRIC_INDEX,
  PERIOD_MS,
  ROLLUPS,
  STATUS_CLASSES,
  addCounters,
  bucketKey,
  bucketStart,
  emptyCounters,
  fieldName,
  METRICS,
  quantile,
  splitField,
  type Counters,
  type Dimension,
  type Period,
  type Rollup,
  type StatusClass,
} from './model';

/** At most this many buckets per query (48 h of minutes is 2,880): one store round trip reads them all. */
export const MAX_BUCKETS = 3_000;

export interface UsageWindow {
  readonly period: Period;
  readonly fromMs: number;
  readonly toMs: number;
}

export interface SeriesQuery extends UsageWindow {
  readonly upstream?: string;
  readonly route?: string;
  readonly keyVersion?: string;
  readonly user?: string;
  /**
   * With `user`: the upstreams whose rows to read (a user's own page names the configured ones); calls to other
   * upstreams are left out. Without it, the upstreams called in the window (from the `upstream` rollup, a row
   * per upstream). Either way only that user's fields of each bucket are read, never every user's rows.
   */
  readonly upstreams?: readonly string[];
}

export type TopBy = 'user' | 'keyVersion' | 'route' | 'upstream';

export interface TopQuery extends UsageWindow {
  readonly by: TopBy;
  readonly limit: number;
  readonly upstream?: string;
  /** Only rows of these upstreams (before the limit): the Overview's top keys, of upstreams with service keys. */
  readonly upstreams?: readonly string[];
}

/** What a bucket (or a row of a top list) shows: counters summed, latency estimated from the merged buckets. */
export interface UsageFigures {
  readonly calls: number;
  readonly errors: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly units: number;
  readonly scrubberHits: number;
  /** Calls per status class; `refused` is a 4xx answered by Keyward itself (policy, limits, session); its own 5xx count as 5xx. */
  readonly status: Readonly<Record<StatusClass, number>>;
  /** Estimated latency percentiles in ms (null without calls), from `latency` (buckets by upper bound). */
  readonly p50: number | null;
  readonly p95: number | null;
  readonly latency: Readonly<Record<string, number>>;
}

export interface SeriesPoint extends UsageFigures {
  /** The bucket's start (ISO 8601, UTC). */
  readonly at: string;
}

export interface Series {
  readonly period: Period;
  readonly from: string;
  readonly to: string;
  readonly points: SeriesPoint[];
  readonly total: UsageFigures;
}

export type TopRow = UsageFigures & {
  readonly upstream?: string | null;
  readonly route?: string | null;
  readonly keyVersion?: string | null;
  readonly user?: string | null;
};

/**
 * Reads usage from the aggregates only (never the audit log): one round trip for every bucket of the window.
 * `flush` first writes what this instance has not written yet, so a view includes its own latest calls.
 */
export class UsageAggregates {
  constructor(
    private readonly store: Store,
    private readonly flush: () => Promise<void>,
  ) {}

  async series(query: SeriesQuery): Promise<Series> {
    return (await this.seriesByUpstream(query)).series;
  }

  /**
   * `series`, and each upstream's total over the window from the same read of the buckets: a user's usage page
   * reads the window once rather than once more per upstream.
   */
  async seriesByUpstream(query: SeriesQuery): Promise<{ series: Series; upstreams: ReadonlyMap<string, UsageFigures> }> {
    const { rollup, filter } = seriesRollup(query);
    const starts = bucketStarts(query);
    const hashes = await this.read(query.period, rollup, starts, await this.userFields(query, starts));
    const perUpstream = new Map<string, Counters>();
    const points = hashes.map((hash, index) => {
      const counters = emptyCounters();
      forEachRow(hash, rollup, (dimensions, row) => {
        if (!filter(dimensions)) return;
        addCounters(counters, row);
        if (typeof dimensions.upstream !== 'string') return;
        let upstream = perUpstream.get(dimensions.upstream);
        if (!upstream) perUpstream.set(dimensions.upstream, (upstream = emptyCounters()));
        addCounters(upstream, row);
      });
      return { at: new Date(starts[index]!).toISOString(), counters };
    });
    const total = emptyCounters();
    for (const point of points) addCounters(total, point.counters);
    const series: Series = {
      period: query.period,
      from: new Date(starts[0]!).toISOString(),
      to: new Date(starts.at(-1)! + PERIOD_MS[query.period]).toISOString(),
      points: points.map(({ at, counters }) => ({ at, ...figures(counters) })),
      total: figures(total),
    };
    return { series, upstreams: new Map([...perUpstream].map(([upstream, counters]) => [upstream, figures(counters)])) };
  }

  /** The busiest users, key versions, routes or upstreams of a window, by calls (ties by name). */
  async top(query: TopQuery): Promise<TopRow[]> {
    const rollup: Rollup = { user: 'user', keyVersion: 'key', route: 'route', upstream: 'upstream' }[
      query.by
    ] as Rollup;
    const groupBy: readonly Dimension[] =
      query.by === 'user' ? ['user'] : query.by === 'upstream' ? ['upstream'] : ['upstream', query.by];
    const hashes = await this.read(query.period, rollup, bucketStarts(query));
    const groups = new Map<string, { dimensions: Partial<Record<Dimension, string | null>>; counters: Counters }>();
    const upstreams = query.upstreams ? new Set(query.upstreams) : null;
    for (const hash of hashes) {
      forEachRow(hash, rollup, (dimensions, row) => {
        if (query.upstream !== undefined && dimensions.upstream !== query.upstream) return;
        if (upstreams && !upstreams.has(dimensions.upstream ?? '')) return;
        const picked = Object.fromEntries(groupBy.map((dimension) => [dimension, dimensions[dimension] ?? null]));
        const id = JSON.stringify(groupBy.map((dimension) => picked[dimension]));
        let group = groups.get(id);
        if (!group) groups.set(id, (group = { dimensions: picked, counters: emptyCounters() }));
        addCounters(group.counters, row);
      });
    }
    return [...groups.entries()]
      .sort(([idA, a], [idB, b]) => b.counters[M.calls]! - a.counters[M.calls]! || (idA < idB ? -1 : idA > idB ? 1 : 0))
      .slice(0, query.limit)
      .map(([, group]) => ({ ...group.dimensions, ...figures(group.counters) }));
  }

  /**
   * A user's fields of the `user` rollup's buckets (every metric of each of their rows), or undefined (read whole
   * buckets: another filter decides). A bucket holds every user's rows, as many as the users who called in it:
   * without this, one user's figures over 400 days would read every user's of those days. The rows are keyed by
   * user and upstream, so the upstreams are what is needed: those named (`upstreams`, or the one `upstream`), or
   * else those called in the window, from the `upstream` rollup's buckets (one row per upstream), read first. The
   * cost grows with the upstreams (every metric of each, in every bucket), never with the users.
   */
  private async userFields(query: SeriesQuery, starts: readonly number[]): Promise<string[] | undefined> {
    const { user } = query;
    if (user === undefined || query.route !== undefined || query.keyVersion !== undefined) return undefined;
    let names = query.upstreams;
    if (names === undefined && query.upstream !== undefined) names = [query.upstream];
    else if (names === undefined) {
      const called = new Set<string>();
      for (const hash of await this.read(query.period, 'upstream', starts)) {
        forEachRow(hash, 'upstream', (dimensions) => {
          if (typeof dimensions.upstream === 'string') called.add(dimensions.upstream);
        });
      }
      names = [...called];
    }
    return names
      .filter((upstream) => query.upstream === undefined || upstream === query.upstream)
      .flatMap((upstream) => {
        const values: Record<Dimension, string | null> = { user, upstream, route: null, keyVersion: null };
        const dimensions = JSON.stringify(ROLLUPS.user.map((dimension) => values[dimension]));
        return METRICS.map((metric) => fieldName(dimensions, metric));
      });
  }

  private async read(period: Period, rollup: Rollup, starts: readonly number[], fields?: readonly string[]) {
    await this.flush();
    return this.store.readHashes(
      starts.map((start) => bucketKey(period, rollup, start)),
      fields,
    );
  }
}

/**
 * Which rollup answers a series, and which of its rows count. One of route, key version and user may be
 * given, with or without an upstream; the rollups kept do not hold their combinations.
 */
function seriesRollup(query: SeriesQuery): {
  rollup: Rollup;
  filter: (dimensions: Partial<Record<Dimension, string | null>>) => boolean;
} {
  const given = (['route', 'keyVersion', 'user'] as const).filter((name) => query[name] !== undefined);
  if (given.length > 1) {
    throw new KeywardError('bad_request', {
      message: 'Filter by one of route, keyVersion and user (each may be combined with upstream).',
    });
  }
  const by = given[0];
  const rollup: Rollup = by === 'route' ? 'route' : by === 'keyVersion' ? 'key' : by === 'user' ? 'user' : 'upstream';
  return {
    rollup,
    filter: (dimensions) =>
      (query.upstream === undefined || dimensions.upstream === query.upstream) &&
      (by === undefined || dimensions[by] === query[by]),
  };
}

function bucketStarts({ period, fromMs, toMs }: UsageWindow): number[] {
  const first = bucketStart(fromMs, period);
  const last = bucketStart(toMs, period);
  if (!(first <= last)) throw new KeywardError('bad_request', { message: '`from` must not be after `to`.' });
  const count = (last - first) / PERIOD_MS[period] + 1;
  if (count > MAX_BUCKETS) {
    throw new KeywardError('bad_request', {
      message: `At most ${MAX_BUCKETS} buckets per query: use a longer period or a shorter window.`,
    });
  }
  return Array.from({ length: count }, (_, i) => first + i * PERIOD_MS[period]);
}

/** Calls `visit` with each dimension combination of a stored bucket and its counters. */
function forEachRow(
  hash: Readonly<Record<string, number>>,
  rollup: Rollup,
  visit: (dimensions: Partial<Record<Dimension, string | null>>, counters: Counters) => void,
): void {
  const rows = new Map<string, Counters>();
  for (const [field, value] of Object.entries(hash)) {
    const parts = splitField(field);
    const index = parts && METRIC_INDEX.get(parts.metric);
    if (!parts || index === undefined || index === null) continue; // a field of a later version: ignored
    let row = rows.get(parts.dimensions);
    if (!row) rows.set(parts.dimensions, (row = emptyCounters()));
    row[index]! += value;
  }
  for (const [json, counters] of rows) {
    const values = parseDimensions(json);
    if (!values) continue;
    const dimensions: Partial<Record<Dimension, string | null>> = {};
    ROLLUPS[rollup].forEach((dimension, i) => (dimensions[dimension] = values[i] ?? null));
    visit(dimensions, counters);
  }
}

function parseDimensions(json: string): Array<string | null> | null {
  try {
    const values: unknown = JSON.parse(json);
    return Array.isArray(values) && values.every((v) => v === null || typeof v === 'string')
      ? (values as Array<string | null>)
      : null;
  } catch {
    return null;
  }
}

function figures(counters: Counters): UsageFigures {
  const latencyCounts = counters.slice(M.latency);
  return {
    calls: counters[M.calls]!,
    errors: counters[M.errors]!,
    bytesIn: counters[M.bytesIn]!,
    bytesOut: counters[M.bytesOut]!,
    units: counters[M.units]!,
    scrubberHits: counters[M.scrubberHits]!,
    status: Object.fromEntries(STATUS_CLASSES.map((name, i) => [name, counters[M.status + i]!])) as Record<
      StatusClass,
      number
    >,
    p50: quantile(latencyCounts, 0.5),
    p95: quantile(latencyCounts, 0.95),
    latency: Object.fromEntries(
      [...LATENCY_BOUNDS_MS.map(String), '+Inf'].map((bound, i) => [bound, latencyCounts[i]!]),
    ),
  };
}
