import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { handleUserKey } from '../../lib/core/api/keys';
import { defineUpstream } from '../../lib/core/config/load';
import { ConfigError } from '../../lib/core/config/error';
import { DecoySet, loadDecoys, type Decoy } from '../../lib/core/detect/decoys';
import { decoyId, mintDecoy, type DecoyShape } from '../../lib/core/detect/mint';
import type { DecoyHit, SecuritySignals } from '../../lib/core/detect/signals';
import type { ProxyDeps, ProxyEvent } from '../../lib/core/pipeline';
import { createRuntime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { freePort } from '../fixtures/app-server';
import { authorizeUpgrade } from '../../lib/core/ws/upgrade';
import { capturingLogger } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import {
  APP_ORIGIN,
  bearerFor,
  cookieFor,
  createHarness,
  expectKeywardError,
  type CallOptions,
  type Harness,
} from './harness';

/**
 * Decoy keys (honeytokens, README "Decoy keys") through the real pipeline (handleProxy) against a real
 * node:http upstream: a decoy presented anywhere in a request, or a decoy route called, is refused as the same
 * request with another value there is (401 unauthenticated once it would have gone through) and raised once, through the deps' SecuritySignals, with the session the request carried, the
 * client IP and where it was (by name). Decoys are minted per run (lib/core/detect/mint.ts): no fixture holds one.
 */
function decoy(shape: DecoyShape): Decoy {
  return { id: decoyId(), ...mintDecoy(shape), createdAt: new Date().toISOString() };
}

const openai = decoy('openai');
const github = decoy('github');
const aws = decoy('aws');
const decoys = new DecoySet([openai, github, aws]);
const CLIENT_IP = '203.0.113.7';

/** A SecuritySignals that records every hit (the detector's part, lib/core/detect/detector.ts, is not under test). */
class RecordingSignals implements SecuritySignals {
  readonly hits: DecoyHit[] = [];
  decoyHit(hit: DecoyHit): void {
    this.hits.push(hit);
  }
}

let harness: Harness;
let signals: RecordingSignals;
let deps: ProxyDeps;
const alice = { sub: 'local:alice', sid: randomUUID() };
let aliceCookie: string;

/** The upstream these tests call, on the test upstream at `origin`. */
function llm(origin: string) {
  return defineUpstream('llm', {
    baseUrl: `${origin}/v1/`,
    auth: { type: 'bearer', secret: { env: 'ECHO_KEY' } },
    routes: [
      {
        method: 'POST',
        path: '/chat',
        body: {
          type: 'object',
          required: ['model'],
          properties: {
            model: { type: 'string' },
            prompt: { type: 'string', maxLength: 4096 },
            user: { type: 'string' },
          },
        },
        identity: { 'body.user': 'userId' },
      },
      { method: 'POST', path: '/stream', maxRequestBytes: 16 * 1024 * 1024 },
      { method: 'GET', path: '/models' },
      // A decoy route: roles it names are ignored (it is refused before policy), and it is never forwarded.
      { method: 'GET', path: '/admin/export', roles: ['admin'], decoy: true },
      { method: 'GET', path: '/socket', websocket: true },
    ],
    timeoutMs: 60_000,
  });
}

beforeAll(async () => {
  harness = await createHarness({ upstreams: (origin) => [llm(origin)] });
  aliceCookie = await cookieFor(harness, alice);
});

afterAll(async () => {
  await harness?.close();
});

/** The calls' records (what the audit trail and the detector receive), in order. */
let records: ProxyEvent[] = [];

beforeEach(() => {
  signals = new RecordingSignals();
  records = [];
  deps = {
    ...harness.runtime,
    decoys,
    signals,
    onComplete: (event) => {
      records.push(event);
      harness.runtime.onComplete?.(event);
    },
  };
});

/** A call through handleProxy with decoys and the recording signals, from CLIENT_IP, as alice unless told otherwise. */
function call(path: readonly string[], options: CallOptions = {}) {
  return harness.call(path, {
    upstream: 'llm',
    cookie: aliceCookie,
    deps,
    ...options,
    headers: { 'x-forwarded-for': CLIENT_IP, ...options.headers },
  });
}

/** The one hit raised, checked against the call's answer: 401 unauthenticated with the same request id. */
function expectOneHit(
  result: Awaited<ReturnType<typeof call>>,
  expected: Partial<DecoyHit>,
  answer: { status: number; code: string } = { status: 401, code: 'unauthenticated' },
): DecoyHit {
  expectKeywardError(result, answer.status, answer.code, harness);
  // Recorded apart from a failed call of the user's (the detector does not count it: lib/core/detect/detector.ts).
  const requestId = result.json<{ error: { requestId: string } }>().error.requestId;
  const recorded = records.find((record) => record.requestId === requestId);
  expect(recorded?.errorCode).toBe(answer.code === 'unauthenticated' ? 'decoy_presented' : answer.code);
  // The answer is a wrong key's answer: nothing says "decoy".
  expect(result.text.toLowerCase()).not.toContain('decoy');
  expect(signals.hits).toHaveLength(1);
  const hit = signals.hits[0]!;
  expect(hit).toEqual({
    kind: 'credential',
    decoyId: openai.id,
    userId: alice.sub,
    sessionId: alice.sid,
    ip: CLIENT_IP,
    upstream: 'llm',
    route: '/models',
    requestId: result.json<{ error: { requestId: string } }>().error.requestId,
    ...expected,
  });
  for (const value of [openai.value, github.value, aws.value, aws.secret!])
    expect(JSON.stringify(hit)).not.toContain(value);
  return hit;
}

describe('a decoy presented in a request', () => {
  it('in Authorization (a bearer that is no session), with the cookie session beside it: that session is named', async () => {
    const before = harness.upstream.requests.length;
    const result = await call(['models'], { headers: { authorization: `Bearer ${openai.value}` } });
    expectOneHit(result, { where: 'header:authorization' });
    expect(harness.upstream.requests.length).toBe(before);
  });

  it('in Authorization with no other session: raised without a session', async () => {
    const result = await call(['models'], { cookie: false, headers: { authorization: `Bearer ${openai.value}` } });
    expectOneHit(result, { where: 'header:authorization', userId: null, sessionId: null });
  });

  it('in x-api-key, with a mobile (bearer) session: that session is named', async () => {
    const bob = { sub: 'local:bob', sid: randomUUID() };
    const result = await call(['models'], {
      cookie: false,
      headers: { authorization: await bearerFor(harness, bob), 'x-api-key': github.value },
    });
    expectOneHit(result, { where: 'header:x-api-key', decoyId: github.id, userId: bob.sub, sessionId: bob.sid });
  });

  it('in a cookie, URL-encoded', async () => {
    const result = await call(['models'], { cookie: `${aliceCookie}; openai_key=${encodeURIComponent(openai.value)}` });
    expectOneHit(result, { where: 'header:cookie' });
  });

  it('base64-encoded in Basic credentials', async () => {
    const basic = Buffer.from(`AKIA:${aws.secret}`).toString('base64');
    const result = await call(['models'], { headers: { authorization: `Basic ${basic}` } });
    expectOneHit(result, { where: 'header:authorization', decoyId: aws.id });
  });

  it('in the query, raw and base64url', async () => {
    expectOneHit(await call(['models'], { query: `?limit=5&key=${openai.value}` }), { where: 'query:key' });
    signals.hits.length = 0;
    const encoded = Buffer.from(openai.value).toString('base64url');
    expectOneHit(await call(['models'], { query: `?state=${encoded}` }), { where: 'query:state' });
  });

  // Refused before a route is matched, a decoy gets what any other value gets there: the answer cannot tell them apart.
  it('as ?access_token= (which the pipeline refuses anyway): still a hit, answered as any token there is', async () => {
    const other = await call(['models'], { query: `?access_token=${randomSecret('not-a-decoy')}` });
    expectKeywardError(other, 400, 'bad_request', harness);
    signals.hits.length = 0;
    expectOneHit(await call(['models'], { query: `?access_token=${openai.value}` }), { where: 'query:access_token' }, { status: 400, code: 'bad_request' });
  });

  it('on an unknown upstream or path: still a hit, the upstream not named after the client, answered as any key there is', async () => {
    const other = await call(['nowhere'], { upstream: 'no-such', headers: { 'x-api-key': randomSecret('not-a-decoy') } });
    expectKeywardError(other, 404, 'upstream_not_found', harness);
    signals.hits.length = 0;
    const result = await call(['nowhere'], { upstream: 'no-such', headers: { 'x-api-key': openai.value } });
    expectOneHit(result, { where: 'header:x-api-key', upstream: '(unknown)', route: null }, { status: 404, code: 'upstream_not_found' });
    signals.hits.length = 0;
    const undeclared = await call(['nowhere'], { headers: { 'x-api-key': openai.value } });
    expectOneHit(undeclared, { where: 'header:x-api-key', route: null }, { status: 404, code: 'route_not_found' });
  });

  it('as the upstream segment of the path (/api/proxy/<decoy>/…): a hit too', async () => {
    const result = await call(['models'], { upstream: openai.value });
    expectOneHit(result, { where: 'path', upstream: '(unknown)', route: null }, { status: 404, code: 'upstream_not_found' });
  });

  it('in a JSON body on a contract route (also JSON-escaped, and base64 inside a field): the upstream never receives it', async () => {
    const before = harness.upstream.requests.length;
    const bodies = [
      JSON.stringify({ model: 'small', prompt: `my key is ${openai.value}` }),
      `{"model":"small","prompt":"${[...openai.value].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('')}"}`,
      JSON.stringify({ model: 'small', prompt: Buffer.from(`config: {"key": "${openai.value}"}`).toString('base64') }),
    ];
    for (const body of bodies) {
      signals.hits.length = 0;
      const result = await call(['chat'], { method: 'POST', body, headers: { 'content-type': 'application/json' } });
      expectOneHit(result, { where: 'body', route: '/chat' });
    }
    expect(harness.upstream.requests.length).toBe(before);
  });

  it('in a form-encoded body forwarded as sent (no contract)', async () => {
    const before = harness.upstream.requests.length;
    const body = new URLSearchParams({ note: 'x', key: github.value }).toString();
    const result = await call(['stream'], {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expectOneHit(result, { where: 'body', route: '/stream', decoyId: github.id });
    // The decoy was found in the first chunk: nothing of it went out (the upstream may have seen the call open).
    for (const request of harness.upstream.requests.slice(before))
      expect(request.bodyPreview.includes(github.value)).toBe(false);
  });

  it('in a streamed body after forwarding started: the upstream call is aborted before the decoy reaches it', async () => {
    // This call's upstream request, told by its query: an earlier test's aborted one may arrive meanwhile.
    const tag = '?case=streamed-after-forwarding';
    const mine = () =>
      vi.waitFor(() => {
        const request = harness.upstream.requests.find((recorded) => recorded.url.endsWith(tag));
        if (!request) throw new Error('not arrived yet');
        return request;
      });
    const head = Buffer.alloc(64 * 1024, 'a');
    const lead = '"key":"';
    // The decoy arrives split over two chunks, the first sent once the upstream received most of the head
    // (forwarding has started), the second once it received what may go out of the first: the bytes before the
    // decoy. The start of the decoy is held back until the next chunk says whether a decoy follows.
    const chunks = [
      async () => head,
      async () => {
        await mine().then((request) => request.waitForBytes(32 * 1024));
        return Buffer.from(`${lead}${openai.value.slice(0, 50)}`);
      },
      async () => {
        await (await mine()).waitForBytes(head.length + lead.length);
        return Buffer.from(`${openai.value.slice(50)}", "more": "${'b'.repeat(1000)}"`);
      },
    ];
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const next = chunks.shift();
        if (next) controller.enqueue(await next());
        else controller.close();
      },
    });
    const result = await call(['stream'], {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/octet-stream' },
      query: tag,
    });
    expectOneHit(result, { where: 'body', route: '/stream' });
    const forwarded = await mine();
    const received = await forwarded.bodyDone;
    // Aborted: what arrived is exactly what came before the decoy, and none of the decoy.
    expect(received).toBe(head.length + lead.length);
    expect(forwarded.bodyPreview.includes(openai.value.slice(0, 8))).toBe(false);
    await forwarded.closed;
    expect(forwarded.closedEarly).toBe(true);
  });

  it('is logged as a warning naming the decoy by id, never by value', async () => {
    const mark = harness.logs.length;
    await call(['models'], { headers: { 'x-api-key': github.value } });
    const lines = harness.logs.slice(mark).join('');
    expect(lines).toContain('decoy presented');
    expect(lines).toContain(github.id);
    expect(lines).not.toContain(github.value);
  });

  it('a detector that throws does not break the refusal', async () => {
    deps = {
      ...deps,
      signals: {
        decoyHit: () => {
          throw new Error('detector down');
        },
      },
    };
    const result = await call(['models'], { headers: { 'x-api-key': github.value } });
    expectKeywardError(result, 401, 'unauthenticated', harness);
  });
});

describe('the answer does not tell a decoy from another value in its place', () => {
  /** A key shaped as the decoy is, and no decoy (minted, but not among the configured decoys). */
  const lookalike = mintDecoy('openai').value;

  /** What a caller sees of an answer: status, code, message, challenge; and the hits it raised. */
  async function seen(options: CallOptions) {
    signals.hits.length = 0;
    const result = await call(['models'], options);
    const { code, message } = result.json<{ error: { code: string; message: string } }>().error;
    const answer = { status: result.response.status, code, message, challenge: result.response.headers.get('www-authenticate') };
    return { answer, hits: [...signals.hits] };
  }

  it('a valid session cookie without the CSRF header: 403 csrf_failed either way, the user named as evidence only', async () => {
    // A signed-in caller testing found keys without the header learns nothing, and cannot have a forged request
    // (which is what such a request may be) revoke anyone.
    const other = await seen({ csrf: false, headers: { authorization: `Bearer ${lookalike}` } });
    const decoyed = await seen({ csrf: false, headers: { authorization: `Bearer ${openai.value}` } });
    expect(other.answer).toMatchObject({ status: 403, code: 'csrf_failed' });
    expect(decoyed.answer).toEqual(other.answer);
    expect(decoyed.hits).toMatchObject([{ where: 'header:authorization', userId: null, sessionId: null, unverifiedUserId: alice.sub }]);
    // A decoy route answers as any declared route does to that request.
    signals.hits.length = 0;
    const route = await call(['admin', 'export'], { csrf: false });
    expect(route.response.status).toBe(403);
    expect(route.json<{ error: { message: string } }>().error.message).toBe(other.answer.message);
    expect(signals.hits).toMatchObject([{ kind: 'route', userId: null, unverifiedUserId: alice.sub }]);
  });

  it("a token step 4 refuses (a DPoP token that is none): step 4's refusal either way, challenge included", async () => {
    const other = await seen({ cookie: false, csrf: false, headers: { authorization: `DPoP ${lookalike}` } });
    const decoyed = await seen({ cookie: false, csrf: false, headers: { authorization: `DPoP ${openai.value}` } });
    expect(other.answer).toMatchObject({ status: 401, code: 'unauthenticated', challenge: expect.stringContaining('invalid_token') });
    expect(decoyed.answer).toEqual(other.answer);
    expect(decoyed.hits).toMatchObject([{ where: 'header:authorization', userId: null, sessionId: null }]);
  });

  it('a store that cannot say whether the session was revoked: 503 store_unavailable either way', async () => {
    // The same app with its store an unreachable Redis (a port nothing listens on).
    const store = new RedisStore(`redis://127.0.0.1:${await freePort()}`, { prefix: `keyward-test:decoys-down:${randomUUID()}:` });
    try {
      const down = createRuntime({ env: harness.env, upstreams: [llm(harness.upstream.origin)], store, logger: capturingLogger().logger });
      deps = { ...down, decoys, signals };
      const other = await seen({ headers: { authorization: `Bearer ${lookalike}` } });
      const decoyed = await seen({ headers: { authorization: `Bearer ${openai.value}` } });
      expect(other.answer).toMatchObject({ status: 503, code: 'store_unavailable' });
      expect(decoyed.answer).toEqual(other.answer);
      expect(decoyed.hits).toMatchObject([{ where: 'header:authorization', userId: null, sessionId: null }]);
    } finally {
      await store.close();
    }
  });

  it('except with a verified session: then refused 401 where another value goes through, and the hit names the user', async () => {
    // As content (here the query), the decoy is not forwarded: the caller can tell it, at the cost of an alert
    // naming them (README "What the detector does with a hit"); as a credential, of their sessions and keys.
    const other = await call(['models'], { query: `?q=${lookalike}` });
    expect(other.response.status).toBe(200);
    expect(signals.hits).toEqual([]);
    expectOneHit(await call(['models'], { query: `?q=${openai.value}` }), { where: 'query:q' });
  });
});

describe('a decoy route', () => {
  it('is refused and raised with the session, whatever its roles say, and never forwarded', async () => {
    const before = harness.upstream.requests.length;
    const result = await call(['admin', 'export']);
    expectOneHit(result, { kind: 'route', decoyId: null, where: 'route', route: '/admin/export' });
    expect(harness.upstream.requests.length).toBe(before);
  });

  it('is refused and raised without a session too', async () => {
    const result = await call(['admin', 'export'], { cookie: false, csrf: false });
    expectOneHit(result, {
      kind: 'route',
      decoyId: null,
      where: 'route',
      route: '/admin/export',
      userId: null,
      sessionId: null,
    });
  });

  it("sent by another site through the victim's browser (no CSRF header, or a cross-site fetch): 403 csrf_failed, the victim named as evidence only", async () => {
    // Decoy values and decoy routes are public by design: a link on any site must not get its visitors revoked.
    // Answered as step 5 answers any call with that cookie and those headers.
    const forged = { userId: null, sessionId: null, unverifiedUserId: alice.sub };
    const csrfFailed = { status: 403, code: 'csrf_failed' };
    const link = await call(['admin', 'export'], { csrf: false, headers: { 'sec-fetch-site': 'cross-site' } });
    expectOneHit(link, { kind: 'route', decoyId: null, where: 'route', route: '/admin/export', ...forged }, csrfFailed);
    signals.hits.length = 0;
    const query = await call(['models'], { csrf: false, query: `?key=${openai.value}` });
    expectOneHit(query, { where: 'query:key', ...forged }, csrfFailed);
    signals.hits.length = 0;
    const fetched = await call(['models'], { headers: { 'sec-fetch-site': 'cross-site', 'x-api-key': openai.value } });
    expectOneHit(fetched, { where: 'header:x-api-key', ...forged }, csrfFailed);
  });

  it('is a decoy route without decoy credentials configured', async () => {
    deps = { ...deps, decoys: undefined };
    const result = await call(['admin', 'export']);
    expectOneHit(result, { kind: 'route', decoyId: null, where: 'route', route: '/admin/export' });
  });
});

describe('without decoys configured', () => {
  it('calls are unaffected: a value that would be a decoy is just a value', async () => {
    deps = { ...harness.runtime, signals };
    expect(deps.decoys).toBeUndefined();
    const listed = await call(['models'], { headers: { 'x-api-key': openai.value }, query: `?key=${github.value}` });
    expect(listed.response.status).toBe(200);
    const chat = await call(['chat'], {
      method: 'POST',
      body: JSON.stringify({ model: 'small', prompt: openai.value }),
      headers: { 'content-type': 'application/json' },
    });
    expect(chat.response.status).toBe(200);
    const forwarded = harness.upstream.requests.at(-1)!;
    expect(forwarded.bodyPreview.toString()).toContain(openai.value);
    expect(signals.hits).toEqual([]);
  });

  it('with decoys configured, calls without one are unaffected too', async () => {
    const chat = await call(['chat'], {
      method: 'POST',
      body: JSON.stringify({ model: 'small', prompt: 'hello' }),
      headers: { 'content-type': 'application/json' },
    });
    expect(chat.response.status).toBe(200);
    const streamed = await call(['stream'], {
      method: 'POST',
      body: Buffer.alloc(256 * 1024, 'x'),
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(streamed.response.status).toBe(200);
    expect(harness.upstream.requests.at(-1)!.bodyBytes).toBe(256 * 1024);
    expect(signals.hits).toEqual([]);
  });
});

describe('a WebSocket upgrade (the fast lane)', () => {
  const upgrade = (headers: Record<string, string>, query = '') =>
    authorizeUpgrade(
      new Request(`${APP_ORIGIN}/api/proxy/llm/socket${query}`, {
        headers: { origin: APP_ORIGIN, cookie: aliceCookie, 'x-forwarded-for': CLIENT_IP, ...headers },
      }),
      { upstream: 'llm', path: ['socket'] },
      deps,
    );

  it('with a decoy in a header or the query is refused and raised', async () => {
    const byHeader = await upgrade({ 'sec-websocket-protocol': `chat, ${openai.value}` });
    expect(byHeader).toBeInstanceOf(Response);
    expect((byHeader as Response).status).toBe(401);
    const byQuery = await upgrade({}, `?token=${github.value}`);
    expect((byQuery as Response).status).toBe(401);
    expect(signals.hits.map((hit) => [hit.where, hit.decoyId, hit.userId, hit.route])).toEqual([
      ['header:sec-websocket-protocol', openai.id, alice.sub, '/socket'],
      ['query:token', github.id, alice.sub, '/socket'],
    ]);
  });

  it("from another site's page (an Origin not allowed): 403 as without the decoy, raised without the victim's session", async () => {
    const other = await upgrade({ origin: 'https://evil.example', 'x-api-key': mintDecoy('openai').value });
    expect((other as Response).status).toBe(403);
    const forged = await upgrade({ origin: 'https://evil.example', 'x-api-key': openai.value });
    expect((forged as Response).status).toBe(403);
    expect(signals.hits.map((hit) => [hit.where, hit.userId, hit.sessionId, hit.unverifiedUserId])).toEqual([['header:x-api-key', null, null, alice.sub]]);
  });

  it('to a route that takes no WebSocket: 400 with a decoy as with another value, with or without a session', async () => {
    const toModels = (headers: Record<string, string>, query: string) =>
      authorizeUpgrade(
        new Request(`${APP_ORIGIN}/api/proxy/llm/models${query}`, { headers: { origin: APP_ORIGIN, 'x-forwarded-for': CLIENT_IP, ...headers } }),
        { upstream: 'llm', path: ['models'] },
        deps,
      );
    const lookalike = mintDecoy('github').value;
    const callers: Record<string, string>[] = [{ cookie: aliceCookie }, {}, { cookie: aliceCookie, origin: 'https://evil.example' }];
    for (const headers of callers) {
      const seen = async (response: Response) => {
        const { code, message } = ((await response.json()) as { error: { code: string; message: string } }).error;
        return { status: response.status, code, message };
      };
      const other = await seen((await toModels(headers, `?token=${lookalike}`)) as Response);
      const decoyed = await seen((await toModels(headers, `?token=${github.value}`)) as Response);
      expect(other).toMatchObject({ status: 400, code: 'bad_request' });
      expect(decoyed).toEqual(other);
    }
    // Each decoy hit is still raised, though the answer gives nothing away.
    expect(signals.hits.map((hit) => hit.where)).toEqual(['query:token', 'query:token', 'query:token']);
  });

  it('without one is granted', async () => {
    expect(await upgrade({})).not.toBeInstanceOf(Response);
    expect(signals.hits).toEqual([]);
  });
});

describe('the own-key API (PUT /api/keys/<upstream>)', () => {
  it("refuses to store a decoy as one's own key and raises the hit with the session", async () => {
    const env = {
      ...testSessionSecrets(),
      KEYWARD_VAULT_SECRET: randomSecret('vault'),
      KEYWARD_STORE: 'memory',
      KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
    };
    const log = capturingLogger();
    const runtime = createRuntime({
      env,
      logger: log.logger,
      upstreams: [
        defineUpstream('byok', {
          baseUrl: `${harness.upstream.origin}/v1/`,
          auth: { type: 'bearer', secret: { user: 'key' } },
          routes: [{ method: 'GET', path: '/models' }],
        }),
      ],
    });
    const withDecoys = { ...runtime, decoys, signals };
    const cookie = await cookieFor({ env } as unknown as Harness, alice);
    const put = (key: string) =>
      handleUserKey(
        new Request(`${APP_ORIGIN}/api/keys/byok`, {
          method: 'PUT',
          headers: {
            cookie,
            'x-keyward-csrf': '1',
            origin: APP_ORIGIN,
            'content-type': 'application/json',
            'x-forwarded-for': CLIENT_IP,
          },
          body: JSON.stringify({ key }),
        }),
        'byok',
        withDecoys,
      );
    const refused = await put(openai.value);
    expect(refused.status).toBe(401);
    const body = (await refused.json()) as { error: { code: string; requestId: string } };
    expect(body.error.code).toBe('unauthenticated');
    expect(signals.hits).toEqual([
      {
        kind: 'credential',
        decoyId: openai.id,
        where: 'own-key',
        userId: alice.sub,
        sessionId: alice.sid,
        ip: CLIENT_IP,
        upstream: 'byok',
        route: null,
        requestId: body.error.requestId,
      },
    ]);
    expect(await runtime.userKeys!.describe('byok', { userId: alice.sub })).toBeNull();
    expect(log.lines.join('')).toContain('decoy presented');
    expect(log.lines.join('')).not.toContain(openai.value);
    // A real key is stored as before.
    expect((await put(randomSecret('real'))).status).toBe(201);
    expect(signals.hits).toHaveLength(1);
  });
});

describe('KEYWARD_DECOYS_FILE at start-up', () => {
  const dir = mkdtempSync(join(tmpdir(), 'keyward-decoys-int-'));
  const write = (name: string, content: unknown) => {
    const path = join(dir, name);
    writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
    return path;
  };
  const start = (file: string, extra: Record<string, string> = {}) =>
    createRuntime({
      logger: capturingLogger().logger,
      env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory', KEYWARD_DECOYS_FILE: file, ...extra },
      upstreams: [
        defineUpstream('echo', {
          baseUrl: 'http://127.0.0.1:9/v1/',
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
          routes: [{ method: 'GET', path: '/x' }],
        }),
      ],
    });

  it('loads the decoys into the runtime', () => {
    const runtime = start(write('ok.json', { decoys: [openai] }), { ECHO_KEY: randomSecret('echo') });
    expect(runtime.decoys?.find(openai.value)).toBe(openai.id);
    expect(loadDecoys(write('ok2.json', { decoys: [github] }))?.find(github.value)).toBe(github.id);
  });

  it('refuses an invalid file, naming the field and not the value', () => {
    const file = write('bad.json', { decoys: [{ ...github, value: 'short' }] });
    expect(() => start(file, { ECHO_KEY: randomSecret('echo') })).toThrow(ConfigError);
    expect(() => start(file, { ECHO_KEY: randomSecret('echo') })).toThrow(
      /KEYWARD_DECOYS_FILE \(.*bad\.json\) is invalid:\n {2}- decoys\.0\.value:/,
    );
  });

  it('refuses a missing file', () => {
    expect(() => start(join(dir, 'missing.json'), { ECHO_KEY: randomSecret('echo') })).toThrow(
      /KEYWARD_DECOYS_FILE: .* cannot be read \(ENOENT\)/,
    );
  });

  it('refuses a decoy that is a real secret Keyward uses, naming the decoy only', () => {
    const real = randomSecret('echo');
    const file = write('real.json', {
      decoys: [{ id: 'decoy_oops', shape: 'generic', value: real, createdAt: new Date().toISOString() }],
    });
    let message = '';
    try {
      start(file, { ECHO_KEY: real });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain('KEYWARD_DECOYS_FILE: decoy decoy_oops is a secret Keyward uses');
    expect(message).not.toContain(real);
  });
});
