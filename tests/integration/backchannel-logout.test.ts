import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { SignJWT, importJWK, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { handleBackchannelLogout } from '../../lib/core/api/backchannel-logout';
import { handleMobileAuthorize, handleMobileToken } from '../../lib/core/api/mobile';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import {
  BACKCHANNEL_LOGOUT_EVENT,
  DISCOVERY_RETRY_MS,
  KEYS_GRACE_MS,
  KEYS_MAX_AGE_MS,
  MAX_AGE_SECONDS,
  METADATA_TTL_MS,
  SKEW_SECONDS,
} from '../../lib/core/session/logout-token';
import { PROVIDER_SESSION_SLOTS } from '../../lib/core/session/provider-sessions';
import { MemoryStore } from '../../lib/store/memory';
import { RedisStore } from '../../lib/store/redis';
import { StoreUnavailableError, type Store } from '../../lib/store/types';
import { freePort } from '../fixtures/app-server';
import { brokenBody } from '../fixtures/broken-body';
import { REDIS_URL, capturingLogger, findLeak, responseText } from '../fixtures/claims-session';
import { rsaSigningJwk } from '../fixtures/oidc-kit';
import { startLogoutProvider, type LogoutProvider } from '../fixtures/oidc-logout-provider';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * OIDC Back-Channel Logout 1.0 at the runtime level: two runtimes, each with its own Redis connection to one
 * key prefix, stand for two instances; logout tokens are posted to the core handler of one of them, and the
 * proxy is called on both. The issuer is a real oidc-provider on loopback with back-channel logout enabled
 * (tests/fixtures/oidc-logout-provider.ts): Keyward discovers its metadata and fetches its JWKS over HTTP.
 * The provider signs and sends logout tokens only when a session ends there (that flow runs end to end in
 * backchannel-logout-servers.test.ts); here the tests sign tokens with the provider's own key (the fixture
 * exposes it), so the valid ones are exactly what the provider sends and each invalid one differs from a
 * valid one in the one way the test names.
 *
 * Sign-in is taken as done: a session cookie is minted as lib/next/auth.ts writes it, and its provider session
 * is recorded the way the Auth.js callback records it (runtime.providerSessions.recordSignIn).
 */
const APP_ORIGIN = 'https://app.keyward.test';
// An https app link (verified by the platform): no consent page in between (tests/integration/mobile-tokens.test.ts).
const APP_REDIRECT = 'https://app.keyward.test/oauth/callback';
const ENDPOINT = `${APP_ORIGIN}/api/auth/backchannel-logout`;

let provider: LogoutProvider;
let upstream: TestUpstream;
let a: Runtime;
let b: Runtime;
const prefix = `keyward-test:bcl:${randomUUID()}:`;
const stores: RedisStore[] = [];
const sessionSecrets = testSessionSecrets();
const serviceKey = randomSecret('svc');
const { logger, lines } = capturingLogger();
/** Every logout token this file made, for the log leak check. */
const tokensMade: string[] = [];

function env(): Record<string, string> {
  return {
    ...sessionSecrets,
    SVC_KEY: serviceKey,
    KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
    KEYWARD_OIDC_ISSUER: provider.issuer,
    KEYWARD_OIDC_CLIENT_ID: provider.clientId,
    KEYWARD_OIDC_CLIENT_SECRET: provider.clientSecret,
    KEYWARD_MOBILE_REDIRECT_URIS: APP_REDIRECT,
  };
}

function instance(store: Store, overrides: Record<string, string> = {}): Runtime {
  return createRuntime({
    env: { ...env(), ...overrides },
    upstreams: [
      defineUpstream('svc', {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
    ],
    store,
    logger,
  });
}

async function redisStore(): Promise<RedisStore> {
  const store = new RedisStore(REDIS_URL, { prefix });
  stores.push(store);
  await store.ready();
  return store;
}

/** A Keyward session as an OIDC sign-in leaves it: the cookie, and its provider session recorded. */
interface Signed {
  readonly userId: string;
  readonly sessionId: string;
  readonly cookie: string;
}

async function signIn(runtime: Runtime, sub: string, providerSid: string | null, authMs = Date.now()): Promise<Signed> {
  const userId = `oidc:${sub}`;
  const sessionId = randomUUID();
  if (providerSid !== null) await runtime.providerSessions.recordSignIn(provider.issuer, providerSid, { sessionId, userId });
  const cookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: userId, sid: sessionId, authMs });
  return { userId, sessionId, cookie };
}

/** The mobile token exchange from a browser session, through its HTTP handlers: the app's access and refresh tokens. */
async function mobileTokens(runtime: Runtime, browser: Signed): Promise<{ access: string; refresh: string }> {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const query = new URLSearchParams({ redirect_uri: APP_REDIRECT, code_challenge: challenge, code_challenge_method: 'S256', response_type: 'code', state: 's' });
  const authorize = await handleMobileAuthorize(
    new Request(`${APP_ORIGIN}/api/session/mobile/authorize?${query}`, { headers: { cookie: browser.cookie } }),
    runtime,
  );
  expect(authorize.status).toBe(302);
  const code = new URL(authorize.headers.get('location')!).searchParams.get('code');
  expect(code).toBeTruthy();
  const token = await handleMobileToken(tokenRequest({ grant_type: 'authorization_code', code: code!, code_verifier: verifier, redirect_uri: APP_REDIRECT }), runtime);
  expect(token.status).toBe(200);
  const body = (await token.json()) as { access_token: string; refresh_token: string };
  return { access: `Bearer ${body.access_token}`, refresh: body.refresh_token };
}

function tokenRequest(fields: Record<string, string>): Request {
  return new Request(`${APP_ORIGIN}/api/session/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(fields),
  });
}

async function refreshStatus(runtime: Runtime, refreshToken: string): Promise<{ status: number; error: string | null }> {
  const response = await handleMobileToken(tokenRequest({ grant_type: 'refresh_token', refresh_token: refreshToken }), runtime);
  const body = (await response.json()) as { error?: string };
  return { status: response.status, error: body.error ?? null };
}

/** A proxied call with a cookie (and the CSRF header) or a bearer token: its status. */
async function call(runtime: Runtime, credential: string): Promise<number> {
  const headers: Record<string, string> = credential.startsWith('Bearer ')
    ? { authorization: credential }
    : { cookie: credential, 'x-keyward-csrf': '1' };
  const request = new Request(`${APP_ORIGIN}/api/proxy/svc/items/1`, { headers });
  const response = await handleProxy(request, { upstream: 'svc', path: ['items', '1'] }, runtime);
  await response.arrayBuffer();
  return response.status;
}

async function expectWorks(credential: string) {
  for (const runtime of [a, b]) expect(await call(runtime, credential)).toBe(200);
}

async function expectRefused(credential: string) {
  for (const runtime of [a, b]) expect(await call(runtime, credential)).toBe(401);
}

/** A logout token as the provider signs it (its own key and kid), with `claims` and `header` changed as given. */
async function logoutToken(
  claims: Record<string, unknown>,
  options: { header?: Record<string, unknown>; key?: Record<string, unknown>; iat?: number } = {},
): Promise<string> {
  const key = await importJWK(options.key ?? provider.signingKey, 'RS256');
  const iat = options.iat ?? Math.floor(Date.now() / 1000);
  const payload: JWTPayload = {
    iss: provider.issuer,
    aud: provider.clientId,
    iat,
    exp: iat + 120,
    jti: randomUUID(),
    events: { [BACKCHANNEL_LOGOUT_EVENT]: {} },
    ...claims,
  };
  for (const [name, value] of Object.entries(payload)) if (value === undefined) delete payload[name];
  const token = await new SignJWT(payload)
    .setProtectedHeader({ alg: 'RS256', kid: provider.signingKey.kid, typ: 'logout+jwt', ...options.header })
    .sign(key);
  tokensMade.push(token);
  return token;
}

async function post(
  runtime: Runtime,
  body: string | URLSearchParams | ReadableStream<Uint8Array>,
  init: { method?: string; contentType?: string; url?: string } = {},
): Promise<{ status: number; body: string; headers: Headers }> {
  const method = init.method ?? 'POST';
  const request = new Request(init.url ?? ENDPOINT, {
    method,
    headers: { 'content-type': init.contentType ?? 'application/x-www-form-urlencoded' },
    body: method === 'GET' || method === 'HEAD' ? undefined : body,
    duplex: 'half',
  } as RequestInit);
  const response = await handleBackchannelLogout(request, runtime);
  const flat = await responseText(response);
  return { status: flat.status, body: flat.body, headers: response.headers };
}

const form = (token: string) => new URLSearchParams({ logout_token: token });

function expectInvalid(result: { status: number; body: string; headers: Headers }, status = 400) {
  expect(result.status).toBe(status);
  expect(JSON.parse(result.body)).toEqual({ error: 'invalid_request' });
  expect(result.headers.get('cache-control')).toContain('no-store');
}

beforeAll(async () => {
  upstream = await startUpstream();
  // The provider's back-channel target is not used here: these tests post the tokens themselves.
  provider = await startLogoutProvider({
    redirectUris: ['http://localhost:9/api/auth/callback/oidc'],
    backchannelLogoutUri: 'http://localhost:9/api/auth/backchannel-logout',
  });
  a = instance(await redisStore());
  b = instance(await redisStore());
}, 60_000);

afterAll(async () => {
  await Promise.all(stores.map((store) => store.close()));
  await deleteKeysUnder(REDIS_URL, prefix);
  await provider?.stop();
  await upstream?.close();
});

describe('a valid logout token, posted to one instance, ends sessions on both', () => {
  it('by sid (with sub, as oidc-provider sends it): the sessions of that provider session and their mobile token family end; others of the user do not', async () => {
    const sub = `acct-${randomUUID()}`;
    const [sidOne, sidTwo] = [randomUUID(), randomUUID()];
    const first = await signIn(a, sub, sidOne);
    const again = await signIn(b, sub, sidOne);
    const elsewhere = await signIn(a, sub, sidTwo);
    const app = await mobileTokens(b, first);
    const otherApp = await mobileTokens(a, elsewhere);
    for (const credential of [first.cookie, again.cookie, elsewhere.cookie, app.access, otherApp.access]) await expectWorks(credential);

    const result = await post(a, form(await logoutToken({ sub, sid: sidOne })));
    expect(result.status).toBe(200);
    expect(result.body).toBe('');
    expect(result.headers.get('cache-control')).toBe('no-cache, no-store');

    for (const credential of [first.cookie, again.cookie, app.access]) await expectRefused(credential);
    expect(await refreshStatus(a, app.refresh)).toEqual({ status: 400, error: 'invalid_grant' });
    for (const credential of [elsewhere.cookie, otherApp.access]) await expectWorks(credential);
    const rotated = await refreshStatus(b, otherApp.refresh);
    expect(rotated.status).toBe(200);
  });

  it('by sid alone: the sessions recorded under it end, whoever they belong to', async () => {
    const sid = randomUUID();
    const one = await signIn(a, `acct-${randomUUID()}`, sid);
    const other = await signIn(a, `acct-${randomUUID()}`, randomUUID());
    expect((await post(b, form(await logoutToken({ sid, sub: undefined })))).status).toBe(200);
    await expectRefused(one.cookie);
    await expectWorks(other.cookie);
  });

  it('by sub alone: every session and app token of that user ends ("sign out everywhere"); other users keep theirs', async () => {
    const sub = `acct-${randomUUID()}`;
    const signedInAt = Date.now() - 5_000;
    const withSid = await signIn(a, sub, randomUUID(), signedInAt);
    const withoutSid = await signIn(a, sub, null, signedInAt);
    const app = await mobileTokens(a, withoutSid);
    const bystander = await signIn(a, `acct-${randomUUID()}`, randomUUID(), signedInAt);
    expect((await post(a, form(await logoutToken({ sub })))).status).toBe(200);
    for (const credential of [withSid.cookie, withoutSid.cookie, app.access]) await expectRefused(credential);
    expect(await refreshStatus(b, app.refresh)).toEqual({ status: 400, error: 'invalid_grant' });
    await expectWorks(bystander.cookie);
    // A sign-in after the logout is a new session: it works.
    const later = await signIn(b, sub, randomUUID(), Date.now() + 1);
    await expectWorks(later.cookie);
  });

  it("by sub alone: the user's sessions signed in before the logout reached Keyward end, also those signed in after the token's iat (the mark is not iat)", async () => {
    // The provider issued the logout 2 minutes ago (delivery retried, a queue): still valid, at most 5 minutes old.
    const issuedAt = Math.floor(Date.now() / 1000) - 120;
    const sub = `acct-${randomUUID()}`;
    // Keyward's sign-in times are its own clock's, at the end of the code exchange, and say nothing of when the
    // user authenticated at the provider: this one may well come from the provider session that ended.
    const betweenIatAndDelivery = await signIn(a, sub, null, Date.now() - 60_000);
    const beforeIat = await signIn(b, sub, null, (issuedAt - 30) * 1000);
    await expectWorks(betweenIatAndDelivery.cookie);
    expect((await post(b, form(await logoutToken({ sub }, { iat: issuedAt })))).status).toBe(200);
    for (const session of [betweenIatAndDelivery, beforeIat]) await expectRefused(session.cookie);
    const later = await signIn(a, sub, null, Date.now() + 1);
    await expectWorks(later.cookie);
  });

  it('sid and sub together: only that user\'s sessions under the sid end (the sub is checked against what was recorded)', async () => {
    const sid = randomUUID();
    const recorded = await signIn(a, `acct-${randomUUID()}`, sid, Date.now() - 5_000);
    const named = await signIn(a, `acct-${randomUUID()}`, null, Date.now() - 5_000);
    expect((await post(a, form(await logoutToken({ sid, sub: named.userId.slice('oidc:'.length) })))).status).toBe(200);
    await expectWorks(recorded.cookie);
    // Nothing of the named user was recorded under that sid: the named user is signed out everywhere instead.
    await expectRefused(named.cookie);
  });

  it.each([
    ['no typ header (providers before RFC 8417 explicit typing)', { typ: undefined }],
    ['typ as a full media type', { typ: 'application/logout+jwt' }],
    ['the generic typ JWT (some providers type every token they sign so)', { typ: 'JWT' }],
  ])('accepted with %s', async (_name, header) => {
    const sub = `acct-${randomUUID()}`;
    const sid = randomUUID();
    const session = await signIn(a, sub, sid);
    expect((await post(b, form(await logoutToken({ sub, sid }, { header })))).status).toBe(200);
    await expectRefused(session.cookie);
  });

  it('a sid nothing was recorded for: with sub, that user is signed out everywhere (fail closed); without sub, nothing happens (200)', async () => {
    const sub = `acct-${randomUUID()}`;
    const session = await signIn(a, sub, null, Date.now() - 5_000);
    expect((await post(a, form(await logoutToken({ sid: randomUUID(), sub: undefined })))).status).toBe(200);
    await expectWorks(session.cookie);
    expect((await post(a, form(await logoutToken({ sid: randomUUID(), sub })))).status).toBe(200);
    await expectRefused(session.cookie);
  });

  it('a sign-in recorded under a provider session after its logout is ended at once (the logout raced it)', async () => {
    const sub = `acct-${randomUUID()}`;
    const sid = randomUUID();
    const before = await signIn(a, sub, sid);
    expect((await post(a, form(await logoutToken({ sub, sid })))).status).toBe(200);
    await expectRefused(before.cookie);
    const late = await signIn(b, sub, sid, Date.now() + 1);
    await expectRefused(late.cookie);
  });

  it(`more than ${PROVIDER_SESSION_SLOTS} sign-ins under one provider session: the overwritten ones end too (their users everywhere)`, async () => {
    const sub = `acct-${randomUUID()}`;
    const sid = randomUUID();
    const signedInAt = Date.now() - 5_000;
    const sessions: Signed[] = [];
    for (let i = 0; i <= PROVIDER_SESSION_SLOTS; i++) sessions.push(await signIn(i % 2 ? a : b, sub, sid, signedInAt));
    await expectWorks(sessions[0]!.cookie);
    expect((await post(b, form(await logoutToken({ sid, sub: undefined })))).status).toBe(200);
    // The first was overwritten in the ring: only the user-wide fallback ends it.
    for (const session of [sessions[0]!, sessions[1]!, sessions.at(-1)!]) await expectRefused(session.cookie);
  });
});

describe('invalid logout tokens: 400 {"error":"invalid_request"}, and nothing is revoked', () => {
  /** Who a case's token names: a user with a session under a provider session, signed in for that case alone. */
  interface Target {
    readonly sub: string;
    readonly sid: string;
  }
  const otherKey = () => ({ ...rsaSigningJwk(), kid: provider.signingKey.kid });
  const now = () => Math.floor(Date.now() / 1000);
  const cases: Array<[string, (t: Target) => Promise<string>]> = [
    ['wrong aud', ({ sub, sid }) => logoutToken({ sub, sid, aud: 'another-client' })],
    ['wrong iss', ({ sub, sid }) => logoutToken({ sub, sid, iss: 'http://127.0.0.1:9' })],
    ['bad signature (another key under the provider kid)', ({ sub, sid }) => logoutToken({ sub, sid }, { key: otherKey() })],
    ['a nonce', ({ sub, sid }) => logoutToken({ sub, sid, nonce: 'n-0S6_WzA2Mj' })],
    ['no events', ({ sub, sid }) => logoutToken({ sub, sid, events: undefined })],
    ['events without the back-channel logout member', ({ sub, sid }) => logoutToken({ sub, sid, events: { 'http://schemas.openid.net/event/other': {} } })],
    ['the back-channel logout event not an object', ({ sub, sid }) => logoutToken({ sub, sid, events: { [BACKCHANNEL_LOGOUT_EVENT]: true } })],
    ['stale iat (10 minutes old, no exp)', ({ sub, sid }) => logoutToken({ sub, sid, exp: undefined }, { iat: now() - 600 })],
    ['iat in the future', ({ sub, sid }) => logoutToken({ sub, sid }, { iat: now() + 600 })],
    ['no iat', ({ sub, sid }) => logoutToken({ sub, sid, iat: undefined })],
    ['expired exp', ({ sub, sid }) => logoutToken({ sub, sid, exp: now() - 120 }, { iat: now() - 200 })],
    ['no exp, however fresh (REQUIRED in Back-Channel Logout 1.0 final)', ({ sub, sid }) => logoutToken({ sub, sid, exp: undefined })],
    ['neither sub nor sid', () => logoutToken({ sub: undefined, sid: undefined })],
    ['no jti', ({ sub, sid }) => logoutToken({ sub, sid, jti: undefined })],
    ['an empty sid', ({ sub }) => logoutToken({ sub, sid: '' })],
    ['typ of another kind of JWT (an access token)', ({ sub, sid }) => logoutToken({ sub, sid }, { header: { typ: 'at+jwt' } })],
    ['alg none', async ({ sub, sid }) => unsecured({ iss: provider.issuer, aud: provider.clientId, iat: now(), jti: randomUUID(), sub, sid, events: { [BACKCHANNEL_LOGOUT_EVENT]: {} } })],
    ['HS256 with the client secret', ({ sub, sid }) => hmacToken({ sub, sid })],
    ['an encrypted-looking (5-part) token', async ({ sub, sid }) => `${await logoutToken({ sub, sid })}.x.y`],
    ['not a JWT', async () => 'not-a-jwt'],
  ];

  it.each(cases)('%s', async (_name, make) => {
    const target = { sub: `acct-${randomUUID()}`, sid: randomUUID() };
    const session = await signIn(a, target.sub, target.sid, Date.now() - 5_000);
    expectInvalid(await post(a, form(await make(target))));
    await expectWorks(session.cookie);
  });

  it('a replayed jti is refused on the other instance too, and does not revoke again', async () => {
    const once = await signIn(a, `acct-${randomUUID()}`, randomUUID(), Date.now() - 5_000);
    const token = await logoutToken({ sub: once.userId.slice('oidc:'.length) });
    expect((await post(a, form(token))).status).toBe(200);
    await expectRefused(once.cookie);
    // A session of that user signed in after the first logout: a replay accepted would end it.
    const after = await signIn(a, once.userId.slice('oidc:'.length), null, Date.now() + 1);
    await expectWorks(after.cookie);
    expectInvalid(await post(b, form(token)));
    expectInvalid(await post(a, form(token)));
    await expectWorks(after.cookie);
  });

  it('the request itself: POST only (405), a form body only, one logout_token, no query string, a size cap (413)', async () => {
    const sub = `acct-${randomUUID()}`;
    const sid = randomUUID();
    const target = await signIn(a, sub, sid, Date.now() - 5_000);
    const token = await logoutToken({ sub, sid });
    const get = await post(a, '', { method: 'GET' });
    expectInvalid(get, 405);
    expect(get.headers.get('allow')).toBe('POST');
    expectInvalid(await post(a, JSON.stringify({ logout_token: token }), { contentType: 'application/json' }));
    expectInvalid(await post(a, form(token), { contentType: 'text/plain' }));
    expectInvalid(await post(a, new URLSearchParams([['logout_token', token], ['logout_token', token]])));
    expectInvalid(await post(a, new URLSearchParams({ token })));
    expectInvalid(await post(a, form(token), { url: `${ENDPOINT}?logout_token=${token}` }));
    expectInvalid(await post(a, `logout_token=${token}&pad=${'x'.repeat(20_000)}`), 413);
    // A body that breaks off mid-upload is the client's doing: 400, logged as a refusal, never as a failure.
    const logged = lines.length;
    expectInvalid(await post(a, brokenBody(`logout_token=${token.slice(0, 20)}`)));
    expect(lines.slice(logged).join('')).toContain('body broke off');
    expect(lines.slice(logged).some((line) => JSON.parse(line).level >= 50)).toBe(false);
    await expectWorks(target.cookie);
    // None of these spent the token's jti: it still logs out.
    expect((await post(b, form(token))).status).toBe(200);
    await expectRefused(target.cookie);
  });

  it('a sub no sign-in accepts (not printable ASCII: a terminal escape, a bidi override) is refused, 400, as at sign-in', async () => {
    for (const sub of ['victim\u009b2J', 'name\u202Etxt.exe', 'bell\u0007', 'caf\u00e9']) {
      expectInvalid(await post(a, form(await logoutToken({ sub }))));
    }
  });

  it('the log says why, and never holds a token', () => {
    const log = lines.join('');
    expect(log).toContain('back-channel logout refused: invalid logout token');
    expect(log).toContain('jti already used');
    expect(log).toContain('ERR_JWT_CLAIM_VALIDATION_FAILED');
    for (const token of tokensMade) {
      expect(log).not.toContain(token);
      const signature = token.split('.')[2];
      if (signature) expect(log).not.toContain(signature);
    }
    expect(findLeak(log, [provider.clientSecret, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET])).toBeNull();
  });
});

describe('failure and configuration', () => {
  it('without an OIDC sign-in configured: 404 route_not_found', async () => {
    const runtime = createRuntime({
      env: { ...sessionSecrets, SVC_KEY: serviceKey },
      store: new MemoryStore(),
      logger,
    });
    const response = await handleBackchannelLogout(new Request(ENDPOINT, { method: 'POST' }), runtime);
    expect(response.status).toBe(404);
    const { error } = (await response.json()) as { error: { code: string; message: string } };
    expect(error.code).toBe('route_not_found');
    expect(error.message).toContain('KEYWARD_OIDC_ISSUER');
  });

  it('the provider cannot be reached (discovery): 503 temporarily_unavailable, nothing revoked', async () => {
    const runtime = instance(new MemoryStore(), { KEYWARD_OIDC_ISSUER: `http://127.0.0.1:${await freePort()}` });
    const sub = `acct-${randomUUID()}`;
    const response = await post(runtime, form(await logoutToken({ sub })));
    expect(response.status).toBe(503);
    expect(JSON.parse(response.body)).toEqual({ error: 'temporarily_unavailable' });
    expect(await runtime.store.get(`rev:user:oidc:${sub}`)).toBeNull();
  });

  it('the store fails while revoking: 503 temporarily_unavailable, and the provider\'s retry of the same token then works', async () => {
    const memory = new MemoryStore();
    let broken = true;
    const failing = new Proxy(memory, {
      get(target, name, receiver) {
        const value = Reflect.get(target, name, receiver) as unknown;
        // Every write a revocation makes: `set` (a session's mark), `raise` (a user's, only ever raised).
        if ((name !== 'set' && name !== 'raise') || typeof value !== 'function') return typeof value === 'function' ? value.bind(target) : value;
        return (key: string, ...rest: unknown[]) =>
          broken && key.startsWith('rev:') ? Promise.reject(new StoreUnavailableError('memory')) : (value as (...args: unknown[]) => unknown).call(target, key, ...rest);
      },
    });
    const runtime = instance(failing);
    const sub = `acct-${randomUUID()}`;
    const token = await logoutToken({ sub });
    const failed = await post(runtime, form(token));
    expect(failed.status).toBe(503);
    expect(JSON.parse(failed.body)).toEqual({ error: 'temporarily_unavailable' });
    broken = false;
    expect((await post(runtime, form(token))).status).toBe(200);
    expect(await memory.get(`rev:user:oidc:${sub}`)).not.toBeNull();
  });
});

describe("the provider's metadata and keys: held, fetched again behind the posts, not per post after a failure", () => {
  /**
   * A minimal issuer on loopback (discovery document and JWKS, node:http) that counts its requests, can be
   * switched to answer 500 or to hold its answers until the test lets them go, and signs with the test's own
   * keys (a second one for a rotation). The runtime's clock is the test's, so a day passes without waiting.
   */
  let issuer: {
    url: string;
    server: Server;
    discoveries: number;
    jwksRequests: number;
    down: boolean;
    /** Requests of these paths are held (not answered) until `release()`. */
    hold: Set<string>;
    held: (() => void)[];
    keys: { kid: string; jwk: ReturnType<typeof rsaSigningJwk> }[];
  };
  const signingKey = rsaSigningJwk();
  const rotatedKey = rsaSigningJwk();
  const publicJwk = (jwk: ReturnType<typeof rsaSigningJwk>) => ({ kty: jwk.kty, n: jwk.n, e: jwk.e });
  let clock = Date.now();

  function release(): void {
    for (const answer of issuer.held.splice(0)) answer();
  }

  beforeAll(async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    issuer = {
      url,
      server: createServer(),
      discoveries: 0,
      jwksRequests: 0,
      down: false,
      hold: new Set(),
      held: [],
      keys: [{ kid: 'k1', jwk: signingKey }],
    };
    issuer.server.on('request', (req, res) => {
      const path = req.url ?? '';
      if (path === '/.well-known/openid-configuration') issuer.discoveries++;
      if (path === '/jwks') issuer.jwksRequests++;
      const answer = () => {
        if (issuer.down) return res.writeHead(500).end();
        if (path === '/.well-known/openid-configuration') {
          res.writeHead(200, { 'content-type': 'application/json' });
          return res.end(
            JSON.stringify({ issuer: url, jwks_uri: `${url}/jwks`, id_token_signing_alg_values_supported: ['RS256'] }),
          );
        }
        if (path === '/jwks') {
          res.writeHead(200, { 'content-type': 'application/json' });
          const keys = issuer.keys.map(({ kid, jwk }) => ({ ...publicJwk(jwk), kid, alg: 'RS256', use: 'sig' }));
          return res.end(JSON.stringify({ keys }));
        }
        res.writeHead(404).end();
      };
      if (issuer.hold.has(path)) issuer.held.push(answer);
      else answer();
    });
    await new Promise<void>((resolve) => issuer.server.listen(port, '127.0.0.1', resolve));
  });
  afterAll(() => {
    release();
    return new Promise<void>((resolve) => issuer.server.close(() => resolve()));
  });

  /** A runtime on the test's clock, `behindMs` behind it (another instance whose clock is off), sharing `store`. */
  function runtimeOnClock(store: Store = new MemoryStore(), behindMs = 0): Runtime {
    return createRuntime({
      env: { ...env(), KEYWARD_OIDC_ISSUER: issuer.url },
      store,
      logger,
      now: () => clock - behindMs,
    });
  }

  /** Lets a fetch that runs behind the posts finish, so the issuer's counts say what was asked. */
  async function settled(runtime: Runtime): Promise<void> {
    await runtime.logoutTokens!.idle();
  }

  async function signed(sub: string, key = { kid: 'k1', jwk: signingKey }, iat = Math.floor(clock / 1000), exp = iat + 120): Promise<string> {
    const token = await new SignJWT({ iss: issuer.url, aud: provider.clientId, iat, exp, jti: randomUUID(), sub, events: { [BACKCHANNEL_LOGOUT_EVENT]: {} } })
      .setProtectedHeader({ alg: 'RS256', kid: key.kid, typ: 'logout+jwt' })
      .sign(await importJWK(key.jwk, 'RS256'));
    tokensMade.push(token);
    return token;
  }

  function reset(): void {
    release();
    clock = Date.now();
    issuer.down = false;
    issuer.discoveries = 0;
    issuer.jwksRequests = 0;
    issuer.hold.clear();
    issuer.keys = [{ kid: 'k1', jwk: signingKey }];
  }

  it('a used jti is refused on an instance whose clock is behind, as long as that instance still takes the token by its iat', async () => {
    reset();
    // One store (its own clock, the test's) for two instances, the second 4 minutes behind (clocks within 5).
    const store = new MemoryStore(() => clock);
    const first = runtimeOnClock(store);
    const behind = runtimeOnClock(store, 4 * 60_000);
    // Issued as late as the first instance takes it (its iat just within the skew ahead), with an exp far enough not to matter.
    const iat = Math.floor(clock / 1000) + SKEW_SECONDS - 1;
    const token = await signed(`acct-${randomUUID()}`, undefined, iat, iat + 900);
    expect((await post(first, form(token))).status).toBe(200);
    // Too old for the first instance by now (5 minutes and the skew it allows), not for the one behind.
    clock += (MAX_AGE_SECONDS + 2 * SKEW_SECONDS + 1) * 1000;
    expectInvalid(await post(first, form(token)));
    expectInvalid(await post(behind, form(token)));
  });

  it('a provider that is down is asked once per retry interval, not once per post', async () => {
    reset();
    issuer.down = true;
    const runtime = runtimeOnClock();
    for (let i = 0; i < 3; i++) expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(503);
    expect(issuer.discoveries).toBe(1);
    clock += DISCOVERY_RETRY_MS + 1;
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(503);
    expect(issuer.discoveries).toBe(2);
    // Back, but within the interval: still answered from memory; once it has passed, asked again.
    issuer.down = false;
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(503);
    expect(issuer.discoveries).toBe(2);
    clock += DISCOVERY_RETRY_MS + 1;
    const sub = `acct-${randomUUID()}`;
    expect((await post(runtime, form(await signed(sub)))).status).toBe(200);
    expect(issuer.discoveries).toBe(3);
    expect(await runtime.store.get(`rev:user:oidc:${sub}`)).not.toBeNull();
  });

  it('the metadata is held for a day, then fetched again; a failed refetch keeps the held metadata and is retried later', async () => {
    reset();
    const runtime = runtimeOnClock();
    const sub = `acct-${randomUUID()}`;
    expect((await post(runtime, form(await signed(sub)))).status).toBe(200);
    expect(await runtime.store.get(`rev:user:oidc:${sub}`)).not.toBeNull();
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
    expect([issuer.discoveries, issuer.jwksRequests]).toEqual([1, 1]); // the keys come with the metadata

    clock += METADATA_TTL_MS;
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
    await settled(runtime);
    expect(issuer.discoveries).toBe(2);

    // A day later the provider is down: the metadata is kept and asked for again once per retry interval; the
    // keys, a day old, are not trusted without the provider (KEYS_GRACE_MS), so logouts fail (503) meanwhile.
    clock += METADATA_TTL_MS;
    issuer.down = true;
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(503);
    await settled(runtime);
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(503);
    await settled(runtime);
    expect(issuer.discoveries).toBe(3); // one failed refetch, not one per post
    issuer.down = false;
    // Back, but within the interval: not asked yet.
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(503);
    await settled(runtime);
    expect(issuer.discoveries).toBe(3);
    clock += DISCOVERY_RETRY_MS + 1;
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
    await settled(runtime);
    expect(issuer.discoveries).toBe(4);
  });

  it('a post never waits for a refetch: the held metadata verifies it while the provider has not answered', async () => {
    reset();
    const runtime = runtimeOnClock();
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
    clock += METADATA_TTL_MS;
    issuer.hold.add('/.well-known/openid-configuration');
    const sub = `acct-${randomUUID()}`;
    expect((await post(runtime, form(await signed(sub)))).status).toBe(200);
    expect(await runtime.store.get(`rev:user:oidc:${sub}`)).not.toBeNull();
    // Answered although the refetch it started is held at the provider (not answered, not given up).
    await vi.waitFor(() => expect(issuer.held.length).toBe(1));
    expect(issuer.discoveries).toBe(2);
    issuer.hold.clear();
    release();
    await settled(runtime);
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
    expect(issuer.discoveries).toBe(2);
  }, 4_000); // below the 5 s a refetch may take before it is given up: a post that waited for it cannot pass

  it('keys older than ten minutes are fetched again behind the post; a provider down or slow meanwhile fails no logout, up to twenty', async () => {
    reset();
    const runtime = runtimeOnClock();
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
    expect(issuer.jwksRequests).toBe(1);

    // Slow: the post is verified with the keys held while the JWKS request is still held at the provider.
    clock += KEYS_MAX_AGE_MS;
    issuer.hold.add('/jwks');
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
    await vi.waitFor(() => expect(issuer.held.length).toBe(1));
    expect(issuer.jwksRequests).toBe(2);
    issuer.hold.clear();
    release();
    await settled(runtime);

    // Down: still verified with the keys held, and asked again once per retry interval, not per post.
    clock += KEYS_MAX_AGE_MS;
    issuer.down = true;
    for (let i = 0; i < 3; i++) {
      expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
      await settled(runtime);
    }
    expect(issuer.jwksRequests).toBe(3);
    clock += DISCOVERY_RETRY_MS + 1;
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
    await settled(runtime);
    expect(issuer.jwksRequests).toBe(4);
    expect(issuer.discoveries).toBe(1);

    // Twenty minutes after the last fetch that worked, the keys held are not trusted without asking: the post
    // waits for the provider, and fails (503, nothing revoked) while it cannot answer.
    clock += KEYS_GRACE_MS - KEYS_MAX_AGE_MS;
    const sub = `acct-${randomUUID()}`;
    expect((await post(runtime, form(await signed(sub)))).status).toBe(503);
    expect(await runtime.store.get(`rev:user:oidc:${sub}`)).toBeNull();
    expect(issuer.jwksRequests).toBe(5);
    // Slow: the post is answered only once the provider has answered.
    clock += DISCOVERY_RETRY_MS + 1;
    issuer.down = false;
    issuer.hold.add('/jwks');
    let answered = false;
    const waiting = post(runtime, form(await signed(sub))).then((result) => {
      answered = true;
      return result;
    });
    await vi.waitFor(() => expect(issuer.held.length).toBe(1));
    expect(answered).toBe(false);
    release();
    expect((await waiting).status).toBe(200);
    expect(await runtime.store.get(`rev:user:oidc:${sub}`)).not.toBeNull();
  });

  it('a token signed with a key the held set lacks fetches the keys again (a rotation); an unknown key is refused once the provider was asked', async () => {
    reset();
    const runtime = runtimeOnClock();
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(200);
    clock += DISCOVERY_RETRY_MS + 1;
    issuer.keys = [{ kid: 'k2', jwk: rotatedKey }];
    const sub = `acct-${randomUUID()}`;
    expect((await post(runtime, form(await signed(sub, { kid: 'k2', jwk: rotatedKey })))).status).toBe(200);
    expect(await runtime.store.get(`rev:user:oidc:${sub}`)).not.toBeNull();
    expect(issuer.jwksRequests).toBe(2);
    // A key the held set lacks, within 10 s of the last request for the keys: the provider is not asked again,
    // and the post gets 503, which a provider retries (posts naming junk keys cannot make a real one fail for good).
    const stranger = { kid: 'k9', jwk: rsaSigningJwk() };
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`, stranger)))).status).toBe(503);
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`, stranger)))).status).toBe(503);
    expect(issuer.jwksRequests).toBe(2);
    // Later, the provider is asked, and a key it does not have is refused (400).
    clock += DISCOVERY_RETRY_MS + 1;
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`, stranger)))).status).toBe(400);
    expect(issuer.jwksRequests).toBe(3);
    // The retired key no longer verifies (the held set is the provider's current one).
    clock += DISCOVERY_RETRY_MS + 1;
    expect((await post(runtime, form(await signed(`acct-${randomUUID()}`)))).status).toBe(400);
    expect(issuer.jwksRequests).toBe(4);
  });
});

/** An unsecured JWT (`alg: none`, RFC 7519 §6), which must never pass. */
function unsecured(payload: Record<string, unknown>): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const token = `${part({ alg: 'none', typ: 'logout+jwt' })}.${part(payload)}.`;
  tokensMade.push(token);
  return token;
}

/** A logout token MACed with the client secret (HS256): a provider key must sign it, not a shared secret. */
async function hmacToken(claims: Record<string, unknown>): Promise<string> {
  const iat = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({ iss: provider.issuer, aud: provider.clientId, iat, jti: randomUUID(), events: { [BACKCHANNEL_LOGOUT_EVENT]: {} }, ...claims })
    .setProtectedHeader({ alg: 'HS256', typ: 'logout+jwt' })
    .sign(new TextEncoder().encode(provider.clientSecret));
  tokensMade.push(token);
  return token;
}
