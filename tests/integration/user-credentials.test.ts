import { readdirSync, readFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { KEY_WRITES_MAX, KEY_WRITES_WINDOW_MS, handleUserKey } from '../../lib/core/api/keys';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { keyFingerprints } from '../../lib/core/keys/fingerprint';
import { SqliteStore } from '../../lib/store/sqlite';
import type { Store } from '../../lib/store/types';
import { MemoryStore } from '../../lib/store/memory';
import { UserKeys } from '../../lib/core/credential/user-keys';
import { Vault } from '../../lib/core/vault/seal';
import { bearerToken } from '../fixtures/session';
import { claimsSessionCookie, capturingLogger, findLeak, leakForms, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * Per-user credentials at handler level, against a real recording upstream on loopback:
 *  - bring-your-own-key (`{"user":"key"}`): PUT/GET/DELETE /api/keys/<upstream> and its use by the proxy;
 *  - a service key chosen by a session claim (`{"claim":"org","keys":{…}}`).
 * The store is the embedded SQLite file, so "restart" is a new store and runtime over the same file.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const ALICE = 'local:alice';
const BOB = 'local:bob';

let upstream: TestUpstream;
let dir: string;
let dbPath: string;
const sessionSecrets = testSessionSecrets();
/** Fingerprints as the runtime computes them: keyed by KEYWARD_SESSION_SECRET. */
const fingerprint = (value: string) => keyFingerprints(sessionSecrets.KEYWARD_SESSION_SECRET).of(value);
const vault1 = randomSecret('vault1');
const vault2 = randomSecret('vault2');
const acmeKey = randomSecret('acme');
const globexKey = randomSecret('globex');
const aliceKey = randomSecret('aliceKey');
const aliceKey2 = randomSecret('aliceKeyTwo');
const bobKey = randomSecret('bobKey');
const bobKey2 = randomSecret('bobKeyTwo');
const userKeys = [aliceKey, aliceKey2, bobKey, bobKey2];
const accountId = `acct-${randomSecret('id').slice(-12)}`;
const { logger, lines: logLines } = capturingLogger();
/** Every response any test saw, flattened: nothing here may carry a user key. */
const responses: string[] = [];
const opened: Store[] = [];
let aliceCookie: string;
let bobCookie: string;

function definitions(origin: string) {
  const routes = [{ method: 'GET' as const, path: '/items/:id' }];
  return [
    defineUpstream('byok', {
      baseUrl: `${origin}/byok/`,
      auth: { type: 'header', name: 'x-api-key', secret: { user: 'key' } },
      routes,
    }),
    defineUpstream('byok-bearer', {
      baseUrl: `${origin}/byok-bearer/`,
      auth: { type: 'bearer', secret: { user: 'key' } },
      routes,
    }),
    defineUpstream('byok-basic', {
      baseUrl: `${origin}/byok-basic/`,
      auth: { type: 'basic', username: { env: 'ACCOUNT_ID' }, secret: { user: 'key' } },
      routes,
    }),
    defineUpstream('org', {
      baseUrl: `${origin}/org/`,
      auth: {
        type: 'header',
        name: 'x-api-key',
        secret: { claim: 'org', keys: { acme: { env: 'ACME_KEY' }, globex: { env: 'GLOBEX_KEY' } } },
      },
      routes,
    }),
    defineUpstream('service', {
      baseUrl: `${origin}/service/`,
      auth: { type: 'header', name: 'x-api-key', secret: { env: 'ACME_KEY' } },
      routes,
    }),
  ];
}

function start(vault: { current: string; previous?: string }): Runtime {
  const store = new SqliteStore(dbPath);
  opened.push(store);
  const env: Record<string, string> = {
    ...sessionSecrets,
    KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
    KEYWARD_VAULT_SECRET: vault.current,
    ACME_KEY: acmeKey,
    GLOBEX_KEY: globexKey,
    ACCOUNT_ID: accountId,
  };
  if (vault.previous) env.KEYWARD_VAULT_SECRET_PREVIOUS = vault.previous;
  return createRuntime({ env, upstreams: definitions(upstream.origin), store, logger });
}

interface Result {
  status: number;
  body: string;
  json<T = Record<string, unknown>>(): T;
  headers: Headers;
}

async function record(response: Response): Promise<Result> {
  const flat = await responseText(response);
  responses.push(flat.text);
  return { status: flat.status, body: flat.body, headers: response.headers, json: <T>() => JSON.parse(flat.body) as T };
}

interface KeyCall {
  cookie?: string | null;
  authorization?: string;
  csrf?: boolean;
  origin?: string | null;
  body?: string;
  contentType?: string;
}

/** Calls /api/keys/<upstream> as a browser would (cookie, X-Keyward-CSRF, Origin on PUT/DELETE) unless told otherwise. */
async function keys(runtime: Runtime, method: string, upstreamId: string, options: KeyCall = {}): Promise<Result> {
  const headers = new Headers();
  const cookie = options.cookie === undefined ? aliceCookie : options.cookie;
  if (cookie) headers.set('cookie', cookie);
  if (options.authorization) headers.set('authorization', options.authorization);
  if (options.csrf !== false) headers.set('x-keyward-csrf', '1');
  const origin = options.origin === undefined ? (method === 'GET' ? null : APP_ORIGIN) : options.origin;
  if (origin) headers.set('origin', origin);
  if (options.body !== undefined) headers.set('content-type', options.contentType ?? 'application/json');
  const request = new Request(`${APP_ORIGIN}/api/keys/${encodeURIComponent(upstreamId)}`, {
    method,
    headers,
    body: options.body,
  });
  return record(await handleUserKey(request, upstreamId, runtime));
}

const put = (runtime: Runtime, upstreamId: string, key: unknown, options: KeyCall = {}) =>
  keys(runtime, 'PUT', upstreamId, { body: JSON.stringify({ key }), ...options });

/** A proxied GET /items/1 with a cookie session (CSRF header included). */
async function proxy(runtime: Runtime, upstreamId: string, cookie: string): Promise<Result> {
  const request = new Request(`${APP_ORIGIN}/api/proxy/${upstreamId}/items/1`, {
    headers: { cookie, 'x-keyward-csrf': '1' },
  });
  return record(await handleProxy(request, { upstream: upstreamId, path: ['items', '1'] }, runtime));
}

/** Runs `call` and returns what the upstream received for it (null: nothing reached the upstream). */
async function upstreamSaw(call: () => Promise<Result>) {
  const before = upstream.requests.length;
  const result = await call();
  const seen = upstream.requests.slice(before);
  expect(seen.length).toBeLessThanOrEqual(1);
  return { result, seen: seen[0] ?? null };
}

function expectError(result: Result, status: number, code: string) {
  expect(result.status).toBe(status);
  expect(result.json<{ error: { code: string } }>().error.code).toBe(code);
}

beforeAll(async () => {
  upstream = await startUpstream();
  dir = mkdtempSync(join(tmpdir(), 'keyward-byok-'));
  dbPath = join(dir, 'keyward.db');
  aliceCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: ALICE });
  bobCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: BOB });
});

afterAll(async () => {
  await upstream?.close();
  await Promise.all(opened.map((store) => store.close()));
});

describe('bring your own key: /api/keys/<upstream> and the proxy', () => {
  let runtime: Runtime;
  beforeAll(() => {
    runtime = start({ current: vault1 });
  });

  it('PUT stores the key (201) and answers only {upstream, fingerprint, last4, createdAt, lastUsedAt}', async () => {
    const result = await put(runtime, 'byok', aliceKey);
    expect(result.status).toBe(201);
    expect(result.headers.get('cache-control')).toBe('private, no-store');
    const body = result.json();
    expect(Object.keys(body).sort()).toEqual(['createdAt', 'fingerprint', 'last4', 'lastUsedAt', 'upstream']);
    expect(body).toMatchObject({
      upstream: 'byok',
      fingerprint: fingerprint(aliceKey),
      last4: aliceKey.slice(-4),
      lastUsedAt: null,
    });
    expect(Number.isNaN(Date.parse(body.createdAt as string))).toBe(false);
    expect(findLeak(result.body, userKeys)).toBeNull();
  });

  it('GET shows the same description, never the key', async () => {
    const result = await keys(runtime, 'GET', 'byok');
    expect(result.status).toBe(200);
    const body = result.json();
    expect(Object.keys(body).sort()).toEqual(['createdAt', 'fingerprint', 'last4', 'lastUsedAt', 'upstream']);
    expect(body.fingerprint).toBe(fingerprint(aliceKey));
    expect(findLeak(result.body, userKeys)).toBeNull();
  });

  it('the value in the store is sealed: neither the entry nor the SQLite files hold the key in any form', async () => {
    const raw = await runtime.store.get(`ukey:byok:${ALICE}`);
    expect(raw).not.toBeNull();
    expect(findLeak(raw!, userKeys)).toBeNull();
    const stored = JSON.parse(raw!) as Record<string, unknown>;
    expect(stored.sealed).toMatch(/^Fe26\.2\*/);
    for (const file of readdirSync(dir)) {
      const bytes = readFileSync(join(dir, file)).toString('latin1');
      expect(findLeak(bytes, userKeys), `${file} holds the plain key`).toBeNull();
    }
  });

  it("the key is attached upstream for its owner's calls; the upstream's echo of it is scrubbed", async () => {
    const { result, seen } = await upstreamSaw(() => proxy(runtime, 'byok', aliceCookie));
    expect(result.status).toBe(200);
    expect(seen?.headers['x-api-key']).toBe(aliceKey);
    expect(seen?.url).toBe('/byok/items/1');
    expect(result.body).toContain('[REDACTED]');
    expect(findLeak(result.body, userKeys)).toBeNull();
  });

  it('the last use is recorded and shown by GET', async () => {
    await vi.waitFor(async () => {
      const result = await keys(runtime, 'GET', 'byok');
      expect(result.json().lastUsedAt).not.toBeNull();
    });
  });

  it("user B without a key gets 403 credential_missing, never A's key; nothing reaches the upstream", async () => {
    const { result, seen } = await upstreamSaw(() => proxy(runtime, 'byok', bobCookie));
    expectError(result, 403, 'credential_missing');
    expect(seen).toBeNull();
    expectError(await keys(runtime, 'GET', 'byok', { cookie: bobCookie }), 403, 'credential_missing');
  });

  it("each user's key goes only with their own calls", async () => {
    expect((await put(runtime, 'byok', bobKey, { cookie: bobCookie })).status).toBe(201);
    const bob = await upstreamSaw(() => proxy(runtime, 'byok', bobCookie));
    expect(bob.result.status).toBe(200);
    expect(bob.seen?.headers['x-api-key']).toBe(bobKey);
    const alice = await upstreamSaw(() => proxy(runtime, 'byok', aliceCookie));
    expect(alice.seen?.headers['x-api-key']).toBe(aliceKey);
    expect((await keys(runtime, 'GET', 'byok', { cookie: bobCookie })).json().fingerprint).toBe(fingerprint(bobKey));
  });

  it('a key stored for one upstream is not used for another one', async () => {
    const { result, seen } = await upstreamSaw(() => proxy(runtime, 'byok-bearer', aliceCookie));
    expectError(result, 403, 'credential_missing');
    expect(seen).toBeNull();
  });

  it("the key is attached in the upstream's declared shape (bearer)", async () => {
    expect((await put(runtime, 'byok-bearer', aliceKey2)).status).toBe(201);
    const { result, seen } = await upstreamSaw(() => proxy(runtime, 'byok-bearer', aliceCookie));
    expect(result.status).toBe(200);
    expect(seen?.headers.authorization).toBe(`Bearer ${aliceKey2}`);
    expect(seen?.headers['x-api-key']).toBeUndefined();
  });

  it("basic auth with the username from the environment: the user's key is the password, under that username", async () => {
    expect((await put(runtime, 'byok-basic', aliceKey2)).status).toBe(201);
    const { result, seen } = await upstreamSaw(() => proxy(runtime, 'byok-basic', aliceCookie));
    expect(result.status).toBe(200);
    expect(seen?.headers.authorization).toBe(`Basic ${Buffer.from(`${accountId}:${aliceKey2}`).toString('base64')}`);
  });

  it('DELETE removes it (204): the next call is 403 credential_missing again, a second DELETE is 403', async () => {
    expect((await put(runtime, 'byok', bobKey2, { cookie: bobCookie })).status).toBe(201);
    const deleted = await keys(runtime, 'DELETE', 'byok', { cookie: bobCookie });
    expect(deleted.status).toBe(204);
    expect(deleted.body).toBe('');
    const { result, seen } = await upstreamSaw(() => proxy(runtime, 'byok', bobCookie));
    expectError(result, 403, 'credential_missing');
    expect(seen).toBeNull();
    expect(await runtime.store.get(`ukey:byok:${BOB}`)).toBeNull();
    expectError(await keys(runtime, 'DELETE', 'byok', { cookie: bobCookie }), 403, 'credential_missing');
    // Alice's key is untouched by Bob's DELETE.
    expect((await upstreamSaw(() => proxy(runtime, 'byok', aliceCookie))).seen?.headers['x-api-key']).toBe(aliceKey);
  });

  it.each([
    ['leading whitespace', ` ${randomSecret('k')}`],
    ['trailing whitespace', `${randomSecret('k')} `],
    ['a space inside', 'abcd efgh12345'],
    ['a line break', 'abcdefgh\r\nX-Injected: 1'],
    ['a tab', 'abcd\tefgh12345'],
    ['too short', 'abc1234'],
    ['empty', ''],
    ['non-ASCII', 'clé-secrète-123'],
    ['too long', 'k'.repeat(4097)],
    ['not a string', 12345678],
  ])('an invalid key (%s) is refused with 400 and nothing is stored', async (_name, key) => {
    const result = await put(runtime, 'byok', key, { cookie: bobCookie });
    expectError(result, 400, 'bad_request');
    expect(await runtime.store.get(`ukey:byok:${BOB}`)).toBeNull();
  });

  it.each([
    ['an unknown field next to key', JSON.stringify({ key: randomSecret('k'), upstream: 'other' })],
    ['a userId field (cannot store for someone else)', JSON.stringify({ key: randomSecret('k'), userId: ALICE })],
    ['no key field', JSON.stringify({ value: randomSecret('k') })],
    ['an empty object', '{}'],
    ['an array', JSON.stringify([randomSecret('k')])],
    ['invalid JSON', '{"key": '],
  ])('a body with %s is refused with 400', async (_name, body) => {
    const result = await keys(runtime, 'PUT', 'byok', { cookie: bobCookie, body });
    expectError(result, 400, 'bad_request');
    expect(await runtime.store.get(`ukey:byok:${BOB}`)).toBeNull();
  });

  it(`a user makes at most ${KEY_WRITES_MAX} key changes in ${KEY_WRITES_WINDOW_MS / 60_000} minutes (each is an audit record): then 429`, async () => {
    const erinCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:erin' });
    const statuses: number[] = [];
    for (let i = 0; i < KEY_WRITES_MAX; i++) statuses.push((await put(runtime, 'byok', randomSecret('k'), { cookie: erinCookie })).status);
    expect(statuses).toEqual(Array(KEY_WRITES_MAX).fill(201));
    const refused = await put(runtime, 'byok', randomSecret('k'), { cookie: erinCookie });
    expectError(refused, 429, 'rate_limited');
    expect(refused.headers.get('retry-after')).toBe(String(KEY_WRITES_WINDOW_MS / 1000));
    expectError(await keys(runtime, 'DELETE', 'byok', { cookie: erinCookie }), 429, 'rate_limited');
    const audit = await runtime.audit.query({ type: 'admin', action: 'user_key.put' }, { limit: 100 });
    expect(audit.records.filter((r) => 'actor' in r && r.actor === 'local:erin')).toHaveLength(KEY_WRITES_MAX);
    // Others are not held back by it.
    const daveCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:dave' });
    expect((await put(runtime, 'byok', randomSecret('k'), { cookie: daveCookie })).status).toBe(201);
  });

  it('a form-encoded body is refused with 400 (JSON only)', async () => {
    const key = randomSecret('k');
    const result = await keys(runtime, 'PUT', 'byok', {
      cookie: bobCookie,
      body: `key=${key}`,
      contentType: 'application/x-www-form-urlencoded',
    });
    expectError(result, 400, 'bad_request');
    expect(await runtime.store.get(`ukey:byok:${BOB}`)).toBeNull();
  });

  describe('CSRF for cookie sessions', () => {
    it.each([
      ['PUT without X-Keyward-CSRF', 'PUT', { csrf: false }],
      ['PUT without Origin', 'PUT', { origin: null }],
      ['PUT from another origin', 'PUT', { origin: 'https://evil.example' }],
      ['DELETE without X-Keyward-CSRF', 'DELETE', { csrf: false }],
      ['DELETE from another origin', 'DELETE', { origin: 'https://evil.example' }],
      ['GET without X-Keyward-CSRF', 'GET', { csrf: false }],
    ] as const)('%s → 403 csrf_failed, and nothing changes', async (_name, method, options) => {
      const before = await runtime.store.get(`ukey:byok:${ALICE}`);
      const body = method === 'PUT' ? JSON.stringify({ key: randomSecret('csrf') }) : undefined;
      const result = await keys(runtime, method, 'byok', { ...options, body });
      expectError(result, 403, 'csrf_failed');
      expect(await runtime.store.get(`ukey:byok:${ALICE}`)).toBe(before);
      expect(before).not.toBeNull();
    });

    it('a bearer (mobile) session needs no CSRF header', async () => {
      const token = await bearerToken(sessionSecrets.KEYWARD_SESSION_SECRET, { sub: 'local:carol' });
      const key = randomSecret('carol');
      const result = await put(runtime, 'byok', key, {
        cookie: null,
        authorization: `Bearer ${token}`,
        csrf: false,
        origin: null,
      });
      expect(result.status).toBe(201);
      userKeys.push(key);
    });
  });

  it('without a session: 401, nothing stored', async () => {
    const result = await put(runtime, 'byok', randomSecret('anon'), { cookie: null });
    expectError(result, 401, 'unauthenticated');
  });

  it.each([
    ['an upstream with a service key', 'service', 404, 'route_not_found'],
    ['an unknown upstream', 'nope', 404, 'upstream_not_found'],
    ['__proto__', '__proto__', 404, 'upstream_not_found'],
    ['constructor', 'constructor', 404, 'upstream_not_found'],
  ])('PUT for %s → %i', async (_name, id, status, code) => {
    expectError(await put(runtime, id, randomSecret('k')), status, code);
  });

  it('POST is not a method of /api/keys (405)', async () => {
    expectError(
      await keys(runtime, 'POST', 'byok', { body: JSON.stringify({ key: randomSecret('k') }) }),
      405,
      'method_not_allowed',
    );
  });
});

describe('vault secret rotation', () => {
  it('a key sealed under S1 still works after a restart with KEYWARD_VAULT_SECRET=S2, KEYWARD_VAULT_SECRET_PREVIOUS=S1', async () => {
    const rotated = start({ current: vault2, previous: vault1 });
    const { result, seen } = await upstreamSaw(() => proxy(rotated, 'byok', aliceCookie));
    expect(result.status).toBe(200);
    expect(seen?.headers['x-api-key']).toBe(aliceKey);
  });

  it('without the previous secret a seal made with S1 (never used during the rotation) cannot be opened: 503, nothing sent upstream, no key in the answer', async () => {
    // The rotation test above used the key, which re-sealed it with S2; store a fresh S1-only seal first.
    expect((await put(start({ current: vault1 }), 'byok', aliceKey)).status).toBe(201);
    const s2Only = start({ current: vault2 });
    const { result, seen } = await upstreamSaw(() => proxy(s2Only, 'byok', aliceCookie));
    expectError(result, 503, 'credential_unavailable');
    expect(seen).toBeNull();
  });

  it('a key re-stored during the rotation is sealed with S2 (S1 alone cannot open it)', async () => {
    const rotated = start({ current: vault2, previous: vault1 });
    expect((await put(rotated, 'byok', aliceKey2)).status).toBe(201);
    expect((await upstreamSaw(() => proxy(rotated, 'byok', aliceCookie))).seen?.headers['x-api-key']).toBe(aliceKey2);
    const s1Only = start({ current: vault1 });
    expectError((await upstreamSaw(() => proxy(s1Only, 'byok', aliceCookie))).result, 503, 'credential_unavailable');
  });

  // Regression test: the vault used to number its passwords by position ({1: previous, 2: current}), and
  // iron-session writes that number into each seal, so finishing a rotation lost every key sealed during it.
  // Seal ids are now derived from the secret itself.
  it(
    'after the rotation completes (KEYWARD_VAULT_SECRET=S2 alone), a key re-stored during the rotation still works',
    async () => {
      const s2Only = start({ current: vault2 });
      const { result, seen } = await upstreamSaw(() => proxy(s2Only, 'byok', aliceCookie));
      expect(result.status).toBe(200);
      expect(seen?.headers['x-api-key']).toBe(aliceKey2);
    },
  );
});

describe('a service key chosen by a session claim ({claim: "org", keys})', () => {
  let runtime: Runtime;
  beforeAll(() => {
    runtime = start({ current: vault1 });
  });
  const orgCookie = (claims?: Record<string, string>) =>
    claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: ALICE, claims });

  it("claims {org: 'acme'} → acme's key upstream; {org: 'globex'} → globex's key", async () => {
    const acme = await upstreamSaw(async () => proxy(runtime, 'org', await orgCookie({ org: 'acme' })));
    expect(acme.result.status).toBe(200);
    expect(acme.seen?.headers['x-api-key']).toBe(acmeKey);
    const globex = await upstreamSaw(async () => proxy(runtime, 'org', await orgCookie({ org: 'globex' })));
    expect(globex.result.status).toBe(200);
    expect(globex.seen?.headers['x-api-key']).toBe(globexKey);
    expect(findLeak(acme.result.body + globex.result.body, [acmeKey, globexKey])).toBeNull();
  });

  it.each([
    ['no claims at all', undefined],
    ['another claim only', { team: 'acme' }],
    ['an unknown org', { org: 'initech' }],
    ['org differing in case', { org: 'ACME' }],
    ['org = __proto__', { org: '__proto__' }],
    ['org = constructor', { org: 'constructor' }],
    ['an empty org', { org: '' }],
  ])('%s → 403 credential_missing, nothing sent upstream', async (_name, claims) => {
    const { result, seen } = await upstreamSaw(async () => proxy(runtime, 'org', await orgCookie(claims)));
    expectError(result, 403, 'credential_missing');
    expect(seen).toBeNull();
  });

  it("an answer holding the upstream's key for another claim value is scrubbed of it: acme's call never shows globex's key", async () => {
    // An endpoint that lists the account's keys (one account, a key per org or plan).
    upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [acmeKey, globexKey] }));
    });
    try {
      const acme = await proxy(runtime, 'org', await orgCookie({ org: 'acme' }));
      expect(acme.status).toBe(200);
      expect(findLeak(acme.body, [acmeKey, globexKey]) === null, "a key reached acme's answer").toBe(true);
      expect(acme.json<{ keys: string[] }>().keys).toEqual(['[REDACTED]', '[REDACTED]']);
    } finally {
      upstream.reset();
    }
  });

  it('the claim is not a user key: /api/keys refuses this upstream (404)', async () => {
    expectError(await put(runtime, 'org', randomSecret('k')), 404, 'route_not_found');
  });
});

describe('no user key leaks anywhere', () => {
  it('no response body or header of this file carried a user key or the claim-chosen keys', () => {
    expect(responses.length).toBeGreaterThan(40);
    for (const text of responses) expect(findLeak(text, [...userKeys, acmeKey, globexKey])).toBeNull();
  });

  it('no log line carried a user key, while the log did record the key operations (by fingerprint)', () => {
    const all = logLines.join('');
    expect(all).toContain('user key stored');
    expect(all).toContain('user key deleted');
    expect(all).toContain(fingerprint(aliceKey));
    for (const key of [...userKeys, acmeKey, globexKey, vault1, vault2]) {
      for (const form of leakForms(key)) expect(all.includes(form), 'a secret leaked into the logs').toBe(false);
    }
  });
});

/**
 * A memory store that says when a compare-and-set (the background re-seal) has run, and whether it swapped;
 * `hold` keeps compare-and-sets waiting until released, to order them after another write.
 */
class WatchedStore extends MemoryStore {
  private readonly waiting: Array<(swapped: boolean) => void> = [];
  private gate: Promise<void> = Promise.resolve();

  nextReplace(): Promise<boolean> {
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  hold(): () => void {
    let release!: () => void;
    this.gate = new Promise((resolve) => (release = resolve));
    return release;
  }

  override async replaceIfEquals(key: string, expected: string, value: string): Promise<boolean> {
    await this.gate;
    const swapped = await super.replaceIfEquals(key, expected, value);
    this.waiting.shift()?.(swapped);
    return swapped;
  }
}

describe('vault rotation re-seals stored keys on use', () => {
  it('a key sealed with S1 is re-sealed with S2 on first use, so S1 can then be retired', async () => {
    const s1 = randomSecret('vault-one').padEnd(40, 'x');
    const s2 = randomSecret('vault-two').padEnd(40, 'y');
    const store = new WatchedStore();
    const key = randomSecret('own');
    await new UserKeys(store, new Vault(s1)).put('byok', { userId: ALICE }, key);
    const rotating = new UserKeys(store, new Vault(s2, s1));
    const resealed = store.nextReplace();
    expect(await rotating.use('byok', { userId: ALICE })).toBe(key);
    // The re-seal is written in the background: wait for that write, not for time.
    expect(await resealed).toBe(true);
    expect(await new UserKeys(store, new Vault(s2)).use('byok', { userId: ALICE })).toBe(key);
  });

  it('never overwrites a key the user replaced while the old one was being re-sealed', async () => {
    const s1 = randomSecret('vault-one').padEnd(40, 'x');
    const s2 = randomSecret('vault-two').padEnd(40, 'y');
    const store = new WatchedStore();
    const oldKey = randomSecret('old');
    const newKey = randomSecret('new');
    await new UserKeys(store, new Vault(s1)).put('byok', { userId: ALICE }, oldKey);
    const rotating = new UserKeys(store, new Vault(s2, s1));
    const resealed = store.nextReplace();
    const release = store.hold();
    const using = rotating.use('byok', { userId: ALICE });
    expect(await using).toBe(oldKey);
    // The user replaces the key while the old one's re-seal is still on its way …
    await rotating.put('byok', { userId: ALICE }, newKey);
    release();
    // … so the re-seal finds the record changed and writes nothing.
    expect(await resealed).toBe(false);
    expect(await rotating.use('byok', { userId: ALICE })).toBe(newKey);
  });
});
