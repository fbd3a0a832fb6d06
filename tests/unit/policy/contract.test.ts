import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, defineUpstream } from '../../../lib/core/config/load';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import {
  applyCaps,
  applyIdentity,
  compileContract,
  parseBody,
  parseQuery,
  serializeQuery,
  type CompiledContract,
  type RequestParts,
} from '../../../lib/core/policy/contract';
import { sessionFromClaims, type Session } from '../../../lib/core/session/session';
import { randomSecret } from '../../fixtures/secrets';
import { expectKeywardError, makeUpstream, thrown } from '../support';

type RouteInput = UpstreamInput['routes'][number];

/** Parses one route through the real upstream schema (defineUpstream), then compiles its contract. */
function compiled(route: RouteInput): CompiledContract {
  const { config } = defineUpstream('t', {
    baseUrl: 'https://api.example.com/v1/',
    auth: { type: 'bearer', secret: { env: 'API_KEY' } },
    routes: [route],
  });
  return compileContract(config.routes[0]!, 'upstreams.t.routes.0');
}

/** Reads `search` (e.g. "?a=1") the way the pipeline does: from a parsed request URL. */
function query(contract: CompiledContract, search: string) {
  if (!contract.query) throw new Error('the route has no query contract');
  const url = new URL(`https://app.example.com/api/proxy/t/items${search}`);
  return parseQuery(contract.query, url.searchParams);
}

function body(contract: CompiledContract, text: string) {
  if (!contract.body) throw new Error('the route has no body contract');
  return parseBody(contract.body, text);
}

/** The call must throw a 400 contract_violation; returns its message. */
function violation(fn: () => unknown): string {
  const error = expectKeywardError(thrown(fn), 'contract_violation');
  expect(error.status).toBe(400);
  expect(error.message).toMatch(/^The request does not match this route's contract: /);
  return error.message;
}

/** A session as the verifier builds it (claims have no prototype). */
function session(roles: string[] = ['user'], claims: Record<string, string> = {}, userId = 'local:alice'): Session {
  const built = sessionFromClaims({ sub: userId, exp: 4_102_444_800, sid: 'sid-1', roles, claims }, 'cookie');
  if (!built) throw new Error('invalid test session');
  return built;
}

const SEARCH_ROUTE: RouteInput = {
  method: 'GET',
  path: '/search',
  query: {
    properties: {
      q: { type: 'string', minLength: 1, maxLength: 8 },
      limit: { type: 'integer', minimum: 1, maximum: 100 },
      ratio: { type: 'number', minimum: -1, maximum: 1000 },
      exact: { type: 'boolean' },
      order: { type: 'string', enum: ['asc', 'desc'] },
      size: { type: 'integer', enum: [10, 20] },
      tag: { type: 'array', items: { type: 'string', maxLength: 5 }, minItems: 1, maxItems: 3 },
      ids: { type: 'array', items: { type: 'integer', minimum: 0 } },
    },
    required: ['q'],
  },
};

const CHAT_BODY: RouteInput['body'] = {
  type: 'object',
  required: ['model', 'messages'],
  properties: {
    model: { type: 'string', enum: ['small', 'large'] },
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: 3,
      items: {
        type: 'object',
        required: ['role', 'content'],
        properties: {
          role: { type: 'string', enum: ['user', 'assistant'] },
          content: { type: 'string', maxLength: 20 },
        },
      },
    },
    max_tokens: { type: 'integer', minimum: 1, maximum: 4000 },
    temperature: { type: 'number', minimum: 0, maximum: 2 },
    stream: { type: 'boolean' },
    user: { type: 'string' },
    metadata: { type: 'object', properties: { user_id: { type: 'string' }, tag: { type: 'string' } } },
  },
};

const CHAT_ROUTE: RouteInput = { method: 'POST', path: '/chat', body: CHAT_BODY };

describe('compileContract', () => {
  it('has no query or body contract, caps or identity when the route declares none', () => {
    const contract = compiled({ method: 'GET', path: '/' });
    expect(contract.query).toBeNull();
    expect(contract.body).toBeNull();
    expect(contract.caps.size).toBe(0);
    expect(contract.identity).toEqual([]);
  });

  it('a body contract without a query contract accepts no query (servers merge query parameters into the body)', () => {
    const contract = compiled(CHAT_ROUTE);
    expect(query(contract, '')).toEqual({});
    expect(() => query(contract, '?model=big')).toThrow(/query: unknown field/);
    expect(() => query(contract, '?line_items[0][price_data][unit_amount]=1')).toThrow(/query: unknown field/);
  });

  it('knows which declared query parameters are arrays', () => {
    const contract = compiled(SEARCH_ROUTE);
    expect(contract.query).not.toBeNull();
    expect([...(contract.query!.arrays ?? [])].sort()).toEqual(['ids', 'tag']);
  });

  it('keeps caps per role and identity fields in declaration order', () => {
    const contract = compiled({
      ...CHAT_ROUTE,
      caps: { free: { 'body.max_tokens': 100, 'query.n': 2 }, pro: { 'body.max_tokens': 1000 } },
      identity: { 'body.user': 'userId', 'body.metadata.user_id': 'claims.accountId' },
    });
    expect(contract.caps.get('free')).toEqual(
      new Map([
        ['body.max_tokens', 100],
        ['query.n', 2],
      ]),
    );
    expect(contract.caps.get('pro')).toEqual(new Map([['body.max_tokens', 1000]]));
    expect(contract.caps.get('admin')).toBeUndefined();
    expect(contract.identity).toEqual([
      ['body.user', 'userId'],
      ['body.metadata.user_id', 'claims.accountId'],
    ]);
  });

  describe('config errors name the field', () => {
    it('refuses a query parameter of type object', () => {
      const error = thrown(() =>
        compiled({
          method: 'GET',
          path: '/',
          query: { properties: { filter: { type: 'object', properties: { a: { type: 'string' } } } } },
        }),
      );
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toContain('upstreams.t.routes.0.query.properties.filter');
      expect((error as Error).message).toContain('cannot be objects');
    });

    it.each([
      ['objects', { type: 'object', properties: {} }],
      ['arrays', { type: 'array', items: { type: 'string' } }],
    ] as const)('refuses a query array of %s', (_, items) => {
      const error = thrown(() =>
        compiled({ method: 'GET', path: '/', query: { properties: { f: { type: 'array', items } } } }),
      );
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toContain('upstreams.t.routes.0.query.properties.f.items');
    });

    it('is reported by the registry at start-up with the upstream and route index', () => {
      const error = thrown(() =>
        makeUpstream({
          routes: [
            { method: 'GET', path: '/' },
            { method: 'GET', path: '/x', query: { properties: { where: { type: 'object' } } } },
          ],
        }),
      );
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toContain('upstreams.echo.routes.1.query.properties.where');
    });
  });
});

describe('parseQuery (declarative contract)', () => {
  const contract = compiled(SEARCH_ROUTE);

  it('reads each declared type from its string', () => {
    expect(query(contract, '?q=cats&limit=42&ratio=-0.5&exact=true&order=desc&size=20')).toEqual({
      q: 'cats',
      limit: 42,
      ratio: -0.5,
      exact: true,
      order: 'desc',
      size: 20,
    });
    expect(query(contract, '?q=x&exact=false&ratio=1.5e2')).toEqual({ q: 'x', exact: false, ratio: 150 });
  });

  it('leaves absent optional parameters out', () => {
    const values = query(contract, '?q=x');
    expect(values).toEqual({ q: 'x' });
    expect(Object.keys(values)).toEqual(['q']);
  });

  it.each([
    ['1.5', 'limit'],
    ['05', 'limit'],
    ['1e2', 'limit'],
    ['0x10', 'limit'],
    ['', 'limit'],
    [' 5', 'limit'],
    ['+5', 'limit'],
    ['12345678901234567', 'limit'],
  ])('refuses %j as an integer', (value, name) => {
    expect(violation(() => query(contract, `?q=x&${name}=${encodeURIComponent(value)}`))).toContain(`query.${name}`);
  });

  it.each(['abc', 'Infinity', 'NaN', '1.', '.5', '--1', '1e', ''])('refuses %j as a number', (value) => {
    expect(violation(() => query(contract, `?q=x&ratio=${encodeURIComponent(value)}`))).toContain('query.ratio');
  });

  it.each(['1', '0', 'TRUE', 'True', 'yes', ''])('refuses %j as a boolean (only "true" and "false")', (value) => {
    expect(violation(() => query(contract, `?q=x&exact=${value}`))).toContain('query.exact');
  });

  it('checks enums of strings and of numbers', () => {
    expect(violation(() => query(contract, '?q=x&order=random'))).toContain('query.order');
    expect(violation(() => query(contract, '?q=x&order=ASC'))).toContain('query.order');
    expect(violation(() => query(contract, '?q=x&size=15'))).toContain('query.size');
    expect(violation(() => query(contract, '?q=x&size=ten'))).toContain('query.size');
  });

  it('applies minimum/maximum (inclusive) and string lengths', () => {
    expect(query(contract, '?q=x&limit=1').limit).toBe(1);
    expect(query(contract, '?q=x&limit=100').limit).toBe(100);
    expect(violation(() => query(contract, '?q=x&limit=0'))).toContain('query.limit');
    expect(violation(() => query(contract, '?q=x&limit=101'))).toContain('query.limit');
    expect(violation(() => query(contract, '?q=x&ratio=-1.01'))).toContain('query.ratio');
    expect(query(contract, '?q=12345678').q).toBe('12345678');
    expect(violation(() => query(contract, '?q=123456789'))).toContain('query.q');
    expect(violation(() => query(contract, '?q='))).toContain('query.q');
  });

  it('refuses a missing required parameter', () => {
    expect(violation(() => query(contract, ''))).toContain('query.q');
    expect(violation(() => query(contract, '?limit=5'))).toContain('query.q');
  });

  it('refuses a parameter the contract does not declare', () => {
    expect(violation(() => query(contract, '?q=x&debug=1'))).toContain('query');
    expect(violation(() => query(contract, '?q=x&Q=y'))).toContain('query');
    expect(violation(() => query(contract, '?q=x&__proto__=1'))).toContain('query');
    expect(violation(() => query(contract, '?q=x&constructor=1'))).toContain('query');
  });

  it('refuses a repeated parameter unless it is declared as an array', () => {
    expect(violation(() => query(contract, '?q=x&q=y'))).toContain('query.q: given more than once');
    expect(violation(() => query(contract, '?q=x&limit=1&limit=100'))).toContain('query.limit: given more than once');
    // Both copies equal is still two copies.
    expect(violation(() => query(contract, '?q=x&order=asc&order=asc'))).toContain('query.order');
    // A repeated parameter that is not declared at all is refused too.
    violation(() => query(contract, '?q=x&debug=1&debug=2'));
  });

  it('collects an array parameter in order, coerces its items and applies its limits', () => {
    expect(query(contract, '?q=x&tag=b&tag=a&tag=b')).toEqual({ q: 'x', tag: ['b', 'a', 'b'] });
    expect(query(contract, '?q=x&tag=one')).toEqual({ q: 'x', tag: ['one'] });
    expect(query(contract, '?q=x&ids=3&ids=0')).toEqual({ q: 'x', ids: [3, 0] });
    expect(violation(() => query(contract, '?q=x&tag=a&tag=b&tag=c&tag=d'))).toContain('query.tag');
    expect(violation(() => query(contract, '?q=x&tag=toolong'))).toContain('query.tag.0');
    expect(violation(() => query(contract, '?q=x&ids=1&ids=-1'))).toContain('query.ids.1');
    expect(violation(() => query(contract, '?q=x&ids=1&ids=one'))).toContain('query.ids.1');
  });

  it('reads a raw ";" as part of a value, never as a separator, and re-serialises it encoded', () => {
    const values = query(contract, '?q=a;size=2');
    expect(values).toEqual({ q: 'a;size=2' });
    expect(serializeQuery(values).toString()).toBe('q=a%3Bsize%3D2');
    // A value its type refuses with the ";" in it, and a name with one, which no contract declares.
    expect(violation(() => query(contract, '?q=x&limit=5;'))).toContain('query.limit');
    expect(violation(() => query(contract, '?;q=x'))).toContain('query: unknown field');
  });

  it('accepts an encoded ";" inside a value, and re-serialises it encoded', () => {
    const values = query(contract, '?q=a%3Bb');
    expect(values).toEqual({ q: 'a;b' });
    const rebuilt = serializeQuery(values).toString();
    expect(rebuilt).not.toContain(';');
    expect(new URLSearchParams(rebuilt).getAll('q')).toEqual(['a;b']);
  });

  it('decodes names and values before checking them', () => {
    expect(query(contract, '?%71=%63ats&li%6Dit=7')).toEqual({ q: 'cats', limit: 7 });
    expect(query(contract, '?q=a+b')).toEqual({ q: 'a b' });
  });

  it('re-serialises a fixed form from the parsed values', () => {
    const values = query(contract, '?exact=true&tag=b&q=a%26c%3Dd&tag=a&limit=7');
    const rebuilt = serializeQuery(values);
    expect([...rebuilt].sort()).toEqual(
      [
        ['exact', 'true'],
        ['limit', '7'],
        ['q', 'a&c=d'],
        ['tag', 'b'],
        ['tag', 'a'],
      ].sort(),
    );
    expect(rebuilt.getAll('tag')).toEqual(['b', 'a']);
    // Round trip: the rebuilt query reads back to the same values.
    expect(query(contract, `?${rebuilt.toString()}`)).toEqual(values);
    // The same values sent in another order or spelling are forwarded identically.
    expect(serializeQuery(query(contract, '?tag=b&limit=7&%71=a%26c%3Dd&tag=a&exact=true')).toString()).toBe(
      rebuilt.toString(),
    );
  });

  it('serializeQuery skips undefined and null values and writes arrays as repeated parameters', () => {
    expect(serializeQuery({ a: undefined, b: null, c: [1, 2], d: false, e: 0 }).toString()).toBe('c=1&c=2&d=false&e=0');
  });
});

describe('parseQuery (zod contract from a TypeScript adapter)', () => {
  it('makes a z.object strict: an undeclared parameter is refused', () => {
    const contract = compiled({
      method: 'GET',
      path: '/geo',
      query: z.object({ address: z.string().max(20), region: z.enum(['eu', 'us']).optional() }),
    });
    expect(query(contract, '?address=Main%20St&region=eu')).toEqual({ address: 'Main St', region: 'eu' });
    expect(violation(() => query(contract, '?address=x&extra=1'))).toContain('query');
    expect(violation(() => query(contract, '?address=x&region=mars'))).toContain('query.region');
  });

  it('makes even a loose z.object strict', () => {
    const contract = compiled({ method: 'GET', path: '/geo', query: z.looseObject({ address: z.string() }) });
    violation(() => query(contract, '?address=x&extra=1'));
  });

  it('gives repeated parameters as arrays, so only an array schema accepts them', () => {
    const contract = compiled({
      method: 'GET',
      path: '/geo',
      query: z.object({ address: z.string(), tag: z.array(z.string()).max(3).optional() }),
    });
    expect(query(contract, '?address=x&tag=a&tag=b&tag=c')).toEqual({ address: 'x', tag: ['a', 'b', 'c'] });
    expect(violation(() => query(contract, '?address=x&address=y'))).toContain('query.address');
    expect(violation(() => query(contract, '?address=x&tag=a&tag=b&tag=c&tag=d'))).toContain('query.tag');
  });

  it('reads ";" as part of a value, so it cannot smuggle a second parameter', () => {
    const contract = compiled({
      method: 'GET',
      path: '/geo',
      query: z.object({ a: z.string(), b: z.string().optional() }),
    });
    expect(query(contract, '?a=1;b=2')).toEqual({ a: '1;b=2' });
  });

  it('uses the schema’s own coercions and transforms, whose output is what is serialised', () => {
    const contract = compiled({
      method: 'GET',
      path: '/geo',
      query: z.object({ n: z.coerce.number().int().max(10), name: z.string().transform((s) => s.trim()) }),
    });
    const values = query(contract, '?n=4&name=%20bob%20');
    expect(values).toEqual({ n: 4, name: 'bob' });
    expect(serializeQuery(values).toString()).toBe('n=4&name=bob');
    expect(violation(() => query(contract, '?n=11&name=x'))).toContain('query.n');
  });
});

describe('parseBody', () => {
  const contract = compiled(CHAT_ROUTE);
  const valid = { model: 'small', messages: [{ role: 'user', content: 'hi' }] };

  it('returns the parsed value of a valid body', () => {
    expect(body(contract, JSON.stringify({ ...valid, max_tokens: 10, stream: true }))).toEqual({
      ...valid,
      max_tokens: 10,
      stream: true,
    });
  });

  it.each(['', '{', "{'model':'small'}", '{"model":"small",}', 'NaN', 'undefined', '{"a":1} trailing', '\u0000'])(
    'refuses %j as not valid JSON',
    (text) => {
      expect(violation(() => body(contract, text))).toContain('body: not valid JSON');
    },
  );

  it.each(['null', '[]', '"text"', '42', 'true'])('refuses %s where the contract wants an object', (text) => {
    expect(violation(() => body(contract, text))).toContain('body');
  });

  it('refuses an unknown field at the top level, in nested objects and in array items', () => {
    expect(violation(() => body(contract, JSON.stringify({ ...valid, tools: [] })))).toContain('body: unknown field');
    expect(
      violation(() => body(contract, JSON.stringify({ ...valid, metadata: { user_id: 'u', admin: true } }))),
    ).toContain('body.metadata: unknown field');
    expect(
      violation(() =>
        body(
          contract,
          JSON.stringify({
            ...valid,
            messages: [
              { role: 'user', content: 'a' },
              { role: 'user', content: 'b', name: 'x' },
            ],
          }),
        ),
      ),
    ).toContain('body.messages.1: unknown field');
  });

  it('refuses a "__proto__" key (an own property after JSON.parse) without polluting any prototype', () => {
    const top = violation(() =>
      body(contract, `{"model":"small","messages":[{"role":"user","content":"a"}],"__proto__":{"polluted":1}}`),
    );
    expect(top).toContain('body');
    const nested = violation(() =>
      body(contract, `{"model":"small","messages":[{"role":"user","content":"a","__proto__":{"polluted":1}}]}`),
    );
    expect(nested).toContain('body.messages.0');
    violation(() =>
      body(
        contract,
        `{"model":"small","messages":[{"role":"user","content":"a"}],"constructor":{"prototype":{"polluted":1}}}`,
      ),
    );
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty('polluted');
  });

  it('a "__proto__" property declared in a contract is refused when the config is read (the schema would drop it)', () => {
    const error = thrown(() =>
      compiled({
        method: 'POST',
        path: '/x',
        // A computed key: `{ __proto__: … }` in a literal would set the prototype instead.
        body: {
          type: 'object',
          properties: { ['__proto__']: { type: 'object', properties: { admin: { type: 'boolean' } } } },
        },
      }),
    );
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('upstreams.t.routes.0.body.properties.__proto__');
    expect(Object.prototype).not.toHaveProperty('admin');
  });

  it('refuses missing required fields, at any depth', () => {
    expect(violation(() => body(contract, JSON.stringify({ messages: valid.messages })))).toContain('body.model');
    expect(violation(() => body(contract, JSON.stringify({ model: 'small', messages: [{ role: 'user' }] })))).toContain(
      'body.messages.0.content',
    );
  });

  it('checks enums, types, numeric ranges and string lengths', () => {
    expect(violation(() => body(contract, JSON.stringify({ ...valid, model: 'huge' })))).toContain('body.model');
    expect(
      violation(() => body(contract, JSON.stringify({ ...valid, messages: [{ role: 'system', content: 'x' }] }))),
    ).toContain('body.messages.0.role');
    expect(violation(() => body(contract, JSON.stringify({ ...valid, max_tokens: 1.5 })))).toContain('body.max_tokens');
    expect(violation(() => body(contract, JSON.stringify({ ...valid, max_tokens: '10' })))).toContain(
      'body.max_tokens',
    );
    expect(violation(() => body(contract, JSON.stringify({ ...valid, max_tokens: 4001 })))).toContain(
      'body.max_tokens',
    );
    expect(violation(() => body(contract, JSON.stringify({ ...valid, max_tokens: 0 })))).toContain('body.max_tokens');
    expect(body(contract, JSON.stringify({ ...valid, max_tokens: 4000, temperature: 0 }))).toMatchObject({
      max_tokens: 4000,
      temperature: 0,
    });
    expect(violation(() => body(contract, JSON.stringify({ ...valid, temperature: 2.01 })))).toContain(
      'body.temperature',
    );
    expect(violation(() => body(contract, JSON.stringify({ ...valid, stream: 'true' })))).toContain('body.stream');
    expect(
      violation(() =>
        body(contract, JSON.stringify({ ...valid, messages: [{ role: 'user', content: 'x'.repeat(21) }] })),
      ),
    ).toContain('body.messages.0.content');
    expect(violation(() => body(contract, JSON.stringify({ ...valid, metadata: null })))).toContain('body.metadata');
  });

  it('checks array lengths', () => {
    const message = { role: 'user', content: 'x' };
    expect(violation(() => body(contract, JSON.stringify({ ...valid, messages: [] })))).toContain('body.messages');
    expect(body(contract, JSON.stringify({ ...valid, messages: [message, message, message] }))).toMatchObject({
      messages: [message, message, message],
    });
    expect(
      violation(() => body(contract, JSON.stringify({ ...valid, messages: [message, message, message, message] }))),
    ).toContain('body.messages');
    expect(violation(() => body(contract, JSON.stringify({ ...valid, messages: { 0: message } })))).toContain(
      'body.messages',
    );
  });

  it('accepts top-level arrays and scalars when the contract says so', () => {
    const list = compiled({
      method: 'PUT',
      path: '/ids',
      body: { type: 'array', items: { type: 'integer' }, maxItems: 2 },
    });
    expect(body(list, '[1, 2]')).toEqual([1, 2]);
    violation(() => body(list, '[1, 2, 3]'));
    violation(() => body(list, '{}'));
    const flag = compiled({ method: 'PUT', path: '/flag', body: { type: 'boolean' } });
    expect(body(flag, 'false')).toBe(false);
    violation(() => body(flag, '"false"'));
    const level = compiled({ method: 'PUT', path: '/level', body: { type: 'string', enum: ['low', 'high'] } });
    expect(body(level, '"low"')).toBe('low');
    violation(() => body(level, '"medium"'));
  });

  it('is forwarded re-serialised: duplicate keys, whitespace and escapes cannot reach the upstream as sent', () => {
    const text =
      '{ "model" : "large", "model":"small",\n "messages":[{"role":"user","content":"\\u0068i"}], "max_tokens": 1e1 }';
    const parsed = body(contract, text);
    const forwarded = JSON.stringify(parsed);
    expect(forwarded).toBe('{"model":"small","messages":[{"role":"user","content":"hi"}],"max_tokens":10}');
    expect(forwarded).not.toContain('large');
    expect(JSON.parse(forwarded)).toEqual(parsed);
  });

  describe('zod body contracts', () => {
    it('makes a z.object strict at the top level', () => {
      const zodRoute = compiled({ method: 'POST', path: '/z', body: z.object({ prompt: z.string().max(10) }) });
      expect(body(zodRoute, '{"prompt":"hi"}')).toEqual({ prompt: 'hi' });
      expect(violation(() => body(zodRoute, '{"prompt":"hi","extra":1}'))).toContain('body: unknown field');
      expect(violation(() => body(zodRoute, '{"prompt":"far too long"}'))).toContain('body.prompt');
    });

    it('never forwards an undeclared nested field', () => {
      const zodRoute = compiled({
        method: 'POST',
        path: '/z',
        body: z.object({ options: z.object({ n: z.number() }) }),
      });
      let forwarded: string | null = null;
      try {
        forwarded = JSON.stringify(body(zodRoute, '{"options":{"n":1,"smuggled":"x"}}'));
      } catch (error) {
        expectKeywardError(error, 'contract_violation');
      }
      if (forwarded !== null) expect(forwarded).not.toContain('smuggled');
    });
  });
});

describe('error messages never echo client values', () => {
  const query_ = compiled(SEARCH_ROUTE);
  const body_ = compiled(CHAT_ROUTE);
  const valid = { model: 'small', messages: [{ role: 'user', content: 'hi' }] };

  // Shaped like a real key (letters, digits, "-" and "_" only), so no "invalid characters" rule can hide it.
  const cases: Array<[string, (secret: string) => () => unknown]> = [
    ['an unknown body field named like a key', (s) => () => body(body_, JSON.stringify({ ...valid, [s]: 1 }))],
    [
      'an unknown nested body field named like a key',
      (s) => () => body(body_, JSON.stringify({ ...valid, metadata: { [s]: 'x' } })),
    ],
    ['a key as a wrong-typed value', (s) => () => body(body_, JSON.stringify({ ...valid, max_tokens: s }))],
    ['a key as an enum value', (s) => () => body(body_, JSON.stringify({ ...valid, model: s }))],
    [
      'a key as an over-long string',
      (s) => () => body(body_, JSON.stringify({ ...valid, messages: [{ role: 'user', content: s }] })),
    ],
    ['a key as invalid JSON', (s) => () => body(body_, `{"model": ${s}}`)],
    ['an unknown query parameter named like a key', (s) => () => query(query_, `?q=x&${s}=1`)],
    ['a repeated unknown query parameter named like a key', (s) => () => query(query_, `?q=x&${s}=1&${s}=2`)],
    ['a key as a query integer', (s) => () => query(query_, `?q=x&limit=${s}`)],
    ['a key as a query enum value', (s) => () => query(query_, `?q=x&order=${s}`)],
    ['a key as a query boolean', (s) => () => query(query_, `?q=x&exact=${s}`)],
    ['a key as a query array item', (s) => () => query(query_, `?q=x&tag=${s}`)],
    ['a key next to ";"', (s) => () => query(query_, `?q=x;${s}=1`)],
  ];

  it.each(cases)('%s', (_, call) => {
    for (const secret of [
      `sk-live-${randomSecret('XYZ').replace(/^XYZ_/, '')}`,
      randomSecret('sk_live'),
      `sk-${'a1'.repeat(20)}`,
    ]) {
      expect(secret).toMatch(/^[A-Za-z0-9_-]{20,64}$/);
      const message = violation(call(secret));
      expect(message).not.toContain(secret);
      expect(message).not.toContain(secret.slice(0, 16));
    }
  });

  // Record keys (Stripe's `metadata`), a catchall's keys and a union's record are the client's own text, whatever
  // characters they use: only the names the contract declares are echoed, the rest is `(a key)`.
  const records = compiled({
    method: 'POST',
    path: '/records',
    body: z.object({
      metadata: z.record(z.string().max(40), z.string().max(5)).optional(),
      nested: z.record(z.string(), z.object({ size: z.number().max(3) })).optional(),
      open: z.looseObject({ known: z.string().optional() }).catchall(z.number()).optional(),
      either: z.union([z.number(), z.record(z.string(), z.boolean())]).optional(),
      lazy: z.lazy(() => z.record(z.string(), z.string().max(2))).optional(),
    }),
  });
  const recordCases: Array<[string, (secret: string) => unknown, string]> = [
    ['a record key over its length', (s) => ({ metadata: { [`${s}${'x'.repeat(40)}`]: 'v' } }), 'body.metadata.(a key): '],
    ['a record value over its length', (s) => ({ metadata: { [s]: 'x'.repeat(600) } }), 'body.metadata.(a key): '],
    ['a declared field under a record key', (s) => ({ nested: { [s]: { size: 9 } } }), 'body.nested.(a key).size: '],
    ['a catchall key', (s) => ({ open: { [s]: 'not a number' } }), 'body.open.(a key): '],
    ["a union's record key", (s) => ({ either: { [s]: 'not a boolean' } }), 'body.either'],
    ["a lazy record's key", (s) => ({ lazy: { [s]: 'too long' } }), 'body.lazy.(a key): '],
  ];

  it.each(recordCases)('never echoes %s, and says where it is', (_, value, where) => {
    const secret = 'sk_live_51HxPastedByMistakeAbCdEf0123456789';
    const message = violation(() => body(records, JSON.stringify(value(secret))));
    expect(message).not.toContain(secret.slice(0, 12));
    expect(message).toContain(where);
  });

  it('names a declared field whose name has brackets or dots as declared (the operator wrote it)', () => {
    const listed = compiled({
      method: 'GET',
      path: '/prices',
      query: z.object({ 'expand[]': z.literal('product').optional(), 'page.size': z.string().regex(/^\d+$/).optional() }),
    });
    const message = violation(() => query(listed, '?expand[]=tiers&page.size=x'));
    expect(message).toContain('query.expand[]: ');
    expect(message).toContain('query.page.size: ');
  });

  it('names at most three problems', () => {
    const message = violation(() =>
      body(body_, JSON.stringify({ model: 'x', messages: [], max_tokens: -1, temperature: 9, stream: 1 })),
    );
    expect(message.split('; ').length).toBeLessThanOrEqual(3);
  });
});

describe('applyCaps', () => {
  const capped = compiled({
    ...CHAT_ROUTE,
    caps: {
      free: { 'body.max_tokens': 100, 'body.metadata.depth': 2 },
      pro: { 'body.max_tokens': 1000 },
      trial: { 'body.max_tokens': 10 },
    },
  });
  const chat = (extra: Record<string, unknown> = {}): RequestParts => ({
    query: new URLSearchParams(),
    body: { model: 'small', messages: [{ role: 'user', content: 'hi' }], ...extra },
  });

  it('lets a value at or under the cap through unchanged', () => {
    for (const max of [1, 99, 100]) {
      const parts = chat({ max_tokens: max, metadata: { depth: 2 } });
      applyCaps(capped, session(['free']), parts);
      expect(parts.body).toMatchObject({ max_tokens: max, metadata: { depth: 2 } });
    }
  });

  it('refuses a copy that differs in case alone (Go and .NET upstreams may read it instead), alone or beside the field', () => {
    for (const extra of [
      { MAX_TOKENS: 99999 },
      { max_tokens: 10, Max_Tokens: 99999 },
      { metadata: { DEPTH: 50 } },
      { Metadata: { depth: 50 }, metadata: { depth: 1 } },
    ]) {
      const message = violation(() => applyCaps(capped, session(['free']), chat(extra)));
      expect(message, JSON.stringify(extra)).toMatch(/body\.(max_tokens|metadata\.depth): expected a number/);
    }
  });

  it('refuses a larger value with 400 contract_violation naming the field and the cap', () => {
    const message = violation(() => applyCaps(capped, session(['free']), chat({ max_tokens: 101 })));
    expect(message).toContain('body.max_tokens');
    expect(message).toContain('100');
    expect(message).not.toContain('101');
    violation(() => applyCaps(capped, session(['free']), chat({ metadata: { depth: 3 } })));
  });

  it('uses the most generous cap among the caller’s roles', () => {
    for (const roles of [
      ['free', 'pro'],
      ['pro', 'free'],
      ['trial', 'pro', 'free'],
    ]) {
      const ok = chat({ max_tokens: 1000 });
      applyCaps(capped, session(roles), ok);
      expect(ok.body).toMatchObject({ max_tokens: 1000 });
      violation(() => applyCaps(capped, session(roles), chat({ max_tokens: 1001 })));
    }
    violation(() => applyCaps(capped, session(['trial', 'user']), chat({ max_tokens: 11 })));
  });

  it('sets a missing value to the cap, so the upstream’s default never applies', () => {
    const parts = chat();
    applyCaps(capped, session(['free']), parts);
    expect(parts.body).toMatchObject({ max_tokens: 100, metadata: { depth: 2 } });
    const trial = chat();
    applyCaps(capped, session(['trial']), trial);
    expect(trial.body).toMatchObject({ max_tokens: 10 });
    expect(trial.body).not.toHaveProperty('metadata');
  });

  it('a role listed without a field lifts that field’s cap for a caller who also has a capped role', () => {
    const parts = chat();
    applyCaps(capped, session(['free', 'pro']), parts);
    // pro caps max_tokens (the larger cap wins) but lists no metadata.depth: not capped, not filled in.
    expect(parts.body).toMatchObject({ max_tokens: 1000 });
    expect(parts.body).not.toHaveProperty('metadata');
    const open = compiled({ ...CHAT_ROUTE, caps: { free: { 'body.max_tokens': 100 }, pro: {} } });
    const big = chat({ max_tokens: 50_000 });
    applyCaps(open, session(['free', 'pro']), big);
    expect(big.body).toMatchObject({ max_tokens: 50_000 });
    expect(() => applyCaps(open, session(['free']), chat({ max_tokens: 50_000 }))).toThrow(/at most 100/);
  });

  it('"*" caps every caller, roles or none; a listed role of the caller can still raise or lift it', () => {
    const everyone = compiled({ ...CHAT_ROUTE, caps: { '*': { 'body.max_tokens': 500 }, pro: { 'body.max_tokens': 4000 }, staff: {} } });
    for (const roles of [[], ['user'], ['admin']]) {
      const missing = chat();
      applyCaps(everyone, session(roles), missing);
      expect(missing.body).toMatchObject({ max_tokens: 500 });
      expect(violation(() => applyCaps(everyone, session(roles), chat({ max_tokens: 501 })))).toContain('at most 500');
    }
    const pro = chat({ max_tokens: 4000 });
    applyCaps(everyone, session(['user', 'pro']), pro);
    expect(pro.body).toMatchObject({ max_tokens: 4000 });
    const staff = chat({ max_tokens: 90_000 });
    applyCaps(everyone, session(['staff']), staff);
    expect(staff.body).toMatchObject({ max_tokens: 90_000 });
  });

  it('overCap "clamp" lowers a larger value to the cap instead of refusing it; a non-number is still refused', () => {
    const clamped = compiled({ ...CHAT_ROUTE, caps: { free: { 'body.max_tokens': 100 } }, overCap: 'clamp' });
    const parts = chat({ max_tokens: 64_000 });
    applyCaps(clamped, session(['free']), parts);
    expect(parts.body).toMatchObject({ max_tokens: 100 });
    const under = chat({ max_tokens: 7 });
    applyCaps(clamped, session(['free']), under);
    expect(under.body).toMatchObject({ max_tokens: 7 });
    expect(violation(() => applyCaps(clamped, session(['free']), chat({ max_tokens: '64000' })))).toContain('body.max_tokens');
  });

  it('creates the objects on the way to a missing nested value, keeping what is there', () => {
    const parts = chat({ metadata: { tag: 'a' } });
    applyCaps(capped, session(['free']), parts);
    expect(parts.body).toMatchObject({ metadata: { tag: 'a', depth: 2 } });
  });

  it('does not cap roles that are not listed', () => {
    for (const roles of [['admin'], [] as string[]]) {
      const parts = chat({ max_tokens: 1_000_000 });
      applyCaps(capped, session(roles), parts);
      expect(parts.body).toMatchObject({ max_tokens: 1_000_000 });
      const missing = chat();
      applyCaps(capped, session(roles), missing);
      expect(missing.body).not.toHaveProperty('max_tokens');
    }
  });

  it('refuses a capped field holding something other than a finite number', () => {
    for (const value of ['50', null, true, [50], { n: 50 }]) {
      expect(violation(() => applyCaps(capped, session(['free']), chat({ max_tokens: value })))).toContain(
        'body.max_tokens',
      );
    }
  });

  it('refuses to reach through a non-object on the way to a missing nested value', () => {
    violation(() => applyCaps(capped, session(['free']), chat({ metadata: 'str' })));
    violation(() => applyCaps(capped, session(['free']), chat({ metadata: ['a'] })));
  });

  describe('on a query passed through as sent (URLSearchParams)', () => {
    const route = compiled({
      method: 'GET',
      path: '/list',
      caps: { free: { 'query.limit': 100 }, pro: { 'query.limit': 500 } },
    });
    const run = (search: string, roles = ['free']) => {
      const parts: RequestParts = { query: new URLSearchParams(search), body: undefined };
      applyCaps(route, session(roles), parts);
      return (parts.query as URLSearchParams).toString();
    };

    it('passes values under the cap, refuses larger ones and sets missing ones', () => {
      expect(run('limit=100&other=x')).toBe('limit=100&other=x');
      expect(violation(() => run('limit=101'))).toContain('query.limit');
      expect(violation(() => run('limit=1e3'))).toContain('query.limit');
      expect(run('other=x')).toBe('other=x&limit=100');
      expect(run('other=x', ['free', 'pro'])).toBe('other=x&limit=500');
      expect(run('limit=100000', ['admin'])).toBe('limit=100000');
    });

    it('refuses a value that is not a number', () => {
      for (const value of ['abc', '', '0x10', ' 5', 'Infinity'])
        violation(() => run(`limit=${encodeURIComponent(value)}`));
    });

    it('refuses a repeated parameter, whichever copy the upstream would read', () => {
      violation(() => run('limit=1&limit=100000'));
      violation(() => run('limit=100000&limit=1'));
      violation(() => run('limit=5&limit=5'));
    });

    it('reads a number only as it is written: an exponent or leading zero an upstream parses otherwise is refused', () => {
      // Number() reads these as 0, 0.9 and 1000; parseInt (what many upstreams use) as 99999, 9 and 1.
      for (const value of ['99999e-999', '9e-1', '1e3', '099999', '-0', '100.0']) {
        expect(violation(() => run(`limit=${value}`))).toContain('query.limit');
      }
      expect(run('limit=0.5')).toBe('limit=0.5');
    });

    it('refuses a spelling a lenient upstream takes for the capped parameter, alone or beside it', () => {
      for (const search of ['LIMIT=100000', 'limit%5B%5D=100000', 'limit[0]=100000', 'Limit=100000&limit=1', 'limit=1&limit%00=100000']) {
        expect(violation(() => run(search))).toContain('query.limit');
      }
    });
  });

  describe('on parsed query values', () => {
    const route = compiled({
      method: 'GET',
      path: '/list',
      query: { properties: { limit: { type: 'integer', minimum: 1 }, q: { type: 'string' } } },
      caps: { free: { 'query.limit': 50 } },
    });

    it('refuses larger values and sets missing ones, which are then serialised', () => {
      const parts: RequestParts = { query: query(route, '?q=x&limit=50'), body: undefined };
      applyCaps(route, session(['free']), parts);
      expect(parts.query).toEqual({ q: 'x', limit: 50 });
      expect(
        violation(() => applyCaps(route, session(['free']), { query: query(route, '?limit=51'), body: undefined })),
      ).toContain('query.limit');
      const missing: RequestParts = { query: query(route, '?q=x'), body: undefined };
      applyCaps(route, session(['free']), missing);
      expect(serializeQuery(missing.query as Record<string, unknown>).toString()).toBe('q=x&limit=50');
    });
  });
});

describe('applyIdentity', () => {
  const stamped = compiled({
    ...CHAT_ROUTE,
    identity: { 'body.user': 'userId', 'body.metadata.user_id': 'claims.accountId' },
  });
  const alice = () => session(['user'], { accountId: 'acct-42' }, 'local:alice');
  const chat = (extra: Record<string, unknown> = {}): RequestParts => ({
    query: new URLSearchParams(),
    body: { model: 'small', messages: [{ role: 'user', content: 'hi' }], ...extra },
  });

  it('overwrites whatever the client sent with the session’s values', () => {
    const parts = chat({ user: 'local:mallory', metadata: { user_id: 'acct-1', tag: 't' } });
    applyIdentity(stamped, alice(), parts);
    expect(parts.body).toMatchObject({ user: 'local:alice', metadata: { user_id: 'acct-42', tag: 't' } });
    expect(JSON.stringify(parts.body)).not.toContain('mallory');
    expect(JSON.stringify(parts.body)).not.toContain('acct-1"');
  });

  it('drops body keys a case-insensitive upstream could read as the stamped one (Go\'s encoding/json: the last copy wins)', () => {
    const parts = chat({
      User: 'local:mallory',
      USER: 'local:mallory',
      'u\u017Fer': 'local:mallory',
      Metadata: { user_id: 'acct-1' },
      metadata: { USER_ID: 'acct-1', User_Id: 'acct-1', tag: 't' },
    });
    applyIdentity(stamped, alice(), parts);
    expect(parts.body).toEqual({
      model: 'small',
      messages: [{ role: 'user', content: 'hi' }],
      user: 'local:alice',
      metadata: { tag: 't', user_id: 'acct-42' },
    });
  });

  it('writes absent fields and creates the objects on the way', () => {
    const parts = chat();
    applyIdentity(stamped, alice(), parts);
    expect(parts.body).toMatchObject({ user: 'local:alice', metadata: { user_id: 'acct-42' } });
  });

  it('refuses with 403 forbidden when the session lacks the claim', () => {
    for (const claims of [{}, { accountid: 'acct-42' }, { other: 'x' }] as Record<string, string>[]) {
      const error = expectKeywardError(
        thrown(() => applyIdentity(stamped, session(['user'], claims), chat())),
        'forbidden',
      );
      expect(error.status).toBe(403);
    }
  });

  it('does not find a claim named like an Object.prototype member', () => {
    const route = compiled({ ...CHAT_ROUTE, identity: { 'body.user': 'claims.constructor' } });
    expectKeywardError(
      thrown(() => applyIdentity(route, session(), chat())),
      'forbidden',
    );
    const proto = compiled({ ...CHAT_ROUTE, identity: { 'body.user': 'claims.__proto__' } });
    expectKeywardError(
      thrown(() => applyIdentity(proto, session(), chat())),
      'forbidden',
    );
  });

  it('refuses a body that is not an object, or a non-object on the way', () => {
    expect(violation(() => applyIdentity(stamped, alice(), { query: new URLSearchParams(), body: ['x'] }))).toContain(
      'body',
    );
    violation(() => applyIdentity(stamped, alice(), { query: new URLSearchParams(), body: 'text' }));
    violation(() => applyIdentity(stamped, alice(), chat({ metadata: 'x' })));
    violation(() => applyIdentity(stamped, alice(), chat({ metadata: null })));
  });

  it('stamps query parameters, replacing every copy the client sent', () => {
    const route = compiled({
      method: 'GET',
      path: '/files',
      identity: { 'query.owner': 'userId', 'query.org': 'claims.org' },
    });
    const parts: RequestParts = { query: new URLSearchParams('owner=eve&q=1&owner=mallory'), body: undefined };
    applyIdentity(route, session(['user'], { org: 'acme' }, 'local:bob'), parts);
    const sent = parts.query as URLSearchParams;
    expect(sent.getAll('owner')).toEqual(['local:bob']);
    expect(sent.getAll('org')).toEqual(['acme']);
    expect(sent.get('q')).toBe('1');
  });

  it('drops query parameters a lenient upstream could read as the stamped one', () => {
    const route = compiled({ method: 'GET', path: '/files', identity: { 'query.owner': 'userId' } });
    const parts: RequestParts = { query: new URLSearchParams('Owner=eve&owner%5B%5D=mallory&q=1&OWNER+=x'), body: undefined };
    applyIdentity(route, session(['user'], {}, 'local:bob'), parts);
    expect((parts.query as URLSearchParams).toString()).toBe('q=1&owner=local%3Abob');
  });

  it('stamps parsed query values, which are then serialised', () => {
    const route = compiled({
      method: 'GET',
      path: '/files',
      query: { properties: { owner: { type: 'string' }, q: { type: 'string' } } },
      identity: { 'query.owner': 'userId' },
    });
    const parts: RequestParts = { query: query(route, '?owner=eve&q=1'), body: undefined };
    applyIdentity(route, session(['user'], {}, 'local:bob'), parts);
    expect(serializeQuery(parts.query as Record<string, unknown>).toString()).toBe('owner=local%3Abob&q=1');
  });

  it('writes a "__proto__" target as a plain data property, never through the prototype', () => {
    const route = compiled({
      method: 'POST',
      path: '/x',
      body: { type: 'object', properties: {} },
      identity: { 'body.__proto__': 'userId', 'body.meta.__proto__': 'claims.org' },
    });
    const parts: RequestParts = { query: new URLSearchParams(), body: body(route, '{}') };
    applyIdentity(route, session(['user'], { org: 'acme' }, 'local:alice'), parts);
    const stampedBody = parts.body as Record<string, unknown>;
    expect(Object.getPrototypeOf(stampedBody)).toBe(Object.prototype);
    expect(Object.hasOwn(stampedBody, '__proto__')).toBe(true);
    expect(JSON.stringify(stampedBody)).toBe('{"__proto__":"local:alice","meta":{"__proto__":"acme"}}');
    expect(Object.prototype).not.toHaveProperty('meta');
  });

  it('creates a "__proto__" object on the way as an own property, so the field is forwarded', () => {
    const route = compiled({
      method: 'POST',
      path: '/x',
      body: { type: 'object', properties: {} },
      identity: { 'body.__proto__.user': 'userId' },
    });
    const parts: RequestParts = { query: new URLSearchParams(), body: body(route, '{}') };
    applyIdentity(route, session(['user'], {}, 'local:alice'), parts);
    const stampedBody = parts.body as Record<string, unknown>;
    expect(Object.getPrototypeOf(stampedBody)).toBe(Object.prototype);
    expect(JSON.stringify(stampedBody)).toBe('{"__proto__":{"user":"local:alice"}}');
    expect(Object.prototype).not.toHaveProperty('user');
  });
});
