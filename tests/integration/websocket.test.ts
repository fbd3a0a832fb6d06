import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { copyFileSync, mkdtempSync } from 'node:fs';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { rawRequest } from '../fixtures/raw-http';
import { OAuthTokenStore } from '../../lib/core/credential/oauth';
import { Vault } from '../../lib/core/vault/seal';
import { SqliteStore } from '../../lib/store/sqlite';
import { AuditLog } from '../../lib/core/audit/audit';
import { createLogger } from '../../lib/core/log/logger';
import { startApp, startFastLane, type AppServer } from '../fixtures/app-server';
import { writeConfigFile } from '../fixtures/config';
import { leakForms } from '../fixtures/leak-forms';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { bearerToken, sessionCookie } from '../fixtures/session';
import { passwordVersionIn, writeUsersFile, type TestUser } from '../fixtures/users';
import { USERS_RECHECK_MS } from '../../lib/core/users/file';

/**
 * WebSockets through the fast lane (`npm start`, from the production build): a real `ws` upstream on loopback
 * that checks the key on its handshake, can echo it back, and records every handshake it saw.
 */
const wsKey = randomSecret('wskey');
/** The access token of a connected account (`{"oauth": "acme"}`), as the provider would have issued it. */
const oauthToken = randomSecret('acme-access');
const vaultSecret = randomSecret('vault-secret-of-32-characters-or-more');
const secrets = testSessionSecrets();
const admin = { sub: 'oidc:root', roles: ['admin', 'user'] };
/** The lane's KEYWARD_USERS_FILE (local users); the other tests' sessions are minted as an identity provider's users. */
let usersFile: string;
const ivy: TestUser = { username: 'ivy', password: randomSecret('pw'), roles: ['user'] };

/** Replaces the lane's users file, then waits until each of its processes reads it again at its next look-up. */
async function editUsers(users: TestUser[]): Promise<void> {
  copyFileSync(await writeUsersFile(users), usersFile);
  await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 200));
}

/** The headers of a WebSocket upgrade (RFC 6455 §4.1), for requests sent raw (rawRequest) to be shaped as no client would send them. */
const UPGRADE = { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' };

interface Handshake {
  readonly url: string;
  readonly headers: IncomingMessage['headers'];
}

let upstreamServer: Server;
let upstreamWss: WebSocketServer;
const handshakes: Handshake[] = [];
/** The URLs of the plain HTTP requests (no upgrade) the upstream saw. */
const plainRequests: string[] = [];
/** Handshakes the upstream holds (path /v1/slow): calling one refuses it, or accepts it when told to. */
const slowHandshakes: Array<(accept?: boolean) => void> = [];
let lane: AppServer;
let wsUrl: string;
let laneEnv: Record<string, string>;
let laneStore: SqliteStore;

beforeAll(async () => {
  upstreamServer = createServer((req, res) => {
    plainRequests.push(req.url ?? '');
    res.writeHead(426).end();
  });
  upstreamWss = new WebSocketServer({
    server: upstreamServer,
    maxPayload: 64 * 1024 * 1024,
    verifyClient: ({ req }: { req: IncomingMessage }, done: (accept: boolean) => void) => {
      handshakes.push({ url: req.url ?? '', headers: req.headers });
      // /slow: a handshake the upstream takes its time over (it answers once the test is done with it).
      if (req.url?.startsWith('/v1/slow')) {
        slowHandshakes.push((accept = false) => done(accept));
        return;
      }
      done(req.headers['x-api-key'] === wsKey || req.headers.authorization === `Bearer ${oauthToken}`);
    },
  });
  upstreamWss.on('connection', (socket, req) => {
    // An upstream that speaks first, as OpenAI Realtime does (`session.created`): both frames leave at once.
    if (req.url?.includes('greet=1')) {
      socket.send('session.created');
      socket.send(`second, with the key ${wsKey}`);
    }
    socket.on('message', (data, binary) => {
      const text = data.toString();
      if (text === 'key') socket.send(`the key is ${wsKey}, base64 ${Buffer.from(wsKey).toString('base64')}`);
      // An upstream that knows what it should not: a connection's client secret and Keyward's own session secret.
      else if (text === 'held') socket.send(`client ${laneEnv.ACME_CLIENT_SECRET} auth ${laneEnv.AUTH_SECRET}`);
      else if (text === 'key-binary') socket.send(Buffer.from(`bin:${wsKey}`), { binary: true });
      else if (text === 'big') socket.send('x'.repeat(4096));
      else if (text === 'close-with-key') socket.close(4000, `bye ${wsKey}`);
      // The upstream's own size limit (a message it will not take): its 1009 and reason pass on as they are.
      else if (text === 'too-big-for-upstream') socket.close(1009, 'over the upstream limit');
      // A close reason holds 123 bytes: a long key echoed in one is cut short, as a server must cut it.
      else if (text === 'close-with-cut-key') socket.close(4000, `bad key ${wsKey.slice(0, 24)}`);
      // An upstream that quotes the client's text in its close reason.
      else if (text.startsWith('close-echo:')) socket.close(4000, `bad frame: ${text.slice('close-echo:'.length)}`);
      else socket.send(data, { binary });
    });
  });
  upstreamServer.listen(0, '127.0.0.1');
  await once(upstreamServer, 'listening');
  const { port } = upstreamServer.address() as AddressInfo;
  const loopback = `http://127.0.0.1:${port}`;
  const configPath = writeConfigFile({
    // A connected-account provider (README "Connected accounts"); its endpoints are never reached here but by a
    // disconnect's revocation, which the loopback server refuses (the tokens are deleted anyway).
    connections: {
      acme: {
        preset: 'generic',
        name: 'Acme',
        authorizationUrl: `${loopback}/authorize`,
        tokenUrl: `${loopback}/token`,
        revocationUrl: `${loopback}/revoke`,
        clientId: { env: 'ACME_CLIENT_ID' },
        clientSecret: { env: 'ACME_CLIENT_SECRET' },
        scopes: ['api'],
      },
    },
    upstreams: {
      rt: {
        baseUrl: `http://127.0.0.1:${port}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'WS_KEY' } },
        routes: [
          {
            method: 'GET',
            path: '/realtime',
            websocket: true,
            roles: ['user'],
            maxMessageBytes: 1024,
            subprotocols: ['realtime', 'other'],
          },
          { method: 'GET', path: '/quiet', websocket: true, idleTimeoutMs: 1000 },
          {
            method: 'GET',
            path: '/limited',
            websocket: true,
            rateLimits: [{ by: 'user', limit: 2, windowSeconds: 600 }],
          },
          { method: 'GET', path: '/admins', websocket: true, roles: ['admin'] },
          { method: 'GET', path: '/slow', websocket: true },
          { method: 'GET', path: '/plain' },
        ],
      },
      // One call in progress per user: an open socket is one (waiting for a slot ends after timeoutMs).
      single: {
        baseUrl: `http://127.0.0.1:${port}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'WS_KEY' } },
        maxCallsInFlightPerUser: 1,
        timeoutMs: 500,
        routes: [{ method: 'GET', path: '/realtime', websocket: true }],
      },
      // The same upstream with each user's own key (PUT /api/keys/own).
      own: {
        baseUrl: `http://127.0.0.1:${port}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { user: 'key' } },
        routes: [{ method: 'GET', path: '/realtime', websocket: true, roles: ['user'] }],
      },
      // The same upstream with each user's connected Acme account.
      linked: {
        baseUrl: `${loopback}/v1/`,
        auth: { type: 'bearer', secret: { oauth: 'acme' } },
        routes: [{ method: 'GET', path: '/realtime', websocket: true, roles: ['user'] }],
      },
    },
  });
  laneEnv = {
    ...secrets,
    WS_KEY: wsKey,
    KEYWARD_VAULT_SECRET: vaultSecret,
    ACME_CLIENT_ID: 'keyward-test',
    ACME_CLIENT_SECRET: randomSecret('acme-client'),
    KEYWARD_CONFIG: configPath,
    // Sessions are minted (tests/fixtures/session.ts); production still needs a sign-in method.
    KEYWARD_USERS_FILE: (usersFile = await writeUsersFile([ivy])),
  };
  const storePath = join(mkdtempSync(join(tmpdir(), 'keyward-ws-')), 'keyward.db');
  lane = await startFastLane({ ...laneEnv, KEYWARD_STORE_PATH: storePath });
  laneStore = new SqliteStore(storePath);
  wsUrl = lane.url.replace(/^http/, 'ws');
}, 120_000);

afterAll(async () => {
  await laneStore?.close();
  await lane?.stop();
  for (const refuse of slowHandshakes.splice(0)) refuse();
  upstreamWss?.close();
  upstreamServer?.close();
  if (lane)
    for (const form of [...leakForms(wsKey), ...leakForms(oauthToken)])
      expect(lane.output().includes(form), 'a key or token leaked into the log').toBe(false);
});

type Opened =
  { ok: true; socket: WebSocket; requestId: string | undefined } | { ok: false; status: number; body: string };

/** Opens a WebSocket through the fast lane: the open socket, or the refusal's status and JSON body. */
function open(path: string, headers: Record<string, string> = {}): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`${wsUrl}${path}`, { headers });
    let requestId: string | undefined;
    socket.once('upgrade', (response) => (requestId = response.headers['x-request-id'] as string | undefined));
    socket.once('open', () => resolve({ ok: true, socket, requestId }));
    socket.once('unexpected-response', (_request, response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')));
      response.on('end', () => resolve({ ok: false, status: response.statusCode ?? 0, body }));
    });
    socket.once('error', (error) => reject(error));
  });
}

function opened(result: Opened): WebSocket {
  if (!result.ok) throw new Error(`upgrade refused: ${result.status} ${result.body}`);
  return result.socket;
}

function refusal(result: Opened): { status: number; code: string | undefined } {
  if (result.ok) {
    result.socket.terminate();
    throw new Error('upgrade accepted');
  }
  return { status: result.status, code: (JSON.parse(result.body) as { error?: { code?: string } }).error?.code };
}

function nextMessage(socket: WebSocket): Promise<{ data: Buffer; binary: boolean }> {
  return new Promise((resolve) => socket.once('message', (data: Buffer, binary: boolean) => resolve({ data, binary })));
}

function closed(socket: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) =>
    socket.once('close', (code, reason) => resolve({ code, reason: reason.toString('utf8') })),
  );
}

/** The audit record of `userId`'s socket on `rt` (written by the batch writer once the socket closed). */
async function auditRecord(userId: string): Promise<Record<string, unknown> | undefined> {
  const adminCookie = await cookieFor(admin.sub, admin.roles);
  for (let attempt = 0; attempt < 50; attempt++) {
    const audit = await fetch(`${lane.url}/api/admin/audit?type=call&upstream=rt&limit=200`, {
      headers: { cookie: adminCookie, 'x-keyward-csrf': '1' },
    });
    const { records } = (await audit.json()) as { records: Array<Record<string, unknown>> };
    const record = records.find((entry) => entry.userId === userId && entry.status === 101);
    if (record) return record;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return undefined;
}

/** The record of this user's upgraded socket (status 101) in the fast lane's log, once it ended. */
function socketRecord(userId: string): { scrubberHits: number } | undefined {
  return lane
    .output()
    .split('\n')
    .filter((line) => line.includes(`"${userId}"`) && line.includes('"status":101'))
    .map((line) => (JSON.parse(line) as { proxy?: { scrubberHits: number } }).proxy)
    .find(Boolean);
}

async function cookieFor(sub: string, roles = ['user']): Promise<string> {
  return sessionCookie(secrets.AUTH_SECRET, { sub, roles, ...localPasswordVersion(sub) });
}

/** A local user's password version, as sign-in seals it, from the lane's users file. */
function localPasswordVersion(sub: string): { passwordVersion?: string } {
  return sub.startsWith('local:') ? { passwordVersion: passwordVersionIn(usersFile, sub.slice('local:'.length)) } : {};
}

const sameOrigin = () => ({ origin: lane.url });

describe('WebSocket upgrades through the fast lane', () => {
  it("a cookie session from the site's own origin round-trips text and binary; the key reaches only the upstream handshake", async () => {
    const before = handshakes.length;
    const socket = opened(
      await open('/api/proxy/rt/realtime?model=x', { cookie: await cookieFor('oidc:alice'), ...sameOrigin() }),
    );
    expect(handshakes.length).toBe(before + 1);
    const seen = handshakes.at(-1)!;
    expect(seen.url).toBe('/v1/realtime?model=x');
    expect(seen.headers['x-api-key']).toBe(wsKey);
    expect(seen.headers.cookie).toBeUndefined();
    expect(seen.headers.origin).toBeUndefined();

    socket.send('hello');
    expect((await nextMessage(socket)).data.toString()).toBe('hello');
    socket.send(Buffer.from([1, 2, 3]), { binary: true });
    const binary = await nextMessage(socket);
    expect(binary.binary).toBe(true);
    expect([...binary.data]).toEqual([1, 2, 3]);
    socket.close(1000);
    expect((await closed(socket)).code).toBe(1000);
  });

  it('an upstream that echoes the key: every form of it reaches the client as [REDACTED], text, binary and close reason', async () => {
    const socket = opened(
      await open('/api/proxy/rt/realtime', { cookie: await cookieFor('oidc:echoed'), ...sameOrigin() }),
    );
    socket.send('key');
    const text = (await nextMessage(socket)).data.toString();
    expect(text).toContain('[REDACTED]');
    for (const form of leakForms(wsKey)) expect(text.includes(form)).toBe(false);
    socket.send('key-binary');
    const binary = await nextMessage(socket);
    expect(binary.binary).toBe(true);
    expect(binary.data.toString()).toBe('bin:[REDACTED]');
    const end = closed(socket);
    socket.send('close-with-key');
    const { code, reason } = await end;
    expect(code).toBe(4000);
    expect(reason).toBe('bye [REDACTED]');
    // Each replacement is counted on the socket's record, as an HTTP call's are (metrics, Keys page, detector).
    const recordOf = () => socketRecord('oidc:echoed');
    await expect.poll(recordOf).toBeDefined();
    expect(recordOf()!.scrubberHits).toBeGreaterThanOrEqual(3); // the text, the binary message, the close reason
  });

  it("every secret Keyward holds is scrubbed from messages, not only the socket's own key", async () => {
    const socket = opened(await open('/api/proxy/rt/realtime', { cookie: await cookieFor('oidc:held'), ...sameOrigin() }));
    socket.send('held');
    expect((await nextMessage(socket)).data.toString()).toBe('client [REDACTED] auth [REDACTED]');
    socket.close(1000);
    await closed(socket);
  });

  it('a client that half-closes while the upstream handshake is under way is let go: its connection is closed, none left open', async () => {
    const held = slowHandshakes.length;
    const { host, port } = new URL(lane.url);
    const client = connect(Number(port), '127.0.0.1');
    client.on('error', () => {});
    const ended = once(client, 'close');
    const head = Object.entries({ host, ...UPGRADE, origin: lane.url, cookie: await cookieFor('oidc:half-closer') });
    client.write(`GET /api/proxy/rt/slow HTTP/1.1\r\n${head.map(([name, value]) => `${name}: ${value}\r\n`).join('')}\r\n`);
    for (let i = 0; i < 100 && slowHandshakes.length === held; i++) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(slowHandshakes.length, 'the upstream holds the handshake').toBe(held + 1);
    // The client sends FIN and reads on. Before the fix the server's side stayed open (CLOSE-WAIT) for good, a file
    // descriptor per attempt, even once the upstream accepted; now it is closed at once, the upstream still silent.
    client.end();
    await ended;
    expect(client.destroyed).toBe(true);
    slowHandshakes.pop()!(true);
  });

  it('a close reason with the key cut short (a reason holds 123 bytes): what there is of it reaches the client as [REDACTED]', async () => {
    const socket = opened(await open('/api/proxy/rt/realtime', { cookie: await cookieFor('oidc:cut-key'), ...sameOrigin() }));
    const end = closed(socket);
    socket.send('close-with-cut-key');
    const { code, reason } = await end;
    expect(code).toBe(4000);
    expect(reason).toBe('bad key [REDACTED]');
    // Counted on the socket's record as a scrubber hit, as a whole key is (metrics, Keys page, detector).
    const record = () => socketRecord('oidc:cut-key');
    await expect.poll(record).toBeDefined();
    expect(record()!.scrubberHits).toBe(1);
  });

  it("a close reason quoting the client's text tells it nothing of the key: a run that continues it and one that does not read alike", async () => {
    const reasonFor = async (quoted: string) => {
      const socket = opened(await open('/api/proxy/rt/realtime', { cookie: await cookieFor('oidc:guesser'), ...sameOrigin() }));
      const end = closed(socket);
      socket.send(`close-echo:${quoted}`);
      return (await end).reason;
    };
    // 16 characters of the key, and the same with its last one changed: redacted alike, by what they are made of.
    const right = wsKey.slice(0, 16);
    const wrong = `${right.slice(0, -1)}${right.endsWith('Q') ? 'R' : 'Q'}`;
    expect(await reasonFor(right)).toBe('bad frame: [REDACTED]');
    expect(await reasonFor(wrong)).toBe('bad frame: [REDACTED]');
    // Shorter words, and text with spaces, pass as they are.
    expect(await reasonFor('frame too large for the session')).toBe('bad frame: frame too large for the session');
  });

  it("what the upstream sends as soon as it accepts (OpenAI Realtime's session.created) reaches the client, scrubbed", async () => {
    const cookie = await cookieFor('oidc:alice');
    for (let i = 0; i < 10; i++) {
      // Listening from the start: the client's own first messages may come in the same read as its 101.
      const socket = new WebSocket(`${wsUrl}/api/proxy/rt/realtime?greet=1`, { headers: { cookie, ...sameOrigin() } });
      const messages: string[] = [];
      socket.on('message', (data: Buffer) => messages.push(data.toString('utf8')));
      await once(socket, 'open');
      socket.send('ping');
      await expect.poll(() => messages.length).toBe(3);
      expect(messages).toEqual(['session.created', 'second, with the key [REDACTED]', 'ping']);
      socket.close(1000);
      await closed(socket);
    }
  });

  it('an upgrade on a path that is /api/proxy/… only once normalised is 400 bad_path, as on the HTTP door, never handed to Next', async () => {
    const before = handshakes.length;
    for (const path of ['/x/../api/proxy/rt/realtime', '/api\\proxy/rt/realtime', '/api/%2e/proxy/rt/realtime']) {
      const answer = await rawRequest(lane.port, 'GET', path, { ...UPGRADE, cookie: await cookieFor('oidc:alice'), ...sameOrigin() });
      expect([path, answer.status]).toEqual([path, 400]);
      expect((JSON.parse(answer.body) as { error: { code: string } }).error.code).toBe('bad_path');
    }
    expect(handshakes.length).toBe(before);
  });

  it('an upgrade with a body (Content-Length, chunked) is 400 bad_request, as at the door to Next: no upstream handshake, no key sent', async () => {
    const before = handshakes.length;
    // Raw sockets: node:http's client would treat a 101 as its own upgrade, and these requests are shaped as no client sends them.
    for (const [framing, body] of [
      ['content-length: 11\r\n', 'hello world'],
      ['transfer-encoding: chunked\r\n', 'b\r\nhello world\r\n0\r\n\r\n'],
    ] as const) {
      const socket = connect(lane.port, '127.0.0.1');
      const chunks: Buffer[] = [];
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      const head = Object.entries({ host: new URL(lane.url).host, ...UPGRADE, cookie: await cookieFor('oidc:alice'), ...sameOrigin() })
        .map(([name, value]) => `${name}: ${value}\r\n`)
        .join('');
      socket.end(`GET /api/proxy/rt/realtime HTTP/1.1\r\n${head}${framing}\r\n${body}`);
      await once(socket, 'close');
      const answer = Buffer.concat(chunks).toString('latin1');
      expect(answer.split('\r\n', 1)[0], framing).toBe('HTTP/1.1 400 Bad Request');
      expect(answer, framing).toContain('"code":"bad_request"');
    }
    expect(handshakes.length).toBe(before);
  });

  it("passes the offered subprotocols the route lists to the upstream and its choice back", async () => {
    const cookie = await cookieFor('oidc:alice');
    for (const [offered, chosen] of [[['realtime', 'other'], 'realtime'], [['other'], 'other']] as const) {
      const socket = await new Promise<WebSocket>((resolve, reject) => {
        const ws = new WebSocket(`${wsUrl}/api/proxy/rt/realtime`, [...offered], { headers: { cookie, ...sameOrigin() } });
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
      });
      expect(handshakes.at(-1)!.headers['sec-websocket-protocol']).toBe(offered.join(','));
      expect(socket.protocol).toBe(chosen);
      socket.close();
      await closed(socket);
    }
  });

  it('a subprotocol the route does not list is 400 before any upstream handshake: a client cannot add a key or an account to it', async () => {
    const before = handshakes.length;
    const longName = `x-${'k'.repeat(40)}`;
    for (const [path, offered, shown] of [
      ['realtime', 'realtime, openai-insecure-api-key.x', 'openai-insecure-api-key.x'],
      ['realtime', 'openai-organization.org-123', 'openai-organization.org-123'],
      ['realtime', `other, ${longName}`, '(a name not shown)'],
      // A route that lists none accepts none.
      ['quiet', 'realtime', 'realtime'],
    ] as const) {
      const answer = await rawRequest(lane.port, 'GET', `/api/proxy/rt/${path}`, {
        ...UPGRADE,
        'sec-websocket-protocol': offered,
        host: new URL(lane.url).host,
        cookie: await cookieFor('oidc:alice', ['user']),
        ...sameOrigin(),
      });
      const { error } = JSON.parse(answer.body) as { error: { code: string; message: string } };
      expect([offered, answer.status, error.code]).toEqual([offered, 400, 'bad_request']);
      expect(error.message).toBe(`This route does not accept the WebSocket subprotocol "${shown}".`);
    }
    // The key never went out with the client's subprotocols: no upstream handshake at all.
    expect(handshakes.length).toBe(before);
  });

  it('a subprotocol list the WebSocket server would refuse (an empty entry, a duplicate) is 400 before any upstream handshake', async () => {
    const before = handshakes.length;
    for (const offered of ['realtime,', 'realtime,,other', ',realtime', ' ', 'realtime, realtime', 'real time']) {
      const answer = await rawRequest(lane.port, 'GET', '/api/proxy/rt/realtime', {
        ...UPGRADE,
        'sec-websocket-protocol': offered,
        host: new URL(lane.url).host,
        cookie: await cookieFor('oidc:alice'),
        ...sameOrigin(),
      });
      expect([offered, answer.status]).toEqual([offered, 400]);
      expect([offered, (JSON.parse(answer.body) as { error: { code: string } }).error.code]).toEqual([offered, 'bad_request']);
    }
    // The key never went out for them: no upstream handshake, no upstream session opened for nothing.
    expect(handshakes.length).toBe(before);
  });

  it('a cookie session from another origin, or with no Origin, is refused before any upstream handshake', async () => {
    const cookie = await cookieFor('oidc:alice');
    const before = handshakes.length;
    expect(refusal(await open('/api/proxy/rt/realtime', { cookie, origin: 'https://evil.example' }))).toEqual({
      status: 403,
      code: 'csrf_failed',
    });
    expect(refusal(await open('/api/proxy/rt/realtime', { cookie }))).toEqual({ status: 403, code: 'csrf_failed' });
    expect(
      refusal(await open('/api/proxy/rt/realtime', { cookie, ...sameOrigin(), 'sec-fetch-site': 'cross-site' })),
    ).toEqual({
      status: 403,
      code: 'csrf_failed',
    });
    expect(handshakes.length).toBe(before);
  });

  it('no session, a role the session lacks, and a route without websocket: true are refused', async () => {
    const before = handshakes.length;
    expect(refusal(await open('/api/proxy/rt/realtime', sameOrigin()))).toEqual({
      status: 401,
      code: 'unauthenticated',
    });
    const alice = await cookieFor('oidc:alice');
    expect(refusal(await open('/api/proxy/rt/admins', { cookie: alice, ...sameOrigin() }))).toEqual({
      status: 403,
      code: 'forbidden',
    });
    expect(refusal(await open('/api/proxy/rt/plain', { cookie: alice, ...sameOrigin() }))).toEqual({
      status: 400,
      code: 'bad_request',
    });
    expect(refusal(await open('/api/proxy/rt/nope', { cookie: alice, ...sameOrigin() }))).toEqual({
      status: 404,
      code: 'route_not_found',
    });
    expect(handshakes.length).toBe(before);
  });

  it('a bearer client gets a single-use ticket bound to the path, and connects with it', async () => {
    const token = await bearerToken(secrets.KEYWARD_SESSION_SECRET, { sub: 'oidc:bob' });
    const ask = (path: string) =>
      fetch(`${lane.url}/api/session/ws-ticket`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ upstream: 'rt', path }),
      });
    const response = await ask('/realtime');
    expect(response.status).toBe(200);
    expect(response.headers.get('cache-control')).toBe('private, no-store');
    const { ticket, expiresIn } = (await response.json()) as { ticket: string; expiresIn: number };
    expect(expiresIn).toBe(30);

    const socket = opened(await open(`/api/proxy/rt/realtime?ticket=${ticket}`));
    const seen = handshakes.at(-1)!;
    expect(seen.url).toBe('/v1/realtime');
    socket.send('ping');
    expect((await nextMessage(socket)).data.toString()).toBe('ping');
    socket.close();
    await closed(socket);

    expect(refusal(await open(`/api/proxy/rt/realtime?ticket=${ticket}`))).toEqual({
      status: 401,
      code: 'unauthenticated',
    });
    const other = ((await (await ask('/realtime')).json()) as { ticket: string }).ticket;
    expect(refusal(await open(`/api/proxy/rt/quiet?ticket=${other}`))).toEqual({
      status: 401,
      code: 'unauthenticated',
    });
    expect(refusal(await open(`/api/proxy/rt/realtime?ticket=${other}`))).toEqual({
      status: 401,
      code: 'unauthenticated',
    });
    // Shown where a step before the session refuses it (an HTTP route, no such route or upstream, a refused
    // query parameter): used up all the same.
    for (const [wrong, status] of [
      ['/api/proxy/rt/plain', 400],
      ['/api/proxy/rt/nope', 404],
      ['/api/proxy/zz/realtime', 404],
      ['/api/proxy/rt/realtime?access_token=x', 400],
    ] as const) {
      const shown = ((await (await ask('/realtime')).json()) as { ticket: string }).ticket;
      expect(refusal(await open(`${wrong}${wrong.includes('?') ? '&' : '?'}ticket=${shown}`)).status, wrong).toBe(status);
      expect(refusal(await open(`/api/proxy/rt/realtime?ticket=${shown}`)), wrong).toEqual({ status: 401, code: 'unauthenticated' });
    }

    // Shown with an upgrade refused before any step of the pipeline (not a valid handshake: version 8; a TRACE):
    // used up all the same.
    const port = Number(new URL(lane.url).port);
    for (const [method, headers] of [['GET', { ...UPGRADE, 'sec-websocket-version': '8' }], ['TRACE', UPGRADE]] as const) {
      const shown = ((await (await ask('/realtime')).json()) as { ticket: string }).ticket;
      const early = await rawRequest(port, method, `/api/proxy/rt/realtime?ticket=${shown}`, { host: new URL(lane.url).host, ...headers });
      expect(early.status, method).toBeGreaterThanOrEqual(400);
      expect(refusal(await open(`/api/proxy/rt/realtime?ticket=${shown}`)), method).toEqual({ status: 401, code: 'unauthenticated' });
    }

    // Shown twice in one URL: refused, and used up all the same.
    const twice = ((await (await ask('/realtime')).json()) as { ticket: string }).ticket;
    const unauthenticated = { status: 401, code: 'unauthenticated' };
    expect(refusal(await open(`/api/proxy/rt/realtime?ticket=${twice}&ticket=${twice}`))).toEqual(unauthenticated);
    expect(refusal(await open(`/api/proxy/rt/realtime?ticket=${twice}`))).toEqual(unauthenticated);

    // Under a name a lenient server reads as `ticket` (never redeemed: the upgrade is refused for it), alone or
    // beside a ticket of its own: used up all the same.
    for (const name of ['Ticket', 'TICKET', 'ticket[]', 'ticket%00']) {
      const shown = ((await (await ask('/realtime')).json()) as { ticket: string }).ticket;
      expect(refusal(await open(`/api/proxy/rt/realtime?${name}=${shown}`)).status, name).toBeGreaterThanOrEqual(400);
      const beside = ((await (await ask('/realtime')).json()) as { ticket: string }).ticket;
      const another = ((await (await ask('/realtime')).json()) as { ticket: string }).ticket;
      expect(refusal(await open(`/api/proxy/rt/realtime?ticket=${beside}&${name}=${another}`)), name).toMatchObject({ status: 400, code: 'bad_request' });
      for (const used of [shown, beside, another]) expect(refusal(await open(`/api/proxy/rt/realtime?ticket=${used}`)), name).toEqual(unauthenticated);
    }

    expect((await ask('/plain')).status).toBe(400);
    const noSession = await fetch(`${lane.url}/api/session/ws-ticket`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ upstream: 'rt', path: '/realtime' }),
    });
    expect(noSession.status).toBe(401);
    expect(lane.output()).not.toContain(ticket);
  });

  it('a message over maxMessageBytes closes the socket (1009), from either side', async () => {
    const cookie = await cookieFor('oidc:alice');
    const fromClient = opened(await open('/api/proxy/rt/realtime', { cookie, ...sameOrigin() }));
    const clientEnd = closed(fromClient);
    fromClient.send('y'.repeat(2048));
    expect((await clientEnd).code).toBe(1009);

    const fromUpstream = opened(await open('/api/proxy/rt/realtime', { cookie, ...sameOrigin() }));
    const upstreamEnd = closed(fromUpstream);
    fromUpstream.send('big');
    expect((await upstreamEnd).code).toBe(1009);
  });

  it("an upstream's own 1009 (its limit, not Keyward's) reaches the client with its reason, recorded as the upstream's close", async () => {
    const cookie = await cookieFor('oidc:upstream-limit');
    const socket = opened(await open('/api/proxy/rt/realtime', { cookie, ...sameOrigin() }));
    const end = closed(socket);
    socket.send('too-big-for-upstream');
    expect(await end).toEqual({ code: 1009, reason: 'over the upstream limit' });
    const record = await auditRecord('oidc:upstream-limit');
    // Keyward refused nothing: not `payload_too_large`, which says Keyward's maxMessageBytes closed it.
    expect(record).toMatchObject({ status: 101, outcome: 'error', errorCode: null });
  });

  it('a socket idle for idleTimeoutMs is closed (4408)', async () => {
    const socket = opened(
      await open('/api/proxy/rt/quiet', { cookie: await cookieFor('oidc:idle'), ...sameOrigin() }),
    );
    expect(await closed(socket)).toEqual({ code: 4408, reason: 'idle timeout' });
  }, 15_000);

  it('rate limits count upgrades', async () => {
    const cookie = await cookieFor('oidc:limited');
    for (let i = 0; i < 2; i++) {
      const socket = opened(await open('/api/proxy/rt/limited', { cookie, ...sameOrigin() }));
      socket.close();
      await closed(socket);
    }
    expect(refusal(await open('/api/proxy/rt/limited', { cookie, ...sameOrigin() }))).toEqual({
      status: 429,
      code: 'rate_limited',
    });
  });

  it("an open socket is one of its user's calls in progress: past maxCallsInFlightPerUser an upgrade waits, then 429", async () => {
    const cookie = await cookieFor('oidc:single');
    const before = handshakes.length;
    const first = opened(await open('/api/proxy/single/realtime', { cookie, ...sameOrigin() }));
    expect(refusal(await open('/api/proxy/single/realtime', { cookie, ...sameOrigin() }))).toEqual({ status: 429, code: 'rate_limited' });
    // Another user's socket is not held up; the refused upgrade never reached the upstream.
    const other = opened(await open('/api/proxy/single/realtime', { cookie: await cookieFor('oidc:single-2'), ...sameOrigin() }));
    expect(handshakes.length - before).toBe(2);
    first.close();
    await closed(first);
    const again = opened(await open('/api/proxy/single/realtime', { cookie, ...sameOrigin() }));
    for (const socket of [other, again]) {
      socket.close();
      await closed(socket);
    }
  });

  it('an upgrade whose client leaves while it waits for a slot gives its place back: no upstream socket is opened for it', async () => {
    const cookie = await cookieFor('oidc:single-3');
    const first = opened(await open('/api/proxy/single/realtime', { cookie, ...sameOrigin() }));
    const before = handshakes.length;
    // A raw upgrade that waits behind `first` (limit 1), then leaves before a slot frees.
    const waiting = connect(Number(new URL(lane.url).port), '127.0.0.1');
    await once(waiting, 'connect');
    waiting.write(
      [
        'GET /api/proxy/single/realtime HTTP/1.1',
        `Host: ${new URL(lane.url).host}`,
        'Upgrade: websocket',
        'Connection: Upgrade',
        'Sec-WebSocket-Version: 13',
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
        `Origin: ${lane.url}`,
        `Cookie: ${cookie}`,
        '',
        '',
      ].join('\r\n'),
    );
    await new Promise((resolve) => setTimeout(resolve, 100));
    waiting.destroy();
    first.close();
    await closed(first);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(handshakes.length).toBe(before);
    // The slot is free for the next upgrade.
    const again = opened(await open('/api/proxy/single/realtime', { cookie, ...sameOrigin() }));
    again.close();
    await closed(again);
  });

  it('signing out closes the open socket (4401)', async () => {
    const cookie = await cookieFor('oidc:carol');
    const socket = opened(await open('/api/proxy/rt/realtime', { cookie, ...sameOrigin() }));
    socket.send('still here');
    await nextMessage(socket);
    const end = closed(socket);
    const logout = await fetch(`${lane.url}/api/session/logout`, {
      method: 'POST',
      headers: { cookie, 'x-keyward-csrf': '1', ...sameOrigin() },
    });
    expect(logout.status).toBe(200);
    expect(await end).toEqual({ code: 4401, reason: 'session ended' });
    expect(refusal(await open('/api/proxy/rt/realtime', { cookie, ...sameOrigin() }))).toEqual({
      status: 401,
      code: 'unauthenticated',
    });
  }, 15_000);

  it("a local user's roles changed in the users file close their socket (4401 session changed); removed, 4401 session ended", async () => {
    const cookie = await cookieFor('local:ivy');
    const first = opened(await open('/api/proxy/rt/realtime', { cookie, ...sameOrigin() }));
    const changed = closed(first);
    await editUsers([{ ...ivy, roles: ['user', 'ops'] }]);
    expect(await changed).toEqual({ code: 4401, reason: 'session changed' });

    // Reconnecting authorizes the socket as the user is now; removed from the file, the user has no session.
    const second = opened(await open('/api/proxy/rt/realtime', { cookie, ...sameOrigin() }));
    const ended = closed(second);
    await editUsers([{ username: 'someone-else', password: randomSecret('pw'), roles: ['user'] }]);
    expect(await ended).toEqual({ code: 4401, reason: 'session ended' });
    expect(refusal(await open('/api/proxy/rt/realtime', { cookie, ...sameOrigin() }))).toEqual({ status: 401, code: 'unauthenticated' });
    await editUsers([ivy]);
  }, 30_000);

  it("a ticket issued before a local user's roles changed in the users file is redeemed under the roles the file gives now", async () => {
    const jo: TestUser = { username: 'jo', password: randomSecret('pw'), roles: ['user', 'admin'] };
    await editUsers([ivy, jo]);
    const token = await bearerToken(secrets.KEYWARD_SESSION_SECRET, { sub: 'local:jo', roles: ['user', 'admin'], ...localPasswordVersion('local:jo') });
    const ask = async () => {
      const response = await fetch(`${lane.url}/api/session/ws-ticket`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ upstream: 'rt', path: '/admins' }),
      });
      expect(response.status).toBe(200);
      return ((await response.json()) as { ticket: string }).ticket;
    };
    const admitted = opened(await open(`/api/proxy/rt/admins?ticket=${await ask()}`));
    admitted.close();
    await closed(admitted);

    const ticket = await ask();
    await editUsers([ivy, { ...jo, roles: ['user'] }]);
    expect(refusal(await open(`/api/proxy/rt/admins?ticket=${ticket}`))).toEqual({ status: 403, code: 'forbidden' });
    await editUsers([ivy]);
  }, 30_000);

  it('an upgrade outside /api/proxy goes to Next, which ends it; a plain GET on a WebSocket route is passed to the upstream as HTTP', async () => {
    const before = handshakes.length;
    const outcome = await new Promise<string>((resolve) => {
      const socket = new WebSocket(`${wsUrl}/`, { headers: sameOrigin() });
      socket.once('open', () => resolve('open'));
      socket.once('unexpected-response', () => resolve('refused'));
      socket.once('error', () => resolve('ended'));
    });
    expect(outcome).toBe('ended');
    expect(handshakes.length).toBe(before);
    // Without an Upgrade header the route is an ordinary GET: a WebSocket server answers it 426 Upgrade Required.
    const plain = await fetch(`${lane.url}/api/proxy/rt/realtime`, {
      headers: { cookie: await cookieFor('oidc:alice'), 'x-keyward-csrf': '1' },
    });
    expect(plain.status).toBe(426);
    await plain.arrayBuffer();
  });

  it('a plain GET with ?ticket= on a WebSocket route is refused 400, the ticket never passed on (it is redeemed on an upgrade only)', async () => {
    const before = plainRequests.length;
    for (const name of ['ticket', 'Ticket', 'tick%65t']) {
      const response = await fetch(`${lane.url}/api/proxy/rt/realtime?model=x&${name}=${randomSecret('t')}`, {
        headers: { cookie: await cookieFor('oidc:alice'), 'x-keyward-csrf': '1' },
      });
      expect(response.status).toBe(400);
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('bad_request');
    }
    expect(plainRequests.length).toBe(before);
  });

  it('writes one audit record when the socket closes, with bytes each way', async () => {
    const record = await auditRecord('oidc:carol');
    expect(record).toMatchObject({
      route: '/realtime',
      method: 'GET',
      status: 101,
      outcome: 'aborted',
      errorCode: 'session_ended',
    });
    expect(record!.bytesIn).toBe('still here'.length);
    expect(record!.bytesOut).toBe('still here'.length);
    expect(record!.keyFingerprint).toEqual(expect.any(String));
    for (const form of leakForms(wsKey)) expect(JSON.stringify(record).includes(form)).toBe(false);
  });
  it('next start (route handlers, as on Vercel) ends the upgrade without a response; a plain GET goes to the upstream as HTTP', async () => {
    const handlers = await startApp({
      ...laneEnv,
      KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-ws-next-')), 'keyward.db'),
    });
    try {
      const cookie = await cookieFor('oidc:alice');
      const before = handshakes.length;
      const outcome = await new Promise<string>((resolve) => {
        const socket = new WebSocket(`${handlers.url.replace(/^http/, 'ws')}/api/proxy/rt/realtime`, {
          headers: { cookie, origin: handlers.url },
        });
        socket.once('open', () => resolve('open'));
        socket.once('unexpected-response', (_request, response) => resolve(`status ${response.statusCode}`));
        socket.once('error', () => resolve('ended'));
      });
      expect(outcome).toBe('ended');
      expect(handshakes.length).toBe(before);
      const plain = await fetch(`${handlers.url}/api/proxy/rt/realtime`, {
        headers: { cookie, 'x-keyward-csrf': '1' },
      });
      expect(plain.status).toBe(426);
      await plain.arrayBuffer();
    } finally {
      await handlers.stop();
    }
  }, 120_000);

  it('a user deleting or replacing their own key closes the sockets that use it (4403); others stay open', async () => {
    const cookie = await cookieFor('oidc:erin');
    const other = await cookieFor('oidc:fay');
    const putKey = async (who: string, key: string) => {
      const response = await fetch(`${lane.url}/api/keys/own`, {
        method: 'PUT',
        headers: { cookie: who, 'x-keyward-csrf': '1', 'content-type': 'application/json', ...sameOrigin() },
        body: JSON.stringify({ key }),
      });
      expect(response.status).toBe(201);
    };
    await putKey(cookie, wsKey);
    await putKey(other, wsKey);
    const first = opened(await open('/api/proxy/own/realtime', { cookie, ...sameOrigin() }));
    const fays = opened(await open('/api/proxy/own/realtime', { cookie: other, ...sameOrigin() }));
    first.send('hello');
    expect((await nextMessage(first)).data.toString()).toBe('hello');

    // Replaced by another key: the socket opened with the old one closes.
    const replacedEnd = closed(first);
    await putKey(cookie, `${wsKey}-rotated`);
    expect(await replacedEnd).toEqual({ code: 4403, reason: 'credential revoked' });

    // Deleted: the socket opened with it closes, as a new upgrade is refused; another user's socket stays open.
    await putKey(cookie, wsKey);
    const second = opened(await open('/api/proxy/own/realtime', { cookie, ...sameOrigin() }));
    const deletedEnd = closed(second);
    const removed = await fetch(`${lane.url}/api/keys/own`, {
      method: 'DELETE',
      headers: { cookie, 'x-keyward-csrf': '1', ...sameOrigin() },
    });
    expect(removed.status).toBe(204);
    expect(await deletedEnd).toEqual({ code: 4403, reason: 'credential revoked' });
    expect(refusal(await open('/api/proxy/own/realtime', { cookie, ...sameOrigin() }))).toEqual({
      status: 403,
      code: 'credential_missing',
    });
    fays.send('still here');
    expect((await nextMessage(fays)).data.toString()).toBe('still here');
    fays.close();
  }, 15_000);

  it("disconnecting the account whose OAuth token a socket uses closes it (4403); another user's stays open", async () => {
    // The grants are sealed into the lane's store as a completed connect leaves them (the connect flow itself:
    // tests/integration/connections.test.ts); the server's processes read them from there.
    const tokens = new OAuthTokenStore(laneStore, new Vault(vaultSecret), new Map());
    const grant = { accessToken: oauthToken, refreshToken: null, expiresAt: 0 };
    await tokens.save('acme', { userId: 'oidc:gus' }, grant);
    await tokens.save('acme', { userId: 'oidc:hal' }, grant);
    const cookie = await cookieFor('oidc:gus');
    const before = handshakes.length;
    const socket = opened(await open('/api/proxy/linked/realtime', { cookie, ...sameOrigin() }));
    const hals = opened(
      await open('/api/proxy/linked/realtime', { cookie: await cookieFor('oidc:hal'), ...sameOrigin() }),
    );
    expect(handshakes.slice(before).map((h) => h.headers.authorization)).toEqual([
      `Bearer ${oauthToken}`,
      `Bearer ${oauthToken}`,
    ]);
    socket.send('hello');
    expect((await nextMessage(socket)).data.toString()).toBe('hello');

    const end = closed(socket);
    const disconnected = await fetch(`${lane.url}/api/connections/acme`, {
      method: 'DELETE',
      headers: { cookie, 'x-keyward-csrf': '1', ...sameOrigin() },
    });
    expect(disconnected.status).toBe(200);
    expect(await end).toEqual({ code: 4403, reason: 'credential revoked' });
    expect(refusal(await open('/api/proxy/linked/realtime', { cookie, ...sameOrigin() }))).toEqual({
      status: 403,
      code: 'connection_required',
    });
    hals.send('still here');
    expect((await nextMessage(hals)).data.toString()).toBe('still here');
    hals.close();
  }, 15_000);

  // Last: the key stays revoked.
  it('revoking the key closes the sockets that use it (4403)', async () => {
    const adminCookie = await cookieFor(admin.sub, admin.roles);
    const socket = opened(
      await open('/api/proxy/rt/realtime', { cookie: await cookieFor('oidc:dave'), ...sameOrigin() }),
    );
    const keys = await fetch(`${lane.url}/api/admin/keys`, { headers: { cookie: adminCookie, 'x-keyward-csrf': '1' } });
    const { upstreams } = (await keys.json()) as {
      upstreams: Array<{ upstream: string; versions: Array<{ fingerprint: string; status: string }> }>;
    };
    const fingerprint = upstreams
      .find((u) => u.upstream === 'rt')!
      .versions.find((v) => v.status === 'serving')!.fingerprint;
    const end = closed(socket);
    const revoke = await fetch(`${lane.url}/api/admin/keys/revoke`, {
      method: 'POST',
      headers: { cookie: adminCookie, 'x-keyward-csrf': '1', 'content-type': 'application/json', ...sameOrigin() },
      body: JSON.stringify({ fingerprint }),
    });
    expect(revoke.status).toBe(200);
    expect(await end).toEqual({ code: 4403, reason: 'credential revoked' });
    expect(
      refusal(await open('/api/proxy/rt/realtime', { cookie: await cookieFor('oidc:dave'), ...sameOrigin() })),
    ).toEqual({
      status: 503,
      code: 'credential_unavailable',
    });
  }, 15_000);

  it('a stop closes open sockets (1001) and answers an upgrade still in its upstream handshake 503; both are on record', async () => {
    const storePath = join(mkdtempSync(join(tmpdir(), 'keyward-ws-stop-')), 'keyward.db');
    const stopping = await startFastLane({ ...laneEnv, KEYWARD_STORE_PATH: storePath });
    const url = stopping.url.replace(/^http/, 'ws');
    const headers = async (sub: string) => ({ cookie: await cookieFor(sub), origin: stopping.url });
    try {
      const connect = (path: string, sub: string) =>
        headers(sub).then(
          (h) =>
            new Promise<Opened>((resolve, reject) => {
              const socket = new WebSocket(`${url}${path}`, { headers: h });
              socket.once('open', () => resolve({ ok: true, socket, requestId: undefined }));
              socket.once('unexpected-response', (_request, response) => {
                let body = '';
                response.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')));
                response.on('end', () => resolve({ ok: false, status: response.statusCode ?? 0, body }));
              });
              socket.once('error', reject);
            }),
        );
      const open = opened(await connect('/api/proxy/rt/realtime', 'oidc:stop-open'));
      const openEnd = closed(open);
      const held = slowHandshakes.length;
      const pending = connect('/api/proxy/rt/slow', 'oidc:stop-pending');
      pending.catch(() => {}); // awaited below; a reset fails the test there
      for (let i = 0; i < 100 && slowHandshakes.length === held; i++) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(slowHandshakes.length, 'the upstream holds the second handshake').toBe(held + 1);
      await stopping.stop();
      expect(await openEnd).toEqual({ code: 1001, reason: 'server shutting down' });
      expect(refusal(await pending)).toEqual({ status: 503, code: 'service_unavailable' });
      // The store the process left behind holds both.
      const store = new SqliteStore(storePath);
      try {
        const { records } = await new AuditLog(store, 86_400_000, createLogger({ level: 'silent' })).query({ type: 'call' }, { limit: 50 });
        const of = (userId: string) => records.filter((record) => record.type === 'call' && record.userId === userId);
        expect(of('oidc:stop-open')).toMatchObject([{ route: '/realtime', status: 101, outcome: 'complete' }]);
        expect(of('oidc:stop-pending')).toMatchObject([{ route: '/slow', status: 503, errorCode: 'service_unavailable' }]);
      } finally {
        await store.close();
      }
    } finally {
      await stopping.stop();
    }
  }, 60_000);
});
