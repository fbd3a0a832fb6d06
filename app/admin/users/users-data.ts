import 'server-only';
import { MAX_BUCKETS, type TopRow } from '@/lib/core/aggregates/usage';
import { appliesTo, type MeterRule } from '@/lib/core/limits/rules';
import { USER_ID } from '@/lib/core/session/provider-sessions';
import type { SessionView } from '@/lib/core/session/session-index';
import type { ConnectionView } from '@/lib/core/connect/connections';
import { fileOwner } from '@/lib/core/users/owner';
import { keyward } from '@/keyward';
import { loadOwnKeys, type OwnKeyEntry } from '../../components/own-key-list';
import { knownUsers, type Known } from './known-users';

/**
 * What the Users pages read: the local users file (names and roles, never hashes), the users seen in the usage
 * aggregates (the list: the last KNOWN_DAYS; a user's page: the whole retention, up to MAX_BUCKETS days, that
 * user's rows only), the session index (hashed ids only), the live quota and budget counters (Limits.meterUsage:
 * the very counters the proxy reserves against), and users' own keys by fingerprint. Never the audit log, never a
 * key or a session id. Everything returned is plain data.
 */

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
/** The most users one page lists (the busiest first). */
export const MAX_USERS = 1_000;

export interface Figures {
  readonly calls: number;
  readonly errors: number;
  readonly errorRate: number;
  readonly units: number;
}

export interface MeterUse {
  readonly kind: 'quota' | 'budget';
  readonly name: string;
  readonly upstream: string;
  /** Null: every route of the upstream; else the route, e.g. "GET /items/:id". */
  readonly route: string | null;
  /** `user`: this user's own counter; `upstream`: one counter shared by everyone; `credential`: per key. */
  readonly by: 'user' | 'upstream' | 'credential';
  readonly limit: number;
  readonly unit: 'requests' | 'units';
  readonly period: string;
  /** Counted so far this period (null: counted per key, not per user). */
  readonly used: number | null;
  readonly resetsAt: number;
}

export interface RateView {
  readonly name: string;
  readonly upstream: string;
  readonly route: string | null;
  readonly by: string;
  readonly value: string;
}

export interface UserSummary extends Figures {
  readonly userId: string;
  readonly name: string | null;
  /** Listed in KEYWARD_USERS_FILE. */
  readonly local: boolean;
  /** From the users file, else the newest indexed session's, else null (unknown). */
  readonly roles: readonly string[] | null;
  readonly activeSessions: number;
  readonly sessions: number;
  /** The quota or budget this user is closest to using up (per-user counters only), or null. */
  readonly closest: MeterUse | null;
}


export interface UserDetail {
  readonly summary: UserSummary;
  readonly meters: MeterUse[];
  readonly rates: RateView[];
  readonly sessions: SessionView[];
  /** Upstreams that take a user's own key, with theirs (null: none stored). */
  readonly ownKeys: OwnKeyEntry[];
  /** The user's connected accounts; null when no connection provider is configured. */
  readonly connections: readonly ConnectionView[] | null;
}

function figures(row: Pick<TopRow, 'calls' | 'errors' | 'units'> | undefined): Figures {
  const calls = row?.calls ?? 0;
  const errors = row?.errors ?? 0;
  return { calls, errors, errorRate: calls === 0 ? 0 : Math.round((errors / calls) * 1000) / 10, units: row?.units ?? 0 };
}

export function isUserId(value: string): boolean {
  return USER_ID.test(value);
}

/** Every quota and budget rule that applies to these roles (unknown roles: only the rules without a role list). */
function meterRules(roles: readonly string[] | null): Array<{ rule: MeterRule; upstream: string; route: string | null }> {
  const seen = new Map<string, { rule: MeterRule; upstream: string; route: string | null }>();
  for (const upstream of keyward.getRuntime().registry.values()) {
    for (const route of upstream.routes) {
      for (const rule of route.limits.meters) {
        if (seen.has(rule.id) || !appliesTo(rule, roles ?? [])) continue;
        // Rule ids are `<upstream>|<scope>|<name>`; the scope `*` marks a rule of the whole upstream (lib/core/limits/rules.ts).
        seen.set(rule.id, { rule, upstream: upstream.id, route: rule.id.split('|')[1] === '*' ? null : `${route.method} ${route.template}` });
      }
    }
  }
  return [...seen.values()];
}

function rateRules(roles: readonly string[] | null): RateView[] {
  const seen = new Map<string, RateView>();
  for (const upstream of keyward.getRuntime().registry.values()) {
    for (const route of upstream.routes) {
      for (const rule of route.limits.rate) {
        if (seen.has(rule.id) || !appliesTo(rule, roles ?? [])) continue;
        seen.set(rule.id, {
          name: rule.name,
          upstream: upstream.id,
          route: rule.id.split('|')[1] === '*' ? null : `${route.method} ${route.template}`,
          by: rule.by,
          value: `${rule.limit} requests / ${rule.windowSeconds} s`,
        });
      }
    }
  }
  return [...seen.values()];
}

/** The live counters of these users' quotas and budgets, in one store round trip. */
async function meterUses(users: ReadonlyArray<{ userId: string; roles: readonly string[] | null }>): Promise<Map<string, MeterUse[]>> {
  const rules = users.map(({ userId, roles }) => ({ userId, rules: meterRules(roles) }));
  const queries = rules.flatMap(({ userId, rules: list }) => list.map(({ rule }) => ({ rule, userId })));
  const readings = await keyward.getRuntime().limits.meterUsage(queries);
  const out = new Map<string, MeterUse[]>();
  let next = 0;
  for (const { userId, rules: list } of rules) {
    out.set(
      userId,
      list.map(({ rule, upstream, route }) => {
        const { used, resetsAt } = readings[next++]!;
        return { kind: rule.kind, name: rule.name, upstream, route, by: rule.by, limit: rule.limit, unit: rule.kind === 'quota' ? 'requests' : 'units', period: rule.period, used, resetsAt };
      }),
    );
  }
  return out;
}

/** The per-user meter nearest to its limit (a shared one says nothing about this user). */
function closest(meters: readonly MeterUse[]): MeterUse | null {
  let best: MeterUse | null = null;
  for (const meter of meters) {
    if (meter.by !== 'user' || meter.used === null) continue;
    if (!best || meter.used / meter.limit > best.used! / best.limit) best = meter;
  }
  return best;
}

/**
 * How far back the list looks for users with calls (besides the users file): daily buckets hold every user's rows,
 * so a window over the whole retention (400 days) would read every user of every day on each page load.
 */
export const KNOWN_DAYS = 30;

function summarize(user: Known, day: TopRow | undefined, sessions: readonly SessionView[], meters: readonly MeterUse[]): UserSummary {
  return {
    ...user,
    ...figures(day),
    activeSessions: sessions.filter((session) => !session.revoked && !session.expired).length,
    sessions: sessions.length,
    closest: closest(meters),
  };
}

/** Roles where the users file does not say: the newest indexed session's. */
function withSessionRoles(user: Known, sessions: readonly SessionView[]): Known {
  return user.roles !== null || sessions.length === 0 ? user : { ...user, roles: [...sessions[0]!.roles] };
}

/**
 * The Users list: the users file's users and those with calls in the last KNOWN_DAYS (knownUsers), with the last
 * 24 hours' figures, busiest first.
 */
export async function loadUsers(): Promise<{ now: number; users: UserSummary[]; truncated: boolean }> {
  const runtime = keyward.getRuntime();
  const now = Date.now();
  const days = Math.min(KNOWN_DAYS, runtime.settings.KEYWARD_USAGE_DAYS_RETENTION_DAYS);
  const [last24h, window] = await Promise.all([
    runtime.usage.top({ period: 'hour', fromMs: now - 23 * HOUR_MS, toMs: now, by: 'user', limit: MAX_USERS }),
    runtime.usage.top({ period: 'day', fromMs: now - (days - 1) * DAY_MS, toMs: now, by: 'user', limit: MAX_USERS }),
  ]);
  const local: Known[] = (runtime.users?.list() ?? []).map((user) => ({ userId: `local:${user.username}`, name: user.name, local: true, roles: [...user.roles] }));
  const { listed, truncated } = knownUsers(local, last24h, window, MAX_USERS);
  const day = new Map(last24h.filter((row) => row.user).map((row) => [row.user!, row]));
  const sessions = await runtime.sessionIndex.listMany(listed.map((user) => user.userId));
  const users = listed.map((user) => withSessionRoles(user, sessions.get(user.userId) ?? []));
  const meters = await meterUses(users);
  return {
    now,
    users: users.map((user) => summarize(user, day.get(user.userId), sessions.get(user.userId) ?? [], meters.get(user.userId) ?? [])),
    truncated,
  };
}

/** One user's page, or null when Keyward knows nothing about them (not in the file, no calls, no sessions). */
export async function loadUser(userId: string): Promise<{ now: number; user: UserDetail } | null> {
  const runtime = keyward.getRuntime();
  const now = Date.now();
  const window = { period: 'hour' as const, fromMs: now - 23 * HOUR_MS, toMs: now, user: userId };
  // One query spans at most MAX_BUCKETS buckets; the setting allows more days than that.
  const days = Math.min(runtime.settings.KEYWARD_USAGE_DAYS_RETENTION_DAYS, MAX_BUCKETS);
  const [series, ever, sessions, ownKeys, connections] = await Promise.all([
    runtime.usage.series(window),
    runtime.usage.series({ period: 'day', fromMs: now - (days - 1) * DAY_MS, toMs: now, user: userId }),
    runtime.sessionIndex.list(userId),
    loadOwnKeys(fileOwner(userId, runtime.users), { last4: false }),
    // Never a token: provider, scopes, status and times only (the connections' own view).
    runtime.connections ? runtime.connections.list(fileOwner(userId, runtime.users)) : Promise.resolve(null),
  ]);
  const localUser = userId.startsWith('local:') ? (runtime.users?.find(userId.slice('local:'.length)) ?? null) : null;
  if (!localUser && ever.total.calls === 0 && sessions.length === 0 && ownKeys.every((entry) => entry.key === null)) return null;
  const known = withSessionRoles(
    { userId, name: localUser?.name ?? null, local: localUser !== null, roles: localUser ? [...localUser.roles] : null },
    sessions,
  );
  const meters = (await meterUses([known])).get(userId) ?? [];
  return {
    now,
    user: {
      summary: summarize(known, { ...series.total }, sessions, meters),
      meters,
      rates: rateRules(known.roles),
      sessions,
      ownKeys,
      connections,
    },
  };
}

