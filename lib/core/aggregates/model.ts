import type { ProxyEvent } from '../pipeline';
import type { Settings } from '../settings';

/**
 * Usage aggregates (README "Usage aggregates"): what is counted, in which time buckets and along which
 * dimensions. Everything here is plain data and arithmetic, shared by the writer (collector.ts) and the reader
 * (usage.ts), so both agree on every key and field name.
 */

export const PERIODS = ['minute', 'hour', 'day'] as const;
export type Period = (typeof PERIODS)[number];

export const PERIOD_MS: Readonly<Record<Period, number>> = { minute: 60_000, hour: 3_600_000, day: 86_400_000 };

/** How long each period's buckets are kept, in ms after the bucket ends. */
export type UsageRetention = Readonly<Record<Period, number>>;

export const DEFAULT_RETENTION: UsageRetention = {
  minute: 48 * 3_600_000,
  hour: 35 * 86_400_000,
  day: 400 * 86_400_000,
};

/** The retention the settings give each period (KEYWARD_USAGE_MINUTES_RETENTION_HOURS and the others). */
export function usageRetention(
  settings: Pick<
    Settings,
    'KEYWARD_USAGE_MINUTES_RETENTION_HOURS' | 'KEYWARD_USAGE_HOURS_RETENTION_DAYS' | 'KEYWARD_USAGE_DAYS_RETENTION_DAYS'
  >,
): UsageRetention {
  return {
    minute: settings.KEYWARD_USAGE_MINUTES_RETENTION_HOURS * 3_600_000,
    hour: settings.KEYWARD_USAGE_HOURS_RETENTION_DAYS * 86_400_000,
    day: settings.KEYWARD_USAGE_DAYS_RETENTION_DAYS * 86_400_000,
  };
}

/**
 * Upper bounds (ms, inclusive: Prometheus's `le`) of the latency buckets; one more bucket counts everything
 * slower. Fixed, so buckets from any instance, minute or dimension add up by plain addition.
 */
export const LATENCY_BOUNDS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000] as const;

/**
 * The rollups kept, each a list of dimensions: not the full cross product (upstream × route × key × user ×
 * status would grow with the product of their sizes), only what the views ask for. The status class is a
 * counter in every rollup rather than a dimension, so it costs one field, not a multiple of the rows.
 */
export const ROLLUPS = {
  upstream: ['upstream'],
  route: ['upstream', 'route'],
  key: ['upstream', 'keyVersion'],
  user: ['user', 'upstream'],
} as const satisfies Record<string, readonly Dimension[]>;
export type Rollup = keyof typeof ROLLUPS;
export type Dimension = 'upstream' | 'route' | 'keyVersion' | 'user';

export const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx', 'refused'] as const;
export type StatusClass = (typeof STATUS_CLASSES)[number];

/**
 * One bucket's counters, as a fixed-size array of whole numbers (index = METRICS position). Short field names
 * keep the stored hashes small: they are written for every bucket of every rollup.
 */
export const METRICS = [
  'c', // calls
  'e', // errors
  'bi', // bytes in
  'bo', // bytes out
  'u', // budget units
  'sh', // scrubber hits
  ...STATUS_CLASSES.map((name) => `s${name}`),
  ...[...LATENCY_BOUNDS_MS, 'inf'].map((bound) => `h${bound}`),
] as const;
export const M = {
  calls: 0,
  errors: 1,
  bytesIn: 2,
  bytesOut: 3,
  units: 4,
  scrubberHits: 5,
  status: 6,
  latency: 6 + STATUS_CLASSES.length,
};
export const METRIC_INDEX: ReadonlyMap<string, number> = new Map(METRICS.map((name, index) => [name, index]));

export type Counters = number[];

export function emptyCounters(): Counters {
  return new Array<number>(METRICS.length).fill(0);
}

export function addCounters(into: Counters, from: readonly number[]): void {
  for (let i = 0; i < into.length; i++) into[i] = capped(into[i]! + (from[i] ?? 0));
}

/**
 * A sum of counters as a store can add it: at most Number.MAX_SAFE_INTEGER. An upstream's usage report is capped
 * there per call, and two such calls in one batch would otherwise make an increment no store takes, losing the
 * batch's figures for every user.
 */
export function capped(sum: number): number {
  return Math.min(sum, Number.MAX_SAFE_INTEGER);
}

/** The start (ms since the epoch, UTC) of the bucket of `period` that holds `at`. */
export function bucketStart(at: number, period: Period): number {
  return Math.floor(at / PERIOD_MS[period]) * PERIOD_MS[period];
}

/** The store key of one rollup's bucket: every dimension combination of that bucket is a field in it. */
export function bucketKey(period: Period, rollup: Rollup, start: number): string {
  return `usage:${period}:${rollup}:${start}`;
}

/**
 * A field is the combination's dimension values as JSON (any string, or null, survives the round trip), a
 * space, and the metric's name. Metric names have no space, so the last space separates them.
 */
export function fieldName(dimensions: string, metric: string): string {
  return `${dimensions} ${metric}`;
}

export function splitField(field: string): { dimensions: string; metric: string } | null {
  const space = field.lastIndexOf(' ');
  return space < 0 ? null : { dimensions: field.slice(0, space), metric: field.slice(space + 1) };
}

export function statusClass(event: Pick<ProxyEvent, 'status' | 'outcome'>): StatusClass {
  if (event.outcome === 'refused') return 'refused';
  const hundreds = Math.floor(event.status / 100);
  return hundreds >= 1 && hundreds <= 5 ? (`${hundreds}xx` as StatusClass) : '5xx';
}

/**
 * An error is a call that failed on the way: Keyward (outcome `unavailable`) or the upstream (`upstream_error`, or
 * its own 5xx passed on) answered 5xx, or the stream broke.
 */
export function isError(event: Pick<ProxyEvent, 'status' | 'outcome'>): boolean {
  return event.status >= 500 || event.outcome === 'error' || event.outcome === 'upstream_error' || event.outcome === 'unavailable';
}

/** The index of the latency bucket for a duration (the last one: slower than every bound). */
export function latencyBucket(durationMs: number): number {
  for (let i = 0; i < LATENCY_BOUNDS_MS.length; i++) if (durationMs <= LATENCY_BOUNDS_MS[i]!) return i;
  return LATENCY_BOUNDS_MS.length;
}

/** A call's counters. Amounts are whole (bytes, units are; anything else is rounded up) so stores add exactly. */
export function eventCounters(event: ProxyEvent): Counters {
  const counters = emptyCounters();
  counters[M.calls] = 1;
  counters[M.errors] = isError(event) ? 1 : 0;
  counters[M.bytesIn] = whole(event.bytesIn);
  counters[M.bytesOut] = whole(event.bytesOut);
  counters[M.units] = whole(event.units);
  counters[M.scrubberHits] = whole(event.scrubberHits);
  counters[M.status + STATUS_CLASSES.indexOf(statusClass(event))] = 1;
  counters[M.latency + latencyBucket(event.durationMs)] = 1;
  return counters;
}

/** A counter's amount as a whole number (rounded up), 0 for anything not positive and finite. */
export function whole(value: number): number {
  return Number.isFinite(value) && value > 0 ? Math.min(Math.ceil(value), Number.MAX_SAFE_INTEGER) : 0;
}

/**
 * The `q` quantile (0 < q ≤ 1) of a latency histogram, estimated as Prometheus's histogram_quantile does:
 * find the bucket holding the rank, interpolate linearly inside it (the first bucket starts at 0); a rank in
 * the open last bucket is reported as the highest bound. Null without calls. Hand-written: the estimate must
 * work on buckets summed in Redis/SQLite, which an encoded histogram library (HdrHistogram) cannot be.
 * https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile
 */
export function quantile(buckets: readonly number[], q: number): number | null {
  const total = buckets.reduce((sum, n) => sum + n, 0);
  if (total === 0) return null;
  const rank = q * total;
  let below = 0;
  for (let i = 0; i < buckets.length; i++) {
    const count = buckets[i]!;
    if (count > 0 && below + count >= rank) {
      if (i >= LATENCY_BOUNDS_MS.length) return LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.length - 1]!;
      const lower = i === 0 ? 0 : LATENCY_BOUNDS_MS[i - 1]!;
      const upper = LATENCY_BOUNDS_MS[i]!;
      return Math.round((lower + ((upper - lower) * (rank - below)) / count) * 100) / 100;
    }
    below += count;
  }
  return LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.length - 1]!;
}
