import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import type { HashIncrement, LogQuery, Reservation, Store } from '../../lib/store/types';
import { REDIS_URL, capturingLogger, claimsSessionCookie, findLeak, responseText } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { startRefreshProvider, type RefreshProvider } from '../fixtures/oidc-refresh-provider';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * `{"oauth": "oidc"}`: the user's own access token from the sign-in provider, refreshed single-flight
 * across instances. A real oidc-provider on 127.0.0.1 rotates refresh tokens and counts the refresh grants
 * it serves; two runtimes with their own Redis connections (same prefix) stand for two app instances.
 *
 * The first tokens come from a real authorization code flow (PKCE) driven over HTTP by the provider fixture
 * (login and consent forms posted back, then the code exchange), not from Keyward's sign-in: the code under
 * test starts where Auth.js's jwt callback stops, at `oauthTokens.save()`.
 */
const APP_ORIGIN = 'https://app.keyward.test';

let provider: RefreshProvider;
let defaultProvider: RefreshProvider;
let upstream: TestUpstream;
let a: Runtime;
let b: Runtime;
let prefix: string;
let userId: string;
let cookie: string;
/** Added to Date.now() by both runtimes' clocks: moves stored tokens past their expiry without waiting. */
let skewMs = 0;
const now = () => Date.now() + skewMs;
const sessionSecrets = testSessionSecrets();
const vaultSecret = randomSecret('vault');
const { logger, lines: logLines } = capturingLogger();
const stores: RedisStore[] = [];
const responses: string[] = [];
const providers: RefreshProvider[] = [];

async function redisStore(): Promise<RedisStore> {
  const store = new RedisStore(REDIS_URL, { prefix });
  stores.push(store);
  await store.ready();
  return store;
}

async function instance(options: { store?: Store; provider?: RefreshProvider } = {}): Promise<Runtime> {
  const store = options.store ?? (await redisStore());
  const provider = options.provider ?? defaultProvider;
  return createRuntime({
    env: {
      ...sessionSecrets,
      KEYWARD_VAULT_SECRET: vaultSecret,
      KEYWARD_OIDC_ISSUER: provider.issuer,
      KEYWARD_OIDC_CLIENT_ID: provider.clientId,
      KEYWARD_OIDC_CLIENT_SECRET: provider.clientSecret,
      KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
    },
    upstreams: [
      defineUpstream('graph', {
        baseUrl: `${upstream.origin}/graph/`,
        auth: { type: 'bearer', secret: { oauth: 'oidc' } },
        routes: [{ method: 'GET', path: '/me' }],
      }),
    ],
    store,
    logger,
    now,
  });
}

interface CallResult {
  status: number;
  code: string | null;
  body: string;
  retryAfter: string | null;
}

async function call(runtime: Runtime, sessionCookie = cookie): Promise<CallResult> {
  const request = new Request(`${APP_ORIGIN}/api/proxy/graph/me`, {
    headers: { cookie: sessionCookie, 'x-keyward-csrf': '1' },
  });
  const response = await handleProxy(request, { upstream: 'graph', path: ['me'] }, runtime);
  const flat = await responseText(response);
  responses.push(flat.text);
  const code = flat.status === 200 ? null : (JSON.parse(flat.body) as { error: { code: string } }).error.code;
  return { status: flat.status, code, body: flat.body, retryAfter: response.headers.get('retry-after') };
}

/** `n` concurrent proxied calls, alternating between the two instances. */
function burst(n: number): Promise<CallResult[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => call(i % 2 === 0 ? a : b)));
}

/** Links a fresh grant (a new authorization code flow) with an access token that is already expired. */
async function linkExpired(): Promise<{ accessToken: string; refreshToken: string }> {
  const tokens = await provider.authorize();
  await a.oauthTokens!.save('oidc', { userId }, {
    accessToken: tokens.accessToken,
    refreshToken: tokens.refreshToken,
    expiresAt: now() - 1_000,
  });
  return tokens;
}

beforeAll(async () => {
  provider = await startRefreshProvider({ accessTokenTtl: 120 });
  defaultProvider = provider;
  providers.push(provider);
  upstream = await startUpstream();
  prefix = `keyward-test:oauth:${randomUUID()}:`;
  a = await instance();
  b = await instance();
  userId = `oidc:${provider.accountId}`;
  cookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: userId });
});

afterAll(async () => {
  await Promise.all(providers.map((p) => p.stop()));
  await upstream?.close();
  await Promise.all(stores.map((store) => store.close()));
  if (prefix) await deleteKeysUnder(REDIS_URL, prefix);
});

describe('single-flight refresh across two instances', () => {
  let initial: { accessToken: string; refreshToken: string };

  it('the initial tokens come from a real authorization code flow (one token request, no refresh yet)', async () => {
    initial = await linkExpired();
    expect(initial.accessToken).not.toBe(initial.refreshToken);
    expect(provider.counts()).toEqual({ tokenRequests: 1, refreshGrants: 0, refreshServed: 0, refreshRefused: 0 });
    expect(provider.issued().refreshTokens).toEqual([initial.refreshToken]);
  });

  it('50 concurrent calls split over both instances: exactly ONE refresh grant, all succeed with the NEW token', async () => {
    const before = upstream.requests.length;
    const results = await burst(50);
    expect(results.map((r) => r.status)).toEqual(Array(50).fill(200));
    expect(provider.counts()).toEqual({ tokenRequests: 2, refreshGrants: 1, refreshServed: 1, refreshRefused: 0 });

    const fresh = provider.issued().accessTokens.at(-1)!;
    expect(fresh).not.toBe(initial.accessToken);
    const seen = upstream.requests.slice(before);
    expect(seen).toHaveLength(50);
    for (const request of seen) expect(request.headers.authorization).toBe(`Bearer ${fresh}`);
  });

  it('the store now holds the rotated refresh token and the new access token, sealed', async () => {
    const issued = provider.issued();
    const stored = await b.oauthTokens!.load('oidc', userId);
    expect(stored?.accessToken).toBe(issued.accessTokens.at(-1));
    expect(stored?.refreshToken).toBe(issued.refreshTokens.at(-1));
    expect(stored?.refreshToken).not.toBe(initial.refreshToken);
    expect(stored!.expiresAt).toBeGreaterThan(now() + 60_000);
    const raw = await a.store.get(`oauth:oidc:${userId}`);
    expect(raw).toMatch(/^Fe26\.2\*/);
    expect(findLeak(raw!, [...issued.accessTokens, ...issued.refreshTokens])).toBeNull();
  });

  it('while the token is fresh, calls do not touch the provider', async () => {
    const results = await burst(6);
    expect(results.every((r) => r.status === 200)).toBe(true);
    expect(provider.counts().refreshGrants).toBe(1);
  });

  it('when it expires again, the next burst refreshes once more, with the ROTATED refresh token', async () => {
    skewMs += 10 * 60_000;
    const before = upstream.requests.length;
    const results = await burst(20);
    expect(results.map((r) => r.status)).toEqual(Array(20).fill(200));
    // Had the old refresh token been sent, the provider would have refused it and revoked the grant.
    expect(provider.counts()).toMatchObject({ refreshGrants: 2, refreshServed: 2, refreshRefused: 0 });
    const fresh = provider.issued().accessTokens.at(-1)!;
    for (const request of upstream.requests.slice(before))
      expect(request.headers.authorization).toBe(`Bearer ${fresh}`);
  });
});

describe('a refresh refused for good ends the link, without a loop', () => {
  it('grant revoked at the provider: 401 reauth_required, the link is removed, the next call does not hit the provider', async () => {
    const stored = await a.oauthTokens!.load('oidc', userId);
    await provider.revoke(stored!.refreshToken!);
    skewMs += 10 * 60_000;
    const grantsBefore = provider.counts().refreshGrants;
    const upstreamBefore = upstream.requests.length;

    const first = await call(a);
    expect(first.status).toBe(401);
    expect(first.code).toBe('reauth_required');
    expect(provider.counts()).toMatchObject({ refreshGrants: grantsBefore + 1, refreshRefused: 1 });
    expect(await b.oauthTokens!.load('oidc', userId)).toBeNull();
    // Nothing sealed is left: the tokens are replaced by the mark that says the link ended.
    expect(await b.store.get(`oauth:oidc:${userId}`)).toBe('ended');

    // Every later call, on either instance, says the same until the user signs in again.
    for (const runtime of [b, a]) {
      const again = await call(runtime);
      expect(again.status).toBe(401);
      expect(again.code).toBe('reauth_required');
    }
    expect(provider.counts().refreshGrants).toBe(grantsBefore + 1);
    expect(upstream.requests.length).toBe(upstreamBefore);
  });

  it('a rotated (already used) refresh token in the store: one refused grant for a whole burst, every call refused, none 200', async () => {
    const tokens = await linkExpired();
    expect((await call(a)).status).toBe(200); // rotates tokens.refreshToken at the provider
    // The store goes back to the spent refresh token (e.g. restored from a backup) and the access token expires.
    await a.oauthTokens!.save('oidc', { userId }, {
      accessToken: tokens.accessToken,
      refreshToken: tokens.refreshToken,
      expiresAt: now() - 1_000,
    });
    const before = provider.counts();
    const upstreamBefore = upstream.requests.length;

    const results = await burst(20);
    for (const result of results) {
      expect(result.status).toBe(401);
      expect(result.code).toBe('reauth_required');
    }
    expect(provider.counts().refreshGrants).toBe(before.refreshGrants + 1);
    expect(provider.counts().refreshRefused).toBe(before.refreshRefused + 1);
    expect(upstream.requests.length).toBe(upstreamBefore);
    expect(await a.oauthTokens!.load('oidc', userId)).toBeNull();

    const later = await call(b);
    expect(later.code).toBe('reauth_required');
    expect(provider.counts().refreshGrants).toBe(before.refreshGrants + 1);

    // Signing in again saves a new grant (what Auth.js's jwt callback does): calls work again.
    await linkExpired();
    expect((await call(b)).status).toBe(200);
  });

  it('a user with no link at all: 403 credential_missing, the provider is not asked', async () => {
    const before = provider.counts().tokenRequests;
    const other = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'oidc:someone-else' });
    const request = new Request(`${APP_ORIGIN}/api/proxy/graph/me`, {
      headers: { cookie: other, 'x-keyward-csrf': '1' },
    });
    const response = await handleProxy(request, { upstream: 'graph', path: ['me'] }, a);
    expect(response.status).toBe(403);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe('credential_missing');
    expect(provider.counts().tokenRequests).toBe(before);
  });
});

/** Passes every call to a real store, with hooks around the single-flight lock to force one interleaving. */
class GatedStore implements Store {
  readonly kind = 'redis' as const;
  constructor(
    private readonly inner: Store,
    private readonly hooks: { beforeLock?: () => Promise<void>; afterUnlock?: () => void },
  ) {}
  get(key: string) {
    return this.inner.get(key);
  }
  getMany(keys: readonly string[]) {
    return this.inner.getMany(keys);
  }
  set(key: string, value: string, ttlMs?: number) {
    return this.inner.set(key, value, ttlMs);
  }
  async setIfAbsent(key: string, value: string, ttlMs: number) {
    if (key.startsWith('lock:')) await this.hooks.beforeLock?.();
    return this.inner.setIfAbsent(key, value, ttlMs);
  }
  raise(key: string, value: number, ttlMs: number) {
    return this.inner.raise(key, value, ttlMs);
  }
  delete(key: string) {
    return this.inner.delete(key);
  }
  replaceIfEquals(key: string, expected: string, value: string) {
    return this.inner.replaceIfEquals(key, expected, value);
  }
  async deleteIfEquals(key: string, value: string) {
    const deleted = await this.inner.deleteIfEquals(key, value);
    if (key.startsWith('lock:')) this.hooks.afterUnlock?.();
    return deleted;
  }
  increment(key: string, by: number, ttlMs?: number) {
    return this.inner.increment(key, by, ttlMs);
  }
  reserve(entries: readonly Reservation[]) {
    return this.inner.reserve(entries);
  }
  append(stream: string, value: string, at: number, retentionMs: number) {
    return this.inner.append(stream, value, at, retentionMs);
  }
  appendBatch(stream: string, entries: readonly { value: string; at: number }[], retentionMs: number) {
    return this.inner.appendBatch(stream, entries, retentionMs);
  }
  readLog(stream: string, query: LogQuery) {
    return this.inner.readLog(stream, query);
  }
  incrementHashes(entries: readonly HashIncrement[]) {
    return this.inner.incrementHashes(entries);
  }
  readHashes(keys: readonly string[], fields?: readonly string[]) {
    return this.inner.readHashes(keys, fields);
  }
  readHashField(key: string, field: string) {
    return this.inner.readHashField(key, field);
  }
  ping() {
    return this.inner.ping();
  }
  close() {
    return this.inner.close();
  }
}

describe('single-flight when the lock is taken only after the refresh finished', () => {
  it('an instance that read the expired token just before another refreshed it does not refresh again', async () => {
    let lockReached!: () => void;
    let lockReleased!: () => void;
    const reached = new Promise<void>((resolve) => (lockReached = resolve));
    const released = new Promise<void>((resolve) => (lockReleased = resolve));
    // `late` stops right before taking the lock until `holder` has refreshed and released it.
    const late = await instance({
      store: new GatedStore(await redisStore(), {
        beforeLock: async () => {
          lockReached();
          await released;
        },
      }),
    });
    const holder = await instance({ store: new GatedStore(await redisStore(), { afterUnlock: () => lockReleased() }) });
    await linkExpired();
    const grantsBefore = provider.counts().refreshGrants;
    const upstreamBefore = upstream.requests.length;

    const lateCall = call(late);
    await reached; // `late` has read the expired token and is about to take the lock
    const first = await call(holder);
    const second = await lateCall;

    expect([first.status, second.status]).toEqual([200, 200]);
    expect(provider.counts().refreshGrants).toBe(grantsBefore + 1);
    const fresh = provider.issued().accessTokens.at(-1)!;
    expect(upstream.requests.slice(upstreamBefore).map((r) => r.headers.authorization)).toEqual([
      `Bearer ${fresh}`,
      `Bearer ${fresh}`,
    ]);
  });
});

describe('access tokens that live 60 seconds or less', () => {
  it('are refreshed once per burst and then reused, not refreshed on every call', async () => {
    const shortLived = await startRefreshProvider({ accessTokenTtl: 30 });
    providers.push(shortLived);
    const [sa, sb] = [await instance({ provider: shortLived }), await instance({ provider: shortLived })];
    const user = `oidc:${shortLived.accountId}`;
    const userCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: user });
    const tokens = await shortLived.authorize();
    expect(tokens.expiresIn).toBe(30);
    await sa.oauthTokens!.save('oidc', { userId: user }, {
      accessToken: tokens.accessToken,
      refreshToken: tokens.refreshToken,
      expiresAt: now() - 1_000,
    });

    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => call(i % 2 === 0 ? sa : sb, userCookie)));
    expect(results.map((r) => r.status)).toEqual(Array(20).fill(200));
    expect(shortLived.counts().refreshGrants).toBe(1);
    for (let i = 0; i < 4; i++) expect((await call(i % 2 === 0 ? sa : sb, userCookie)).status).toBe(200);
    expect(shortLived.counts().refreshGrants).toBe(1);

    // Past half its life (15 s of 30) the token is refreshed ahead of expiry, once.
    skewMs += 20_000;
    const later = await Promise.all(Array.from({ length: 10 }, (_, i) => call(i % 2 === 0 ? sa : sb, userCookie)));
    expect(later.map((r) => r.status)).toEqual(Array(10).fill(200));
    expect(shortLived.counts()).toMatchObject({ refreshGrants: 2, refreshServed: 2 });
    for (const issued of shortLived.issued().accessTokens) {
      for (const text of responses) expect(findLeak(text, [issued])).toBeNull();
    }
  });
});

describe('the provider refuses the app, not the grant', () => {
  it('invalid_client (a wrong client secret): 503 credential_unavailable, the link is kept, and the fixed secret refreshes it', async () => {
    const tokens = await linkExpired();
    // The operator rotated the client secret at the provider but deployed the old one (or a typo).
    const misconfigured = await instance({
      provider: { ...defaultProvider, clientSecret: randomSecret('wrong_client') },
    });
    const before = provider.counts().tokenRequests;
    const logsBefore = logLines.length;

    const results = [await call(misconfigured), await call(misconfigured)];
    for (const result of results) {
      expect(result.status).toBe(503);
      expect(result.code).toBe('credential_unavailable');
      expect(Number(result.retryAfter)).toBeGreaterThan(0);
    }
    // The second call comes within the first failure's backoff: answered without asking the provider again.
    expect(provider.counts().tokenRequests).toBe(before + 1);
    expect(await a.oauthTokens!.load('oidc', userId)).toMatchObject({ refreshToken: tokens.refreshToken });
    const warned = logLines.slice(logsBefore).filter((line) => line.includes('token refresh failed'));
    expect(warned.length).toBe(1);
    expect(warned[0]).toContain('invalid_client');

    // Once the right secret is deployed, the same link refreshes: nobody had to sign in again.
    const fixed = await call(a);
    expect(fixed.status).toBe(200);
    expect(upstream.requests.at(-1)!.headers.authorization).toBe(`Bearer ${provider.issued().accessTokens.at(-1)}`);
  });
});

/**
 * An issuer on loopback that serves its discovery document and counts token requests, answering each with
 * `answer` (null: accepts it and never answers).
 */
async function scriptedIssuer(
  answer: ((res: ServerResponse) => void) | null,
): Promise<{ issuer: string; tokenRequests: () => number; close: () => void }> {
  let tokenRequests = 0;
  const server = createServer((req, res) => {
    if (req.url === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ issuer, token_endpoint: `${issuer}/token`, authorization_endpoint: `${issuer}/auth` }));
      return;
    }
    if (req.url === '/token') tokenRequests += 1;
    req.resume();
    if (answer) req.on('end', () => answer(res));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    issuer,
    tokenRequests: () => tokenRequests,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** 400 `{"error": code}` without a WWW-Authenticate challenge, as many providers answer. */
const refusedWith = (code: string) => (res: ServerResponse) => {
  res.writeHead(400, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: code, error_description: 'refused by the test issuer' }));
};

/** A user of `runtime` whose linked access token has expired, and their session cookie. */
async function expiredLink(runtime: Runtime, name: string): Promise<{ user: string; cookie: string }> {
  const user = `oidc:${name}-${randomUUID()}`;
  await runtime.oauthTokens!.save('oidc', { userId: user }, {
    accessToken: randomSecret('at'),
    refreshToken: randomSecret('rt'),
    expiresAt: now() - 1_000,
  });
  return { user, cookie: await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: user }) };
}

describe.each([
  { code: 'invalid_client', status: 503, answer: 'credential_unavailable', kept: true },
  { code: 'unauthorized_client', status: 503, answer: 'credential_unavailable', kept: true },
  { code: 'invalid_grant', status: 401, answer: 'reauth_required', kept: false },
])('a refresh answered 400 $code', ({ code, status, answer, kept }) => {
  it(`${status} ${answer}; the link is ${kept ? 'kept' : 'ended'}`, async () => {
    const refusing = await scriptedIssuer(refusedWith(code));
    try {
      const runtime = await instance({ provider: { ...defaultProvider, issuer: refusing.issuer } });
      const { user, cookie } = await expiredLink(runtime, 'refused');
      const result = await call(runtime, cookie);
      expect(result.status).toBe(status);
      expect(result.code).toBe(answer);
      expect(refusing.tokenRequests()).toBe(1);
      expect((await runtime.oauthTokens!.load('oidc', user)) !== null).toBe(kept);
    } finally {
      refusing.close();
    }
  });
});

/** The token endpoint is down: 503, with `Retry-After` when given. */
const unavailable =
  (retryAfter: string | null = null) =>
  (res: ServerResponse) => {
    res.writeHead(503, { 'content-type': 'text/plain', ...(retryAfter === null ? {} : { 'retry-after': retryAfter }) });
    res.end('down for maintenance');
  };

/** The token endpoint serves the refresh: a new access token, no new refresh token (the stored one is kept). */
const served = (accessToken: string) => (res: ServerResponse) => {
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ access_token: accessToken, token_type: 'Bearer', expires_in: 3600 }));
};

/**
 * Runs `test` with an instance whose provider's token endpoint is down (503, with `Retry-After` when `retryAfter`
 * is given) until the test sets `issuer.state.answer` to another answer.
 */
async function duringOutage(
  retryAfter: string | null,
  test: (issuer: { readonly state: { answer: (res: ServerResponse) => void }; tokenRequests(): number }, runtime: Runtime) => Promise<void>,
): Promise<void> {
  const state = { answer: unavailable(retryAfter) };
  const issuer = await scriptedIssuer((res) => state.answer(res));
  try {
    await test({ ...issuer, state }, await instance({ provider: { ...defaultProvider, issuer: issuer.issuer } }));
  } finally {
    issuer.close();
  }
}

/**
 * A user of `runtime` whose access token is due for a refresh (less than 60 s left) but still valid for
 * `validForMs`, saved 200 s ago; and their session cookie.
 */
async function dueLink(runtime: Runtime, name: string, validForMs: number) {
  const user = `oidc:${name}-${randomUUID()}`;
  const tokens = { accessToken: randomSecret('at'), refreshToken: randomSecret('rt') };
  skewMs -= 200_000;
  try {
    await runtime.oauthTokens!.save('oidc', { userId: user }, { ...tokens, expiresAt: now() + 200_000 + validForMs });
  } finally {
    skewMs += 200_000;
  }
  return { user, ...tokens, cookie: await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: user }) };
}

describe('the provider is down when a token is due (transient failure: backed off, the valid token served)', () => {
  it('a token still valid for 55 s is served, and the provider is asked once per backoff, not once per call; after it, the refresh is tried again', async () => {
    await duringOutage(null, async (issuer, runtime) => {
      const link = await dueLink(runtime, 'outage', 55_000);
      const logsBefore = logLines.length;
      const upstreamBefore = upstream.requests.length;

      const results = [await call(runtime, link.cookie)];
      results.push(...(await Promise.all(Array.from({ length: 10 }, () => call(runtime, link.cookie)))));
      expect(results.map((r) => r.status)).toEqual(Array(11).fill(200));
      expect(issuer.tokenRequests()).toBe(1);
      const seen = upstream.requests.slice(upstreamBefore);
      expect(seen).toHaveLength(11);
      for (const request of seen) expect(request.headers.authorization).toBe(`Bearer ${link.accessToken}`);
      // The failure is reported as before (once: one refresh was tried).
      const warned = logLines.slice(logsBefore).filter((line) => line.includes('token refresh failed'));
      expect(warned).toHaveLength(1);

      // 20 s on, still within the 30 s backoff: no request to the provider.
      skewMs += 20_000;
      expect((await call(runtime, link.cookie)).status).toBe(200);
      expect(issuer.tokenRequests()).toBe(1);

      // Past it, with the provider back: refreshed, and the new token is used and saved.
      skewMs += 11_000;
      const renewed = randomSecret('at');
      issuer.state.answer = served(renewed);
      expect((await call(runtime, link.cookie)).status).toBe(200);
      expect(issuer.tokenRequests()).toBe(2);
      expect(upstream.requests.at(-1)!.headers.authorization).toBe(`Bearer ${renewed}`);
      expect(await runtime.oauthTokens!.load('oidc', link.user)).toMatchObject({
        accessToken: renewed,
        refreshToken: link.refreshToken,
      });
      expect(findLeak(logLines.join(''), [link.accessToken, link.refreshToken, renewed])).toBeNull();
    });
  });

  it.each([
    { said: null, retryAfter: 30 },
    { said: '120', retryAfter: 120 },
    { said: '86400', retryAfter: 300 },
  ])(
    'an expired token: 503 credential_unavailable with Retry-After $retryAfter (provider said $said), one provider request until then, refreshed after',
    async ({ said, retryAfter }) => {
      await duringOutage(said, async (issuer, runtime) => {
        const { user, cookie } = await expiredLink(runtime, 'outage-expired');
        const upstreamBefore = upstream.requests.length;

        const first = await call(runtime, cookie);
        expect(first).toMatchObject({ status: 503, code: 'credential_unavailable', retryAfter: String(retryAfter) });
        skewMs += 10_000;
        const again = await Promise.all([call(runtime, cookie), call(runtime, cookie)]);
        for (const result of again) {
          expect(result).toMatchObject({ status: 503, code: 'credential_unavailable' });
          // What is left of the wait: 10 s of the clock's skew gone, and however much real time the calls took.
          expect(Number(result.retryAfter)).toBeLessThanOrEqual(retryAfter - 10);
          expect(Number(result.retryAfter)).toBeGreaterThanOrEqual(retryAfter - 15);
        }
        expect(issuer.tokenRequests()).toBe(1);
        expect(upstream.requests.length).toBe(upstreamBefore);
        expect(await runtime.oauthTokens!.load('oidc', user)).not.toBeNull();

        skewMs += (retryAfter - 10) * 1000;
        const renewed = randomSecret('at');
        issuer.state.answer = served(renewed);
        expect((await call(runtime, cookie)).status).toBe(200);
        expect(issuer.tokenRequests()).toBe(2);
        expect(upstream.requests.at(-1)!.headers.authorization).toBe(`Bearer ${renewed}`);
      });
    },
  );

  it('the backoff is tied to the tokens whose refresh failed: another grant saved meanwhile (a reconnect) is refreshed at once', async () => {
    await duringOutage(null, async (issuer, runtime) => {
      const { user, cookie } = await expiredLink(runtime, 'outage-reconnect');
      expect(await call(runtime, cookie)).toMatchObject({ status: 503, code: 'credential_unavailable' });
      expect(issuer.tokenRequests()).toBe(1);

      // The user connects again (another refresh token), and the provider is back, well within the 30 s.
      const refreshToken = randomSecret('rt');
      await runtime.oauthTokens!.save('oidc', { userId: user }, { accessToken: randomSecret('at'), refreshToken, expiresAt: now() - 1_000 });
      const renewed = randomSecret('at');
      issuer.state.answer = served(renewed);
      expect((await call(runtime, cookie)).status).toBe(200);
      expect(issuer.tokenRequests()).toBe(2);
      expect(upstream.requests.at(-1)!.headers.authorization).toBe(`Bearer ${renewed}`);
      expect(await runtime.oauthTokens!.load('oidc', user)).toMatchObject({ accessToken: renewed, refreshToken });
    });
  });

  it('a token within 5 s of its expiry is not served: 503 with Retry-After (it could expire on the way to the upstream)', async () => {
    await duringOutage(null, async (issuer, runtime) => {
      const link = await dueLink(runtime, 'outage-margin', 3_000);
      const upstreamBefore = upstream.requests.length;
      expect(await call(runtime, link.cookie)).toMatchObject({
        status: 503,
        code: 'credential_unavailable',
        retryAfter: '30',
      });
      expect(upstream.requests.length).toBe(upstreamBefore);
    });
  });

  it("the idle-grant keeper's refresh (keepAlive) still fails during an outage: it is not answered with the old token", async () => {
    await duringOutage(null, async (issuer, runtime) => {
      const link = await dueLink(runtime, 'outage-keeper', 55_000);
      await expect(runtime.oauthTokens!.keepAlive('oidc', link.user, now())).rejects.toMatchObject({
        code: 'credential_unavailable',
      });
      expect(issuer.tokenRequests()).toBe(1);
      // Backed off for the calls as well: served the valid token without a second provider request.
      expect((await call(runtime, link.cookie)).status).toBe(200);
      expect(upstream.requests.at(-1)!.headers.authorization).toBe(`Bearer ${link.accessToken}`);
      expect(issuer.tokenRequests()).toBe(1);
    });
  });
});

describe('the provider cannot be reached', () => {
  it('503 credential_unavailable, and the link is kept for a later retry', async () => {
    await linkExpired();
    await provider.stop();
    const result = await call(b);
    expect(result.status).toBe(503);
    expect(result.code).toBe('credential_unavailable');
    expect(await a.oauthTokens!.load('oidc', userId)).not.toBeNull();
  });
});

describe('a provider that never answers the refresh', () => {
  it('the call ends with 503 credential_unavailable (the refresh is abandoned, not awaited for minutes) and the lock is freed', async () => {
    // Serves discovery, then accepts token requests and never answers them.
    const hanging = await scriptedIssuer(null);
    try {
      const stuck: RefreshProvider = { ...defaultProvider, issuer: hanging.issuer };
      const runtime = await instance({ provider: stuck });
      const { user, cookie } = await expiredLink(runtime, 'hanging');
      const result = await call(runtime, cookie);
      expect(result.status).toBe(503);
      expect(result.code).toBe('credential_unavailable');
      expect(hanging.tokenRequests()).toBe(1);
      expect(await runtime.store.get(`lock:oauth:oidc:${user}`)).toBeNull();
      expect(await runtime.oauthTokens!.load('oidc', user)).not.toBeNull();
    } finally {
      hanging.close();
    }
  }, 25_000);
});

describe('no token leaks', () => {
  it('no provider token or client secret in any response or log line', () => {
    const { accessTokens, refreshTokens } = provider.issued();
    expect(accessTokens.length).toBeGreaterThanOrEqual(5);
    const secrets = [...accessTokens, ...refreshTokens, provider.clientSecret, vaultSecret];
    for (const text of responses) expect(findLeak(text, secrets)).toBeNull();
    expect(findLeak(logLines.join(''), secrets)).toBeNull();
  });
});
