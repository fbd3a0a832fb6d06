import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { NextRequest } from 'next/server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKeyward, type Keyward } from '../../lib/next/keyward';
import { githubConnectionAt } from '../fixtures/github-connection';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { writeUsersFile } from '../fixtures/users';

/**
 * A connect started by one user does not complete for them once another user signs in over their session in the
 * same browser. The connect's callback arrives by the provider's cross-site redirect, which never carries the
 * SameSite=Strict session cookie, so the callback cannot see who is signed in now: a sign-in (and a sign-out)
 * clears the pending connects' binding cookies instead.
 *
 * Keyward's real Auth.js handlers and connect routes (createKeyward), local users with real scrypt hashes, the
 * memory store, and a browser simulated by a cookie jar that applies every Set-Cookie. The provider is a fake
 * GitHub token endpoint on loopback that grants every code.
 */
const ORIGIN = 'https://app.keyward.test';
const BINDING = '__Host-keyward.connect-github';
const CLEARED = `${BINDING}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax`;
const passwords = { ada: randomSecret('ada_pw'), bob: randomSecret('bob_pw') };
let kw: Keyward;
let github: Server;

/** A browser's cookies for the site: Set-Cookie applied as it comes (an empty value or Max-Age=0 deletes). */
class Jar {
  readonly cookies = new Map<string, string>();
  keep(response: Response): Response {
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const index = pair!.indexOf('=');
      const [name, value] = [pair!.slice(0, index), pair!.slice(index + 1)];
      if (value === '' || /;\s*max-age=0/i.test(line)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    return response;
  }
  header(only?: (name: string) => boolean): string {
    return [...this.cookies].filter(([name]) => !only || only(name)).map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

async function signIn(jar: Jar, username: 'ada' | 'bob'): Promise<Response> {
  const csrf = jar.keep(await kw.authGetRoute(new NextRequest(`${ORIGIN}/api/auth/csrf`, { headers: { cookie: jar.header() } })));
  const { csrfToken } = (await csrf.json()) as { csrfToken: string };
  const response = await kw.authPostRoute(
    new NextRequest(`${ORIGIN}/api/auth/callback/credentials`, {
      method: 'POST',
      headers: { cookie: jar.header(), 'content-type': 'application/x-www-form-urlencoded', origin: ORIGIN },
      body: new URLSearchParams({ csrfToken, username, password: passwords[username], callbackUrl: '/' }).toString(),
    }),
  );
  await response.arrayBuffer();
  expect(jar.keep(response).status).toBe(302);
  expect(jar.cookies.has('__Host-keyward.session')).toBe(true);
  return response;
}

/** GET /api/connect/github: the provider's authorization URL; the binding cookie is in the jar. */
async function startConnect(jar: Jar): Promise<URL> {
  const response = jar.keep(
    await kw.connectStartRoute(new Request(`${ORIGIN}/api/connect/github`, { headers: { cookie: jar.header() } }), {
      params: Promise.resolve({ provider: 'github' }),
    }),
  );
  expect(response.status).toBe(303);
  expect(jar.cookies.has(BINDING)).toBe(true);
  return new URL(response.headers.get('location')!);
}

/** The provider's redirect back, with the cookies a cross-site navigation carries (Lax: not the Strict session). */
async function finishConnect(jar: Jar, authorize: URL): Promise<string> {
  const back = new URL(authorize.searchParams.get('redirect_uri')!);
  back.search = new URLSearchParams({ code: 'the-code', state: authorize.searchParams.get('state')! }).toString();
  const response = await kw.connectCallbackRoute(
    new Request(back, { headers: { cookie: jar.header((name) => name !== '__Host-keyward.session') } }),
    { params: Promise.resolve({ provider: 'github' }) },
  );
  return /url=([^"]*)"/.exec(await jar.keep(response).text())![1]!;
}

async function connectionsOf(jar: Jar): Promise<string[]> {
  const response = await kw.connectionsRoute(
    new Request(`${ORIGIN}/api/connections`, { headers: { cookie: jar.header(), 'x-keyward-csrf': '1' } }),
    { params: Promise.resolve({}) },
  );
  return ((await response.json()) as { connections: { provider: string }[] }).connections.map((c) => c.provider);
}

beforeAll(async () => {
  github = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ access_token: 'gho_granted', token_type: 'bearer', scope: 'read:user' }));
  });
  await new Promise<void>((resolve) => github.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(github.address() as AddressInfo).port}`;
  Object.assign(process.env, {
    ...testSessionSecrets(),
    AUTH_URL: ORIGIN,
    KEYWARD_STORE: 'memory',
    KEYWARD_LOG_LEVEL: 'silent',
    KEYWARD_VAULT_SECRET: randomSecret('vault'),
    KEYWARD_USERS_FILE: await writeUsersFile([
      { username: 'ada', password: passwords.ada, roles: ['user'] },
      { username: 'bob', password: passwords.bob, roles: ['user'] },
    ]),
    GH_CLIENT_ID: 'Iv1.signin-test',
    GH_CLIENT_SECRET: randomSecret('gh_secret'),
  });
  kw = createKeyward({
    connections: githubConnectionAt(origin),
  });
});

afterAll(() => {
  github?.closeAllConnections();
  github?.close();
});

describe('a pending connect ends when the browser signs in or out', () => {
  it("another user's sign-in clears it: the callback is expired, and connects nobody", async () => {
    const browser = new Jar();
    await signIn(browser, 'ada');
    const authorize = await startConnect(browser);
    // Ada leaves the provider's consent page open; Bob signs in on the same computer.
    const bob = await signIn(browser, 'bob');
    expect(bob.headers.getSetCookie()).toContain(CLEARED);
    expect(browser.cookies.has(BINDING)).toBe(false);
    // Ada's consent lands now.
    expect(await finishConnect(browser, authorize)).toContain('connect_error=expired');
    expect(await connectionsOf(browser)).toEqual([]);
  });

  it('without another sign-in, the connect completes (the binding is kept by session reads)', async () => {
    const browser = new Jar();
    await signIn(browser, 'ada');
    const authorize = await startConnect(browser);
    const read = browser.keep(await kw.authGetRoute(new NextRequest(`${ORIGIN}/api/auth/session`, { headers: { cookie: browser.header() } })));
    expect(read.headers.getSetCookie().some((line) => line.startsWith(`${BINDING}=`))).toBe(false);
    expect(await finishConnect(browser, authorize)).toContain('connected=github');
    expect(await connectionsOf(browser)).toEqual(['github']);
  });

  it("Auth.js's sign-out and Keyward's logout clear it too", async () => {
    const browser = new Jar();
    await signIn(browser, 'bob');
    await startConnect(browser);
    const csrf = browser.keep(await kw.authGetRoute(new NextRequest(`${ORIGIN}/api/auth/csrf`, { headers: { cookie: browser.header() } })));
    const { csrfToken } = (await csrf.json()) as { csrfToken: string };
    const signOut = await kw.authPostRoute(
      new NextRequest(`${ORIGIN}/api/auth/signout`, {
        method: 'POST',
        headers: { cookie: browser.header(), 'content-type': 'application/x-www-form-urlencoded', origin: ORIGIN },
        body: new URLSearchParams({ csrfToken, callbackUrl: '/' }).toString(),
      }),
    );
    expect(signOut.headers.getSetCookie()).toContain(CLEARED);

    const again = new Jar();
    await signIn(again, 'bob');
    await startConnect(again);
    const logout = await kw.logoutRoute(
      new Request(`${ORIGIN}/api/session/logout`, { method: 'POST', headers: { cookie: again.header(), 'x-keyward-csrf': '1', origin: ORIGIN } }),
      { params: Promise.resolve({}) },
    );
    expect(logout.status).toBe(200);
    expect(logout.headers.getSetCookie()).toContain(CLEARED);
  });
});
