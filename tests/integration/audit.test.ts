import { createHash, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handleAudit, handleKeyAction, handleKeyList, handleKeyRevoke } from '../../lib/core/api/admin';
import { handleUserKey } from '../../lib/core/api/keys';
import { handleAdminRevoke } from '../../lib/core/api/revoke';
import type { AdminRecord, AuditRecord, CallRecord } from '../../lib/core/audit/audit';
import { defineUpstream } from '../../lib/core/config/load';
import { keyFingerprints } from '../../lib/core/keys/fingerprint';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { freePort } from '../fixtures/app-server';
import { REDIS_URL, capturingLogger } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { bearerToken, sessionCookie } from '../fixtures/session';
import { startUpstream, type TestUpstream, type UpstreamHandler } from '../fixtures/upstream';
import { expectedForms } from '../unit/scrub-oracle';

/**
 * The audit trail end to end on real parts: handleProxy against a real node:http upstream, Keyward's own
 * API handlers for user keys, session revocation and the admin API, and the store on the test run's Redis
 * under a fresh key prefix, so this file's records are the only ones in its stream.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const CALL_FIELDS = [
  'at',
  'bytesIn',
  'bytesOut',
  'clientIp',
  'durationMs',
  'errorCode',
  'id',
  'keyFingerprint',
  'method',
  'outcome',
  'requestId',
  'route',
  'scrubberHits',
  'sessionIdHash',
  'status',
  'type',
  'units',
  'upstream',
  'userId',
];

/**
 * The fields a call record has: CALL_FIELDS, and `echoed` exactly when the scrubber replaced something (which
 * secret it was: README "Anomaly detection"). This file's upstream echoes its key in some answers.
 */
function callFields(record: CallRecord): string[] {
  return record.scrubberHits > 0 ? [...CALL_FIELDS, 'echoed'].sort() : CALL_FIELDS;
}

/**
 * The Redis store, counting the audit writes still in flight so a test can wait for them (never for time).
 * The audit log queues call records and writes them in batches; `allRecords` queries, which flushes the queue.
 */
class TrackedRedisStore extends RedisStore {
  private readonly pending = new Set<Promise<unknown>>();
  /** Entries written to the audit log, one by one or in batches (the detector's alert list is another log). */
  appends = 0;

  override append(stream: string, value: string, at: number, retentionMs: number): Promise<string> {
    if (stream === 'audit') this.appends++;
    return this.track(super.append(stream, value, at, retentionMs));
  }

  override appendBatch(stream: string, entries: readonly { value: string; at: number }[], retentionMs: number): Promise<void> {
    if (stream === 'audit') this.appends += entries.length;
    return this.track(super.appendBatch(stream, entries, retentionMs));
  }

  private track<T>(write: Promise<T>): Promise<T> {
    this.pending.add(write);
    write.then(
      () => this.pending.delete(write),
      () => this.pending.delete(write),
    );
    return write;
  }

  async settled(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }
}

/** A key's fingerprint as the runtime computes it (keyed with KEYWARD_SESSION_SECRET). */
const fp = (secret: string) => keyFingerprints(env.KEYWARD_SESSION_SECRET!).of(secret);
const sidHash = (sid: string) => createHash('sha256').update(sid, 'utf8').digest('hex').slice(0, 16);

let upstream: TestUpstream;
let runtime: Runtime;
let store: TrackedRedisStore;
/** Every key this file writes is under this run's prefix, deleted at the end. */
const PREFIX = `keyward-test-${randomUUID()}:`;
let logLines: string[];
const env: Record<string, string> = {};
/** Keys the canary path accepts (x-api-key); everything else gets 401. */
const canaryAccepts = new Set<string>();
const keys = {
  echo: randomSecret('echo'),
  slow: randomSecret('slow'),
  down: randomSecret('down'),
  gone: randomSecret('gone'),
  rot: randomSecret('rot'),
  own: randomSecret('own'),
  added: randomSecret('added'),
  rotated: randomSecret('rotated'),
  refused: randomSecret('refused'),
  skipped: randomSecret('skipped'),
};
/** Keys made up inside tests, for the final leak check. */
const secretsToCheck: string[] = [];
const sids = { alice: randomUUID(), root: randomUUID(), bob: randomUUID(), bearer: randomUUID() };
const ALICE = 'local:alice';
const ROOT = 'local:root';
const BOB = 'local:bob';
let aliceCookie: string;
let rootCookie: string;
let bobCookie: string;
let rootBearer: string;

/** Routes the test upstream by path: JSON echo (with the key, so the scrubber works too), SSE, canary, hang. */
const router: UpstreamHandler = async (req, res, record) => {
  const path = (req.url ?? '').split('?')[0]!;
  if (path === '/v1/canary') {
    const key = req.headers['x-api-key'];
    res.writeHead(typeof key === 'string' && canaryAccepts.has(key) ? 200 : 401, {
      'content-type': 'application/json',
    });
    res.end('{}');
    return;
  }
  if (path === '/v1/events') {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write('data: {"n":1}\n\n');
    return; // holds the stream open until the client goes away
  }
  if (path === '/v1/broken') {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: {"n":1}\n\n', () => setImmediate(() => res.destroy()));
    return;
  }
  if (path === '/v1/hang') return; // never answers
  const bytes = await record.bodyDone;
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bodyBytes: bytes }));
};

beforeAll(async () => {
  upstream = await startUpstream(router);
  const downOrigin = `http://127.0.0.1:${await freePort()}`;
  Object.assign(env, {
    ...testSessionSecrets(),
    KEYWARD_VAULT_SECRET: randomSecret('vault'),
    KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
    KEYWARD_STORE: 'redis',
    REDIS_URL,
    ECHO_KEY: keys.echo,
    SLOW_KEY: keys.slow,
    DOWN_KEY: keys.down,
    GONE_KEY: keys.gone,
    ROT_KEY: keys.rot,
  });
  const base = `${upstream.origin}/v1/`;
  const header = (name: string) => ({ type: 'header' as const, name: 'x-api-key', secret: { env: name } });
  store = new TrackedRedisStore(REDIS_URL, { prefix: PREFIX });
  await store.ready();
  const captured = capturingLogger();
  logLines = captured.lines;
  runtime = createRuntime({
    env,
    store,
    logger: captured.logger,
    upstreams: [
      defineUpstream('echo', {
        baseUrl: base,
        auth: header('ECHO_KEY'),
        routes: [
          { method: 'GET', path: '/items/:id', roles: ['user'] },
          { method: 'POST', path: '/items', roles: ['user'] },
          { method: 'GET', path: '/admin/stats', roles: ['admin'] },
          { method: 'GET', path: '/events' },
          { method: 'GET', path: '/broken' },
        ],
        timeoutMs: 120_000,
      }),
      defineUpstream('slow', {
        baseUrl: base,
        auth: header('SLOW_KEY'),
        routes: [{ method: 'GET', path: '/hang' }],
        timeoutMs: 200,
      }),
      defineUpstream('down', {
        baseUrl: `${downOrigin}/v1/`,
        auth: header('DOWN_KEY'),
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
      // Its only key version is revoked in a test: Keyward then has no credential to send (its own 503).
      defineUpstream('gone', {
        baseUrl: base,
        auth: header('GONE_KEY'),
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
      defineUpstream('rot', {
        baseUrl: base,
        auth: header('ROT_KEY'),
        routes: [{ method: 'GET', path: '/items/:id' }],
        keys: { canary: { method: 'GET', path: '/canary' }, graceSeconds: 600 },
      }),
      defineUpstream('own', {
        baseUrl: base,
        auth: { type: 'header', name: 'x-api-key', secret: { user: 'key' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
    ],
  });
  aliceCookie = await sessionCookie(env.AUTH_SECRET!, { sub: ALICE, roles: ['user'], sid: sids.alice });
  rootCookie = await sessionCookie(env.AUTH_SECRET!, { sub: ROOT, roles: ['user', 'admin'], sid: sids.root });
  bobCookie = await sessionCookie(env.AUTH_SECRET!, { sub: BOB, roles: ['user'], sid: sids.bob });
  rootBearer = await bearerToken(env.KEYWARD_SESSION_SECRET!, {
    sub: ROOT,
    roles: ['user', 'admin'],
    sid: sids.bearer,
  });
});

afterAll(async () => {
  await runtime?.audit.flush().catch(() => {});
  await store?.settled();
  await upstream?.close();
  await (runtime?.dispatcher as { close?: () => Promise<void> } | undefined)?.close?.().catch(() => {});
  await store?.close();
  await deleteKeysUnder(REDIS_URL, PREFIX);
});

beforeEach(() => {
  canaryAccepts.clear();
});

interface CallOptions {
  upstream?: string;
  method?: string;
  cookie?: string | null;
  headers?: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
}

/** A proxied call as the Next route would make it; the response is returned unread. */
async function proxy(path: string[], options: CallOptions = {}): Promise<Response> {
  const upstreamId = options.upstream ?? 'echo';
  const method = options.method ?? 'GET';
  const headers = new Headers(options.headers);
  const cookie = options.cookie === undefined ? aliceCookie : options.cookie;
  if (cookie) headers.set('cookie', cookie);
  headers.set('x-keyward-csrf', '1');
  if (method !== 'GET') headers.set('origin', APP_ORIGIN);
  const url = `${APP_ORIGIN}/api/proxy/${upstreamId}/${path.map(encodeURIComponent).join('/')}`;
  const request = new Request(url, { method, headers, body: options.body, signal: options.signal });
  return handleProxy(request, { upstream: upstreamId, path }, runtime);
}

interface ApiOptions {
  method?: string;
  cookie?: string | null;
  bearer?: string;
  body?: unknown;
  rawBody?: string;
  contentType?: string;
  csrf?: boolean;
  origin?: string | null;
}

/** A request to Keyward's own API, as a browser with the given session would send it. */
function apiRequest(path: string, options: ApiOptions = {}): Request {
  const method = options.method ?? (options.body !== undefined || options.rawBody !== undefined ? 'POST' : 'GET');
  const headers = new Headers();
  const cookie = options.cookie === undefined ? rootCookie : options.cookie;
  if (options.bearer) headers.set('authorization', `Bearer ${options.bearer}`);
  else if (cookie) headers.set('cookie', cookie);
  if (options.csrf !== false) headers.set('x-keyward-csrf', '1');
  const origin = options.origin === undefined ? (['GET', 'HEAD'].includes(method) ? null : APP_ORIGIN) : options.origin;
  if (origin) headers.set('origin', origin);
  let body: string | undefined;
  if (options.rawBody !== undefined) body = options.rawBody;
  else if (options.body !== undefined) body = JSON.stringify(options.body);
  if (body !== undefined) headers.set('content-type', options.contentType ?? 'application/json');
  return new Request(`${APP_ORIGIN}${path}`, { method, headers, body });
}

const admin = {
  audit: (query: string, options: ApiOptions = {}) =>
    handleAudit(apiRequest(`/api/admin/audit${query}`, options), runtime),
  keys: (options: ApiOptions = {}) => handleKeyList(apiRequest('/api/admin/keys', options), runtime),
  action: (upstreamId: string, action: string, options: ApiOptions = {}) =>
    handleKeyAction(apiRequest(`/api/admin/keys/${upstreamId}/${action}`, options), upstreamId, action, runtime),
  revoke: (options: ApiOptions = {}) => handleKeyRevoke(apiRequest('/api/admin/keys/revoke', options), runtime),
  revokeSessions: (userId: string, options: ApiOptions = {}) =>
    handleAdminRevoke(
      apiRequest(`/api/admin/users/${encodeURIComponent(userId)}/revoke-sessions`, { method: 'POST', ...options }),
      userId,
      runtime,
    ),
  userKey: (upstreamId: string, options: ApiOptions = {}) =>
    handleUserKey(apiRequest(`/api/keys/${upstreamId}`, options), upstreamId, runtime),
};

/** Every record in the trail, newest first, straight from the audit log (waits for writes in flight). */
async function allRecords(): Promise<AuditRecord[]> {
  await store.settled();
  const { records, cursor } = await runtime.audit.query({}, { limit: 10_000 });
  expect(cursor).toBeNull();
  return records;
}

/** The call records of one request (by the x-request-id the client saw). */
async function callsFor(requestId: string | null): Promise<CallRecord[]> {
  expect(requestId).toMatch(/^[0-9a-f-]{36}$/);
  return (await allRecords()).filter((r): r is CallRecord => r.type === 'call' && r.requestId === requestId);
}

async function oneCall(response: Response): Promise<CallRecord> {
  const records = await callsFor(response.headers.get('x-request-id'));
  expect(records).toHaveLength(1);
  const record = records[0]!;
  expect(Object.keys(record).sort()).toEqual(callFields(record));
  expect(record.type).toBe('call');
  expect(new Date(record.at).toISOString()).toBe(record.at);
  expect(typeof record.durationMs).toBe('number');
  expect(record.durationMs).toBeGreaterThanOrEqual(0);
  expect(record.units).toBe(0);
  return record;
}

async function adminRecords(action?: string): Promise<AdminRecord[]> {
  return (await allRecords()).filter(
    (r): r is AdminRecord => r.type === 'admin' && (action === undefined || r.action === action),
  );
}

async function jsonOf<T = Record<string, unknown>>(response: Response): Promise<T> {
  return (await response.json()) as T;
}

async function expectError(response: Response, status: number, code: string): Promise<void> {
  const text = await response.text();
  expect(response.status, text).toBe(status);
  expect((JSON.parse(text) as { error: { code: string } }).error.code).toBe(code);
}

describe('call records: one per proxied call, with the documented fields', () => {
  it('a successful call: who, what, which key, how much, from where, and no session id', async () => {
    const before = Date.now();
    const response = await proxy(['items', '42'], { headers: { 'x-forwarded-for': '198.51.100.9, 203.0.113.7' } });
    const body = await response.arrayBuffer();
    expect(response.status).toBe(200);
    const record = await oneCall(response);
    expect(record).toMatchObject({
      requestId: response.headers.get('x-request-id'),
      userId: ALICE,
      sessionIdHash: sidHash(sids.alice),
      upstream: 'echo',
      route: '/items/:id',
      method: 'GET',
      status: 200,
      keyFingerprint: fp(keys.echo),
      bytesIn: 0,
      bytesOut: body.byteLength,
      clientIp: '203.0.113.7',
      outcome: 'complete',
      errorCode: null,
    });
    expect(record.sessionIdHash).toMatch(/^[0-9a-f]{16}$/);
    expect(JSON.stringify(record)).not.toContain(sids.alice);
    expect(Date.parse(record.at)).toBeGreaterThanOrEqual(before);
    expect(Date.parse(record.at)).toBeLessThanOrEqual(Date.now());
    // The upstream answered with the key in its echo; the client got it scrubbed, and bytesOut counts what the client got.
    expect(Buffer.from(body).toString('utf8')).not.toContain(keys.echo);
  });

  it('a call with a body counts the bytes sent; a bearer session is recorded with its own session hash', async () => {
    const payload = JSON.stringify({ name: 'x'.repeat(100) });
    const bearer = await bearerToken(env.KEYWARD_SESSION_SECRET!, {
      sub: 'local:mobile',
      roles: ['user'],
      sid: sids.bearer,
    });
    const response = await proxy(['items'], {
      method: 'POST',
      cookie: null,
      headers: {
        authorization: `Bearer ${bearer}`,
        'content-type': 'application/json',
        'x-forwarded-for': '2001:db8::1',
      },
      body: payload,
    });
    const text = await response.text();
    expect(response.status).toBe(200);
    expect((JSON.parse(text) as { bodyBytes: number }).bodyBytes).toBe(Buffer.byteLength(payload));
    expect(await oneCall(response)).toMatchObject({
      userId: 'local:mobile',
      sessionIdHash: sidHash(sids.bearer),
      route: '/items',
      method: 'POST',
      status: 200,
      bytesIn: Buffer.byteLength(payload),
      bytesOut: Buffer.byteLength(text),
      clientIp: '2001:db8::1',
      outcome: 'complete',
    });
  });

  it('refused calls (401, 403, 404, 405) are recorded once each, with the error code and no key fingerprint', async () => {
    const cases: Array<{ response: Response; expected: Partial<CallRecord> }> = [
      {
        response: await proxy(['items', '1'], { cookie: null }),
        expected: { status: 401, errorCode: 'unauthenticated', userId: null, sessionIdHash: null, route: '/items/:id' },
      },
      {
        response: await proxy(['admin', 'stats']),
        expected: {
          status: 403,
          errorCode: 'forbidden',
          userId: ALICE,
          sessionIdHash: sidHash(sids.alice),
          route: '/admin/stats',
        },
      },
      {
        response: await proxy(['nowhere']),
        expected: { status: 404, errorCode: 'route_not_found', userId: null, route: null },
      },
      {
        // The name is the client's text, of any length: it is recorded as "(unknown)", never as sent.
        response: await proxy(['items', '1'], { upstream: `no-such-upstream-${'x'.repeat(4000)}` }),
        expected: { status: 404, errorCode: 'upstream_not_found', upstream: '(unknown)', route: null },
      },
      {
        response: await proxy(['items', '1'], { method: 'DELETE' }),
        expected: { status: 405, errorCode: 'method_not_allowed', method: 'DELETE' },
      },
    ];
    for (const { response, expected } of cases) {
      const text = await response.text();
      expect(response.status, text).toBe(expected.status);
      const record = await oneCall(response);
      expect(record).toMatchObject({
        ...expected,
        outcome: 'refused',
        keyFingerprint: null,
        bytesOut: 0,
        clientIp: null,
      });
      expect((JSON.parse(text) as { error: { requestId: string } }).error.requestId).toBe(record.requestId);
    }
  });

  it('upstream errors (502 unreachable, 504 timeout) are recorded with the key that was about to be used', async () => {
    const down = await proxy(['items', '7'], { upstream: 'down' });
    await expectError(down.clone(), 502, 'upstream_unreachable');
    expect(await oneCall(down)).toMatchObject({
      upstream: 'down',
      route: '/items/:id',
      status: 502,
      outcome: 'upstream_error',
      errorCode: 'upstream_unreachable',
      keyFingerprint: fp(keys.down),
      userId: ALICE,
      bytesOut: 0,
    });

    const slow = await proxy(['hang'], { upstream: 'slow' });
    await expectError(slow.clone(), 504, 'upstream_timeout');
    expect(await oneCall(slow)).toMatchObject({
      upstream: 'slow',
      route: '/hang',
      status: 504,
      outcome: 'upstream_error',
      errorCode: 'upstream_timeout',
      keyFingerprint: fp(keys.slow),
    });
  });

  it("Keyward's own 503 (no usable key version) is recorded as unavailable, not as the upstream's error", async () => {
    await runtime.keyRings.revoke(fp(keys.gone));
    const sent = upstream.requests.length;
    const gone = await proxy(['items', '7'], { upstream: 'gone' });
    await expectError(gone.clone(), 503, 'credential_unavailable');
    expect(upstream.requests.length).toBe(sent);
    const record = await oneCall(gone);
    expect(record).toMatchObject({
      upstream: 'gone',
      route: '/items/:id',
      status: 503,
      outcome: 'unavailable',
      errorCode: 'credential_unavailable',
      userId: ALICE,
      bytesOut: 0,
    });
    // The admin API's outcome filter finds it, and only such calls.
    const page = await jsonOf<{ records: AuditRecord[] }>(await admin.audit('?outcome=unavailable'));
    expect(page.records.map((r) => (r.type === 'call' ? r.requestId : r.type))).toEqual([record.requestId]);
  });

  it('a client that goes away mid-stream: one record, outcome aborted, with the bytes it got; the upstream call is closed', async () => {
    const requestsBefore = upstream.requests.length;
    const response = await proxy(['events']);
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toBe('data: {"n":1}\n\n');
    // Nothing is recorded while the stream is open.
    expect(await callsFor(response.headers.get('x-request-id'))).toEqual([]);
    await reader.cancel();
    const record = await oneCall(response);
    expect(record).toMatchObject({
      route: '/events',
      status: 200,
      outcome: 'aborted',
      errorCode: null,
      bytesOut: first.value!.byteLength,
      keyFingerprint: fp(keys.echo),
      userId: ALICE,
    });
    const upstreamRequest = upstream.requests[requestsBefore]!;
    await upstreamRequest.closed;
    expect(upstreamRequest.closedEarly).toBe(true);
    // Still exactly one record once everything has settled.
    expect(await callsFor(record.requestId)).toHaveLength(1);
  });

  it('a stream the upstream breaks mid-way: one record, outcome error', async () => {
    const response = await proxy(['broken']);
    const reader = response.body!.getReader();
    let received = 0;
    await expect(
      (async () => {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return;
          received += value.byteLength;
        }
      })(),
    ).rejects.toBeDefined();
    expect(await oneCall(response)).toMatchObject({
      route: '/broken',
      status: 200,
      outcome: 'error',
      bytesOut: received,
    });
  });

  it('calls through an admin session carry no role or token, only ids', async () => {
    const response = await proxy(['admin', 'stats'], { cookie: rootCookie });
    await response.arrayBuffer();
    const record = await oneCall(response);
    expect(record).toMatchObject({ userId: ROOT, sessionIdHash: sidHash(sids.root), status: 200, outcome: 'complete' });
  });
});

describe('admin actions are on record: actor, target, fingerprint, never a key', () => {
  it("a user's own key stored and deleted (PUT/DELETE /api/keys/<upstream>)", async () => {
    const put = await admin.userKey('own', { cookie: aliceCookie, method: 'PUT', body: { key: keys.own } });
    const stored = await jsonOf(put);
    expect(put.status).toBe(201);
    expect(stored.fingerprint).toBe(fp(keys.own));
    const [putRecord] = await adminRecords('user_key.put');
    expect(putRecord).toEqual({
      type: 'admin',
      id: putRecord!.id,
      at: putRecord!.at,
      action: 'user_key.put',
      actor: ALICE,
      upstream: 'own',
      fingerprint: fp(keys.own),
      outcome: 'stored',
    });

    // The key is used for her calls, and the call record names it by fingerprint.
    const call = await proxy(['items', '5'], { upstream: 'own' });
    await call.arrayBuffer();
    expect(await oneCall(call)).toMatchObject({ upstream: 'own', keyFingerprint: fp(keys.own), status: 200 });

    const del = await admin.userKey('own', { cookie: aliceCookie, method: 'DELETE' });
    expect(del.status).toBe(204);
    const deletes = await adminRecords('user_key.delete');
    expect(deletes).toHaveLength(1);
    expect(deletes[0]).toMatchObject({ action: 'user_key.delete', actor: ALICE, upstream: 'own', outcome: 'deleted' });
    // Deleting again is refused and not recorded a second time.
    expect((await admin.userKey('own', { cookie: aliceCookie, method: 'DELETE' })).status).toBe(403);
    expect(await adminRecords('user_key.delete')).toHaveLength(1);
  });

  it("an admin revokes a user's sessions", async () => {
    const response = await admin.revokeSessions(BOB);
    expect(response.status).toBe(200);
    const records = await adminRecords('sessions.revoke');
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ actor: ROOT, targetUser: BOB, outcome: 'revoked' });
    // Bob's session is gone; a refused attempt is not an admin action.
    const bob = await proxy(['items', '1'], { cookie: bobCookie });
    expect(bob.status).toBe(401);
    await bob.arrayBuffer();
    expect(await adminRecords('sessions.revoke')).toHaveLength(1);
    // A non-admin cannot, and that is not recorded either.
    await expectError(await admin.revokeSessions(ALICE, { cookie: aliceCookie }), 403, 'forbidden');
    expect(await adminRecords('sessions.revoke')).toHaveLength(1);
  });

  it('key add, rotate (canary passes, fails, skipped), rollback and revoke through the admin API', async () => {
    const rotRequests = () => upstream.requests.filter((r) => r.url.startsWith('/v1/canary')).length;

    // add: a managed version, not serving yet.
    const added = await admin.action('rot', 'versions', { body: { key: keys.added } });
    expect(added.status).toBe(201);
    const addedBody = await jsonOf<{ version: { fingerprint: string; state: string } }>(added);
    expect(addedBody.version).toMatchObject({ fingerprint: fp(keys.added), state: 'next' });
    expect(await adminRecords('key.add')).toEqual([
      expect.objectContaining({ actor: ROOT, upstream: 'rot', fingerprint: fp(keys.added), outcome: 'next' }),
    ]);

    // rotate, canary passes: traffic switches.
    canaryAccepts.add(keys.rotated);
    const canariesBefore = rotRequests();
    const rotated = await admin.action('rot', 'rotate', { body: { key: keys.rotated, rotationId: 'audit-1' } });
    const rotation = (await jsonOf<{ rotation: Record<string, unknown> }>(rotated)).rotation;
    expect(rotated.status).toBe(200);
    expect(rotation).toMatchObject({
      id: 'audit-1',
      state: 'switched',
      to: fp(keys.rotated),
      from: [fp(keys.rot)],
      canaryStatus: 200,
      actor: ROOT,
    });
    expect(rotRequests()).toBe(canariesBefore + 1);
    const call = await proxy(['items', '9'], { upstream: 'rot' });
    await call.arrayBuffer();
    expect(await oneCall(call)).toMatchObject({ upstream: 'rot', keyFingerprint: fp(keys.rotated) });
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(keys.rotated);

    // rotate, canary refuses: 409, nothing switches, the failure is on record.
    const refused = await admin.action('rot', 'rotate', { body: { key: keys.refused, rotationId: 'audit-2' } });
    expect(refused.status).toBe(409);
    expect((await jsonOf<{ rotation: Record<string, unknown> }>(refused)).rotation).toMatchObject({
      state: 'canary_failed',
      canaryStatus: 401,
    });

    // rotate with skipCanary: switches without a canary request, even to a key the canary would refuse.
    const canaries = rotRequests();
    const skipped = await admin.action('rot', 'rotate', {
      body: { key: keys.skipped, rotationId: 'audit-3', skipCanary: true },
    });
    expect(skipped.status).toBe(200);
    expect((await jsonOf<{ rotation: Record<string, unknown> }>(skipped)).rotation).toMatchObject({
      state: 'switched',
      canaryStatus: null,
      to: fp(keys.skipped),
      from: [fp(keys.rotated)],
    });
    expect(rotRequests()).toBe(canaries);
    const afterSkip = await proxy(['items', '10'], { upstream: 'rot' });
    await afterSkip.arrayBuffer();
    expect(await oneCall(afterSkip)).toMatchObject({ keyFingerprint: fp(keys.skipped) });

    const rotations = await adminRecords('key.rotate');
    expect(rotations.map((r) => [r.rotationId, r.fingerprint, r.outcome, r.actor, r.upstream]).reverse()).toEqual([
      ['audit-1', fp(keys.rotated), 'switched', ROOT, 'rot'],
      ['audit-2', fp(keys.refused), 'canary_failed', ROOT, 'rot'],
      ['audit-3', fp(keys.skipped), 'switched', ROOT, 'rot'],
    ]);

    // rollback: the version before the last switch serves again.
    const rolled = await admin.action('rot', 'rollback', { body: { rotationId: 'audit-3' } });
    expect(rolled.status).toBe(200);
    expect((await jsonOf<{ rotation: Record<string, unknown> }>(rolled)).rotation).toMatchObject({
      id: 'audit-3',
      state: 'rolled_back',
    });
    expect(await adminRecords('key.rollback')).toEqual([
      expect.objectContaining({
        actor: ROOT,
        upstream: 'rot',
        rotationId: 'audit-3',
        fingerprint: fp(keys.skipped),
        outcome: 'rolled_back',
      }),
    ]);
    const afterRollback = await proxy(['items', '11'], { upstream: 'rot' });
    await afterRollback.arrayBuffer();
    expect(await oneCall(afterRollback)).toMatchObject({ keyFingerprint: fp(keys.rotated) });

    // revoke the added version by fingerprint.
    const revoked = await admin.revoke({ body: { fingerprint: fp(keys.added) } });
    expect(revoked.status).toBe(200);
    expect(await jsonOf(revoked)).toEqual({
      fingerprint: fp(keys.added),
      revoked: [{ upstream: 'rot', version: `managed:${fp(keys.added)}` }],
    });
    expect(await adminRecords('key.revoke')).toEqual([
      expect.objectContaining({ actor: ROOT, upstream: 'rot', fingerprint: fp(keys.added), outcome: 'revoked' }),
    ]);
  });

  it('an admin action through a bearer (mobile) session is recorded with that actor and needs no CSRF header', async () => {
    const key = randomSecret('bearer');
    secretsToCheck.push(key);
    const response = await admin.action('rot', 'versions', {
      bearer: rootBearer,
      cookie: null,
      csrf: false,
      origin: null,
      body: { key },
    });
    expect(response.status).toBe(201);
    const records = await adminRecords('key.add');
    expect(records[0]).toMatchObject({ actor: ROOT, upstream: 'rot', outcome: 'next' });
  });
});

describe('GET /api/admin/audit', () => {
  it('needs a session (401) with the admin role (403), and the CSRF header for cookie sessions', async () => {
    await expectError(await admin.audit('', { cookie: null }), 401, 'unauthenticated');
    await expectError(await admin.audit('', { cookie: aliceCookie }), 403, 'forbidden');
    await expectError(await admin.audit('?format=jsonl', { cookie: aliceCookie }), 403, 'forbidden');
    await expectError(await admin.audit('', { csrf: false }), 403, 'csrf_failed');
    await expectError(await admin.audit('', { method: 'POST', body: {} }), 405, 'method_not_allowed');
    const viaBearer = await admin.audit('?limit=1', { bearer: rootBearer, cookie: null, csrf: false });
    expect(viaBearer.status).toBe(200);
    const ok = await admin.audit('?limit=1');
    expect(ok.status).toBe(200);
    expect(ok.headers.get('cache-control')).toBe('private, no-store');
  });

  it('answers newest first, every record once, the same as the audit log holds', async () => {
    const all = await allRecords();
    const response = await admin.audit('?limit=1000');
    const body = await jsonOf<{ records: AuditRecord[]; cursor: string | null }>(response);
    expect(body.cursor).toBeNull();
    expect(body.records).toEqual(all);
    const ats = body.records.map((r) => Date.parse(r.at));
    expect(ats).toEqual([...ats].sort((a, b) => b - a));
    expect(new Set(body.records.map((r) => r.id)).size).toBe(body.records.length);
  });

  it('filters by type, upstream, userId, action, outcome, fingerprint and since/until', async () => {
    const all = await allRecords();
    expect(all.length).toBeGreaterThan(20);
    const get = async (query: string) => {
      const response = await admin.audit(`?limit=1000&${query}`);
      const text = await response.text();
      expect(response.status, text).toBe(200);
      return (JSON.parse(text) as { records: AuditRecord[] }).records;
    };
    const calls = all.filter((r) => r.type === 'call');
    const admins = all.filter((r) => r.type === 'admin');
    expect(calls.length).toBeGreaterThan(0);
    expect(admins.length).toBeGreaterThan(0);
    expect(await get('type=call')).toEqual(calls);
    expect(await get('type=admin')).toEqual(admins);
    expect(await get('upstream=down')).toEqual(all.filter((r) => r.upstream === 'down'));
    expect(await get('upstream=rot')).toEqual(all.filter((r) => r.upstream === 'rot'));
    expect((await get('upstream=rot')).some((r) => r.type === 'admin')).toBe(true);
    const alice = await get(`userId=${encodeURIComponent(ALICE)}`);
    expect(alice).toEqual(
      all.filter((r) => (r.type === 'call' ? r.userId === ALICE : r.actor === ALICE || r.targetUser === ALICE)),
    );
    expect(alice.some((r) => r.type === 'admin')).toBe(true);
    expect(await get(`userId=${encodeURIComponent(BOB)}`)).toEqual(
      all.filter((r) => (r.type === 'call' ? r.userId === BOB : r.targetUser === BOB)),
    );
    expect(await get('action=key.rotate')).toEqual(all.filter((r) => r.type === 'admin' && r.action === 'key.rotate'));
    expect(await get('action=key.rotate')).toHaveLength(3);
    expect(await get('outcome=aborted')).toEqual(all.filter((r) => r.outcome === 'aborted'));
    expect(await get('outcome=aborted')).toHaveLength(1);
    expect(await get('outcome=refused&type=call')).toEqual(calls.filter((r) => r.outcome === 'refused'));
    expect(await get(`fingerprint=${fp(keys.rotated)}`)).toEqual(
      all.filter((r) => (r.type === 'call' ? r.keyFingerprint : r.fingerprint) === fp(keys.rotated)),
    );
    expect(await get('upstream=nothing-here')).toEqual([]);
    // Calls to an upstream that is not configured are recorded as "(unknown)", and can be filtered for.
    const unknown = all.filter((r) => r.upstream === '(unknown)');
    expect(unknown.length).toBeGreaterThan(0);
    expect(await get(`upstream=${encodeURIComponent('(unknown)')}`)).toEqual(unknown);
    expect(await get('upstream=(unknown)')).toEqual(unknown);

    // since/until on the record time, both ends included.
    const times = [...new Set(all.map((r) => Date.parse(r.at)))].sort((a, b) => a - b);
    const since = times[Math.floor(times.length / 4)]!;
    const until = times[Math.floor((times.length * 3) / 4)]!;
    const iso = (ms: number) => encodeURIComponent(new Date(ms).toISOString());
    const inWindow = all.filter((r) => Date.parse(r.at) >= since && Date.parse(r.at) <= until);
    expect(inWindow.length).toBeGreaterThan(0);
    expect(inWindow.length).toBeLessThan(all.length);
    expect(await get(`since=${iso(since)}&until=${iso(until)}`)).toEqual(inWindow);
    expect(await get(`since=${iso(since)}`)).toEqual(all.filter((r) => Date.parse(r.at) >= since));
    expect(await get(`until=${iso(until)}`)).toEqual(all.filter((r) => Date.parse(r.at) <= until));
    expect(await get(`since=${iso(since)}&until=${iso(until)}&type=admin`)).toEqual(
      inWindow.filter((r) => r.type === 'admin'),
    );
    // An offset form of the same instant is the same filter.
    const offset = new Date(since + 2 * 3_600_000).toISOString().replace('Z', '+02:00');
    expect(await get(`since=${encodeURIComponent(offset)}`)).toEqual(all.filter((r) => Date.parse(r.at) >= since));
    expect(await get(`since=${iso(times.at(-1)! + 1)}`)).toEqual([]);
  });

  it('refuses unknown filters and bad values with 400', async () => {
    for (const query of [
      '?foo=1',
      '?type=call&secret=1',
      '?type=bogus',
      '?since=yesterday',
      '?until=2026-13-45T99:00:00Z',
      // Date.parse reads these; ISO 8601 they are not.
      '?since=' + encodeURIComponent('Tue, 01 Jan 2030'),
      '?until=-1',
      '?since=2026-11-23T20:00:00',
      // Which copy wins is not guessed.
      '?type=call&type=admin',
      '?limit=1&limit=2',
      // A user id is any printable ASCII (an OIDC sub may hold spaces or be a URL), nothing else.
      '?userId=' + encodeURIComponent('alice\nsmith'),
      '?userId=' + encodeURIComponent('oidc:é'),
      '?userId=' + 'x'.repeat(301),
      '?upstream=' + encodeURIComponent('<script>'),
      '?action=' + 'a'.repeat(300),
      '?format=jsonl&foo=1',
      '?format=xml',
      '?__proto__=1',
    ]) {
      await expectError(await admin.audit(query), 400, 'bad_request');
    }
  });

  it('limit is 1 to 1000', async () => {
    for (const limit of ['0', '-1', '1001', '1.5', 'abc', '', '1e3x'])
      await expectError(await admin.audit(`?limit=${limit}`), 400, 'bad_request');
    // A cursor no store makes is refused, not read as none (which would start the pages over).
    for (const cursor of ['abc', '1-x', '-1', '1.5', '9'.repeat(21)]) await expectError(await admin.audit(`?cursor=${cursor}`), 400, 'bad_request');
    // Nor one of another store's form (SQLite's numbers here, where Redis's stream ids are `<ms>-<seq>`), or one too
    // long for this store's ids.
    for (const cursor of ['12345', `${'9'.repeat(17)}-0`, `${'9'.repeat(20)}-${'9'.repeat(20)}`])
      await expectError(await admin.audit(`?cursor=${cursor}`), 400, 'bad_request');
    const one = await jsonOf<{ records: AuditRecord[]; cursor: string | null }>(await admin.audit('?limit=1'));
    expect(one.records).toHaveLength(1);
    expect(one.cursor).toBe(one.records[0]!.id);
    expect((await admin.audit('?limit=1000')).status).toBe(200);
    // Without a limit, a page holds up to 100.
    const all = await allRecords();
    const unlimited = await jsonOf<{ records: AuditRecord[] }>(await admin.audit(''));
    expect(unlimited.records).toEqual(all.slice(0, 100));
  });

  it('cursor paging returns each record exactly once, in order, filtered or not', async () => {
    const all = await allRecords();
    for (const [filter, expected] of [
      ['', all],
      ['&type=call', all.filter((r) => r.type === 'call')],
      ['&type=admin', all.filter((r) => r.type === 'admin')],
    ] as const) {
      const seen: AuditRecord[] = [];
      let cursor: string | null = null;
      for (let pages = 0; pages < 200; pages++) {
        const query: string = `?limit=3${filter}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
        const page: { records: AuditRecord[]; cursor: string | null } = await jsonOf(await admin.audit(query));
        expect(page.records.length).toBeLessThanOrEqual(3);
        seen.push(...page.records);
        cursor = page.cursor;
        if (cursor === null) break;
      }
      expect(cursor).toBeNull();
      expect(seen).toEqual(expected);
    }
    // A cursor that is not one of ours is refused: read as "from the start", a client would page over again unnoticed.
    await expectError(await admin.audit(`?limit=2&cursor=${encodeURIComponent('not-a-cursor')}`), 400, 'bad_request');
  });

  it('format=jsonl exports every match as JSON Lines, oldest first', async () => {
    const all = await allRecords();
    const response = await admin.audit('?format=jsonl');
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^application\/x-ndjson/);
    expect(response.headers.get('cache-control')).toBe('private, no-store');
    const text = await response.text();
    expect(text.endsWith('\n')).toBe(true);
    const lines = text.split('\n').slice(0, -1);
    expect(lines.length).toBe(all.length);
    const records = lines.map((line) => {
      expect(line.trim()).toBe(line);
      const value = JSON.parse(line) as AuditRecord;
      expect(typeof value).toBe('object');
      return value;
    });
    expect(records).toEqual([...all].reverse());

    const filtered = await admin.audit('?format=jsonl&type=admin&upstream=rot');
    const filteredLines = (await filtered.text()).split('\n').filter(Boolean);
    expect(filteredLines.map((line) => JSON.parse(line) as AuditRecord)).toEqual(
      all.filter((r) => r.type === 'admin' && r.upstream === 'rot').reverse(),
    );
    const empty = await admin.audit('?format=jsonl&upstream=nothing-here');
    expect(empty.status).toBe(200);
    expect(await empty.text()).toBe('');
  });
});

describe('admin keys API', () => {
  it('GET /api/admin/keys lists every service key by fingerprint, never by value', async () => {
    await expectError(await admin.keys({ cookie: null }), 401, 'unauthenticated');
    await expectError(await admin.keys({ cookie: aliceCookie }), 403, 'forbidden');
    await expectError(await admin.keys({ method: 'POST', body: {} }), 405, 'method_not_allowed');
    const response = await admin.keys();
    expect(response.status).toBe(200);
    const text = await response.text();
    const body = JSON.parse(text) as {
      upstreams: Array<{ upstream: string; versions: Array<Record<string, unknown>>; rotations: unknown[] }>;
    };
    expect(body.upstreams.map((u) => u.upstream).sort()).toEqual(['down', 'echo', 'gone', 'rot', 'slow']);
    const rot = body.upstreams.find((u) => u.upstream === 'rot')!;
    expect(rot.versions.map((v) => v.fingerprint)).toEqual(
      expect.arrayContaining([fp(keys.rot), fp(keys.added), fp(keys.rotated), fp(keys.refused), fp(keys.skipped)]),
    );
    for (const ring of body.upstreams) {
      for (const version of ring.versions) {
        expect(version.fingerprint).toMatch(/^[0-9a-f]{12}$/);
        expect(Object.keys(version)).not.toContain('value');
        expect(Object.keys(version)).not.toContain('key');
      }
    }
    expect(rot.versions.find((v) => v.fingerprint === fp(keys.added))).toMatchObject({
      state: 'revoked',
      status: 'revoked',
    });
    expect(rot.versions.find((v) => v.fingerprint === fp(keys.rotated))).toMatchObject({
      state: 'active',
      status: 'serving',
    });
    expectNoSecretIn(text);
  });

  it('POST rotate with skipCanary switches and is audited; a repeat of the same rotation id changes nothing', async () => {
    const key = randomSecret('skip2');
    secretsToCheck.push(key);
    const before = (await adminRecords('key.rotate')).length;
    const response = await admin.action('echo', 'rotate', { body: { key, skipCanary: true } });
    expect(response.status).toBe(200);
    const { rotation } = await jsonOf<{ rotation: { id: string; state: string; to: string } }>(response);
    expect(rotation).toMatchObject({ id: `rot-${fp(key)}`, state: 'switched', to: fp(key) });
    const records = await adminRecords('key.rotate');
    expect(records).toHaveLength(before + 1);
    expect(records[0]).toMatchObject({
      actor: ROOT,
      upstream: 'echo',
      fingerprint: fp(key),
      rotationId: rotation.id,
      outcome: 'switched',
    });
    const call = await proxy(['items', '1']);
    await call.arrayBuffer();
    expect(await oneCall(call)).toMatchObject({ keyFingerprint: fp(key) });
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(key);
    // Without a canary declared and without skipCanary, a rotation is refused (400) and not recorded.
    const noCanary = randomSecret('nocanary');
    secretsToCheck.push(noCanary);
    await expectError(await admin.action('echo', 'rotate', { body: { key: noCanary } }), 400, 'bad_request');
    expect(await adminRecords('key.rotate')).toHaveLength(before + 1);
  });

  it('POST revoke: an unknown fingerprint is 404 not_found, a malformed one 400, and neither is recorded', async () => {
    const before = (await adminRecords()).length;
    await expectError(await admin.revoke({ body: { fingerprint: 'abcdefabcdef' } }), 404, 'not_found');
    await expectError(await admin.revoke({ body: { fingerprint: 'ABC' } }), 400, 'bad_request');
    await expectError(await admin.revoke({ body: { fingerprint: keys.echo } }), 400, 'bad_request');
    await expectError(await admin.action('rot', 'rollback', { body: { rotationId: 'never-was' } }), 404, 'not_found');
    expect(await adminRecords()).toHaveLength(before);
  });

  it('bad bodies (extra fields, wrong types, not JSON, not an object) are 400 and change nothing', async () => {
    const before = (await adminRecords()).length;
    const ring = JSON.stringify((await jsonOf(await admin.keys())).upstreams);
    const fresh = randomSecret('bad');
    secretsToCheck.push(fresh);
    const bad: Array<[string, string, ApiOptions]> = [
      ['rot', 'rotate', { body: { key: fresh, skipCanary: true, extra: 1 } }],
      ['rot', 'rotate', { body: { key: 12345678, skipCanary: true } }],
      ['rot', 'rotate', { body: { key: fresh, rotationId: 7, skipCanary: true } }],
      ['rot', 'rotate', { body: { key: fresh, skipCanary: 'yes' } }],
      ['rot', 'rotate', { body: { skipCanary: true } }],
      ['rot', 'rotate', { body: [fresh] }],
      ['rot', 'rotate', { body: null }],
      ['rot', 'rotate', { rawBody: '{"key":', method: 'POST' }],
      [
        'rot',
        'rotate',
        { rawBody: JSON.stringify({ key: fresh, skipCanary: true }), contentType: 'text/plain', method: 'POST' },
      ],
      ['rot', 'rotate', { body: { key: 'short', skipCanary: true } }],
      ['rot', 'rotate', { body: { key: ` ${fresh}`, skipCanary: true } }],
      ['rot', 'versions', { body: { key: fresh, state: 'active' } }],
      ['rot', 'versions', { body: { key: true } }],
      ['rot', 'rollback', { body: { rotationId: 'audit-3', force: true } }],
      ['rot', 'rollback', { body: { rotationId: ['audit-3'] } }],
      ['down', 'rotate', { body: { key: fresh, skipCanary: true, rotationId: 'has space' } }],
    ];
    for (const [upstreamId, action, options] of bad) {
      await expectError(await admin.action(upstreamId, action, options), 400, 'bad_request');
    }
    // An action that does not exist is a 404 whatever the body.
    await expectError(await admin.action('rot', 'promote', { body: { key: fresh, extra: 1 } }), 404, 'route_not_found');
    await expectError(await admin.action('rot', 'promote', { rawBody: '{"key":', method: 'POST' }), 404, 'route_not_found');
    await expectError(await admin.revoke({ body: { fingerprint: fp(keys.rot), why: 'x' } }), 400, 'bad_request');
    await expectError(await admin.revoke({ body: { fingerprint: 12 } }), 400, 'bad_request');
    await expectError(await admin.revoke({ body: ['x'] }), 400, 'bad_request');
    // own upstream keys are users' keys, not a ring.
    await expectError(
      await admin.action('own', 'rotate', { body: { key: fresh, skipCanary: true } }),
      400,
      'bad_request',
    );
    expect(await adminRecords()).toHaveLength(before);
    expect(JSON.stringify((await jsonOf(await admin.keys())).upstreams)).toBe(ring);
  });

  it('methods, CSRF, roles and unknown targets', async () => {
    const before = (await adminRecords()).length;
    const body = { key: randomSecret('m'), skipCanary: true };
    secretsToCheck.push(body.key);
    // GET on a POST-only route: 405 with Allow.
    const getAction = await admin.action('rot', 'rotate', { method: 'GET' });
    expect(getAction.headers.get('allow')).toBe('POST');
    await expectError(getAction, 405, 'method_not_allowed');
    const getRevoke = await admin.revoke({ method: 'GET' });
    expect(getRevoke.headers.get('allow')).toBe('POST');
    await expectError(getRevoke, 405, 'method_not_allowed');
    await expectError(await admin.action('rot', 'versions', { method: 'PUT', body }), 405, 'method_not_allowed');
    // Cookie sessions: the CSRF header and an allowed Origin.
    await expectError(await admin.action('rot', 'rotate', { body, csrf: false }), 403, 'csrf_failed');
    await expectError(await admin.action('rot', 'rotate', { body, origin: null }), 403, 'csrf_failed');
    await expectError(
      await admin.action('rot', 'rotate', { body, origin: 'https://evil.example' }),
      403,
      'csrf_failed',
    );
    await expectError(
      await admin.revoke({ body: { fingerprint: fp(keys.rot) }, origin: 'https://evil.example' }),
      403,
      'csrf_failed',
    );
    // Roles.
    await expectError(await admin.action('rot', 'rotate', { body, cookie: aliceCookie }), 403, 'forbidden');
    await expectError(
      await admin.revoke({ body: { fingerprint: fp(keys.rot) }, cookie: aliceCookie }),
      403,
      'forbidden',
    );
    await expectError(await admin.action('rot', 'rotate', { body, cookie: null }), 401, 'unauthenticated');
    // Unknown targets.
    await expectError(await admin.action('nope', 'rotate', { body }), 404, 'upstream_not_found');
    await expectError(await admin.action('rot', 'explode', { body }), 404, 'route_not_found');
    expect(await adminRecords()).toHaveLength(before);
    // The primary key still serves: none of the above changed anything.
    const call = await proxy(['items', '12'], { upstream: 'rot' });
    await call.arrayBuffer();
    expect(await oneCall(call)).toMatchObject({ keyFingerprint: fp(keys.rotated) });
  });
});

function everySecret(): string[] {
  const cookieValue = (cookie: string) => cookie.slice(cookie.indexOf('=') + 1);
  return [
    ...Object.entries(env)
      .filter(([name]) => /SECRET|KEY/.test(name))
      .map(([, value]) => value),
    ...Object.values(keys),
    ...secretsToCheck,
    cookieValue(aliceCookie),
    cookieValue(rootCookie),
    cookieValue(bobCookie),
    rootBearer,
  ];
}

/** Secrets in every form; with `sessionIds`, the raw session ids too (records keep only their hash). */
function expectNoSecretIn(text: string, sessionIds = true): void {
  for (const secret of [...everySecret(), ...(sessionIds ? Object.values(sids) : [])]) {
    for (const form of expectedForms(secret)) {
      expect(text.includes(form), `a form of a secret (${secret.slice(0, 5)}…) is in the text`).toBe(false);
    }
  }
}

describe('no secret in the trail', () => {
  it('no record (as stored, as served, as exported) holds a secret, a session id or a token, in any encoding', async () => {
    const all = await allRecords();
    expect(all.length).toBeGreaterThan(25);
    expect(everySecret().length).toBeGreaterThan(15);
    // The store's own bytes, read directly.
    const raw = await store.readLog('audit', { limit: 100_000, order: 'asc' });
    expect(raw.length).toBe(all.length);
    expectNoSecretIn(raw.map((entry) => entry.value).join('\n'));
    expectNoSecretIn(JSON.stringify(all));
    expectNoSecretIn(await (await admin.audit('?format=jsonl')).text());
    expectNoSecretIn(await (await admin.audit('?limit=1000')).text());
    // Every record has only the documented fields.
    for (const record of all) {
      if (record.type === 'call') expect(Object.keys(record).sort()).toEqual(callFields(record));
      else {
        for (const name of Object.keys(record)) {
          expect([
            'type',
            'id',
            'at',
            'action',
            'actor',
            'upstream',
            'fingerprint',
            'rotationId',
            'targetUser',
            'alertId',
            'outcome',
          ]).toContain(name);
        }
      }
    }
    // Every write landed (none was lost on the way), and the log lines are clean too.
    expect(store.appends).toBe(all.length);
    // (Log lines name the session id, which is not a secret; keys, tokens and cookies never appear.)
    expectNoSecretIn(logLines.join(''), false);
  });
});
