import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OAuthTokenStore, type OAuthTokens } from '../../lib/core/credential/oauth';
import { Vault } from '../../lib/core/vault/seal';
import { RedisStore } from '../../lib/store/redis';
import { freePort, startApp, type AppServer } from '../fixtures/app-server';
import { REDIS_URL, findLeak, responseText } from '../fixtures/claims-session';
import { writeConfigFile } from '../fixtures/config';
import { CookieJar, browse as browseAs, readForm, type Page } from '../fixtures/browser';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { startAppRefreshProvider, type AppRefreshProvider } from '../fixtures/oidc-app-refresh-provider';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * `{"oauth": "oidc"}` end to end, through the real HTTP surface only: two production servers (`next start`,
 * needs `next build`) share the test run's Redis under a key prefix of their own; a user signs in on server A
 * through Auth.js against a real OpenID Connect provider (login and consent forms, PKCE, state, nonce; no
 * browser, a cookie jar per origin); both servers then call the upstream with the user's own access token,
 * refresh it single-flight when it is due (one refresh grant for a burst split over both servers, rotating
 * refresh tokens), and, once the provider has revoked the grant, end the link instead of retrying.
 *
 * The only look behind the HTTP surface is a read of the sealed token record in Redis (with the vault
 * secret), to know when the access token has expired without calling the proxy, which would refresh it.
 */
/** This run's keys (KEYWARD_REDIS_PREFIX of both servers), deleted at the end. */
const PREFIX = `keyward-test:${randomUUID()}:`;
/** Lifetime of the first access token (from the sign-in's code exchange) and of refreshed ones, seconds. */
const FIRST_TTL = 6;
const REFRESHED_TTL = 8;
const BURST = 50;

const sessionSecrets = testSessionSecrets();
const vaultSecret = randomSecret('vault');

let provider: AppRefreshProvider;
let upstream: TestUpstream;
let serverA: AppServer;
let serverB: AppServer;
let servers: AppServer[] = [];
let store: RedisStore | undefined;
let tokens: OAuthTokenStore;
let userId: string;
/** `__Host-keyward.session=…`, the only cookie the proxy calls send. */
let sessionCookie: string;
/** Every response an app server gave (status line, every header, body), for the leak check. */
const appResponses: string[] = [];

/** One request as a browser sends it; the app servers' responses are kept for the leak check. */
function browse(jar: CookieJar, url: string, form?: Record<string, string>): Promise<Page> {
  return browseAs(jar, url, form, (seen, text) => {
    if (isApp(seen)) appResponses.push(text);
  });
}

function isApp(url: string): boolean {
  const { origin } = new URL(url);
  return servers.some((server) => server.url === origin);
}

interface ProxyResult {
  status: number;
  code: string | null;
  body: string;
}

async function callProxy(server: AppServer): Promise<ProxyResult> {
  const response = await fetch(`${server.url}/api/proxy/graph/me`, {
    headers: { cookie: sessionCookie, 'x-keyward-csrf': '1' },
  });
  const flat = await responseText(response);
  appResponses.push(flat.text);
  const code =
    flat.status === 200 ? null : ((JSON.parse(flat.body) as { error?: { code?: string } }).error?.code ?? null);
  return { status: flat.status, code, body: flat.body };
}

/** The user's sealed tokens as the servers stored them in Redis. */
function stored(): Promise<OAuthTokens | null> {
  return tokens.load('oidc', userId);
}

/**
 * Waits, without calling the proxy, until the stored access token has expired (so it is due for refresh).
 * The record says when: one timer to just past that instant, no polling.
 */
async function untilExpired(accessToken: string): Promise<OAuthTokens> {
  const current = await stored();
  if (current?.accessToken !== accessToken) throw new Error('the stored access token is not the expected one');
  expect(current.expiresAt).toBeGreaterThan(0);
  while (Date.now() <= current.expiresAt) {
    await new Promise((resolve) => setTimeout(resolve, current.expiresAt - Date.now() + 1));
  }
  const after = await stored();
  if (after?.accessToken !== accessToken) throw new Error('the stored access token changed while waiting');
  return after;
}

/** Every token the provider issued, and every other secret of this run. */
function secrets(): string[] {
  return [
    ...provider
      .issued()
      .flatMap((t) => [t.accessToken, ...(t.refreshToken ? [t.refreshToken] : []), ...(t.idToken ? [t.idToken] : [])]),
    provider.clientSecret,
    provider.password,
    vaultSecret,
    sessionSecrets.AUTH_SECRET,
    sessionSecrets.KEYWARD_SESSION_SECRET,
  ];
}

beforeAll(async () => {
  // The app's ports come first: the provider registers A's exact redirect URI.
  const portA = await freePort();
  let portB = await freePort();
  while (portB === portA) portB = await freePort();
  provider = await startAppRefreshProvider({
    redirectUris: [`http://localhost:${portA}/api/auth/callback/oidc`],
    accessTokenTtl: FIRST_TTL,
    refreshedAccessTokenTtl: REFRESHED_TTL,
  });
  upstream = await startUpstream();
  const env = {
    ...sessionSecrets,
    KEYWARD_VAULT_SECRET: vaultSecret,
    KEYWARD_OIDC_ISSUER: provider.issuer,
    KEYWARD_OIDC_CLIENT_ID: provider.clientId,
    KEYWARD_OIDC_CLIENT_SECRET: provider.clientSecret,
    KEYWARD_CONFIG: writeConfigFile({
      upstreams: {
        graph: {
          baseUrl: `${upstream.origin}/graph/`,
          auth: { type: 'bearer', secret: { oauth: 'oidc' } },
          routes: [{ method: 'GET', path: '/me' }],
        },
      },
    }),
    REDIS_URL,
    KEYWARD_REDIS_PREFIX: PREFIX,
  };
  servers = await Promise.all([startApp(env, { port: portA }), startApp(env, { port: portB })]);
  [serverA, serverB] = servers as [AppServer, AppServer];
  // Both servers have built their runtime (a proxy call without a session) before the sign-in starts the
  // access token's short life.
  for (const server of servers) {
    const warm = await fetch(`${server.url}/api/proxy/graph/me`, { headers: { 'x-keyward-csrf': '1' } });
    await warm.arrayBuffer();
    expect(warm.status).toBe(401);
  }

  store = new RedisStore(REDIS_URL, { prefix: PREFIX });
  await store.ready();
  tokens = new OAuthTokenStore(store, new Vault(vaultSecret), new Map());
  userId = `oidc:${provider.accountId}`;
}, 120_000);

afterAll(async () => {
  await Promise.all(servers.map((server) => server.stop()));
  await upstream?.close();
  await provider?.stop();
  await store?.close();
  await deleteKeysUnder(REDIS_URL, PREFIX);
});

describe('OIDC sign-in on one server, the provider token refreshed single-flight across two `next start` servers', () => {
  let first: string;

  it('signs in through Auth.js with OIDC over HTTP (login and consent forms, PKCE/state/nonce cookies)', async () => {
    const jar = new CookieJar();
    const csrf = await browse(jar, `${serverA.url}/api/auth/csrf`);
    expect(csrf.status).toBe(200);
    const { csrfToken } = JSON.parse(csrf.body) as { csrfToken: string };

    let page = await browse(jar, `${serverA.url}/api/auth/signin/oidc`, { csrfToken, callbackUrl: `${serverA.url}/` });
    expect(page.status).toBe(302);
    const authorization = new URL(page.location!);
    expect(authorization.origin).toBe(provider.issuer);
    expect(authorization.searchParams.get('redirect_uri')).toBe(`${serverA.url}/api/auth/callback/oidc`);
    expect(authorization.searchParams.get('code_challenge_method')).toBe('S256');
    for (const name of ['pkce', 'state', 'nonce']) expect(jar.get(serverA.url, `__Host-keyward.${name}`)).toBeTruthy();

    // At the provider: follow its redirects, fill in and submit each form it shows, until it sends the
    // browser back to the app.
    for (let hops = 0; ; hops++) {
      expect(hops).toBeLessThan(12);
      if (page.location) {
        if (page.location.startsWith(`${serverA.url}/`)) break;
        page = await browse(jar, page.location);
        continue;
      }
      expect(page.status).toBe(200);
      const form = readForm(page);
      if (/\/login$/.test(form.action)) {
        expect(Object.keys(form.fields).sort()).toEqual(['password', 'username']);
        page = await browse(jar, form.action, { username: provider.username, password: provider.password });
      } else {
        page = await browse(jar, form.action, form.fields);
      }
    }
    expect(provider.interactions()).toEqual({ login: 1, consent: 1 });
    const callback = new URL(page.location!);
    expect(callback.pathname).toBe('/api/auth/callback/oidc');
    expect(callback.searchParams.get('code')).toBeTruthy();

    const back = await browse(jar, callback.href);
    expect(back.status).toBe(302);
    expect(back.location).toBe(`${serverA.url}/`);
    const session = jar.get(serverA.url, '__Host-keyward.session');
    expect(session).toBeTruthy();
    sessionCookie = `__Host-keyward.session=${session}`;

    // Auth.js exchanged the code once; nothing has been refreshed yet.
    expect(provider.counts()).toEqual({
      tokenRequests: 1,
      codeGrantsServed: 1,
      refreshGrants: 0,
      refreshServed: 0,
      refreshRefused: 0,
    });
    const issued = provider.issued();
    expect(issued).toHaveLength(1);
    expect(issued[0]!.expiresIn).toBe(FIRST_TTL);
    first = issued[0]!.accessToken;

    // The session names the user and nothing else; the provider's tokens were stored sealed, on the server.
    const who = await fetch(`${serverB.url}/api/auth/session`, { headers: { cookie: sessionCookie } });
    const flat = await responseText(who);
    appResponses.push(flat.text);
    expect(JSON.parse(flat.body)).toMatchObject({ user: { name: 'Grace Hopper' } });
    const saved = await stored();
    expect(saved?.accessToken).toBe(first);
    expect(saved?.refreshToken).toBe(issued[0]!.refreshToken);
    const raw = await store!.get(`oauth:oidc:${userId}`);
    expect(raw).toMatch(/^Fe26\.2\*/);
    expect(findLeak(raw!, secrets())).toBeNull();
  });

  it('A and B both call the upstream with the access token the provider issued', async () => {
    const before = upstream.requests.length;
    for (const server of [serverA, serverB]) {
      const result = await callProxy(server);
      expect(result.status).toBe(200);
      // The echo upstream answered (and its echo of the Authorization header was scrubbed on the way back).
      expect(JSON.parse(result.body)).toMatchObject({ method: 'GET', url: '/graph/me' });
    }
    const seen = upstream.requests.slice(before);
    expect(seen.map((r) => r.url)).toEqual(['/graph/me', '/graph/me']);
    for (const request of seen) expect(request.headers.authorization).toBe(`Bearer ${first}`);
    // Still the first token: no refresh so far (a refresh here would make the next test meaningless).
    expect(provider.counts().tokenRequests).toBe(1);
  });

  it(`once the token is due, ${BURST} concurrent calls over A and B: all 200, ONE refresh grant, every call with the new token`, async () => {
    await untilExpired(first);
    expect(provider.counts().refreshGrants).toBe(0);
    const before = upstream.requests.length;

    const results = await Promise.all(
      Array.from({ length: BURST }, (_, i) => callProxy(i % 2 === 0 ? serverA : serverB)),
    );
    expect(results.map((r) => r.status)).toEqual(Array(BURST).fill(200));
    expect(provider.counts()).toEqual({
      tokenRequests: 2,
      codeGrantsServed: 1,
      refreshGrants: 1,
      refreshServed: 1,
      refreshRefused: 0,
    });

    const refreshed = provider.issued().at(-1)!;
    expect(refreshed.grantType).toBe('refresh_token');
    expect(refreshed.accessToken).not.toBe(first);
    expect(refreshed.refreshToken).not.toBe(provider.issued()[0]!.refreshToken);
    const seen = upstream.requests.slice(before);
    expect(seen).toHaveLength(BURST);
    for (const request of seen) expect(request.headers.authorization).toBe(`Bearer ${refreshed.accessToken}`);

    // Calls after the refresh, on either server, carry the new token without asking the provider again.
    for (const server of [serverB, serverA]) expect((await callProxy(server)).status).toBe(200);
    for (const request of upstream.requests.slice(before + BURST))
      expect(request.headers.authorization).toBe(`Bearer ${refreshed.accessToken}`);
    expect(provider.counts().tokenRequests).toBe(2);

    // The store holds the rotated pair.
    const saved = await stored();
    expect(saved?.accessToken).toBe(refreshed.accessToken);
    expect(saved?.refreshToken).toBe(refreshed.refreshToken);
  });

  it('grant revoked at the provider: 401 reauth_required on A, then on B and A again until the user signs in, no further token request', async () => {
    const current = provider.issued().at(-1)!;
    await provider.revoke(current.refreshToken!);
    await untilExpired(current.accessToken);
    const before = provider.counts();
    const upstreamBefore = upstream.requests.length;

    const onA = await callProxy(serverA);
    expect(onA.status).toBe(401);
    expect(onA.code).toBe('reauth_required');
    expect(provider.counts()).toEqual({
      ...before,
      tokenRequests: before.tokenRequests + 1,
      refreshGrants: before.refreshGrants + 1,
      refreshRefused: before.refreshRefused + 1,
    });

    const onB = await callProxy(serverB);
    expect(onB.status).toBe(401);
    expect(onB.code).toBe('reauth_required');
    const again = await callProxy(serverA);
    expect(again.status).toBe(401);
    expect(again.code).toBe('reauth_required');

    expect(provider.counts().tokenRequests).toBe(before.tokenRequests + 1);
    expect(upstream.requests.length).toBe(upstreamBefore);
    expect(await stored()).toBeNull();
  });

  it('no provider token or secret in any response from either server, nor in either server output', async () => {
    expect(provider.issued().length).toBeGreaterThanOrEqual(2);
    expect(appResponses.length).toBeGreaterThan(BURST);
    for (const text of appResponses) expect(findLeak(text, secrets())).toBeNull();
    // Stopped first, so everything they printed is in.
    await Promise.all(servers.map((server) => server.stop()));
    for (const server of servers) {
      expect(server.output()).toContain('Ready');
      expect(findLeak(server.output(), secrets())).toBeNull();
    }
  });
});
