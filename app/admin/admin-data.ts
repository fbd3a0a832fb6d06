import 'server-only';
import { PERIODS, PERIOD_MS, bucketStart, usageRetention, type Period, type UsageRetention } from '@/lib/core/aggregates/model';
import { MAX_BUCKETS, type Series, type TopRow } from '@/lib/core/aggregates/usage';
import { NEVER_SENT, pick, type Rotation } from '@/lib/core/keys/rings';
import type { KeyRingSettings } from '@/lib/core/upstream/registry';
import { keyward } from '@/keyward';
import type { ChartDatum } from './usage-charts';

/**
 * What the admin pages read, and nothing else: the usage aggregates (`runtime.usage`, the same reader as
 * GET /api/admin/usage) and the key rings (as GET /api/admin/keys lists them). Never the audit log, never a key
 * value: versions are named by fingerprint. Everything returned is plain data a client component may receive.
 */

export type OverviewPeriod = 'hour' | 'minute';

/** The overview's two windows: the last 24 hours by hour, or the last hour by minute. */
const WINDOWS: Readonly<Record<OverviewPeriod, { period: 'hour' | 'minute'; buckets: number; stepMs: number }>> = {
  hour: { period: 'hour', buckets: 24, stepMs: 3_600_000 },
  minute: { period: 'minute', buckets: 60, stepMs: 60_000 },
};

export interface ChartPoint {
  /** The bucket's start, ISO 8601 UTC. */
  readonly at: string;
  readonly calls: number;
  readonly errors: number;
  /** Errors per call, in percent (0 without calls). */
  readonly errorRate: number;
  readonly p50: number | null;
  readonly p95: number | null;
  readonly units: number;
}

/** The charts' data (app/admin/usage-charts.tsx) for these points: UTC bucket labels, no error rate without calls. */
export function toChartData(points: readonly ChartPoint[], period: OverviewPeriod): ChartDatum[] {
  return points.map(({ at, calls, errors, errorRate, p50, p95, units }) => ({
    label: period === 'hour' ? `${at.slice(11, 13)}:00` : at.slice(11, 16),
    calls,
    errors,
    errorRate: calls === 0 ? null : errorRate,
    p50,
    p95,
    units,
  }));
}

export interface Totals {
  readonly calls: number;
  readonly errors: number;
  readonly errorRate: number;
  readonly p50: number | null;
  readonly p95: number | null;
  readonly units: number;
}

export interface TopEntry extends Totals {
  readonly label: string;
  readonly upstream: string | null;
}

export interface Overview {
  readonly from: string;
  readonly to: string;
  readonly points: ChartPoint[];
  readonly total: Totals;
  readonly topUsers: TopEntry[];
  readonly topKeys: TopEntry[];
}

function percent(errors: number, calls: number): number {
  return calls === 0 ? 0 : Math.round((errors / calls) * 1000) / 10;
}

function totals(figures: Series['total'] | TopRow): Totals {
  const { calls, errors, p50, p95, units } = figures;
  return { calls, errors, errorRate: percent(errors, calls), p50, p95, units };
}

export async function loadOverview(period: OverviewPeriod, upstream: string | undefined): Promise<Overview> {
  const { usage, registry } = keyward.getRuntime();
  // Keys are the service keys an admin manages (the Keys page's, and those a session claim chooses). A user's own
  // key or connected account's token has a fingerprint too, but each user's key, and each token refreshed, would
  // be a row of its own, pushing the service keys out of the list: their calls are under each user instead.
  const serviceKeyed = [...registry.values()].filter(({ credential }) => credential.source === 'static' || credential.source === 'claim').map(({ id }) => id);
  const { buckets, stepMs } = WINDOWS[period];
  const toMs = Date.now();
  const window = { period, fromMs: toMs - (buckets - 1) * stepMs, toMs };
  const [series, users, keys] = await Promise.all([
    usage.series({ ...window, upstream }),
    usage.top({ ...window, by: 'user', limit: 10, upstream }),
    // One more than shown: the row of calls refused before they had a key (no key version) is not listed.
    usage.top({ ...window, by: 'keyVersion', limit: 11, upstream, upstreams: serviceKeyed }),
  ]);
  return {
    from: series.from,
    to: series.to,
    points: series.points.map((point) => ({ at: point.at, ...totals(point) })),
    total: totals(series.total),
    topUsers: users.map((row) => ({ label: row.user ?? 'anonymous', upstream: null, ...totals(row) })),
    // A call refused before it had a key has no key version: not a key to list.
    topKeys: keys
      .filter((row) => row.keyVersion)
      .slice(0, 10)
      .map((row) => ({ label: row.keyVersion!, upstream: row.upstream ?? null, ...totals(row) })),
  };
}

export interface KeyVersionRow {
  readonly fingerprint: string;
  readonly source: 'env' | 'managed';
  readonly status: string;
  readonly created: number;
  readonly expiresAt: number | null;
  readonly expiresInDays: number | null;
  readonly warning: string | null;
  /** Why a version that could serve is never sent (`refused`, `unreadable`: its calls answer 503), or null. */
  readonly neverSent: string | null;
  /** Start of the most recent hour with calls on this version (last 7 days), or null. */
  readonly lastUsedHour: number | null;
  readonly callsSince: number;
  /** Times the leak scrubber removed this version from a response in the last 30 days (the upstream echoed it). */
  readonly scrubberHits: number;
}

/** A rotation as the Keys page names it: ids, fingerprints, time and actor (never a value). */
export interface RotationView {
  readonly id: string;
  readonly state: 'switched' | 'canary_failed' | 'rolled_back';
  readonly from: readonly string[];
  readonly to: string;
  readonly at: number;
  readonly actor: string;
}

export interface KeyRingView {
  readonly upstream: string;
  /** When the calls column starts counting: the last rotation, else 30 days back. */
  readonly since: number;
  readonly sinceRotation: boolean;
  readonly versions: KeyVersionRow[];
  /**
   * No version serves: none is usable (each revoked or expired), or the one calls pick is never sent (`refused`,
   * `unreadable`), so every call answers 503 `credential_unavailable`. Not merely "no version says `serving`": a
   * replaced version in its grace window serves, as `fallback`, once no active version is usable.
   */
  readonly noneServes: boolean;
  /** The newest rotation that switched traffic and was not rolled back since: what "Roll back" undoes. */
  readonly rollback: RotationView | null;
  /** The request a rotation tests the new key with (`GET /hello`), or null: the upstream declares none. */
  readonly canary: string | null;
  /** How long the replaced versions stay usable as a fallback after a rotation. */
  readonly graceSeconds: number;
}

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;

/**
 * The finest period whose buckets still hold `fromMs` (README "Usage aggregates": each is kept its configured
 * retention after it ends) in at most MAX_BUCKETS buckets, so "since the rotation" is counted as closely as the
 * aggregates allow (to the bucket holding the rotation). Beyond every retention: days, kept the longest by default.
 */
function finestPeriod(fromMs: number, now: number, retention: UsageRetention): Period {
  const fits = (period: Period) =>
    now - fromMs <= retention[period] && (bucketStart(now, period) - bucketStart(fromMs, period)) / PERIOD_MS[period] < MAX_BUCKETS;
  return PERIODS.find(fits) ?? 'day';
}

/** The key rings with their usage, and the time they were read at (for ages and countdowns). */
export async function loadKeyRings(): Promise<{ now: number; rings: KeyRingView[] }> {
  const runtime = keyward.getRuntime();
  const now = Date.now();
  const retention = usageRetention(runtime.settings);
  const rings = await runtime.keyRings.list();
  const views = await Promise.all(
    rings.map(async (ring) => {
      const lastRotation = ring.rotations.find((rotation) => rotation.state === 'switched' || rotation.state === 'rolled_back');
      // A rotation made on an instance whose clock runs ahead may carry a time still to come here.
      const since = Math.min(lastRotation?.at ?? now - 30 * DAY_MS, now);
      const [calls, month] = await Promise.all([
        runtime.usage.top({ period: finestPeriod(since, now, retention), fromMs: since, toMs: now, by: 'keyVersion', limit: 100, upstream: ring.upstream }),
        runtime.usage.top({ period: 'day', fromMs: now - 29 * DAY_MS, toMs: now, by: 'keyVersion', limit: 100, upstream: ring.upstream }),
      ]);
      const ringSettings = ringSettingsOf(ring.upstream);
      // The version a call picks (lib/core/keys/rings.ts credentialFrom), then whether it can be sent.
      const picked = pick(ring.versions, now);
      const versions = await Promise.all(
        ring.versions.map(async (version) => {
          const hours = await runtime.usage.series({ period: 'hour', fromMs: now - 7 * 24 * HOUR_MS, toMs: now, upstream: ring.upstream, keyVersion: version.fingerprint });
          const last = hours.points.findLast((point) => point.calls > 0);
          return {
            fingerprint: version.fingerprint,
            source: version.source,
            status: version.status,
            created: version.created,
            expiresAt: version.expiresAt,
            expiresInDays: version.expiresInDays,
            warning: version.warning,
            neverSent: version.status === 'refused' || version.status === 'unreadable' ? NEVER_SENT[version.status] : null,
            lastUsedHour: last ? Date.parse(last.at) : null,
            callsSince: calls.find((row) => row.keyVersion === version.fingerprint)?.calls ?? 0,
            scrubberHits: month.find((row) => row.keyVersion === version.fingerprint)?.scrubberHits ?? 0,
          };
        }),
      );
      return {
        upstream: ring.upstream,
        since,
        sinceRotation: lastRotation !== undefined,
        versions,
        noneServes: picked === null || picked.status === 'refused' || picked.status === 'unreadable',
        rollback: lastRotation?.state === 'switched' ? rotationView(lastRotation) : null,
        canary: ringSettings?.canary ? `${ringSettings.canary.method} ${ringSettings.canary.path}` : null,
        graceSeconds: ringSettings?.graceSeconds ?? 0,
      };
    }),
  );
  return { now, rings: views };
}

/** Picked field by field: only ids, fingerprints, time and actor reach the page. */
function rotationView(rotation: Rotation): RotationView {
  return { id: rotation.id, state: rotation.state, from: [...rotation.from], to: rotation.to, at: rotation.at, actor: rotation.actor };
}

/** A service-key upstream's key-ring settings (canary, grace), from the compiled registry. */
function ringSettingsOf(upstreamId: string): KeyRingSettings | null {
  const credential = keyward.getRuntime().registry.get(upstreamId)?.credential;
  return credential?.source === 'static' ? credential.ring : null;
}
