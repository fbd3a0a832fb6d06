import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleAdminRevoke, handleLogout, handleRevokeAll } from '../../lib/core/api/revoke';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { freePort, signIn, startApp, type AppServer } from '../fixtures/app-server';
import { REDIS_URL, capturingLogger, claimsSessionCookie, findLeak, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { bearerToken } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';
import { writeConfigFile } from '../fixtures/config';
import { deleteKeysUnder, keysUnder } from '../fixtures/redis-server';

/**
 * Instant revocation across instances. Two runtimes, each with its own Redis connection to the same key
 * prefix, stand for two app instances behind a load balancer; then the same through two real `next start`
 * servers sharing a Redis key prefix, signing in and out through Auth.js. Every prefix is this run's own and
 * its keys are deleted at the end.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const ALICE = 'local:alice';
const BOB = 'local:bob';

let upstream: TestUpstream;
const sessionSecrets = testSessionSecrets();
const serviceKey = randomSecret('svc');
const opened: RedisStore[] = [];
/** Key prefixes this file wrote under (all on the test run's Redis). */
const prefixes: string[] = [];
const { logger } = capturingLogger();
let clock = Date.now();

interface Result {
  status: number;
  body: string;
  json<T = Record<string, unknown>>(): T;
}

async function read(response: Response): Promise<Result> {
  const flat = await responseText(response);
  expect(
    findLeak(flat.text, [serviceKey, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET]),
  ).toBeNull();
  return { status: flat.status, body: flat.body, json: <T>() => JSON.parse(flat.body) as T };
}

function expectError(result: Result, status: number, code: string) {
  expect(result.status).toBe(status);
  expect(result.json<{ error: { code: string } }>().error.code).toBe(code);
}

function upstreamDefinitions(origin: string) {
  return [
    defineUpstream('svc', {
      baseUrl: `${origin}/v1/`,
      auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
      routes: [{ method: 'GET', path: '/items/:id' }],
    }),
  ];
}

async function redisStore(prefix: string, url = REDIS_URL, ready = true): Promise<RedisStore> {
  if (url === REDIS_URL && !prefixes.includes(prefix)) prefixes.push(prefix);
  const store = new RedisStore(url, { prefix });
  opened.push(store);
  if (ready) await store.ready();
  return store;
}

/** An app instance on `store`; `skewMs`: how far its clock is from the others'. */
function instance(store: RedisStore, skewMs = 0): Runtime {
  return createRuntime({
    env: { ...sessionSecrets, SVC_KEY: serviceKey, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN },
    upstreams: upstreamDefinitions(upstream.origin),
    store,
    logger,
    now: () => clock + skewMs,
  });
}

/** A proxied GET with a cookie (plus the CSRF header) or a bearer token; `reached`: whether the upstream got it. */
async function proxy(runtime: Runtime, credential: string): Promise<{ result: Result; reached: boolean }> {
  const before = upstream.requests.length;
  const headers: Record<string, string> = credential.startsWith('Bearer ')
    ? { authorization: credential }
    : { cookie: credential, 'x-keyward-csrf': '1' };
  const request = new Request(`${APP_ORIGIN}/api/proxy/svc/items/1`, { headers });
  const result = await read(await handleProxy(request, { upstream: 'svc', path: ['items', '1'] }, runtime));
  return { result, reached: upstream.requests.length > before };
}

async function expectWorks(runtime: Runtime, credential: string) {
  const { result, reached } = await proxy(runtime, credential);
  expect(result.status).toBe(200);
  expect(reached).toBe(true);
}

async function expectRefused(runtime: Runtime, credential: string) {
  const { result, reached } = await proxy(runtime, credential);
  expectError(result, 401, 'unauthenticated');
  expect(reached).toBe(false);
}

type Handler = (request: Request, runtime: Runtime) => Promise<Response>;

/** POSTs to one of the revocation endpoints as a browser does (cookie, X-Keyward-CSRF, Origin) unless told otherwise. */
async function post(
  handler: Handler,
  runtime: Runtime,
  cookie: string,
  options: { csrf?: boolean; origin?: string | null; method?: string } = {},
) {
  const headers = new Headers({ cookie });
  if (options.csrf !== false) headers.set('x-keyward-csrf', '1');
  const origin = options.origin === undefined ? APP_ORIGIN : options.origin;
  if (origin) headers.set('origin', origin);
  return read(
    await handler(new Request(`${APP_ORIGIN}/api/session/x`, { method: options.method ?? 'POST', headers }), runtime),
  );
}

const logout: Handler = handleLogout;
const revokeAll: Handler = handleRevokeAll;
const adminRevoke =
  (userId: string): Handler =>
  (request, runtime) =>
    handleAdminRevoke(request, userId, runtime);

const cookieFor = (sub: string, authTimeMs: number, roles = ['user']) =>
  claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub, roles, authTimeMs });

beforeAll(async () => {
  upstream = await startUpstream();
});

afterAll(async () => {
  await upstream?.close();
  await Promise.all(opened.map((store) => store.close()));
  for (const prefix of prefixes) await deleteKeysUnder(REDIS_URL, prefix);
});

describe('two instances sharing Redis', () => {
  let a: Runtime;
  let b: Runtime;
  let prefix: string;
  let alice1: string;
  let alice2: string;
  let alice3: string;
  let aliceApp: string;
  let bob: string;
  let admin: string;

  beforeAll(async () => {
    prefix = `keyward-test:revocation:${randomUUID()}:`;
    a = instance(await redisStore(prefix));
    b = instance(await redisStore(prefix));
    alice1 = await cookieFor(ALICE, clock - 60_000);
    alice2 = await cookieFor(ALICE, clock - 30_000);
    alice3 = await cookieFor(ALICE, clock - 10_000);
    aliceApp = `Bearer ${await bearerToken(sessionSecrets.KEYWARD_SESSION_SECRET, { sub: ALICE })}`;
    bob = await cookieFor(BOB, clock - 60_000);
    admin = await cookieFor('local:root', clock - 60_000, ['user', 'admin']);
  });

  it('a cookie session works on both instances', async () => {
    for (const runtime of [a, b])
      for (const credential of [alice1, alice2, alice3, aliceApp, bob, admin]) await expectWorks(runtime, credential);
  });

  it.each([
    ['without X-Keyward-CSRF', { csrf: false }],
    ['without Origin', { origin: null }],
    ['from another origin', { origin: 'https://evil.example' }],
  ])('logout %s → 403, and the session keeps working on the other instance', async (_name, options) => {
    expectError(await post(logout, a, alice1, options), 403, 'csrf_failed');
    await expectWorks(b, alice1);
  });

  it("logout on A: B refuses that session on its very next request; the same user's other session still works", async () => {
    const result = await post(logout, a, alice1);
    expect(result.status).toBe(200);
    expect(result.json()).toEqual({ revoked: true });
    await expectRefused(b, alice1);
    await expectRefused(a, alice1);
    await expectWorks(b, alice2);
    await expectWorks(a, alice2);
    await expectWorks(b, bob);
  });

  it("logout clears the browser's session cookie, every chunk of it; a bearer logout sets no cookie", async () => {
    // Its own prefix: the marks it writes are not the ones the tests around it count.
    const a = instance(await redisStore(`keyward-test:revocation:${randomUUID()}:`));
    const cleared = (response: Response) => response.headers.getSetCookie().map((line) => line.split(';', 1)[0]).sort();
    const whole = await cookieFor(ALICE, clock - 5_000);
    const one = await handleLogout(new Request(`${APP_ORIGIN}/api/session/logout`, { method: 'POST', headers: { cookie: whole, 'x-keyward-csrf': '1', origin: APP_ORIGIN } }), a);
    expect(one.status).toBe(200);
    expect(cleared(one)).toEqual(['__Host-keyward.session=']);
    expect(one.headers.get('set-cookie')).toContain('Max-Age=0');

    // Auth.js splits a large session cookie into `.0`, `.1`, …: each goes.
    const value = (await cookieFor(ALICE, clock - 4_000)).slice('__Host-keyward.session='.length);
    const chunked = `__Host-keyward.session.0=${value.slice(0, 40)}; other=1; __Host-keyward.session.1=${value.slice(40)}`;
    const two = await handleLogout(new Request(`${APP_ORIGIN}/api/session/logout`, { method: 'POST', headers: { cookie: chunked, 'x-keyward-csrf': '1', origin: APP_ORIGIN } }), a);
    expect(two.status).toBe(200);
    expect(cleared(two)).toEqual(['__Host-keyward.session.0=', '__Host-keyward.session.1=']);

    const app = `Bearer ${await bearerToken(sessionSecrets.KEYWARD_SESSION_SECRET, { sub: ALICE })}`;
    const bearer = await handleLogout(new Request(`${APP_ORIGIN}/api/session/logout`, { method: 'POST', headers: { authorization: app } }), a);
    expect(bearer.status).toBe(200);
    expect(bearer.headers.getSetCookie()).toEqual([]);
  });

  it("the marks outlive what they revoke: a session mark lasts past the cookie's expiry, a user mark past the longest session", async () => {
    const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
    await redis.connect();
    try {
      const marks = await keysUnder(REDIS_URL, `${prefix}rev:sid:`);
      expect(marks).toHaveLength(1);
      // alice1 was minted to expire in 3600 s (Auth.js maxAge); Redis must keep the mark at least that long.
      expect(await redis.pttl(marks[0]!)).toBeGreaterThan(3_600_000 - 60_000);
      const revokeAllNow = instance(await redisStore(prefix));
      const someone = await cookieFor('local:someone', clock - 1_000);
      expect((await post(revokeAll, revokeAllNow, someone)).status).toBe(200);
      // KEYWARD_SESSION_MAX_AGE defaults to 8 h: a user mark must outlive any session signed in before it.
      expect(await redis.pttl(`${prefix}rev:user:local:someone`)).toBeGreaterThan(8 * 3_600_000);
    } finally {
      redis.disconnect();
    }
  });

  it('a revoked session cannot log out again or revoke anything (401)', async () => {
    expectError(await post(logout, b, alice1), 401, 'unauthenticated');
    expectError(await post(revokeAll, b, alice1), 401, 'unauthenticated');
    await expectWorks(b, alice2);
  });

  it('revoke-all needs CSRF and POST', async () => {
    expectError(await post(revokeAll, a, alice2, { csrf: false }), 403, 'csrf_failed');
    expectError(await post(revokeAll, a, alice2, { method: 'GET' }), 405, 'method_not_allowed');
    await expectWorks(b, alice2);
  });

  it("revoke-all on A: every session of that user is refused on B (cookies and app tokens), other users' are not", async () => {
    const result = await post(revokeAll, a, alice2);
    expect(result.status).toBe(200);
    expect(result.json()).toEqual({ revoked: true });
    for (const credential of [alice2, alice3, aliceApp]) {
      await expectRefused(b, credential);
      await expectRefused(a, credential);
    }
    await expectWorks(b, bob);
    await expectWorks(b, admin);
  });

  it('a session signed in AFTER the revoke-all works on both instances', async () => {
    clock += 2_000;
    const fresh = await cookieFor(ALICE, clock);
    await expectWorks(b, fresh);
    await expectWorks(a, fresh);
  });

  it('admin revoke needs role admin: 403 for a user, and nothing is revoked', async () => {
    const fresh = await cookieFor(ALICE, clock);
    expectError(await post(adminRevoke(ALICE), a, bob), 403, 'forbidden');
    await expectWorks(b, fresh);
  });

  it('admin revoke needs CSRF, POST and a plausible user id', async () => {
    expectError(await post(adminRevoke(BOB), a, admin, { csrf: false }), 403, 'csrf_failed');
    expectError(await post(adminRevoke(BOB), a, admin, { method: 'GET' }), 405, 'method_not_allowed');
    for (const bad of ['', 'oidc:\u00e9', 'oidc:a\nb', `oidc:${'x'.repeat(300)}`]) {
      expectError(await post(adminRevoke(bad), a, admin), 400, 'bad_request');
    }
    await expectWorks(b, bob);
  });

  it('an OpenID Connect sub of any printable ASCII (a URL, with "/", "+", "=", spaces) is a user id an admin can revoke', async () => {
    const sub = 'oidc:https://login.example.com/id/00D+x=/005 a';
    const theirs = await cookieFor(sub, clock);
    await expectWorks(b, theirs);
    const result = await post(adminRevoke(sub), a, admin);
    expect(result.status).toBe(200);
    expect(result.json()).toEqual({ revoked: true, userId: sub });
    await expectRefused(b, theirs);
    await expectWorks(b, bob);
  });

  it("an admin revokes another user's sessions on A: B refuses them at once; the admin's session still works", async () => {
    const result = await post(adminRevoke(BOB), a, admin);
    expect(result.status).toBe(200);
    expect(result.json()).toEqual({ revoked: true, userId: BOB });
    await expectRefused(b, bob);
    await expectWorks(b, admin);
    await expectWorks(b, await cookieFor(ALICE, clock));
  });

  it('the revocation marks live in the shared store (not in either instance)', async () => {
    const c = instance(await redisStore(prefix));
    await expectRefused(c, alice1);
    await expectRefused(c, bob);
    expect(await c.store.get(`rev:user:${ALICE}`)).not.toBeNull();
  });
});

describe('instances whose clocks disagree', () => {
  it('"sign out everywhere" from an instance whose clock is behind never lowers the mark: what was revoked stays revoked', async () => {
    const prefix = `keyward-test:revocation-skew:${randomUUID()}:`;
    const ahead = instance(await redisStore(prefix));
    const behind = instance(await redisStore(prefix), -5_000);
    const signedInJustBefore = await cookieFor(ALICE, clock - 2_000);
    const other = await cookieFor(ALICE, clock - 60_000);
    const admin = await cookieFor('local:root', clock - 60_000, ['user', 'admin']);
    expect((await post(revokeAll, ahead, other)).status).toBe(200);
    await expectRefused(behind, signedInJustBefore);
    // Its own "now" is 5 s behind the mark already there: set as it is, it would bring back the session above.
    expect((await post(adminRevoke(ALICE), behind, admin)).status).toBe(200);
    await expectRefused(behind, signedInJustBefore);
    await expectRefused(ahead, signedInJustBefore);
    expect(await ahead.store.get(`rev:user:${ALICE}`)).toBe(String(clock));
  });

  it('"sign out everywhere" from an instance whose clock is behind still ends a session signed in a moment before on one whose clock is ahead', async () => {
    const prefix = `keyward-test:revocation-skew:${randomUUID()}:`;
    const ahead = instance(await redisStore(prefix), 3_000);
    const behind = instance(await redisStore(prefix));
    const caller = await cookieFor(ALICE, clock - 60_000);
    // Signed in (and recorded, as the Auth.js sign-in records it) 1 s ago on the instance 3 s ahead.
    const authTime = clock - 1_000 + 3_000;
    await ahead.sessionIndex.record(ALICE, { sessionId: randomUUID(), kind: 'browser', expiresAt: authTime + 3_600_000, authTime, roles: ['user'] });
    const signedInJustBefore = await cookieFor(ALICE, authTime);
    await expectWorks(behind, signedInJustBefore);
    expect((await post(revokeAll, behind, caller)).status).toBe(200);
    await expectRefused(behind, signedInJustBefore);
    await expectRefused(ahead, signedInJustBefore);
    await expectRefused(behind, caller);
  });
});

describe('Redis unreachable: fail closed', () => {
  it('a runtime pointed at a closed port answers 503 store_unavailable on a proxied call, never 200', async () => {
    const down = instance(
      await redisStore(`keyward-test:down:${randomUUID()}:`, `redis://127.0.0.1:${await freePort()}`, false),
    );
    const cookie = await cookieFor(ALICE, clock);
    const app = `Bearer ${await bearerToken(sessionSecrets.KEYWARD_SESSION_SECRET, { sub: ALICE })}`;
    for (const credential of [cookie, app]) {
      const { result, reached } = await proxy(down, credential);
      expectError(result, 503, 'store_unavailable');
      expect(reached).toBe(false);
    }
    expectError(await post(logout, down, cookie), 503, 'store_unavailable');
    expectError(await post(revokeAll, down, cookie), 503, 'store_unavailable');
  });

  it('an instance whose Redis connection goes away stops serving (503) instead of skipping the revocation check', async () => {
    const store = await redisStore(`keyward-test:gone:${randomUUID()}:`);
    const runtime = instance(store);
    const cookie = await cookieFor(ALICE, clock);
    await expectWorks(runtime, cookie);
    await store.close();
    const { result, reached } = await proxy(runtime, cookie);
    expectError(result, 503, 'store_unavailable');
    expect(reached).toBe(false);
  });
});

/**
 * The same through two real production servers (`next start`; needs `next build`). They share the test
 * run's Redis under a key prefix of their own (KEYWARD_REDIS_PREFIX); sign-in and sign-out go through
 * Auth.js exactly as a browser form does.
 */
describe('two real `next start` servers sharing Redis', () => {
  const prefix = `keyward-test:revocation:${randomUUID()}:`;
  prefixes.push(prefix);
  const password = randomSecret('pw');
  let servers: AppServer[] = [];
  let serverA: AppServer;
  let serverB: AppServer;

  beforeAll(async () => {
    const configPath = writeConfigFile({
      upstreams: {
        echo: {
          baseUrl: `${upstream.origin}/v1/`,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
          routes: [{ method: 'GET', path: '/items/:id' }],
        },
      },
    });
    const env = {
      ...sessionSecrets,
      ECHO_KEY: serviceKey,
      KEYWARD_CONFIG: configPath,
      KEYWARD_USERS_FILE: await writeUsersFile([{ username: 'alice', password, roles: ['user'] }]),
      REDIS_URL,
      KEYWARD_REDIS_PREFIX: prefix,
    };
    servers = await Promise.all([startApp(env), startApp(env)]);
    [serverA, serverB] = servers as [AppServer, AppServer];
  }, 120_000);

  afterAll(async () => {
    await Promise.all(servers.map((server) => server.stop()));
    for (const server of servers) {
      expect(
        findLeak(server.output(), [
          serviceKey,
          password,
          sessionSecrets.AUTH_SECRET,
          sessionSecrets.KEYWARD_SESSION_SECRET,
        ]),
      ).toBeNull();
    }
  });

  async function callProxy(server: AppServer, cookie: string) {
    const before = upstream.requests.length;
    const response = await fetch(`${server.url}/api/proxy/echo/items/7`, {
      headers: { cookie, 'x-keyward-csrf': '1' },
    });
    const body = await response.text();
    return { status: response.status, body, reached: upstream.requests.length > before };
  }

  /** Auth.js sign-out as the browser's form does it: GET /api/auth/csrf, then POST /api/auth/signout. */
  async function signOut(server: AppServer, sessionCookie: string) {
    const csrfResponse = await fetch(`${server.url}/api/auth/csrf`, { headers: { cookie: sessionCookie } });
    const { csrfToken } = (await csrfResponse.json()) as { csrfToken: string };
    const csrfCookies = csrfResponse.headers.getSetCookie().map((line) => line.split(';')[0]!);
    const response = await fetch(`${server.url}/api/auth/signout`, {
      method: 'POST',
      redirect: 'manual',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        cookie: [sessionCookie, ...csrfCookies].join('; '),
      },
      body: new URLSearchParams({ csrfToken, callbackUrl: '/' }),
    });
    await response.arrayBuffer();
    return response;
  }

  it('signed in on A, the cookie works on B; signed out on A, the same cookie is refused on B at once', async () => {
    const cookie = await signIn(serverA.url, 'alice', password);
    const other = await signIn(serverA.url, 'alice', password);
    expect(other).not.toBe(cookie);

    const before = await callProxy(serverB, cookie);
    expect(before.status).toBe(200);
    expect(before.reached).toBe(true);
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(serviceKey);

    const out = await signOut(serverA, cookie);
    expect(out.status).toBe(302);
    // Auth.js cleared the cookie in this browser, but a copy of it is what an attacker would hold:
    expect(out.headers.getSetCookie().some((line) => line.startsWith('__Host-keyward.session=;'))).toBe(true);

    const after = await callProxy(serverB, cookie);
    expect(after.status).toBe(401);
    expect(JSON.parse(after.body).error.code).toBe('unauthenticated');
    expect(after.reached).toBe(false);
    expect((await callProxy(serverA, cookie)).status).toBe(401);
    const session = await fetch(`${serverB.url}/api/session`, { headers: { cookie } });
    await session.arrayBuffer();
    expect(session.status).toBe(401);

    // The user's other session (another sign-in) is untouched.
    expect((await callProxy(serverB, other)).status).toBe(200);

    // The revocation is in the shared Redis, under the servers' prefix.
    expect(await keysUnder(REDIS_URL, `${prefix}rev:sid:`)).toHaveLength(1);
  });
});
