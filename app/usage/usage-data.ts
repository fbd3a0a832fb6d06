import 'server-only';
import type { UsageFigures } from '@/lib/core/aggregates/usage';
import { appliesTo } from '@/lib/core/limits/rules';
import { rolesAllow } from '@/lib/core/policy/authorize';
import { UNKNOWN_UPSTREAM } from '@/lib/core/observe/metrics';
import { fileOwner } from '@/lib/core/users/owner';
import type { PageSession } from 'keyward/next';
import type { ChartPoint, Totals } from '../admin/admin-data';
import { keyward } from '@/keyward';
import { loadOwnKeys, type OwnKeyEntry } from '../components/own-key-list';

/**
 * What /usage reads, for the signed-in user only: the usage aggregates' user rollup (`user` + `upstream`)
 * filtered by the session's user id, the limits configured in the compiled registry, and the user's own keys
 * as GET /api/keys/<upstream> describes them (fingerprint and last 4, never the key). Nobody else's figures.
 */

const HOUR_MS = 3_600_000;
const BUCKETS = 24;

export interface LimitView {
  readonly kind: 'rate limit' | 'quota' | 'budget';
  readonly name: string;
  /** Whose calls the rule counts together: per user, per credential, for the whole upstream, per IP. */
  readonly by: string;
  /** "120 requests / 60 s", "5000 requests / day", "300 units / month". */
  readonly value: string;
  /** Null: every route of the upstream; else the route, e.g. "GET /items/:id". */
  readonly route: string | null;
}

export interface UpstreamUsage extends Totals {
  readonly upstream: string;
  readonly limits: LimitView[];
}


export interface MyUsage {
  readonly from: string;
  readonly to: string;
  readonly points: ChartPoint[];
  readonly total: Totals;
  readonly upstreams: UpstreamUsage[];
  /** Upstreams that take the user's own key, with the key stored (null: none stored). */
  readonly ownKeys: OwnKeyEntry[];
}

type Figures = Pick<UsageFigures, 'calls' | 'errors' | 'p50' | 'p95' | 'units'>;

/** An upstream the user made no call to in the window. */
const NO_USE: Figures = { calls: 0, errors: 0, p50: null, p95: null, units: 0 };

function totals(figures: Figures): Totals {
  const { calls, errors, p50, p95, units } = figures;
  return { calls, errors, errorRate: calls === 0 ? 0 : Math.round((errors / calls) * 1000) / 10, p50, p95, units };
}

/**
 * The limits that apply to this session's roles, upstream-wide rules once, route rules with their route; of the
 * routes those roles may call only (another role's route is not shown, nor its limits).
 */
function limitsOf(upstreamId: string, roles: readonly string[]): LimitView[] {
  const upstream = keyward.getRuntime().registry.get(upstreamId);
  if (!upstream) return [];
  const seen = new Map<string, LimitView>();
  for (const route of upstream.routes) {
    // A decoy route ignores roles: its limits are no limits of a route this user may call.
    if (route.decoy || !rolesAllow(route, roles)) continue;
    // Rule ids are `<upstream>|<scope>|<name>`; the scope `*` marks a rule of the whole upstream (lib/core/limits/rules.ts).
    const routeOf = (id: string) => (id.split('|')[1] === '*' ? null : `${route.method} ${route.template}`);
    for (const rule of route.limits.rate) {
      if (!appliesTo(rule, roles) || seen.has(rule.id)) continue;
      seen.set(rule.id, { kind: 'rate limit', name: rule.name, by: rule.by, value: `${rule.limit} requests / ${rule.windowSeconds} s`, route: routeOf(rule.id) });
    }
    for (const rule of route.limits.meters) {
      if (!appliesTo(rule, roles) || seen.has(rule.id)) continue;
      const unit = rule.kind === 'quota' ? 'requests' : 'units';
      seen.set(rule.id, { kind: rule.kind, name: rule.name, by: rule.by, value: `${rule.limit} ${unit} / ${rule.period}`, route: routeOf(rule.id) });
    }
  }
  return [...seen.values()];
}


/** The last 24 hours by hour, the session's user only: in total and per upstream, with each upstream's limits. */
export async function loadMyUsage(session: PageSession): Promise<MyUsage> {
  const { usage, users } = keyward.getRuntime();
  const toMs = Date.now();
  const ids = keyward.upstreamSummaries().map((u) => u.id);
  // Listed: what the user's roles may call, and whatever else they called (a refusal is a call of theirs too).
  const callable = new Set(keyward.upstreamSummaries(session.roles).map((u) => u.id));
  // One read of the window for the total and every upstream's share, of this user's rows only (a bucket holds
  // every user's): the configured upstreams', and calls to an upstream that does not exist.
  const window = { period: 'hour' as const, fromMs: toMs - (BUCKETS - 1) * HOUR_MS, toMs, user: session.userId, upstreams: [...ids, UNKNOWN_UPSTREAM] };
  const [{ series, upstreams }, keys] = await Promise.all([usage.seriesByUpstream(window), loadOwnKeys(
    // The page's session was checked against the users file: its password version is the file's.
    fileOwner(session.userId, users),
    { last4: true },
  )]);
  return {
    from: series.from,
    to: series.to,
    points: series.points.map((point) => ({ at: point.at, ...totals(point) })),
    total: totals(series.total),
    upstreams: ids
      .filter((upstream) => callable.has(upstream) || (upstreams.get(upstream)?.calls ?? 0) > 0)
      .map((upstream) => ({ upstream, ...totals(upstreams.get(upstream) ?? NO_USE), limits: limitsOf(upstream, session.roles) })),
    ownKeys: keys,
  };
}
