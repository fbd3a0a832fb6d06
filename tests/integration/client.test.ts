import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createKeywardClient, createKeywardFetch, KeywardError, UpstreamError, type ServerSentEvent } from '../../lib/client';
import { defineUpstream } from '../../lib/core/config/load';
import { createLogger } from '../../lib/core/log/logger';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { createFastLane } from '../../lib/node/fast-lane';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { bearerToken, sessionCookie } from '../fixtures/session';
import { startUpstream, type RecordedRequest, type TestUpstream } from '../fixtures/upstream';
import { freePort } from '../fixtures/app-server';

/**
 * The typed client (lib/client) against real Keyward: the fast lane (lib/node/fast-lane.ts) on a node:http server
 * on loopback, with a runtime from createRuntime, in front of the recording test upstream. Calls go through the
 * global fetch (undici), as a Node or React Native client's would; the browser's part (cookie jar, Origin) is
 * played by headers the client is given.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** What the test upstream's echo handler answers (tests/fixtures/upstream.ts). */
const echo = z.object({ method: z.string(), url: z.string(), headers: z.record(z.string(), z.unknown()), bodyBytes: z.number() });

function definitions(origin: string) {
  return [
    defineUpstream('demo', {
      baseUrl: `${origin}/v1/`,
      auth: { type: 'header', name: 'x-api-key', secret: { env: 'DEMO_KEY' } },
      timeoutMs: 120_000,
      routes: [
        { method: 'GET', path: '/items/:id', roles: ['user'], response: echo },
        { method: 'DELETE', path: '/items/:id' },
        { method: 'POST', path: '/items', body: z.object({ name: z.string(), tags: z.array(z.string()).optional() }), response: echo },
        {
          method: 'GET',
          path: '/search',
          query: { required: ['q'], properties: { q: { type: 'string' }, limit: { type: 'integer' }, tag: { type: 'array', items: { type: 'string' } } } },
          response: echo,
        },
        { method: 'GET', path: '/admin/stats', roles: ['admin'] },
        { method: 'GET', path: '/limited', rateLimits: [{ by: 'user', limit: 1, windowSeconds: 3600 }] },
        { method: 'GET', path: '/events' },
        { method: 'POST', path: '/stream', body: { type: 'object', required: ['prompt'], properties: { prompt: { type: 'string' } } } },
        { method: 'GET', path: '/files/*', response: echo },
      ],
    }),
  ];
}
type Upstreams = ReturnType<typeof definitions>;

let upstream: TestUpstream;
let runtime: Runtime;
let server: Server;
let origin: string;
let env: Record<string, string>;
let cookie: string;
/** Every request the client made (through `fetch`), with the headers it sent. */
let sent: Request[] = [];

const recordingFetch: typeof fetch = (input, init) => {
  sent.push(new Request(input, init));
  return fetch(input, init);
};

/** A cookie-session client, as a page on APP_ORIGIN has (its browser adds the cookie and Origin). */
function client(headers: Record<string, string> = { cookie, origin: APP_ORIGIN }) {
  return createKeywardClient<Upstreams>({ baseUrl: origin, headers, fetch: recordingFetch });
}

beforeAll(async () => {
  upstream = await startUpstream();
  env = { ...testSessionSecrets(), DEMO_KEY: randomSecret('demo'), KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, KEYWARD_STORE: 'memory' };
  const sink = new Writable({ write: (_chunk, _encoding, callback) => callback() });
  runtime = createRuntime({ env, upstreams: definitions(upstream.origin), logger: createLogger({ destination: sink }) });
  server = createServer(
    createFastLane({
      deps: runtime,
      origin: () => origin,
      next: (_req, res) => {
        res.writeHead(404);
        res.end();
      },
    }),
  );
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  cookie = await sessionCookie(env.AUTH_SECRET!, { roles: ['user'] });
});

afterAll(async () => {
  server.closeAllConnections();
  server.close();
  await upstream.close();
  await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
});

beforeEach(() => {
  upstream.reset();
  sent = [];
});

/** The upstream's next request (the one the call about to be made will cause). */
function nextRequest(): Promise<RecordedRequest> {
  return upstream.nthRequest(upstream.requests.length + 1);
}

describe('calls', () => {
  it('sends the CSRF header with the session cookie and returns the JSON answer', async () => {
    const answer = await client().demo.get('/items/:id', { params: { id: 'abc' } });
    expect(answer.method).toBe('GET');
    expect(answer.url).toBe('/v1/items/abc');
    const request = sent.at(-1)!;
    expect(request.url).toBe(`${origin}/api/proxy/demo/items/abc`);
    expect(request.headers.get('x-keyward-csrf')).toBe('1');
    expect(request.headers.get('authorization')).toBeNull();
    // The header is what lets the call through: the same call without it is refused.
    const bare = await fetch(request.url, { headers: { cookie } });
    expect(bare.status).toBe(403);
    expect(((await bare.json()) as { error: { code: string } }).error.code).toBe('csrf_failed');
  });

  it('encodes each parameter as one segment', async () => {
    const answer = await client().demo.get('/items/:id', { params: { id: "x+y=z;w,(it's)" } });
    const last = answer.url.split('/').at(-1)!;
    expect(decodeURIComponent(last)).toBe("x+y=z;w,(it's)");
    // A "/" in a value stays inside its segment: Keyward refuses it (400), it never becomes two segments (404).
    const refused = await client().demo.get('/items/:id', { params: { id: 'a/b' } }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(KeywardError);
    expect(refused).toMatchObject({ code: 'bad_path', status: 400 });
    expect(sent.at(-1)!.url).toBe(`${origin}/api/proxy/demo/items/a%2Fb`);
    // The final *: a string is split on "/", each part encoded alone.
    const files = await client().demo.get('/files/*', { params: { '*': 'docs/a+b.txt' } });
    expect(files.url.split('/').slice(-2).map(decodeURIComponent)).toEqual(['docs', 'a+b.txt']);
    // Dot segments would be resolved by URL parsing before Keyward saw them: refused before any request.
    const count = sent.length;
    await expect(client().demo.get('/items/:id', { params: { id: '..' } })).rejects.toThrow(TypeError);
    expect(sent.length).toBe(count);
  });

  it('sends the query, repeating array parameters', async () => {
    const answer = await client().demo.get('/search', { query: { q: 'a b', limit: 5, tag: ['x', 'y'] } });
    const params = new URL(answer.url, 'http://upstream').searchParams;
    expect(params.get('q')).toBe('a b');
    expect(params.get('limit')).toBe('5');
    expect(params.getAll('tag')).toEqual(['x', 'y']);
  });

  it('sends a JSON body (with the Origin a state-changing call needs) and maps a contract violation to KeywardError', async () => {
    const arrived = nextRequest();
    const answer = await client().demo.post('/items', { body: { name: 'pen', tags: ['office'] } });
    expect(answer.method).toBe('POST');
    const request = await arrived;
    expect(request.headers['content-type']).toMatch(/^application\/json/);
    expect(JSON.parse(request.bodyPreview.toString('utf8'))).toEqual({ name: 'pen', tags: ['office'] });

    // What the types forbid, Keyward refuses too.
    const error = await client()
      .demo.post('/items', { body: { name: 'pen', colour: 'red' } as never })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(KeywardError);
    expect(error).toMatchObject({ code: 'contract_violation', status: 400, retryAfter: null });
    expect((error as KeywardError).requestId).toMatch(UUID);
  });

  it('resolves with undefined when the answer has no content', async () => {
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(204);
      res.end();
    });
    await expect(client().demo.delete('/items/:id', { params: { id: 'abc' } })).resolves.toBeUndefined();
  });
});

describe("Keyward's errors and the upstream's", () => {
  it('no session: 401 unauthenticated, with the request id', async () => {
    const error = await client({})
      .demo.get('/items/:id', { params: { id: 'a' } })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(KeywardError);
    const keyward = error as KeywardError;
    expect(keyward).toMatchObject({ name: 'KeywardError', code: 'unauthenticated', status: 401, retryAfter: null });
    expect(keyward.message).toMatch(/sign in/i);
    expect(keyward.requestId).toMatch(UUID);
  });

  it('a role the session lacks: 403 forbidden', async () => {
    await expect(client().demo.get('/admin/stats')).rejects.toMatchObject({ name: 'KeywardError', code: 'forbidden', status: 403 });
  });

  it('over a rate limit: 429 rate_limited with retryAfter in seconds', async () => {
    await client().demo.get('/limited');
    const error = (await client()
      .demo.get('/limited')
      .catch((caught: unknown) => caught)) as KeywardError;
    expect(error).toBeInstanceOf(KeywardError);
    expect(error.code).toBe('rate_limited');
    expect(error.status).toBe(429);
    expect(error.retryAfter).toBeGreaterThan(0);
    expect(error.retryAfter).toBeLessThanOrEqual(3600);
  });

  it("an upstream 4xx is an UpstreamError with the upstream's parsed body", async () => {
    upstream.handle((_req, res) => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'No such item', type: 'invalid_request_error', code: 'not_found' } }));
    });
    const error = (await client()
      .demo.get('/items/:id', { params: { id: 'missing' } })
      .catch((caught: unknown) => caught)) as UpstreamError;
    expect(error).toBeInstanceOf(UpstreamError);
    expect(error.status).toBe(404);
    expect(error.body).toEqual({ error: { message: 'No such item', type: 'invalid_request_error', code: 'not_found' } });
    expect(error.requestId).toMatch(UUID);
    expect(error.message).not.toContain('No such item');
  });

  it("an upstream error shaped like Keyward's is still the upstream's (its request id is not this call's)", async () => {
    upstream.handle((_req, res) => {
      res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '7' });
      res.end(JSON.stringify({ error: { code: 'rate_limited', message: 'slow down', requestId: 'upstream-id' } }));
    });
    const error = await client()
      .demo.get('/items/:id', { params: { id: 'a' } })
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(UpstreamError);
    expect(error).toMatchObject({ status: 429, retryAfter: 7 });
  });

  it("keywardFetch throws Keyward's errors and returns every other answer", async () => {
    const kwFetch = createKeywardFetch({ baseUrl: origin, headers: { cookie } });
    upstream.handle((_req, res) => {
      res.writeHead(418, { 'content-type': 'text/plain' });
      res.end('teapot');
    });
    // A path is taken under baseUrl; a full URL as it is.
    const response = await kwFetch('/api/proxy/demo/items/a');
    expect(response.status).toBe(418);
    expect(await response.text()).toBe('teapot');
    await expect(kwFetch(`${origin}/api/proxy/demo/nowhere`)).rejects.toMatchObject({ name: 'KeywardError', code: 'route_not_found', status: 404 });
  });

  it('a network failure is the TypeError fetch throws', async () => {
    const unreachable = createKeywardClient<Upstreams>({ baseUrl: `http://127.0.0.1:${await freePort()}` });
    await expect(unreachable.demo.get('/items/:id', { params: { id: 'a' } })).rejects.toThrow(TypeError);
  });
});

describe('bearer clients (no cookie)', () => {
  it('sends the token, no CSRF header and no cookie, and needs no Origin', async () => {
    const token = await bearerToken(env.KEYWARD_SESSION_SECRET!, { roles: ['user'] });
    const kw = createKeywardClient<Upstreams>({ baseUrl: origin, token: () => token, fetch: recordingFetch });
    const answer = await kw.demo.post('/items', { body: { name: 'pen' } });
    expect(answer.method).toBe('POST');
    const request = sent.at(-1)!;
    expect(request.headers.get('authorization')).toBe(`Bearer ${token}`);
    expect(request.headers.get('x-keyward-csrf')).toBeNull();
    expect(request.credentials).toBe('omit');
  });

  it('never sends the token to another origin: a URL outside baseUrl, or "//host/…", is refused before any request', async () => {
    const token = await bearerToken(env.KEYWARD_SESSION_SECRET!, { roles: ['user'] });
    const before = sent.length;
    const kwFetch = createKeywardFetch({ baseUrl: origin, token: () => token, fetch: recordingFetch });
    for (const elsewhere of ['https://attacker.example/collect', '//attacker.example/collect', new URL('http://127.0.0.1:9/x'), new Request('https://attacker.example/r')]) {
      await expect(kwFetch(elsewhere)).rejects.toThrow(/bearer token to Keyward only/);
    }
    // With no baseUrl and no page (React Native, Node), only paths are Keyward's.
    const bare = createKeywardFetch({ token: () => token, fetch: recordingFetch });
    await expect(bare('https://attacker.example/collect')).rejects.toThrow(TypeError);
    expect(sent.length).toBe(before);
    // Under baseUrl, as a path or a full URL, it goes.
    await kwFetch(`${origin}/api/proxy/demo/items/a`).catch(() => null);
    expect(sent).toHaveLength(before + 1);
    expect(sent.at(-1)!.url).toBe(`${origin}/api/proxy/demo/items/a`);
    expect(sent.at(-1)!.headers.get('authorization')).toBe(`Bearer ${token}`);
  });

  it("with a baseUrl that has a path (Next's basePath), the token goes under that path only, not elsewhere on its host", async () => {
    const token = await bearerToken(env.KEYWARD_SESSION_SECRET!, { roles: ['user'] });
    const before = sent.length;
    const kwFetch = createKeywardFetch({ baseUrl: `${origin}/base/`, token: () => token, fetch: recordingFetch });
    for (const elsewhere of [`${origin}/other/api`, `${origin}/basement/x`, `${origin}/base/../other`, `${origin}/base/%2e%2e/other`, `${origin}/`]) {
      await expect(kwFetch(elsewhere), elsewhere).rejects.toThrow(/bearer token to Keyward only/);
    }
    expect(sent.length).toBe(before);
    for (const under of ['/api/proxy/demo/items/a', `${origin}/base/api/proxy/demo/items/a`]) await kwFetch(under).catch(() => null);
    expect(sent.slice(before).map((request) => request.url)).toEqual([`${origin}/base/api/proxy/demo/items/a`, `${origin}/base/api/proxy/demo/items/a`]);
  });

  it("never sends the headers option (a Node script's cookie) to another origin either: refused before any request", async () => {
    const before = sent.length;
    const kwFetch = createKeywardFetch({ baseUrl: origin, headers: { cookie, origin: APP_ORIGIN }, fetch: recordingFetch });
    // A link taken from an upstream's answer (a `next` page, say), which the upstream's data may choose.
    for (const elsewhere of ['https://attacker.example/collect', '//attacker.example/collect', new Request('https://attacker.example/r')]) {
      await expect(kwFetch(elsewhere)).rejects.toThrow(/headers to Keyward only/);
    }
    expect(sent.length).toBe(before);
    await kwFetch('/api/proxy/demo/items/a');
    expect(sent).toHaveLength(before + 1);
    expect(sent.at(-1)!.headers.get('cookie')).toBe(cookie);
  });

  it('without a token the call is unauthenticated', async () => {
    const kw = createKeywardClient<Upstreams>({ baseUrl: origin, token: () => null });
    await expect(kw.demo.get('/items/:id', { params: { id: 'a' } })).rejects.toMatchObject({ code: 'unauthenticated', status: 401 });
  });
});

/** An upstream that sends the first event at once, then each next one only after `release()`, then ends. */
function steppedEvents(events: readonly string[]) {
  let release: () => void = () => {};
  let sentCount = 0;
  upstream.handle(async (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const [index, event] of events.entries()) {
      if (index > 0) await new Promise<void>((resolve) => (release = resolve));
      res.write(event);
      sentCount += 1;
    }
    await new Promise<void>((resolve) => (release = resolve));
    res.end();
  });
  return { release: () => release(), sent: () => sentCount };
}

describe('server-sent events', () => {
  it('yields each event as it arrives, before the upstream has sent the next', async () => {
    const stream = steppedEvents(['id: 1\ndata: one\n\n', 'event: tick\ndata: two\ndata: lines\n\n', ': a comment\ndata: {"done":true}\n\n']);
    const seen: ServerSentEvent[] = [];
    for await (const event of client().demo.sse('GET', '/events')) {
      seen.push(event);
      // Each event is in hand while the upstream still holds the next one back.
      expect(stream.sent()).toBe(seen.length);
      stream.release();
    }
    expect(seen).toEqual([
      { event: 'message', data: 'one', id: '1' },
      { event: 'tick', data: 'two\nlines', id: undefined },
      { event: 'message', data: '{"done":true}', id: undefined },
    ]);
    expect(sent.at(-1)!.headers.get('accept')).toBe('text/event-stream');
  });

  it('a POST stream carries its JSON body', async () => {
    const arrived = nextRequest();
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
      res.end(`data: ${record.bodyPreview.toString('utf8')}\n\n`);
    });
    const data: string[] = [];
    for await (const event of client().demo.sse('POST', '/stream', { body: { prompt: 'hi' } })) data.push(event.data);
    expect(data).toEqual(['{"prompt":"hi"}']);
    expect((await arrived).method).toBe('POST');
  });

  it('breaking out of the loop closes the stream, and Keyward closes the upstream call', async () => {
    const arrived = nextRequest();
    upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: one\n\n');
      // Never ends on its own.
    });
    for await (const event of client().demo.sse('GET', '/events')) {
      expect(event.data).toBe('one');
      break;
    }
    const record = await arrived;
    await record.closed;
    expect(record.closedEarly).toBe(true);
  });

  it('aborting mid-stream ends the loop with the abort, and Keyward closes the upstream call', async () => {
    const arrived = nextRequest();
    upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: one\n\n');
    });
    const controller = new AbortController();
    const seen: string[] = [];
    const ended = (async () => {
      for await (const event of client().demo.sse('GET', '/events', { signal: controller.signal })) {
        seen.push(event.data);
        controller.abort();
      }
    })();
    await expect(ended).rejects.toMatchObject({ name: 'AbortError' });
    expect(seen).toEqual(['one']);
    const record = await arrived;
    await record.closed;
    expect(record.closedEarly).toBe(true);
  });

  it('aborting before the answer rejects the call, and Keyward closes the upstream call', async () => {
    const arrived = nextRequest();
    upstream.handle(() => {
      // Never answers.
    });
    const controller = new AbortController();
    const pending = client().demo.get('/items/:id', { params: { id: 'a' }, signal: controller.signal });
    const record = await arrived;
    controller.abort();
    await expect(pending).rejects.toMatchObject({ name: 'AbortError' });
    await record.closed;
    expect(record.closedEarly).toBe(true);
  });

  it('an event longer than 8 Mi characters (a line that never ends) is a TypeError, not memory without bound', async () => {
    upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: first\n\n');
      // 9 MiB of one line with no end, in 64 KiB writes.
      const chunk = 'x'.repeat(64 * 1024);
      let written = 0;
      const more = () => {
        while (written < 9 * 1024 * 1024) {
          written += chunk.length;
          if (!res.write(written === chunk.length ? `data: ${chunk}` : chunk)) return void res.once('drain', more);
        }
      };
      more();
    });
    const seen: string[] = [];
    await expect(async () => {
      for await (const event of client().demo.sse('GET', '/events')) seen.push(event.data);
    }).rejects.toThrow(/longer than 8388608 characters/);
    expect(seen).toEqual(['first']);
  });

  it('an answer that is not an event stream is a TypeError', async () => {
    await expect(async () => {
      for await (const event of client().demo.sse('GET', '/items/:id', { params: { id: 'a' } })) void event;
    }).rejects.toThrow(/text\/event-stream/);
  });
});
