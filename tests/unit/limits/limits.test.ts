import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, expect, it } from 'vitest';
import { MAX_RATE_WINDOW_SECONDS } from '../../../lib/core/config/policy';
import { throttleRule } from '../../../lib/core/detect/marks';
import type { KeywardErrorCode } from '../../../lib/core/errors';
import { Limits, type LimitSubject } from '../../../lib/core/limits/limits';
import { compileRouteLimits, type LimitConfigs, type RouteLimits } from '../../../lib/core/limits/rules';
import { createLogger } from '../../../lib/core/log/logger';
import { MemoryStore } from '../../../lib/store/memory';
import { SqliteStore } from '../../../lib/store/sqlite';
import { StoreUnavailableError, type Reservation, type Store } from '../../../lib/store/types';
import { expectKeywardError, rejected } from '../support';

/** 2027-06-15 20:00 UTC: the day ends in 4 h, the month (July 1st) in 15 days 4 h. */
const NOW = Date.UTC(2027, 5, 15, 20, 0, 0);
const DAY_LEFT_S = 4 * 3600;
const MONTH_LEFT_S = 15 * 86_400 + 4 * 3600;

function setup(
  upstream: LimitConfigs,
  route: LimitConfigs = {},
  options: { now?: () => number; store?: Store } = {},
) {
  const store = options.store ?? new MemoryStore();
  const warnings: Array<Record<string, unknown>> = [];
  const logger = createLogger({
    level: 'warn',
    destination: { write: (line: string) => void warnings.push(JSON.parse(line)) },
  });
  const limits = new Limits(store, logger, options.now ?? (() => NOW));
  const rules = compileRouteLimits('ai', 'POST /chat', upstream, route, 'upstreams.ai.routes.0');
  return { store, limits, rules, warnings };
}

function who(overrides: Partial<LimitSubject> = {}): LimitSubject {
  return { upstream: 'ai', userId: 'alice', roles: ['user'], fingerprint: 'fp-a', ip: '203.0.113.7', ...overrides };
}

/** 'ok', or the error's code: what became of a call, for tests that run several. */
function outcomeOf(promise: Promise<unknown>): Promise<string> {
  return promise.then(
    () => 'ok',
    (error: { code?: string }) => error.code ?? 'error',
  );
}

/** Awaits a refusal with `code` (429) and returns its headers. */
async function refusal(promise: Promise<unknown>, code: KeywardErrorCode): Promise<Record<string, string>> {
  const error = expectKeywardError(await rejected(promise), code);
  expect(error.status).toBe(429);
  return error.headers;
}

/** Checks rate limits then reserves, as the pipeline does. */
async function call(limits: Limits, rules: RouteLimits, subject: LimitSubject = who(), units = 1) {
  const rate = await limits.checkRate(rules, subject);
  return limits.reserve(rules, subject, units, rate);
}

const secondsIn = (value: string | undefined, max: number) => {
  expect(value).toMatch(/^\d+$/);
  const n = Number(value);
  expect(n).toBeGreaterThanOrEqual(1);
  expect(n).toBeLessThanOrEqual(max);
  return n;
};

describe('Limits.checkRate', () => {
  it('allows up to the limit, then refuses with 429 rate_limited, Retry-After and RateLimit fields', async () => {
    const { limits, rules } = setup({ rateLimits: [{ by: 'user', limit: 3, windowSeconds: 60 }] });
    const remaining: number[] = [];
    for (let i = 0; i < 3; i++) {
      const results = await limits.checkRate(rules, who());
      expect(results).toHaveLength(1);
      expect(results[0]![0].name).toBe('user-60s');
      remaining.push(results[0]![1].remainingPoints);
    }
    expect(remaining).toEqual([2, 1, 0]);
    const headers = await refusal(limits.checkRate(rules, who()), 'rate_limited');
    const retry = secondsIn(headers['retry-after'], 60);
    expect(headers['ratelimit-policy']).toBe('"user-60s";q=3;w=60');
    const match = /^"user-60s";r=0;t=(\d+)$/.exec(headers.ratelimit ?? '');
    expect(match, headers.ratelimit).not.toBeNull();
    expect(secondsIn(match![1], 60)).toBe(retry);
  });

  it('gives the RateLimit fields of an allowed call through the grant', async () => {
    const { limits, rules } = setup({
      rateLimits: [
        { by: 'user', limit: 10, windowSeconds: 60 },
        { name: 'hourly', by: 'upstream', limit: 100, windowSeconds: 3600 },
      ],
    });
    await call(limits, rules);
    const grant = await call(limits, rules);
    const headers = new Map(grant.headers);
    expect(headers.get('ratelimit-policy')).toBe('"user-60s";q=10;w=60, "hourly";q=100;w=3600');
    const match = /^"user-60s";r=8;t=(\d+), "hourly";r=98;t=(\d+)$/.exec(headers.get('ratelimit') ?? '');
    expect(match, headers.get('ratelimit')).not.toBeNull();
    secondsIn(match![1], 60);
    secondsIn(match![2], 3600);
    expect(grant.reserved).toBe(0);
  });

  it('sets Retry-After from the rule that is exhausted', async () => {
    const { limits, rules } = setup({
      rateLimits: [
        { by: 'upstream', limit: 1000, windowSeconds: 86_400 },
        { by: 'user', limit: 1, windowSeconds: 30 },
      ],
    });
    await limits.checkRate(rules, who());
    const headers = await refusal(limits.checkRate(rules, who()), 'rate_limited');
    secondsIn(headers['retry-after'], 30);
    expect(headers['ratelimit-policy']).toBe('"upstream-86400s";q=1000;w=86400, "user-30s";q=1;w=30');
    expect(headers.ratelimit).toMatch(/^"upstream-86400s";r=99\d;t=\d+, "user-30s";r=0;t=\d+$/);
  });

  it('applies a rule with roles only to sessions holding one of them', async () => {
    const { limits, rules } = setup({ rateLimits: [{ by: 'user', limit: 1, windowSeconds: 60, roles: ['free'] }] });
    for (let i = 0; i < 5; i++) expect(await limits.checkRate(rules, who({ roles: ['pro'] }))).toEqual([]);
    await limits.checkRate(rules, who({ userId: 'bob', roles: ['free'] }));
    await refusal(limits.checkRate(rules, who({ userId: 'bob', roles: ['free'] })), 'rate_limited');
    await limits.checkRate(rules, who({ userId: 'carol', roles: ['pro', 'free'] }));
    await refusal(limits.checkRate(rules, who({ userId: 'carol', roles: ['pro', 'free'] })), 'rate_limited');
  });

  it('the longest window the schema takes still limits in memory (a timer past 2^31 ms would fire at once)', async () => {
    const { limits, rules } = setup({ rateLimits: [{ by: 'user', limit: 2, windowSeconds: MAX_RATE_WINDOW_SECONDS }] });
    await limits.checkRate(rules, who());
    await limits.checkRate(rules, who());
    // rate-limiter-flexible's in-memory store sets a timer to forget the counter when its window ends.
    await new Promise((resolve) => setTimeout(resolve, 20));
    await refusal(limits.checkRate(rules, who()), 'rate_limited');
  });

  it('by user: each user has their own counter', async () => {
    const { limits, rules } = setup({ rateLimits: [{ by: 'user', limit: 2, windowSeconds: 60 }] });
    await limits.checkRate(rules, who({ userId: 'alice' }));
    await limits.checkRate(rules, who({ userId: 'alice', ip: '198.51.100.1', fingerprint: 'fp-b' }));
    await refusal(limits.checkRate(rules, who({ userId: 'alice' })), 'rate_limited');
    await limits.checkRate(rules, who({ userId: 'bob' }));
    await limits.checkRate(rules, who({ userId: 'bob' }));
  });

  it('by credential: callers of one key share a counter, other keys do not', async () => {
    const { limits, rules } = setup({ rateLimits: [{ by: 'credential', limit: 2, windowSeconds: 60 }] });
    await limits.checkRate(rules, who({ userId: 'alice', fingerprint: 'fp-a' }));
    await limits.checkRate(rules, who({ userId: 'bob', fingerprint: 'fp-a' }));
    await refusal(limits.checkRate(rules, who({ userId: 'carol', fingerprint: 'fp-a' })), 'rate_limited');
    await limits.checkRate(rules, who({ userId: 'alice', fingerprint: 'fp-b' }));
  });

  it('by upstream: everyone shares one counter', async () => {
    const { limits, rules } = setup({ rateLimits: [{ by: 'upstream', limit: 2, windowSeconds: 60 }] });
    await limits.checkRate(rules, who({ userId: 'alice', fingerprint: 'fp-a', ip: '203.0.113.7' }));
    await limits.checkRate(rules, who({ userId: 'bob', fingerprint: 'fp-b', ip: '198.51.100.1' }));
    await refusal(limits.checkRate(rules, who({ userId: 'carol', fingerprint: 'fp-c', ip: null })), 'rate_limited');
  });

  it('by ip: each address has its own counter; callers without one share one', async () => {
    const { limits, rules } = setup({ rateLimits: [{ by: 'ip', limit: 2, windowSeconds: 60 }] });
    await limits.checkRate(rules, who({ userId: 'alice', ip: '203.0.113.7' }));
    await limits.checkRate(rules, who({ userId: 'bob', ip: '203.0.113.7' }));
    await refusal(limits.checkRate(rules, who({ userId: 'carol', ip: '203.0.113.7' })), 'rate_limited');
    await limits.checkRate(rules, who({ userId: 'alice', ip: '198.51.100.1' }));
    await limits.checkRate(rules, who({ userId: 'alice', ip: null }));
    await limits.checkRate(rules, who({ userId: 'bob', ip: null }));
    await refusal(limits.checkRate(rules, who({ userId: 'carol', ip: null })), 'rate_limited');
  });

  it('keeps route rules of different routes apart and counts upstream rules across them', async () => {
    const upstream: LimitConfigs = { rateLimits: [{ by: 'user', limit: 3, windowSeconds: 60 }] };
    const { limits } = setup({});
    const chat = compileRouteLimits(
      'ai',
      'POST /chat',
      upstream,
      { rateLimits: [{ by: 'user', limit: 1, windowSeconds: 60 }] },
      'w',
    );
    const models = compileRouteLimits(
      'ai',
      'GET /models',
      upstream,
      { rateLimits: [{ by: 'user', limit: 10, windowSeconds: 60 }] },
      'w',
    );
    await limits.checkRate(chat, who());
    const routeLimited = await refusal(limits.checkRate(chat, who()), 'rate_limited');
    expect(routeLimited.ratelimit).toMatch(/"route-user-60s";r=0;/);
    // The chat route's own counter does not apply to /models, but the upstream's does: 1 call so far (the refused
    // one counted on no counter), then two to /models.
    await limits.checkRate(models, who());
    await limits.checkRate(models, who());
    const upstreamLimited = await refusal(limits.checkRate(models, who()), 'rate_limited');
    expect(upstreamLimited.ratelimit).toMatch(/^"user-60s";r=0;t=\d+, "route-user-60s";r=8;t=\d+$/);
  });

  it('returns nothing and counts nothing when no rule applies', async () => {
    const { limits, rules } = setup({});
    expect(await limits.checkRate(rules, who())).toEqual([]);
    const grant = await limits.reserve(rules, who(), 10, []);
    expect(grant.headers).toEqual([]);
    expect(grant.reserved).toBe(0);
    await expect(grant.settle({ forwarded: true, usage: 5 })).resolves.toBeUndefined();
  });
});

describe("the detector's throttle, in the embedded stores' in-memory limiters", () => {
  it("each throttled user is held to their own mark's limit, whichever mark the process saw first", async () => {
    const limits = new Limits(new SqliteStore(':memory:'), createLogger({ level: 'silent' }), () => NOW);
    const allowed = async (mark: string, userId: string, calls: number) => {
      const rule = throttleRule(mark)!;
      let passed = 0;
      for (let i = 0; i < calls; i++) {
        const outcome = await limits.checkRate({ rate: [rule], meters: [], cost: { reserve: 1 } }, who({ userId })).then(
          () => 'ok',
          () => 'limited',
        );
        if (outcome === 'ok') passed++;
      }
      return passed;
    };
    expect(await allowed(JSON.stringify({ limit: 10, windowSeconds: 60 }), 'alice', 20)).toBe(10);
    expect(await allowed(JSON.stringify({ limit: 2, windowSeconds: 60 }), 'bob', 20)).toBe(2);
    // An unreadable mark still throttles, at one call a minute (fail closed).
    expect(await allowed('garbage', 'carol', 5)).toBe(1);
  });

  it('counts in the same all-or-nothing take as the configured rules, and names whichever refused', async () => {
    const { limits, rules } = setup({ rateLimits: [{ by: 'upstream', limit: 2, windowSeconds: 60 }] }, {}, { store: new SqliteStore(':memory:') });
    const throttle = throttleRule(JSON.stringify({ limit: 2, windowSeconds: 60 }))!;
    const alone: RouteLimits = { rate: [], meters: [], cost: { reserve: 1 } };
    // The throttle's first point, and the upstream's first.
    expect(await outcomeOf(limits.checkRate(rules, who(), throttle))).toBe('ok');
    // Bob uses the upstream's second place: Alice's next call is refused by the upstream's rule, not the throttle,
    // and takes no point from her throttle.
    expect(await outcomeOf(limits.checkRate(rules, who({ userId: 'bob' })))).toBe('ok');
    expect(await outcomeOf(limits.checkRate(rules, who(), throttle))).toBe('rate_limited');
    expect(await outcomeOf(limits.checkRate(alone, who(), throttle))).toBe('ok');
    // Now only the throttle has no room: `throttled`, with the throttle's window in Retry-After.
    const headers = await refusal(limits.checkRate(alone, who(), throttle), 'throttled');
    expect(headers['retry-after']).toBe('60');
  });
});

describe('Limits.reserve: quotas and budgets', () => {
  const quota = { by: 'user' as const, requests: 2, period: 'day' as const };
  const budget = { by: 'user' as const, units: 100, period: 'month' as const };

  it('counts requests against a quota and refuses with 429 quota_exceeded until the end of the day', async () => {
    const { limits, rules } = setup({ quotas: [quota] });
    const first = await limits.reserve(rules, who(), 1, []);
    expect(new Map(first.headers)).toEqual(
      new Map([
        ['ratelimit-policy', '"requests-user-day";q=2;w=86400'],
        ['ratelimit', `"requests-user-day";r=1;t=${DAY_LEFT_S}`],
      ]),
    );
    expect(first.reserved).toBe(0);
    const second = await limits.reserve(rules, who(), 1, []);
    expect(new Map(second.headers).get('ratelimit')).toBe(`"requests-user-day";r=0;t=${DAY_LEFT_S}`);
    const headers = await refusal(limits.reserve(rules, who(), 1, []), 'quota_exceeded');
    expect(headers['retry-after']).toBe(String(DAY_LEFT_S));
    expect(headers['ratelimit-policy']).toBe('"requests-user-day";q=2;w=86400');
    expect(headers.ratelimit).toBe(`"requests-user-day";r=0;t=${DAY_LEFT_S}`);
    // Another user has their own quota.
    await limits.reserve(rules, who({ userId: 'bob' }), 1, []);
  });

  it('reserves units against a budget and refuses with 429 budget_exceeded until the end of the month', async () => {
    const { limits, rules } = setup({ budgets: [budget] });
    const grant = await limits.reserve(rules, who(), 60, []);
    expect(grant.reserved).toBe(60);
    // Budgets are not advertised in the RateLimit fields.
    expect(grant.headers).toEqual([]);
    const headers = await refusal(limits.reserve(rules, who(), 41, []), 'budget_exceeded');
    expect(headers['retry-after']).toBe(String(MONTH_LEFT_S));
    expect(headers).not.toHaveProperty('ratelimit');
    expect((await limits.reserve(rules, who(), 40, [])).reserved).toBe(40);
    await refusal(limits.reserve(rules, who(), 1, []), 'budget_exceeded');
  });

  it('puts rate limit and quota fields in one list each', async () => {
    const { limits, rules } = setup({ rateLimits: [{ by: 'user', limit: 5, windowSeconds: 60 }], quotas: [quota] });
    const grant = await call(limits, rules);
    const headers = new Map(grant.headers);
    expect(grant.headers).toHaveLength(2);
    expect(headers.get('ratelimit-policy')).toBe('"user-60s";q=5;w=60, "requests-user-day";q=2;w=86400');
    expect(headers.get('ratelimit')).toMatch(
      new RegExp(`^"user-60s";r=4;t=\\d+, "requests-user-day";r=1;t=${DAY_LEFT_S}$`),
    );
  });

  it('is all or nothing: a refused budget does not count against the quota', async () => {
    const { limits, rules } = setup({ quotas: [{ ...quota, requests: 5 }], budgets: [budget] });
    await limits.reserve(rules, who(), 60, []);
    await refusal(limits.reserve(rules, who(), 50, []), 'budget_exceeded');
    await refusal(limits.reserve(rules, who(), 41, []), 'budget_exceeded');
    const grant = await limits.reserve(rules, who(), 40, []);
    // Two quota requests used of five: the refused ones took nothing.
    expect(new Map(grant.headers).get('ratelimit')).toBe(`"requests-user-day";r=3;t=${DAY_LEFT_S}`);
  });

  it('names the first rule that would overshoot', async () => {
    const { limits, rules } = setup({ quotas: [{ ...quota, requests: 1 }], budgets: [{ ...budget, units: 1 }] });
    await limits.reserve(rules, who(), 1, []);
    await refusal(limits.reserve(rules, who(), 1, []), 'quota_exceeded');
  });

  it('applies a meter with roles only to sessions holding one of them', async () => {
    const { limits, rules } = setup({ budgets: [{ ...budget, roles: ['free'] }] });
    const pro = await limits.reserve(rules, who({ roles: ['pro'] }), 1_000_000, []);
    expect(pro.reserved).toBe(0);
    await refusal(limits.reserve(rules, who({ roles: ['free'] }), 101, []), 'budget_exceeded');
  });

  it('shares a budget by credential or by upstream across users', async () => {
    const byKey = setup({ budgets: [{ ...budget, by: 'credential' }] });
    await byKey.limits.reserve(byKey.rules, who({ userId: 'alice', fingerprint: 'k1' }), 70, []);
    await refusal(
      byKey.limits.reserve(byKey.rules, who({ userId: 'bob', fingerprint: 'k1' }), 31, []),
      'budget_exceeded',
    );
    await byKey.limits.reserve(byKey.rules, who({ userId: 'bob', fingerprint: 'k2' }), 100, []);
    const all = setup({ budgets: [{ ...budget, by: 'upstream' }] });
    await all.limits.reserve(all.rules, who({ userId: 'alice', fingerprint: 'k1' }), 70, []);
    await refusal(all.limits.reserve(all.rules, who({ userId: 'bob', fingerprint: 'k2' }), 31, []), 'budget_exceeded');
  });

  it('starts again in the next period', async () => {
    let now = NOW;
    const { limits, rules } = setup({ quotas: [{ ...quota, requests: 1 }], budgets: [budget] }, {}, { now: () => now });
    await limits.reserve(rules, who(), 100, []);
    await refusal(limits.reserve(rules, who(), 0, []), 'quota_exceeded');
    now = Date.UTC(2027, 5, 16, 0, 0, 0); // the next day, same month
    const headers = await refusal(limits.reserve(rules, who(), 1, []), 'budget_exceeded');
    expect(headers['retry-after']).toBe(String(15 * 86_400));
    expect((await limits.reserve(rules, who(), 0, [])).reserved).toBe(0);
    now = Date.UTC(2027, 6, 1, 0, 0, 0); // July
    expect((await limits.reserve(rules, who(), 100, [])).reserved).toBe(100);
  });

  it('sets a counter’s ttl past the end of its period', async () => {
    const seen: Reservation[][] = [];
    const store = new (class extends MemoryStore {
      override async reserve(entries: readonly Reservation[]) {
        seen.push([...entries]);
        return super.reserve(entries);
      }
    })();
    const { limits, rules } = setup({ quotas: [quota], budgets: [budget] }, {}, { store });
    await limits.reserve(rules, who(), 7, []);
    const [entries] = seen;
    expect(entries!.map((e) => [e.amount, e.limit])).toEqual([
      [1, 2],
      [7, 100],
    ]);
    expect(entries![0]!.ttlMs).toBeGreaterThan(DAY_LEFT_S * 1000);
    expect(entries![1]!.ttlMs).toBeGreaterThan(MONTH_LEFT_S * 1000);
    // Different periods and subjects never share a key.
    expect(new Set(entries!.map((e) => e.key)).size).toBe(2);
  });

  it('fails closed with 503 store_unavailable when the store does not answer', async () => {
    const store = new (class extends MemoryStore {
      override async reserve(): Promise<never> {
        throw new StoreUnavailableError('memory');
      }
    })();
    const { limits, rules } = setup({ quotas: [quota] }, {}, { store });
    const error = expectKeywardError(await rejected(limits.reserve(rules, who(), 1, [])), 'store_unavailable');
    expect(error.status).toBe(503);
  });
});

describe('LimitGrant.settle', () => {
  const configs: LimitConfigs = {
    quotas: [{ by: 'user', requests: 3, period: 'day' }],
    budgets: [{ by: 'user', units: 100, period: 'month' }],
  };
  const quotaLeft = (headers: ReadonlyArray<readonly [string, string]>) =>
    Number(/r=(\d+)/.exec(new Map(headers).get('ratelimit') ?? '')?.[1] ?? NaN);

  it('returns everything reserved when the upstream was never called', async () => {
    const { limits, rules } = setup(configs);
    const grant = await limits.reserve(rules, who(), 100, []);
    await grant.settle({ forwarded: false, usage: null });
    // The whole budget and the quota request are back.
    const again = await limits.reserve(rules, who(), 100, []);
    expect(quotaLeft(again.headers)).toBe(2);
  });

  it('charges the reported usage instead of the reservation', async () => {
    const { limits, rules } = setup(configs);
    const grant = await limits.reserve(rules, who(), 60, []);
    await grant.settle({ forwarded: true, usage: 10 });
    await refusal(limits.reserve(rules, who(), 91, []), 'budget_exceeded');
    const next = await limits.reserve(rules, who(), 90, []);
    // The quota still counts the forwarded call.
    expect(quotaLeft(next.headers)).toBe(1);
  });

  it('charges usage above the reservation, and says so in the log', async () => {
    const { limits, rules, warnings } = setup(configs);
    const grant = await limits.reserve(rules, who(), 10, []);
    await grant.settle({ forwarded: true, usage: 80 });
    await refusal(limits.reserve(rules, who(), 21, []), 'budget_exceeded');
    await limits.reserve(rules, who(), 20, []);
    expect(warnings.some((line) => line.reserved === 10 && line.usage === 80)).toBe(true);
  });

  it('keeps the reservation when the upstream reported no usage', async () => {
    const { limits, rules } = setup(configs);
    const grant = await limits.reserve(rules, who(), 60, []);
    await grant.settle({ forwarded: true, usage: null });
    await refusal(limits.reserve(rules, who(), 41, []), 'budget_exceeded');
    await limits.reserve(rules, who(), 40, []);
  });

  it('a settle after the counter expired (a stream that outlived its period) leaves no counter that never expires', async () => {
    let now = NOW;
    const path = join(mkdtempSync(join(tmpdir(), 'keyward-settle-')), 'store.sqlite');
    const store = new SqliteStore(path, () => now);
    const { limits, rules } = setup(configs, {}, { store, now: () => now });
    const grant = await limits.reserve(rules, who(), 60, []);
    now += 40 * 86_400_000; // past the month's end and the grace hour: the budget's counter is gone
    await grant.settle({ forwarded: true, usage: 10 });
    const db = new DatabaseSync(path, { readOnly: true });
    try {
      const rows = db.prepare('SELECT key, value, expires_at FROM kv').all() as Array<{ key: string; value: string; expires_at: number | null }>;
      // The adjustment (-50) may create the old period's counter again, but only until it would have expired.
      expect(rows.length).toBeGreaterThan(0);
      for (const row of rows) {
        expect(row.expires_at).not.toBeNull();
        expect(row.expires_at!).toBeLessThanOrEqual(now + 3_600_000);
      }
    } finally {
      db.close();
      await store.close();
    }
  });

  it('settles once: later calls change nothing', async () => {
    const refunded = setup(configs);
    const a = await refunded.limits.reserve(refunded.rules, who(), 60, []);
    await a.settle({ forwarded: false, usage: null });
    await a.settle({ forwarded: false, usage: null });
    await a.settle({ forwarded: true, usage: 0 });
    await refunded.limits.reserve(refunded.rules, who(), 100, []);
    await refusal(refunded.limits.reserve(refunded.rules, who(), 1, []), 'budget_exceeded');

    const charged = setup(configs);
    const b = await charged.limits.reserve(charged.rules, who(), 60, []);
    await Promise.all([b.settle({ forwarded: true, usage: 10 }), b.settle({ forwarded: true, usage: 10 })]);
    await b.settle({ forwarded: false, usage: null });
    await refusal(charged.limits.reserve(charged.rules, who(), 91, []), 'budget_exceeded');
    await charged.limits.reserve(charged.rules, who(), 90, []);
  });

  it('touches no budget for a reservation of 0 units, but still refunds the quota', async () => {
    const { limits, rules } = setup(configs);
    const grant = await limits.reserve(rules, who(), 0, []);
    expect(grant.reserved).toBe(0);
    await grant.settle({ forwarded: true, usage: 50 });
    await limits.reserve(rules, who(), 100, []);
    const free = setup(configs);
    const zero = await free.limits.reserve(free.rules, who(), 0, []);
    await zero.settle({ forwarded: false, usage: null });
    expect(quotaLeft((await free.limits.reserve(free.rules, who(), 0, [])).headers)).toBe(2);
  });

  it('logs and keeps the charge when the store fails while settling', async () => {
    const store = new (class extends MemoryStore {
      override async increment(): Promise<never> {
        throw new StoreUnavailableError('memory');
      }
    })();
    const { limits, rules, warnings } = setup(configs, {}, { store });
    const grant = await limits.reserve(rules, who(), 60, []);
    await expect(grant.settle({ forwarded: false, usage: null })).resolves.toBeUndefined();
    expect(warnings.some((line) => line.msg === 'budget settle failed')).toBe(true);
    await refusal(limits.reserve(rules, who(), 41, []), 'budget_exceeded');
  });
});

describe('Limits.checkSignIn', () => {
  it('limits attempts per client IP, whatever the username', async () => {
    const { limits } = setup({});
    for (const username of ['a', 'b', 'c']) await limits.checkSignIn('203.0.113.7', username, 3, 60);
    const headers = await refusal(limits.checkSignIn('203.0.113.7', 'd', 3, 60), 'rate_limited');
    secondsIn(headers['retry-after'], 60);
    expect(Object.keys(headers)).toEqual(['retry-after']);
    await limits.checkSignIn('198.51.100.1', 'e', 3, 60);
  });

  it('limits attempts per username across IPs, ignoring case', async () => {
    const { limits } = setup({});
    await limits.checkSignIn('10.0.0.1', 'Alice', 3, 60);
    await limits.checkSignIn('10.0.0.2', 'alice', 3, 60);
    await limits.checkSignIn('10.0.0.3', 'ALICE', 3, 60);
    await refusal(limits.checkSignIn('10.0.0.4', 'aLiCe', 3, 60), 'rate_limited');
    await limits.checkSignIn('10.0.0.4', 'bob', 3, 60);
  });

  it('counts an IPv6 /48 too, at 16 times the limit, so the /64s of one site cannot fill the password queue', async () => {
    const { limits } = setup({});
    // 16 of the /64s in 2001:db8:7::/48, each up to its own limit: 32 attempts, the /48's whole allowance.
    for (let net = 0; net < 16; net++) {
      for (const username of ['a', 'b']) await limits.checkSignIn(`2001:db8:7:${net.toString(16)}::1`, `${username}${net}`, 2, 60);
    }
    const headers = await refusal(limits.checkSignIn('2001:db8:7:ff::1', 'c', 2, 60), 'rate_limited');
    secondsIn(headers['retry-after'], 60);
    // Another /48, and IPv4 addresses (counted one by one, whatever their /24), are untouched.
    await limits.checkSignIn('2001:db8:8:1::1', 'c', 2, 60);
    for (let host = 1; host <= 20; host++) {
      for (const username of ['d', 'e']) await limits.checkSignIn(`198.51.100.${host}`, `${username}${host}`, 2, 60);
    }
  });

  it('an attempt its IP refuses counts for no username (a flood from one address leaves no counter per name)', async () => {
    const { limits } = setup({});
    for (const username of ['a', 'b']) await limits.checkSignIn('203.0.113.9', username, 2, 60);
    for (let i = 0; i < 5; i++) await refusal(limits.checkSignIn('203.0.113.9', 'carol', 2, 60), 'rate_limited');
    // carol's own budget is whole: the refused attempts never reached her counter.
    await limits.checkSignIn('198.51.100.2', 'carol', 2, 60);
    await limits.checkSignIn('198.51.100.3', 'carol', 2, 60);
    await refusal(limits.checkSignIn('198.51.100.4', 'carol', 2, 60), 'rate_limited');
  });

  it('counts only the IP without a username, and puts callers without an IP in one bucket', async () => {
    const { limits } = setup({});
    await limits.checkSignIn('203.0.113.7', null, 2, 60);
    await limits.checkSignIn('203.0.113.7', '', 2, 60);
    await refusal(limits.checkSignIn('203.0.113.7', null, 2, 60), 'rate_limited');
    await limits.checkSignIn(null, 'x', 2, 60);
    await limits.checkSignIn(null, 'y', 2, 60);
    await refusal(limits.checkSignIn(null, 'z', 2, 60), 'rate_limited');
  });

  it('does not share counters with proxy rate limits', async () => {
    const { limits, rules } = setup({
      rateLimits: [
        { by: 'user', limit: 1, windowSeconds: 60 },
        { by: 'ip', limit: 1, windowSeconds: 60 },
      ],
    });
    await limits.checkSignIn('203.0.113.7', 'alice', 1, 60);
    await limits.checkRate(rules, who({ userId: 'alice', ip: '203.0.113.7' }));
  });
});

describe('a call one rate rule refuses takes no point from the others', () => {
  // One user's flood past their own limit must not use up a counter they share with others (the key's, the upstream's).
  it.each([
    ['memory', () => new MemoryStore()],
    ['SQLite', () => new SqliteStore(join(mkdtempSync(join(tmpdir(), 'keyward-limits-')), 'k.db'))],
  ])('%s store', async (_name, store) => {
    const { limits, rules } = setup({
      rateLimits: [
        { by: 'user', limit: 2, windowSeconds: 60 },
        { by: 'credential', limit: 4, windowSeconds: 60 },
      ],
    }, {}, { store: store() });
    const outcomes: string[] = [];
    for (let i = 0; i < 8; i++) outcomes.push(await outcomeOf(limits.checkRate(rules, who())));
    expect(outcomes).toEqual(['ok', 'ok', ...Array<string>(6).fill('rate_limited')]);
    // The key's counter holds alice's 2 calls only: bob has 2 before the key's limit of 4 is reached.
    await limits.checkRate(rules, who({ userId: 'bob' }));
    await limits.checkRate(rules, who({ userId: 'bob' }));
    await refusal(limits.checkRate(rules, who({ userId: 'carol' })), 'rate_limited');
  });

  it('also when the refused call and another run at the same time: the other sees the shared counter as it stands', async () => {
    const { limits, rules } = setup({
      rateLimits: [
        { by: 'user', limit: 1, windowSeconds: 60 },
        { by: 'upstream', limit: 2, windowSeconds: 60 },
      ],
    });
    await limits.checkRate(rules, who());
    // Alice is over her own limit; Bob, at the same moment, has the upstream's second place.
    const both = await Promise.all([outcomeOf(limits.checkRate(rules, who())), outcomeOf(limits.checkRate(rules, who({ userId: 'bob' })))]);
    expect(both).toEqual(['rate_limited', 'ok']);
    // Two calls served, two places: the next user is refused by the upstream's limit, with it at 0.
    const headers = await refusal(limits.checkRate(rules, who({ userId: 'carol' })), 'rate_limited');
    expect(headers.ratelimit).toMatch(/"upstream-60s";r=0;/);
  });
});
