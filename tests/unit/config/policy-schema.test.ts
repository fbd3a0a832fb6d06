import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, defineUpstream, parseConfig } from '../../../lib/core/config/load';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import { thrown } from '../support';

type RouteJson = Record<string, unknown>;

function upstream(routes: RouteJson[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    baseUrl: 'https://api.example.com/v1/',
    auth: { type: 'bearer', secret: { env: 'API_KEY' } },
    routes,
    ...extra,
  };
}

/** Parses a JSON config with one upstream "ai"; returns the parsed upstream. */
function accept(routes: RouteJson[], extra: Record<string, unknown> = {}) {
  return parseConfig({ upstreams: { ai: upstream(routes, extra) } }, 'test config')[0]!.config;
}

/** parseConfig must throw a ConfigError; returns its message. */
function refuse(routes: RouteJson[], extra: Record<string, unknown> = {}): string {
  const error = thrown(() => parseConfig({ upstreams: { ai: upstream(routes, extra) } }, 'test config'));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as ConfigError).message;
}

const post = (fields: RouteJson): RouteJson => ({ method: 'POST', path: '/chat', ...fields });
const get = (fields: RouteJson): RouteJson => ({ method: 'GET', path: '/items', ...fields });
const R = 'upstreams.ai.routes.0';

describe('field specs: keywords must apply to the type', () => {
  const allowed: Record<string, Record<string, unknown>> = {
    string: { enum: ['a'], minLength: 1, maxLength: 2 },
    integer: { enum: [1], minimum: 0, maximum: 5 },
    number: { enum: [1.5], minimum: 0, maximum: 5 },
    boolean: {},
    array: { items: { type: 'string' }, minItems: 0, maxItems: 3 },
    object: { properties: { a: { type: 'string' } }, required: ['a'] },
  };
  const everyKeyword = { ...allowed.string, ...allowed.integer, ...allowed.array, ...allowed.object };

  for (const [type, keywords] of Object.entries(allowed)) {
    it(`"${type}" accepts its own keywords (and description) and refuses the others, naming each`, () => {
      accept([post({ body: { type, description: 'doc', ...keywords } })]);
      for (const keyword of Object.keys(everyKeyword)) {
        if (keyword in keywords) continue;
        const spec: Record<string, unknown> = {
          type,
          ...keywords,
          [keyword]: everyKeyword[keyword as keyof typeof everyKeyword],
        };
        if (type !== 'array' && keyword === 'items') spec.items = { type: 'string' };
        const message = refuse([post({ body: spec })]);
        expect(message).toContain(`${R}.body.${keyword}: does not apply to type "${type}"`);
      }
    });
  }

  it('checks nested specs too, naming the nested path', () => {
    expect(
      refuse([post({ body: { type: 'object', properties: { a: { type: 'integer', maxLength: 3 } } } })]),
    ).toContain(`${R}.body.properties.a.maxLength: does not apply to type "integer"`);
    expect(refuse([post({ body: { type: 'array', items: { type: 'boolean', enum: [true] } } })])).toContain(
      `${R}.body.items.enum`,
    );
    expect(refuse([get({ query: { properties: { n: { type: 'string', minimum: 1 } } } })])).toContain(
      `${R}.query.properties.n.minimum: does not apply to type "string"`,
    );
  });

  it('needs "items" for an array', () => {
    expect(refuse([post({ body: { type: 'array' } })])).toContain(`${R}.body.items: an array needs "items"`);
    expect(refuse([get({ query: { properties: { ids: { type: 'array' } } } })])).toContain(
      `${R}.query.properties.ids.items`,
    );
  });

  it('refuses keywords outside the subset, e.g. "pattern" (a ReDoS risk)', () => {
    expect(refuse([post({ body: { type: 'string', pattern: '^(a+)+$' } })])).toContain(`${R}.body`);
    expect(refuse([post({ body: { type: 'object', additionalProperties: true } })])).toContain(`${R}.body`);
  });

  // Some of these are reported on the contract as a whole ("…body: Invalid input"): a contract is a union of
  // the declarative form and a zod schema, and zod does not say which branch a type error belongs to.
  it('refuses unknown types, empty or oversized enums and bad counts, naming the contract', () => {
    expect(refuse([post({ body: { type: 'null' } })])).toContain(`${R}.body`);
    expect(refuse([post({ body: { type: 'string', enum: [] } })])).toContain(`${R}.body`);
    expect(
      refuse([post({ body: { type: 'string', enum: Array.from({ length: 257 }, (_, i) => `v${i}`) } })]),
    ).toContain(`${R}.body`);
    expect(refuse([post({ body: { type: 'string', maxLength: -1 } })])).toContain(`${R}.body`);
    expect(refuse([post({ body: { type: 'array', items: { type: 'string' }, maxItems: 1.5 } })])).toContain(
      `${R}.body`,
    );
    expect(refuse([get({ query: { properties: { n: { type: 'integer', minimum: 'one' } } } })])).toContain(
      `${R}.query`,
    );
  });

  it('refuses field names outside letters, digits, "_" and "-"', () => {
    expect(refuse([post({ body: { type: 'object', properties: { 'a.b': { type: 'string' } } } })])).toContain(
      `${R}.body`,
    );
    expect(refuse([get({ query: { properties: { 'a b': { type: 'string' } } } })])).toContain(`${R}.query`);
    expect(refuse([get({ query: { properties: { n: { type: 'string' } }, required: ['a b'] } })])).toContain(
      `${R}.query`,
    );
  });
});

describe('"required" must name declared properties', () => {
  it('refuses a body object whose "required" names a missing property', () => {
    const message = refuse([
      post({ body: { type: 'object', properties: { a: { type: 'string' } }, required: ['a', 'b'] } }),
    ]);
    expect(message).toContain(`${R}.body.required: "b" is not in properties`);
    expect(message).not.toContain('"a" is not');
    expect(refuse([post({ body: { type: 'object', required: ['a'] } })])).toContain(`${R}.body.required`);
  });

  it('refuses it at any depth', () => {
    const nested = {
      type: 'array',
      items: { type: 'object', properties: { role: { type: 'string' } }, required: ['content'] },
    };
    expect(refuse([post({ body: { type: 'object', properties: { messages: nested } } })])).toContain(
      `${R}.body.properties.messages.items.required: "content" is not in properties`,
    );
  });

  it('refuses a query contract whose "required" names a missing parameter', () => {
    const message = refuse([get({ query: { properties: { limit: { type: 'integer' } }, required: ['limt'] } })]);
    expect(message).toContain(`${R}.query.required`);
    expect(message).toContain('"limt"');
    accept([get({ query: { properties: { limit: { type: 'integer' } }, required: ['limit'] } })]);
  });

  it('refuses unknown keys of a query contract', () => {
    expect(refuse([get({ query: { properties: {}, additionalProperties: true } })])).toContain(`${R}.query`);
  });
});

describe('paramEquals', () => {
  it('accepts path parameters compared with "userId" or a claim', () => {
    const config = accept([
      { method: 'GET', path: '/orgs/:org/users/:id', paramEquals: { id: 'userId', org: 'claims.orgId' } },
    ]);
    expect(config.routes[0]!.paramEquals).toEqual({ id: 'userId', org: 'claims.orgId' });
    // A parameter with literal text around it in its segment is a parameter too.
    accept([{ method: 'GET', path: '/accounts/{account}:summary', paramEquals: { account: 'claims.accountId' } }]);
  });

  it('refuses a name that is not a parameter of the path, naming it', () => {
    expect(refuse([{ method: 'GET', path: '/users/:id', paramEquals: { uid: 'userId' } }])).toContain(
      `${R}.paramEquals.uid: "uid" is not a parameter of the path`,
    );
    // A literal segment is not a parameter.
    expect(refuse([{ method: 'GET', path: '/users/id', paramEquals: { id: 'userId' } }])).toContain(
      `${R}.paramEquals.id`,
    );
    expect(refuse([{ method: 'GET', path: '/files/*', paramEquals: { '*': 'userId' } }])).toContain(`${R}.paramEquals`);
    expect(refuse([{ method: 'GET', path: '/models/x:list', paramEquals: { list: 'userId' } }])).toContain(`${R}.paramEquals.list`);
  });
});

describe('session value sources', () => {
  it.each(['userId', 'claims.org', 'claims._x', 'claims.accountId2', `claims.${'a'.repeat(64)}`])(
    'accepts %j',
    (source) => {
      accept([{ method: 'GET', path: '/u/:id', paramEquals: { id: source } }]);
      accept([post({ body: { type: 'object' }, identity: { 'body.user': source } })]);
    },
  );

  it.each([
    'email',
    'userid',
    'UserId',
    'sub',
    'claims.',
    'claims',
    'claims.1abc',
    'claims.a-b',
    'claims.a.b',
    'claims.a b',
    ' userId',
    'userId ',
    'session.userId',
    `claims.${'a'.repeat(65)}`,
    '',
  ])('refuses %j, naming the field', (source) => {
    expect(refuse([{ method: 'GET', path: '/u/:id', paramEquals: { id: source } }])).toContain(`${R}.paramEquals.id`);
    expect(refuse([post({ body: { type: 'object' }, identity: { 'body.user': source } })])).toContain(
      `${R}.identity.body.user`,
    );
  });

  it('refuses a value of another type', () => {
    expect(refuse([post({ body: { type: 'object' }, identity: { 'body.user': 42 } })])).toContain(
      `${R}.identity.body.user`,
    );
  });
});

describe('field targets of identity, caps and cost', () => {
  it.each(['body.user', 'body.metadata.user_id', 'body.a.b.c.d.e.f.g.h', 'query.owner', 'query.max-results'])(
    'accepts %j',
    (target) => {
      accept([post({ body: { type: 'object' }, identity: { [target]: 'userId' }, caps: { free: { [target]: 10 } } })]);
    },
  );

  it.each([
    'body',
    'body.',
    'query',
    'query.a.b',
    'header.x-user',
    'body.a..b',
    'body.a.b.c.d.e.f.g.h.i',
    'Body.user',
    'body.a b',
  ])('refuses %j', (target) => {
    expect(refuse([post({ body: { type: 'object' }, identity: { [target]: 'userId' } })])).toContain(`${R}.identity`);
    expect(refuse([post({ body: { type: 'object' }, caps: { free: { [target]: 10 } } })])).toContain(`${R}.caps.free`);
  });

  it('refuses a cap that is not a number', () => {
    expect(refuse([post({ body: { type: 'object' }, caps: { free: { 'body.max_tokens': '100' } } })])).toContain(
      `${R}.caps.free.body.max_tokens`,
    );
  });
});

describe('body fields need a body contract', () => {
  it.each<[string, RouteJson]>([
    ['identity', { identity: { 'body.user': 'userId' } }],
    ['caps', { caps: { free: { 'body.max_tokens': 100 } } }],
    ['cost', { cost: { reserveFrom: { field: 'body.max_tokens' } } }],
    // The price table's model field, "body.model" by default: unread, every call would be priced at "*".
    [
      'cost.price.model',
      {
        cost: {
          reserveFrom: { field: 'query.max' },
          price: { table: { '*': { input: 1, output: 1 } }, inputTokens: 'usage.in', outputTokens: 'usage.out' },
        },
      },
    ],
  ])('refuses %s on a body field without one, naming the field', (field, fields) => {
    const message = refuse([post(fields)]);
    expect(message).toContain(`${R}.${field}: "body.`);
    expect(message).toContain('needs a "body" contract');
    accept([
      post({
        ...fields,
        body: { type: 'object', properties: { max_tokens: { type: 'integer' }, user: { type: 'string' } } },
      }),
    ]);
  });

  // An upstream that reads query and body parameters as one (Rails, PHP's $_REQUEST, Stripe) would take the
  // field from a body forwarded as the client sent it: the query's value Keyward wrote would not count.
  it.each<[string, RouteJson]>([
    ['identity', { identity: { 'query.owner': 'userId' } }],
    ['caps', { caps: { free: { 'query.limit': 50 } } }],
    ['cost', { cost: { reserveFrom: { field: 'query.limit' } } }],
  ])('refuses %s on a query field of a route that takes a body, unless the body has a contract', (field, fields) => {
    for (const method of ['POST', 'PUT', 'PATCH'] as const) {
      const message = refuse([{ ...post(fields), method }]);
      expect(message).toContain(`${R}.${field}: "query.`);
      expect(message).toContain(`on a ${method} route needs a "body" contract`);
    }
    accept([post({ ...fields, body: { type: 'object', properties: { text: { type: 'string' } } } })]);
    accept([{ ...post(fields), method: 'DELETE' }]);
  });

  it('allows query targets without any contract', () => {
    accept([
      get({
        identity: { 'query.owner': 'userId' },
        caps: { free: { 'query.limit': 50 } },
        cost: { reserveFrom: { field: 'query.limit' } },
      }),
    ]);
  });

  it('names the route by its index', () => {
    const message = refuse([get({}), post({ identity: { 'body.user': 'userId' } })]);
    expect(message).toContain('upstreams.ai.routes.1.identity');
  });
});

describe('a body contract needs a method that sends a body', () => {
  it.each(['GET', 'HEAD', 'DELETE', 'OPTIONS'])('refuses one on %s', (method) => {
    expect(refuse([{ method, path: '/x', body: { type: 'object' } }])).toContain(
      `${R}.body: ${method} requests are forwarded without a body`,
    );
  });

  it.each(['POST', 'PUT', 'PATCH'])('accepts one on %s', (method) => {
    accept([{ method, path: '/x', body: { type: 'object' } }]);
  });
});

describe('limits', () => {
  it('refuses "ip" for quotas and budgets (only rate limits count by IP)', () => {
    accept([get({ rateLimits: [{ by: 'ip', limit: 1, windowSeconds: 1 }] })]);
    expect(refuse([get({ quotas: [{ by: 'ip', requests: 1, period: 'day' }] })])).toContain(`${R}.quotas.0.by`);
    expect(refuse([get({})], { budgets: [{ by: 'ip', units: 1, period: 'day' }] })).toContain(
      'upstreams.ai.budgets.0.by',
    );
  });

  it('refuses bad names, limits, windows and periods, naming the field', () => {
    expect(refuse([get({ rateLimits: [{ name: 'Burst', by: 'user', limit: 1, windowSeconds: 1 }] })])).toContain(
      `${R}.rateLimits.0.name`,
    );
    expect(refuse([get({ rateLimits: [{ by: 'user', limit: 0, windowSeconds: 1 }] })])).toContain(
      `${R}.rateLimits.0.limit`,
    );
    expect(refuse([get({ rateLimits: [{ by: 'user', limit: 1, windowSeconds: 25 * 86_400 }] })])).toContain(
      `${R}.rateLimits.0.windowSeconds`,
    );
    accept([get({ rateLimits: [{ by: 'user', limit: 1, windowSeconds: 24 * 86_400 }] })]);
    expect(refuse([get({})], { quotas: [{ by: 'user', requests: 1.5, period: 'day' }] })).toContain(
      'upstreams.ai.quotas.0.requests',
    );
    expect(refuse([get({})], { budgets: [{ by: 'user', units: 10, period: 'week' }] })).toContain(
      'upstreams.ai.budgets.0.period',
    );
    expect(refuse([get({ rateLimits: [{ by: 'user', limit: 1, windowSeconds: 1, roles: [] }] })])).toContain(
      `${R}.rateLimits.0.roles`,
    );
    expect(refuse([get({ rateLimits: [{ by: 'user', limit: 1, windowSeconds: 1, burst: 5 }] })])).toContain(
      `${R}.rateLimits.0`,
    );
  });

  it('defaults the upstream lists to empty and the route cost fields', () => {
    const config = accept([post({ body: { type: 'object' }, cost: { reserveFrom: { field: 'body.n' } } })]);
    expect(config.rateLimits).toEqual([]);
    expect(config.quotas).toEqual([]);
    expect(config.budgets).toEqual([]);
    expect(config.routes[0]!.cost).toEqual({ reserve: 1, reserveFrom: { field: 'body.n', times: 1, plus: 0 } });
  });

  it('refuses a usage source that is neither a JSON path nor a header', () => {
    expect(refuse([get({ cost: { usage: { json: 'usage..total' } } })])).toContain(`${R}.cost.usage`);
    expect(refuse([get({ cost: { usage: { header: 'x usage' } } })])).toContain(`${R}.cost.usage`);
    expect(refuse([get({ cost: { usage: { json: 'a', header: 'b' } } })])).toContain(`${R}.cost.usage`);
  });
});

describe('zod contracts (TypeScript adapters only)', () => {
  const base: Omit<UpstreamInput, 'routes'> = {
    baseUrl: 'https://api.example.com/v1/',
    auth: { type: 'bearer', secret: { env: 'API_KEY' } },
  };

  it('accepts zod schemas for query and body from defineUpstream', () => {
    const { config } = defineUpstream('ai', {
      ...base,
      routes: [
        { method: 'GET', path: '/geo', query: z.object({ address: z.string() }) },
        { method: 'POST', path: '/chat', body: z.object({ prompt: z.string() }), identity: { 'body.user': 'userId' } },
      ],
    });
    expect(config.routes[0]!.query).toBeInstanceOf(z.ZodType);
    expect(config.routes[1]!.body).toBeInstanceOf(z.ZodType);
  });

  it('still refuses a zod body on a GET route', () => {
    const error = thrown(() =>
      defineUpstream('ai', { ...base, routes: [{ method: 'GET', path: '/', body: z.object({}) }] }),
    );
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('upstreams.ai.routes.0.body');
  });

  it('is refused in the JSON file form: a query must be a declarative contract', () => {
    expect(refuse([get({ query: 'z.object({})' })])).toContain(`${R}.query`);
  });
});

describe('the README’s example route parses', () => {
  it('with a body contract, caps, identity and cost, and a query contract with paramEquals', () => {
    const config = accept([
      {
        method: 'POST',
        path: '/chat/completions',
        roles: ['user'],
        scopes: ['chat'],
        body: {
          type: 'object',
          required: ['model', 'messages'],
          properties: {
            model: { type: 'string', enum: ['gpt-4o-mini', 'gpt-4o'] },
            messages: {
              type: 'array',
              maxItems: 50,
              items: {
                type: 'object',
                required: ['role', 'content'],
                properties: {
                  role: { type: 'string', enum: ['system', 'user', 'assistant'] },
                  content: { type: 'string', maxLength: 20000 },
                },
              },
            },
            max_tokens: { type: 'integer', minimum: 1, maximum: 4000 },
            stream: { type: 'boolean' },
            user: { type: 'string' },
          },
        },
        caps: { free: { 'body.max_tokens': 1000 } },
        identity: { 'body.user': 'userId' },
        cost: {
          reserveFrom: { field: 'body.max_tokens', plus: 8000 },
          reserve: 12000,
          usage: { json: 'usage.total_tokens' },
        },
      },
      {
        method: 'GET',
        path: '/users/:id/files',
        paramEquals: { id: 'claims.accountId' },
        query: {
          properties: {
            limit: { type: 'integer', minimum: 1, maximum: 100 },
            order: { type: 'string', enum: ['asc', 'desc'] },
          },
        },
      },
    ]);
    expect(config.routes).toHaveLength(2);
    expect(config.routes[0]!.cost).toEqual({
      reserve: 12000,
      reserveFrom: { field: 'body.max_tokens', times: 1, plus: 8000 },
      usage: { json: ['usage.total_tokens'] },
    });
  });
});

describe('a wrong declarative contract is reported at the field that is wrong', () => {
  it('names the nested keyword and type instead of "Invalid input" on the whole contract', () => {
    const message = refuse([
      {
        method: 'POST',
        path: '/x',
        body: { type: 'object', properties: { n: { type: 'integer', maxLength: 3 }, m: { type: 'strin' } } },
      },
    ]);
    expect(message).toContain('upstreams.ai.routes.0.body.properties.n.maxLength: does not apply to type "integer"');
    expect(message).toContain('upstreams.ai.routes.0.body.properties.m.type:');
    expect(message).not.toContain('zod schema');
    const query = refuse([
      { method: 'GET', path: '/q', query: { properties: { limit: { type: 'integer', minLength: 1 } } } },
    ]);
    expect(query).toContain('routes.0.query.properties.limit.minLength: does not apply to type "integer"');
  });
});

describe('enum values must be of the field type', () => {
  it('refuses a number in a string enum, a fraction in an integer enum, and a string in a number enum', () => {
    const message = refuse([
      {
        method: 'POST',
        path: '/x',
        body: {
          type: 'object',
          properties: {
            s: { type: 'string', enum: ['a', 1] },
            i: { type: 'integer', enum: [1, 2.5] },
            n: { type: 'number', enum: [1.5, 'x'] },
          },
        },
      },
    ]);
    expect(message).toContain('body.properties.s.enum.1: is not a value of type "string"');
    expect(message).toContain('body.properties.i.enum.1: is not a value of type "integer"');
    expect(message).toContain('body.properties.n.enum.1: is not a value of type "number"');
    expect(() =>
      accept([
        {
          method: 'POST',
          path: '/x',
          body: { type: 'object', properties: { s: { type: 'string', enum: ['a', 'b'] } } },
        },
      ]),
    ).not.toThrow();
  });
});

describe('cost.price.table: long-context prices', () => {
  const priced = (entry: Record<string, unknown>): RouteJson => ({
    body: { type: 'object', properties: { model: { type: 'string' }, max_tokens: { type: 'integer' } } },
    cost: { reserveFrom: { field: 'body.max_tokens' }, price: { table: { '*': entry }, inputTokens: 'usage.in', outputTokens: 'usage.out' } },
  });

  it('accepts a threshold and prices for every token past it', () => {
    accept([post(priced({ input: 3, output: 15, longContext: { above: 200_000, input: 6, output: 22.5 } }))]);
  });

  it.each([
    ['a threshold of 0', { above: 0, input: 6, output: 22.5 }, 'longContext.above'],
    ['no output price', { above: 200_000, input: 6 }, 'longContext.output'],
    ['an unknown field', { above: 200_000, input: 6, output: 22.5, times: 2 }, 'longContext'],
  ])('refuses %s, naming the field', (_name, longContext, field) => {
    expect(refuse([post(priced({ input: 3, output: 15, longContext }))])).toContain(`${R}.cost.price.table.*.${field}`);
  });
});
