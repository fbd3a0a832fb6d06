import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sealData } from 'iron-session';
import { defineUpstream } from '../../lib/core/config/load';
import {
  CONSENT_PAGE,
  describeConsent,
  handleMobileAuthorize,
  handleMobileRevoke,
  handleMobileToken,
} from '../../lib/core/api/mobile';
import { handleLogout, handleRevokeAll } from '../../lib/core/api/revoke';
import { handleProxy } from '../../lib/core/pipeline';
import { MOBILE_CAPS } from '../../lib/core/mobile/tokens';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { StoreUnavailableError } from '../../lib/store/types';
import { passwordVersion } from '../../lib/core/users/file';
import { hashPassword } from '../../lib/core/users/password';
import { brokenBody } from '../fixtures/broken-body';
import { REDIS_URL, capturingLogger, claimsSessionCookie, findLeak, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { deleteKeysUnder } from '../fixtures/redis-server';

/**
 * The native-app token exchange at handler level, on the real Redis (own key prefix per run):
 * /api/session/mobile/authorize (PKCE S256, registered redirect URIs only), /api/session/token (code and
 * refresh grants, rotation, reuse detection revoking the whole family) and the sealed access token on the
 * proxy. Time is the runtime's injected clock.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const APP_REDIRECT = 'com.example.keyward:/oauth/callback';
const LOOPBACK_REDIRECT = 'http://127.0.0.1:8765/callback';
/** An https app link (Android App Links, iOS universal links): the platform proves the app, so no consent page. */
const APP_LINK = 'https://app.keyward.test/oauth/callback';
const REDIRECTS = `${APP_REDIRECT}, ${LOOPBACK_REDIRECT}, ${APP_LINK}`;
const ACCESS_TTL = 60;
const OTHER_FRONT_END = 'https://shop.keyward.test';
const ALICE = 'local:alice';

let upstream: TestUpstream;
let store: RedisStore;
let runtime: Runtime;
let disabled: Runtime;
let clock = Date.now();
const sessionSecrets = testSessionSecrets();
const serviceKey = randomSecret('svc');
const { logger, lines: logLines } = capturingLogger();
/** Every code and token issued in this file: none may appear in a log line. */
const issued: string[] = [];
let aliceCookie: string;
/** Alice as the consent page knows her: her name, and the session the consent cookie is bound to. */
const alicePage = { name: 'alice', sessionId: randomUUID() };

interface Result {
  status: number;
  body: string;
  headers: Headers;
  json<T = Record<string, unknown>>(): T;
}

async function read(response: Response): Promise<Result> {
  const flat = await responseText(response);
  return { status: flat.status, body: flat.body, headers: response.headers, json: <T>() => JSON.parse(flat.body) as T };
}

/** Keyward's own JSON error (the proxy, and the mobile endpoints when the feature is off). */
function expectError(result: Result, status: number, code: string) {
  expect(result.status).toBe(status);
  expect(result.json<{ error: { code: string } }>().error.code).toBe(code);
}

/** Every OAuth error body and error redirect seen in this file: none may carry a code or token (checked last). */
const oauthErrors: string[] = [];

/**
 * An OAuth error from the authorize or token endpoint (RFC 6749 §5.2): `{"error","error_description"}` and
 * nothing else, never cached. Returns the description.
 */
function expectOAuthError(result: Result, status: number, error: string): string {
  expect(result.status, result.body).toBe(status);
  const body = result.json<{ error: string; error_description: string }>();
  expect(Object.keys(body).sort()).toEqual(['error', 'error_description']);
  expect(body.error).toBe(error);
  expect(body.error_description.length).toBeGreaterThan(0);
  expect(result.headers.get('content-type')).toBe('application/json; charset=utf-8');
  expect(result.headers.get('cache-control')).toBe('no-store');
  expect(result.headers.get('pragma')).toBe('no-cache');
  expect(result.headers.get('location')).toBeNull();
  oauthErrors.push(result.body);
  return body.error_description;
}

/**
 * An error sent back to the app at its registered redirect URI (RFC 6749 §4.1.2.1): `error`,
 * `error_description`, `state` and `iss`, and no code. Returns the callback's parameters.
 */
function expectErrorRedirect(result: Result, error: string, redirectUri = APP_REDIRECT, state: string | null = 'st-123'): URLSearchParams {
  // 302 from the GET; 303 from the consent form's POST.
  expect([302, 303], result.body).toContain(result.status);
  const location = result.headers.get('location')!;
  oauthErrors.push(location);
  const url = new URL(location);
  expect(`${url.protocol}${url.host ? `//${url.host}` : ''}${url.pathname}`).toBe(redirectUri);
  expect(url.searchParams.get('error')).toBe(error);
  expect(url.searchParams.get('error_description')).toBeTruthy();
  expect(url.searchParams.get('state')).toBe(state);
  expect(url.searchParams.get('iss')).toBe(APP_ORIGIN);
  expect(url.searchParams.has('code')).toBe(false);
  return url.searchParams;
}

function pkce() {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

function authorizeQuery(overrides: Record<string, string | null> = {}, challenge = pkce().challenge): string {
  const params: Record<string, string | null> = {
    redirect_uri: APP_REDIRECT,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    state: 'st-123',
    ...overrides,
  };
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value !== null) query.set(name, value);
  return query.toString();
}

/**
 * The browser opening the authorize URL. When it is sent to the consent page (app/authorize), the user answers
 * `consent` ('allow' unless said otherwise; null stops at the page) and the page's form is posted.
 */
async function authorize(
  query: string,
  options: {
    cookie?: string | null;
    authorization?: string;
    site?: string;
    /** Sec-Fetch-Mode, sent with `site`: `navigate` unless given. */
    mode?: string;
    method?: string;
    on?: Runtime;
    consent?: 'allow' | 'deny' | null;
  } = {},
): Promise<Result> {
  const headers = new Headers();
  const cookie = options.cookie === undefined ? aliceCookie : options.cookie;
  if (cookie) headers.set('cookie', cookie);
  if (options.authorization) headers.set('authorization', options.authorization);
  if (options.site) headers.set('sec-fetch-site', options.site);
  if (options.site) headers.set('sec-fetch-mode', options.mode ?? 'navigate');
  const request = new Request(`${APP_ORIGIN}/api/session/mobile/authorize?${query}`, {
    method: options.method ?? 'GET',
    headers,
    redirect: 'manual',
  });
  const result = await read(await handleMobileAuthorize(request, options.on ?? runtime));
  const location = result.headers.get('location');
  const consent = options.consent === undefined ? 'allow' : options.consent;
  if (consent === null || result.status !== 302 || !location?.startsWith(`${CONSENT_PAGE}?`)) return result;
  const fields = new URLSearchParams(location.slice(CONSENT_PAGE.length + 1));
  // The browser keeps the cookie the redirect to the page set, and sends it with the page's post.
  const asked = consentCookieOf(result);
  return postConsent(fields, consent, { cookie: cookie ? `${cookie}; ${asked}` : asked, on: options.on });
}

/** The consent cookie (name=value) a response sets, as the browser sends it back. */
function consentCookieOf(result: Result): string {
  const cookie = result.headers.getSetCookie().find((line) => line.startsWith(`${CONSENT_COOKIE}=`));
  expect(cookie, 'the consent cookie').toBeDefined();
  return cookie!.split(';')[0]!;
}

/** Alice's browser sent to the consent page by the endpoint for `query`: her cookies then, the consent one too. */
async function askedFor(query: string): Promise<string> {
  const result = await authorize(query, { consent: null });
  expect(result.headers.get('location')).toMatch(new RegExp(`^${CONSENT_PAGE}\\?`));
  return `${aliceCookie}; ${consentCookieOf(result)}`;
}

const CONSENT_COOKIE = '__Host-keyward.mobile-consent';

/** The consent page's form, posted as the browser posts it: same origin, form-encoded, with the session cookie. */
async function postConsent(
  fields: URLSearchParams,
  decision: string,
  options: { cookie?: string | null; origin?: string | null; site?: string; on?: Runtime; contentType?: string } = {},
): Promise<Result> {
  const headers = new Headers({ 'content-type': options.contentType ?? 'application/x-www-form-urlencoded' });
  const cookie = options.cookie === undefined ? aliceCookie : options.cookie;
  if (cookie) headers.set('cookie', cookie);
  const origin = options.origin === undefined ? APP_ORIGIN : options.origin;
  if (origin !== null) headers.set('origin', origin);
  headers.set('sec-fetch-site', options.site ?? 'same-origin');
  const body = new URLSearchParams(fields);
  body.set('decision', decision);
  const request = new Request(`${APP_ORIGIN}/api/session/mobile/authorize`, {
    method: 'POST',
    headers,
    body: body.toString(),
    redirect: 'manual',
  });
  return read(await handleMobileAuthorize(request, options.on ?? runtime));
}

async function token(
  params: Record<string, string>,
  options: { json?: boolean; query?: string; on?: Runtime } = {},
): Promise<Result> {
  const request = new Request(`${APP_ORIGIN}/api/session/token${options.query ?? ''}`, {
    method: 'POST',
    headers: { 'content-type': options.json ? 'application/json' : 'application/x-www-form-urlencoded' },
    body: options.json ? JSON.stringify(params) : new URLSearchParams(params).toString(),
  });
  return read(await handleMobileToken(request, options.on ?? runtime));
}

/** POST /api/session/token/revoke (RFC 7009), form-encoded as a client sends it. */
async function revoke(
  params: Record<string, string>,
  options: { method?: string; query?: string; authorization?: string } = {},
): Promise<Result> {
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
  if (options.authorization) headers.authorization = options.authorization;
  const method = options.method ?? 'POST';
  const request = new Request(`${APP_ORIGIN}/api/session/token/revoke${options.query ?? ''}`, {
    method,
    headers,
    body: method === 'POST' ? new URLSearchParams(params).toString() : undefined,
  });
  return read(await handleMobileRevoke(request, runtime));
}

/** Runs the authorize step as the signed-in browser and returns the one-time code and its verifier. */
async function newCode(redirectUri = APP_REDIRECT, cookie = aliceCookie): Promise<{ code: string; verifier: string }> {
  const { verifier, challenge } = pkce();
  const result = await authorize(authorizeQuery({ redirect_uri: redirectUri }, challenge), { cookie });
  expect(result.status).toBe(redirectUri === APP_LINK ? 302 : 303);
  const code = new URL(result.headers.get('location')!).searchParams.get('code')!;
  issued.push(code);
  return { code, verifier };
}

interface Tokens {
  access_token: string;
  refresh_token: string;
  token_type: string;
  expires_in: number;
}

async function exchange(code: string, verifier: string, redirectUri = APP_REDIRECT): Promise<Result> {
  const result = await token({
    grant_type: 'authorization_code',
    code,
    code_verifier: verifier,
    redirect_uri: redirectUri,
  });
  if (result.status === 200) {
    const tokens = result.json<Tokens>();
    issued.push(tokens.access_token, tokens.refresh_token);
  }
  return result;
}

async function signInApp(cookie = aliceCookie): Promise<Tokens> {
  const { code, verifier } = await newCode(APP_REDIRECT, cookie);
  const result = await exchange(code, verifier);
  expect(result.status).toBe(200);
  return result.json<Tokens>();
}

/** Runs `body` with the clock `ms` later, then puts it back. */
async function later(ms: number, body: () => Promise<unknown>): Promise<void> {
  const started = clock;
  clock += ms;
  try {
    await body();
  } finally {
    clock = started;
  }
}
/** Past KEYWARD_MOBILE_REFRESH_GRACE (30 s by default): a spent refresh token presented then is a copy. */
const PAST_GRACE_MS = 31_000;

async function refresh(refreshToken: string, on?: Runtime): Promise<Result> {
  const result = await token({ grant_type: 'refresh_token', refresh_token: refreshToken }, { on });
  if (result.status === 200) {
    const tokens = result.json<Tokens>();
    issued.push(tokens.access_token, tokens.refresh_token);
  }
  return result;
}

/** A proxied GET with `Authorization: Bearer <access token>` and no CSRF header, as a native app sends it. */
async function proxy(
  accessToken: string | null,
  options: { query?: string; cookie?: string } = {},
): Promise<{ result: Result; reached: boolean }> {
  const before = upstream.requests.length;
  const headers = new Headers();
  if (accessToken !== null) headers.set('authorization', `Bearer ${accessToken}`);
  if (options.cookie) headers.set('cookie', options.cookie);
  const request = new Request(`${APP_ORIGIN}/api/proxy/svc/items/1${options.query ?? ''}`, { headers });
  const result = await read(await handleProxy(request, { upstream: 'svc', path: ['items', '1'] }, runtime));
  return { result, reached: upstream.requests.length > before };
}

/** Local users as KEYWARD_USERS_FILE describes them; one scrypt hash serves every entry (never checked here). */
let passwordHash: string;
function usersFile(users: Array<{ username: string; roles: string[]; claims?: Record<string, string>; passwordHash?: string }>): string {
  const path = join(mkdtempSync(join(tmpdir(), 'keyward-mobile-users-')), 'users.json');
  writeFileSync(path, JSON.stringify({ users: users.map((user) => ({ passwordHash, claims: {}, ...user })) }), { mode: 0o600 });
  return path;
}
let env: Record<string, string>;
let upstreams: ReturnType<typeof defineUpstream>[];

/** Another instance on the same store and secrets, with its own users file (a changed or redeployed file). */
function instanceWithUsers(file: string): Runtime {
  return createRuntime({
    env: { ...env, KEYWARD_MOBILE_REDIRECT_URIS: REDIRECTS, KEYWARD_USERS_FILE: file },
    upstreams,
    store,
    logger,
    now: () => clock,
  });
}

/** A token carries its user's roles and claims: an identity provider's user in many groups gets a long one. */
const groups = (count: number) => ['user', ...Array.from({ length: count }, (_, i) => `directory-group-${String(i).padStart(4, '0')}`)];

const redisPrefix = `keyward-test:mobile:${randomUUID()}:`;

beforeAll(async () => {
  passwordHash = await hashPassword(randomSecret('pw'));
  upstream = await startUpstream();
  store = new RedisStore(REDIS_URL, { prefix: redisPrefix });
  await store.ready();
  env = {
    ...sessionSecrets,
    SVC_KEY: serviceKey,
    // Another front end of the app may make API calls; it has no say in an app's sign-in (the consent form).
    KEYWARD_ALLOWED_ORIGINS: `${APP_ORIGIN},${OTHER_FRONT_END}`,
    KEYWARD_MOBILE_ACCESS_TTL: String(ACCESS_TTL),
    // Local users' roles and claims are re-read at every exchange and refresh.
    KEYWARD_USERS_FILE: usersFile([
      { username: 'alice', roles: ['user'], claims: { org: 'acme' } },
      { username: 'dora', roles: ['user'] },
    ]),
  };
  upstreams = [
    defineUpstream('svc', {
      baseUrl: `${upstream.origin}/v1/`,
      auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
      routes: [{ method: 'GET', path: '/items/:id', roles: ['user'] }],
    }),
  ];
  runtime = createRuntime({
    env: { ...env, KEYWARD_MOBILE_REDIRECT_URIS: REDIRECTS },
    upstreams,
    store,
    logger,
    now: () => clock,
  });
  disabled = createRuntime({ env, upstreams, store, logger, now: () => clock });
  aliceCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, {
    sub: ALICE,
    sid: alicePage.sessionId,
    roles: ['user'],
    claims: { org: 'acme' },
    passwordVersion: passwordVersion('alice', passwordHash),
  });
});

afterAll(async () => {
  await upstream?.close();
  await store?.close();
  await deleteKeysUnder(REDIS_URL, redisPrefix);
});

describe('GET /api/session/mobile/authorize', () => {
  it('without a session: 302 to the sign-in page, coming back to the same authorize URL, and no code', async () => {
    const query = authorizeQuery();
    const result = await authorize(query, { cookie: null });
    expect(result.status).toBe(302);
    const location = result.headers.get('location')!;
    expect(location.startsWith('/api/auth/signin?callbackUrl=')).toBe(true);
    const back = new URL(location, APP_ORIGIN).searchParams.get('callbackUrl');
    expect(back).toBe(`/api/session/mobile/authorize?${query}`);
    expect(location).not.toContain('code=kwc_');
  });

  it('parameters the endpoint ignores are not carried through the sign-in (a padded link stays under header limits)', async () => {
    const query = authorizeQuery();
    const padded = new URLSearchParams(query);
    padded.set('utm_source', 'x'.repeat(12_000));
    padded.set('prompt', 'login');
    const result = await authorize(padded.toString(), { cookie: null });
    expect(result.status).toBe(302);
    const location = result.headers.get('location')!;
    expect(new URL(location, APP_ORIGIN).searchParams.get('callbackUrl')).toBe(`/api/session/mobile/authorize?${query}`);
    expect(location.length).toBeLessThan(2048);
    // Back from an identity provider (cross-site) at that shorter URL: the browser's resume cookie still matches.
    const resume = result.headers.get('set-cookie')!.split(';')[0]!;
    const back = await read(
      await handleMobileAuthorize(
        new Request(`${APP_ORIGIN}/api/session/mobile/authorize?${query}`, {
          headers: { cookie: resume, 'sec-fetch-site': 'cross-site' },
        }),
        runtime,
      ),
    );
    expect(back.status).toBe(200);
    expect(back.body).toContain('/api/session/mobile/authorize?');
  });

  it('a bearer (app) session cannot authorize itself: sent to the browser sign-in, no code', async () => {
    const tokens = await signInApp();
    const result = await authorize(authorizeQuery(), { cookie: null, authorization: `Bearer ${tokens.access_token}` });
    expect(result.status).toBe(302);
    expect(result.headers.get('location')).toMatch(/^\/api\/auth\/signin\?callbackUrl=/);
  });

  it('with a cookie session, an S256 challenge and the user’s consent: 303 to the registered redirect URI with code, state and iss', async () => {
    const result = await authorize(authorizeQuery({ state: 'a b&c=d/é' }));
    expect(result.status).toBe(303);
    expect(result.headers.get('cache-control')).toBe('no-store');
    expect(result.headers.get('referrer-policy')).toBe('no-referrer');
    const location = new URL(result.headers.get('location')!);
    expect(`${location.protocol}${location.pathname}`).toBe(APP_REDIRECT);
    expect(location.searchParams.get('code')).toMatch(/^kwc_[A-Za-z0-9_-]{43}$/);
    expect(location.searchParams.get('state')).toBe('a b&c=d/é');
    // RFC 9207: the issuer (the public origin), so an app talking to several servers knows who answered.
    expect(location.searchParams.get('iss')).toBe(APP_ORIGIN);
    issued.push(location.searchParams.get('code')!);
  });

  it('the loopback redirect URI registered next to it works too', async () => {
    const result = await authorize(authorizeQuery({ redirect_uri: LOOPBACK_REDIRECT }));
    expect(result.status).toBe(303);
    expect(result.headers.get('location')!.startsWith(`${LOOPBACK_REDIRECT}?code=kwc_`)).toBe(true);
  });

  it('a loopback IP redirect URI on any port (RFC 8252 §7.3: a desktop app listens where it can); the code is bound to that port', async () => {
    for (const redirectUri of ['http://127.0.0.1:51234/callback', 'http://127.0.0.1/callback', 'http://127.0.0.1:1/callback']) {
      const result = await authorize(authorizeQuery({ redirect_uri: redirectUri }));
      expect(result.status, redirectUri).toBe(303);
      const location = new URL(result.headers.get('location')!);
      expect(`${location.origin}${location.pathname}`).toBe(redirectUri);
    }
    const { verifier, challenge } = pkce();
    const asked = 'http://127.0.0.1:51234/callback';
    const code = new URL((await authorize(authorizeQuery({ redirect_uri: asked }, challenge))).headers.get('location')!).searchParams.get('code')!;
    issued.push(code);
    // The token request names the same URI, port and all: another registered-looking port is not it.
    expectOAuthError(await exchange(code, verifier, LOOPBACK_REDIRECT), 400, 'invalid_grant');
    const again = new URL((await authorize(authorizeQuery({ redirect_uri: asked }, challenge))).headers.get('location')!).searchParams.get('code')!;
    issued.push(again);
    expect((await exchange(again, verifier, asked)).status).toBe(200);
  });

  it.each([
    ['another app', 'com.evil.app:/oauth/callback'],
    ['a longer path', `${APP_REDIRECT}/more`],
    ['a path prefix', `${APP_REDIRECT}x`],
    ['an added query', `${APP_REDIRECT}?next=https://evil.example`],
    ['a web site', 'https://evil.example/callback'],
    ['another path on a loopback port', 'http://127.0.0.1:8766/callback2'],
    ['a loopback port out of range', 'http://127.0.0.1:65536/callback'],
    ['a loopback port with a leading zero', 'http://127.0.0.1:08765/callback'],
    ['the other loopback address', 'http://[::1]:8765/callback'],
    ['localhost for 127.0.0.1', 'http://localhost:8765/callback'],
    ['no redirect_uri', null],
  ])('an unregistered redirect_uri (%s) → 400 invalid_request, never redirected', async (_name, redirectUri) => {
    const result = await authorize(authorizeQuery({ redirect_uri: redirectUri }));
    expectOAuthError(result, 400, 'invalid_request');
    expect(result.body).not.toContain('kwc_');
    // The submitted URI is not echoed either.
    if (redirectUri) expect(result.body).not.toContain(redirectUri);
  });

  it('an unregistered redirect_uri is refused before anything else is looked at, signed in or not', async () => {
    const query = authorizeQuery({ redirect_uri: 'https://evil.example/cb', code_challenge: null, response_type: 'token' });
    expectOAuthError(await authorize(query), 400, 'invalid_request');
    expectOAuthError(await authorize(query, { cookie: null }), 400, 'invalid_request');
  });

  it.each([
    ['redirect_uri twice', `&redirect_uri=${encodeURIComponent(APP_REDIRECT)}`],
    ['client_id twice', '&client_id=a&client_id=b'],
    ['a client_id with a control character', '&client_id=a%0Ab'],
    ['a client_id of 256 characters', `&client_id=${'c'.repeat(256)}`],
  ])('%s → 400 invalid_request, never redirected (the client is not known to be good)', async (_name, extra) => {
    expectOAuthError(await authorize(`${authorizeQuery()}${extra}`), 400, 'invalid_request');
  });

  it.each([
    ['no challenge', { code_challenge: null }],
    ['method plain', { code_challenge_method: 'plain' }],
    ['no method', { code_challenge_method: null }],
    ['a short challenge', { code_challenge: 'abc' }],
    ['a challenge with padding', { code_challenge: `${'A'.repeat(42)}=` }],
  ])('PKCE is required (S256): %s → the error goes back to the app (invalid_request, state, iss), no code', async (_name, overrides) => {
    expectErrorRedirect(await authorize(authorizeQuery(overrides)), 'invalid_request');
  });

  it('bad requests are answered to the app before asking anyone to sign in', async () => {
    expectErrorRedirect(await authorize(authorizeQuery({ code_challenge: null }), { cookie: null }), 'invalid_request');
  });

  it('response_type other than code → unsupported_response_type at the redirect URI; absent or code is fine', async () => {
    expectErrorRedirect(await authorize(authorizeQuery({ response_type: 'token' })), 'unsupported_response_type');
    for (const responseType of ['code', null]) {
      const result = await authorize(authorizeQuery({ response_type: responseType }));
      expect(new URL(result.headers.get('location')!).searchParams.get('code')).toMatch(/^kwc_/);
    }
  });

  it('a repeated parameter (other than redirect_uri and client_id) → invalid_request at the redirect URI', async () => {
    expectErrorRedirect(await authorize(`${authorizeQuery()}&code_challenge_method=S256`), 'invalid_request');
    // A repeated state cannot be sent back as it was: the error goes without one.
    expectErrorRedirect(await authorize(`${authorizeQuery()}&state=other`), 'invalid_request', APP_REDIRECT, null);
  });

  it('a state longer than 512 characters → invalid_request at the redirect URI, without it (never cut short); 512 is sent back whole', async () => {
    expectErrorRedirect(await authorize(authorizeQuery({ state: 's'.repeat(513) })), 'invalid_request', APP_REDIRECT, null);
    const result = await authorize(authorizeQuery({ state: 's'.repeat(512) }));
    const back = new URL(result.headers.get('location')!).searchParams;
    expect(back.get('code')).toMatch(/^kwc_/);
    expect(back.get('state')).toBe('s'.repeat(512));
  });

  it('an error without state in the request is sent back without state', async () => {
    expectErrorRedirect(await authorize(authorizeQuery({ state: null, code_challenge: null })), 'invalid_request', APP_REDIRECT, null);
  });

  it('the loopback redirect URI gets its errors too', async () => {
    expectErrorRedirect(await authorize(authorizeQuery({ redirect_uri: LOOPBACK_REDIRECT, code_challenge: null })), 'invalid_request', LOOPBACK_REDIRECT);
  });

  it.each(['cross-site', 'same-site'])('Sec-Fetch-Site: %s → 403 access_denied, no redirect', async (site) => {
    expectOAuthError(await authorize(authorizeQuery(), { site }), 403, 'access_denied');
  });

  it('Sec-Fetch-Site: none (the app opened the browser) is allowed', async () => {
    const result = await authorize(authorizeQuery(), { site: 'none' });
    expect(result.status).toBe(303);
    expect(result.headers.get('location')!.startsWith(`${APP_REDIRECT}?code=kwc_`)).toBe(true);
  });

  it('Sec-Fetch-Site: same-origin only for the request this browser started (its resume cookie), which it then ends', async () => {
    // A page of this site taking a request on: the sign-in page after a sign-in (its callbackUrl), or the page
    // back from an identity provider. Without the start's cookie it is another site's link through the sign-in
    // page (/signin?callbackUrl=<this endpoint with its own parameters>), made same-origin by the user signing in.
    expectOAuthError(await authorize(authorizeQuery(), { site: 'same-origin' }), 403, 'access_denied');
    const query = authorizeQuery();
    const start = await authorize(query, { cookie: null, site: 'none' });
    const resume = start.headers.get('set-cookie')!.split(';')[0]!;
    expectOAuthError(await authorize(authorizeQuery(), { site: 'same-origin', cookie: `${aliceCookie}; ${resume}` }), 403, 'access_denied');
    // A fetch of this very request (a router's, before it navigates) spends neither the cookie nor a code.
    const fetched = await authorize(query, { site: 'same-origin', mode: 'cors', cookie: `${aliceCookie}; ${resume}`, consent: null });
    expectOAuthError(fetched, 403, 'access_denied');
    expect(fetched.headers.get('set-cookie')).toBeNull();
    const taken = await authorize(query, { site: 'same-origin', cookie: `${aliceCookie}; ${resume}`, consent: null });
    expect(taken.status).toBe(302);
    expect(taken.headers.get('location')).toBe(`${CONSENT_PAGE}?${query}`);
    expect(taken.headers.get('set-cookie')).toMatch(/^__Host-keyward\.mobile-resume=; Path=\/; Max-Age=0;/);
    // With the user's consent, the code goes to the app.
    const result = await authorize(query, { site: 'same-origin', cookie: `${aliceCookie}; ${resume}` });
    expect(result.status).toBe(303);
    expect(result.headers.get('location')!.startsWith(`${APP_REDIRECT}?code=kwc_`)).toBe(true);
  });

  it('other methods are refused (405, Allow: GET, POST)', async () => {
    const result = await authorize(authorizeQuery(), { method: 'PUT' });
    expectOAuthError(result, 405, 'invalid_request');
    expect(result.headers.get('allow')).toBe('GET, POST');
  });
});

describe('consent (RFC 8252 §8.6): an app any app could impersonate is asked about first', () => {
  it.each([
    ['a private-use scheme', APP_REDIRECT],
    ['loopback http', LOOPBACK_REDIRECT],
  ])(
    '%s: signed in, the GET goes to the consent page with the request, and no code is issued yet',
    async (_name, redirectUri) => {
      const query = authorizeQuery({ redirect_uri: redirectUri, client_id: 'com.example.keyward' });
      const result = await authorize(query, { consent: null });
      expect(result.status).toBe(302);
      const location = result.headers.get('location')!;
      expect(location).toBe(`${CONSENT_PAGE}?${new URLSearchParams(query)}`);
      expect(location).not.toContain('kwc_');
    },
  );

  it('an https app link (verified by the platform) gets its code at once, with no page in between', async () => {
    const result = await authorize(authorizeQuery({ redirect_uri: APP_LINK }), { consent: null });
    expect(result.status).toBe(302);
    const location = new URL(result.headers.get('location')!);
    expect(`${location.origin}${location.pathname}`).toBe(APP_LINK);
    expect(location.searchParams.get('code')).toMatch(/^kwc_/);
    issued.push(location.searchParams.get('code')!);
  });

  it('allow: 303 to the app with a code that the token endpoint exchanges for tokens', async () => {
    const { verifier, challenge } = pkce();
    const result = await authorize(authorizeQuery({}, challenge), { consent: 'allow' });
    expect(result.status).toBe(303);
    const code = new URL(result.headers.get('location')!).searchParams.get('code')!;
    issued.push(code);
    const tokens = await exchange(code, verifier);
    expect(tokens.status).toBe(200);
    issued.push(tokens.json<Tokens>().access_token, tokens.json<Tokens>().refresh_token);
  });

  it('deny: access_denied goes back to the app (with state and iss), and no code is issued', async () => {
    const callback = expectErrorRedirect(await authorize(authorizeQuery(), { consent: 'deny' }), 'access_denied');
    expect(callback.has('code')).toBe(false);
  });

  it.each([
    ['no Origin', { origin: null }],
    ['an Origin of another site', { origin: 'https://evil.example' }],
    ['the Origin of another front end listed in KEYWARD_ALLOWED_ORIGINS', { origin: OTHER_FRONT_END }],
    ['Origin null (a sandboxed page)', { origin: 'null' }],
    ['Sec-Fetch-Site: cross-site', { site: 'cross-site' }],
  ])('a post with %s → 403 access_denied to the browser, never a code or a redirect', async (_name, options) => {
    const fields = new URLSearchParams(authorizeQuery());
    const result = await postConsent(fields, 'allow', options);
    expectOAuthError(result, 403, 'access_denied');
  });

  it('a post signed out (the session ended since the page was shown) starts over at the sign-in, no code', async () => {
    const query = authorizeQuery();
    const asked = consentCookieOf(await authorize(query, { consent: null }));
    const result = await postConsent(new URLSearchParams(query), 'allow', { cookie: asked });
    expect(result.status).toBe(303);
    const back = new URL(result.headers.get('location')!, APP_ORIGIN).searchParams.get('callbackUrl');
    expect(back).toBe(`/api/session/mobile/authorize?${query}`);
  });

  it('a post without a decision, with another one, or not form-encoded → 400 invalid_request, no code', async () => {
    const fields = new URLSearchParams(authorizeQuery());
    for (const decision of ['', 'yes']) expectOAuthError(await postConsent(fields, decision), 400, 'invalid_request');
    expectOAuthError(await postConsent(fields, 'allow', { contentType: 'text/plain' }), 400, 'invalid_request');
  });

  it('the request is read from the posted form, and only the one the endpoint sent the browser to the page for is taken', async () => {
    // Requests the endpoint never sends to the page (an unregistered redirect URI, no PKCE): no page cookie for them.
    const unregistered = new URLSearchParams(authorizeQuery({ redirect_uri: 'com.evil.app:/cb' }));
    expectOAuthError(await postConsent(unregistered, 'allow'), 403, 'access_denied');
    const noPkce = new URLSearchParams(authorizeQuery({ code_challenge: null }));
    expectOAuthError(await postConsent(noPkce, 'allow'), 403, 'access_denied');
    // The page's fields changed (another challenge, another registered redirect URI): not the request asked about.
    const query = authorizeQuery();
    const cookie = await askedFor(query);
    for (const changed of [{ code_challenge: pkce().challenge }, { redirect_uri: LOOPBACK_REDIRECT }, { state: 'other' }]) {
      const fields = new URLSearchParams(query);
      for (const [name, value] of Object.entries(changed)) fields.set(name, value);
      const result = await postConsent(fields, 'allow', { cookie });
      expectOAuthError(result, 403, 'access_denied');
      expect(result.body).not.toContain('kwc_');
    }
  });

  it('what the consent page shows: the app, where it returns to, the user; or why there is nothing to ask', async () => {
    // The app is named by its registered redirect URI, never by the client_id, which whoever made the link chose.
    const claimed = 'Your bank (official app): call 555-0100 if asked to Deny';
    const query = new URLSearchParams(authorizeQuery({ client_id: claimed }));
    query.set('scope', 'ignored');
    const asked = describeConsent(query, runtime, alicePage, await askedFor(String(query)));
    expect(asked).toMatchObject({ state: 'ask', app: 'com.example.keyward', redirectUri: APP_REDIRECT, user: 'alice' });
    expect(asked.state === 'ask' && [asked.app, asked.redirectUri, asked.user].join(' ')).not.toContain('555');
    // Only the authorization request's own parameters are carried back by the form.
    expect(asked.state === 'ask' && asked.fields.map(([name]) => name).sort()).toEqual([
      'client_id',
      'code_challenge',
      'code_challenge_method',
      'redirect_uri',
      'state',
    ]);
    const plain = authorizeQuery();
    expect(describeConsent(new URLSearchParams(plain), runtime, alicePage, await askedFor(plain))).toMatchObject({
      app: 'com.example.keyward',
    });
    const loopback = authorizeQuery({ redirect_uri: LOOPBACK_REDIRECT });
    expect(describeConsent(new URLSearchParams(loopback), runtime, alicePage, await askedFor(loopback))).toMatchObject({
      app: 'A program on this device',
    });
    const signedOut = describeConsent(query, runtime, null, null);
    expect(
      signedOut.state === 'signed-out' && signedOut.authorizeUrl.startsWith('/api/session/mobile/authorize?'),
    ).toBe(true);
    expect(
      describeConsent(new URLSearchParams(authorizeQuery({ redirect_uri: 'com.evil.app:/cb' })), runtime, alicePage, aliceCookie)
        .state,
    ).toBe('invalid');
    expect(describeConsent(query, disabled, alicePage, aliceCookie).state).toBe('off');
  });

  it("another site's link to the consent page (through the sign-in's callbackUrl, or a sibling subdomain's): nothing to allow, and its post is refused", async () => {
    // The reviewer's attack: a request of the attacker's making (its own PKCE challenge, a loopback URI), which the
    // authorize endpoint never sent this browser to the page with. The page's form posts from this origin.
    const attacker = pkce();
    const query = authorizeQuery({ redirect_uri: 'http://127.0.0.1:4444/callback', state: 'attacker' }, attacker.challenge);
    const refused = await postConsent(new URLSearchParams(query), 'allow');
    expect(refused.headers.get('location')).toBeNull();
    expectOAuthError(refused, 403, 'access_denied');
    expect(refused.body).not.toContain('kwc_');
    const page = describeConsent(new URLSearchParams(query), runtime, alicePage, aliceCookie);
    expect(page).toMatchObject({ state: 'invalid', message: expect.stringContaining('an app started in this browser') });
    // Nor with the cookie of a request the app did start in this browser (a consent pending in another tab).
    const pending = await askedFor(authorizeQuery());
    expect(describeConsent(new URLSearchParams(query), runtime, alicePage, pending).state).toBe('invalid');
    expectOAuthError(await postConsent(new URLSearchParams(query), 'allow', { cookie: pending }), 403, 'access_denied');
  });

  it("the consent cookie is this deployment's, for this session: another session's, or a value computed from the request, is none", async () => {
    const query = authorizeQuery({ redirect_uri: LOOPBACK_REDIRECT });
    const asked = consentCookieOf(await authorize(query, { consent: null }));
    // The same cookie in another session of alice's (signed in elsewhere, or again since): nothing to allow.
    const otherSession = { ...alicePage, sessionId: randomUUID() };
    const otherCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, {
      sub: ALICE,
      sid: otherSession.sessionId,
      roles: ['user'],
      claims: { org: 'acme' },
      passwordVersion: passwordVersion('alice', passwordHash),
    });
    expect(describeConsent(new URLSearchParams(query), runtime, otherSession, `${otherCookie}; ${asked}`).state).toBe('invalid');
    expectOAuthError(await postConsent(new URLSearchParams(query), 'allow', { cookie: `${otherCookie}; ${asked}` }), 403, 'access_denied');
    // A value anyone could compute from the request (its parameters' SHA-256), had a page got it into the browser.
    const computed = `${CONSENT_COOKIE}=${createHash('sha256').update(query).digest('base64url')}`;
    expect(describeConsent(new URLSearchParams(query), runtime, alicePage, `${aliceCookie}; ${computed}`).state).toBe('invalid');
    expectOAuthError(await postConsent(new URLSearchParams(query), 'allow', { cookie: `${aliceCookie}; ${computed}` }), 403, 'access_denied');
  });

  it("another site's post (refused) does not end the consent the user has open: only a post that carried the cookie ends it", async () => {
    const query = authorizeQuery();
    // A cross-site form post: the browser sends no Strict cookie with it, so no consent cookie.
    const forged = await postConsent(new URLSearchParams(query), 'deny', { cookie: null, origin: 'https://evil.example', site: 'cross-site' });
    expectOAuthError(forged, 403, 'access_denied');
    expect(forged.headers.getSetCookie().filter((line) => line.startsWith(`${CONSENT_COOKIE}=`))).toEqual([]);
  });

  it('after the endpoint sends the browser to the page, its cookie (__Host-, HttpOnly, Secure, Strict) lets the page ask and one post answer', async () => {
    const { verifier, challenge } = pkce();
    const query = authorizeQuery({ redirect_uri: LOOPBACK_REDIRECT }, challenge);
    const sent = await authorize(query, { consent: null });
    expect(sent.status).toBe(302);
    const line = sent.headers.getSetCookie().find((cookie) => cookie.startsWith(`${CONSENT_COOKIE}=`))!;
    expect(line).toMatch(/; Path=\/; Max-Age=\d+; HttpOnly; Secure; SameSite=Strict$/);
    const cookie = `${aliceCookie}; ${consentCookieOf(sent)}`;
    expect(describeConsent(new URLSearchParams(query), runtime, alicePage, cookie).state).toBe('ask');
    const allowed = await postConsent(new URLSearchParams(query), 'allow', { cookie });
    expect(allowed.status).toBe(303);
    // The post ends the cookie: the browser sends none with a second post.
    expect(allowed.headers.getSetCookie()).toContainEqual(expect.stringMatching(new RegExp(`^${CONSENT_COOKIE.replace('.', '\\.')}=; Path=/; Max-Age=0;`)));
    const code = new URL(allowed.headers.get('location')!).searchParams.get('code')!;
    issued.push(code);
    expect((await exchange(code, verifier, LOOPBACK_REDIRECT)).status).toBe(200);
    // A refused post ends it too (one answer per page the endpoint sent the browser to).
    const refused = await postConsent(new URLSearchParams(query), 'maybe', { cookie: await askedFor(query) });
    expectOAuthError(refused, 400, 'invalid_request');
    expect(refused.headers.getSetCookie()).toContainEqual(expect.stringMatching(/^__Host-keyward\.mobile-consent=; /));
  });

  it('the same-origin GET the sign-in page makes (the resume cookie) sends the browser to the page with its cookie too', async () => {
    const query = authorizeQuery();
    const start = await authorize(query, { cookie: null, site: 'none' });
    const resume = start.headers.get('set-cookie')!.split(';')[0]!;
    const taken = await authorize(query, { site: 'same-origin', cookie: `${aliceCookie}; ${resume}`, consent: null });
    expect(taken.headers.getSetCookie().map((line) => line.split('=')[0])).toEqual([
      '__Host-keyward.mobile-resume',
      CONSENT_COOKIE,
    ]);
    expect(describeConsent(new URLSearchParams(query), runtime, alicePage, `${aliceCookie}; ${consentCookieOf(taken)}`).state).toBe('ask');
  });
});

describe('POST /api/session/token: authorization_code', () => {
  it('a wrong code_verifier → 400 invalid_grant, and the code is spent (the right verifier fails afterwards)', async () => {
    const { code, verifier } = await newCode();
    expectOAuthError(await exchange(code, pkce().verifier), 400, 'invalid_grant');
    expectOAuthError(await exchange(code, verifier), 400, 'invalid_grant');
  });

  it('a wrong redirect_uri (even another registered one) → 400 invalid_grant', async () => {
    const { code, verifier } = await newCode();
    expectOAuthError(await exchange(code, verifier, LOOPBACK_REDIRECT), 400, 'invalid_grant');
  });

  it('the challenge itself as verifier (a plain-method downgrade) → invalid_grant', async () => {
    const { verifier, challenge } = pkce();
    const result = await authorize(authorizeQuery({}, challenge));
    const code = new URL(result.headers.get('location')!).searchParams.get('code')!;
    expect(verifier).not.toBe(challenge);
    expectOAuthError(await exchange(code, challenge), 400, 'invalid_grant');
  });

  it('an unknown code → invalid_grant', async () => {
    expectOAuthError(await exchange(`kwc_${randomBytes(32).toString('base64url')}`, pkce().verifier), 400, 'invalid_grant');
  });

  it('success returns access + refresh tokens (no-store); the code cannot be used twice', async () => {
    const { code, verifier } = await newCode();
    const result = await exchange(code, verifier);
    expect(result.status).toBe(200);
    // RFC 6749 §5.1.
    expect(result.headers.get('cache-control')).toBe('no-store');
    expect(result.headers.get('pragma')).toBe('no-cache');
    const body = result.json<Tokens>();
    expect(Object.keys(body).sort()).toEqual(['access_token', 'expires_in', 'refresh_token', 'token_type']);
    expect(body.token_type).toBe('Bearer');
    expect(body.expires_in).toBe(ACCESS_TTL);
    expect(body.refresh_token).toMatch(/^kwr_/);
    expect(body.access_token).toMatch(/^Fe26\.2\*/);
    expect(findLeak(body.access_token, [sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET])).toBeNull();
    expect((await proxy(body.access_token)).result.status).toBe(200);
    expectOAuthError(await exchange(code, verifier), 400, 'invalid_grant');
    // A code used twice was copied: the tokens it gave are revoked (RFC 9700 §4.2.4), on their next request.
    expectError((await proxy(body.access_token)).result, 401, 'unauthenticated');
    expectOAuthError(await refresh(body.refresh_token), 400, 'invalid_grant');
  });

  it('two concurrent exchanges of one code: exactly one gets tokens, and they are revoked (a code used twice was copied)', async () => {
    const { code, verifier } = await newCode();
    const results = await Promise.all([exchange(code, verifier), exchange(code, verifier), exchange(code, verifier)]);
    expect(results.map((r) => r.status).sort()).toEqual([200, 400, 400]);
    const won = results.find((r) => r.status === 200)!.json<Tokens>();
    // As a replay after the exchange revokes (above): the other uses came at the same moment, not after.
    expectError((await proxy(won.access_token)).result, 401, 'unauthenticated');
    expectOAuthError(await refresh(won.refresh_token), 400, 'invalid_grant');
  });

  it('JSON bodies are accepted too', async () => {
    const { code, verifier } = await newCode();
    const result = await token(
      { grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT },
      { json: true },
    );
    expect(result.status).toBe(200);
    issued.push(result.json<Tokens>().access_token, result.json<Tokens>().refresh_token);
  });

  it('parameters in the query string are refused (400) and the code is not spent', async () => {
    const { code, verifier } = await newCode();
    const query = `?${new URLSearchParams({ grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT })}`;
    const result = await token(
      { grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT },
      { query },
    );
    expectOAuthError(result, 400, 'invalid_request');
    expect((await exchange(code, verifier)).status).toBe(200);
  });

  it.each([
    ['no grant_type', {}, 'invalid_request'],
    ['an empty grant_type (counts as absent)', { grant_type: '' }, 'invalid_request'],
    ['an unknown grant_type', { grant_type: 'password', username: 'alice', password: 'x' }, 'unsupported_grant_type'],
    ['client_credentials', { grant_type: 'client_credentials' }, 'unsupported_grant_type'],
    ['authorization_code without a verifier', { grant_type: 'authorization_code', code: 'kwc_x', redirect_uri: APP_REDIRECT }, 'invalid_request'],
    ['authorization_code without a code', { grant_type: 'authorization_code', code_verifier: pkce().verifier, redirect_uri: APP_REDIRECT }, 'invalid_request'],
    ['refresh_token without a token', { grant_type: 'refresh_token' }, 'invalid_request'],
  ])('%s → 400 %s', async (_name, params, error) => {
    expectOAuthError(await token(params as Record<string, string>), 400, error);
  });

  it('a password or code is never echoed in a description', async () => {
    const secret = randomSecret('pw');
    const description = expectOAuthError(await token({ grant_type: 'password', username: 'alice', password: secret }), 400, 'unsupported_grant_type');
    expect(description).not.toContain(secret);
    const code = `kwc_${randomBytes(32).toString('base64url')}`;
    const unknown = await token({ grant_type: 'authorization_code', code, code_verifier: pkce().verifier, redirect_uri: APP_REDIRECT });
    expectOAuthError(unknown, 400, 'invalid_grant');
    expect(unknown.body).not.toContain(code);
  });

  it('a parameter sent twice → invalid_request, and the code is not spent', async () => {
    const { code, verifier } = await newCode();
    const body = `${new URLSearchParams({ grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT })}&code=${code}`;
    const request = new Request(`${APP_ORIGIN}/api/session/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body,
    });
    expectOAuthError(await read(await handleMobileToken(request, runtime)), 400, 'invalid_request');
    expect((await exchange(code, verifier)).status).toBe(200);
  });

  it.each([
    ['text/plain', 'grant_type=refresh_token&refresh_token=kwr_x'],
    ['no content type', null],
    ['JSON that is not an object', '[1]'],
    ['a JSON value that is not a string', JSON.stringify({ grant_type: 'refresh_token', refresh_token: 42 })],
  ])('a body that is not a form or a JSON object of strings (%s) → invalid_request', async (name, body) => {
    const type = name === 'text/plain' ? 'text/plain' : name === 'no content type' ? null : 'application/json';
    const headers = new Headers();
    if (type) headers.set('content-type', type);
    const request = new Request(`${APP_ORIGIN}/api/session/token`, { method: 'POST', headers, body: body ?? '' });
    expectOAuthError(await read(await handleMobileToken(request, runtime)), 400, 'invalid_request');
  });

  it.each([
    ['form', 'application/x-www-form-urlencoded', 'grant_type=refresh_token&refre'],
    ['JSON', 'application/json', '{"grant_type":"refresh_'],
  ])('a %s body that breaks off mid-upload → 400 invalid_request, with no error logged (the client hung up: no bug)', async (_name, type, first) => {
    const logged = logLines.length;
    const request = new Request(`${APP_ORIGIN}/api/session/token`, {
      method: 'POST',
      headers: { 'content-type': type },
      body: brokenBody(first),
      duplex: 'half',
    } as RequestInit);
    expectOAuthError(await read(await handleMobileToken(request, runtime)), 400, 'invalid_request');
    expect(logLines.slice(logged).some((line) => JSON.parse(line).level >= 50)).toBe(false);
  });

  it('GET → 405 invalid_request with Allow: POST', async () => {
    const result = await read(await handleMobileToken(new Request(`${APP_ORIGIN}/api/session/token`), runtime));
    expectOAuthError(result, 405, 'invalid_request');
    expect(result.headers.get('allow')).toBe('POST');
  });
});

describe('POST /api/session/token: clients are public (token_endpoint_auth_methods_supported: none)', () => {
  const clientSecret = randomSecret('client');
  it.each([
    ['HTTP Basic', `Basic ${Buffer.from(`app:${clientSecret}`).toString('base64')}`, 'Basic realm="keyward"'],
    ['another scheme', `Bearer ${clientSecret}`, 'Bearer realm="keyward"'],
  ])('client authentication with %s → 401 invalid_client with a WWW-Authenticate challenge; the code is not spent', async (_name, authorization, challenge) => {
    const { code, verifier } = await newCode();
    const request = new Request(`${APP_ORIGIN}/api/session/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization },
      body: new URLSearchParams({ grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT }).toString(),
    });
    const result = await read(await handleMobileToken(request, runtime));
    expectOAuthError(result, 401, 'invalid_client');
    expect(result.headers.get('www-authenticate')).toBe(challenge);
    expect(findLeak(`${result.body}${JSON.stringify([...result.headers])}`, [clientSecret])).toBeNull();
    expect((await exchange(code, verifier)).status).toBe(200);
  });

  it.each(['client_secret', 'client_assertion'])('%s in the body → 401 invalid_client', async (name) => {
    const { code, verifier } = await newCode();
    const secret = randomSecret('client');
    const result = await token({ grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT, [name]: secret });
    expectOAuthError(result, 401, 'invalid_client');
    expect(result.body).not.toContain(secret);
  });
});

describe('client_id: bound to the code and its tokens', () => {
  async function codeFor(clientId: string) {
    const { verifier, challenge } = pkce();
    const result = await authorize(`${authorizeQuery({}, challenge)}&client_id=${encodeURIComponent(clientId)}`);
    const code = new URL(result.headers.get('location')!).searchParams.get('code')!;
    issued.push(code);
    return { code, verifier };
  }
  const exchangeAs = (code: string, verifier: string, clientId?: string) =>
    token({ grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT, ...(clientId ? { client_id: clientId } : {}) });

  it('the code exchange must name the same client_id (RFC 6749 §4.1.3), else invalid_grant', async () => {
    const other = await codeFor('com.example.keyward');
    expectOAuthError(await exchangeAs(other.code, other.verifier, 'com.example.other'), 400, 'invalid_grant');
    const none = await codeFor('com.example.keyward');
    expectOAuthError(await exchangeAs(none.code, none.verifier), 400, 'invalid_grant');
    // A code issued without client_id cannot be taken by a request naming one either.
    const { code, verifier } = await newCode();
    expectOAuthError(await exchangeAs(code, verifier, 'com.example.keyward'), 400, 'invalid_grant');
  });

  it('the same client_id works; a refresh naming another is refused without spending the token', async () => {
    const { code, verifier } = await codeFor('com.example.keyward');
    const result = await exchangeAs(code, verifier, 'com.example.keyward');
    expect(result.status).toBe(200);
    const tokens = result.json<Tokens>();
    issued.push(tokens.access_token, tokens.refresh_token);
    expectOAuthError(await token({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: 'com.example.other' }), 400, 'invalid_grant');
    // Without client_id (RFC 6749 §6 does not require it of public clients) or with the same one, it works.
    const renewed = await token({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token });
    expect(renewed.status).toBe(200);
    const next = renewed.json<Tokens>();
    issued.push(next.access_token, next.refresh_token);
    const again = await token({ grant_type: 'refresh_token', refresh_token: next.refresh_token, client_id: 'com.example.keyward' });
    expect(again.status).toBe(200);
    issued.push(again.json<Tokens>().access_token, again.json<Tokens>().refresh_token);
  });
});

describe('the access token on the proxy', () => {
  it('works as Authorization: Bearer without the CSRF header; the upstream gets the service key, not the token', async () => {
    const tokens = await signInApp();
    const { result, reached } = await proxy(tokens.access_token);
    expect(result.status).toBe(200);
    expect(reached).toBe(true);
    const seen = upstream.requests.at(-1)!;
    expect(seen.headers['x-api-key']).toBe(serviceKey);
    expect(seen.headers.authorization).toBeUndefined();
    expect(JSON.stringify(seen.headers)).not.toContain(tokens.access_token);
    expect(findLeak(result.body, [serviceKey, tokens.access_token])).toBeNull();
  });

  it("carries the signed-in user's identity, roles and claims", async () => {
    const tokens = await signInApp();
    const session = await runtime.verifySession(
      new Request(`${APP_ORIGIN}/api/session`, { headers: { authorization: `Bearer ${tokens.access_token}` } }),
    );
    expect(session).toMatchObject({ userId: ALICE, roles: ['user'], via: 'bearer', claims: { org: 'acme' } });
  });


  it('a long access token (a user in 150 groups) works on the proxy and can be revoked', async () => {
    const cookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'oidc:many-groups', roles: groups(150) });
    const tokens = await signInApp(cookie);
    expect(tokens.access_token.length).toBeGreaterThan(4096);
    const { result, reached } = await proxy(tokens.access_token);
    expect(result.status, result.body).toBe(200);
    expect(reached).toBe(true);
    const revoked = await revoke({ token: tokens.access_token, token_type_hint: 'access_token' });
    expect(revoked.status, revoked.body).toBe(200);
    expectError((await proxy(tokens.access_token)).result, 401, 'unauthenticated');
    expectOAuthError(await refresh(tokens.refresh_token), 400, 'invalid_grant');
  });

  it('a token too long for any header is refused at the exchange (invalid_grant, saying why), never issued', async () => {
    const cookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'oidc:too-many-groups', roles: groups(600) });
    const { code, verifier } = await newCode(APP_REDIRECT, cookie);
    const description = expectOAuthError(await exchange(code, verifier), 400, 'invalid_grant');
    expect(description).toMatch(/roles and claims do not fit/);
  });

  it('?access_token= in the proxy query → 400, nothing sent upstream (with or without the header)', async () => {
    const tokens = await signInApp();
    const query = `?access_token=${encodeURIComponent(tokens.access_token)}`;
    const withoutHeader = await proxy(null, { query });
    expectError(withoutHeader.result, 400, 'bad_request');
    expect(withoutHeader.reached).toBe(false);
    const withHeader = await proxy(tokens.access_token, { query });
    expectError(withHeader.result, 400, 'bad_request');
    expect(withHeader.reached).toBe(false);
  });

  it.each([
    [
      'a tampered token',
      async (t: Tokens) => `${t.access_token.slice(0, -3)}${t.access_token.slice(-3) === 'AAA' ? 'BBB' : 'AAA'}`,
    ],
    ['the refresh token', async (t: Tokens) => t.refresh_token],
    [
      'a token sealed with another secret',
      async () =>
        sealData(
          { typ: 'keyward.session', sub: ALICE, sid: 'x', roles: ['user'], exp: Math.floor(clock / 1000) + 60 },
          { password: { 1: randomSecret('other') } },
        ),
    ],
    [
      'a sealed value that is not a session token',
      async () =>
        sealData(
          { sub: ALICE, sid: 'x', roles: ['user'], exp: Math.floor(clock / 1000) + 60 },
          { password: { 1: sessionSecrets.KEYWARD_SESSION_SECRET } },
        ),
    ],
  ])('%s → 401', async (_name, make) => {
    const tokens = await signInApp();
    const { result, reached } = await proxy(await make(tokens));
    expectError(result, 401, 'unauthenticated');
    expect(reached).toBe(false);
  });

  it('an expired access token (injected clock past expires_in) → 401; a refresh gives a working one', async () => {
    const tokens = await signInApp();
    expect((await proxy(tokens.access_token)).result.status).toBe(200);
    clock += (ACCESS_TTL + 1) * 1000;
    const expired = await proxy(tokens.access_token);
    expectError(expired.result, 401, 'unauthenticated');
    expect(expired.reached).toBe(false);
    const renewed = await refresh(tokens.refresh_token);
    expect(renewed.status).toBe(200);
    expect((await proxy(renewed.json<Tokens>().access_token)).result.status).toBe(200);
  });
});

describe('POST /api/session/token: refresh_token', () => {
  it('rotates: new access and refresh tokens, both usable', async () => {
    const first = await signInApp();
    const result = await refresh(first.refresh_token);
    expect(result.status).toBe(200);
    const second = result.json<Tokens>();
    expect(second.refresh_token).not.toBe(first.refresh_token);
    expect(second.access_token).not.toBe(first.access_token);
    expect((await proxy(second.access_token)).result.status).toBe(200);
    const third = await refresh(second.refresh_token);
    expect(third.status).toBe(200);
  });

  it('an app sign-in ends KEYWARD_MOBILE_REFRESH_TTL (30 days) after the code exchange, however often it is refreshed', async () => {
    const DAY = 86_400_000;
    const started = clock;
    try {
      let tokens = await signInApp();
      for (const day of [10, 20, 29]) {
        clock = started + day * DAY;
        const result = await refresh(tokens.refresh_token);
        expect(result.status, `day ${day}`).toBe(200);
        tokens = result.json<Tokens>();
      }
      // Refreshed 10 s before the end: the access token lives those 10 s, not its full ACCESS_TTL past the end.
      clock = started + 30 * DAY - 10_000;
      const last = await refresh(tokens.refresh_token);
      expect(last.status).toBe(200);
      expect(last.json<Tokens>().expires_in).toBe(10);
      expect((await proxy(last.json<Tokens>().access_token)).result.status).toBe(200);
      // The token from day 29 would have lived to day 59; the family ends at day 30, and the app signs in again.
      clock = started + 30 * DAY + 1_000;
      expect(expectOAuthError(await refresh(tokens.refresh_token), 400, 'invalid_grant')).toContain('sign in again');
      expectError((await proxy(last.json<Tokens>().access_token)).result, 401, 'unauthenticated');
    } finally {
      clock = started;
    }
  });

  it('a refresh that fails once the token is marked used (no new tokens issued) leaves it unspent: a retry past the grace is no reuse', async () => {
    const tokens = await signInApp();
    // An instance whose users file gives alice more roles than an access token holds: the refresh is refused
    // while issuing, after the presented token was marked used.
    const crowded = instanceWithUsers(usersFile([{ username: 'alice', roles: groups(600), claims: { org: 'acme' } }]));
    expect(expectOAuthError(await refresh(tokens.refresh_token, crowded), 400, 'invalid_grant')).toMatch(/roles and claims do not fit/);
    const logLinesBefore = logLines.length;
    await later(PAST_GRACE_MS, async () => {
      const retried = await refresh(tokens.refresh_token);
      expect(retried.status, retried.body).toBe(200);
      expect((await proxy(retried.json<Tokens>().access_token)).result.status).toBe(200);
    });
    expect(logLines.slice(logLinesBefore).some((line) => line.includes('refresh token reused'))).toBe(false);
  });

  it('…but once a refresh racing it was given the successor (the grace), the failed one cannot make the token unspent again', async () => {
    const tokens = await signInApp();
    // An instance on the same store whose issue fails late: its write of the new refresh token waits, then fails.
    let failing = true;
    const flaky = new Proxy(store, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (prop === 'set') {
          return async (key: string, ...rest: [string, number?]) => {
            // The new refresh token's record: `mrt:` and its hash (the refresh counter's key has a colon more).
            if (failing && /^mrt:[\w-]{43}$/.test(key)) {
              failing = false;
              await new Promise((resolve) => setTimeout(resolve, 300));
              throw new StoreUnavailableError('the store did not answer');
            }
            return target.set(key, ...rest);
          };
        }
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const slow = createRuntime({ env: { ...env, KEYWARD_MOBILE_REDIRECT_URIS: REDIRECTS }, upstreams, store: flaky, logger, now: () => clock });
    const first = refresh(tokens.refresh_token, slow);
    await new Promise((resolve) => setTimeout(resolve, 100));
    // The app's second request (its first answer is slow) gets the successor, within the grace.
    const second = await refresh(tokens.refresh_token);
    expect(second.status, second.body).toBe(200);
    expect((await first).status).toBe(503);
    // A copy of the old token, past the grace: still a reuse, the family ended.
    await later(PAST_GRACE_MS, async () => expectOAuthError(await refresh(tokens.refresh_token), 400, 'invalid_grant'));
    expectError((await proxy(second.json<Tokens>().access_token)).result, 401, 'unauthenticated');
  });

  it('two refreshes of one token at once use two of the hourly refreshes, not three (the one that lost the race counted once)', async () => {
    const tokens = await signInApp();
    const counted = async () => Number((await store.get(`mrt:refreshes:${ALICE}`)) ?? 0);
    const before = await counted();
    const answers = await Promise.all([refresh(tokens.refresh_token), refresh(tokens.refresh_token)]);
    expect(answers.map((answer) => answer.status)).toEqual([200, 200]);
    expect((await counted()) - before).toBe(2);
  });

  it('REUSE of an old refresh token → invalid_grant, and the whole family is revoked at once', async () => {
    const first = await signInApp();
    const other = await signInApp(); // another sign-in of the same user: its own family
    const rotated = await refresh(first.refresh_token);
    expect(rotated.status).toBe(200);
    const second = rotated.json<Tokens>();
    expect((await proxy(second.access_token)).result.status).toBe(200);

    const logLinesBefore = logLines.length;
    await later(PAST_GRACE_MS, async () => expectOAuthError(await refresh(first.refresh_token), 400, 'invalid_grant'));
    // The family's live access token is refused on its very next request …
    const live = await proxy(second.access_token);
    expectError(live.result, 401, 'unauthenticated');
    expect(live.reached).toBe(false);
    // … and so is the older one, and the newest refresh token.
    expectError((await proxy(first.access_token)).result, 401, 'unauthenticated');
    expectOAuthError(await refresh(second.refresh_token), 400, 'invalid_grant');
    // The reuse is logged as a warning, without any token.
    const warning = logLines.slice(logLinesBefore).find((line) => line.includes('refresh token reused'));
    expect(warning).toBeDefined();
    expect(JSON.parse(warning!)).toMatchObject({ level: 40, userId: ALICE });

    // Another sign-in of the same user is a different family and keeps working.
    expect((await proxy(other.access_token)).result.status).toBe(200);
    expect((await refresh(other.refresh_token)).status).toBe(200);
  });

  it('a refresh token presented again within the grace (the answer was lost) gets the same successor; once that is used, it is a copy', async () => {
    const first = await signInApp();
    const rotated = await refresh(first.refresh_token);
    expect(rotated.status).toBe(200);
    const second = rotated.json<Tokens>();
    // The app never got that answer and sends the same request again, 29 s later.
    await later(29_000, async () => {
      const again = await refresh(first.refresh_token);
      expect(again.status, again.body).toBe(200);
      const resent = again.json<Tokens>();
      expect(resent.refresh_token).toBe(second.refresh_token);
      expect(resent.access_token).not.toBe(second.access_token);
      for (const access of [second.access_token, resent.access_token]) expect((await proxy(access)).result.status).toBe(200);
      // The family goes on from the one successor …
      const third = await refresh(second.refresh_token);
      expect(third.status).toBe(200);
      // … and once that successor is spent, the first token (still within its grace) is a copy: the family ends.
      expectOAuthError(await refresh(first.refresh_token), 400, 'invalid_grant');
      expectError((await proxy(third.json<Tokens>().access_token)).result, 401, 'unauthenticated');
      expectOAuthError(await refresh(third.json<Tokens>().refresh_token), 400, 'invalid_grant');
    });
  });

  it('within the grace, on an instance with a new session secret (its successor would differ): a copy, the family ends', async () => {
    const rotatedSecret = createRuntime({
      env: { ...env, KEYWARD_MOBILE_REDIRECT_URIS: REDIRECTS, KEYWARD_SESSION_SECRET: randomSecret('session') },
      upstreams,
      store,
      logger,
      now: () => clock,
    });
    const first = await signInApp();
    const second = (await refresh(first.refresh_token)).json<Tokens>();
    expectOAuthError(await refresh(first.refresh_token, rotatedSecret), 400, 'invalid_grant');
    expectOAuthError(await refresh(second.refresh_token), 400, 'invalid_grant');
  });

  it('two concurrent refreshes with one token: both get the same successor, and the family goes on', async () => {
    const tokens = await signInApp();
    const results = await Promise.all([refresh(tokens.refresh_token), refresh(tokens.refresh_token)]);
    expect(results.map((r) => r.status)).toEqual([200, 200]);
    const [one, two] = results.map((r) => r.json<Tokens>());
    expect(one!.refresh_token).toBe(two!.refresh_token);
    for (const access of [one!.access_token, two!.access_token]) expect((await proxy(access)).result.status).toBe(200);
    expect((await refresh(one!.refresh_token)).status).toBe(200);
  });

  it('KEYWARD_MOBILE_REFRESH_GRACE=0: of two concurrent refreshes with one token, one wins and the other revokes the family', async () => {
    const strict = createRuntime({
      env: { ...env, KEYWARD_MOBILE_REDIRECT_URIS: REDIRECTS, KEYWARD_MOBILE_REFRESH_GRACE: '0' },
      upstreams,
      store,
      logger,
      now: () => clock,
    });
    const tokens = await signInApp();
    const results = await Promise.all([refresh(tokens.refresh_token, strict), refresh(tokens.refresh_token, strict)]);
    expect(results.map((r) => r.status).sort()).toEqual([200, 400]);
    const winner = results.find((r) => r.status === 200)!.json<Tokens>();
    expectError((await proxy(winner.access_token)).result, 401, 'unauthenticated');
    expectOAuthError(await refresh(winner.refresh_token), 400, 'invalid_grant');
  });

  it.each([
    ['an unknown refresh token', () => `kwr_${randomBytes(32).toString('base64url')}`],
    ['an access token used as refresh token', (t: Tokens) => t.access_token],
  ])('%s → invalid_grant', async (_name, pick) => {
    const tokens = await signInApp();
    expectOAuthError(await refresh(pick(tokens)), 400, 'invalid_grant');
  });

  it('POST /api/session/logout with the access token (no CSRF needed) ends the family: token 401, refresh invalid_grant', async () => {
    const tokens = await signInApp();
    const request = new Request(`${APP_ORIGIN}/api/session/logout`, {
      method: 'POST',
      headers: { authorization: `Bearer ${tokens.access_token}` },
    });
    const result = await read(await handleLogout(request, runtime));
    expect(result.status).toBe(200);
    expectError((await proxy(tokens.access_token)).result, 401, 'unauthenticated');
    expectOAuthError(await refresh(tokens.refresh_token), 400, 'invalid_grant');
  });
});

describe('POST /api/session/token/revoke: token revocation (RFC 7009), the app signing out', () => {
  /** RFC 7009 §2.2: 200 with nothing in the body, never cached. */
  function expectRevoked(result: Result) {
    expect(result.status, result.body).toBe(200);
    expect(result.body).toBe('');
    expect(result.headers.get('cache-control')).toBe('no-store');
  }

  it.each([
    ['its refresh token', (t: Tokens) => ({ token: t.refresh_token, token_type_hint: 'refresh_token' })],
    ['its access token', (t: Tokens) => ({ token: t.access_token, token_type_hint: 'access_token' })],
    // The hint is only a hint (§2.1): a wrong one, or none, finds the token all the same.
    [
      'its refresh token, hinted as an access token',
      (t: Tokens) => ({ token: t.refresh_token, token_type_hint: 'access_token' }),
    ],
    ['its access token, with no hint', (t: Tokens) => ({ token: t.access_token })],
  ])(
    'revoking %s ends the sign-in: the access token is refused, the refresh token invalid_grant',
    async (_name, pick) => {
      const tokens = await signInApp();
      const other = await signInApp(); // another sign-in of the same user: its own family
      expectRevoked(await revoke(pick(tokens)));
      const live = await proxy(tokens.access_token);
      expectError(live.result, 401, 'unauthenticated');
      expect(live.reached).toBe(false);
      expectOAuthError(await refresh(tokens.refresh_token), 400, 'invalid_grant');
      expect((await proxy(other.access_token)).result.status).toBe(200);
      // Revoking it again is still a success (§2.2): nothing left to do.
      expectRevoked(await revoke(pick(tokens)));
    },
  );

  it("a token Keyward does not know is a success that ends nothing (§2.2); so is a browser session's cookie value", async () => {
    const tokens = await signInApp();
    const sealedElsewhere = await sealData(
      { typ: 'keyward.session', sid: 'kwf_someone' },
      { password: { 1: randomSecret('other-secret-of-32-characters-min') } },
    );
    for (const token of [
      `kwr_${randomBytes(32).toString('base64url')}`,
      'not a token at all',
      sealedElsewhere,
      aliceCookie.split('=').slice(1).join('='),
    ]) {
      expectRevoked(await revoke({ token }));
    }
    expect((await proxy(tokens.access_token)).result.status).toBe(200);
    expect((await refresh(tokens.refresh_token)).status).toBe(200);
  });

  it('an access token that has expired ends nothing, also within the minute its seal is still read', async () => {
    const tokens = await signInApp();
    // Its seal opens for 60 s past its `exp` (iron-session's clock skew); `exp` is what counts.
    await later(ACCESS_TTL * 1000 + 30_000, async () => {
      expectError((await proxy(tokens.access_token)).result, 401, 'unauthenticated');
      expectRevoked(await revoke({ token: tokens.access_token, token_type_hint: 'access_token' }));
      expect((await refresh(tokens.refresh_token)).status).toBe(200);
    });
  });

  it('an access token named with another client_id is refused (unauthorized_client) and keeps working; its own ends it', async () => {
    const { verifier, challenge } = pkce();
    const result = await authorize(authorizeQuery({ client_id: 'com.example.keyward' }, challenge));
    const code = new URL(result.headers.get('location')!).searchParams.get('code')!;
    issued.push(code);
    const exchanged = await token({
      grant_type: 'authorization_code',
      code,
      code_verifier: verifier,
      redirect_uri: APP_REDIRECT,
      client_id: 'com.example.keyward',
    });
    const tokens = exchanged.json<Tokens>();
    issued.push(tokens.access_token, tokens.refresh_token);
    for (const client_id of ['com.example.other', 'com.example.keyward2']) {
      expectOAuthError(await revoke({ token: tokens.access_token, client_id }), 400, 'unauthorized_client');
    }
    expect((await proxy(tokens.access_token)).result.status).toBe(200);
    expect((await revoke({ token: tokens.access_token, client_id: 'com.example.keyward' })).status).toBe(200);
    expect((await proxy(tokens.access_token)).result.status).toBe(401);
  });

  it('a refresh token named with another client_id is refused (unauthorized_client) and keeps working', async () => {
    const tokens = await signInApp(); // issued without a client_id
    expectOAuthError(
      await revoke({ token: tokens.refresh_token, client_id: 'com.example.other' }),
      400,
      'unauthorized_client',
    );
    expect((await proxy(tokens.access_token)).result.status).toBe(200);
    expect((await refresh(tokens.refresh_token)).status).toBe(200);
  });

  it('a body that never ends is refused at 16 KiB as it streams, JSON or form, on both endpoints (nothing buffered past it)', async () => {
    for (const [path, handle, type] of [
      ['/api/session/token', handleMobileToken, 'application/json'],
      ['/api/session/token', handleMobileToken, 'application/x-www-form-urlencoded'],
      ['/api/session/token/revoke', handleMobileRevoke, 'application/json'],
      ['/api/session/token/revoke', handleMobileRevoke, 'application/x-www-form-urlencoded'],
    ] as const) {
      let pulled = 0;
      // Chunked, no Content-Length: 1 KiB at a time, up to 64 MiB if nobody stops reading.
      const body = new ReadableStream<Uint8Array>({
        pull(controller) {
          pulled += 1;
          if (pulled > 65_536) controller.close();
          else controller.enqueue(new TextEncoder().encode(`${pulled === 1 ? '{"token":"' : ''}${'a'.repeat(1024)}`));
        },
      });
      const request = new Request(`${APP_ORIGIN}${path}`, {
        method: 'POST',
        headers: { 'content-type': type },
        body,
        duplex: 'half',
      } as RequestInit);
      const result = await read(await handle(request, runtime));
      expect(result.status, `${path} ${type}`).toBeGreaterThanOrEqual(400);
      expect(result.status).toBeLessThan(500);
      expect(pulled, `${path} ${type}`).toBeLessThan(64);
    }
  });

  it('the request: POST only, token required, parameters in the body, no client authentication', async () => {
    const tokens = await signInApp();
    const get = await revoke({}, { method: 'GET' });
    expectOAuthError(get, 405, 'invalid_request');
    expect(get.headers.get('allow')).toBe('POST');
    expectOAuthError(await revoke({}), 400, 'invalid_request');
    expectOAuthError(
      await revoke({ token: tokens.refresh_token }, { query: `?token=${tokens.refresh_token}` }),
      400,
      'invalid_request',
    );
    expectOAuthError(await revoke({ token: tokens.refresh_token, client_secret: 's3cret' }), 401, 'invalid_client');
    const basic = await revoke(
      { token: tokens.refresh_token },
      { authorization: `Basic ${Buffer.from('app:secret').toString('base64')}` },
    );
    expectOAuthError(basic, 401, 'invalid_client');
    // None of these revoked anything.
    expect((await refresh(tokens.refresh_token)).status).toBe(200);
  });
});

const doraVersion = () => passwordVersion('dora', passwordHash);

describe('sign out everywhere', () => {
  it("revoke-all from the browser ends the user's app tokens and refresh tokens too; a later sign-in works", async () => {
    const DORA = 'local:dora';
    const doraCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: DORA, authTimeMs: clock - 60_000, passwordVersion: doraVersion() });
    const tokens = await signInApp(doraCookie);
    expect((await proxy(tokens.access_token)).result.status).toBe(200);
    const pending = await newCode(APP_REDIRECT, doraCookie);
    const request = new Request(`${APP_ORIGIN}/api/session/revoke-all`, {
      method: 'POST',
      headers: { cookie: doraCookie, 'x-keyward-csrf': '1', origin: APP_ORIGIN },
    });
    expect((await read(await handleRevokeAll(request, runtime))).status).toBe(200);
    expectError((await proxy(tokens.access_token)).result, 401, 'unauthenticated');
    expectOAuthError(await refresh(tokens.refresh_token), 400, 'invalid_grant');
    // The revoked browser session can no longer authorize an app: it is sent to sign in again.
    const authorizeAgain = await authorize(authorizeQuery(), { cookie: doraCookie });
    expect(authorizeAgain.headers.get('location')).toMatch(/^\/api\/auth\/signin\?/);
    // A code issued before the revocation is refused outright (issue 11): no tokens at all.
    const late = await exchange(pending.code, pending.verifier);
    expectOAuthError(late, 400, 'invalid_grant');
    expect(late.body).not.toContain('access_token');

    clock += 2_000;
    const later = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: DORA, authTimeMs: clock, passwordVersion: doraVersion() });
    const again = await signInApp(later);
    expect((await proxy(again.access_token)).result.status).toBe(200);
    expect((await refresh(again.refresh_token)).status).toBe(200);
  });
});

describe('a code from a browser session that signed out', () => {
  it('is refused (invalid_grant): logging out the session that authorized the app voids its pending code', async () => {
    const cookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, {
      sub: ALICE,
      roles: ['user'],
      claims: { org: 'acme' },
      passwordVersion: passwordVersion('alice', passwordHash),
    });
    const pending = await newCode(APP_REDIRECT, cookie);
    const logout = new Request(`${APP_ORIGIN}/api/session/logout`, {
      method: 'POST',
      headers: { cookie, 'x-keyward-csrf': '1', origin: APP_ORIGIN },
    });
    expect((await read(await handleLogout(logout, runtime))).status).toBe(200);
    expectOAuthError(await exchange(pending.code, pending.verifier), 400, 'invalid_grant');
    // Another session of the same user is unaffected.
    const tokens = await signInApp();
    expect((await proxy(tokens.access_token)).result.status).toBe(200);
  });
});

describe('refresh re-reads local users (issue 11)', () => {
  async function bearerSession(on: Runtime, accessToken: string) {
    return on.verifySession(new Request(`${APP_ORIGIN}/api/session`, { headers: { authorization: `Bearer ${accessToken}` } }));
  }

  it("a local user's changed roles and claims reach the app at its next refresh, not after the refresh token's 30 days", async () => {
    const tokens = await signInApp();
    expect(await bearerSession(runtime, tokens.access_token)).toMatchObject({ roles: ['user'], claims: { org: 'acme' } });
    const changed = instanceWithUsers(usersFile([{ username: 'alice', roles: ['viewer'], claims: { org: 'globex' } }]));
    const result = await token({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, { on: changed });
    expect(result.status).toBe(200);
    const next = result.json<Tokens>();
    issued.push(next.access_token, next.refresh_token);
    expect(await bearerSession(changed, next.access_token)).toMatchObject({ userId: ALICE, roles: ['viewer'], claims: { org: 'globex' } });
  });

  it("a removed local user's refresh fails with invalid_grant and ends the family; a pending code fails too", async () => {
    const tokens = await signInApp();
    const pending = await newCode();
    expect(await bearerSession(runtime, tokens.access_token)).not.toBeNull();
    const removed = instanceWithUsers(usersFile([{ username: 'dora', roles: ['user'] }]));
    expectOAuthError(await token({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, { on: removed }), 400, 'invalid_grant');
    // The family is revoked on every instance: its live access token is refused from its next request …
    expect(await bearerSession(runtime, tokens.access_token)).toBeNull();
    expectError((await proxy(tokens.access_token)).result, 401, 'unauthenticated');
    // … and the refresh token stays dead even where the user still exists (this instance's older file).
    expectOAuthError(await refresh(tokens.refresh_token), 400, 'invalid_grant');
    expectOAuthError(
      await token({ grant_type: 'authorization_code', code: pending.code, code_verifier: pending.verifier, redirect_uri: APP_REDIRECT }, { on: removed }),
      400,
      'invalid_grant',
    );
  });

  it("a local user's new password fails the app's next refresh (invalid_grant, the family ended) and a pending code", async () => {
    const tokens = await signInApp();
    const pending = await newCode();
    const newPassword = instanceWithUsers(
      usersFile([
        { username: 'alice', roles: ['user'], claims: { org: 'acme' }, passwordHash: await hashPassword(randomSecret('new-pw')) },
        { username: 'dora', roles: ['user'] },
      ]),
    );
    // The access token is refused where the new file is read, as a browser session would be.
    expect(await bearerSession(newPassword, tokens.access_token)).toBeNull();
    expectOAuthError(await token({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, { on: newPassword }), 400, 'invalid_grant');
    expectOAuthError(await refresh(tokens.refresh_token), 400, 'invalid_grant');
    expectOAuthError(
      await token({ grant_type: 'authorization_code', code: pending.code, code_verifier: pending.verifier, redirect_uri: APP_REDIRECT }, { on: newPassword }),
      400,
      'invalid_grant',
    );
  });

  it('a local subject with no users file configured at all is refused (fail closed)', async () => {
    const tokens = await signInApp();
    const withoutUsers = { ...env };
    delete withoutUsers.KEYWARD_USERS_FILE;
    const noUsers = createRuntime({ env: { ...withoutUsers, KEYWARD_MOBILE_REDIRECT_URIS: APP_REDIRECT }, upstreams, store, logger, now: () => clock });
    expect(noUsers.users).toBeNull();
    expectOAuthError(await token({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, { on: noUsers }), 400, 'invalid_grant');
  });

  it("an identity provider's user keeps the roles it signed in with (there is nothing to re-read)", async () => {
    const cookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'oidc:abc123', roles: ['user', 'ops'] });
    const tokens = await signInApp(cookie);
    const result = await refresh(tokens.refresh_token);
    expect(result.status).toBe(200);
    expect(await bearerSession(runtime, result.json<Tokens>().access_token)).toMatchObject({ userId: 'oidc:abc123', roles: ['user', 'ops'] });
  });
});

describe('mobile disabled (no KEYWARD_MOBILE_REDIRECT_URIS)', () => {
  it('authorize → 404, even with a session; no redirect', async () => {
    const result = await authorize(authorizeQuery(), { on: disabled });
    expectError(result, 404, 'route_not_found');
    expect(result.json<{ error: { message: string } }>().error.message).toContain('KEYWARD_MOBILE_REDIRECT_URIS');
    expect(result.headers.get('location')).toBeNull();
  });

  it('token → 404, even with a code issued by an enabled instance', async () => {
    const { code, verifier } = await newCode();
    const result = await token(
      { grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT },
      { on: disabled },
    );
    expectError(result, 404, 'route_not_found');
  });
});

describe('bounds on what one user can make Keyward store', () => {
  it(`at most ${MOBILE_CAPS.codes.max} codes a minute per user: then the error goes back to the app (temporarily_unavailable)`, async () => {
    const cookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'oidc:codes', roles: ['user'] });
    for (let i = 0; i < MOBILE_CAPS.codes.max; i++) expect((await authorize(authorizeQuery(), { cookie })).status).toBe(303);
    const refused = await authorize(authorizeQuery(), { cookie });
    expectErrorRedirect(refused, 'temporarily_unavailable');
    // Another user is not held back.
    await newCode();
  });

  it(`at most ${MOBILE_CAPS.signIns.max} app sign-ins an hour per user, and ${MOBILE_CAPS.refreshes.max} refreshes: then 429, and the refresh token is not spent`, async () => {
    const sub = 'oidc:busy';
    const cookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub, roles: ['user'] });
    const tokens = await signInApp(cookie);
    // The counters as a loop of requests would have left them (one window each): the next one is refused.
    await store.set(`mfam:started:${sub}`, String(MOBILE_CAPS.signIns.max), MOBILE_CAPS.signIns.windowMs);
    const { code, verifier } = await newCode(APP_REDIRECT, cookie);
    const signIn = await exchange(code, verifier);
    expectOAuthError(signIn, 429, 'temporarily_unavailable');
    expect(signIn.headers.get('retry-after')).toBe('3600');
    // Once the window is over, the same code still works: the refused exchange did not spend it.
    await store.delete(`mfam:started:${sub}`);
    expect((await exchange(code, verifier)).status).toBe(200);

    await store.set(`mrt:refreshes:${sub}`, String(MOBILE_CAPS.refreshes.max), MOBILE_CAPS.refreshes.windowMs);
    const refused = await refresh(tokens.refresh_token);
    expectOAuthError(refused, 429, 'temporarily_unavailable');
    expect(refused.headers.get('retry-after')).toBe('3600');
    // Once the window is over, the same refresh token still works: the refused refresh did not spend it.
    await store.delete(`mrt:refreshes:${sub}`);
    const rotated = await refresh(tokens.refresh_token);
    expect(rotated.status).toBe(200);
    // Presented again within the grace, it makes an access token too: counted, and refused past the bound.
    await store.set(`mrt:refreshes:${sub}`, String(MOBILE_CAPS.refreshes.max), MOBILE_CAPS.refreshes.windowMs);
    expectOAuthError(await refresh(tokens.refresh_token), 429, 'temporarily_unavailable');
    await store.delete(`mrt:refreshes:${sub}`);
    expect((await refresh(tokens.refresh_token)).json<Tokens>().refresh_token).toBe(rotated.json<Tokens>().refresh_token);

    // At the bound, a copied (already used, past its grace) refresh token still ends its family at once: theft
    // detection does not wait for the window.
    await store.set(`mrt:refreshes:${sub}`, String(MOBILE_CAPS.refreshes.max), MOBILE_CAPS.refreshes.windowMs);
    await later(PAST_GRACE_MS, async () => expectOAuthError(await refresh(tokens.refresh_token), 400, 'invalid_grant'));
    await store.delete(`mrt:refreshes:${sub}`);
    expectOAuthError(await refresh(rotated.json<Tokens>().refresh_token), 400, 'invalid_grant');
  });
});

describe('OAuth error answers', () => {
  it('no error body or error redirect carried a code, token or secret', () => {
    expect(oauthErrors.length).toBeGreaterThan(30);
    expect(findLeak(oauthErrors.join('\n'), [...issued, serviceKey, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET])).toBeNull();
  });
});

describe('logs', () => {
  it('no code, access token or refresh token was ever logged', () => {
    expect(issued.length).toBeGreaterThan(30);
    const all = logLines.join('');
    expect(all).toContain('refresh token reused');
    expect(
      findLeak(all, [...issued, serviceKey, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET]),
    ).toBeNull();
  });
});
