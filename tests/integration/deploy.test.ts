import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decode } from '@auth/core/jwt';
import { SESSION_COOKIE } from '../../lib/core/session/session';
import { CSRF_FAILURES } from '../../lib/core/csrf/check';
import { copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { signIn, signInAttempt, startApp, startFastLane, type AppServer } from '../fixtures/app-server';
import { USERS_RECHECK_MS } from '../../lib/core/users/file';
import { writeConfigFile } from '../fixtures/config';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';
import { rawRequest, type RawResponse as Reply } from '../fixtures/raw-http';
import { findLeak } from '../fixtures/claims-session';
import { startOidcProvider, type TestOidcProvider } from '../fixtures/oidc-provider';

/**
 * A production server (`next start`, after `next build`) deployed with the README's settings and nothing
 * more (no KEYWARD_ALLOWED_ORIGINS, none of the test suite's defaults), reached by a host name other than
 * localhost: `Host: app.test`, as a browser on http://app.test or a TLS proxy in front would send it.
 */
let upstream: TestUpstream;
const echoKey = randomSecret('echo');
const password = randomSecret('pw');
const sessionSecrets = testSessionSecrets();
const secrets = [echoKey, password, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET];
let readme: Record<string, string>;

/** One request with exactly these headers (fetch cannot set Host), to the server's loopback port. */
function send(app: AppServer, method: string, path: string, headers: Record<string, string>, body?: string): Promise<Reply> {
  return rawRequest(app.port, method, path, headers, body);
}

function expectNoLeak(reply: Reply): void {
  const text = `${JSON.stringify(reply.headers)}\n${reply.body}`;
  expect(findLeak(text, secrets) === null, 'a secret leaked').toBe(true);
}

/**
 * A page answered with proxy.ts's Content-Security-Policy: a script-src nonce of its own on every script tag,
 * 'strict-dynamic', and nothing that lets other script run. Returns the nonce.
 */
function expectNoncedPage(reply: Reply, status = 200): string {
  expect(reply.status).toBe(status);
  const policy = String(reply.headers['content-security-policy']);
  const nonce = /^script-src 'nonce-([A-Za-z0-9+/]{22}==)' 'strict-dynamic'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'$/.exec(policy)?.[1];
  expect(nonce, policy).toBeDefined();
  const scripts = [...reply.body.matchAll(/<script\b[^>]*>/g)].map(([tag]) => tag);
  expect(scripts.length).toBeGreaterThan(0);
  for (const tag of scripts) expect(tag).toContain(`nonce="${nonce}"`);
  return nonce!;
}

function csrfMessage(reply: Reply): string {
  expect(reply.status).toBe(403);
  const { error } = JSON.parse(reply.body) as { error: { code: string; message: string } };
  expect(error.code).toBe('csrf_failed');
  return error.message;
}

/** Auth.js's provider list as the server answers it for these request headers (each provider's URLs). */
async function authProviders(app: AppServer, headers: Record<string, string>): Promise<Record<string, { signinUrl: string; callbackUrl: string }>> {
  const reply = await send(app, 'GET', '/api/auth/providers', headers);
  expect(reply.status).toBe(200);
  return JSON.parse(reply.body) as Record<string, { signinUrl: string; callbackUrl: string }>;
}

/**
 * Where Auth.js sends a browser that asks for its sign-in page without a session (Keyward's /signin): the
 * callbackUrl it carries.
 */
async function signInCallbackUrl(app: AppServer, headers: Record<string, string>): Promise<string | null> {
  const reply = await send(app, 'GET', '/api/auth/signin', headers);
  expect(reply.status).toBe(302);
  const location = new URL(String(reply.headers.location), 'http://relative.invalid');
  expect(location.pathname).toBe('/signin');
  return location.searchParams.get('callbackUrl');
}

beforeAll(async () => {
  upstream = await startUpstream();
  readme = {
    ...sessionSecrets,
    ECHO_KEY: echoKey,
    KEYWARD_CONFIG: writeConfigFile({
      upstreams: {
        echo: {
          baseUrl: `${upstream.origin}/v1/`,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
          routes: [
            { method: 'POST', path: '/items' },
            { method: 'GET', path: '/items/:id' },
            { method: 'DELETE', path: '/items/:id', roles: ['admin'] },
          ],
        },
      },
    }),
    KEYWARD_USERS_FILE: await writeUsersFile([{ username: 'alice', password, roles: ['user'] }]),
    KEYWARD_STORE: 'memory',
  };
}, 60_000);

afterAll(async () => {
  await upstream?.close();
});

describe('behind a real host name, trusting the Host header (AUTH_TRUST_HOST=true)', () => {
  let app: AppServer;
  let cookie: string;
  const post = (headers: Record<string, string>) =>
    send(app, 'POST', '/api/proxy/echo/items', { cookie, 'content-type': 'application/json', ...headers }, '{"name":"x"}');

  let oidc: TestOidcProvider;

  beforeAll(async () => {
    // A real OpenID Connect provider that knows the app only by its public name.
    oidc = await startOidcProvider({ redirectUri: 'http://app.test/api/auth/callback/oidc' });
    app = await startApp(
      { ...readme, AUTH_TRUST_HOST: 'true', KEYWARD_OIDC_ISSUER: oidc.issuer, KEYWARD_OIDC_CLIENT_ID: oidc.clientId, KEYWARD_OIDC_CLIENT_SECRET: oidc.clientSecret },
      { testDefaults: false },
    );
    cookie = await signIn(app.url, 'alice', password);
  }, 90_000);
  afterAll(async () => {
    const output = app?.output() ?? '';
    await app?.stop();
    await oidc?.stop();
    expect(findLeak(output, [...secrets, oidc?.clientSecret ?? '']) === null, 'a secret leaked into the log').toBe(true);
  });

  it('a same-origin POST with a cookie session passes', async () => {
    const before = upstream.requests.length;
    const reply = await post({ host: 'app.test', origin: 'http://app.test', 'x-keyward-csrf': '1' });
    expect(reply.status).toBe(200);
    expect(upstream.requests.length).toBe(before + 1);
    expectNoLeak(reply);
  });

  it('the internal localhost origin and foreign origins are refused, saying it was the Origin', async () => {
    const before = upstream.requests.length;
    for (const origin of [`http://localhost:${app.port}`, 'http://127.0.0.1', 'https://app.test', 'https://evil.example']) {
      const reply = await post({ host: 'app.test', origin, 'x-keyward-csrf': '1' });
      expect(csrfMessage(reply)).toContain(CSRF_FAILURES.originRefused);
      expect(reply.body).not.toContain(origin);
    }
    expect(upstream.requests.length).toBe(before);
  });

  it('each failed check is named in fixed text: header, Sec-Fetch-Site, missing Origin', async () => {
    expect(csrfMessage(await post({ host: 'app.test', origin: 'http://app.test' }))).toContain(CSRF_FAILURES.header);
    expect(csrfMessage(await post({ host: 'app.test', origin: 'http://app.test', 'x-keyward-csrf': '1', 'sec-fetch-site': 'cross-site' }))).toContain(
      CSRF_FAILURES.fetchSite,
    );
    expect(csrfMessage(await post({ host: 'app.test', 'x-keyward-csrf': '1' }))).toContain(CSRF_FAILURES.originMissing);
  });

  it('behind a TLS proxy: X-Forwarded-Proto/-Host name the origin', async () => {
    const forwarded = { host: '127.0.0.1', 'x-forwarded-host': 'app.test', 'x-forwarded-proto': 'https', 'x-keyward-csrf': '1' };
    expect((await post({ ...forwarded, origin: 'https://app.test' })).status).toBe(200);
    expect(csrfMessage(await post({ ...forwarded, origin: 'http://app.test' }))).toContain(CSRF_FAILURES.originRefused);
  });

  it('logout (a cookie POST to Keyward’s own API) passes same-origin', async () => {
    const other = await signIn(app.url, 'alice', password);
    const reply = await send(app, 'POST', '/api/session/logout', { cookie: other, host: 'app.test', origin: 'http://app.test', 'x-keyward-csrf': '1' });
    expect(reply.status).toBe(200);
    expect((await send(app, 'GET', '/api/session', { cookie: other, host: 'app.test' })).status).toBe(401);
  });

  it('Auth.js answers on the real host (no UntrustedHost) and its pages are not cached', async () => {
    const reply = await send(app, 'GET', '/api/auth/csrf', { host: 'app.test' });
    expect(reply.status).toBe(200);
    expect(reply.headers['cache-control']).toBe('private, no-store');
  });

  it("Auth.js builds its URLs on the trusted host, not on Next's internal localhost; behind a TLS proxy on the forwarded one", async () => {
    const providers = await authProviders(app, { host: 'app.test' });
    expect(providers.credentials!.signinUrl).toBe('http://app.test/api/auth/signin/credentials');
    expect(providers.oidc!.callbackUrl).toBe('http://app.test/api/auth/callback/oidc');
    expect(await signInCallbackUrl(app, { host: 'app.test' })).toBe('http://app.test');
    const forwarded = { host: '127.0.0.1', 'x-forwarded-host': 'app.test', 'x-forwarded-proto': 'https' };
    expect((await authProviders(app, forwarded)).oidc!.callbackUrl).toBe('https://app.test/api/auth/callback/oidc');
    expect(await signInCallbackUrl(app, forwarded)).toBe('https://app.test');
  });

  it('OIDC sign-in sends the identity provider the redirect URI registered for the public name', async () => {
    const csrf = await send(app, 'GET', '/api/auth/csrf', { host: 'app.test' });
    const { csrfToken } = JSON.parse(csrf.body) as { csrfToken: string };
    const csrfCookie = ([] as string[]).concat(csrf.headers['set-cookie'] ?? []).map((line) => line.split(';')[0]).join('; ');
    const body = new URLSearchParams({ csrfToken, callbackUrl: 'http://app.test/' }).toString();
    const reply = await send(
      app,
      'POST',
      '/api/auth/signin/oidc',
      { host: 'app.test', origin: 'http://app.test', cookie: csrfCookie, 'content-type': 'application/x-www-form-urlencoded' },
      body,
    );
    expect(reply.status).toBe(302);
    const authorize = new URL(String(reply.headers.location));
    expect(authorize.origin).toBe(oidc.issuer);
    expect(authorize.searchParams.get('redirect_uri')).toBe('http://app.test/api/auth/callback/oidc');
  });

  it("an OIDC callback a client spoiled (no state cookie; the user denied consent) is a warning without a stack, not an error: anyone can send one", async () => {
    const mark = app.output().length;
    const bare = await send(app, 'GET', '/api/auth/callback/oidc?code=x&state=y', { host: 'app.test' });
    expect(bare.status).toBe(302);
    // Not "not configured correctly on the server" (Auth.js's `Configuration`): the sign-in page says to start again.
    expect(bare.headers.location).toBe('http://app.test/signin?error=SignInExpired');
    // Denied at the provider: a callback with the flow's own state and cookies, and `error=access_denied`.
    const csrf = await send(app, 'GET', '/api/auth/csrf', { host: 'app.test' });
    const { csrfToken } = JSON.parse(csrf.body) as { csrfToken: string };
    const cookiesOf = (headers: Record<string, unknown>) => ([] as string[]).concat((headers['set-cookie'] as string[] | undefined) ?? []).map((line) => line.split(';')[0]!);
    const jar = cookiesOf(csrf.headers);
    const reply = await send(
      app,
      'POST',
      '/api/auth/signin/oidc',
      { host: 'app.test', origin: 'http://app.test', cookie: jar.join('; '), 'content-type': 'application/x-www-form-urlencoded' },
      new URLSearchParams({ csrfToken, callbackUrl: 'http://app.test/' }).toString(),
    );
    const state = new URL(String(reply.headers.location)).searchParams.get('state')!;
    const query = new URLSearchParams({ state, iss: oidc.issuer, error: 'access_denied' });
    const denied = await send(app, 'GET', `/api/auth/callback/oidc?${query}`, { host: 'app.test', cookie: [...jar, ...cookiesOf(reply.headers)].join('; ') });
    expect(denied.status).toBe(302);
    await expect.poll(() => app.output().slice(mark), { timeout: 5_000 }).toContain('auth.js: OAuthCallbackError');
    const lines = app.output().slice(mark).split('\n').filter((line) => line.includes('"authError"'));
    const logged = lines.map((line) => JSON.parse(line) as { level: number; authError: string; err?: unknown });
    expect(logged.map(({ authError }) => authError)).toEqual(expect.arrayContaining(['InvalidCheck', 'OAuthCallbackError']));
    for (const line of logged) expect([line.authError, line.level, line.err]).toEqual([line.authError, 40, undefined]);
    // The user denied consent: the provider's error, not SIGN_IN_EXPIRED.
    expect(new URL(String(denied.headers.location)).searchParams.get('error')).not.toBe('SignInExpired');
    // The log says what most likely happened, and which check failed.
    const invalidCheck = lines.map((line) => JSON.parse(line) as { authError: string; msg: string; check?: string }).find((line) => line.authError === 'InvalidCheck')!;
    expect(invalidCheck.msg).toContain('another host name than the callback');
    expect(invalidCheck.check).toMatch(/^(state|pkceCodeVerifier|nonce) /);
  });
});

describe('behind a real host name with AUTH_URL', () => {
  let app: AppServer;
  let cookie: string;
  let oidc: TestOidcProvider;

  beforeAll(async () => {
    oidc = await startOidcProvider({ redirectUri: 'https://keyward.example/api/auth/callback/oidc' });
    app = await startApp(
      {
        ...readme,
        AUTH_URL: 'https://keyward.example',
        KEYWARD_ALLOWED_ORIGINS: 'https://alt.example',
        KEYWARD_OIDC_ISSUER: oidc.issuer,
        KEYWARD_OIDC_CLIENT_ID: oidc.clientId,
        KEYWARD_OIDC_CLIENT_SECRET: oidc.clientSecret,
      },
      { testDefaults: false },
    );
    cookie = await signIn(app.url, 'alice', password);
  }, 90_000);
  afterAll(async () => {
    await app?.stop();
    await oidc?.stop();
  });

  it("SSO started on another name (KEYWARD_ALLOWED_ORIGINS) ends on AUTH_URL's host without the flow's cookies: the page says to start again, the log says why", async () => {
    // The browser on https://alt.example: Auth.js's CSRF cookie, then the SSO button's form post.
    const cookiesOf = (headers: Record<string, unknown>) => ([] as string[]).concat((headers['set-cookie'] as string[] | undefined) ?? []).map((line) => line.split(';')[0]!);
    const alt = { host: 'alt.example', 'x-forwarded-proto': 'https' };
    const csrf = await send(app, 'GET', '/api/auth/csrf', alt);
    const { csrfToken } = JSON.parse(csrf.body) as { csrfToken: string };
    const started = await send(
      app,
      'POST',
      '/api/auth/signin/oidc',
      { ...alt, origin: 'https://alt.example', cookie: cookiesOf(csrf.headers).join('; '), 'content-type': 'application/x-www-form-urlencoded' },
      new URLSearchParams({ csrfToken, callbackUrl: '/' }).toString(),
    );
    expect(started.status).toBe(302);
    // The flow's cookies are set on alt.example; the provider (the real one) will send the browser to AUTH_URL's host.
    expect(cookiesOf(started.headers).map((pair) => pair.split('=')[0])).toEqual(expect.arrayContaining(['__Host-keyward.pkce', '__Host-keyward.state']));
    const authorize = new URL(String(started.headers.location));
    expect(authorize.origin).toBe(oidc.issuer);
    expect(authorize.searchParams.get('redirect_uri')).toBe('https://keyward.example/api/auth/callback/oidc');
    const mark = app.output().length;
    // Back on keyward.example, the browser has none of alt.example's cookies.
    const query = new URLSearchParams({ code: 'from-the-provider', state: authorize.searchParams.get('state')!, iss: oidc.issuer });
    const back = await send(app, 'GET', `/api/auth/callback/oidc?${query}`, { host: 'keyward.example', 'x-forwarded-proto': 'https' });
    expect(back.status).toBe(302);
    expect(back.headers.location).toBe('https://keyward.example/signin?error=SignInExpired');
    await expect.poll(() => app.output().slice(mark), { timeout: 5_000 }).toContain('auth.js: InvalidCheck');
    const line = app
      .output()
      .slice(mark)
      .split('\n')
      .find((text) => text.includes('"authError":"InvalidCheck"'))!;
    expect(JSON.parse(line)).toMatchObject({ level: 40, msg: expect.stringContaining("SSO completes on AUTH_URL's host only") });
  });

  it("AUTH_URL's origin is the one allowed, whatever Host says", async () => {
    const call = (host: string, origin: string) =>
      send(app, 'POST', '/api/proxy/echo/items', { cookie, host, origin, 'x-keyward-csrf': '1', 'content-type': 'application/json' }, '{}');
    expect((await call('app.test', 'https://keyward.example')).status).toBe(200);
    expect((await call('keyward.example', 'https://keyward.example')).status).toBe(200);
    for (const [host, origin] of [
      ['app.test', 'http://app.test'],
      ['evil.example', 'https://evil.example'],
      [`localhost:${app.port}`, `http://localhost:${app.port}`],
    ]) {
      expect(csrfMessage(await call(host!, origin!))).toContain(CSRF_FAILURES.originRefused);
    }
  });

  it("Auth.js builds its URLs on AUTH_URL's origin", async () => {
    expect(await signInCallbackUrl(app, { host: 'app.test' })).toMatch(/^https:\/\/keyward\.example/);
  });
});

describe('production without the demo', () => {
  let app: AppServer;

  beforeAll(async () => {
    app = await startApp(
      { ...readme, AUTH_TRUST_HOST: 'true', KEYWARD_BENCH_NAIVE_BASE: `${upstream.origin}/v1/`, KEYWARD_BENCH_NAIVE_KEY: echoKey },
      { testDefaults: false },
    );
  }, 90_000);
  afterAll(async () => {
    await app?.stop();
  });

  it('the home page is Keyward’s own, with no demo text or password', async () => {
    const reply = await send(app, 'GET', '/', { host: 'app.test' });
    expect(reply.status).toBe(200);
    expect(reply.body).toContain('data-testid="signed-out"');
    expect(reply.body).not.toMatch(/keyward-demo|Keyward demo|\/api\/proxy\/demo/);
  });

  it('the sign-in page is Keyward’s own', async () => {
    const reply = await send(app, 'GET', '/signin', { host: 'app.test' });
    expect(reply.status).toBe(200);
    expect(reply.body).toContain('data-testid="local-sign-in"');
  });

  it('pages carry a script-src nonce of their own (proxy.ts); API answers keep the policy without scripts', async () => {
    const nonces = new Set<string>();
    for (const path of ['/signin', '/signin', '/']) nonces.add(expectNoncedPage(await send(app, 'GET', path, { host: 'app.test' })));
    // Not-found pages too, at paths that begin like what proxy.ts leaves out.
    for (const path of ['/no-such-page', '/favicon.ico', '/_next/imagex', '/icon.svg/x']) {
      nonces.add(expectNoncedPage(await send(app, 'GET', path, { host: 'app.test' }), 404));
    }
    expect(nonces.size).toBe(7);
    // What proxy.ts leaves out runs no script: JSON, and a not-found page under /api/.
    for (const path of ['/api/session', '/api/no-such-route']) {
      const answer = await send(app, 'GET', path, { host: 'app.test' });
      expect(answer.headers['content-security-policy'], path).toBe("script-src 'none'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'");
    }
    // Under /api/proxy, where answers hold what upstreams sent, a sandbox that loads nothing, Keyward's own errors too.
    const proxied = await send(app, 'GET', '/api/proxy/no-such-upstream/x', { host: 'app.test' });
    expect(proxied.status).toBe(404);
    expect(proxied.headers['content-security-policy']).toBe("sandbox; default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
  });

  it('the benchmark’s naive route is not served, even with its variables set', async () => {
    const before = upstream.requests.length;
    expect((await send(app, 'GET', '/api/bench/naive/items/1', { host: 'app.test' })).status).toBe(404);
    expect(upstream.requests.length).toBe(before);
  });
});

describe('npm start (the fast lane, Next in its own process) behind a real host name, with the README settings', () => {
  // `KEYWARD_STORE=memory` is refused by npm start: the README's default, the embedded SQLite file, in a temp folder.
  const laneSettings = () => {
    const rest = { ...readme };
    delete rest.KEYWARD_STORE;
    return { ...rest, KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-deploy-lane-')), 'keyward.db') };
  };

  describe('trusting the Host header (AUTH_TRUST_HOST=true)', () => {
    let app: AppServer;
    let cookie: string;

    beforeAll(async () => {
      app = await startFastLane({ ...laneSettings(), AUTH_TRUST_HOST: 'true' }, { testDefaults: false });
      cookie = await signIn(app.url, 'alice', password);
    }, 90_000);
    afterAll(async () => {
      const output = app?.output() ?? '';
      await app?.stop();
      expect(findLeak(output, secrets) === null, 'a secret leaked into the log').toBe(true);
    });

    it("pages from Next's process carry a script-src nonce of their own (proxy.ts)", async () => {
      const first = expectNoncedPage(await send(app, 'GET', '/signin', { host: 'app.test' }));
      expect(expectNoncedPage(await send(app, 'GET', '/', { cookie, host: 'app.test' }))).not.toBe(first);
    });

    it("Auth.js in Next's process builds its URLs on the trusted host", async () => {
      expect((await authProviders(app, { host: 'app.test' })).credentials!.callbackUrl).toBe('http://app.test/api/auth/callback/credentials');
      expect(await signInCallbackUrl(app, { host: 'app.test' })).toBe('http://app.test');
    });

    it("Auth.js answers in Next's process on the real host (no UntrustedHost), its pages not cached", async () => {
      const reply = await send(app, 'GET', '/api/auth/csrf', { host: 'app.test' });
      expect(reply.status).toBe(200);
      expect(reply.headers['cache-control']).toBe('private, no-store');
      expect(reply.headers['set-cookie']).toEqual(expect.arrayContaining([expect.stringMatching(/csrf-token=/)]));
      expectNoLeak(reply);
    });

    it("Keyward's own API in Next's process takes the app.test origin and refuses the internal one", async () => {
      const other = await signIn(app.url, 'alice', password);
      const refused = await send(app, 'POST', '/api/session/logout', { cookie: other, host: 'app.test', origin: `http://localhost:${app.port}`, 'x-keyward-csrf': '1' });
      expect(csrfMessage(refused)).toContain(CSRF_FAILURES.originRefused);
      const reply = await send(app, 'POST', '/api/session/logout', { cookie: other, host: 'app.test', origin: 'http://app.test', 'x-keyward-csrf': '1' });
      expect(reply.status).toBe(200);
      expect((await send(app, 'GET', '/api/session', { cookie: other, host: 'app.test' })).status).toBe(401);
    });

    it('a user added to the users file signs in without a restart', async () => {
      const newcomer = randomSecret('pw');
      expect((await signInAttempt(app.url, 'bo', newcomer)).cookie).toBeNull();
      const edited = await writeUsersFile([
        { username: 'alice', password, roles: ['user'] },
        { username: 'bo', password: newcomer, roles: ['user'] },
      ]);
      copyFileSync(edited, readme.KEYWARD_USERS_FILE!);
      // The file is checked for a change at most every USERS_RECHECK_MS, at a sign-in.
      await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 200));
      expect((await signInAttempt(app.url, 'bo', newcomer)).cookie).not.toBeNull();
    });

    it("a role taken away or a user removed in the users file applies to sessions already signed in, in both processes; a removed user stays signed out", async () => {
      const carolPassword = randomSecret('pw');
      const writeUsers = async (carolRoles: string[] | null) => {
        const users = [{ username: 'alice', password, roles: ['user'] }];
        if (carolRoles) users.push({ username: 'carol', password: carolPassword, roles: carolRoles });
        copyFileSync(await writeUsersFile(users), readme.KEYWARD_USERS_FILE!);
        // Each process checks the file for a change at most every USERS_RECHECK_MS, at a look-up.
        await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 200));
      };
      await writeUsers(['user', 'admin']);
      const carol = await signIn(app.url, 'carol', carolPassword);
      const headers = { cookie: carol, host: 'app.test', origin: 'http://app.test', 'x-keyward-csrf': '1' };
      // The fast lane's process: a proxied call on an admin-only route. Next's: Keyward's and Auth.js's session views.
      const remove = () => send(app, 'DELETE', '/api/proxy/echo/items/7', headers);
      const keywardSession = () => send(app, 'GET', '/api/session', headers);
      const authSession = () => send(app, 'GET', '/api/auth/session', { cookie: carol, host: 'app.test' });
      expect((await remove()).status).toBe(200);
      expect(JSON.parse((await keywardSession()).body).roles).toEqual(['user', 'admin']);
      expect(JSON.parse((await authSession()).body).roles).toEqual(['user', 'admin']);

      await writeUsers(['user']);
      const refused = await remove();
      expect(refused.status).toBe(403);
      expect(JSON.parse(refused.body).error.code).toBe('forbidden');
      expect(JSON.parse((await keywardSession()).body).roles).toEqual(['user']);
      const renewed = await authSession();
      expect(JSON.parse(renewed.body).roles).toEqual(['user']);
      // Auth.js writes the roles the file gives into the cookie it renews.
      const renewedCookie = (renewed.headers['set-cookie'] as string[]).find((line) => line.startsWith(`${SESSION_COOKIE}=`))!;
      const sealed = await decode({ token: renewedCookie.slice(SESSION_COOKIE.length + 1).split(';')[0]!, secret: sessionSecrets.AUTH_SECRET, salt: SESSION_COOKIE });
      expect(sealed).toMatchObject({ sub: 'local:carol', roles: ['user'] });
      const admin = await send(app, 'GET', '/admin', { cookie: carol, host: 'app.test' });
      expect(admin.body).toContain('data-testid="admin-forbidden"');

      await writeUsers(null);
      expect((await send(app, 'GET', '/api/proxy/echo/items/7', headers)).status).toBe(401);
      expect((await keywardSession()).status).toBe(401);
      const ended = await authSession();
      expect(JSON.parse(ended.body)).toBeNull();
      expect(ended.headers['set-cookie']).toEqual(expect.arrayContaining([expect.stringMatching(/^__Host-keyward\.session=;/)]));
      // alice, still in the file, is untouched.
      expect((await send(app, 'GET', '/api/proxy/echo/items/7', { ...headers, cookie })).status).toBe(200);

      // Taken out of the file, carol was signed out everywhere: her name put back revives none of her sessions.
      await writeUsers(['user']);
      expect((await send(app, 'GET', '/api/proxy/echo/items/7', headers)).status).toBe(401);
      const again = await signIn(app.url, 'carol', carolPassword);
      expect((await send(app, 'GET', '/api/proxy/echo/items/7', { ...headers, cookie: again })).status).toBe(200);
      expectNoLeak(refused);
    });

    it('a new password in the users file signs out every session signed in with the old one, in both processes', async () => {
      const oldPassword = randomSecret('pw');
      const newPassword = randomSecret('pw');
      const writeDan = async (danPassword: string) => {
        const users = [
          { username: 'alice', password, roles: ['user'] },
          { username: 'dan', password: danPassword, roles: ['user'] },
        ];
        copyFileSync(await writeUsersFile(users), readme.KEYWARD_USERS_FILE!);
        await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 200));
      };
      await writeDan(oldPassword);
      const dan = await signIn(app.url, 'dan', oldPassword);
      const headers = { cookie: dan, host: 'app.test', origin: 'http://app.test', 'x-keyward-csrf': '1' };
      expect((await send(app, 'GET', '/api/proxy/echo/items/7', headers)).status).toBe(200);

      // Only dan's hash changes: his roles, claims and name stay as they were. He signs in with the new password
      // first (in Next's process), before the fast lane has looked at the file since the edit: reading it then
      // must not end the new session.
      await writeDan(newPassword);
      expect((await signInAttempt(app.url, 'dan', oldPassword)).cookie).toBeNull();
      const again = await signIn(app.url, 'dan', newPassword);
      expect((await send(app, 'GET', '/api/proxy/echo/items/7', { ...headers, cookie: again })).status).toBe(200);
      expect((await send(app, 'GET', '/api/proxy/echo/items/7', headers)).status).toBe(401);
      expect((await send(app, 'GET', '/api/session', headers)).status).toBe(401);
      const ended = await send(app, 'GET', '/api/auth/session', { cookie: dan, host: 'app.test' });
      expect(JSON.parse(ended.body)).toBeNull();
      expect((await send(app, 'GET', '/api/proxy/echo/items/7', { ...headers, cookie: again })).status).toBe(200);
      // alice, whose line did not change, is untouched.
      expect((await send(app, 'GET', '/api/proxy/echo/items/7', { ...headers, cookie })).status).toBe(200);
    });

    it('a proxied POST on app.test passes in the fast lane; a foreign origin is refused', async () => {
      const post = (origin: string) =>
        send(app, 'POST', '/api/proxy/echo/items', { cookie, host: 'app.test', origin, 'x-keyward-csrf': '1', 'content-type': 'application/json' }, '{}');
      const ok = await post('http://app.test');
      expect(ok.status).toBe(200);
      expectNoLeak(ok);
      expect(csrfMessage(await post('https://evil.example'))).toContain(CSRF_FAILURES.originRefused);
    });
  });

  describe('with AUTH_URL', () => {
    let app: AppServer;

    beforeAll(async () => {
      app = await startFastLane({ ...laneSettings(), AUTH_URL: 'https://keyward.example' }, { testDefaults: false });
    }, 90_000);
    afterAll(async () => {
      await app?.stop();
    });

    it("Auth.js in Next's process builds its URLs on AUTH_URL's origin, whatever Host says", async () => {
      expect(await signInCallbackUrl(app, { host: 'app.test' })).toMatch(/^https:\/\/keyward\.example/);
    });
  });
});
