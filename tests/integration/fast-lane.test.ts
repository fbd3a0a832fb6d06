import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, npmStartNodeFlags, signIn, startApp, startFastLane, type AppServer } from '../fixtures/app-server';
import { writeConfigFile } from '../fixtures/config';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { openStreamAcrossStop, streamsAcrossStop } from '../fixtures/open-stream';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';
import { rawRequest, type RawResponse } from '../fixtures/raw-http';
import { alive, commandEnv, descendants } from '../fixtures/processes';
import { findLeak } from '../fixtures/claims-session';
import { startOtlpCollector } from '../fixtures/otlp-collector';
import { PROXIED_CONTENT_SECURITY_POLICY } from '../../lib/core/respond/content-policy';
import { decoyId, mintDecoy } from '../../lib/core/detect/mint';
import { AuditLog } from '../../lib/core/audit/audit';
import { createLogger } from '../../lib/core/log/logger';
import { SqliteStore } from '../../lib/store/sqlite';

/**
 * The fast lane (`npm start`: server.ts, bundled by `npm run build`) against the route handlers (`next start`),
 * both started from the same production build (`npm test` runs `next build` first; this file builds nothing),
 * with the same config, users and upstream. Proxied calls go through the core directly, pages through Next.
 * Paths are sent raw with node:http where fetch would normalise them.
 */
const echoKey = randomSecret('echo');
const password = randomSecret('pw');
const adminPassword = randomSecret('pwa');
const sessionSecrets = testSessionSecrets();
const metricsToken = randomSecret('metrics');
const secrets = [echoKey, password, adminPassword, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET, metricsToken];
const MiB = 1024 * 1024;

let upstream: TestUpstream;
let env: Record<string, string>;
let lane: AppServer;
let handlers: AppServer;
let laneCookie: string;
let handlersCookie: string;
let adminCookie: string;

/** Sends the path exactly as given to `server`, with its session cookie and the CSRF header unless told otherwise. */
function raw(server: AppServer, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<RawResponse> {
  return rawRequest(server.port, method, path, { cookie: server === lane ? laneCookie : handlersCookie, 'x-keyward-csrf': '1', ...headers }, body);
}

/**
 * A call's audit record, read back through Next (the admin API), which shares the store with the fast lane; the
 * record is written when the response ends, in a batch (within ~100 ms).
 */
async function auditRecord(requestId: string | null): Promise<Record<string, unknown> | undefined> {
  expect(requestId).toEqual(expect.any(String));
  for (let attempt = 0; attempt < 50; attempt++) {
    const audit = await fetch(`${lane.url}/api/admin/audit?type=call&upstream=echo&limit=50`, { headers: { cookie: adminCookie, 'x-keyward-csrf': '1' } });
    expect(audit.status).toBe(200);
    const { records } = (await audit.json()) as { records: Array<Record<string, unknown>> };
    const record = records.find((entry) => entry.requestId === requestId);
    if (record) return record;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return undefined;
}

/** Writes one raw request on a new connection and reads what comes back until the server closes it. */
async function rawExchange(request: string): Promise<string> {
  const socket = connect(lane.port, '127.0.0.1');
  await once(socket, 'connect');
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.on('error', () => {});
  socket.write(request);
  await once(socket, 'close');
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * As rawExchange, from a client that keeps its own side open after the server's FIN (allowHalfOpen), as some
 * do: `closed` says whether the server then let go of the connection (a write after its answer is reset), or kept
 * it open (Node's http sockets allow half-open ones: a socket only ended stays until the client ends it).
 */
async function halfOpenExchange(request: string): Promise<{ text: string; closed: boolean }> {
  const socket = connect({ port: lane.port, host: '127.0.0.1', allowHalfOpen: true });
  await once(socket, 'connect');
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  const closed = new Promise<boolean>((resolve) => {
    socket.once('error', () => resolve(true));
    socket.once('close', () => resolve(true));
  });
  socket.write(request);
  await once(socket, 'end');
  // Written after the answer: a socket the server destroyed answers with a reset (EPIPE or ECONNRESET here).
  const probe = setInterval(() => socket.write('x'), 50);
  const outcome = await Promise.race([closed, new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 5_000))]);
  clearInterval(probe);
  socket.destroy();
  return { text: Buffer.concat(chunks).toString('utf8'), closed: outcome };
}

/** The header names of a raw answer, lower-cased, in order (repeated ones repeated). */
function headerNames(text: string): string[] {
  return text
    .slice(text.indexOf('\r\n') + 2, text.indexOf('\r\n\r\n'))
    .split('\r\n')
    .map((line) => line.slice(0, line.indexOf(':')).toLowerCase());
}

function errorCode(response: RawResponse): string | undefined {
  try {
    return (JSON.parse(response.body) as { error?: { code?: string } }).error?.code;
  } catch {
    return undefined;
  }
}

function expectNoLeak(text: string): void {
  expect(findLeak(text, secrets) === null, 'a secret leaked').toBe(true);
}

beforeAll(async () => {
  upstream = await startUpstream();
  const configPath = writeConfigFile({
    upstreams: {
      echo: {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
        routes: [
          { method: 'GET', path: '/items/:id', roles: ['user'] },
          { method: 'POST', path: '/items', roles: ['user'] },
          { method: 'POST', path: '/upload', maxRequestBytes: 4 * MiB },
          { method: 'POST', path: '/checked', body: { type: 'object', properties: { name: { type: 'string' } } } },
          { method: 'GET', path: '/search', query: { properties: { q: { type: 'string' }, limit: { type: 'integer' } } } },
          { method: 'GET', path: '/download' },
          { method: 'GET', path: '/events' },
          { method: 'GET', path: '/hang' },
          { method: 'GET', path: '/stall', timeoutMs: 1_000 },
          { method: 'GET', path: '/' },
          { method: 'GET', path: '/files/*' },
        ],
      },
    },
  });
  const usersFile = await writeUsersFile([
    { username: 'alice', password, roles: ['user'] },
    { username: 'root', password: adminPassword, roles: ['admin', 'user'] },
  ]);
  env = { ...sessionSecrets, ECHO_KEY: echoKey, KEYWARD_CONFIG: configPath, KEYWARD_USERS_FILE: usersFile, KEYWARD_METRICS_TOKEN: metricsToken };
  const lanePort = await freePort();
  [lane, handlers] = await Promise.all([
    startFastLane(
      { ...env, KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-')), 'keyward.db') },
      { port: lanePort, args: ['-p', String(lanePort), '-H', '127.0.0.1', '--keepAliveTimeout', '7000'] },
    ),
    startApp({ ...env, KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-handlers-')), 'keyward.db') }),
  ]);
  [laneCookie, handlersCookie, adminCookie] = await Promise.all([
    signIn(lane.url, 'alice', password),
    signIn(handlers.url, 'alice', password),
    signIn(lane.url, 'root', adminPassword),
  ]);
}, 120_000);

afterAll(async () => {
  await Promise.all([lane?.stop(), handlers?.stop()]);
  await upstream?.close();
  if (lane) expectNoLeak(lane.output());
});

describe('the fast lane proxies through the core', () => {
  it('GET: the key is attached upstream, the echoed key is scrubbed, the client sees only allowed headers', async () => {
    upstream.reset();
    const before = upstream.requests.length;
    const response = await fetch(`${lane.url}/api/proxy/echo/items/42?x=1`, {
      headers: { cookie: laneCookie, 'x-keyward-csrf': '1', authorization: 'Bearer client-token', 'accept-encoding': 'gzip' },
    });
    const text = await response.text();
    expect(response.status).toBe(200);
    expect(upstream.requests.length).toBe(before + 1);
    const seen = upstream.requests.at(-1)!;
    expect(seen.url).toBe('/v1/items/42?x=1');
    expect(seen.headers['x-api-key']).toBe(echoKey);
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers.cookie).toBeUndefined();
    expect(seen.headers['accept-encoding']).toBe('identity');
    expect(text).toContain('[REDACTED]');
    expect(response.headers.get('cache-control')).toBe('private, no-store');
    expect(response.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    // next.config.ts's site-wide headers, as Next adds them to route handlers' responses.
    expect(response.headers.get('x-frame-options')).toBe('DENY');
    expect(response.headers.get('referrer-policy')).toBe('no-referrer');
    // A proxied answer's own policy replaces the site's: it sandboxes a document made of it and loads nothing.
    expect(response.headers.get('content-security-policy')).toBe(PROXIED_CONTENT_SECURITY_POLICY);
    expectNoLeak(`${JSON.stringify([...response.headers])}\n${text}`);
  });

  it('an upstream answering HTML: a sandboxed attachment through both doors, never a page of the app', async () => {
    upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html', 'content-disposition': 'inline' });
      res.end('<script>fetch("/api/keys")</script>');
    });
    try {
      for (const [server, cookie] of [[lane, laneCookie], [handlers, handlersCookie]] as const) {
        const response = await fetch(`${server.url}/api/proxy/echo/items/9`, { headers: { cookie, 'x-keyward-csrf': '1' } });
        const where = server === lane ? 'fast lane' : 'route handler';
        expect(response.status, where).toBe(200);
        expect(await response.text(), where).toBe('<script>fetch("/api/keys")</script>');
        // One policy, not the site's beside it (a browser enforces every policy it is sent).
        expect(response.headers.get('content-security-policy'), where).toBe(PROXIED_CONTENT_SECURITY_POLICY);
        expect(response.headers.get('content-disposition'), where).toBe('attachment');
        expect(response.headers.get('x-content-type-options'), where).toBe('nosniff');
      }
    } finally {
      upstream.reset();
    }
  });

  it('the root route (`/`) is the upstream\'s own URL, /api/proxy/<upstream>, through both doors (the typed client\'s URL)', async () => {
    const { buildCallUrl } = await import('../../lib/client/url');
    const path = buildCallUrl('/api/proxy', 'echo', '/', undefined, undefined);
    expect(path).toBe('/api/proxy/echo');
    for (const server of [lane, handlers]) {
      upstream.reset();
      const response = await raw(server, 'GET', path);
      expect(response.status, server === lane ? 'fast lane' : 'route handler').toBe(200);
      expect(upstream.requests.at(-1)!.url).toBe('/v1/');
    }
  });

  it('answers with the same headers as the route handler', async () => {
    upstream.reset();
    const call = (server: AppServer, cookie: string) =>
      fetch(`${server.url}/api/proxy/echo/items/7`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    const [fast, slow] = await Promise.all([call(lane, laneCookie), call(handlers, handlersCookie)]);
    await Promise.all([fast.text(), slow.text()]);
    const names = (response: Response) =>
      [...response.headers.keys()].filter((name) => !['date', 'connection', 'keep-alive', 'transfer-encoding', 'vary'].includes(name)).sort();
    expect(names(fast)).toEqual(names(slow));
    expect(fast.status).toBe(slow.status);
  });

  it('a ";" in a query a contract reads is part of its value through both doors, sent upstream encoded', async () => {
    // Next hands its route handlers the query with ";" already encoded (%3B): the fast lane reads it the same way.
    for (const server of [lane, handlers]) {
      upstream.reset();
      const answer = await raw(server, 'GET', '/api/proxy/echo/search?q=a;limit=5');
      expect([answer.status, errorCode(answer)], server === lane ? 'fast lane' : 'route handler').toEqual([200, undefined]);
      expect(upstream.requests.at(-1)!.url).toBe('/v1/search?q=a%3Blimit%3D5');
      const typed = await raw(server, 'GET', '/api/proxy/echo/search?limit=5;q=a');
      expect([typed.status, errorCode(typed)]).toEqual([400, 'contract_violation']);
      expect(typed.body).toContain('query.limit');
    }
  });

  it('POST: the body is streamed to the upstream (state-changing calls need the public Origin)', async () => {
    upstream.reset();
    const body = JSON.stringify({ name: 'widget', note: 'x'.repeat(1000) });
    const response = await fetch(`${lane.url}/api/proxy/echo/items`, {
      method: 'POST',
      headers: { cookie: laneCookie, 'x-keyward-csrf': '1', origin: lane.url, 'content-type': 'application/json' },
      body,
    });
    const echoed = (await response.json()) as { method: string; bodyBytes: number };
    expect(response.status).toBe(200);
    expect(echoed).toMatchObject({ method: 'POST', bodyBytes: Buffer.byteLength(body) });
    expect(upstream.requests.at(-1)!.bodyPreview.toString('utf8')).toBe(body);
  });

  it('1 MiB up and 1 MiB down, whole', async () => {
    upstream.reset();
    const upload = await fetch(`${lane.url}/api/proxy/echo/upload`, {
      method: 'POST',
      headers: { cookie: laneCookie, 'x-keyward-csrf': '1', origin: lane.url, 'content-type': 'application/octet-stream' },
      body: Buffer.alloc(MiB, 7),
    });
    expect(upload.status).toBe(200);
    expect(((await upload.json()) as { bodyBytes: number }).bodyBytes).toBe(MiB);

    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      for (let i = 0; i < 16; i++) res.write(Buffer.alloc(MiB / 16, 0x61 + i));
      res.end();
    });
    const download = await fetch(`${lane.url}/api/proxy/echo/download`, { headers: { cookie: laneCookie, 'x-keyward-csrf': '1' } });
    const bytes = Buffer.from(await download.arrayBuffer());
    expect(download.status).toBe(200);
    expect(bytes.length).toBe(MiB);
    expect(bytes[MiB - 1]).toBe(0x61 + 15);
    upstream.reset();
  });

  it('SSE: each event reaches the client before the upstream sends the next one', async () => {
    let sendSecond!: () => void;
    const second = new Promise<void>((resolve) => (sendSecond = resolve));
    upstream.handle(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.write(`data: first ${echoKey}\n\n`);
      await second;
      res.end('data: second\n\n');
    });
    const response = await fetch(`${lane.url}/api/proxy/echo/events`, { headers: { cookie: laneCookie, 'x-keyward-csrf': '1' } });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/event-stream');
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    while (!text.includes('\n\n')) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    expect(text).toBe('data: first [REDACTED]\n\n');
    sendSecond();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    expect(text).toBe('data: first [REDACTED]\n\ndata: second\n\n');
    upstream.reset();
  });

  it('the client going away cancels the upstream call, before and after the response head', async () => {
    upstream.handle(() => {}); // never answers
    const before = upstream.requests.length;
    const early = new AbortController();
    const pending = fetch(`${lane.url}/api/proxy/echo/hang`, { headers: { cookie: laneCookie, 'x-keyward-csrf': '1' }, signal: early.signal });
    const waiting = await upstream.nthRequest(before + 1);
    early.abort();
    await expect(pending).rejects.toThrow();
    await waiting.closed;
    expect(waiting.closedEarly).toBe(true);

    upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first chunk\n'); // a whole line: a chunk's trailing word would wait for the next (the leak scrubber)
    });
    const late = new AbortController();
    const response = await fetch(`${lane.url}/api/proxy/echo/hang`, { headers: { cookie: laneCookie, 'x-keyward-csrf': '1' }, signal: late.signal });
    const streaming = upstream.requests.at(-1)!;
    await response.body!.getReader().read();
    late.abort();
    await streaming.closed;
    expect(streaming.closedEarly).toBe(true);
    // Recorded as the route handler records it: aborted, with the bytes the client was sent.
    expect(await auditRecord(response.headers.get('x-request-id'))).toMatchObject({ status: 200, outcome: 'aborted', bytesOut: 'first chunk\n'.length });
    upstream.reset();
  });

  it('a client that hangs up before its answer (mid-upload, with or without a body contract, or waiting for the upstream) is recorded as aborted in both lanes, never as a failure', async () => {
    upstream.handle(() => {}); // never answers
    /** The proxy log lines a server wrote since `from` (its output's length then), parsed. */
    const proxyLines = (server: AppServer, from: number) =>
      server
        .output()
        .slice(from)
        .split('\n')
        .filter((line) => line.includes('"msg":"proxy"'))
        .map((line) => (JSON.parse(line) as { proxy: Record<string, unknown> }).proxy);
    try {
      for (const server of [lane, handlers]) {
        const name = server === lane ? 'fast lane' : 'route handler';
        const cookie = server === lane ? laneCookie : handlersCookie;
        const cases = [
          { path: '/checked', type: 'application/json', hang: 'mid-body' },
          { path: '/items', type: 'application/json', hang: 'mid-body' },
          { path: '/items', type: 'application/json', hang: 'waiting' },
        ] as const;
        for (const { path, type, hang } of cases) {
          const from = server.output().length;
          const before = upstream.requests.length;
          const client = connect(server.port, '127.0.0.1');
          await once(client, 'connect');
          client.on('error', () => {});
          const body = '{"name":"w"}';
          const head = `POST /api/proxy/echo${path} HTTP/1.1\r\nHost: localhost:${server.port}\r\nCookie: ${cookie}\r\nX-Keyward-CSRF: 1\r\nOrigin: ${server.url}\r\nContent-Type: ${type}\r\n`;
          if (hang === 'mid-body') {
            client.write(`${head}Content-Length: 50\r\n\r\n{"nam`);
            // The route without a contract streams its body: the upstream sees the call begin, then end early.
            if (path === '/items') await upstream.nthRequest(before + 1);
            else await new Promise((resolve) => setTimeout(resolve, 300));
          } else {
            client.write(`${head}Content-Length: ${body.length}\r\n\r\n${body}`);
            await upstream.nthRequest(before + 1);
          }
          client.destroy();
          await expect
            .poll(() => proxyLines(server, from).length, { timeout: 5_000, message: `${name} ${path} ${hang}: one record` })
            .toBe(1);
          expect(proxyLines(server, from)[0], `${name} ${path} ${hang}`).toMatchObject({ route: path, status: 400, errorCode: 'bad_request', outcome: 'aborted' });
          expect(server.output().slice(from), `${name} ${path} ${hang}: nothing logged as a failure`).not.toMatch(/"level":50|proxy failed|Error: aborted/);
        }
      }
    } finally {
      upstream.reset();
    }
  }, 60_000);

  it('a client that stops reading is cut after the route\'s timeoutMs: the upstream connection is let go and the call recorded as aborted', async () => {
    // An endless download, sent as fast as Keyward reads it (write() until the socket is full, then 'drain').
    upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      const pump = () => {
        while (!res.destroyed && res.write(chunk));
      };
      res.on('drain', pump);
      pump();
    });
    const before = upstream.requests.length;
    const client = connect(lane.port, '127.0.0.1');
    client.write(`GET /api/proxy/echo/stall HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ${laneCookie}\r\nX-Keyward-CSRF: 1\r\n\r\n`);
    client.pause(); // reads nothing, ever: before the fix, the upstream connection stayed taken for good
    try {
      const streaming = await upstream.nthRequest(before + 1);
      await streaming.closed;
      expect(streaming.closedEarly).toBe(true);
      // Logged with its request id (the client read nothing, not even the head), and recorded as aborted.
      const stalled = /"requestId":"([^"]+)"[^\n]*the client left the response unread for timeoutMs/;
      await expect.poll(() => stalled.test(lane.output()), { timeout: 5_000 }).toBe(true);
      const requestId = stalled.exec(lane.output())![1]!;
      expect(await auditRecord(requestId)).toMatchObject({ status: 200, outcome: 'aborted' });
    } finally {
      client.destroy();
      upstream.reset();
    }
  }, 30_000);

  it('an upstream that breaks mid-body gives the client a truncated response, never a complete-looking one', async () => {
    upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('part of the body');
      setTimeout(() => res.destroy(), 50);
    });
    const response = await fetch(`${lane.url}/api/proxy/echo/download`, { headers: { cookie: laneCookie, 'x-keyward-csrf': '1' } });
    expect(response.status).toBe(200);
    await expect(response.text()).rejects.toThrow();
    expect(await auditRecord(response.headers.get('x-request-id'))).toMatchObject({ outcome: 'error', errorCode: 'upstream_unreachable' });
    upstream.reset();
  });

  it('the scrubber\'s held-back end reaches the client: a key split across chunks is redacted, a key\'s start at the very end is sent', async () => {
    const cut = Math.floor(echoKey.length / 2);
    upstream.handle(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write(`a ${echoKey.slice(0, cut)}`);
      await new Promise((resolve) => setTimeout(resolve, 30));
      res.write(`${echoKey.slice(cut)} b ${echoKey.slice(0, 6)}`);
      await new Promise((resolve) => setTimeout(resolve, 30));
      res.end();
    });
    const response = await fetch(`${lane.url}/api/proxy/echo/download`, { headers: { cookie: laneCookie, 'x-keyward-csrf': '1' } });
    expect(await response.text()).toBe(`a [REDACTED] b ${echoKey.slice(0, 6)}`);
    expect(await auditRecord(response.headers.get('x-request-id'))).toMatchObject({ outcome: 'complete', scrubberHits: 1 });
    upstream.reset();
  });

  it('writes the audit record the route handler writes', async () => {
    upstream.reset();
    const response = await fetch(`${lane.url}/api/proxy/echo/items/9`, { headers: { cookie: laneCookie, 'x-keyward-csrf': '1' } });
    await response.text();
    const record = await auditRecord(response.headers.get('x-request-id'));
    expect(record).toMatchObject({ type: 'call', upstream: 'echo', route: '/items/:id', method: 'GET', status: 200, outcome: 'complete', userId: 'local:alice' });
    expect(record!.keyFingerprint).toEqual(expect.any(String));
    expect(record!.clientIp).toBe('127.0.0.1');
    expectNoLeak(JSON.stringify(record));
  });
});

describe('refusals: the route handler\'s errors, and the ones Next answers before a handler runs', () => {
  const SAME: Array<[string, string, string, Record<string, string>, number, string]> = [
    ['no session', 'GET', '/api/proxy/echo/items/1', { cookie: '' }, 401, 'unauthenticated'],
    ['no CSRF header', 'GET', '/api/proxy/echo/items/1', { 'x-keyward-csrf': '' }, 403, 'csrf_failed'],
    ['POST from another origin', 'POST', '/api/proxy/echo/items', { origin: 'https://evil.example', 'content-type': 'application/json' }, 403, 'csrf_failed'],
    ['unknown upstream', 'GET', '/api/proxy/nope/items/1', {}, 404, 'upstream_not_found'],
    ['__proto__ upstream', 'GET', '/api/proxy/__proto__/x', {}, 404, 'upstream_not_found'],
    ['undeclared route', 'GET', '/api/proxy/echo/other', {}, 404, 'route_not_found'],
    ['undeclared method', 'PUT', '/api/proxy/echo/items/1', { origin: 'http://x.test' }, 405, 'method_not_allowed'],
    ['method override', 'GET', '/api/proxy/echo/items/1', { 'x-http-method-override': 'DELETE' }, 400, 'method_override_refused'],
    ['token in the query', 'GET', '/api/proxy/echo/items/1?access_token=abc', {}, 400, 'bad_request'],
    ['encoded slash', 'GET', '/api/proxy/echo/files/..%2f..%2fadmin', {}, 400, 'bad_path'],
    ['encoded NUL', 'GET', '/api/proxy/echo/files/a%00b', {}, 400, 'bad_path'],
  ];
  for (const [name, method, path, headers, status, code] of SAME) {
    it(`${name}: ${status} ${code}, as the route handler answers, and no upstream call`, async () => {
      const before = upstream.requests.length;
      const [fast, slow] = await Promise.all([raw(lane, method, path, headers, method === 'POST' ? '{}' : undefined), raw(handlers, method, path, headers, method === 'POST' ? '{}' : undefined)]);
      expect([fast.status, errorCode(fast)]).toEqual([status, code]);
      expect([slow.status, errorCode(slow)]).toEqual([status, code]);
      expect(fast.headers['content-type']).toBe(slow.headers['content-type']);
      expect(fast.headers.allow).toBe(slow.headers.allow);
      expect(upstream.requests.length).toBe(before);
      expectNoLeak(`${JSON.stringify(fast.headers)}\n${fast.body}`);
    });
  }

  const BAD_PATHS = [
    '/api/proxy/echo/files/%2e',
    '/api/proxy/echo/files/%2e%2e',
    '/api/proxy/echo/files/%2E%2E/admin',
    '/api/proxy/echo/files/a/.',
    '/api/proxy/echo/files/a/..',
    '/api/proxy/echo/files/./a',
    '/api/proxy/echo/files/../../admin',
    '/api/proxy/echo/files/a/',
    '/api/proxy/echo/files/%',
    '/api/proxy/echo/files/a%',
    '/api/proxy/echo/files/%zz',
    '/api/proxy/echo/files/%c0%ae%c0%ae',
    '/api/proxy/echo/files/%ed%a0%80',
    '/api/proxy/echo/files/%e0%80%ae',
    // Not /api/proxy as written, but once normalised as Next's process would read it: never run by Next.
    '/x/../api/proxy/echo/items/1',
    '/api/./proxy/echo/items/1',
    '/api/%2e/proxy/echo/items/1',
    '/api/%2E%2E/api/proxy/echo/items/1',
    '/api\\proxy/echo/items/1',
    '/api/proxy\\echo/items/1',
  ];
  for (const path of BAD_PATHS) {
    it(`${path}: 400 bad_path from Keyward, no upstream call`, async () => {
      const before = upstream.requests.length;
      const response = await raw(lane, 'GET', path);
      expect([response.status, errorCode(response)]).toEqual([400, 'bad_path']);
      expect(response.headers['content-type']).toBe('application/json; charset=utf-8');
      expect(upstream.requests.length).toBe(before);
    });
  }

  it('TRACE: 405 method_not_allowed, the request (with its cookie) not echoed', async () => {
    const before = upstream.requests.length;
    const response = await raw(lane, 'TRACE', '/api/proxy/echo/items/1');
    expect([response.status, errorCode(response)]).toEqual([405, 'method_not_allowed']);
    // With Allow, as every 405 (RFC 9110 §15.5.6): the methods the path's routes declare; none: every one a route can.
    expect(response.headers.allow).toBe('GET');
    expect((await raw(lane, 'TRACE', '/api/proxy/echo/nowhere')).headers.allow).toBe('GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS');
    expect(response.body).not.toContain(laneCookie.slice(laneCookie.indexOf('=') + 1, laneCookie.indexOf('=') + 40));
    expect(upstream.requests.length).toBe(before);
  });

  it('a request target that is no valid URL (an absolute form with port 99999, `*`) fails that request only, never the process', async () => {
    const upgrade = 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n';
    const send = (target: string, extra = '') => rawExchange(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1:${lane.port}\r\n${extra}Connection: close\r\n\r\n`);
    // An absolute form is served as its path, whatever its authority (RFC 9112 §3.2.2: the server uses the target).
    expect((await send('http://a:99999/signin')).startsWith('HTTP/1.1 200 ')).toBe(true);
    // Handed to Next as an upgrade of /signin, which Next does not take: closed, never switched.
    expect(await send('http://a:99999/signin', upgrade)).not.toMatch(/^HTTP\/1\.1 101 /);
    // Neither origin nor absolute form: 400, as a request and as an upgrade.
    expect((await send('*')).startsWith('HTTP/1.1 400 ')).toBe(true);
    expect((await send('*', upgrade)).startsWith('HTTP/1.1 400 ')).toBe(true);
    // The same server still answers: Next's pages and the proxy.
    expect((await raw(lane, 'GET', '/signin', { cookie: '' })).status).toBe(200);
    expect((await raw(lane, 'GET', '/api/proxy/echo/items/1')).status).toBe(200);
    // A valid absolute-form target is served as its path (RFC 9112 §3.2.2).
    expect((await raw(lane, 'GET', `http://127.0.0.1:${lane.port}/signin`, { cookie: '' })).status).toBe(200);
  });

  it("next start prints an absolute-form target it cannot parse whole; Keyward's key in it is scrubbed from that line", async () => {
    const from = handlers.output().length;
    const socket = connect(handlers.port, '127.0.0.1');
    await once(socket, 'connect');
    socket.on('error', () => {});
    socket.on('data', () => {});
    socket.write(`GET http://a:99999/api/proxy/echo/items/1?k=${echoKey} HTTP/1.1\r\nHost: localhost:${handlers.port}\r\nConnection: close\r\n\r\n`);
    await once(socket, 'close');
    // Next's own line (its console), with the target, key redacted.
    await expect.poll(() => handlers.output().slice(from).includes('http://a:99999/api/proxy/echo/items/1?k='), { timeout: 5_000 }).toBe(true);
    const printed = handlers.output().slice(from);
    expect(printed).toContain('?k=[REDACTED]');
    expectNoLeak(printed);
  });

  it('a TRACE WebSocket upgrade to a proxy route: 405 method_not_allowed, as the HTTP door answers', async () => {
    const text = await rawExchange(
      `TRACE /api/proxy/echo/items/1 HTTP/1.1\r\nHost: 127.0.0.1:${lane.port}\r\nCookie: ${laneCookie}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
    );
    expect(text.startsWith('HTTP/1.1 405 ')).toBe(true);
    expect(text.toLowerCase()).toContain('\r\nallow: get\r\n');
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({ error: { code: 'method_not_allowed' } });
    // Each header once, and the connection let go once answered, as the HTTP door's refusals are.
    expect(headerNames(text)).toEqual([...new Set(headerNames(text))]);
    const halfOpen = await halfOpenExchange(
      `GET /api/proxy/echo/items/1 HTTP/1.1\r\nHost: 127.0.0.1:${lane.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
    );
    expect(halfOpen.text).toMatch(/^HTTP\/1\.1 4\d\d /);
    expect(halfOpen.closed).toBe(true);
  });

  it('a WebSocket upgrade of another protocol version: 400 bad_request naming the version this server speaks (RFC 6455 §4.4)', async () => {
    const text = await rawExchange(
      `GET /api/proxy/echo/items/1 HTTP/1.1\r\nHost: 127.0.0.1:${lane.port}\r\nCookie: ${laneCookie}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
    );
    expect(text.startsWith('HTTP/1.1 400 ')).toBe(true);
    expect(text.toLowerCase()).toContain('\r\nsec-websocket-version: 13\r\n');
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({ error: { code: 'bad_request' } });
  });

  it("requests Node's HTTP parser refuses: Keyward's JSON error (400, 431), not a bare status line; nothing forwarded", async () => {
    const before = upstream.requests.length;
    const host = `Host: 127.0.0.1:${lane.port}\r\nCookie: ${laneCookie}\r\nX-Keyward-CSRF: 1`;
    const cases: Array<[string, string, number, string]> = [
      ['Content-Length and Transfer-Encoding', `POST /api/proxy/echo/items HTTP/1.1\r\n${host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`, 400, 'bad_request'],
      ['a negative Content-Length', `POST /api/proxy/echo/items HTTP/1.1\r\n${host}\r\nContent-Length: -1\r\n\r\n`, 400, 'bad_request'],
      ['TRACK', `TRACK /api/proxy/echo/items/1 HTTP/1.1\r\n${host}\r\n\r\n`, 400, 'bad_request'],
      ['headers past 16 KiB', `GET /api/proxy/echo/items/1 HTTP/1.1\r\n${host}\r\nX-Pad: ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'headers_too_large'],
    ];
    for (const [name, request, status, code] of cases) {
      const text = await rawExchange(request);
      expect(text.slice(0, text.indexOf('\r\n')), name).toMatch(new RegExp(`^HTTP/1\\.1 ${status} \\S`));
      const head = text.slice(0, text.indexOf('\r\n\r\n')).toLowerCase();
      expect(head, name).toContain('\r\ncache-control: private, no-store');
      expect(head, name).toMatch(/\r\nx-request-id: [0-9a-f-]{36}/);
      expect(head, name).toContain('\r\ncontent-type: application/json');
      expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)), name).toMatchObject({ error: { code } });
      const names = headerNames(text);
      expect(names, name).toEqual([...new Set(names)]);
      expectNoLeak(text);
    }
    expect(upstream.requests.length).toBe(before);
  });

  it("a path of Keyward's own endpoints with malformed percent-encoding: 400 bad_path JSON (Next would answer a plain 500)", async () => {
    for (const [method, path] of [
      ['GET', '/api/keys/%ZZ'],
      ['POST', '/api/admin/users/%E0%A4%A/revoke-sessions'],
      ['GET', '/api/connections/%'],
      // The absolute form (RFC 9112 §3.2.2), which Next is handed as its path.
      ['GET', 'http://app.keyward.test/api/keys/%ZZ'],
    ] as const) {
      const response = await raw(lane, method, path, { origin: lane.url });
      expect([response.status, errorCode(response)], path).toEqual([400, 'bad_path']);
      expect(response.headers['x-request-id'], path).toMatch(/^[0-9a-f-]{36}$/);
    }
    // A well-formed one still reaches Next's handler (401: no session there).
    expect(errorCode(await raw(lane, 'GET', '/api/keys/echo', { cookie: '' }))).toBe('unauthenticated');
  });

  it('CONNECT: 405 method_not_allowed, the connection closed', async () => {
    const before = upstream.requests.length;
    const socket = connect(lane.port, '127.0.0.1');
    await once(socket, 'connect');
    socket.write(`CONNECT /api/proxy/echo/items/1 HTTP/1.1\r\nHost: 127.0.0.1:${lane.port}\r\nCookie: ${laneCookie}\r\n\r\n`);
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    await once(socket, 'close');
    const text = Buffer.concat(chunks).toString('utf8');
    expect(text.startsWith('HTTP/1.1 405 ')).toBe(true);
    expect(text.toLowerCase()).toContain('\r\nallow: get\r\n');
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({ error: { code: 'method_not_allowed' } });
    expect(headerNames(text)).toEqual([...new Set(headerNames(text))]);
    expect(upstream.requests.length).toBe(before);
    // Let go once answered (endSocketWith, which the parser-error answers share), as Node's own answers are.
    const halfOpen = await halfOpenExchange(`CONNECT /api/proxy/echo/items/1 HTTP/1.1\r\nHost: 127.0.0.1:${lane.port}\r\n\r\n`);
    expect(halfOpen.text).toMatch(/^HTTP\/1\.1 405 /);
    expect(halfOpen.closed).toBe(true);
  });
});

describe('everything else is served by Next', () => {
  it("a method one of Keyward's own endpoints does not take is Keyward's JSON 405 with Allow, not Next's empty one", async () => {
    const cases: Array<[string, string, string]> = [
      ['GET', '/api/session/logout', 'POST'],
      ['POST', '/api/session', 'GET, HEAD'],
      ['PATCH', '/api/keys/echo', 'GET, HEAD, PUT, DELETE'],
      ['GET', '/api/admin/keys/echo/rotate', 'POST'],
      ['POST', '/api/admin/audit', 'GET, HEAD'],
      ['PUT', '/api/auth/session', 'GET, HEAD, POST'],
      ['GET', '/api/session/revoke-all', 'POST'],
      ['DELETE', '/api/admin/alerts', 'GET, HEAD'],
    ];
    for (const server of [lane, handlers]) {
      for (const [method, path, allow] of cases) {
        const what = `${server === lane ? 'fast lane' : 'route handler'}: ${method} ${path}`;
        const response = await raw(server, method, path, { origin: server.url, host: `localhost:${server.port}` });
        expect([response.status, errorCode(response)], what).toEqual([405, 'method_not_allowed']);
        expect(response.headers.allow, what).toBe(allow);
        expect((JSON.parse(response.body) as { error: { message: string } }).error.message, what).toBe('This endpoint does not take this method.');
        expect(response.headers['x-request-id'], what).toMatch(/^[0-9a-f-]{36}$/);
        expect(response.headers['cache-control'], what).toBe('private, no-store');
      }
      // HEAD on an endpoint that takes only POST: the same 405, without a body.
      const head = await raw(server, 'HEAD', '/api/session/logout');
      expect([head.status, head.headers.allow, head.body]).toEqual([405, 'POST', '']);
    }
  });

  it('pages, Auth.js and the session API', async () => {
    const page = await fetch(`${lane.url}/signin`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toContain('text/html');
    // A page's policy (proxy.ts): a script nonce of its own, besides what every answer's policy says.
    expect(page.headers.get('content-security-policy')).toMatch(
      /^script-src 'nonce-[A-Za-z0-9+/]{22}==' 'strict-dynamic'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'$/,
    );
    await page.text();
    const csrf = await fetch(`${lane.url}/api/auth/csrf`);
    expect(((await csrf.json()) as { csrfToken: string }).csrfToken).toEqual(expect.any(String));
    const session = await fetch(`${lane.url}/api/session`, { headers: { cookie: laneCookie } });
    expect(session.status).toBe(200);
    expect(await session.json()).toMatchObject({ user: expect.anything(), roles: ['user'] });
    expect((await fetch(`${lane.url}/api/session`)).status).toBe(401);
  });

  it("HEAD on Keyward's read-only API routes is their GET without the body (Next runs a route's GET for HEAD)", async () => {
    for (const [path, cookie] of [
      ['/api/session', laneCookie],
      ['/api/connections', laneCookie],
      ['/api/admin/audit', adminCookie],
      ['/api/admin/keys', adminCookie],
      ['/api/admin/alerts', adminCookie],
      ['/api/admin/usage', adminCookie],
    ] as const) {
      const head = await fetch(`${lane.url}${path}`, { method: 'HEAD', headers: { cookie, 'x-keyward-csrf': '1' } });
      expect([path, head.status]).toEqual([path, 200]);
      expect(await head.text()).toBe('');
      // Still signed-in only.
      expect([path, (await fetch(`${lane.url}${path}`, { method: 'HEAD' })).status]).toEqual([path, 401]);
    }
  });

  it('a sign-out in Next is seen by the fast lane on the next call (they share the store)', async () => {
    const cookie = await signIn(lane.url, 'alice', password);
    const ok = await fetch(`${lane.url}/api/proxy/echo/items/1`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    expect(ok.status).toBe(200);
    await ok.text();
    const logout = await fetch(`${lane.url}/api/session/logout`, { method: 'POST', headers: { cookie, 'x-keyward-csrf': '1', origin: lane.url } });
    expect(logout.status).toBeLessThan(300);
    await logout.text();
    const after = await fetch(`${lane.url}/api/proxy/echo/items/1`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    expect(after.status).toBe(401);
    await after.text();
  });
});

describe('Next runs in a process of its own', () => {
  it('a WebSocket handshake Next does not serve is let go within seconds by both processes: they cannot pile up sockets', async () => {
    const nextPid = childOf(lane.pid);
    const sockets = (pid: number) => readdirSync(`/proc/${pid}/fd`).filter((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:');
      } catch {
        return false;
      }
    }).length;
    const [laneBefore, nextBefore] = [sockets(lane.pid), sockets(nextPid)];
    const clients = await Promise.all(
      Array.from({ length: 6 }, async () => {
        const socket = connect(lane.port, '127.0.0.1');
        await once(socket, 'connect');
        socket.write('GET /no-such-page HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
        socket.on('error', () => {});
        return socket;
      }),
    );
    await expect.poll(() => sockets(nextPid)).toBeGreaterThanOrEqual(nextBefore + 6);
    // Half of the clients hang up at once; the others wait. None is answered.
    for (const socket of clients.slice(0, 3)) socket.end();
    await Promise.all(clients.map((socket) => once(socket, 'close')));
    await expect.poll(() => sockets(nextPid), { timeout: 15_000, interval: 500 }).toBeLessThanOrEqual(nextBefore);
    await expect.poll(() => sockets(lane.pid), { timeout: 15_000, interval: 500 }).toBeLessThanOrEqual(laneBefore);
  }, 40_000);

  it('a WebSocket handshake on a page, which Next closes unanswered, is not logged as Next being unreachable', async () => {
    const seen = lane.output().length;
    for (let i = 0; i < 3; i++) {
      const answer = await rawExchange(
        `GET /signin HTTP/1.1\r\nHost: 127.0.0.1:${lane.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
      );
      expect(answer).not.toMatch(/^HTTP\/1\.1 101 /);
    }
    expect(lane.output().slice(seen)).not.toContain('Next.js process unreachable');
    // Still served: the page, and the proxy.
    expect((await raw(lane, 'GET', '/signin', { cookie: '' })).status).toBe(200);
  });

  it('/api/metrics is answered by the fast lane, which counts the calls it served', async () => {
    const scrape = async () => {
      const response = await fetch(`${lane.url}/api/metrics`, { headers: { authorization: `Bearer ${metricsToken}` } });
      expect(response.status).toBe(200);
      return response.text();
    };
    const served = (text: string) => {
      const line = text.split('\n').find((entry) => entry.startsWith('keyward_proxy_calls_total{') && entry.includes('route="/items/:id"') && entry.includes('outcome="complete"'));
      return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
    };
    const before = await scrape();
    for (let i = 0; i < 3; i++) {
      const response = await raw(lane, 'GET', `/api/proxy/echo/items/${i}`);
      expect(response.status).toBe(200);
    }
    const after = await scrape();
    expect(served(after) - served(before)).toBe(3);
    // Next's process answered for its own counts each time (merged in; the fast lane logs when it does not).
    expect(lane.output()).not.toContain('the Next.js process did not answer');
    expectNoLeak(after);
    const refused = await fetch(`${lane.url}/api/metrics`);
    expect(refused.status).toBe(401);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('unauthenticated');
    // HEAD as GET without the body, through both doors (Next runs a route's GET for HEAD); other methods 405.
    for (const server of [lane, handlers]) {
      const head = await fetch(`${server.url}/api/metrics`, { method: 'HEAD', headers: { authorization: `Bearer ${metricsToken}` } });
      expect([server === lane ? 'lane' : 'handlers', head.status]).toEqual([server === lane ? 'lane' : 'handlers', 200]);
      expect(await head.text()).toBe('');
      const post = await fetch(`${server.url}/api/metrics`, { method: 'POST', headers: { authorization: `Bearer ${metricsToken}` } });
      expect(post.status).toBe(405);
    }
  });

  it("/api/metrics merges in what Next's process counted: a decoy put as one's own key (PUT /api/keys, served by Next) revokes there", async () => {
    const decoy = { id: decoyId(), ...mintDecoy('openai'), createdAt: new Date().toISOString() };
    const dir = mkdtempSync(join(tmpdir(), 'keyward-fastlane-decoy-'));
    writeFileSync(join(dir, 'decoys.json'), JSON.stringify({ decoys: [decoy] }));
    const config = writeConfigFile({
      upstreams: {
        byok: { baseUrl: `${upstream.origin}/v1/`, auth: { type: 'bearer', secret: { user: 'key' } }, routes: [{ method: 'GET', path: '/models', roles: ['user'] }] },
      },
    });
    const app = await startFastLane({
      ...env,
      KEYWARD_CONFIG: config,
      KEYWARD_DECOYS_FILE: join(dir, 'decoys.json'),
      KEYWARD_VAULT_SECRET: randomSecret('vault'),
      KEYWARD_STORE_PATH: join(dir, 'keyward.db'),
    });
    try {
      const revokes = async () => {
        const response = await fetch(`${app.url}/api/metrics`, { headers: { authorization: `Bearer ${metricsToken}` } });
        expect(response.status).toBe(200);
        const text = await response.text();
        expect(text).not.toContain(decoy.value);
        return Number(/^keyward_detector_actions_total\{rule="decoy",action="revoke"\} (\d+)$/m.exec(text)?.[1] ?? 0);
      };
      expect(await revokes()).toBe(0);
      const cookie = await signIn(app.url, 'alice', password);
      const put = await fetch(`${app.url}/api/keys/byok`, {
        method: 'PUT',
        headers: { cookie, 'x-keyward-csrf': '1', origin: app.url, 'content-type': 'application/json' },
        body: JSON.stringify({ key: decoy.value }),
      });
      expect(put.status).toBe(401);
      // Counted in Next's process when the alert is written (a store write after the answer).
      let count = 0;
      for (let attempt = 0; attempt < 50 && count === 0; attempt++) {
        count = await revokes();
        if (count === 0) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(count).toBe(1);
      expect(app.output()).not.toContain('the Next.js process did not answer');
    } finally {
      await app.stop();
    }
  });

  it('Next is a child process: it stops with the fast lane, the fast lane stops (saying why) when Next dies, Next exits when the fast lane is killed', async () => {
    const port = await freePort();
    const extra = { ...env, KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-next-')), 'keyward.db') };
    const first = await startFastLane(extra, { port });
    const nextPid = childOf(first.pid);
    const argv = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    expect(argv(nextPid).some((word) => word.endsWith('keyward-next.mjs'))).toBe(true);
    // npm start caps V8's young generation (package.json, README "Memory"), and Next's process runs with the cap too.
    const flags = npmStartNodeFlags(process.cwd());
    expect(flags).toContainEqual(expect.stringMatching(/^--max-semi-space-size=\d+$/));
    for (const flag of flags) {
      expect(argv(first.pid)).toContain(flag);
      expect(argv(nextPid)).toContain(flag);
    }
    await first.stop();
    await waitUntilGone(nextPid);

    const second = await startFastLane(extra, { port });
    const secondNext = childOf(second.pid);
    const exited = new Promise<void>((resolve) => {
      const check = setInterval(() => {
        if (!alive(second.pid)) {
          clearInterval(check);
          resolve();
        }
      }, 50);
    });
    process.kill(secondNext, 'SIGKILL');
    await exited;
    expect(second.output()).toContain('Keyward is stopping: the Next.js process exited (signal).');
    await second.stop();

    // The fast lane killed outright: Next sees its IPC channel close and exits on its own.
    const third = await startFastLane(extra, { port });
    const thirdNext = childOf(third.pid);
    process.kill(third.pid, 'SIGKILL');
    await waitUntilGone(thirdNext);
    await third.stop();
  });

  // `npm run start:next` too (route handlers only): without `exec` the shell npm runs it in died and left `next start`
  // serving, so a restart found the port taken.
  it.each([{ name: 'npm start', script: ['start'] }, { name: 'npm run start:next', script: ['run', 'start:next'] }])('`$name` itself stopped with SIGTERM (docker stop, a process manager): the stop reaches the server, and every process under npm stops', async ({ script }) => {
    const port = await freePort();
    const npm = spawn('npm', [...script, '--', '-p', String(port), '-H', '127.0.0.1'], {
      env: {
        ...commandEnv(),
        NODE_ENV: 'production',
        ...(process.env.KEYWARD_DIST_DIR ? { KEYWARD_DIST_DIR: process.env.KEYWARD_DIST_DIR } : {}),
        AUTH_TRUST_HOST: 'true',
        ...env,
        KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-npm-')), 'keyward.db'),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    for (const stream of [npm.stdout!, npm.stderr!]) stream.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    const exited = once(npm, 'exit');
    let tree: number[] = [];
    try {
      for (let attempt = 0; attempt < 300 && npm.exitCode === null; attempt++) {
        const answer = await fetch(`http://127.0.0.1:${port}/api/session`).catch(() => null);
        if (answer?.status === 401) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      // Every process under npm's: the fast lane (its shell replaced by `exec`) and Next; or `next start`'s processes.
      tree = descendants(npm.pid!);
      expect(tree.length, output).toBeGreaterThanOrEqual(script[0] === 'start' ? 2 : 1);
      npm.kill('SIGTERM');
      await exited;
      for (const pid of tree) await waitUntilGone(pid);
    } finally {
      for (const pid of tree) if (alive(pid)) process.kill(pid, 'SIGKILL');
      if (npm.exitCode === null && npm.signalCode === null) npm.kill('SIGKILL');
    }
  }, 90_000);

  it('a stop lets streams in progress end (for up to 3 s), cuts the rest, and every one of them is on record', async () => {
    const storePath = join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-drain-')), 'keyward.db');
    const stopping = await startFastLane({ ...env, KEYWARD_STORE_PATH: storePath });
    // /events ends a moment after the stop began; /hang never ends on its own; /wait never answers.
    const { handler, stopped: sigterm } = streamsAcrossStop();
    upstream.handle(handler);
    try {
      const cookie = await signIn(stopping.url, 'alice', password);
      const open = (path: string) => openStreamAcrossStop(`${stopping.url}/api/proxy/echo/${path}`, { cookie, 'x-keyward-csrf': '1' });
      const ending = await open('events');
      const hanging = await open('hang');
      const stop = stopping.stop();
      sigterm();
      await stop;
      expect(await ending.rest).toEqual({ text: 'data: last\n\n', cut: false });
      expect((await hanging.rest).cut).toBe(true);
      // The store the process left behind holds both calls' records.
      const store = new SqliteStore(storePath);
      try {
        const logger = createLogger({ level: 'silent' });
        const { records } = await new AuditLog(store, 86_400_000, logger).query({ type: 'call' }, { limit: 50 });
        const outcome = (id: string | null) => records.find((record) => record.type === 'call' && record.requestId === id);
        expect(outcome(ending.requestId)).toMatchObject({ route: '/events', status: 200, outcome: 'complete' });
        expect(outcome(hanging.requestId)).toMatchObject({ route: '/hang', status: 200, outcome: 'aborted' });
      } finally {
        await store.close();
      }
    } finally {
      upstream.reset();
      await stopping.stop();
    }
  });

  it('a stop lets a request Next is serving end too (a sign-in whose body is still arriving), as `next start` does', async () => {
    const stopping = await startFastLane({ ...env, KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-drain-next-')), 'keyward.db') });
    try {
      const socket = connect(stopping.port, '127.0.0.1');
      await once(socket, 'connect');
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
      socket.on('error', () => {});
      const closed = once(socket, 'close');
      const body = `username=alice&password=${'x'.repeat(64)}`;
      socket.write(
        `POST /api/auth/callback/credentials HTTP/1.1\r\nHost: ${new URL(stopping.url).host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 10)}`,
      );
      // Next has the request (its head and the start of its body) when the stop comes; the rest follows it.
      await new Promise((resolve) => setTimeout(resolve, 500));
      const stop = stopping.stop();
      await new Promise((resolve) => setTimeout(resolve, 300));
      socket.write(body.slice(10));
      await closed;
      await stop;
      expect(text).toMatch(/^HTTP\/1\.1 [2-5]\d\d /);
    } finally {
      await stopping.stop();
    }
  });

  it("exports spans over OTLP/HTTP from both processes, the last ones too: stopping sends the batch that is still waiting", async () => {
    const collector = await startOtlpCollector();
    try {
      const traced = await startFastLane({
        ...env,
        KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-otel-')), 'keyward.db'),
        OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint,
      });
      const cookie = await signIn(traced.url, 'alice', password);
      const response = await rawRequest(traced.port, 'GET', '/api/proxy/echo/items/7', { cookie, 'x-keyward-csrf': '1' });
      expect(response.status).toBe(200);
      // A page request with a query, as an OAuth callback's `?code=…&state=…`: Next's span names its target.
      const callbackCode = randomSecret('code');
      expect((await fetch(`${traced.url}/api/session?code=${callbackCode}&state=s`, { headers: { cookie } })).status).toBe(200);
      // At once: the batch processor would wait 5 s before sending these spans.
      await traced.stop();
      const spans = collector.spans();
      // The fast lane's: the proxied call (named by upstream and route template).
      const proxied = spans.filter((span) => span.name.startsWith('keyward.proxy'));
      expect(proxied).toHaveLength(1);
      const attribute = (key: string) => proxied[0]!.attributes.find((entry) => entry.key === key)?.value.stringValue;
      expect(attribute('keyward.upstream')).toBe('echo');
      expect(attribute('keyward.route')).toBe('/items/:id');
      // Next's process: its own spans for the sign-in it served.
      expect(spans.map((span) => span.name)).toContain('POST /api/auth/[...nextauth]');
      expectNoLeak(collector.bodies.join('\n'));
      // Exported without its query (server.ts and instrumentation.ts register the same processor).
      expect(collector.bodies.join('\n')).not.toContain(callbackCode);
      const targets = spans.flatMap((span) => span.attributes.filter((entry) => entry.key === 'http.target').map((entry) => entry.value.stringValue));
      expect(targets).toContain('/api/session');
    } finally {
      collector.close();
    }
  });
});

/** The one child process of `pid` (Linux /proc): the fast lane's Next.js process. */
function childOf(pid: number): number {
  const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  expect(children).toHaveLength(1);
  return children[0]!;
}

async function waitUntilGone(pid: number): Promise<void> {
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((resolve) => setTimeout(resolve, 50));
  expect(alive(pid)).toBe(false);
}

/** Runs `npm start`'s entry with `args` and env until it exits (start-up failures). */
/** Waits (up to 15 s, else fails) until no process has `value` in its environment. Linux: reads /proc. */
async function waitUntilNoProcessUses(value: string): Promise<void> {
  const users = () =>
    readdirSync('/proc')
      .filter((name) => /^\d+$/.test(name))
      .filter((pid) => {
        try {
          return alive(Number(pid)) && readFileSync(`/proc/${pid}/environ`, 'utf8').includes(value);
        } catch {
          return false;
        }
      });
  for (let attempt = 0; attempt < 150 && users().length > 0; attempt++) await new Promise((resolve) => setTimeout(resolve, 100));
  expect(users()).toEqual([]);
}

async function startAndExit(args: string[], extraEnv: Record<string, string>): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, [...npmStartNodeFlags(process.cwd()), join(process.cwd(), 'scripts', 'start.mjs'), ...args], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      NODE_ENV: 'production',
      NEXT_TELEMETRY_DISABLED: '1',
      ...(process.env.KEYWARD_DIST_DIR ? { KEYWARD_DIST_DIR: process.env.KEYWARD_DIST_DIR } : {}),
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { code, output };
}

describe('npm start accepts what next start accepts', () => {
  it('--keepAliveTimeout sets the keep-alive idle time (on proxied calls and pages alike)', async () => {
    for (const path of ['/api/proxy/echo/items/1', '/api/session']) {
      const response = await raw(lane, 'GET', path);
      expect(response.headers['keep-alive'], path).toBe('timeout=7');
    }
  });

  it('PORT and HOSTNAME', async () => {
    const port = await freePort();
    const server = await startFastLane(
      { ...env, PORT: String(port), HOSTNAME: '127.0.0.3', KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-')), 'k.db') },
      { port, host: '127.0.0.3', args: [] },
    );
    try {
      expect((await fetch(`http://127.0.0.3:${port}/api/proxy/echo/items/1`)).status).toBe(401);
      await expect(fetch(`http://127.0.0.1:${port}/api/session`)).rejects.toThrow();
    } finally {
      await server.stop();
    }
  }, 60_000);

  it('-p and -H win over PORT and HOSTNAME', async () => {
    const port = await freePort();
    const server = await startFastLane(
      { ...env, PORT: String(await freePort()), HOSTNAME: '127.0.0.4', KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-')), 'k.db') },
      { port, host: '127.0.0.5', args: ['--port', String(port), '-H', '127.0.0.5'] },
    );
    try {
      expect((await fetch(`http://127.0.0.5:${port}/api/session`)).status).toBe(401);
      await expect(fetch(`http://127.0.0.4:${port}/api/session`)).rejects.toThrow();
    } finally {
      await server.stop();
    }
  }, 60_000);

  it('a bad configuration exits 1 naming the field, before listening', async () => {
    const port = await freePort();
    const { code, output } = await startAndExit(['-p', String(port), '-H', '127.0.0.1'], { ...env, KEYWARD_USERS_FILE: '', AUTH_SECRET: 'short' });
    expect(code).toBe(1);
    expect(output).toContain('Keyward cannot start.');
    expect(output).toContain('AUTH_SECRET');
    expectNoLeak(output);
  });

  it('a store file or a temporary directory it cannot write says which, and why, in a line (a read-only filesystem)', async () => {
    // A regular file where a folder must be made: what a read-only root filesystem does to mkdir, as root too.
    const file = join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-notdir-')), 'file');
    writeFileSync(file, '');
    const store = await startAndExit(['-p', String(await freePort())], { ...env, AUTH_TRUST_HOST: 'true', KEYWARD_STORE_PATH: join(file, 'data', 'keyward.db') });
    expect(store.code).toBe(1);
    expect(store.output).toContain('Keyward cannot start: the SQLite store at KEYWARD_STORE_PATH cannot be opened (ENOTDIR mkdir)');
    const storePath = join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-tmp-')), 'keyward.db');
    const temporary = await startAndExit(['-p', String(await freePort())], { ...env, AUTH_TRUST_HOST: 'true', KEYWARD_STORE_PATH: storePath, TMPDIR: file });
    expect(temporary.code).toBe(1);
    expect(temporary.output).toContain(`Keyward cannot start: the Next.js process's socket needs a writable temporary directory (TMPDIR, now ${file}): ENOTDIR mkdtemp.`);
    expect(temporary.output).not.toMatch(/\n\s+at /); // no stack
  });

  it('a port already in use says so in a line and exits 1, leaving no Next process behind', async () => {
    const taken = createServer();
    taken.listen(0, '127.0.0.1');
    await once(taken, 'listening');
    const { port } = taken.address() as AddressInfo;
    try {
      const storePath = join(mkdtempSync(join(tmpdir(), 'keyward-fastlane-inuse-')), 'keyward.db');
      const { code, output } = await startAndExit(['-p', String(port), '-H', '127.0.0.1'], { ...env, AUTH_TRUST_HOST: 'true', KEYWARD_STORE_PATH: storePath });
      expect(code).toBe(1);
      expect(output).toContain(`Keyward cannot start: 127.0.0.1:${port} is already in use (EADDRINUSE)`);
      expect(output).not.toMatch(/\n\s+at /); // no stack
      expectNoLeak(output);
      // Its Next.js process (started before the listen) went with it: none is left holding this store.
      await waitUntilNoProcessUses(storePath);
    } finally {
      taken.close();
    }
  });

  it('a memory store is refused (the fast lane and Next hold separate runtimes)', async () => {
    const { code, output } = await startAndExit(['-p', String(await freePort())], { ...env, AUTH_TRUST_HOST: 'true', KEYWARD_STORE: 'memory' });
    expect(code).toBe(1);
    expect(output).toContain('KEYWARD_STORE');
  });

  it('an unknown option or a bad port exits 1 naming it; --help lists the options', async () => {
    for (const [args, named] of [[['--turbo'], '--turbo'], [['-p', 'eighty'], '--port'], [['-p', '70000'], '--port'], [['-H'], '-H']] as const) {
      const { code, output } = await startAndExit([...args], env);
      expect(code, args.join(' ')).toBe(1);
      expect(output, args.join(' ')).toContain(named);
      expect(output, args.join(' ')).toContain('npm start -- --help');
    }
    const help = await startAndExit(['--help'], {});
    expect(help.code).toBe(0);
    expect(help.output).toMatch(/-p, --port <port>/);
    expect(help.output).toMatch(/--keepAliveTimeout <ms>/);
  });
});
