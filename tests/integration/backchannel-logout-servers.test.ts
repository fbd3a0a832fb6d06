import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, startApp, type AppServer } from '../fixtures/app-server';
import { REDIS_URL, findLeak, responseText } from '../fixtures/claims-session';
import { writeConfigFile } from '../fixtures/config';
import { CookieJar, browse as browseAs, readForm, type Page } from '../fixtures/browser';
import { startLogoutProvider, type LogoutProvider } from '../fixtures/oidc-logout-provider';
import { deleteKeysUnder, keysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * OIDC Back-Channel Logout end to end, over real HTTP only: two production servers (`next start`, needs
 * `next build`) share the test run's Redis under a key prefix of their own, and a real oidc-provider with
 * back-channel logout enabled (tests/fixtures/oidc-logout-provider.ts) has A's /api/auth/backchannel-logout as
 * the client's `backchannel_logout_uri`.
 *
 * Two browsers (a cookie jar each, at the app and at the provider) sign in through Auth.js: the first on B and
 * again on A (one provider session, two Keyward sessions), the second on A (another provider session); each
 * also gets mobile tokens through the app's token exchange. The first then signs out at the provider: the
 * provider POSTs a logout token to A, and the first browser's sessions and app tokens are refused on A and B
 * alike, while the second browser's keep working. Then the second signs out too.
 */
const PREFIX = `keyward-test:${randomUUID()}:`;
// An https app link (verified by the platform): no consent page in between (tests/integration/mobile-tokens.test.ts).
const APP_REDIRECT = 'https://app.keyward.test/oauth/callback';

const sessionSecrets = testSessionSecrets();
const serviceKey = randomSecret('svc');
let provider: LogoutProvider;
let upstream: TestUpstream;
let serverA: AppServer;
let serverB: AppServer;
let servers: AppServer[] = [];
/** Every response an app server gave (status line, headers, body), for the leak check. */
const appResponses: string[] = [];

/** One request as a browser sends it; the app servers' responses are kept for the leak check. */
function browse(jar: CookieJar, url: string, form?: Record<string, string>): Promise<Page> {
  return browseAs(jar, url, form, (seen, text) => {
    if (servers.some((server) => new URL(seen).origin === server.url)) appResponses.push(text);
  });
}

/**
 * Signs in on `server` through Auth.js and the provider: the app's OIDC sign-in, the provider's login form
 * when the browser has no session there yet (none when it has: single sign-on), back to the app's callback.
 * Returns the Cookie header value that carries the app session.
 */
async function signIn(jar: CookieJar, server: AppServer): Promise<string> {
  const csrf = await browse(jar, `${server.url}/api/auth/csrf`);
  const { csrfToken } = JSON.parse(csrf.body) as { csrfToken: string };
  let page = await browse(jar, `${server.url}/api/auth/signin/oidc`, { csrfToken, callbackUrl: `${server.url}/` });
  expect(new URL(page.location!).origin).toBe(provider.issuer);
  for (let hops = 0; ; hops++) {
    expect(hops).toBeLessThan(12);
    if (page.location) {
      if (page.location.startsWith(`${server.url}/`)) break;
      page = await browse(jar, page.location);
      continue;
    }
    expect(page.status).toBe(200);
    const form = readForm(page);
    page = await browse(jar, form.action, { username: provider.username, password: provider.password });
  }
  expect(new URL(page.location!).pathname).toBe('/api/auth/callback/oidc');
  const back = await browse(jar, page.location!);
  expect(back.status).toBe(302);
  const session = jar.get(server.url, '__Host-keyward.session');
  expect(session).toBeTruthy();
  return `__Host-keyward.session=${session}`;
}

/** Signs out at the provider (RP-initiated logout's confirm form, "Yes, sign me out"); the provider then notifies the app. */
async function signOutAtProvider(jar: CookieJar): Promise<void> {
  const page = await browse(jar, `${provider.issuer}/session/end`);
  expect(page.status).toBe(200);
  const form = readForm(page, 'op.logoutForm');
  const done = await browse(jar, form.action, { ...form.fields, logout: 'yes' });
  // The provider redirects once every back-channel request has been answered (oidc-provider awaits them).
  expect([302, 303]).toContain(done.status);
}

interface AppTokens {
  readonly access: string;
  readonly refresh: string;
}

/** The mobile token exchange over HTTP, from a signed-in browser session on `server`. */
async function mobileTokens(server: AppServer, cookie: string): Promise<AppTokens> {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const query = new URLSearchParams({ response_type: 'code', redirect_uri: APP_REDIRECT, code_challenge: challenge, code_challenge_method: 'S256' });
  const authorize = await fetch(`${server.url}/api/session/mobile/authorize?${query}`, { headers: { cookie }, redirect: 'manual' });
  await authorize.arrayBuffer();
  expect(authorize.status).toBe(302);
  const code = new URL(authorize.headers.get('location')!).searchParams.get('code')!;
  const response = await tokenRequest(server, { grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT });
  expect(response.status).toBe(200);
  const body = JSON.parse(response.body) as { access_token: string; refresh_token: string };
  return { access: `Bearer ${body.access_token}`, refresh: body.refresh_token };
}

async function tokenRequest(server: AppServer, fields: Record<string, string>): Promise<{ status: number; body: string }> {
  const response = await fetch(`${server.url}/api/session/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(fields),
  });
  const flat = await responseText(response);
  appResponses.push(flat.text);
  return flat;
}

async function call(server: AppServer, credential: string): Promise<number> {
  const headers: Record<string, string> = credential.startsWith('Bearer ')
    ? { authorization: credential }
    : { cookie: credential, 'x-keyward-csrf': '1' };
  const response = await fetch(`${server.url}/api/proxy/svc/items/1`, { headers });
  appResponses.push((await responseText(response)).text);
  return response.status;
}

async function expectWorks(credential: string) {
  for (const server of [serverA, serverB]) expect(await call(server, credential)).toBe(200);
}

async function expectRefused(credential: string) {
  for (const server of [serverA, serverB]) expect(await call(server, credential)).toBe(401);
}

beforeAll(async () => {
  const portA = await freePort();
  let portB = await freePort();
  while (portB === portA) portB = await freePort();
  provider = await startLogoutProvider({
    redirectUris: [`http://localhost:${portA}/api/auth/callback/oidc`, `http://localhost:${portB}/api/auth/callback/oidc`],
    backchannelLogoutUri: `http://localhost:${portA}/api/auth/backchannel-logout`,
  });
  upstream = await startUpstream();
  const env = {
    ...sessionSecrets,
    SVC_KEY: serviceKey,
    KEYWARD_OIDC_ISSUER: provider.issuer,
    KEYWARD_OIDC_CLIENT_ID: provider.clientId,
    KEYWARD_OIDC_CLIENT_SECRET: provider.clientSecret,
    KEYWARD_MOBILE_REDIRECT_URIS: APP_REDIRECT,
    KEYWARD_CONFIG: writeConfigFile({
      upstreams: {
        svc: {
          baseUrl: `${upstream.origin}/v1/`,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
          routes: [{ method: 'GET', path: '/items/:id' }],
        },
      },
    }),
    REDIS_URL,
    KEYWARD_REDIS_PREFIX: PREFIX,
  };
  servers = await Promise.all([startApp(env, { port: portA }), startApp(env, { port: portB })]);
  [serverA, serverB] = servers as [AppServer, AppServer];
}, 120_000);

afterAll(async () => {
  await Promise.all(servers.map((server) => server.stop()));
  await upstream?.close();
  await provider?.stop();
  await deleteKeysUnder(REDIS_URL, PREFIX);
});

describe('the provider ends a session: its back-channel logout reaches A, and A and B both refuse what came from it', () => {
  const first = new CookieJar();
  const second = new CookieJar();
  let firstOnB: string;
  let firstOnA: string;
  let secondOnA: string;
  let firstApp: AppTokens;
  let secondApp: AppTokens;

  it('two browsers sign in through the provider (the first on B, then on A by single sign-on; the second on A) and get app tokens', async () => {
    firstOnB = await signIn(first, serverB);
    firstOnA = await signIn(first, serverA);
    secondOnA = await signIn(second, serverA);
    firstApp = await mobileTokens(serverA, firstOnB);
    secondApp = await mobileTokens(serverB, secondOnA);
    for (const credential of [firstOnB, firstOnA, secondOnA, firstApp.access, secondApp.access]) await expectWorks(credential);
    // The one look behind the HTTP surface: the sign-ins recorded their provider sessions (the ID tokens carried
    // `sid`), two rings: the first browser's two sessions and its app's family, the second's session and family.
    const recorded = await keysUnder(REDIS_URL, `${PREFIX}psess:`);
    expect(recorded.filter((key) => /:n$/.test(key))).toHaveLength(2);
    expect(recorded.filter((key) => /:\d+$/.test(key))).toHaveLength(5);
  });

  it('the first browser signs out at the provider: the provider POSTs a logout token to A, which answers 200', async () => {
    await signOutAtProvider(first);
    expect(provider.deliveries()).toEqual([{ ok: true, sid: expect.any(String) }]);
    expect(provider.logoutTokens()).toHaveLength(1);
  });

  it("the first browser's sessions and app tokens are refused on A and on B; the second browser's keep working", async () => {
    for (const credential of [firstOnB, firstOnA, firstApp.access]) await expectRefused(credential);
    for (const server of [serverA, serverB]) {
      const refresh = await tokenRequest(server, { grant_type: 'refresh_token', refresh_token: firstApp.refresh });
      expect(refresh.status).toBe(400);
      expect(JSON.parse(refresh.body)).toMatchObject({ error: 'invalid_grant' });
    }
    const session = await fetch(`${serverB.url}/api/auth/session`, { headers: { cookie: firstOnB } });
    expect(await session.json()).toBeNull();
    for (const credential of [secondOnA, secondApp.access]) await expectWorks(credential);
  });

  it('the same logout token posted again (a replay, to B) is refused 400 and ends nothing', async () => {
    const [token] = provider.logoutTokens();
    const response = await fetch(`${serverB.url}/api/auth/backchannel-logout`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ logout_token: token! }),
    });
    const flat = await responseText(response);
    appResponses.push(flat.text);
    expect(flat.status).toBe(400);
    expect(JSON.parse(flat.body)).toEqual({ error: 'invalid_request' });
    for (const credential of [secondOnA, secondApp.access]) await expectWorks(credential);
  });

  it('the second browser signs out at the provider too: its session and app token end on both', async () => {
    await signOutAtProvider(second);
    expect(provider.deliveries().map((delivery) => delivery.ok)).toEqual([true, true]);
    for (const credential of [secondOnA, secondApp.access]) await expectRefused(credential);
  });

  it('no logout token or secret in any app response or server output', async () => {
    const secrets = [...provider.logoutTokens(), provider.clientSecret, provider.password, serviceKey, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET];
    for (const text of appResponses) expect(findLeak(text, secrets)).toBeNull();
    await Promise.all(servers.map((server) => server.stop()));
    for (const server of servers) {
      expect(server.output()).toContain('back-channel logout');
      expect(findLeak(server.output(), secrets)).toBeNull();
    }
  });
});
