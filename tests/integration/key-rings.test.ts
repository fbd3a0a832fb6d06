import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleKeyAction, handleKeyList, handleKeyRevoke } from '../../lib/core/api/admin';
import { ConfigError, defineUpstream, type UpstreamDefinition } from '../../lib/core/config/load';
import type { UpstreamInput } from '../../lib/core/config/schema';
import { KeywardError } from '../../lib/core/errors';
import type { Rotation, RotationResult, VersionView } from '../../lib/core/keys/rings';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import type { DetectorInput } from '../../lib/core/detect/config';
import { keyFingerprints } from '../../lib/core/keys/fingerprint';
import { RedisStore } from '../../lib/store/redis';
import { StoreUnavailableError } from '../../lib/store/types';
import { Vault } from '../../lib/core/vault/seal';
import { freePort } from '../fixtures/app-server';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { REDIS_URL, capturingLogger, findLeak, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';

/**
 * Key rings for service keys, through the real pipeline (`handleProxy`) and `KeyRings` on real Redis, against
 * a real node:http upstream that accepts a configurable set of keys and records which key each request
 * carried, by label only (key values are never printed, not even in a failed assertion).
 */
const APP_ORIGIN = 'https://app.keyward.test';
const DAY = 86_400_000;
const sessionSecrets = testSessionSecrets();
/** Fingerprints as every runtime here computes them: keyed by KEYWARD_SESSION_SECRET. */
const fingerprint = (value: string) => keyFingerprints(sessionSecrets.KEYWARD_SESSION_SECRET).of(value);
const vaultSecret = randomSecret('vault');
/** Every key value any test made: nothing of these may reach a response, a list, a rotation or a log line. */
const allKeys: string[] = [];
/** Every captured log, for the final leak check. */
const allLogs: string[][] = [];
function newLog(): ReturnType<typeof capturingLogger> {
  const log = capturingLogger();
  allLogs.push(log.lines);
  return log;
}
const globalLog = newLog();

// Sessions last long enough for the injected clock of the expiry tests (up to ~100 days ahead).
let userCookie: string;
let adminCookie: string;

// ---------------------------------------------------------------------------------------------------------
// The key-checking upstream
// ---------------------------------------------------------------------------------------------------------

interface Recorded {
  readonly method: string;
  readonly path: string;
  /** The label of the key the request carried: a registered name, 'none' or 'unknown'. Never the value. */
  readonly label: string;
  readonly canary: boolean;
  readonly userAgent: string;
  status: number;
}

interface KeyServer {
  readonly origin: string;
  readonly calls: Recorded[];
  /** Proxied calls by path (every proxied call in these tests has its own path). */
  readonly byPath: Map<string, Recorded>;
  /** Names a key so requests carrying it are recorded under that label. */
  label(key: string, name: string): void;
  /** The labels the upstream accepts (200); any other key gets 401. */
  accept(...names: string[]): void;
  /** How the canary path answers: 'check' (like any call), 'drop' (connection destroyed), or a fixed status. */
  canary: 'check' | 'drop' | number;
  /** Key values written into every 200 answer, as an endpoint that lists the account's keys would. */
  listed: string[];
  /** Holds the next canary (answered as `canary` says) until `release`; `reached` settles when it arrives. */
  holdCanary(): { readonly reached: Promise<void>; release(): void };
  labelsSince(index: number, options?: { canary?: boolean }): string[];
  close(): Promise<void>;
}

const CANARY_PATH = '/v1/health';

async function startKeyServer(): Promise<KeyServer> {
  const labels = new Map<string, string>();
  let accepted = new Set<string>();
  const calls: Recorded[] = [];
  const byPath = new Map<string, Recorded>();
  const self = { canary: 'check' as KeyServer['canary'], listed: [] as string[] };
  const server: Server = createServer((req, res) => {
    const presented = req.headers['x-api-key'];
    const label = presented === undefined ? 'none' : typeof presented === 'string' ? (labels.get(presented) ?? 'unknown') : 'unknown';
    const path = (req.url ?? '').split('?')[0]!;
    const canary = path === CANARY_PATH;
    const record: Recorded = { method: req.method ?? '', path, label, canary, userAgent: String(req.headers['user-agent'] ?? ''), status: 0 };
    calls.push(record);
    if (!canary) byPath.set(path, record);
    req.resume();
    if (canary && held) {
      const { arrived, released } = held;
      held = null;
      arrived();
      void released.then(() => answer(req, res, record, canary));
      return;
    }
    answer(req, res, record, canary);
  });
  const answer = (req: IncomingMessage, res: ServerResponse, record: Recorded, canary: boolean) => {
    const { label } = record;
    if (canary && self.canary === 'drop') {
      req.socket.destroy();
      return;
    }
    let status = accepted.has(label) ? 200 : 401;
    if (canary && typeof self.canary === 'number') status = self.canary;
    record.status = status;
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(status === 200 ? { ok: true, keys: self.listed } : { error: 'refused' }));
  };
  let held: { arrived: () => void; released: Promise<void> } | null = null;
  server.keepAliveTimeout = 1_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return Object.assign(self, {
    origin: `http://127.0.0.1:${port}`,
    calls,
    byPath,
    label(key: string, name: string) {
      labels.set(key, name);
    },
    accept(...names: string[]) {
      accepted = new Set(names);
    },
    holdCanary() {
      let arrived!: () => void;
      let release!: () => void;
      const reached = new Promise<void>((resolve) => (arrived = resolve));
      held = { arrived, released: new Promise<void>((resolve) => (release = resolve)) };
      return { reached, release };
    },
    labelsSince(index: number, options: { canary?: boolean } = {}) {
      return calls.slice(index).filter((c) => options.canary === undefined || c.canary === options.canary).map((c) => c.label);
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close').catch(() => {});
    },
  });
}

// ---------------------------------------------------------------------------------------------------------
// Runtimes on Redis
// ---------------------------------------------------------------------------------------------------------

const servers: KeyServer[] = [];
const stores: RedisStore[] = [];
const runtimes: Runtime[] = [];
const prefixes: string[] = [];

function newKey(server: KeyServer, name: string): string {
  const key = randomSecret(`ring${name.replace(/[^a-z0-9]/gi, '')}`);
  allKeys.push(key);
  server.label(key, name);
  return key;
}

const ROUTES: UpstreamInput['routes'] = [{ method: 'GET', path: '/items/:id', roles: ['user'] }];

function svc(origin: string, keys: UpstreamInput['keys'] = { canary: { method: 'GET', path: '/health' } }, id = 'svc', env = 'SVC_KEY'): UpstreamDefinition {
  return defineUpstream(id, {
    baseUrl: `${origin}/v1/`,
    auth: { type: 'header', name: 'x-api-key', secret: { env } },
    routes: ROUTES,
    timeoutMs: 20_000,
    keys,
  });
}

interface Ring {
  readonly server: KeyServer;
  readonly prefix: string;
  /** The key in auth.secret (SVC_KEY), label 'old'. */
  readonly old: string;
  runtime(options?: RingRuntimeOptions): Promise<Runtime>;
}

interface RingRuntimeOptions {
  /** null: no KEYWARD_VAULT_SECRET. */
  vault?: string | null;
  now?: () => number;
  logger?: Logger;
  upstreams?: UpstreamDefinition[];
  env?: Record<string, string>;
  /** Another key prefix (default: the ring's). */
  prefix?: string;
  detector?: DetectorInput;
}

async function ring(): Promise<Ring> {
  const server = await startKeyServer();
  servers.push(server);
  const prefix = `keyward-test-${randomUUID()}:`;
  prefixes.push(prefix);
  const old = newKey(server, 'old');
  server.accept('old');
  return {
    server,
    prefix,
    old,
    async runtime(options: RingRuntimeOptions = {}) {
      const store = new RedisStore(REDIS_URL, { prefix: options.prefix ?? prefix });
      stores.push(store);
      await store.ready();
      const vault = options.vault === undefined ? vaultSecret : options.vault;
      const runtime = createRuntime({
        env: {
          ...sessionSecrets,
          SVC_KEY: old,
          KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
          ...(vault ? { KEYWARD_VAULT_SECRET: vault } : {}),
          ...options.env,
        },
        upstreams: options.upstreams ?? [svc(server.origin)],
        store,
        logger: options.logger ?? globalLog.logger,
        now: options.now,
        detector: options.detector,
      });
      runtimes.push(runtime);
      return runtime;
    },
  };
}

interface Outcome {
  readonly status: number;
  /** The error code when the call failed. */
  readonly code: string | null;
  /** The label of the key the upstream saw for this call, or null when the call never reached it. */
  readonly label: string | null;
}

let callSeq = 0;

/** One proxied GET through the pipeline, with its own path so the upstream's record of it can be found. */
async function call(runtime: Runtime, server: KeyServer, upstreamId = 'svc'): Promise<Outcome> {
  const id = `c${++callSeq}`;
  const request = new Request(`${APP_ORIGIN}/api/proxy/${upstreamId}/items/${id}`, { headers: { cookie: userCookie, 'x-keyward-csrf': '1' } });
  const flat = await responseText(await handleProxy(request, { upstream: upstreamId, path: ['items', id] }, runtime));
  expect(findLeak(flat.text, allKeys) === null, 'a key value reached a proxied response').toBe(true);
  const code = flat.status === 200 ? null : ((JSON.parse(flat.body) as { error?: { code?: string } }).error?.code ?? 'no code');
  return { status: flat.status, code, label: server.byPath.get(`/v1/items/${id}`)?.label ?? null };
}

async function labelOf(runtime: Runtime, server: KeyServer, upstreamId = 'svc'): Promise<string | null> {
  const outcome = await call(runtime, server, upstreamId);
  expect(outcome.status).toBe(200);
  return outcome.label;
}

async function versions(runtime: Runtime, upstreamId = 'svc'): Promise<VersionView[]> {
  const entry = (await runtime.keyRings.list()).find((e) => e.upstream === upstreamId);
  if (!entry) throw new Error(`no ring for ${upstreamId}`);
  expect(findLeak(JSON.stringify(entry), allKeys) === null, 'a key value appears in list()').toBe(true);
  return entry.versions;
}

/** Version id → status, e.g. {"env:SVC_KEY": "fallback", "managed:…": "serving"}. */
async function statuses(runtime: Runtime, upstreamId = 'svc'): Promise<Record<string, string>> {
  return Object.fromEntries((await versions(runtime, upstreamId)).map((v) => [v.id, v.status]));
}

async function rotations(runtime: Runtime, upstreamId = 'svc'): Promise<Rotation[]> {
  const entry = (await runtime.keyRings.list()).find((e) => e.upstream === upstreamId);
  return entry?.rotations ?? [];
}

function expectNoKey(value: unknown, what: string): void {
  expect(findLeak(JSON.stringify(value), allKeys) === null, `a key value appears in ${what}`).toBe(true);
}

/** What a KeyRings call threw, as {code, status, message}. */
async function failure(promise: Promise<unknown>): Promise<{ code: string; status: number; message: string }> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(KeywardError);
    const e = error as KeywardError;
    expect(findLeak(e.message, allKeys) === null, 'a key value appears in an error message').toBe(true);
    return { code: e.code, status: e.status, message: e.message };
  }
  throw new Error('expected the call to fail');
}

const managedId = (key: string) => `managed:${fingerprint(key)}`;

/** An admin API call as a browser sends it (admin session cookie, CSRF header, Origin, JSON body). */
async function admin(
  handler: (request: Request) => Promise<Response>,
  method: 'GET' | 'POST',
  body?: unknown,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const headers: Record<string, string> = { cookie: adminCookie, 'x-keyward-csrf': '1' };
  if (method === 'POST') Object.assign(headers, { origin: APP_ORIGIN, 'content-type': 'application/json' });
  const request = new Request(`${APP_ORIGIN}/api/admin/keys`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const flat = await responseText(await handler(request));
  expect(findLeak(flat.text, allKeys) === null, 'a key value reached an admin API response').toBe(true);
  return { status: flat.status, json: JSON.parse(flat.body) as Record<string, unknown> };
}

/** A ring whose instance `a` rotated to a managed key `fresh` (label 'new'), which now serves. */
async function rotatedToManaged() {
  const r = await ring();
  const a = await r.runtime();
  const fresh = newKey(r.server, 'new');
  r.server.accept('old', 'new');
  expect((await a.keyRings.rotate('svc', fresh, { actor: 'x' })).state).toBe('switched');
  return { r, a, fresh };
}

/** A ring seen by two instances (runtimes) sharing its Redis prefix, and two keys its upstream accepts. */
async function twoInstancesTwoKeys() {
  const s = await ring();
  const [one, two] = [await s.runtime(), await s.runtime()];
  const [k1, k2] = [newKey(s.server, 'k1'), newKey(s.server, 'k2')];
  s.server.accept('old', 'k1', 'k2');
  return { s, one, two, k1, k2 };
}

async function rawRedis<T>(action: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  try {
    return await action(redis);
  } finally {
    redis.disconnect();
  }
}

/** Every key under a prefix (bounded scan). */
async function keysUnder(prefix: string): Promise<string[]> {
  return rawRedis(async (redis) => {
    const found: string[] = [];
    let cursor = '0';
    for (let round = 0; round < 1000; round++) {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      found.push(...keys);
      cursor = next;
      if (cursor === '0') break;
    }
    return found;
  });
}

beforeAll(async () => {
  userCookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:alice', roles: ['user'] }, 200 * 86_400);
  adminCookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:root', roles: ['user', 'admin'] }, 200 * 86_400);
});

afterAll(async () => {
  for (const runtime of runtimes) await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
  await Promise.all(servers.map((server) => server.close()));
  await Promise.all(stores.map((store) => store.close().catch(() => {})));
  for (const prefix of prefixes) {
    const keys = await keysUnder(prefix);
    if (keys.length > 0) await rawRedis((redis) => redis.del(...keys));
  }
});

// ---------------------------------------------------------------------------------------------------------
// 1. A canary that passes
// ---------------------------------------------------------------------------------------------------------

describe('rotation whose canary passes', () => {
  let r: Ring;
  let a: Runtime;
  let fresh: string;

  beforeAll(async () => {
    r = await ring();
    a = await r.runtime();
    fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');
  });

  it('before any rotation the key from auth.secret serves', async () => {
    expect(await labelOf(a, r.server)).toBe('old');
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'serving' });
    expect(await rotations(a)).toEqual([]);
  });

  it('switches after the canary passed; the next call carries the new key; the old version is the fallback', async () => {
    const mark = r.server.calls.length;
    const rotation = await a.keyRings.rotate('svc', fresh, { actor: 'local:root' });
    expectNoKey(rotation, 'a rotation');
    expect(rotation).toMatchObject({
      id: `rot-${fingerprint(fresh)}`,
      upstream: 'svc',
      state: 'switched',
      from: [fingerprint(r.old)],
      to: fingerprint(fresh),
      toVersion: managedId(fresh),
      canaryStatus: 200,
      actor: 'local:root',
    });
    // Exactly one canary, with the new key, on the declared path, before any traffic used it.
    const canaries = r.server.calls.slice(mark);
    expect(canaries.map((c) => [c.method, c.path, c.label, c.canary])).toEqual([['GET', CANARY_PATH, 'new', true]]);
    expect(canaries[0]!.userAgent).toBe('keyward-canary');

    expect(await labelOf(a, r.server)).toBe('new');
    expect(await labelOf(a, r.server)).toBe('new');
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'fallback', [managedId(fresh)]: 'serving' });
    const old = (await versions(a)).find((v) => v.id === 'env:SVC_KEY')!;
    expect(old).toMatchObject({ state: 'retired', fingerprint: fingerprint(r.old) });
    expect(old.graceUntil! - old.retiredAt!).toBe(86_400_000);
    const list = await rotations(a);
    expect(list).toHaveLength(1);
    expect(list[0]).toEqual({ ...rotation, repeated: undefined }); // stored as it is, without the answer's flag
    expect(rotation.repeated).toBe(false);
  });

  it('the same rotation id twice is the same rotation: no second canary, one version', async () => {
    const mark = r.server.calls.length;
    const first = (await rotations(a))[0]!;
    const again = await a.keyRings.rotate('svc', fresh, { actor: 'someone-else' });
    expect(again).toEqual({ ...first, repeated: true });
    const explicit = await a.keyRings.rotate('svc', fresh, { rotationId: first.id, actor: 'someone-else' });
    expect(explicit).toEqual({ ...first, repeated: true });
    expect(r.server.calls.length).toBe(mark);
    expect(await rotations(a)).toHaveLength(1);
    expect((await versions(a)).map((v) => v.id)).toEqual(['env:SVC_KEY', managedId(fresh)]);
    expect(await labelOf(a, r.server)).toBe('new');
  });

  it('the same rotation id with another key → 400 bad_request; nothing is added, no canary is sent', async () => {
    const other = newKey(r.server, 'other');
    r.server.accept('old', 'new', 'other');
    const mark = r.server.calls.length;
    const id = `rot-${fingerprint(fresh)}`;
    const refused = await failure(a.keyRings.rotate('svc', other, { rotationId: id, actor: 'local:root' }));
    expect(refused).toMatchObject({ code: 'bad_request', status: 400 });
    expect(r.server.calls.length).toBe(mark);
    expect((await versions(a)).map((v) => v.id)).toEqual(['env:SVC_KEY', managedId(fresh)]);
    // The same through the admin API: 400 with the documented error shape.
    const viaApi = await admin((request) => handleKeyAction(request, 'svc', 'rotate', a), 'POST', { key: other, rotationId: id });
    expect(viaApi.status).toBe(400);
    expect((viaApi.json.error as { code: string }).code).toBe('bad_request');
    expect(r.server.calls.length).toBe(mark);
    expect(await labelOf(a, r.server)).toBe('new');
  });

  it('the same rotation id sent with two different keys at once, on two instances: one switches, the other → 400', async () => {
    const { s, one, two, k1, k2 } = await twoInstancesTwoKeys();
    const settled = await Promise.allSettled([
      one.keyRings.rotate('svc', k1, { rotationId: 'contested', actor: 'x' }),
      two.keyRings.rotate('svc', k2, { rotationId: 'contested', actor: 'y' }),
    ]);
    const won = settled.filter((x): x is PromiseFulfilledResult<RotationResult> => x.status === 'fulfilled').map((x) => x.value);
    const lost = settled.filter((x): x is PromiseRejectedResult => x.status === 'rejected').map((x) => x.reason as KeywardError);
    expect(won).toHaveLength(1);
    expect(won[0]).toMatchObject({ id: 'contested', state: 'switched' });
    expect(lost.map((e) => e.code)).toEqual(['bad_request']);
    const winner = won[0]!.to === fingerprint(k1) ? 'k1' : 'k2';
    expect(await labelOf(one, s.server)).toBe(winner);
    expect(await labelOf(two, s.server)).toBe(winner);
    expect((await rotations(one)).filter((x) => x.id === 'contested')).toHaveLength(1);
  });

  it("the admin whose rotation lost that race is answered 400, and the key it left in the ring is on the audit trail", async () => {
    const { s, one, two, k1, k2 } = await twoInstancesTwoKeys();
    // The first rotation's canary is held until the second has switched: both keys were added by then.
    const held = s.server.holdCanary();
    const first = admin((request) => handleKeyAction(request, 'svc', 'rotate', one), 'POST', { key: k1, rotationId: 'raced' });
    await held.reached;
    const second = await admin((request) => handleKeyAction(request, 'svc', 'rotate', two), 'POST', { key: k2, rotationId: 'raced' });
    held.release();
    expect([(await first).status, second.status]).toEqual([400, 200]);
    const [winner, loser] = [k2, k1];
    // Every version in the ring is named by a record of the trail.
    const ringPrints = (await versions(one)).filter((v) => v.source === 'managed').map((v) => v.fingerprint);
    expect(ringPrints.sort()).toEqual([fingerprint(k1), fingerprint(k2)].sort());
    const { records } = await one.audit.query({ type: 'admin' }, { limit: 100 });
    const named = (print: string) => records.filter((record) => record.type === 'admin' && record.fingerprint === print).map((record) => record.type === 'admin' && record.action);
    expect(named(fingerprint(winner))).toEqual(['key.rotate']);
    expect(named(fingerprint(loser))).toEqual(['key.add']);
  });

  it('a rotation refused before it added anything puts no key.add on the trail; adding a key already in the ring is "unchanged"', async () => {
    const { one, k1, k2 } = await twoInstancesTwoKeys();
    const post = (action: string, body: unknown) => admin((request) => handleKeyAction(request, 'svc', action, one), 'POST', body);
    expect((await post('versions', { key: k1 })).status).toBe(201);
    expect((await post('versions', { key: k1 })).status).toBe(201);
    expect((await post('rotate', { key: k2, rotationId: 'first' })).status).toBe(200);
    // The id of that rotation with k1, already in the ring: refused before anything is added.
    expect((await post('rotate', { key: k1, rotationId: 'first' })).status).toBe(400);
    const { records } = await one.audit.query({ type: 'admin' }, { limit: 100, order: 'asc' });
    expect(records.map((record) => record.type === 'admin' && [record.action, record.fingerprint, record.outcome])).toEqual([
      ['key.add', fingerprint(k1), 'next'],
      ['key.add', fingerprint(k1), 'unchanged'],
      ['key.rotate', fingerprint(k2), 'switched'],
    ]);
  });

  it('an explicit rotation id is kept, and repeating it is a no-op too', async () => {
    const third = newKey(r.server, 'third');
    r.server.accept('old', 'new', 'third');
    const rotation = await a.keyRings.rotate('svc', third, { rotationId: 'weekly_2030-01', actor: 'local:root' });
    expect(rotation).toMatchObject({ id: 'weekly_2030-01', state: 'switched', from: [fingerprint(fresh)], canaryStatus: 200 });
    expect(rotation.repeated).toBe(false);
    expect(await a.keyRings.rotate('svc', third, { rotationId: 'weekly_2030-01', actor: 'x' })).toEqual({ ...rotation, repeated: true });
    expect(await labelOf(a, r.server)).toBe('third');
    expect((await versions(a)).filter((v) => v.fingerprint === fingerprint(third))).toHaveLength(1);
    // The version it replaced is now the fallback; the first one is retired (its grace outlived by a newer retirement).
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'fallback', [managedId(fresh)]: 'fallback', [managedId(third)]: 'serving' });
    expect((await rotations(a)).map((x) => x.id)).toEqual(['weekly_2030-01', `rot-${fingerprint(fresh)}`]);
  });

  // Start-up refuses an upstream key that is one of Keyward's own secrets (whoever holds it could forge sessions or
  // open the vault); a key added or rotated to later is refused the same, naming the setting and never the value.
  it("Keyward's own secrets are refused as a key (add, rotate, the admin API): 400 naming the setting; nothing added, no canary", async () => {
    const mark = r.server.calls.length;
    const before = await versions(a);
    const own = [
      ['AUTH_SECRET', sessionSecrets.AUTH_SECRET],
      ['KEYWARD_SESSION_SECRET', sessionSecrets.KEYWARD_SESSION_SECRET],
      ['KEYWARD_VAULT_SECRET', vaultSecret],
    ] as const;
    for (const [name, value] of own) {
      for (const attempt of [() => a.keyRings.add('svc', value), () => a.keyRings.rotate('svc', value, { actor: 'x', skipCanary: true })]) {
        const refused = await failure(attempt());
        expect(refused).toMatchObject({ code: 'bad_request', status: 400 });
        expect(refused.message).toContain(name);
        expect(refused.message).not.toContain(value);
      }
      for (const action of ['rotate', 'versions'] as const) {
        const viaApi = await admin((request) => handleKeyAction(request, 'svc', action, a), 'POST', { key: value });
        expect(viaApi.status, action).toBe(400);
        expect(JSON.stringify(viaApi.json)).not.toContain(value);
      }
    }
    expect(await versions(a)).toEqual(before);
    expect(r.server.calls.length).toBe(mark);
  });

  // A version stored before add/rotate checked Keyward's own secrets (or one a setting took the value of later) is
  // never sent upstream: its calls fail as for a version whose value cannot be opened, and a warning names it.
  it("a stored managed version that is one of Keyward's own secrets is not used: 503 credential_unavailable, a warning naming it", async () => {
    const { r, a, fresh } = await rotatedToManaged();
    const log = newLog();
    const b = await r.runtime({ env: { KEYWARD_METRICS_TOKEN: fresh }, logger: log.logger });
    const mark = r.server.calls.length;
    for (let i = 0; i < 2; i++) expect(await call(b, r.server)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    expect(r.server.calls.length).toBe(mark);
    const warnings = log.lines.filter((line) => line.includes("one of Keyward's own secrets"));
    expect(warnings).toHaveLength(1);
    expect(JSON.parse(warnings[0]!)).toMatchObject({ level: 40, upstream: 'svc', version: managedId(fresh), settings: ['KEYWARD_METRICS_TOKEN'] });
    expect(warnings[0]).not.toContain(fresh);
    // Listed as refused, not as serving (its calls answer 503), by the admin API and the CLI's list alike.
    expect((await statuses(b))[managedId(fresh)]).toBe('refused');
    const listed = await admin((request) => handleKeyList(request, b), 'GET');
    const [ring] = listed.json.upstreams as Array<{ versions: VersionView[] }>;
    expect(ring!.versions.find((v) => v.id === managedId(fresh))?.status).toBe('refused');
    // The instance whose settings do not hold the value serves it, and lists it so.
    expect((await statuses(a))[managedId(fresh)]).toBe('serving');
    // Revoked, as the warning says: the version it replaced serves again in its grace window.
    await b.keyRings.revoke(fingerprint(fresh));
    expect(await labelOf(b, r.server)).toBe('old');
  });

  it('a malformed rotation id → 400; a too-short key → 400; no canary goes out', async () => {
    const mark = r.server.calls.length;
    const four = newKey(r.server, 'four');
    expect(await failure(a.keyRings.rotate('svc', four, { rotationId: 'has space', actor: 'x' }))).toMatchObject({ code: 'bad_request' });
    expect(await failure(a.keyRings.rotate('svc', four, { rotationId: 'x'.repeat(65), actor: 'x' }))).toMatchObject({ code: 'bad_request' });
    expect(await failure(a.keyRings.rotate('svc', 'short', { actor: 'x' }))).toMatchObject({ code: 'bad_request' });
    expect(await failure(a.keyRings.rotate('nope', four, { actor: 'x' }))).toMatchObject({ code: 'upstream_not_found', status: 404 });
    // A lone UTF-16 surrogate is valid JSON but no key (it has no UTF-8 form): 400, not a failure (500).
    for (const action of ['rotate', 'versions'] as const) {
      const viaApi = await admin((request) => handleKeyAction(request, 'svc', action, a), 'POST', { key: `${four.slice(0, 12)}\ud800` });
      expect(viaApi.status, action).toBe(400);
      expect((viaApi.json.error as { code: string }).code).toBe('bad_request');
    }
    expect(r.server.calls.length).toBe(mark);
  });
});

// ---------------------------------------------------------------------------------------------------------
// 2. A canary that fails
// ---------------------------------------------------------------------------------------------------------

describe('rotation whose canary fails', () => {
  let r: Ring;
  let a: Runtime;

  beforeAll(async () => {
    r = await ring();
    a = await r.runtime();
  });

  it('upstream refuses the new key (401): old key stays active, state canary_failed, the new version never serves', async () => {
    const refused = newKey(r.server, 'refused');
    r.server.accept('old');
    expect(await labelOf(a, r.server)).toBe('old');
    const mark = r.server.calls.length;
    const rotation = await a.keyRings.rotate('svc', refused, { actor: 'local:root' });
    expect(rotation).toMatchObject({ state: 'canary_failed', canaryStatus: 401, from: [fingerprint(r.old)], to: fingerprint(refused) });
    for (let i = 0; i < 5; i++) expect(await labelOf(a, r.server)).toBe('old');
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'serving', [managedId(refused)]: 'retired' });
    expect((await versions(a)).find((v) => v.id === 'env:SVC_KEY')!.state).toBe('active');
    // The new key went out once, on the canary only.
    expect(r.server.labelsSince(mark, { canary: true })).toEqual(['refused']);
    expect(r.server.labelsSince(mark, { canary: false })).toEqual(['old', 'old', 'old', 'old', 'old']);
  });

  it('through the admin API a failed canary answers 409 with the rotation (no key in it)', async () => {
    const bad = newKey(r.server, 'bad');
    const response = await admin((request) => handleKeyAction(request, 'svc', 'rotate', a), 'POST', { key: bad, rotationId: 'api-try' });
    expect(response.status).toBe(409);
    expect(response.json.rotation).toMatchObject({ id: 'api-try', state: 'canary_failed', canaryStatus: 401 });
    expect(await labelOf(a, r.server)).toBe('old');
  });

  it('other non-2xx canary answers (500, 302) fail too', async () => {
    for (const status of [500, 302]) {
      const key = newKey(r.server, `s${status}`);
      r.server.accept('old', `s${status}`);
      r.server.canary = status;
      const rotation = await a.keyRings.rotate('svc', key, { actor: 'x' });
      expect(rotation).toMatchObject({ state: 'canary_failed', canaryStatus: status });
      expect(await labelOf(a, r.server)).toBe('old');
    }
    r.server.canary = 'check';
    r.server.accept('old');
  });

  it('an upstream that drops the canary connection → canaryStatus 0; the old key keeps serving', async () => {
    const dropped = newKey(r.server, 'dropped');
    r.server.accept('old', 'dropped');
    r.server.canary = 'drop';
    const mark = r.server.calls.length;
    const rotation = await a.keyRings.rotate('svc', dropped, { actor: 'x' });
    r.server.canary = 'check';
    expect(rotation).toMatchObject({ state: 'canary_failed', canaryStatus: 0 });
    expect(r.server.labelsSince(mark, { canary: true }).length).toBeGreaterThanOrEqual(1);
    for (let i = 0; i < 3; i++) expect(await labelOf(a, r.server)).toBe('old');
    expect((await statuses(a))[managedId(dropped)]).toBe('retired');
    expect(r.server.labelsSince(mark, { canary: false })).not.toContain('dropped');
  });

  it('an unreachable upstream (nothing listening) → canaryStatus 0; the old version stays the one serving', async () => {
    const downOrigin = `http://127.0.0.1:${await freePort()}`;
    const down = await r.runtime({
      prefix: `${r.prefix}down:`,
      upstreams: [svc(r.server.origin), svc(downOrigin, { canary: { method: 'HEAD', path: '/health' } }, 'down', 'SVC_KEY')],
    });
    const key = newKey(r.server, 'unreachable');
    const rotation = await down.keyRings.rotate('down', key, { actor: 'x' });
    expect(rotation).toMatchObject({ state: 'canary_failed', canaryStatus: 0 });
    expect(await statuses(down, 'down')).toEqual({ 'env:SVC_KEY': 'serving', [managedId(key)]: 'retired' });
    // The other upstream of that runtime is untouched.
    expect(await statuses(down, 'svc')).toEqual({ 'env:SVC_KEY': 'serving' });
  });

  it('a canary_failed rotation can be retried under the same id once the upstream accepts the key', async () => {
    const late = newKey(r.server, 'late');
    r.server.accept('old');
    const first = await a.keyRings.rotate('svc', late, { rotationId: 'retry-me', actor: 'x' });
    expect(first.state).toBe('canary_failed');
    expect(await labelOf(a, r.server)).toBe('old');
    r.server.accept('old', 'late');
    const second = await a.keyRings.rotate('svc', late, { rotationId: 'retry-me', actor: 'x' });
    expect(second).toMatchObject({ id: 'retry-me', state: 'switched', canaryStatus: 200 });
    expect(await labelOf(a, r.server)).toBe('late');
    expect((await rotations(a)).filter((x) => x.id === 'retry-me')).toHaveLength(1);
    expect((await versions(a)).filter((v) => v.fingerprint === fingerprint(late))).toHaveLength(1);
  });
});

// ---------------------------------------------------------------------------------------------------------
// 3. Rollback
// ---------------------------------------------------------------------------------------------------------

describe('a key revoked while its canary runs', () => {
  let r: Ring;
  let a: Runtime;
  let b: Runtime;

  beforeAll(async () => {
    r = await ring();
    a = await r.runtime();
    b = await r.runtime();
  });

  it('revoked on another instance mid-canary: the rotation refuses to switch (400), the old key keeps serving, the revoked key never serves', async () => {
    const fresh = newKey(r.server, 'fresh');
    r.server.accept('old', 'fresh');
    const hold = r.server.holdCanary();
    const rotating = failure(a.keyRings.rotate('svc', fresh, { actor: 'local:root' }));
    await hold.reached;
    await b.keyRings.revoke(fingerprint(fresh));
    hold.release();
    // The canary answered 200 with the new key, but the version had been revoked in the meantime.
    expect(await rotating).toMatchObject({ code: 'bad_request', status: 400, message: expect.stringContaining('revoked while its canary ran') });
    expect(await statuses(a)).toMatchObject({ 'env:SVC_KEY': 'serving', [managedId(fresh)]: 'revoked' });
    const mark = r.server.calls.length;
    for (let i = 0; i < 3; i++) expect(await labelOf(a, r.server)).toBe('old');
    for (let i = 0; i < 3; i++) expect(await labelOf(b, r.server)).toBe('old');
    expect(r.server.labelsSince(mark)).not.toContain('fresh');
    expect((await rotations(a)).map((x) => x.to)).not.toContain(fingerprint(fresh));
  });
});

describe('rollback', () => {
  let r: Ring;
  let a: Runtime;

  beforeAll(async () => {
    r = await ring();
    a = await r.runtime();
  });

  it('after a switch, rollback makes the old key serve again; a second rollback changes nothing', async () => {
    const fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');
    const rotation = await a.keyRings.rotate('svc', fresh, { actor: 'x' });
    expect(rotation.state).toBe('switched');
    expect(await labelOf(a, r.server)).toBe('new');

    const rolled = await a.keyRings.rollback(rotation.id);
    expect(rolled).toMatchObject({ id: rotation.id, state: 'rolled_back', from: rotation.from, to: rotation.to });
    expect(await labelOf(a, r.server)).toBe('old');
    // The new version is retired at once: not a fallback.
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'serving', [managedId(fresh)]: 'retired' });

    // The stored ring, apart from its revision counter (every write bumps it), is unchanged by a repeat.
    const ringState = async () => {
      const record = JSON.parse((await a.store.get('keyring:svc'))!) as Record<string, unknown>;
      delete record.rev;
      return record;
    };
    const before = await ringState();
    const twice = await a.keyRings.rollback(rotation.id);
    expect(twice).toEqual(rolled);
    expect(await ringState()).toEqual(before);
    expect(await labelOf(a, r.server)).toBe('old');
    // Through the admin API (scoped to the upstream), still a no-op.
    const viaApi = await admin((request) => handleKeyAction(request, 'svc', 'rollback', a), 'POST', { rotationId: rotation.id });
    expect(viaApi.status).toBe(200);
    expect(viaApi.json.rotation).toMatchObject({ state: 'rolled_back' });
    expect(await ringState()).toEqual(before);
    // The same id is done: rotating again under it neither switches nor sends a canary.
    const mark = r.server.calls.length;
    expect(await a.keyRings.rotate('svc', fresh, { actor: 'x' })).toMatchObject({ state: 'rolled_back', repeated: true });
    expect(r.server.calls.length).toBe(mark);
    expect(await labelOf(a, r.server)).toBe('old');
    // Through the admin API: 200 with `repeated`, nothing switched, and the trail says nothing changed.
    const again = await admin((request) => handleKeyAction(request, 'svc', 'rotate', a), 'POST', { key: fresh });
    expect(again.status).toBe(200);
    expect(again.json.rotation).toMatchObject({ id: rotation.id, state: 'rolled_back', repeated: true });
    expect(await labelOf(a, r.server)).toBe('old');
    const { records } = await a.audit.query({ type: 'admin', action: 'key.rotate' }, { limit: 1 });
    expect(records[0]).toMatchObject({ rotationId: rotation.id, outcome: 'unchanged' });
  });

  it('rollback of a canary_failed rotation → 400; an unknown id → 404; another upstream named → 404', async () => {
    const refused = newKey(r.server, 'refused');
    const failed = await a.keyRings.rotate('svc', refused, { rotationId: 'will-fail', actor: 'x' });
    expect(failed.state).toBe('canary_failed');
    expect(await failure(a.keyRings.rollback('will-fail'))).toMatchObject({ code: 'bad_request', status: 400 });
    expect(await failure(a.keyRings.rollback('never-was'))).toMatchObject({ code: 'not_found', status: 404 });
    expect(await failure(a.keyRings.rollback('will-fail', 'other-upstream'))).toMatchObject({ code: 'not_found' });
    expect(await labelOf(a, r.server)).toBe('old');
  });

  it('one rotation id on two upstreams: a rollback without the upstream is refused naming both; with it, only that ring rolls back (the admin API passes its path on)', async () => {
    const other = await startKeyServer();
    servers.push(other);
    const otherOld = newKey(other, 'old');
    other.accept('old', 'new');
    const upstreams = [svc(r.server.origin), svc(other.origin, undefined, 'other', 'OTHER_KEY')];
    const b = await r.runtime({ upstreams, env: { OTHER_KEY: otherOld } });
    r.server.accept('old', 'new');
    const mine = newKey(r.server, 'new');
    const theirs = newKey(other, 'new');
    expect((await b.keyRings.rotate('svc', mine, { rotationId: 'q4', actor: 'x' })).state).toBe('switched');
    expect((await b.keyRings.rotate('other', theirs, { rotationId: 'q4', actor: 'x' })).state).toBe('switched');

    const refused = await failure(b.keyRings.rollback('q4'));
    expect(refused).toMatchObject({ code: 'bad_request', status: 400 });
    expect(refused.message).toBe('Rotation q4 is on more than one upstream (svc, other): name the upstream to roll back.');
    expect(await labelOf(b, r.server)).toBe('new');
    expect(await labelOf(b, other, 'other')).toBe('new');

    expect(await b.keyRings.rollback('q4', 'other')).toMatchObject({ upstream: 'other', id: 'q4', state: 'rolled_back' });
    expect(await labelOf(b, other, 'other')).toBe('old');
    expect(await labelOf(b, r.server)).toBe('new');
    expect((await rotations(b)).find((x) => x.id === 'q4')).toMatchObject({ state: 'switched' });

    // The admin API's path names the ring: svc's q4 is the one rolled back, never another's.
    const viaApi = await admin((request) => handleKeyAction(request, 'svc', 'rollback', b), 'POST', { rotationId: 'q4' });
    expect(viaApi.status).toBe(200);
    expect(viaApi.json.rotation).toMatchObject({ upstream: 'svc', state: 'rolled_back' });
    expect(await labelOf(b, r.server)).toBe('old');
  });

  it('rollback after the old version was revoked → 400, and the new key keeps serving', async () => {
    const b = newKey(r.server, 'b');
    const c = newKey(r.server, 'c');
    r.server.accept('old', 'b', 'c');
    const toB = await a.keyRings.rotate('svc', b, { actor: 'x' });
    expect(toB.state).toBe('switched');
    const toC = await a.keyRings.rotate('svc', c, { actor: 'x' });
    expect(toC).toMatchObject({ state: 'switched', from: [fingerprint(b)] });
    await a.keyRings.revoke(fingerprint(b));
    expect(await failure(a.keyRings.rollback(toC.id))).toMatchObject({ code: 'bad_request' });
    expect(await labelOf(a, r.server)).toBe('c');
    expect((await rotations(a)).find((x) => x.id === toC.id)!.state).toBe('switched');
  });

  it('a rotation that a later switch superseded is not rolled back (400, naming the later one); newest first, each is', async () => {
    const { r: own, a: runtime } = await rotatedToManaged();
    const third = newKey(own.server, 'third');
    own.server.accept('old', 'new', 'third');
    const first = (await rotations(runtime))[0]!;
    const second = await runtime.keyRings.rotate('svc', third, { actor: 'x' });
    expect(second.state).toBe('switched');
    // Rolling the first back would put the oldest key to work over the newest, and leave the second "switched".
    const refused = await failure(runtime.keyRings.rollback(first.id));
    expect(refused).toMatchObject({ code: 'bad_request', status: 400 });
    expect(refused.message).toContain(second.id);
    expect(await labelOf(runtime, own.server)).toBe('third');
    expect((await rotations(runtime)).find((x) => x.id === first.id)!.state).toBe('switched');
    // Newest first: back to the second key, then to the first.
    expect((await runtime.keyRings.rollback(second.id)).state).toBe('rolled_back');
    expect(await labelOf(runtime, own.server)).toBe('new');
    expect((await runtime.keyRings.rollback(first.id)).state).toBe('rolled_back');
    expect(await labelOf(runtime, own.server)).toBe('old');
  });
});

// ---------------------------------------------------------------------------------------------------------
// 4. Revocation seen by a second instance
// ---------------------------------------------------------------------------------------------------------

describe('revocation across two runtimes sharing Redis', () => {
  let r: Ring;
  let a: Runtime;
  let b: Runtime;
  let fresh: string;

  beforeAll(async () => {
    r = await ring();
    a = await r.runtime();
    b = await r.runtime();
    fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');
  });

  it("a switch on A is followed by B's next call", async () => {
    expect(await labelOf(b, r.server)).toBe('old');
    expect((await a.keyRings.rotate('svc', fresh, { actor: 'x' })).state).toBe('switched');
    expect(await labelOf(b, r.server)).toBe('new');
    expect(await labelOf(b, r.server)).toBe('new');
  });

  it("revoking the serving version on A: B's very next call uses the fallback; the revoked key never reaches the upstream again", async () => {
    const revoked = await a.keyRings.revoke(fingerprint(fresh));
    expect(revoked).toEqual([{ upstream: 'svc', version: managedId(fresh) }]);
    const mark = r.server.calls.length;
    expect(await labelOf(b, r.server)).toBe('old');
    expect(await labelOf(a, r.server)).toBe('old');
    for (let i = 0; i < 10; i++) expect(await labelOf(i % 2 ? a : b, r.server)).toBe('old');
    expect(await statuses(b)).toEqual({ 'env:SVC_KEY': 'fallback', [managedId(fresh)]: 'revoked' });
    expect(r.server.labelsSince(mark)).not.toContain('new');
    expect(r.server.labelsSince(mark)).toHaveLength(12);
  });

  it("revoking the last usable version on A: B's next call is 503 credential_unavailable and reaches nobody", async () => {
    // Through the admin API this time.
    const response = await admin((request) => handleKeyRevoke(request, a), 'POST', { fingerprint: fingerprint(r.old) });
    expect(response.status).toBe(200);
    expect(response.json).toEqual({ fingerprint: fingerprint(r.old), revoked: [{ upstream: 'svc', version: 'env:SVC_KEY' }] });
    const mark = r.server.calls.length;
    for (const runtime of [b, a, b]) {
      const outcome = await call(runtime, r.server);
      expect(outcome).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    }
    expect(r.server.calls.length).toBe(mark);
    expect(await statuses(b)).toEqual({ 'env:SVC_KEY': 'revoked', [managedId(fresh)]: 'revoked' });
  });

  it('a revoked key cannot come back: add/rotate refuse it; revoke is idempotent; bad fingerprints are refused', async () => {
    expect(await failure(b.keyRings.add('svc', fresh))).toMatchObject({ code: 'bad_request' });
    expect(await failure(b.keyRings.rotate('svc', fresh, { rotationId: 'again', actor: 'x' }))).toMatchObject({ code: 'bad_request' });
    expect(await b.keyRings.revoke(fingerprint(fresh))).toEqual([{ upstream: 'svc', version: managedId(fresh) }]);
    expect(await failure(b.keyRings.revoke('0123456789ab'))).toMatchObject({ code: 'not_found', status: 404 });
    expect(await failure(b.keyRings.revoke('not-a-print'))).toMatchObject({ code: 'bad_request', status: 400 });
    // A new key rotated in on B restores service on A.
    const next = newKey(r.server, 'next');
    r.server.accept('next');
    expect((await b.keyRings.rotate('svc', next, { actor: 'x' })).state).toBe('switched');
    expect(await labelOf(a, r.server)).toBe('next');
  });

  it('revoking a version that is only the fallback: the serving key is untouched, the fallback is gone for good', async () => {
    const s = await ring();
    const one = await s.runtime();
    const two = await s.runtime();
    const fresh2 = newKey(s.server, 'new');
    s.server.accept('old', 'new');
    await one.keyRings.rotate('svc', fresh2, { actor: 'x' });
    await one.keyRings.revoke(fingerprint(s.old));
    const mark = s.server.calls.length;
    expect(await labelOf(two, s.server)).toBe('new');
    expect(await statuses(two)).toEqual({ 'env:SVC_KEY': 'revoked', [managedId(fresh2)]: 'serving' });
    // Now the serving one goes too: nothing is left, the revoked fallback does not come back.
    await two.keyRings.revoke(fingerprint(fresh2));
    expect(await call(one, s.server)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    expect(s.server.labelsSince(mark)).toEqual(['new']);
  });
});

// ---------------------------------------------------------------------------------------------------------
// 4b. An answer that holds another version of the ring's key
// ---------------------------------------------------------------------------------------------------------

describe("an answer holding another version of the ring's key is scrubbed of it too", () => {
  // `call` fails on any key value in the answer; each call here is answered 200 with `listed` in its body.
  it('the fallback after a rotation, a version added but not serving, and a revoked one; also on an instance that never used them', async () => {
    const { r, a, fresh } = await rotatedToManaged();
    const next = newKey(r.server, 'next');
    await a.keyRings.add('svc', next);
    const gone = newKey(r.server, 'gone');
    await a.keyRings.add('svc', gone);
    await a.keyRings.revoke(fingerprint(gone));
    r.server.accept('old', 'new', 'next');
    // `fresh` serves; the upstream lists the env key (the fallback), the next version and the revoked one.
    r.server.listed = [r.old, next, gone];
    try {
      expect(await call(a, r.server)).toEqual({ status: 200, code: null, label: 'new' });
      // An instance that started after the changes has unsealed none of the managed versions yet.
      const b = await r.runtime();
      expect(await call(b, r.server)).toEqual({ status: 200, code: null, label: 'new' });
      // The serving key is scrubbed as before, whichever version serves.
      r.server.listed = [fresh, r.old];
      await a.keyRings.rollback(`rot-${fingerprint(fresh)}`);
      expect(await call(b, r.server)).toEqual({ status: 200, code: null, label: 'old' });
    } finally {
      r.server.listed = [];
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// 4c. Another upstream's answer that holds a managed key
// ---------------------------------------------------------------------------------------------------------

describe("another upstream's answer holding a managed key is scrubbed of it", () => {
  // An in-house API beside the ring's upstream that dumps what it holds, the ring's key among it, in its body
  // and in a header it may pass on (x-echo). A header that carries a secret is dropped, a body's is replaced.
  let dump: TestUpstream;
  let dumped = '';
  beforeAll(async () => {
    dump = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-echo': `key=${dumped}` });
      res.end(JSON.stringify({ env: { SVC_KEY: dumped } }));
    });
  });
  afterAll(() => dump.close());

  let dumpSeq = 0;
  async function dumpCall(runtime: Runtime): Promise<{ status: number; echo: string | null; body: unknown }> {
    const id = `d${++dumpSeq}`;
    const request = new Request(`${APP_ORIGIN}/api/proxy/dump/items/${id}`, { headers: { cookie: userCookie, 'x-keyward-csrf': '1' } });
    const response = await handleProxy(request, { upstream: 'dump', path: ['items', id] }, runtime);
    const flat = await responseText(response);
    expect(findLeak(flat.text, allKeys) === null, 'a key value reached a proxied response').toBe(true);
    return { status: flat.status, echo: response.headers.get('x-echo'), body: JSON.parse(flat.body) };
  }

  it('rotated to here, and in another runtime of this process (a Next bundle\'s) that never called the ring\'s upstream', async () => {
    const r = await ring();
    const dumpKey = randomSecret('dumpkey');
    allKeys.push(dumpKey);
    const options: RingRuntimeOptions = {
      upstreams: [
        svc(r.server.origin),
        defineUpstream('dump', {
          baseUrl: `${dump.origin}/`,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'DUMP_KEY' } },
          routes: ROUTES,
          responseHeaders: ['x-echo'],
        }),
      ],
      env: { DUMP_KEY: dumpKey },
    };
    const a = await r.runtime(options);
    const b = await r.runtime(options);
    // What is no secret passes, header and body.
    dumped = 'nothing-secret';
    expect(await dumpCall(a)).toEqual({ status: 200, echo: 'key=nothing-secret', body: { env: { SVC_KEY: 'nothing-secret' } } });

    const fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');
    await a.keyRings.add('svc', fresh);
    expect((await a.keyRings.rotate('svc', fresh, { actor: 'x', skipCanary: true })).state).toBe('switched');
    dumped = fresh;
    const scrubbed = { status: 200, echo: null, body: { env: { SVC_KEY: '[REDACTED]' } } };
    expect(await dumpCall(a)).toEqual(scrubbed);
    expect(await dumpCall(b)).toEqual(scrubbed);
    // And after the ring's own upstream was called with it.
    expect(await labelOf(a, r.server)).toBe('new');
    expect(await dumpCall(a)).toEqual(scrubbed);
  });
});

// ---------------------------------------------------------------------------------------------------------
// 5. Expiry, with an injected clock
// ---------------------------------------------------------------------------------------------------------

interface Warned {
  readonly fingerprint: string;
  readonly days: number;
}

function expiryWarnings(lines: readonly string[]): Warned[] {
  return lines
    .map((line) => JSON.parse(line) as { msg?: string; keyFingerprint?: string; expiresInDays?: number })
    .filter((entry) => entry.msg === 'key version expires soon')
    .map((entry) => ({ fingerprint: entry.keyFingerprint!, days: entry.expiresInDays! }));
}

describe('expiry (injected clock)', () => {
  const T0 = Math.floor(Date.now() / 1000) * 1000;
  const iso = (ms: number) => new Date(ms).toISOString();

  it('a managed version expires after keys.expiresInDays (default 90); warnings at ≤14, ≤7, ≤1 days, logged once per threshold', async () => {
    const r = await ring();
    let now = T0;
    const log = newLog();
    const a = await r.runtime({ now: () => now, logger: log.logger });
    const fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');
    const rotation = await a.keyRings.rotate('svc', fresh, { actor: 'x' });
    expect(rotation.state).toBe('switched');
    const version = (await versions(a)).find((v) => v.id === managedId(fresh))!;
    expect(version.expiresAt).toBe(T0 + 90 * DAY);
    expect(version).toMatchObject({ expiresInDays: 90, warning: null, status: 'serving' });

    const steps: Array<[day: number, warning: string | null]> = [
      [75, null],
      [76, 'expires in 14 days'],
      [80, 'expires in 10 days'],
      [82.5, 'expires in 8 days'],
      [83, 'expires in 7 days'],
      [85, 'expires in 5 days'],
      [88.5, 'expires in 2 days'],
      [89, 'expires in 1 day'],
      [89.9, 'expires in 1 day'],
    ];
    const logged: number[] = [];
    for (const [day, warning] of steps) {
      now = T0 + day * DAY;
      // Several calls per step: the log line is written once per threshold, not per call.
      for (let i = 0; i < 3; i++) expect(await labelOf(a, r.server)).toBe('new');
      const view = (await versions(a)).find((v) => v.id === managedId(fresh))!;
      expect([day, view.warning]).toEqual([day, warning]);
      expect(view.status).toBe('serving');
      logged.push(expiryWarnings(log.lines).length);
    }
    expect(logged).toEqual([0, 1, 1, 1, 2, 2, 2, 3, 3]);
    expect(expiryWarnings(log.lines)).toEqual([
      { fingerprint: fingerprint(fresh), days: 14 },
      { fingerprint: fingerprint(fresh), days: 7 },
      { fingerprint: fingerprint(fresh), days: 1 },
    ]);

    // Just before expiry it still serves; at expiry it is never used again. The old key's grace ended long ago.
    now = T0 + 90 * DAY - 1;
    expect(await labelOf(a, r.server)).toBe('new');
    now = T0 + 90 * DAY;
    const mark = r.server.calls.length;
    for (let i = 0; i < 3; i++) expect(await call(a, r.server)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    now = T0 + 100 * DAY;
    expect(await call(a, r.server)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    expect(r.server.calls.length).toBe(mark);
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'retired', [managedId(fresh)]: 'expired' });
    expect((await versions(a)).find((v) => v.id === managedId(fresh))).toMatchObject({ expiresInDays: 0, warning: null });
    expect(expiryWarnings(log.lines)).toHaveLength(3);
    // The version the rotation replaced never expires (no primaryExpiresAt): a rollback brings it back.
    expect((await a.keyRings.rollback(rotation.id)).state).toBe('rolled_back');
    expect(await labelOf(a, r.server)).toBe('old');
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'serving', [managedId(fresh)]: 'expired' });
  });

  it('keys.expiresInDays and graceSeconds are honoured; a revoked serving key falls back only within the grace window', async () => {
    const r = await ring();
    let now = T0;
    const a = await r.runtime({ now: () => now, upstreams: [svc(r.server.origin, { expiresInDays: 30, graceSeconds: 3600 })] });
    const fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');
    const added = await a.keyRings.add('svc', fresh);
    expect(added).toMatchObject({ state: 'next', expiresAt: T0 + 30 * DAY, source: 'managed' });
    expect(await labelOf(a, r.server)).toBe('old');
    // No canary declared: a rotation needs skipCanary.
    expect(await failure(a.keyRings.rotate('svc', fresh, { actor: 'x' }))).toMatchObject({ code: 'bad_request' });
    const rotation = await a.keyRings.rotate('svc', fresh, { actor: 'x', skipCanary: true });
    expect(rotation).toMatchObject({ state: 'switched', canaryStatus: null });
    expect(r.server.calls.filter((c) => c.canary)).toEqual([]);
    expect(await labelOf(a, r.server)).toBe('new');

    now = T0 + 30 * 60_000;
    await a.keyRings.revoke(fingerprint(fresh));
    expect(await labelOf(a, r.server)).toBe('old');
    now = T0 + 3600_000 - 1;
    expect(await labelOf(a, r.server)).toBe('old');
    now = T0 + 3600_000;
    expect(await call(a, r.server)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'retired', [managedId(fresh)]: 'revoked' });
  });

  it('a version added but never served that expired meanwhile is renewed when added or rotated to again; one that served is refused, saying why', async () => {
    const r = await ring();
    let now = T0;
    const a = await r.runtime({ now: () => now, upstreams: [svc(r.server.origin, { expiresInDays: 7 })] });
    const staged = newKey(r.server, 'staged');
    r.server.accept('old', 'staged');
    expect(await a.keyRings.add('svc', staged)).toMatchObject({ state: 'next', expiresAt: T0 + 7 * DAY });
    now = T0 + 8 * DAY;
    expect(await statuses(a)).toMatchObject({ [managedId(staged)]: 'expired' });
    // Rotating to it: renewed (its expiry counted from now), then switched, as if it had just been added.
    const rotation = await a.keyRings.rotate('svc', staged, { actor: 'x', skipCanary: true });
    expect(rotation).toMatchObject({ state: 'switched' });
    expect((await versions(a)).find((v) => v.id === managedId(staged))).toMatchObject({ state: 'active', expiresAt: now + 7 * DAY });
    expect(await labelOf(a, r.server)).toBe('staged');
    // It served, then expired: that is the expiry doing its job. Added again, it is refused, and says so.
    now += 8 * DAY;
    const refused = await failure(a.keyRings.add('svc', staged));
    expect(refused).toMatchObject({ code: 'bad_request' });
    expect(refused.message).toMatch(/expired .* served/);
    expect((await failure(a.keyRings.rotate('svc', staged, { actor: 'x', rotationId: 'again', skipCanary: true }))).message).toMatch(/expired .* served/);
  });

  it('a staged version revoked on another instance while this one renews it stays revoked', async () => {
    const r = await ring();
    let now = T0;
    const upstreams = [svc(r.server.origin, { expiresInDays: 7 })];
    const a = await r.runtime({ now: () => now, upstreams });
    const b = await r.runtime({ now: () => now, upstreams });
    const staged = newKey(r.server, 'staged');
    await a.keyRings.add('svc', staged);
    now = T0 + 8 * DAY;
    // B revokes it just after A's renewal has read the ring (its write then loses and reads the ring again).
    const rings = a.keyRings as unknown as { envVerifiers: (...args: unknown[]) => Promise<unknown> };
    const envVerifiers = rings.envVerifiers.bind(a.keyRings);
    let armed = true;
    rings.envVerifiers = async (...args) => {
      if (armed) {
        armed = false;
        await b.keyRings.revoke(fingerprint(staged));
      }
      return envVerifiers(...args);
    };
    expect(await failure(a.keyRings.add('svc', staged))).toMatchObject({ code: 'bad_request', message: 'This key was revoked and cannot be added again.' });
    expect(await statuses(b)).toMatchObject({ [managedId(staged)]: 'revoked' });
  });

  it('env versions: notBefore takes over at that instant, expiresAt stops it at that instant, primaryExpiresAt too', async () => {
    const r = await ring();
    let now = T0;
    const log = newLog();
    const k2 = newKey(r.server, 'k2');
    r.server.accept('old', 'k2');
    const keys = {
      versions: [{ env: 'SVC_KEY_NEXT', notBefore: iso(T0 + 10 * DAY), expiresAt: iso(T0 + 40 * DAY) }],
      primaryExpiresAt: iso(T0 + 60 * DAY),
    };
    const a = await r.runtime({ now: () => now, logger: log.logger, upstreams: [svc(r.server.origin, keys)], env: { SVC_KEY_NEXT: k2 } });
    const b = await r.runtime({ now: () => now, upstreams: [svc(r.server.origin, keys)], env: { SVC_KEY_NEXT: k2 } });

    const at = async (offset: number) => {
      now = T0 + offset;
      const outcomes = [await call(a, r.server), await call(b, r.server)];
      return { outcomes, statuses: await statuses(a) };
    };
    const served = (label: string) => [
      { status: 200, code: null, label },
      { status: 200, code: null, label },
    ];

    expect(await at(0)).toEqual({ outcomes: served('old'), statuses: { 'env:SVC_KEY': 'serving', 'env:SVC_KEY_NEXT': 'pending' } });
    expect(await at(10 * DAY - 1)).toEqual({ outcomes: served('old'), statuses: { 'env:SVC_KEY': 'serving', 'env:SVC_KEY_NEXT': 'pending' } });
    expect(await at(10 * DAY)).toEqual({ outcomes: served('k2'), statuses: { 'env:SVC_KEY': 'standby', 'env:SVC_KEY_NEXT': 'serving' } });
    expect(await at(26 * DAY)).toEqual({ outcomes: served('k2'), statuses: { 'env:SVC_KEY': 'standby', 'env:SVC_KEY_NEXT': 'serving' } });
    expect((await versions(a)).find((v) => v.id === 'env:SVC_KEY_NEXT')!.warning).toBe('expires in 14 days');
    expect(await at(40 * DAY - 1)).toEqual({ outcomes: served('k2'), statuses: { 'env:SVC_KEY': 'standby', 'env:SVC_KEY_NEXT': 'serving' } });
    expect((await versions(a)).find((v) => v.id === 'env:SVC_KEY_NEXT')!.warning).toBe('expires in 1 day');
    expect(await at(40 * DAY)).toEqual({ outcomes: served('old'), statuses: { 'env:SVC_KEY': 'serving', 'env:SVC_KEY_NEXT': 'expired' } });
    const primary = (await versions(a)).find((v) => v.id === 'env:SVC_KEY')!;
    expect(primary).toMatchObject({ expiresInDays: 20, warning: null, expiresAt: T0 + 60 * DAY });
    const mark = r.server.calls.length;
    const ended = await at(60 * DAY);
    expect(ended.outcomes).toEqual([
      { status: 503, code: 'credential_unavailable', label: null },
      { status: 503, code: 'credential_unavailable', label: null },
    ]);
    expect(ended.statuses).toEqual({ 'env:SVC_KEY': 'expired', 'env:SVC_KEY_NEXT': 'expired' });
    expect(r.server.calls.length).toBe(mark);
    // Runtime a logged k2's thresholds once each as calls used it: 14 (day 26) and 1 (just before day 40); the 7-day
    // threshold was skipped over by the clock. The primary never served within 14 days of its expiry.
    const warned = expiryWarnings(log.lines);
    expect(warned.filter((w) => w.fingerprint === fingerprint(k2)).map((w) => w.days)).toEqual([14, 1]);
  });

  it('a rotation cancels a planned switch (notBefore) and its rollback plans it again, before or after its time', async () => {
    const keys = {
      versions: [{ env: 'SVC_KEY_NEXT', notBefore: iso(T0 + 10 * DAY) }],
      primaryExpiresAt: iso(T0 + 20 * DAY),
      canary: { method: 'GET' as const, path: '/health' },
    };
    const planned = async () => {
      const r = await ring();
      const clock = { now: T0 };
      const k2 = newKey(r.server, 'k2');
      const fresh = newKey(r.server, 'new');
      r.server.accept('old', 'k2', 'new');
      const a = await r.runtime({ now: () => clock.now, upstreams: [svc(r.server.origin, keys)], env: { SVC_KEY_NEXT: k2 } });
      const rotation = await a.keyRings.rotate('svc', fresh, { actor: 'x' });
      expect(rotation).toMatchObject({ state: 'switched', from: [fingerprint(r.old)] });
      // The planned version never served: it is retired at once, no fallback, and never takes over while the new key serves.
      expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'fallback', 'env:SVC_KEY_NEXT': 'retired', [managedId(fresh)]: 'serving' });
      clock.now = T0 + 10 * DAY;
      expect(await labelOf(a, r.server)).toBe('new');
      return { r, a, clock, fresh };
    };

    // Rolled back before its time: the old key serves until notBefore, then the planned one, past the old key's expiry.
    const early = await planned();
    early.clock.now = T0 + DAY;
    expect((await early.a.keyRings.rollback(`rot-${fingerprint(early.fresh)}`)).state).toBe('rolled_back');
    expect(await statuses(early.a)).toEqual({ 'env:SVC_KEY': 'serving', 'env:SVC_KEY_NEXT': 'pending', [managedId(early.fresh)]: 'retired' });
    expect(await labelOf(early.a, early.r.server)).toBe('old');
    early.clock.now = T0 + 10 * DAY - 1;
    expect(await labelOf(early.a, early.r.server)).toBe('old');
    early.clock.now = T0 + 10 * DAY;
    expect(await labelOf(early.a, early.r.server)).toBe('k2');
    early.clock.now = T0 + 25 * DAY;
    expect(await labelOf(early.a, early.r.server)).toBe('k2');
    expect(await statuses(early.a)).toEqual({ 'env:SVC_KEY': 'expired', 'env:SVC_KEY_NEXT': 'serving', [managedId(early.fresh)]: 'retired' });

    // Rolled back after its time: the planned version serves at once, as it would have without the rotation.
    const late = await planned();
    late.clock.now = T0 + 12 * DAY;
    expect((await late.a.keyRings.rollback(`rot-${fingerprint(late.fresh)}`)).state).toBe('rolled_back');
    expect(await labelOf(late.a, late.r.server)).toBe('k2');
    expect(await statuses(late.a)).toEqual({ 'env:SVC_KEY': 'standby', 'env:SVC_KEY_NEXT': 'serving', [managedId(late.fresh)]: 'retired' });
  });
});

// ---------------------------------------------------------------------------------------------------------
// 6. Rotation under steady load
// ---------------------------------------------------------------------------------------------------------

describe('rotation under steady load', () => {
  it('1500 calls (concurrency 20) over two runtimes with a canary rotation in the middle: zero failures; then a revoke', { timeout: 180_000 }, async () => {
    const r = await ring();
    // 1500 calls in seconds from one user is a load test, which the anomaly detector would throttle as a burst:
    // this test is about the rotation, so its floor is set out of reach (as a deployment with one heavy account does).
    const heavyAccount = { calls: { minPerMinute: 1_000_000 } };
    const a = await r.runtime({ detector: heavyAccount });
    const b = await r.runtime({ detector: heavyAccount });
    const fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');

    const TOTAL = 1500;
    const CONCURRENCY = 20;
    const ROTATE_AT = 500;
    /** Calls from here on wait for the rotation to have returned, so a known number of calls follow the switch. */
    const GATE = 1000;
    const outcomes: Outcome[] = new Array<Outcome>(TOTAL);
    let issued = 0;
    let rotation: Promise<Rotation> | null = null;
    /** The first sequence number taken after rotate() returned: every call from it on started after the switch. */
    let afterSwitch: number | null = null;

    const worker = async () => {
      for (let guard = 0; guard < TOTAL; guard++) {
        if (issued >= TOTAL) return;
        const seq = issued++;
        if (seq === ROTATE_AT) {
          rotation = a.keyRings.rotate('svc', fresh, { actor: 'local:root' }).then((done) => {
            afterSwitch = issued;
            return done;
          });
        }
        if (seq >= GATE) await rotation;
        outcomes[seq] = await call(seq % 2 === 0 ? a : b, r.server);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));

    expect(outcomes.filter(Boolean)).toHaveLength(TOTAL);
    const failed = outcomes.filter((o) => o.status !== 200);
    expect(failed.length, `failed calls: ${JSON.stringify(failed.slice(0, 5))}`).toBe(0);
    const rotated = await rotation!;
    expect(rotated).toMatchObject({ state: 'switched', canaryStatus: 200, from: [fingerprint(r.old)], to: fingerprint(fresh) });
    expect(afterSwitch).not.toBeNull();
    const switchSeq = afterSwitch as unknown as number;
    expect(switchSeq).toBeLessThanOrEqual(GATE + CONCURRENCY);
    const after = outcomes.slice(switchSeq);
    expect(after.length).toBeGreaterThanOrEqual(TOTAL - GATE - CONCURRENCY);
    expect(after.filter((o) => o.label !== 'new')).toHaveLength(0);
    const labels = outcomes.map((o) => o.label);
    expect(labels.filter((l) => l !== 'old' && l !== 'new')).toHaveLength(0);
    expect(labels.filter((l) => l === 'old').length).toBeGreaterThan(0);
    // The upstream saw each call exactly once, and one canary (with the new key).
    expect(r.server.calls.filter((c) => !c.canary)).toHaveLength(TOTAL);
    expect(r.server.calls.filter((c) => c.canary).map((c) => c.label)).toEqual(['new']);
    expect(await statuses(b)).toEqual({ 'env:SVC_KEY': 'fallback', [managedId(fresh)]: 'serving' });

    // Revoke the old key (on the other runtime); no later call carries it.
    await b.keyRings.revoke(fingerprint(r.old));
    const mark = r.server.calls.length;
    const later: Outcome[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let guard = 0; guard < 200; guard++) {
          if (next >= 200) return;
          const seq = next++;
          later.push(await call(seq % 2 === 0 ? a : b, r.server));
        }
      }),
    );
    expect(later).toHaveLength(200);
    expect(later.filter((o) => o.status !== 200 || o.label !== 'new')).toHaveLength(0);
    expect(r.server.labelsSince(mark)).toHaveLength(200);
    expect(r.server.labelsSince(mark).filter((l) => l !== 'new')).toHaveLength(0);
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'revoked', [managedId(fresh)]: 'serving' });
  });
});

// ---------------------------------------------------------------------------------------------------------
// 7. Sealing, and no key value anywhere
// ---------------------------------------------------------------------------------------------------------

/** Every value stored under a prefix (strings, streams, hashes, sets, lists), as one text. */
async function everythingUnder(prefix: string): Promise<string> {
  const keys = await keysUnder(prefix);
  return rawRedis(async (redis) => {
    const parts: string[] = [];
    for (const key of keys) {
      parts.push(key);
      const type = await redis.type(key);
      if (type === 'string') parts.push((await redis.get(key)) ?? '');
      else if (type === 'stream') parts.push(JSON.stringify(await redis.xrange(key, '-', '+', 'COUNT', 100_000)));
      else if (type === 'hash') parts.push(JSON.stringify(await redis.hgetall(key)));
      else if (type === 'zset') parts.push(JSON.stringify(await redis.zrange(key, 0, -1)));
      else if (type === 'set') parts.push(JSON.stringify(await redis.smembers(key)));
      else if (type === 'list') parts.push(JSON.stringify(await redis.lrange(key, 0, -1)));
      else parts.push(`<unread type ${type}>`);
    }
    return parts.join('\n');
  });
}

describe('managed versions need the vault and are sealed at rest', () => {
  it('without KEYWARD_VAULT_SECRET: add and rotate → 503 credential_unavailable naming the setting; nothing is stored or sent', async () => {
    const r = await ring();
    const a = await r.runtime({ vault: null });
    const fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');
    expect(await labelOf(a, r.server)).toBe('old');
    const mark = r.server.calls.length;

    const added = await failure(a.keyRings.add('svc', fresh));
    expect(added).toMatchObject({ code: 'credential_unavailable', status: 503 });
    expect(added.message).toContain('KEYWARD_VAULT_SECRET');
    const rotated = await failure(a.keyRings.rotate('svc', fresh, { actor: 'x' }));
    expect(rotated).toMatchObject({ code: 'credential_unavailable', status: 503 });
    expect(rotated.message).toContain('KEYWARD_VAULT_SECRET');
    for (const action of ['versions', 'rotate']) {
      const response = await admin((request) => handleKeyAction(request, 'svc', action, a), 'POST', { key: fresh });
      expect(response.status).toBe(503);
      const error = response.json.error as { code: string; message: string };
      expect(error.code).toBe('credential_unavailable');
      expect(error.message).toContain('KEYWARD_VAULT_SECRET');
    }
    // No canary went out with the key, nothing was written to the ring, and the env key keeps serving.
    expect(r.server.calls.length).toBe(mark);
    expect((await keysUnder(r.prefix)).filter((k) => /keyval:|keyring:/.test(k))).toEqual([]);
    expect(await labelOf(a, r.server)).toBe('old');
    expect(await statuses(a)).toEqual({ 'env:SVC_KEY': 'serving' });
  });

  it('the sealed value is not the key; the ring record, list(), rotations, admin responses and Redis hold no key value', async () => {
    const r = await ring();
    const a = await r.runtime();
    const fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');

    const added = await admin((request) => handleKeyAction(request, 'svc', 'versions', a), 'POST', { key: fresh });
    expect(added.status).toBe(201);
    expect(added.json.version).toMatchObject({ id: managedId(fresh), fingerprint: fingerprint(fresh), state: 'next', source: 'managed' });
    const version = await a.keyRings.add('svc', fresh);
    expectNoKey(version, 'an added version');
    expect(await labelOf(a, r.server)).toBe('old');
    expect((await statuses(a))[managedId(fresh)]).toBe('next');

    const rawKey = `${r.prefix}keyval:svc:${managedId(fresh)}`;
    const sealed = await rawRedis((redis) => redis.get(rawKey));
    expect(sealed).not.toBeNull();
    expect(sealed!.startsWith('Fe26.2*')).toBe(true);
    expect(findLeak(sealed!, [fresh]) === null, 'the stored value contains the key').toBe(true);
    expect(await a.store.get(`keyval:svc:${managedId(fresh)}`)).toBe(sealed);

    const rotated = await admin((request) => handleKeyAction(request, 'svc', 'rotate', a), 'POST', { key: fresh, rotationId: 'sealed-1' });
    expect(rotated.status).toBe(200);
    expect(rotated.json.rotation).toMatchObject({ id: 'sealed-1', state: 'switched' });
    expect(await labelOf(a, r.server)).toBe('new');
    const listed = await admin((request) => handleKeyList(request, a), 'GET');
    expect(listed.status).toBe(200);
    expectNoKey(await a.keyRings.list(), 'list()');
    expectNoKey(await rotations(a), 'rotations');
    const record = await a.store.get('keyring:svc');
    expect(record).not.toBeNull();
    expect(findLeak(record!, allKeys) === null, 'the ring record contains a key value').toBe(true);
    expect(findLeak(await everythingUnder(r.prefix), allKeys) === null, 'a key value is stored in Redis in the clear').toBe(true);
  });

  it("a seal a store writer moves to another upstream's entry (and lists in its ring) does not open there: that host never gets the key", async () => {
    const r = await ring();
    const otherServer = await startKeyServer();
    servers.push(otherServer);
    const otherKey = newKey(otherServer, 'otherenv');
    otherServer.accept('otherenv');
    const upstreams = [svc(r.server.origin), svc(otherServer.origin, undefined, 'other', 'OTHER_KEY')];
    const a = await r.runtime({ upstreams, env: { OTHER_KEY: otherKey } });
    const fresh = newKey(r.server, 'new');
    r.server.accept('old', 'new');
    otherServer.label(fresh, 'svc-managed');
    expect((await a.keyRings.rotate('svc', fresh, { actor: 'x' })).state).toBe('switched');
    // The writer holds the store, not KEYWARD_VAULT_SECRET: it copies the seal and lists the version as serving.
    const id = managedId(fresh);
    await rawRedis(async (redis) => {
      await redis.set(`${r.prefix}keyval:other:${id}`, (await redis.get(`${r.prefix}keyval:svc:${id}`))!);
      const version = (JSON.parse((await redis.get(`${r.prefix}keyring:svc`))!) as { versions: Array<{ id: string }> }).versions.find((v) => v.id === id)!;
      const stored = await redis.get(`${r.prefix}keyring:other`);
      const ring: { rev: number; versions: unknown[] } = stored ? JSON.parse(stored) : { rev: 0, versions: [], rotations: [] };
      ring.versions.push({ ...version, verifier: undefined, activatedAt: Date.now() + 1 });
      ring.rev += 1;
      await redis.set(`${r.prefix}keyring:other`, JSON.stringify(ring), 'PX', 3_600_000);
    });
    for (const runtime of [a, await r.runtime({ upstreams, env: { OTHER_KEY: otherKey } })]) {
      expect(await call(runtime, otherServer, 'other')).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    }
    expect(otherServer.calls.some((c) => c.label === 'svc-managed')).toBe(false);
    expect(await labelOf(a, r.server)).toBe('new');
  });

  it('a seal made before seals were bound to their entry still opens, and is sealed again bound to it', async () => {
    const { r, a, fresh } = await rotatedToManaged();
    const entry = `keyval:svc:${managedId(fresh)}`;
    const vault = new Vault(vaultSecret);
    const legacy = await vault.seal({ value: fresh, id: managedId(fresh) });
    await a.store.set(entry, legacy);
    // A new instance (nothing cached) reads the old seal.
    const b = await r.runtime();
    expect(await labelOf(b, r.server)).toBe('new');
    const now = await a.store.get(entry);
    expect(now).not.toBe(legacy);
    expect(await vault.openFor<{ value: string }>(entry, now!, 'value')).toEqual({ value: { value: fresh, id: managedId(fresh) }, fresh: true });
  });

  it('instances that cannot open the sealed version fail closed (503), never with another key', async () => {
    const { r, a, fresh } = await rotatedToManaged();
    const noVault = await r.runtime({ vault: null });
    const otherVault = await r.runtime({ vault: randomSecret('othervault') });
    const mark = r.server.calls.length;
    for (const runtime of [noVault, otherVault]) {
      expect(await call(runtime, r.server)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
      // Listed as unreadable there, not as serving.
      expect(await statuses(runtime)).toEqual({ 'env:SVC_KEY': 'fallback', [managedId(fresh)]: 'unreadable' });
    }
    expect((await statuses(a))[managedId(fresh)]).toBe('serving');
    expect(r.server.calls.length).toBe(mark);
    expect(await labelOf(a, r.server)).toBe('new');
  });

  it("a store read of a managed version that fails leaves the list whole, the version with the ring's status", async () => {
    const { r, fresh } = await rotatedToManaged();
    const b = await r.runtime();
    // This instance's store times out on the sealed values only (a partial outage): the ring record still reads.
    const get = b.store.get.bind(b.store);
    b.store.get = async (key: string) => {
      if (key.startsWith('keyval:')) throw new StoreUnavailableError('timed out');
      return get(key);
    };
    expect(await statuses(b)).toEqual({ 'env:SVC_KEY': 'fallback', [managedId(fresh)]: 'serving' });
  });
});

// ---------------------------------------------------------------------------------------------------------
// 8. Configuration
// ---------------------------------------------------------------------------------------------------------

function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as Error).message;
  }
  throw new Error('expected a ConfigError');
}

describe('basic auth with a username from the environment', () => {
  it('a key added to the ring goes out with that username, a short one (not a secret, not scrubbed) or a long one', async () => {
    for (const username of ['ab', randomSecret('acct')]) {
      const r = await ring();
      const runtime = await r.runtime({
        upstreams: [
          defineUpstream('bas', {
            baseUrl: `${r.server.origin}/v1/`,
            auth: { type: 'basic', username: { env: 'BAS_USER' }, secret: { env: 'SVC_KEY' } },
            routes: ROUTES,
          }),
        ],
        env: { BAS_USER: username },
      });
      const fresh = newKey(r.server, 'basic-new');
      expect((await runtime.keyRings.rotate('bas', fresh, { actor: 'x', skipCanary: true })).state).toBe('switched');
      const credential = await runtime.keyRings.credential(runtime.registry.get('bas')!);
      const [scheme, encoded] = credential.headerValue!.split(' ');
      expect(scheme).toBe('Basic');
      expect(Buffer.from(encoded!, 'base64').toString('utf8') === `${username}:${fresh}`, username.length < 8 ? username : 'the long one').toBe(true);
      expect(credential.secrets.includes(username)).toBe(username.length >= 8);
    }
  });
});

describe('configuration of key rings', () => {
  const base = (secret: UpstreamInput['auth']['secret']): UpstreamInput => ({
    baseUrl: 'http://127.0.0.1:9/v1/',
    auth: { type: 'header', name: 'x-api-key', secret },
    routes: ROUTES,
  });

  it('keys on an upstream whose key is per user (own key, OAuth, per-claim) → ConfigError naming keys', () => {
    for (const secret of [{ user: 'key' }, { oauth: 'oidc' }, { claim: 'org', keys: { acme: { env: 'ACME_KEY' } } }] as const) {
      const message = configError(() => defineUpstream('peruser', { ...base(secret), keys: { expiresInDays: 30 } }));
      expect(message).toContain('upstreams.peruser.keys');
      expect(message).toContain('service key');
    }
    // The same upstreams without keys are fine, and a service key with keys is fine.
    expect(defineUpstream('peruser', base({ user: 'key' })).id).toBe('peruser');
    expect(defineUpstream('svc', { ...base({ env: 'SVC_KEY' }), keys: { expiresInDays: 30 } }).config.keys?.expiresInDays).toBe(30);
  });

  it('a duplicate env version → ConfigError naming the version, never the value', () => {
    const key = randomSecret('dup');
    const k2 = randomSecret('dup2');
    allKeys.push(key, k2);
    const build = (keys: UpstreamInput['keys']) => () =>
      createRuntime({ env: { ...sessionSecrets, SVC_KEY: key, K2: k2, KEYWARD_STORE: 'memory' }, upstreams: [svc('http://127.0.0.1:9', keys)] });
    const sameAsPrimary = configError(build({ versions: [{ env: 'SVC_KEY' }] }));
    expect(sameAsPrimary).toContain('upstreams.svc.keys.versions.0.env');
    expect(sameAsPrimary).toContain('SVC_KEY');
    const twice = configError(build({ versions: [{ env: 'K2' }, { env: 'K2', notBefore: '2031-01-01T00:00:00Z' }] }));
    expect(twice).toContain('upstreams.svc.keys.versions.1.env');
    const missing = configError(build({ versions: [{ env: 'NOT_SET_ANYWHERE' }] }));
    expect(missing).toContain('upstreams.svc.keys.versions.0');
    expect(missing).toContain('NOT_SET_ANYWHERE');
    for (const message of [sameAsPrimary, twice, missing]) expect(findLeak(message, [key, k2]) === null, 'a key value in a ConfigError').toBe(true);
  });

  it('a canary path with a parameter or a wildcard, or a non-GET/HEAD canary, is refused', () => {
    for (const path of ['/items/:id', '/files/*', 'health']) {
      const message = configError(() => svc('http://127.0.0.1:9', { canary: { method: 'GET', path } }));
      expect(message).toContain('upstreams.svc.keys.canary.path');
    }
    const post = configError(() => svc('http://127.0.0.1:9', { canary: { method: 'POST' as 'GET', path: '/health' } }));
    expect(post).toContain('upstreams.svc.keys.canary.method');
    expect(svc('http://127.0.0.1:9', { canary: { method: 'HEAD', path: '/v2/health-check' } }).config.keys?.canary).toEqual({ method: 'HEAD', path: '/v2/health-check' });
  });

  it('versions with an invalid time, unknown fields, or too many are refused', () => {
    expect(configError(() => svc('http://127.0.0.1:9', { versions: [{ env: 'K2', notBefore: 'tomorrow' }] }))).toContain('upstreams.svc.keys.versions.0.notBefore');
    expect(configError(() => svc('http://127.0.0.1:9', { versions: [{ env: 'K2', value: 'inline' } as never] }))).toContain('upstreams.svc.keys.versions.0');
    expect(configError(() => svc('http://127.0.0.1:9', { expiresInDays: 0 }))).toContain('upstreams.svc.keys.expiresInDays');
  });
});

// ---------------------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------------------

describe('logs', () => {
  it('no log line of any runtime in this file carries a key value', () => {
    expect(globalLog.lines.length).toBeGreaterThan(0);
    expect(findLeak(allLogs.map((lines) => lines.join('')).join(''), allKeys) === null, 'a key value reached a log line').toBe(true);
  });
});
