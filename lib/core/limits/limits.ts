import type { Logger } from 'pino';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { limitBucket, siteBucket } from '../client/ip';
import { KeywardError, type KeywardErrorCode } from '../errors';
import { guard } from '../store/guard';
import { RedisStore, type RoundCounter } from '../../store/redis';
import { StoreUnavailableError, type Reservation, type Store } from '../../store/types';
import { CallsInFlight } from './in-flight';
import { periodWindow } from './period';
import { appliesTo, type MeterRule, type RateRule, type RouteLimits, type Subject } from './rules';

/** Who is calling, as limits see it. */
export interface LimitSubject {
  readonly upstream: string;
  readonly userId: string;
  readonly roles: readonly string[];
  readonly fingerprint: string;
  readonly ip: string | null;
}

/** What a request holds after passing its limits; settled once when its response ends. */
export interface LimitGrant {
  /** RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers-10), when any rule applied. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  /** Worst-case units reserved against budgets (0 when no budget applied). */
  readonly reserved: number;
  /**
   * `forwarded: false` returns everything reserved (the upstream was never called). Otherwise budgets
   * are charged `usage` when the upstream reported it, else the reservation is kept (worst case).
   */
  settle(result: { forwarded: boolean; usage: number | null }): Promise<void>;
}

/** Rate counters' keys: `rl|<rule id>:<subject>` (rate-limiter-flexible joins its keyPrefix and key with ":"). */
const RATE_PREFIX = 'rl|';
const NO_LIMITS: LimitGrant = { headers: [], reserved: 0, settle: async () => {} };
/** Counters outlive their period by this much, so a late settle still finds its counter. */
const METER_GRACE_MS = 3_600_000;
/** An IPv6 site's (/48) sign-in attempts per window, as a multiple of one client's (checkSignIn). */
const SIGNIN_SITE_FACTOR = 16;

/**
 * Rate limits (rate-limiter-flexible: in memory for one process, Redis for many) and quotas and budgets
 * (Store.reserve: one atomic check-and-add per request, so instances sharing Redis never overshoot).
 */
export class Limits {
  private readonly limiters = new Map<string, RateLimiterAbstract>();
  /** In-process rate checks, one after another: see `takeIfRoom`. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Each user's calls in progress per upstream, in this process (`maxCallsInFlightPerUser`). */
  readonly inFlight = new CallsInFlight();

  constructor(
    readonly store: Store,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** The rate rules that apply to a caller with these roles. */
  rateRules(limits: RouteLimits, roles: readonly string[]): RateRule[] {
    return limits.rate.filter((rule) => appliesTo(rule, roles));
  }

  /**
   * Checks rate limits (DESIGN.md step 6), with the anomaly detector's `throttle` on this caller, if any, in the
   * same all-or-nothing take: a call it refuses takes no point from a limit others share. Throws 429
   * `rate_limited` with Retry-After (`throttled` when only the throttle had no room), or 503 if the store is down.
   */
  async checkRate(limits: RouteLimits, who: LimitSubject, throttle: RateRule | null = null): Promise<Array<readonly [RateRule, RateLimiterRes]>> {
    const rules = this.rateRules(limits, who.roles);
    if (throttle) rules.push(throttle);
    if (rules.length === 0) return [];
    // With Redis, every rule's counter in one script (one round trip), the same counters the limiter keeps.
    const { store } = this;
    if (store instanceof RedisStore) return this.rateTaken(rules, (await guard(() => store.round([], this.rateCounters(rules, who)))).counters!, throttle);
    const { results, retryMs } = await this.consume(rules.map((rule) => [rule, subjectKey(rule.by, who)] as const));
    if (retryMs !== null) throw rateRefusal(results, retryMs, throttle);
    return results;
  }

  /**
   * Gives back the point each rule's counter took for this call, best effort (a failed give-back leaves it
   * counted): for a call its round trip counted (RedisStore.round) that the detector's throttle, read in the same
   * round trip, then refused.
   */
  async giveBack(rules: readonly RateRule[], who: LimitSubject): Promise<void> {
    const { store } = this;
    if (store instanceof RedisStore) {
      await store.giveBackAll(this.rateCounters(rules, who));
    } else {
      await Promise.allSettled(rules.map((rule) => this.limiter(rule).reward(subjectKey(rule.by, who), 1)));
    }
  }

  /**
   * The counters of these rules for a round trip that takes them itself (RedisStore.round, with Redis only):
   * the keys and windows rate-limiter-flexible's RateLimiterRedis uses, so both count on the same counters.
   */
  rateCounters(rules: readonly RateRule[], who: LimitSubject): RoundCounter[] {
    return rules.map((rule) => ({ key: `${RATE_PREFIX}${rule.id}:${subjectKey(rule.by, who)}`, points: 1, windowSeconds: rule.windowSeconds, limit: rule.limit }));
  }

  /**
   * The outcome of counters taken in a round trip (`rateCounters`, same order), as `checkRate` reports it:
   * rate-limiter-flexible's results, or 429 `rate_limited` with Retry-After when a rule had no room left.
   */
  rateTaken(
    rules: readonly RateRule[],
    taken: ReadonlyArray<{ readonly consumed: number; readonly ttlMs: number }>,
    throttle: RateRule | null = null,
  ): Array<readonly [RateRule, RateLimiterRes]> {
    let retryMs: number | null = null;
    const results = rules.map((rule, i) => {
      const { consumed, ttlMs } = taken[i]!;
      // As RateLimiterStoreAbstract reads the counter: over the limit once consumed exceeds the points.
      if (consumed > rule.limit) retryMs = Math.max(retryMs ?? 0, ttlMs);
      return [rule, new RateLimiterRes(Math.max(rule.limit - consumed, 0), ttlMs, consumed, consumed === 1)] as const;
    });
    if (retryMs !== null) throw rateRefusal(results, retryMs, throttle);
    return results;
  }

  /**
   * Takes one point from each rule's counter for its key, or from none. `retryMs` is null when every rule had
   * room, else the longest wait among the rules that had none, and then no counter was taken: a refused call counts
   * on no counter, so one user's flood past their own limit does not use up a counter they share with others (the
   * key's, the upstream's, an address's). A store failure is 503 (fail closed).
   */
  private async consume(
    checks: ReadonlyArray<readonly [RateRule, string]>,
  ): Promise<{ results: Array<readonly [RateRule, RateLimiterRes]>; retryMs: number | null }> {
    if (this.store instanceof RedisStore) {
      // Only the sign-in limits come here with Redis, one rule at a time (a call's rules go in one script, checkRate).
      // The limiter talks to the Redis client itself: like every store command, it waits for the first connection.
      await this.store.connected();
      return this.take(checks);
    }
    const run = this.queue.then(() => this.takeIfRoom(checks));
    this.queue = run.catch(() => {});
    return run;
  }

  /**
   * In process, with several rules: reads every counter, and takes the points only if each has room. Run one at a
   * time (`queue`), so no other call takes a point between the reads and the takes; rate-limiter-flexible's memory
   * limiter answers at once, so the wait is a few microtasks.
   */
  private async takeIfRoom(
    checks: ReadonlyArray<readonly [RateRule, string]>,
  ): Promise<{ results: Array<readonly [RateRule, RateLimiterRes]>; retryMs: number | null }> {
    if (checks.length < 2) return this.take(checks);
    const current = await Promise.all(checks.map(([rule, key]) => this.limiter(rule).get(key)));
    if (checks.every(([rule], i) => (current[i]?.consumedPoints ?? 0) + 1 <= rule.limit)) return this.take(checks);
    let retryMs = 0;
    const results = checks.map(([rule], i) => {
      const consumed = current[i]?.consumedPoints ?? 0;
      const msBeforeNext = current[i]?.msBeforeNext ?? rule.windowSeconds * 1000;
      if (consumed + 1 <= rule.limit) return [rule, new RateLimiterRes(rule.limit - consumed, msBeforeNext, consumed, false)] as const;
      retryMs = Math.max(retryMs, msBeforeNext);
      return [rule, new RateLimiterRes(0, msBeforeNext, consumed + 1, false)] as const;
    });
    return { results, retryMs };
  }

  /** Takes one point from each rule's counter; `retryMs` as `consume` says. */
  private async take(
    checks: ReadonlyArray<readonly [RateRule, string]>,
  ): Promise<{ results: Array<readonly [RateRule, RateLimiterRes]>; retryMs: number | null }> {
    const outcomes = await Promise.allSettled(checks.map(([rule, key]) => this.limiter(rule).consume(key, 1)));
    const results: Array<readonly [RateRule, RateLimiterRes]> = [];
    let retryMs: number | null = null;
    outcomes.forEach((outcome, index) => {
      const value = outcome.status === 'fulfilled' ? outcome.value : outcome.reason;
      // rate-limiter-flexible rejects with a RateLimiterRes when over the limit, with an Error when its store fails.
      if (!(value instanceof RateLimiterRes)) throw new KeywardError('store_unavailable', { cause: value });
      if (outcome.status === 'rejected') retryMs = Math.max(retryMs ?? 0, value.msBeforeNext);
      results.push([checks[index]![0], value]);
    });
    return { results, retryMs };
  }

  /**
   * Reserves quotas (1 request) and budgets (`units`, the worst case) in one atomic step. Throws 429
   * `quota_exceeded` / `budget_exceeded` with Retry-After (the end of the period) when one would overshoot.
   */
  async reserve(limits: RouteLimits, who: LimitSubject, units: number, rate: Array<readonly [RateRule, RateLimiterRes]>): Promise<LimitGrant> {
    const meters = limits.meters.filter((rule) => appliesTo(rule, who.roles));
    if (meters.length === 0 && rate.length === 0) return NO_LIMITS;
    const now = this.now();
    const windows = meters.map((rule) => periodWindow(rule.period, now));
    const entries: Reservation[] = meters.map((rule, i) => ({
      key: meterKey(rule, who, windows[i]!.id),
      amount: rule.kind === 'quota' ? 1 : units,
      limit: rule.limit,
      ttlMs: windows[i]!.endsAt - now + METER_GRACE_MS,
    }));
    const { refused, values } = entries.length > 0 ? await guard(() => this.store.reserve(entries)) : { refused: -1, values: [] };
    const quotaState = meters.flatMap((rule, i) =>
      rule.kind === 'quota' ? [{ rule, remaining: Math.max(rule.limit - values[i]!, 0), resetMs: windows[i]!.endsAt - now }] : [],
    );
    const headers = merge([...rateHeaders(rate), ...quotaHeaders(quotaState)]);
    if (refused !== -1) {
      const rule = meters[refused]!;
      throw limitError(rule.kind === 'quota' ? 'quota_exceeded' : 'budget_exceeded', windows[refused]!.endsAt - now, headers);
    }
    // Each counter's period end, for a settle that comes after the counter expired (a stream that outlived its
    // period and the grace): the adjustment then creates the counter again, expiring as it would have.
    const endsAt = new Map(entries.map((entry, i) => [entry.key, windows[i]!.endsAt]));
    const budgetEntries = entries.filter((_, i) => meters[i]!.kind === 'budget' && units > 0);
    let settled = false;
    return {
      headers,
      reserved: budgetEntries.length > 0 ? units : 0,
      settle: async ({ forwarded, usage }) => {
        if (settled) return;
        settled = true;
        const adjustments = forwarded
          ? usage === null || usage === units
            ? []
            : budgetEntries.map((entry) => [entry.key, usage - units] as const)
          : entries.filter((entry) => entry.amount > 0).map((entry) => [entry.key, -entry.amount] as const);
        try {
          const settledAt = this.now();
          await Promise.all(
            adjustments.map(([key, delta]) => this.store.increment(key, delta, Math.max(endsAt.get(key)! - settledAt + METER_GRACE_MS, 1_000))),
          );
        } catch (error) {
          // The reservation stays charged: a budget errs on the side of the worst case, never of overspending.
          this.logger.warn({ err: error instanceof StoreUnavailableError ? error.message : 'settle failed' }, 'budget settle failed');
        }
        if (forwarded && usage !== null && usage > units) {
          this.logger.warn({ reserved: units, usage }, 'upstream reported more usage than was reserved; check the route\'s cost');
        }
      },
    };
  }

  /**
   * What quotas and budgets have counted so far in their current period, for the admin pages: the very counters
   * `reserve` adds to, read without reserving anything, in one store round trip. A rule counted per user is read
   * for that user, one counted for the whole upstream is the upstream's; one counted per credential has no
   * figure for a user (null). Reads every rule's counter as of now; a store failure is 503 `store_unavailable`.
   */
  async meterUsage(queries: ReadonlyArray<{ readonly rule: MeterRule; readonly userId: string }>): Promise<Array<{ used: number | null; resetsAt: number }>> {
    const now = this.now();
    const keys = queries.map(({ rule, userId }) => {
      if (rule.by === 'credential') return null;
      const who: LimitSubject = { upstream: '', userId, roles: [], fingerprint: '', ip: null };
      return meterKey(rule, who, periodWindow(rule.period, now).id);
    });
    const wanted = keys.filter((key): key is string => key !== null);
    const values = wanted.length > 0 ? await guard(() => this.store.getMany(wanted)) : [];
    let next = 0;
    return queries.map(({ rule }, i) => ({
      used: keys[i] === null ? null : Math.max(Number(values[next++] ?? 0) || 0, 0),
      resetsAt: periodWindow(rule.period, now).endsAt,
    }));
  }

  /**
   * Sign-in attempts: per client IP and per username (so rotating IPs cannot guess one account's
   * password faster). Throws 429 `rate_limited` with Retry-After. The IP is counted first, and an attempt it
   * refuses counts for no username: usernames are the caller's text, so a flood from one address must not leave
   * a counter per name it tries (only its first `limit` names per window). An IPv6 client is counted by its /64
   * and by its /48 at SIGNIN_SITE_FACTOR times the limit: a site's 65,536 /64s would otherwise each have the
   * limit, enough to keep the password-hash queue full for everyone and to spray passwords over many usernames.
   *
   * `device` is the id of a valid device cookie for this username (lib/core/limits/device-cookie.ts), or null. An
   * attempt from such a browser counts on that device's counter (the same limit and window) instead of the
   * username's: the username's counter is then what strangers fill, and filling it does not lock the user out of
   * a browser they signed in from before. The address counters come first for every attempt, as without one.
   */
  async checkSignIn(ip: string | null, username: string | null, limit: number, windowSeconds: number, device: string | null = null): Promise<void> {
    const rule = (by: Subject, name: string, points = limit): RateRule => ({ id: `signin|${name}`, name, by, limit: points, windowSeconds, roles: null });
    const byIp = await this.consume([[rule('ip', 'signin-ip'), ip === null ? 'unknown' : limitBucket(ip)]]);
    if (byIp.retryMs !== null) throw limitError('rate_limited', byIp.retryMs, []);
    const site = ip === null ? null : siteBucket(ip);
    if (site !== null) {
      const bySite = await this.consume([[rule('ip', 'signin-site', limit * SIGNIN_SITE_FACTOR), site]]);
      if (bySite.retryMs !== null) throw limitError('rate_limited', bySite.retryMs, []);
    }
    if (!username) return;
    const byName = await this.consume([
      device === null ? [rule('user', 'signin-username'), username.toLowerCase()] : [rule('user', 'signin-device'), device],
    ]);
    if (byName.retryMs !== null) throw limitError('rate_limited', byName.retryMs, []);
  }

  private limiter(rule: RateRule): RateLimiterAbstract {
    let limiter = this.limiters.get(rule.id);
    if (!limiter) {
      const options = { points: rule.limit, duration: rule.windowSeconds, keyPrefix: `${RATE_PREFIX}${rule.id}` };
      limiter =
        this.store instanceof RedisStore
          ? new RateLimiterRedis({ ...options, storeClient: this.store.client, rejectIfRedisNotReady: true })
          : new RateLimiterMemory(options);
      this.limiters.set(rule.id, limiter);
    }
    return limiter;
  }
}

/** A quota's or budget's counter for one subject and period: `meter:<rule id>:<subject>:<period id>`. */
function meterKey(rule: MeterRule, who: LimitSubject, periodId: string): string {
  return `meter:${rule.id}:${subjectKey(rule.by, who)}:${periodId}`;
}

function subjectKey(by: Subject, who: LimitSubject): string {
  switch (by) {
    case 'user':
      return `u:${who.userId}`;
    case 'credential':
      return `k:${who.fingerprint}`;
    case 'upstream':
      return 'all';
    case 'ip':
      return `ip:${who.ip === null ? 'unknown' : limitBucket(who.ip)}`;
  }
}

const seconds = (ms: number) => Math.max(1, Math.ceil(ms / 1000));

function rateHeaders(results: ReadonlyArray<readonly [RateRule, RateLimiterRes]>): Array<[string, string]> {
  return results.flatMap(([rule, res]) => [
    ['ratelimit-policy', `"${rule.name}";q=${rule.limit};w=${rule.windowSeconds}`],
    ['ratelimit', `"${rule.name}";r=${res.remainingPoints};t=${seconds(res.msBeforeNext)}`],
  ]);
}

function quotaHeaders(state: ReadonlyArray<{ rule: MeterRule; remaining: number; resetMs: number }>): Array<[string, string]> {
  return state.flatMap(({ rule, remaining, resetMs }) => [
    ['ratelimit-policy', `"${rule.name}";q=${rule.limit};w=${PERIOD_SECONDS[rule.period]}`],
    ['ratelimit', `"${rule.name}";r=${remaining};t=${seconds(resetMs)}`],
  ]);
}

const PERIOD_SECONDS = { minute: 60, hour: 3600, day: 86_400, month: 2_592_000 } as const;

/** Both fields are lists (RFC 9651 structured fields): one header line each, items joined by ", ". */
function merge(headers: ReadonlyArray<readonly [string, string]>): Array<[string, string]> {
  const byName = new Map<string, string[]>();
  for (const [name, value] of headers) byName.set(name, [...(byName.get(name) ?? []), value]);
  return [...byName].map(([name, values]) => [name, values.join(', ')]);
}

/**
 * 429 for a call a rate rule had no room for (its counter over the limit once taken): `throttled` when the only
 * such rule is the detector's throttle, else `rate_limited`; Retry-After when the last of them has room again.
 */
function rateRefusal(results: ReadonlyArray<readonly [RateRule, RateLimiterRes]>, retryMs: number, throttle: RateRule | null): KeywardError {
  const byConfig = results.some(([rule, res]) => rule !== throttle && res.consumedPoints > rule.limit);
  return limitError(throttle && !byConfig ? 'throttled' : 'rate_limited', retryMs, rateHeaders(results));
}

function limitError(code: KeywardErrorCode, retryMs: number, headers: ReadonlyArray<readonly [string, string]>): KeywardError {
  return new KeywardError(code, { headers: { ...Object.fromEntries(merge(headers)), 'retry-after': String(seconds(retryMs)) } });
}
