import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, defineUpstream } from '../../../lib/core/config/load';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import { KeywardError } from '../../../lib/core/errors';
import { compileContract, type CompiledContract } from '../../../lib/core/policy/contract';
import { FORM_LIMITS, parseForm, serializeForm } from '../../../lib/core/policy/form';
import { expectKeywardError, thrown } from '../support';

type RouteInput = UpstreamInput['routes'][number];

function compiled(route: Omit<RouteInput, 'method' | 'path'>): CompiledContract {
  const { config } = defineUpstream('t', {
    baseUrl: 'https://api.example.com/v1/',
    auth: { type: 'bearer', secret: { env: 'API_KEY' } },
    routes: [{ method: 'POST', path: '/customers', bodyFormat: 'form', ...route }],
  });
  return compileContract(config.routes[0]!, 'upstreams.t.routes.0');
}

/** A Stripe-style contract: nested objects, arrays of objects, `expand[]`, typed scalars. */
const STRIPE = compiled({
  body: {
    type: 'object',
    required: ['email'],
    properties: {
      email: { type: 'string', maxLength: 64 },
      metadata: { type: 'object', properties: { order_id: { type: 'string' }, user_id: { type: 'string' } } },
      items: {
        type: 'array',
        maxItems: 20,
        items: { type: 'object', properties: { price: { type: 'string' }, quantity: { type: 'integer', minimum: 1 } } },
      },
      expand: { type: 'array', items: { type: 'string' } },
      amount: { type: 'number' },
      livemode: { type: 'boolean' },
    },
  },
});

const parse = (text: string, contract: CompiledContract = STRIPE) => parseForm(contract.body!, text);

/** The call must throw 400 contract_violation; returns its message. */
function violation(fn: () => unknown): string {
  const error = expectKeywardError(thrown(fn), 'contract_violation');
  expect(error.status).toBe(400);
  expect(error.message).toMatch(/^The request does not match this route's contract: /);
  return error.message;
}

/** A name that looks like a key: it must never be echoed in a message. */
const KEYISH = 'sk_live_51H8xQ2eZvKYlo2C';

describe('parseForm: Stripe bracket notation', () => {
  it('reads nested objects, arrays of objects and typed scalars from their strings', () => {
    const body =
      'email=ada%40example.com&metadata[order_id]=6735&items[0][price]=price_1&items[0][quantity]=2' +
      '&items[1][price]=price_2&expand[]=customer&expand[]=invoice&amount=12.5&livemode=false';
    expect(parse(body)).toEqual({
      email: 'ada@example.com',
      metadata: { order_id: '6735' },
      items: [{ price: 'price_1', quantity: 2 }, { price: 'price_2' }],
      expand: ['customer', 'invoice'],
      amount: 12.5,
      livemode: false,
    });
  });

  it('reads percent-encoded brackets, "+" as a space and UTF-8 escapes as a form decoder does', () => {
    expect(parse('email=a+b%2Bc&metadata%5Border_id%5D=caf%C3%A9+%26+%3D')).toEqual({
      email: 'a b+c',
      metadata: { order_id: 'café & =' },
    });
  });

  it('accepts an array as indexes (in any order), as "[]", or as a repeated name where the contract declares one', () => {
    const expected = { email: 'e', expand: ['a', 'b'] };
    expect(parse('email=e&expand[0]=a&expand[1]=b')).toEqual(expected);
    expect(parse('email=e&expand[1]=b&expand[0]=a')).toEqual(expected);
    expect(parse('email=e&expand[]=a&expand[]=b')).toEqual(expected);
    expect(parse('email=e&expand=a&expand=b')).toEqual(expected);
    expect(parse('email=e&expand=a')).toEqual({ email: 'e', expand: ['a'] });
  });

  it('skips empty pairs and reads a name without "=" as an empty value', () => {
    expect(parse('&&email=e&&metadata[order_id]&')).toEqual({ email: 'e', metadata: { order_id: '' } });
  });

  it('checks the contract: types, bounds, required and unknown fields, at any depth', () => {
    expect(violation(() => parse('email=e&items[0][quantity]=two'))).toContain(
      'body.items.0.quantity: expected an integer',
    );
    expect(violation(() => parse('email=e&items[0][quantity]=0'))).toContain('body.items.0.quantity');
    expect(violation(() => parse('metadata[order_id]=1'))).toContain('body.email');
    expect(violation(() => parse('email=e&livemode=yes'))).toContain('body.livemode: expected true or false');
    const unknown = violation(() => parse(`email=e&metadata[${KEYISH}]=1`));
    expect(unknown).toContain('body.metadata: unknown field');
    expect(unknown).not.toContain(KEYISH);
  });
});

describe('parseForm: ambiguous or conflicting shapes are refused, naming declared fields only', () => {
  it.each([
    ['a name given twice where the contract declares no array', 'email=a&email=b', 'body.email: given more than once'],
    ['a value and an object at one path', 'email=e&metadata=1&metadata[order_id]=2', 'body.metadata: given both'],
    ['an object and a value at one path', 'email=e&metadata[order_id]=2&metadata=1', 'body.metadata: given both'],
    ['indexes and keys at one path', 'email=e&items[0][price]=p&items[x][price]=q', 'body.items: given both'],
    ['"[]" and indexes for one array', 'email=e&expand[]=a&expand[0]=b', 'body.expand: given both'],
    ['"[]" and a repeated name for one array', 'email=e&expand=a&expand[]=b', 'body.expand: given both'],
    ['a sparse array', 'email=e&expand[0]=a&expand[2]=b', 'body.expand: array indexes must run from 0 without gaps'],
    [
      'an array that does not start at 0',
      'email=e&expand[1]=a',
      'body.expand: array indexes must run from 0 without gaps',
    ],
    ['an index twice', 'email=e&items[0][price]=a&items[0][price]=b', 'body.items.0.price: given more than once'],
  ])('%s', (_, body, expected) => {
    expect(violation(() => parse(body))).toContain(expected);
  });

  it.each([
    ['a leading zero', 'expand[01]=a', 'an array index is not a number from 0 to 999'],
    ['an index past the bound', `expand[${FORM_LIMITS.index + 1}]=a`, 'an array index is not a number from 0 to 999'],
    ['a huge index', 'expand[99999999999999999999]=a', 'an array index is not a number from 0 to 999'],
    ['an unclosed bracket', 'metadata[order_id=1', 'not in bracket notation'],
    ['text after a bracket', 'metadata[order_id]x=1', 'not in bracket notation'],
    ['a stray closing bracket', 'email]=1', 'not in bracket notation'],
    ['a name starting with a bracket', '[email]=1', 'not in bracket notation'],
    ['an empty name', '=1', 'not in bracket notation'],
    ['nested brackets', 'metadata[[order_id]]=1', 'not in bracket notation'],
    ['"[]" before the end', 'items[][price]=1', '"[]" may only end a field name'],
    ['a malformed escape', 'email=%zz', 'malformed percent-encoding'],
    ['an escape that is not UTF-8', 'email=%C3', 'malformed percent-encoding'],
    ['an escaped lone surrogate', 'email=%ED%A0%80', 'malformed percent-encoding'],
  ])('refuses %s', (_, body, expected) => {
    expect(violation(() => parse(`email=e&${body}`))).toContain(expected);
  });

  it('bounds fields, depth and name length', () => {
    const many = Array.from({ length: FORM_LIMITS.fields + 1 }, (_, i) => `expand[]=${i}`).join('&');
    expect(violation(() => parse(many))).toContain(`more than ${FORM_LIMITS.fields} fields`);
    // Separators alone are counted before the body is split.
    expect(violation(() => parse(`email=e${'&'.repeat(1_000_000)}`))).toContain(`more than ${FORM_LIMITS.fields} fields`);
    expect(parse(`email=e${'&'.repeat(10)}`)).toMatchObject({ email: 'e' });
    expect(violation(() => parse(`a${'[b]'.repeat(FORM_LIMITS.depth + 1)}=1`))).toContain('nested more than 8 levels');
    expect(violation(() => parse(`${'a'.repeat(FORM_LIMITS.nameLength + 1)}=1`))).toContain(
      'longer than 512 characters',
    );
  });

  it('never echoes an undeclared name, whatever the problem', () => {
    for (const body of [
      `${KEYISH}=1`,
      `${KEYISH}=1&${KEYISH}=2`,
      `${KEYISH}=1&${KEYISH}[x]=2`,
      `${KEYISH}[0]=1&${KEYISH}[2]=2`,
      `metadata[${KEYISH}]=1&metadata[${KEYISH}]=2`,
    ]) {
      const message = violation(() => parse(`email=e&${body}`));
      expect(message).not.toContain(KEYISH);
      expect(message).toContain('unknown field');
    }
  });

  it('keeps `__proto__` a plain (unknown, refused) field: nothing reaches a prototype', () => {
    expect(violation(() => parse('email=e&__proto__[polluted]=1'))).toContain('unknown field');
    expect(violation(() => parse('email=e&metadata[__proto__]=1'))).toContain('unknown field');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe('parseForm with a zod contract (TypeScript adapters)', () => {
  const contract = compiled({
    body: z.object({
      amount: z.coerce.number().int().max(10_000),
      metadata: z.record(z.string().max(40), z.string().max(500)).optional(),
      tags: z.array(z.string()).optional(),
    }),
  });

  it('gets the nested object of strings: numbers need z.coerce; records take any key', () => {
    expect(parse('amount=500&metadata[order_id]=6735&metadata[note]=x&tags=a&tags=b', contract)).toEqual({
      amount: 500,
      metadata: { order_id: '6735', note: 'x' },
      tags: ['a', 'b'],
    });
  });

  it('refuses a repeated record key without naming it, and unknown top-level fields', () => {
    const message = violation(() => parse(`amount=1&metadata[${KEYISH}]=1&metadata[${KEYISH}]=2`, contract));
    expect(message).toContain('body.metadata.(a key): given more than once');
    expect(message).not.toContain(KEYISH);
    expect(violation(() => parse('amount=1&extra=1', contract))).toContain('unknown field');
  });
});

describe('serializeForm', () => {
  it('writes bracket notation with array indexes, in the value key order, with WHATWG form encoding', () => {
    const text = serializeForm({
      email: 'a b+c&d=e',
      metadata: { order_id: 'café', user_id: 'local:ada' },
      items: [{ price: 'price_1', quantity: 2 }, { price: '[x]' }],
      expand: ['customer'],
      livemode: false,
      skipped: undefined,
      none: null,
      empty: [],
      nothing: {},
    });
    expect(text).toBe(
      'email=a+b%2Bc%26d%3De&metadata%5Border_id%5D=caf%C3%A9&metadata%5Buser_id%5D=local%3Aada' +
        '&items%5B0%5D%5Bprice%5D=price_1&items%5B0%5D%5Bquantity%5D=2&items%5B1%5D%5Bprice%5D=%5Bx%5D' +
        '&expand%5B0%5D=customer&livemode=false',
    );
    expect(parse(text)).toEqual({
      email: 'a b+c&d=e',
      metadata: { order_id: 'café', user_id: 'local:ada' },
      items: [{ price: 'price_1', quantity: 2 }, { price: '[x]' }],
      expand: ['customer'],
      livemode: false,
    });
  });

  it("writes arrays of values in the route's style (formArrays), whatever notation the client used; arrays of objects with indexes", () => {
    const contract = compiled({
      body: {
        type: 'object',
        properties: {
          tag: { type: 'array', items: { type: 'string' } },
          ids: { type: 'array', items: { type: 'integer' } },
          items: { type: 'array', items: { type: 'object', properties: { tags: { type: 'array', items: { type: 'string' } } } } },
        },
      },
    });
    // Three notations from the client, one value.
    const value = parse('tag=a&tag=b&ids[]=1&ids[]=2&items[0][tags][1]=y&items[0][tags][0]=x', contract);
    expect(value).toEqual({ tag: ['a', 'b'], ids: [1, 2], items: [{ tags: ['x', 'y'] }] });
    expect(serializeForm(value)).toBe(
      'tag%5B0%5D=a&tag%5B1%5D=b&ids%5B0%5D=1&ids%5B1%5D=2&items%5B0%5D%5Btags%5D%5B0%5D=x&items%5B0%5D%5Btags%5D%5B1%5D=y',
    );
    expect(serializeForm(value, 'brackets')).toBe(
      'tag%5B%5D=a&tag%5B%5D=b&ids%5B%5D=1&ids%5B%5D=2&items%5B0%5D%5Btags%5D%5B%5D=x&items%5B0%5D%5Btags%5D%5B%5D=y',
    );
    expect(serializeForm(value, 'repeat')).toBe('tag=a&tag=b&ids=1&ids=2&items%5B0%5D%5Btags%5D=x&items%5B0%5D%5Btags%5D=y');
    // Each style parses back to the value Keyward checked (what a parser of that notation reads).
    for (const style of ['indexes', 'brackets', 'repeat'] as const) expect(parse(serializeForm(value, style), contract)).toEqual(value);
  });

  it('refuses what has no form encoding (a top level that is not an object, dates, non-finite numbers)', () => {
    expect(() => serializeForm(['a'])).toThrow(TypeError);
    expect(() => serializeForm({ at: new Date(0) })).toThrow(TypeError);
    expect(() => serializeForm({ n: Number.NaN })).toThrow(TypeError);
  });
});

describe('properties', () => {
  const key = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_-]{0,8}$/);
  const text = fc.string({ unit: 'binary', maxLength: 12 });
  const { value: nested } = fc.letrec((tie) => ({
    value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, text, tie('array'), tie('object')),
    array: fc.array(tie('value'), { minLength: 1, maxLength: 3 }),
    object: fc.dictionary(key, tie('value'), { minKeys: 1, maxKeys: 4 }),
  }));
  const body = fc
    .dictionary(key, nested, { minKeys: 1, maxKeys: 5 })
    .filter((value) => JSON.stringify(value).length < 4000);
  const anything = z.unknown();

  it('parse(serialize(value)) is the value, for nested objects, arrays and any Unicode text', () => {
    fc.assert(
      fc.property(body, (value) => {
        expect(parseForm(anything, serializeForm(value))).toEqual(value);
      }),
      { numRuns: 300 },
    );
  });

  it('any text either parses or is refused with a contract_violation, never another error', () => {
    const alphabet = fc.constantFrom('a', 'b', '0', '1', '[', ']', '=', '&', '%', '%5B', '%zz', '+', 'é', '__proto__');
    const input = fc.oneof(
      fc.string({ unit: 'binary' }),
      fc.array(alphabet, { maxLength: 40 }).map((parts) => parts.join('')),
    );
    fc.assert(
      fc.property(input, (raw) => {
        try {
          const value = parseForm(anything, raw);
          // What was accepted has one form encoding, which reads back as the same value.
          expect(parseForm(anything, serializeForm(value))).toEqual(value);
        } catch (error) {
          expect(error).toBeInstanceOf(KeywardError);
          expect((error as KeywardError).code).toBe('contract_violation');
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('form contracts in the config', () => {
  it('refuses a form body that is not an object, and a nested field named by digits only', () => {
    const top = thrown(() => compiled({ body: { type: 'array', items: { type: 'string' } } }));
    expect(top).toBeInstanceOf(ConfigError);
    expect((top as Error).message).toContain('upstreams.t.routes.0.body: a form body is an object of fields');
    const digits = thrown(() =>
      compiled({
        body: { type: 'object', properties: { a: { type: 'object', properties: { '0': { type: 'string' } } } } },
      }),
    );
    expect(digits).toBeInstanceOf(ConfigError);
    expect((digits as Error).message).toContain('upstreams.t.routes.0.body.properties.a.properties.0');
  });

  it('refuses "file" fields outside multipart bodies', () => {
    for (const bodyFormat of ['form', 'json'] as const) {
      const error = thrown(() =>
        compiled({ bodyFormat, body: { type: 'object', properties: { f: { type: 'file' } } } }),
      );
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toContain(
        'upstreams.t.routes.0.body.properties.f: "file" applies to multipart bodies only',
      );
    }
  });

  it('needs a body contract for bodyFormat', () => {
    const error = thrown(() =>
      defineUpstream('t', {
        baseUrl: 'https://api.example.com/v1/',
        auth: { type: 'bearer', secret: { env: 'API_KEY' } },
        routes: [{ method: 'POST', path: '/x', bodyFormat: 'form' }],
      }),
    );
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('bodyFormat: needs a "body" contract on this route');
  });

  it('takes formArrays on form bodies only, and only its three styles', () => {
    const route = (extra: Record<string, unknown>) => () =>
      defineUpstream('t', {
        baseUrl: 'https://api.example.com/v1/',
        auth: { type: 'bearer', secret: { env: 'API_KEY' } },
        routes: [{ method: 'POST', path: '/x', body: { type: 'object', properties: { a: { type: 'string' } } }, ...extra } as RouteInput],
      });
    expect((thrown(route({ formArrays: 'repeat' })) as Error).message).toContain(
      'formArrays: applies to form bodies only ("bodyFormat": "form")',
    );
    expect((thrown(route({ bodyFormat: 'form', formArrays: 'commas' })) as Error).message).toContain('formArrays');
    expect(route({ bodyFormat: 'form', formArrays: 'brackets' })).not.toThrow();
  });
});
