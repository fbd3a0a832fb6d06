import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CSRF_FAILURES } from '../../lib/core/csrf/check';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { signIn, startApp, startFastLane, type AppServer } from '../fixtures/app-server';
import { writeConfigFile } from '../fixtures/config';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';
import { rawRequest, type RawResponse as Reply } from '../fixtures/raw-http';
import { findLeak } from '../fixtures/claims-session';

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

function csrfMessage(reply: Reply): string {
  expect(reply.status).toBe(403);
  const { error } = JSON.parse(reply.body) as { error: { code: string; message: string } };
  expect(error.code).toBe('csrf_failed');
  return error.message;
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

  beforeAll(async () => {
    app = await startApp({ ...readme, AUTH_TRUST_HOST: 'true' }, { testDefaults: false });
    cookie = await signIn(app.url, 'alice', password);
  }, 90_000);
  afterAll(async () => {
    const output = app?.output() ?? '';
    await app?.stop();
    expect(findLeak(output, secrets) === null, 'a secret leaked into the log').toBe(true);
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
});

describe('behind a real host name with AUTH_URL', () => {
  let app: AppServer;
  let cookie: string;

  beforeAll(async () => {
    app = await startApp({ ...readme, AUTH_URL: 'https://keyward.example' }, { testDefaults: false });
    cookie = await signIn(app.url, 'alice', password);
  }, 90_000);
  afterAll(async () => {
    await app?.stop();
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
    const reply = await send(app, 'GET', '/api/auth/signin', { host: 'app.test' });
    expect(reply.status).toBe(302);
    const location = new URL(String(reply.headers.location), 'https://keyward.example');
    expect(location.pathname).toBe('/signin');
    expect(location.searchParams.get('callbackUrl')).toMatch(/^https:\/\/keyward\.example/);
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
      const reply = await send(app, 'GET', '/api/auth/signin', { host: 'app.test' });
      expect(reply.status).toBe(302);
      const location = new URL(String(reply.headers.location), 'https://keyward.example');
      expect(location.pathname).toBe('/signin');
      expect(location.searchParams.get('callbackUrl')).toMatch(/^https:\/\/keyward\.example/);
    });
  });
});
