import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parse as parseQueryString } from 'node:querystring';
import { z } from 'zod';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { capturingLogger, claimsSessionCookie, findLeak, type SessionIdentity } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type RecordedRequest, type TestUpstream } from '../fixtures/upstream';

/**
 * The access policy end to end (DESIGN.md step 5): a real pipeline, a real node:http upstream that records
 * exactly what it received, real session cookies. Checks that contracts re-serialise what is forwarded, that
 * identity fields and caps are stamped from the session, and that every refusal happens before the upstream.
 */

const APP_ORIGIN = 'https://app.keyward.test';

let upstream: TestUpstream;
let runtime: Runtime;
let env: Record<string, string>;
let apiKey: string;
const log = capturingLogger();

beforeAll(async () => {
  upstream = await startUpstream();
  apiKey = randomSecret('pol');
  env = { ...testSessionSecrets(), POLICY_KEY: apiKey, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, KEYWARD_STORE: 'memory' };
  runtime = createRuntime({
    env,
    logger: log.logger,
    upstreams: [
      defineUpstream('llm', {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'bearer', secret: { env: 'POLICY_KEY' } },
        timeoutMs: 60_000,
        routes: [
          {
            method: 'POST',
            path: '/chat',
            roles: ['free', 'pro'],
            body: {
              type: 'object',
              required: ['model', 'messages'],
              properties: {
                model: { type: 'string', enum: ['small', 'large'] },
                messages: {
                  type: 'array',
                  maxItems: 4,
                  items: {
                    type: 'object',
                    required: ['role', 'content'],
                    properties: {
                      role: { type: 'string', enum: ['user', 'assistant'] },
                      content: { type: 'string', maxLength: 100 },
                    },
                  },
                },
                max_tokens: { type: 'integer', minimum: 1, maximum: 100_000 },
                stream: { type: 'boolean' },
                user: { type: 'string' },
                metadata: { type: 'object', properties: { user_id: { type: 'string' }, tag: { type: 'string' } } },
              },
            },
            caps: { free: { 'body.max_tokens': 1000 } },
            identity: { 'body.user': 'userId', 'body.metadata.user_id': 'userId' },
          },
          {
            method: 'GET',
            path: '/repos',
            query: {
              properties: {
                owner: { type: 'string' },
                limit: { type: 'integer', minimum: 1, maximum: 100 },
                score: { type: 'number' },
                tags: { type: 'array', items: { type: 'string' }, maxItems: 3 },
                verbose: { type: 'boolean' },
              },
            },
            caps: { free: { 'query.limit': 10 } },
            identity: { 'query.owner': 'claims.org' },
          },
          // No query contract: the query passes through, with a cap and an identity field written into it.
          { method: 'GET', path: '/listing', caps: { '*': { 'query.limit': 10 } }, identity: { 'query.owner': 'userId' } },
          { method: 'GET', path: '/users/:id/files', scopes: ['files:read'], paramEquals: { id: 'claims.accountId' } },
          { method: 'GET', path: '/scoped', scopes: ['chat', 'files:read'] },
          { method: 'GET', path: '/admin', roles: ['admin'] },
          {
            method: 'POST',
            path: '/numbers',
            maxRequestBytes: 1024,
            body: { type: 'object', properties: { v: { type: 'array', items: { type: 'number' } } } },
          },
          {
            method: 'POST',
            path: '/form',
            maxRequestBytes: 1024,
            bodyFormat: 'form',
            body: { type: 'object', properties: { q: { type: 'string' } } },
          },
          {
            method: 'POST',
            path: '/zod',
            body: z.object({ name: z.string().max(20), count: z.number().int().optional() }),
          },
        ],
      }),
    ],
  });
});

afterAll(async () => {
  // Nothing the tests sent or received put the upstream key or a session secret into the logs.
  expect(findLeak(log.lines.join(''), [apiKey, env.AUTH_SECRET!, env.KEYWARD_SESSION_SECRET!])).toBeNull();
  await upstream.close();
  await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
  await runtime.store.close();
});

beforeEach(() => upstream.reset());

interface Call {
  status: number;
  response: Response;
  text: string;
  /** The request the upstream received for this call, or null when it was never called. */
  seen: RecordedRequest | null;
}

const FREE: SessionIdentity = { sub: 'local:fay', roles: ['free'] };
const PRO: SessionIdentity = { sub: 'local:paul', roles: ['pro'] };

async function call(
  identity: SessionIdentity,
  path: string[],
  options: { method?: string; query?: string; body?: string | Uint8Array<ArrayBuffer>; contentType?: string | null } = {},
): Promise<Call> {
  const method = options.method ?? 'GET';
  const headers = new Headers({ cookie: await claimsSessionCookie(env.AUTH_SECRET!, identity), 'x-keyward-csrf': '1' });
  if (method !== 'GET') headers.set('origin', APP_ORIGIN);
  if (options.body !== undefined && options.contentType !== null)
    headers.set('content-type', options.contentType ?? 'application/json');
  const url = `${APP_ORIGIN}/api/proxy/llm/${path.map(encodeURIComponent).join('/')}${options.query ?? ''}`;
  const before = upstream.requests.length;
  const request = new Request(url, { method, headers, body: options.body });
  const response = await handleProxy(request, { upstream: 'llm', path }, runtime);
  const text = await response.text();
  const after = upstream.requests.length;
  expect(after - before, 'at most one upstream request per call').toBeLessThanOrEqual(1);
  const seen = after > before ? upstream.requests[before]! : null;
  if (seen) await seen.bodyDone;
  return { status: response.status, response, text, seen };
}

/** What the upstream received as the body, byte for byte. */
const received = (c: Call) => c.seen!.bodyPreview.toString('utf8');
const receivedJson = (c: Call) => JSON.parse(received(c)) as Record<string, unknown>;

/** Asserts the Keyward error shape, the code, and that the upstream was never called. */
function expectRefused(c: Call, status: number, code: string): { code: string; message: string; requestId: string } {
  expect(c.seen, 'the upstream must not be called').toBeNull();
  expect(c.status).toBe(status);
  expect(c.response.headers.get('content-type')).toBe('application/json; charset=utf-8');
  expect(c.response.headers.get('cache-control')).toBe('private, no-store');
  const body = JSON.parse(c.text) as { error: { code: string; message: string; requestId: string } };
  expect(Object.keys(body)).toEqual(['error']);
  expect(Object.keys(body.error)).toEqual(['code', 'message', 'requestId']);
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.message.length).toBeGreaterThan(0);
  expect(body.error.requestId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  expect(c.response.headers.get('x-request-id')).toBe(body.error.requestId);
  expect(c.text).not.toContain(upstream.origin);
  expect(c.text).not.toContain(apiKey);
  return body.error;
}

const chat = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'small', messages: [{ role: 'user', content: 'hi' }], ...extra });

describe('JSON body contract: what is forwarded is JSON.stringify of the parsed value', () => {
  it('normalises whitespace and duplicate keys; the last duplicate wins, as JSON.parse reads it', async () => {
    const raw =
      '{\n  "model" :  "large" ,\n\t"messages" : [ { "content":"hi there", "role" : "user" } ],' +
      ' "max_tokens": 50, "stream":false, "model": "small"\n}\n';
    const c = await call(PRO, ['chat'], { method: 'POST', body: raw });
    expect(c.status).toBe(200);
    expect(c.seen!.method).toBe('POST');
    expect(c.seen!.url).toBe('/v1/chat');
    const expected = JSON.stringify({
      model: 'small',
      messages: [{ role: 'user', content: 'hi there' }],
      max_tokens: 50,
      stream: false,
      user: 'local:paul',
      metadata: { user_id: 'local:paul' },
    });
    expect(received(c)).toBe(expected);
    expect(c.seen!.bodyBytes).toBe(Buffer.byteLength(expected));
    expect(c.seen!.headers['content-type']).toBe('application/json');
    expect(c.seen!.headers['content-length']).toBe(String(Buffer.byteLength(expected)));
    expect(c.seen!.headers.authorization).toBe(`Bearer ${apiKey}`);
  });

  it('re-encodes escapes and non-ASCII text from the parsed value, not the client bytes', async () => {
    const raw = '{"model":"small","messages":[{"role":"user","content":"caf\\u00e9 \\/ \\"q\\""}]}';
    const c = await call(PRO, ['chat'], { method: 'POST', body: raw });
    expect(c.status).toBe(200);
    expect(received(c)).toBe(
      '{"model":"small","messages":[{"role":"user","content":"café / \\"q\\""}],"user":"local:paul","metadata":{"user_id":"local:paul"}}',
    );
  });

  it('refuses bytes that are not UTF-8 (400), rather than sending U+FFFD in their place', async () => {
    const [head, tail] = chat({ metadata: { tag: '@' } }).split('@');
    const body = Buffer.concat([Buffer.from(head!), Buffer.from([0xff, 0xfe]), Buffer.from(tail!)]);
    const c = await call(PRO, ['chat'], { method: 'POST', body: new Uint8Array(body) });
    expect(expectRefused(c, 400, 'contract_violation').message).toMatch(/body: not valid UTF-8/);
    // A byte order mark is not taken for part of the JSON text either (as before: invalid JSON).
    const bom = await call(PRO, ['chat'], { method: 'POST', body: `\ufeff${chat()}` });
    expectRefused(bom, 400, 'contract_violation');
  });

  it('accepts application/json with parameters and +json types', async () => {
    for (const contentType of ['application/json; charset=utf-8', 'application/vnd.example+json', 'Application/JSON']) {
      const c = await call(PRO, ['chat'], { method: 'POST', body: chat(), contentType });
      expect(c.status, contentType).toBe(200);
      expect(c.seen!.headers['content-type']).toBe('application/json');
      expect(receivedJson(c).model).toBe('small');
    }
  });

  it('refuses an unknown top-level field with 400 contract_violation, naming where but never the value', async () => {
    const c = await call(PRO, ['chat'], { method: 'POST', body: chat({ temperature: 'SECRET-VALUE-123' }) });
    const error = expectRefused(c, 400, 'contract_violation');
    expect(error.message).toMatch(/\bbody: unknown field/);
    expect(c.text).not.toContain('SECRET-VALUE-123');
  });

  it('refuses an unknown nested field, naming its path', async () => {
    const body = JSON.stringify({ model: 'small', messages: [{ role: 'user', content: 'hi', name: 'x' }] });
    const error = expectRefused(await call(PRO, ['chat'], { method: 'POST', body }), 400, 'contract_violation');
    expect(error.message).toMatch(/\bbody\.messages\.0: unknown field/);
    const meta = JSON.stringify({ model: 'small', messages: [], metadata: { tag: 'a', extra: 1 } });
    expect(
      expectRefused(await call(PRO, ['chat'], { method: 'POST', body: meta }), 400, 'contract_violation').message,
    ).toMatch(/\bbody\.metadata: unknown field/);
  });

  it('refuses a "__proto__" key, wrong types, enum misses, missing required fields, bounds, invalid JSON and an empty body', async () => {
    const bodies = [
      '{"model":"small","messages":[],"__proto__":{"admin":true}}',
      chat({ max_tokens: '10' }),
      chat({ max_tokens: 1.5 }),
      chat({ stream: 'true' }),
      JSON.stringify({ model: 'huge', messages: [] }),
      JSON.stringify({ model: 'small' }),
      JSON.stringify({ model: 'small', messages: [{ role: 'user', content: 'x'.repeat(101) }] }),
      JSON.stringify({ model: 'small', messages: Array.from({ length: 5 }, () => ({ role: 'user', content: 'x' })) }),
      chat({ max_tokens: 0 }),
      '[]',
      'null',
      '{"model":"small",',
      '{"model":"small"} {"model":"large"}',
      '',
    ];
    for (const body of bodies) {
      const c = await call(PRO, ['chat'], { method: 'POST', body });
      expect(c.status, body).toBe(400);
      expectRefused(c, 400, 'contract_violation');
    }
  });

  it('refuses anything but JSON with 415 unsupported_media_type before the upstream', async () => {
    for (const contentType of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      'application/jsonp',
      null,
    ]) {
      const c = await call(PRO, ['chat'], { method: 'POST', body: chat(), contentType });
      expectRefused(c, 415, 'unsupported_media_type');
    }
  });

  it('refuses with 413 a body under maxRequestBytes that would go past it once written out (JSON and form)', async () => {
    // 1e20 is written out in 21 digits, `~` in a form as %7E: about 4x and 3x what the client sent.
    const numbers = JSON.stringify({ v: Array.from({ length: 200 }, () => 1) }).replaceAll('1', '1e20');
    expect(numbers.length).toBeLessThanOrEqual(1024);
    const error = expectRefused(await call(FREE, ['numbers'], { method: 'POST', body: numbers }), 413, 'payload_too_large');
    expect(error.message).toMatch(/written out/);
    const form = `q=${'~'.repeat(1000)}`;
    const formCall = await call(FREE, ['form'], { method: 'POST', body: form, contentType: 'application/x-www-form-urlencoded' });
    expectRefused(formCall, 413, 'payload_too_large');
    // Under the cap once written out, both pass.
    const small = await call(FREE, ['numbers'], { method: 'POST', body: JSON.stringify({ v: [1e20, 2.5] }) });
    expect(small.status).toBe(200);
    expect(receivedJson(small)).toEqual({ v: [1e20, 2.5] });
    const smallForm = await call(FREE, ['form'], { method: 'POST', body: 'q=~~', contentType: 'application/x-www-form-urlencoded' });
    expect(smallForm.status).toBe(200);
    expect(received(smallForm)).toBe('q=%7E%7E');
  });

  it('makes a zod object from a TypeScript adapter strict and re-serialises it too', async () => {
    const ok = await call(PRO, ['zod'], { method: 'POST', body: '{ "count" : 2,\n"name":"a", "name":"b" }' });
    expect(ok.status).toBe(200);
    expect(received(ok)).toBe('{"name":"b","count":2}');
    const unknown = await call(PRO, ['zod'], { method: 'POST', body: '{"name":"a","admin":true}' });
    expect(expectRefused(unknown, 400, 'contract_violation').message).toMatch(/\bbody: unknown field/);
  });
});

describe('identity fields are written from the session, whatever the client sent', () => {
  it('body.user and body.metadata.user_id are overwritten when the client sends them', async () => {
    const c = await call(FREE, ['chat'], {
      method: 'POST',
      body: chat({ user: 'local:mallory', metadata: { user_id: 'local:mallory', tag: 't1' }, max_tokens: 5 }),
    });
    expect(c.status).toBe(200);
    expect(received(c)).toBe(
      JSON.stringify({
        model: 'small',
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 5,
        user: 'local:fay',
        metadata: { user_id: 'local:fay', tag: 't1' },
      }),
    );
    expect(received(c)).not.toContain('mallory');
  });

  it('query.owner comes from the org claim: set when absent, overwritten when sent', async () => {
    const acme: SessionIdentity = { sub: 'local:olga', roles: ['pro'], claims: { org: 'acme' } };
    const absent = await call(acme, ['repos']);
    expect(absent.status).toBe(200);
    expect(absent.seen!.url).toBe('/v1/repos?owner=acme');
    const spoofed = await call(acme, ['repos'], { query: '?owner=evil-corp&limit=5' });
    expect(spoofed.status).toBe(200);
    expect(spoofed.seen!.url).toBe('/v1/repos?limit=5&owner=acme');
  });

  it("padding a pass-through query cannot push the cap or the identity past what the upstream's parser reads", async () => {
    // node:querystring (Express 5's query parser), qs and PHP keep the first 1,000 parameters and drop the rest.
    const junk = Array.from({ length: 1_500 }, (_, i) => `j${i}=x`).join('&');
    const padded = await call(FREE, ['listing'], { query: `?${junk}&owner=local:mallory` });
    expect(padded.status).toBe(200);
    const read = parseQueryString(padded.seen!.url.slice(padded.seen!.url.indexOf('?') + 1));
    expect(read.limit).toBe('10');
    expect(read.owner).toBe('local:fay');
    expect(padded.seen!.url).toMatch(/^\/v1\/listing\?limit=10&owner=local%3Afay&j0=x&/);
    expect(padded.seen!.url).not.toContain('mallory');
  });

  it('a session without the claim is refused with 403 forbidden', async () => {
    expectRefused(
      await call({ sub: 'local:noorg', roles: ['pro'] }, ['repos'], { query: '?owner=acme' }),
      403,
      'forbidden',
    );
  });
});

describe('per-role caps', () => {
  it('free: above the cap is 400, at the cap passes, absent is set to the cap', async () => {
    const over = await call(FREE, ['chat'], { method: 'POST', body: chat({ max_tokens: 1001 }) });
    expect(expectRefused(over, 400, 'contract_violation').message).toContain('body.max_tokens');
    const at = await call(FREE, ['chat'], { method: 'POST', body: chat({ max_tokens: 1000 }) });
    expect(at.status).toBe(200);
    expect(receivedJson(at).max_tokens).toBe(1000);
    const absent = await call(FREE, ['chat'], { method: 'POST', body: chat() });
    expect(absent.status).toBe(200);
    expect(received(absent)).toBe(
      JSON.stringify({
        model: 'small',
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 1000,
        user: 'local:fay',
        metadata: { user_id: 'local:fay' },
      }),
    );
  });

  it('pro has no cap: a larger value passes unchanged and an absent one stays absent', async () => {
    const large = await call(PRO, ['chat'], { method: 'POST', body: chat({ max_tokens: 50_000 }) });
    expect(large.status).toBe(200);
    expect(receivedJson(large).max_tokens).toBe(50_000);
    const absent = await call(PRO, ['chat'], { method: 'POST', body: chat() });
    expect(absent.status).toBe(200);
    expect(Object.hasOwn(receivedJson(absent), 'max_tokens')).toBe(false);
  });

  it('caps apply to query fields too', async () => {
    const org = { claims: { org: 'acme' } };
    expectRefused(await call({ ...FREE, ...org }, ['repos'], { query: '?limit=11' }), 400, 'contract_violation');
    const absent = await call({ ...FREE, ...org }, ['repos']);
    expect(absent.seen!.url).toBe('/v1/repos?limit=10&owner=acme');
    const pro = await call({ ...PRO, ...org }, ['repos'], { query: '?limit=100' });
    expect(pro.seen!.url).toBe('/v1/repos?limit=100&owner=acme');
  });

  it('a role outside the route is refused before any cap or contract applies', async () => {
    const c = await call({ sub: 'local:u', roles: ['user'] }, ['chat'], { method: 'POST', body: chat({ unknown: 1 }) });
    expectRefused(c, 403, 'forbidden');
  });
});

describe('query contracts', () => {
  const acme: SessionIdentity = { sub: 'local:olga', roles: ['pro'], claims: { org: 'acme' } };

  it('re-serialises the values it parsed: numbers, booleans, arrays and encodings in a fixed form', async () => {
    const c = await call(acme, ['repos'], { query: '?verbose=true&tags=a&score=1.50&tags=b%20c&limit=7&tags=%C3%A9' });
    expect(c.status).toBe(200);
    expect(c.seen!.url).toBe('/v1/repos?limit=7&owner=acme&score=1.5&tags=a&tags=b+c&tags=%C3%A9&verbose=true');
  });

  it('an array parameter given once is still an array', async () => {
    const c = await call(acme, ['repos'], { query: '?tags=only' });
    expect(c.seen!.url).toBe('/v1/repos?owner=acme&tags=only');
  });

  it('refuses an unknown parameter without echoing its value', async () => {
    const c = await call(acme, ['repos'], { query: '?limit=5&admin=SECRET-Q-77' });
    expect(expectRefused(c, 400, 'contract_violation').message).toMatch(/\bquery: unknown field/);
    expect(c.text).not.toContain('SECRET-Q-77');
  });

  it('refuses a repeated parameter that is not an array (parameter pollution), even with identical values', async () => {
    for (const query of [
      '?limit=5&limit=6',
      '?limit=5&limit=5',
      '?owner=acme&owner=acme',
      '?verbose=true&verbose=false',
    ]) {
      expectRefused(await call(acme, ['repos'], { query }), 400, 'contract_violation');
    }
  });

  it('refuses malformed numbers (";" included: it is part of the value) and booleans, out-of-range values and too many array items', async () => {
    for (const query of [
      '?limit=5;admin=1',
      '?limit=05',
      '?limit=+5',
      '?limit=5.0',
      '?limit=0x10',
      '?limit=101',
      '?limit=',
      '?score=NaN',
      '?score=1e',
      '?verbose=1',
      '?verbose=TRUE',
      '?tags=a&tags=b&tags=c&tags=d',
    ]) {
      const c = await call(acme, ['repos'], { query });
      expect(c.status, query).toBe(400);
      expectRefused(c, 400, 'contract_violation');
    }
  });

  it('a route without a query contract passes every parameter through, repeats included (form-encoded)', async () => {
    const c = await call({ sub: 'local:root', roles: ['admin'] }, ['admin'], { query: '?a=1&a=2&b=%20x' });
    expect(c.status).toBe(200);
    expect(c.seen!.url).toBe('/v1/admin?a=1&a=2&b=+x');
  });
});

describe('roles, scopes and object-level checks refuse before the upstream', () => {
  it('roles: 403 forbidden without one of them, 200 with it', async () => {
    expectRefused(await call({ sub: 'local:u', roles: ['user', 'pro'] }, ['admin']), 403, 'forbidden');
    expectRefused(await call({ sub: 'local:u', roles: [] }, ['admin']), 403, 'forbidden');
    expect((await call({ sub: 'local:root', roles: ['user', 'admin'] }, ['admin'])).status).toBe(200);
  });

  it('scopes: every scope is needed (space-separated scope claim); a missing one is 403 insufficient_scope', async () => {
    const withScope = (scope?: string): SessionIdentity => ({
      sub: 'local:s',
      roles: ['user'],
      claims: scope === undefined ? {} : { scope },
    });
    expectRefused(await call(withScope(), ['scoped']), 403, 'insufficient_scope');
    expectRefused(await call(withScope('chat'), ['scoped']), 403, 'insufficient_scope');
    expectRefused(await call(withScope('chat files:readwrite'), ['scoped']), 403, 'insufficient_scope');
    expectRefused(await call(withScope('chat,files:read'), ['scoped']), 403, 'insufficient_scope');
    const ok = await call(withScope('  files:read   chat extra '), ['scoped']);
    expect(ok.status).toBe(200);
    expect(ok.seen!.url).toBe('/v1/scoped');
  });

  it("paramEquals: the path id must be the caller's own (403 not_owner); a missing claim is 403 forbidden", async () => {
    const owner = (accountId?: string): SessionIdentity => ({
      sub: 'local:o',
      roles: ['user'],
      claims: accountId === undefined ? { scope: 'files:read' } : { scope: 'files:read', accountId },
    });
    const ok = await call(owner('acct-1'), ['users', 'acct-1', 'files']);
    expect(ok.status).toBe(200);
    expect(ok.seen!.url).toBe('/v1/users/acct-1/files');
    expectRefused(await call(owner('acct-1'), ['users', 'acct-2', 'files']), 403, 'not_owner');
    expectRefused(await call(owner('acct-1'), ['users', 'ACCT-1', 'files']), 403, 'not_owner');
    expectRefused(await call(owner(), ['users', 'acct-1', 'files']), 403, 'forbidden');
    // Scopes are checked before ownership: the caller learns nothing about whose id it is.
    expectRefused(
      await call({ sub: 'local:o', roles: ['user'], claims: { accountId: 'acct-1' } }, ['users', 'acct-2', 'files']),
      403,
      'insufficient_scope',
    );
  });
});
