import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../lib/core/config/load';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import { appliesTo, compileRouteLimits, type LimitConfigs } from '../../../lib/core/limits/rules';
import { makeUpstream, thrown } from '../support';

const WHERE = 'upstreams.ai.routes.0';
const compile = (upstream: LimitConfigs, route: Parameters<typeof compileRouteLimits>[3] = {}) =>
  compileRouteLimits('ai', 'POST /chat', upstream, route, WHERE);

function configError(fn: () => unknown): string {
  const error = thrown(fn);
  expect(error).toBeInstanceOf(ConfigError);
  return (error as ConfigError).message;
}

describe('compileRouteLimits: names', () => {
  it('names rules by what they count when no name is given', () => {
    const limits = compile({
      rateLimits: [{ by: 'user', limit: 20, windowSeconds: 60 }],
      quotas: [{ by: 'credential', requests: 500, period: 'day' }],
      budgets: [{ by: 'upstream', units: 100_000, period: 'month' }],
    });
    expect(limits.rate.map((rule) => rule.name)).toEqual(['user-60s']);
    expect(limits.meters.map((rule) => rule.name)).toEqual(['requests-credential-day', 'units-upstream-month']);
  });

  it('prefixes the defaults of route rules with "route-"', () => {
    const limits = compile(
      {},
      {
        rateLimits: [{ by: 'ip', limit: 5, windowSeconds: 1 }],
        quotas: [{ by: 'user', requests: 3, period: 'hour' }],
        budgets: [{ by: 'user', units: 9, period: 'minute' }],
      },
    );
    expect(limits.rate.map((rule) => rule.name)).toEqual(['route-ip-1s']);
    expect(limits.meters.map((rule) => rule.name)).toEqual(['route-requests-user-hour', 'route-units-user-minute']);
  });

  it('keeps explicit names as given, on either level', () => {
    const limits = compile(
      { rateLimits: [{ name: 'burst', by: 'user', limit: 5, windowSeconds: 1 }] },
      { quotas: [{ name: 'daily', by: 'user', requests: 3, period: 'day' }] },
    );
    expect(limits.rate[0]!.name).toBe('burst');
    expect(limits.meters[0]!.name).toBe('daily');
  });

  it('numbers duplicate defaults, per level', () => {
    const rule = { by: 'user' as const, limit: 1, windowSeconds: 60 };
    const limits = compile(
      { rateLimits: [rule, { ...rule, limit: 2 }, { ...rule, limit: 3 }] },
      { rateLimits: [rule, rule] },
    );
    expect(limits.rate.map((r) => [r.name, r.limit])).toEqual([
      ['user-60s', 1],
      ['user-60s-2', 2],
      ['user-60s-3', 3],
      ['route-user-60s', 1],
      ['route-user-60s-2', 1],
    ]);
    const quotas = compile({
      quotas: [
        { by: 'user', requests: 1, period: 'day' },
        { by: 'user', requests: 2, period: 'day' },
      ],
    });
    expect(quotas.meters.map((r) => r.name)).toEqual(['requests-user-day', 'requests-user-day-2']);
  });

  it('numbers a default past an explicit name that took it', () => {
    const limits = compile({
      rateLimits: [
        { name: 'user-60s', by: 'ip', limit: 1, windowSeconds: 5 },
        { by: 'user', limit: 2, windowSeconds: 60 },
      ],
    });
    expect(limits.rate.map((r) => r.name)).toEqual(['user-60s', 'user-60s-2']);
  });

  it('refuses an explicit name used twice, naming the field of the second', () => {
    const rule = { name: 'shared', by: 'user' as const, limit: 1, windowSeconds: 60 };
    expect(configError(() => compile({ rateLimits: [rule, rule] }))).toContain('upstreams.ai.rateLimits.1.name');
    const acrossLists = configError(() =>
      compile({ rateLimits: [rule], budgets: [{ name: 'shared', by: 'user', units: 1, period: 'day' }] }),
    );
    expect(acrossLists).toContain('upstreams.ai.budgets.0.name');
    expect(acrossLists).toContain('"shared"');
    expect(
      configError(() =>
        compile({ rateLimits: [rule] }, { quotas: [{ name: 'shared', by: 'user', requests: 1, period: 'day' }] }),
      ),
    ).toContain(`${WHERE}.quotas.0.name`);
  });

  it('refuses an explicit name equal to a default already given, naming its field', () => {
    const message = configError(() =>
      compile(
        { rateLimits: [{ by: 'user', limit: 1, windowSeconds: 60 }] },
        { rateLimits: [{ name: 'user-60s', by: 'ip', limit: 1, windowSeconds: 1 }] },
      ),
    );
    expect(message).toContain(`${WHERE}.rateLimits.0.name`);
  });
});

describe('compileRouteLimits: rules and counters', () => {
  it('copies each rule’s subject, limit, window or period and roles', () => {
    const limits = compile(
      {
        rateLimits: [{ by: 'credential', limit: 20, windowSeconds: 60, roles: ['free'] }],
        quotas: [{ by: 'user', requests: 500, period: 'day' }],
      },
      { budgets: [{ by: 'upstream', units: 1000, period: 'month', roles: ['free', 'trial'] }] },
    );
    expect(limits.rate).toEqual([
      {
        id: 'ai|*|credential-60s',
        name: 'credential-60s',
        by: 'credential',
        limit: 20,
        windowSeconds: 60,
        roles: new Set(['free']),
      },
    ]);
    expect(limits.meters).toEqual([
      {
        id: 'ai|*|requests-user-day',
        name: 'requests-user-day',
        kind: 'quota',
        by: 'user',
        limit: 500,
        period: 'day',
        roles: null,
      },
      {
        id: 'ai|POST /chat|route-units-upstream-month',
        name: 'route-units-upstream-month',
        kind: 'budget',
        by: 'upstream',
        limit: 1000,
        period: 'month',
        roles: new Set(['free', 'trial']),
      },
    ]);
  });

  it('shares upstream rules across routes (one counter), and keeps route rules apart', () => {
    const { upstream } = makeUpstream(
      {
        rateLimits: [{ by: 'user', limit: 10, windowSeconds: 60 }],
        routes: [
          { method: 'GET', path: '/a', rateLimits: [{ by: 'user', limit: 1, windowSeconds: 60 }] },
          { method: 'POST', path: '/a', rateLimits: [{ by: 'user', limit: 1, windowSeconds: 60 }] },
          { method: 'GET', path: '/b' },
        ],
      },
      'ai',
    );
    const [getA, postA, getB] = upstream.routes.map((route) => route.limits);
    expect(getA!.rate[0]!.id).toBe('ai|*|user-60s');
    expect(postA!.rate[0]!.id).toBe(getA!.rate[0]!.id);
    expect(getB!.rate.map((r) => r.id)).toEqual([getA!.rate[0]!.id]);
    expect(getA!.rate[1]!.id).not.toBe(postA!.rate[1]!.id);
    expect(getA!.rate[1]!.name).toBe(postA!.rate[1]!.name);
  });

  it('keeps upstreams apart', () => {
    const rateLimits: UpstreamInput['rateLimits'] = [{ by: 'upstream', limit: 10, windowSeconds: 60 }];
    const one = makeUpstream({ rateLimits }, 'one').upstream.routes[0]!.limits.rate[0]!;
    const two = makeUpstream({ rateLimits }, 'two').upstream.routes[0]!.limits.rate[0]!;
    expect(one.name).toBe(two.name);
    expect(one.id).not.toBe(two.id);
  });

  it('costs 1 unit by default; a route’s cost is kept as parsed', () => {
    expect(compile({}).cost).toEqual({ reserve: 1 });
    const { upstream } = makeUpstream({
      routes: [
        { method: 'GET', path: '/' },
        {
          method: 'POST',
          path: '/chat',
          body: { type: 'object', properties: { max_tokens: { type: 'integer' } } },
          cost: { reserve: 500, reserveFrom: { field: 'body.max_tokens' }, usage: { header: 'X-Usage-Units' } },
        },
      ],
    });
    expect(upstream.routes[0]!.limits.cost).toEqual({ reserve: 1 });
    expect(upstream.routes[1]!.limits.cost).toEqual({
      reserve: 500,
      reserveFrom: { field: 'body.max_tokens', times: 1, plus: 0 },
      usage: { header: 'x-usage-units' },
    });
  });

  it('is empty without any rule', () => {
    const limits = compile({});
    expect(limits.rate).toEqual([]);
    expect(limits.meters).toEqual([]);
  });

  it('is what the registry reports for a duplicate explicit name at start-up', () => {
    const error = thrown(() =>
      makeUpstream({
        quotas: [{ name: 'q', by: 'user', requests: 1, period: 'day' }],
        routes: [
          { method: 'GET', path: '/' },
          { method: 'GET', path: '/x', budgets: [{ name: 'q', by: 'user', units: 1, period: 'day' }] },
        ],
      }),
    );
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('upstreams.echo.routes.1.budgets.0.name');
  });
});

describe('appliesTo', () => {
  it('applies a rule without roles to everyone', () => {
    expect(appliesTo({ roles: null }, [])).toBe(true);
    expect(appliesTo({ roles: null }, ['anything'])).toBe(true);
  });

  it('applies a rule with roles to sessions holding any one of them', () => {
    const rule = { roles: new Set(['free', 'trial']) };
    expect(appliesTo(rule, ['trial'])).toBe(true);
    expect(appliesTo(rule, ['pro', 'free'])).toBe(true);
    expect(appliesTo(rule, ['pro'])).toBe(false);
    expect(appliesTo(rule, ['Free'])).toBe(false);
    expect(appliesTo(rule, [])).toBe(false);
  });
});
