import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleKeyList } from '../../lib/core/api/admin';
import { defineUpstream } from '../../lib/core/config/load';
import { KeywardError } from '../../lib/core/errors';
import { keyFingerprints } from '../../lib/core/keys/fingerprint';
import type { VersionView } from '../../lib/core/keys/rings';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { Vault } from '../../lib/core/vault/seal';
import { MemoryStore } from '../../lib/store/memory';
import { RedisStore } from '../../lib/store/redis';
import type { Store } from '../../lib/store/types';
import { REDIS_URL, capturingLogger, findLeak, responseText } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { randomSecret } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { storedRingVersion } from '../fixtures/ring-state';

/**
 * A revocation (and a retirement) survives rotating KEYWARD_SESSION_SECRET. Fingerprints are keyed by that
 * secret, so after a rotation every key has another fingerprint; a service key that was revoked or retired
 * and is still in the environment must not serve again. Two runtimes share one store (the same memory store,
 * or two Redis clients on one per-run key prefix), the second with another session secret and the same
 * environment: an instance restarted after the operator rotated the secret. Calls go through the real
 * pipeline to a real node:http upstream that records which key each call carried, by label only.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const MINUTE = 60_000;
const DAY = 86_400_000;
const AUTH_SECRET = randomSecret('auth');
const SECRET_BEFORE = randomSecret('sess');
const SECRET_AFTER = randomSecret('sess');
const vaultSecret = randomSecret('vault');
const allKeys: string[] = [];
const logs: string[][] = [];
const runtimes: Runtime[] = [];
const stores: Store[] = [];
const prefixes: string[] = [];
let server: Server;
let origin: string;
const labels = new Map<string, string>();
/** Call path → the label of the key the upstream saw. */
const seen = new Map<string, string>();
let userCookie: string;
let adminCookie: string;

const before = keyFingerprints(SECRET_BEFORE);
const after = keyFingerprints(SECRET_AFTER);

beforeAll(async () => {
  server = createServer((req, res) => {
    const key = req.headers['x-api-key'];
    seen.set((req.url ?? '').split('?')[0]!, typeof key === 'string' ? (labels.get(key) ?? 'unknown') : 'none');
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"ok":true}');
  });
  server.keepAliveTimeout = 1_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  userCookie = await sessionCookie(AUTH_SECRET, { sub: 'local:alice', roles: ['user'] }, 30 * 86_400);
  adminCookie = await sessionCookie(AUTH_SECRET, { sub: 'local:root', roles: ['user', 'admin'] }, 30 * 86_400);
});

afterAll(async () => {
  for (const runtime of runtimes) await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
  server?.closeAllConnections();
  server?.close();
  await Promise.all(stores.map((store) => store.close().catch(() => {})));
  for (const prefix of prefixes) await deleteKeysUnder(REDIS_URL, prefix);
  // No key value in any log line written by any runtime here.
  for (const lines of logs) expect(findLeak(lines.join('\n'), allKeys)).toBeNull();
});

function newKey(label: string): string {
  const key = randomSecret(`fr${label}`);
  allKeys.push(key);
  labels.set(key, label);
  return key;
}

/** One store shared by every runtime of a scenario: the same memory store, or Redis under one fresh prefix. */
function sharedStore(kind: 'memory' | 'redis'): () => Promise<Store> {
  if (kind === 'memory') {
    const store = new MemoryStore();
    stores.push(store);
    return () => Promise.resolve(store);
  }
  const prefix = `keyward-test:${randomUUID()}:`;
  prefixes.push(prefix);
  return async () => {
    const store = new RedisStore(REDIS_URL, { prefix });
    stores.push(store);
    await store.ready();
    return store;
  };
}

interface Options {
  readonly sessionSecret: string;
  readonly env: Record<string, string>;
  /** A second environment version, SVC_KEY_NEXT (active since yesterday, so it serves before SVC_KEY). */
  readonly next?: boolean;
  readonly now?: () => number;
}

async function runtimeOn(store: () => Promise<Store>, options: Options): Promise<Runtime> {
  const log = capturingLogger();
  logs.push(log.lines);
  const runtime = createRuntime({
    env: {
      AUTH_SECRET,
      KEYWARD_SESSION_SECRET: options.sessionSecret,
      KEYWARD_VAULT_SECRET: vaultSecret,
      KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
      ...options.env,
    },
    upstreams: [
      defineUpstream('svc', {
        baseUrl: `${origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
        routes: [{ method: 'GET', path: '/items/:id', roles: ['user'] }],
        keys: {
          graceSeconds: 60,
          ...(options.next ? { versions: [{ env: 'SVC_KEY_NEXT', notBefore: new Date(Date.now() - DAY).toISOString() }] } : {}),
        },
      }),
    ],
    store: await store(),
    logger: log.logger,
    now: options.now,
  });
  runtimes.push(runtime);
  return runtime;
}

let seq = 0;

/** One proxied call: its status, error code, and the label of the key the upstream saw (null: never reached). */
async function call(runtime: Runtime): Promise<{ status: number; code: string | null; label: string | null }> {
  const id = `c${++seq}`;
  const request = new Request(`${APP_ORIGIN}/api/proxy/svc/items/${id}`, { headers: { cookie: userCookie, 'x-keyward-csrf': '1' } });
  const flat = await responseText(await handleProxy(request, { upstream: 'svc', path: ['items', id] }, runtime));
  expect(findLeak(flat.text, allKeys), 'a key value reached a response').toBeNull();
  const code = flat.status === 200 ? null : ((JSON.parse(flat.body) as { error?: { code?: string } }).error?.code ?? 'no code');
  return { status: flat.status, code, label: seen.get(`/v1/items/${id}`) ?? null };
}

async function versions(runtime: Runtime): Promise<VersionView[]> {
  const entry = (await runtime.keyRings.list()).find((e) => e.upstream === 'svc')!;
  const text = JSON.stringify(entry);
  expect(findLeak(text, allKeys), 'a key value appears in the keys list').toBeNull();
  // The verifiers and their salt stay in the store: never shown.
  expect(text).not.toMatch(/verifier|salt/);
  return entry.versions;
}

async function statuses(runtime: Runtime): Promise<Record<string, string>> {
  return Object.fromEntries((await versions(runtime)).map((v) => [v.id, v.status]));
}

/** The keys list through the admin API (GET /api/admin/keys), as an admin's browser sends it. */
async function adminList(runtime: Runtime): Promise<{ status: number; text: string }> {
  const request = new Request(`${APP_ORIGIN}/api/admin/keys`, { headers: { cookie: adminCookie, 'x-keyward-csrf': '1' } });
  const flat = await responseText(await handleKeyList(request, runtime));
  expect(findLeak(flat.text, allKeys), 'a key value reached the admin API').toBeNull();
  return { status: flat.status, text: flat.body };
}

async function failure(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(KeywardError);
    expect(findLeak((error as Error).message, allKeys)).toBeNull();
    return (error as KeywardError).code;
  }
  throw new Error('expected a failure');
}

describe.each(['memory', 'redis'] as const)('rotating KEYWARD_SESSION_SECRET (%s store)', (kind) => {
  it('a revoked environment key stays revoked: the other version serves, then 503 once both are revoked', async () => {
    const store = sharedStore(kind);
    const k1 = newKey('one');
    const k2 = newKey('two');
    const env = { SVC_KEY: k1, SVC_KEY_NEXT: k2 };
    const a = await runtimeOn(store, { sessionSecret: SECRET_BEFORE, env, next: true });
    expect((await call(a)).label).toBe('two');
    expect((await a.keyRings.revoke(before.of(k2))).map((r) => r.version)).toEqual(['env:SVC_KEY_NEXT']);
    expect((await call(a)).label).toBe('one');

    // Restarted with another session secret, the same store and the same environment.
    const b = await runtimeOn(store, { sessionSecret: SECRET_AFTER, env, next: true });
    expect(after.of(k2)).not.toBe(before.of(k2));
    for (let i = 0; i < 3; i++) expect(await call(b)).toEqual({ status: 200, code: null, label: 'one' });
    expect((await b.keyRings.credential(b.registry.get('svc')!)).secrets[0]).toBe(k1);
    expect(await statuses(b)).toEqual({ 'env:SVC_KEY': 'serving', 'env:SVC_KEY_NEXT': 'revoked' });
    const listed = (await versions(b)).find((v) => v.id === 'env:SVC_KEY_NEXT')!;
    expect(listed).toMatchObject({ state: 'revoked', fingerprint: after.of(k2) });
    // A revoked key cannot come back as a managed version either.
    expect(await failure(b.keyRings.add('svc', k2))).toBe('bad_request');

    // Revoking the other one after the rotation (by the fingerprint shown now): nothing is left.
    await b.keyRings.revoke(after.of(k1));
    for (const runtime of [a, b]) expect(await call(runtime)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    // And under a third secret, or back under the first one, both stay revoked.
    for (const sessionSecret of [randomSecret('sess'), SECRET_BEFORE]) {
      const c = await runtimeOn(store, { sessionSecret, env, next: true });
      expect(await call(c)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
      expect(await statuses(c)).toEqual({ 'env:SVC_KEY': 'revoked', 'env:SVC_KEY_NEXT': 'revoked' });
    }
  });

  it('the only key, revoked: 503 credential_unavailable after the rotation, shown revoked (also through the admin API)', async () => {
    const store = sharedStore(kind);
    const k1 = newKey('only');
    const a = await runtimeOn(store, { sessionSecret: SECRET_BEFORE, env: { SVC_KEY: k1 } });
    expect((await call(a)).label).toBe('only');
    await a.keyRings.revoke(before.of(k1));
    const b = await runtimeOn(store, { sessionSecret: SECRET_AFTER, env: { SVC_KEY: k1 } });
    expect(await call(b)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    expect(await failure(b.keyRings.credential(b.registry.get('svc')!))).toBe('credential_unavailable');
    expect(await statuses(b)).toEqual({ 'env:SVC_KEY': 'revoked' });
    const api = await adminList(b);
    expect(api.status).toBe(200);
    expect(api.text).not.toMatch(/verifier|salt/);
    const [ring] = (JSON.parse(api.text) as { upstreams: Array<{ versions: VersionView[] }> }).upstreams;
    expect(ring!.versions.map((v) => [v.id, v.fingerprint, v.status])).toEqual([['env:SVC_KEY', after.of(k1), 'revoked']]);
  });

  it('a retired environment key stays retired: no fallback after its grace window, 503 once the new key is revoked', async () => {
    const store = sharedStore(kind);
    let clock = Date.now();
    const now = () => clock;
    const k1 = newKey('retired');
    const fresh = newKey('managed');
    const env = { SVC_KEY: k1 };
    const a = await runtimeOn(store, { sessionSecret: SECRET_BEFORE, env, now });
    expect((await a.keyRings.rotate('svc', fresh, { skipCanary: true, actor: 'local:root' })).state).toBe('switched');
    expect((await call(a)).label).toBe('managed');

    // Within the grace window, after the rotation of the session secret: the managed key serves, the old one
    // is the fallback (retired, not active).
    const b = await runtimeOn(store, { sessionSecret: SECRET_AFTER, env, now });
    expect((await call(b)).label).toBe('managed');
    expect((await versions(b)).find((v) => v.id === 'env:SVC_KEY')).toMatchObject({ state: 'retired', status: 'fallback' });

    // After the grace window the old key is retired for good, on either side of the rotation.
    clock += 2 * MINUTE;
    expect((await versions(b)).find((v) => v.id === 'env:SVC_KEY')).toMatchObject({ state: 'retired', status: 'retired' });
    await a.keyRings.revoke(before.of(fresh));
    for (const runtime of [a, b]) expect(await call(runtime)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    const c = await runtimeOn(store, { sessionSecret: randomSecret('sess'), env, now });
    expect(await call(c)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    expect(Object.values(await statuses(c))).toEqual(['retired', 'revoked']);
    // The revoked managed key cannot be added again under the new fingerprints.
    expect(await failure(c.keyRings.add('svc', fresh))).toBe('bad_request');
  });

  it('a rollback after the rotation puts the environment key back (its stored entry names it, not the fingerprint of then)', async () => {
    const store = sharedStore(kind);
    const k1 = newKey('back');
    const fresh = newKey('undone');
    const env = { SVC_KEY: k1 };
    const a = await runtimeOn(store, { sessionSecret: SECRET_BEFORE, env });
    const rotation = await a.keyRings.rotate('svc', fresh, { skipCanary: true, actor: 'local:root' });
    expect(rotation.from).toEqual([before.of(k1)]);
    const b = await runtimeOn(store, { sessionSecret: SECRET_AFTER, env });
    expect((await call(b)).label).toBe('undone');
    expect((await b.keyRings.rollback(rotation.id)).state).toBe('rolled_back');
    expect((await call(b)).label).toBe('back');
    expect(await statuses(b)).toEqual({ 'env:SVC_KEY': 'serving', [`managed:${before.of(fresh)}`]: 'retired' });
  });

  it('state written before verifiers existed: recorded on the first read, so it survives a rotation after it', async () => {
    const store = sharedStore(kind);
    const k1 = newKey('keep');
    const k2 = newKey('gone');
    const managed = newKey('sealed');
    const env = { SVC_KEY: k1, SVC_KEY_NEXT: k2 };
    const managedId = `managed:${before.of(managed)}`;
    // What Keyward wrote before this change: keyed fingerprints, no verifiers, no salt.
    const seed = await store();
    await seed.set(
      'keyring:svc',
      JSON.stringify({
        rev: 3,
        versions: [
          storedRingVersion({ id: 'env:SVC_KEY_NEXT', fingerprint: before.of(k2), source: 'env', state: 'revoked', revokedAt: Date.now() - MINUTE }),
          storedRingVersion({ id: managedId, fingerprint: before.of(managed), source: 'managed', state: 'revoked', revokedAt: Date.now() - MINUTE }),
        ],
        rotations: [],
      }),
    );
    await seed.set(`keyval:svc:${managedId}`, await new Vault(vaultSecret).seal({ value: managed, id: managedId }));

    const a = await runtimeOn(store, { sessionSecret: SECRET_BEFORE, env, next: true });
    expect((await call(a)).label).toBe('keep');
    const raw = (await seed.get('keyring:svc'))!;
    expect(findLeak(raw, allKeys), 'a key value in the stored ring').toBeNull();
    const stored = JSON.parse(raw) as { salt?: string; versions: Array<{ id: string; verifier?: string; fingerprint: string }> };
    expect(typeof stored.salt).toBe('string');
    expect(stored.versions.map((v) => [v.id, v.fingerprint, /^[0-9a-f]{64}$/.test(v.verifier ?? '')])).toEqual([
      ['env:SVC_KEY_NEXT', before.of(k2), true],
      [managedId, before.of(managed), true],
    ]);

    const b = await runtimeOn(store, { sessionSecret: SECRET_AFTER, env, next: true });
    for (let i = 0; i < 2; i++) expect((await call(b)).label).toBe('keep');
    expect(await statuses(b)).toEqual({ 'env:SVC_KEY': 'serving', 'env:SVC_KEY_NEXT': 'revoked', [managedId]: 'revoked' });
    expect(await failure(b.keyRings.add('svc', managed))).toBe('bad_request');
    expect(await failure(b.keyRings.add('svc', k2))).toBe('bad_request');
  });

  it('a revoke after the rotation, of a key whose earlier state no current fingerprint names, takes effect', async () => {
    const store = sharedStore(kind);
    const k1 = newKey('stale');
    const env = { SVC_KEY: k1 };
    // Retired under the first secret by an instance from before verifiers, and never read since: nothing
    // can tie that entry to the key now, so it shows as active (see the README) ...
    const seed = await store();
    await seed.set(
      'keyring:svc',
      JSON.stringify({
        rev: 1,
        versions: [
          {
            id: 'env:SVC_KEY',
            fingerprint: before.of(k1),
            source: 'env',
            created: 0,
            notBefore: null,
            expiresAt: null,
            state: 'retired',
            activatedAt: 0,
            retiredAt: Date.now() - DAY,
            graceUntil: Date.now() - DAY,
            revokedAt: null,
          },
        ],
        rotations: [],
      }),
    );
    const b = await runtimeOn(store, { sessionSecret: SECRET_AFTER, env });
    expect(await statuses(b)).toEqual({ 'env:SVC_KEY': 'serving' });
    // ... and revoking it by the fingerprint shown now really revokes it (the stale entry does not absorb it).
    expect(await b.keyRings.revoke(after.of(k1))).toEqual([{ upstream: 'svc', version: 'env:SVC_KEY' }]);
    expect(await call(b)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    const c = await runtimeOn(store, { sessionSecret: randomSecret('sess'), env });
    expect(await call(c)).toEqual({ status: 503, code: 'credential_unavailable', label: null });
    expect(await statuses(c)).toEqual({ 'env:SVC_KEY': 'revoked' });
  });
});
