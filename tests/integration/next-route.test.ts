import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKeyward } from '../../lib/next/keyward';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { expectNoSecrets } from './harness';
import { writeConfigFile } from '../fixtures/config';

/**
 * The Next route handler (app/api/proxy/[upstream]/[[...path]]/route.ts exports `keyward.proxyRoute` for every
 * method), called the way Next calls it: a Request and `{ params: Promise }`. It builds its runtime from
 * process.env on first use, so process.env is prepared before the first call.
 */
const { proxyRoute } = createKeyward();
let upstream: TestUpstream;
let cookie: string;
const key = randomSecret('route');
const sessionSecrets = testSessionSecrets();
const ORIGIN = 'https://app.keyward.test';

beforeAll(async () => {
  upstream = await startUpstream();
  const configPath = writeConfigFile({
    upstreams: {
      echo: {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'ROUTE_TEST_KEY' } },
        routes: [
          { method: 'GET', path: '/items/:id', roles: ['user'] },
          { method: 'POST', path: '/items', roles: ['user'], maxRequestBytes: 256 },
        ],
      },
    },
  });
  Object.assign(process.env, {
    ...sessionSecrets,
    ROUTE_TEST_KEY: key,
    KEYWARD_CONFIG: configPath,
    KEYWARD_ALLOWED_ORIGINS: ORIGIN,
    KEYWARD_LOG_LEVEL: 'silent',
    KEYWARD_STORE: 'memory',
  });
  cookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { roles: ['user'] });
});

afterAll(async () => {
  await upstream.close();
});

const secrets = () => [key, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET];

function context(upstreamId: string, path: string[]) {
  return { params: Promise.resolve({ upstream: upstreamId, path }) };
}

describe('proxyRoute (the Next route handler)', () => {
  it('forwards a signed-in GET with the key attached, and returns no secret', async () => {
    const request = new Request(`${ORIGIN}/api/proxy/echo/items/5?x=1`, {
      headers: { cookie, 'x-keyward-csrf': '1', authorization: 'Bearer client', 'accept-encoding': 'gzip' },
    });
    const response = await proxyRoute(request, context('echo', ['items', '5']));
    const text = await response.text();
    expect(response.status).toBe(200);
    expect(response.headers.get('cache-control')).toBe('private, no-store');
    const seen = upstream.requests.at(-1)!;
    expect(seen.url).toBe('/v1/items/5?x=1');
    expect(seen.headers['x-api-key']).toBe(key);
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers.cookie).toBeUndefined();
    expect(seen.headers['accept-encoding']).toBe('identity');
    expect(text).toContain('[REDACTED]');
    expectNoSecrets(secrets(), response, text);
  });

  it('POST with the allowed origin and a body', async () => {
    const body = JSON.stringify({ name: 'n' });
    const request = new Request(`${ORIGIN}/api/proxy/echo/items`, {
      method: 'POST',
      headers: { cookie, 'x-keyward-csrf': '1', origin: ORIGIN, 'content-type': 'application/json' },
      body,
    });
    const response = await proxyRoute(request, context('echo', ['items']));
    const text = await response.text();
    expect(response.status).toBe(200);
    expect(upstream.requests.at(-1)!.bodyBytes).toBe(body.length);
    expectNoSecrets(secrets(), response, text);
  });

  it('refuses decoded traversal segments and unknown upstream ids without calling the upstream', async () => {
    const before = upstream.requests.length;
    const cases: Array<[string, string[], number]> = [
      ['echo', ['items', '../../admin'], 400],
      ['echo', ['items', 'https://evil.example/x'], 400],
      ['echo', ['items', '\uff0e\uff0e'], 400],
      ['__proto__', ['items', '1'], 404],
      ['constructor', ['items', '1'], 404],
      ['crm/evil.com', ['items', '1'], 404],
    ];
    for (const [id, path, status] of cases) {
      const request = new Request(`${ORIGIN}/api/proxy/x`, { headers: { cookie, 'x-keyward-csrf': '1' } });
      const response = await proxyRoute(request, context(id, path));
      const text = await response.text();
      expect(response.status, `${id} ${JSON.stringify(path)}`).toBe(status);
      expect(JSON.parse(text)).toMatchObject({ error: { code: status === 400 ? 'bad_path' : 'upstream_not_found' } });
      expectNoSecrets(secrets(), response, text);
    }
    expect(upstream.requests.length).toBe(before);
  });

  it('a request without a path (params.path undefined) is a 404, not a crash', async () => {
    const request = new Request(`${ORIGIN}/api/proxy/echo`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    const response = await proxyRoute(request, { params: Promise.resolve({ upstream: 'echo' }) });
    expect(response.status).toBe(404);
    await response.arrayBuffer();
  });

  it('no session: 401; missing CSRF header: 403', async () => {
    const before = upstream.requests.length;
    const anonymous = await proxyRoute(new Request(`${ORIGIN}/api/proxy/echo/items/1`), context('echo', ['items', '1']));
    expect(anonymous.status).toBe(401);
    await anonymous.arrayBuffer();
    const noCsrf = await proxyRoute(new Request(`${ORIGIN}/api/proxy/echo/items/1`, { headers: { cookie } }), context('echo', ['items', '1']));
    expect(noCsrf.status).toBe(403);
    await noCsrf.arrayBuffer();
    expect(upstream.requests.length).toBe(before);
  });
});
