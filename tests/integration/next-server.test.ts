import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signIn, startApp, type AppServer } from '../fixtures/app-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';
import { writeConfigFile } from '../fixtures/config';
import { rawRequest, type RawResponse } from '../fixtures/raw-http';
import { findLeak } from '../fixtures/claims-session';

/**
 * Through the real production server (`next start`; `npm test` runs `next build` first): Next decodes
 * %2F, %5C, %3F, %23, %00 … inside the catch-all params before the handler sees them, so these paths are
 * sent raw with node:http (fetch would normalise `..`).
 */
let app: AppServer;
let upstream: TestUpstream;
let cookie: string;
const echoKey = randomSecret('echo');
const crmKey = randomSecret('crm');
const sessionSecrets = testSessionSecrets();
const password = randomSecret('pw');
const secrets = [echoKey, crmKey, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET, password];

/** Sends the path exactly as given, with the session cookie and CSRF header unless told otherwise. */
function raw(method: string, path: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  return rawRequest(app.port, method, path, { cookie, 'x-keyward-csrf': '1', ...headers });
}

function expectNoLeak(response: RawResponse): void {
  const text = `${JSON.stringify(response.headers)}\n${response.body}`;
  expect(findLeak(text, secrets) === null, 'a secret leaked').toBe(true);
}

beforeAll(async () => {
  upstream = await startUpstream();
  const configPath = writeConfigFile({
    upstreams: {
      // `GET /*` accepts any path: only segment validation stands between a bad path and the upstream.
      echo: {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
        routes: [
          { method: 'GET', path: '/items/:id', roles: ['user'] },
          { method: 'GET', path: '/*' },
        ],
      },
      crm: {
        baseUrl: `${upstream.origin}/crm/`,
        auth: { type: 'bearer', secret: { env: 'CRM_KEY' } },
        routes: [{ method: 'GET', path: '/*' }],
      },
    },
  });
  const usersFile = await writeUsersFile([{ username: 'alice', password, roles: ['user'] }]);
  app = await startApp({
    ...sessionSecrets,
    ECHO_KEY: echoKey,
    CRM_KEY: crmKey,
    KEYWARD_CONFIG: configPath,
    KEYWARD_USERS_FILE: usersFile,
    KEYWARD_STORE: 'memory',
  });
  cookie = await signIn(app.url, 'alice', password);
}, 90_000);

afterAll(async () => {
  await app?.stop();
  await upstream?.close();
  if (app) {
    const output = app.output();
    expect(findLeak(output, secrets) === null, 'a secret leaked into the server log').toBe(true);
  }
});

describe('the real Next server', () => {
  it('happy path: a signed-in GET reaches the upstream with the key, and nothing secret comes back', async () => {
    const before = upstream.requests.length;
    const response = await fetch(`${app.url}/api/proxy/echo/items/42?x=1`, {
      headers: { cookie, 'x-keyward-csrf': '1', authorization: 'Bearer client-token', 'accept-encoding': 'gzip, br' },
    });
    const text = await response.text();
    expect(response.status).toBe(200);
    expect(upstream.requests.length).toBe(before + 1);
    const seen = upstream.requests.at(-1)!;
    expect(seen.url).toBe('/v1/items/42?x=1');
    expect(seen.headers['x-api-key']).toBe(echoKey);
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers.cookie).toBeUndefined();
    expect(seen.headers['accept-encoding']).toBe('identity');
    expect(response.headers.get('cache-control')).toBe('private, no-store');
    expect(response.headers.get('content-encoding')).toBeNull();
    expect(text).toContain('[REDACTED]');
    expectNoLeak({ status: response.status, headers: Object.fromEntries(response.headers), body: text });
  });

  it('a wildcard path (control: plain segments through `GET /*` are forwarded)', async () => {
    const response = await raw('GET', '/api/proxy/echo/files/a/b.txt');
    expect(response.status).toBe(200);
    expect(upstream.requests.at(-1)!.url).toBe('/v1/files/a/b.txt');
    expectNoLeak(response);
  });

  it('without a session: 401 and no upstream call', async () => {
    const before = upstream.requests.length;
    const response = await raw('GET', '/api/proxy/echo/items/1', { cookie: '' });
    expect(response.status).toBe(401);
    expect(JSON.parse(response.body)).toMatchObject({ error: { code: 'unauthenticated' } });
    expect(upstream.requests.length).toBe(before);
  });

  const BAD_PATHS: Array<[string, number]> = [
    ['/api/proxy/echo/..%2f..%2fadmin', 400],
    ['/api/proxy/echo/..%2F..%2Fadmin', 400],
    ['/api/proxy/echo/items/..%2f..%2fadmin', 400],
    ['/api/proxy/echo/a%5cb', 400],
    ['/api/proxy/echo/..%5c..%5cadmin', 400],
    ['/api/proxy/echo/%2f%2fevil.com', 400],
    ['/api/proxy/echo/https:%2f%2fevil.com%2fx', 400],
    ['/api/proxy/echo/a%3fb', 400],
    ['/api/proxy/echo/a%23b', 400],
    ['/api/proxy/echo/a%00b', 400],
    ['/api/proxy/echo/a%0d%0ax-injected:%201', 400],
    ['/api/proxy/echo/%40evil.com', 400],
    ['/api/proxy/echo/%ef%bc%8e%ef%bc%8e', 400],
    ['/api/proxy/echo/%ef%bc%8e%ef%bc%8e%ef%bc%8fadmin', 400],
    ['/api/proxy/echo/caf%c3%a9', 400],
    ['/api/proxy/echo/%252e%252e', 400],
    ['/api/proxy/__proto__/x', 404],
    ['/api/proxy/constructor/x', 404],
    ['/api/proxy/crm%2fevil.com/x', 404],
    ['/api/proxy/crm%2Fevil.com/x', 404],
  ];

  for (const [path, expected] of BAD_PATHS) {
    it(`refuses ${path} with ${expected} and no upstream call`, async () => {
      const before = upstream.requests.length;
      const response = await raw('GET', path);
      expect(response.status).toBe(expected);
      // Answered by Keyward's handler (not by Next's router), with its JSON error.
      expect(JSON.parse(response.body)).toMatchObject({ error: { code: expected === 400 ? 'bad_path' : 'upstream_not_found' } });
      expect(upstream.requests.length).toBe(before);
      expectNoLeak(response);
    });
  }

  it('raw `..` segments never reach the upstream (Next normalises or refuses them)', async () => {
    for (const path of ['/api/proxy/echo/../../admin', '/api/proxy/echo/items/../../../x', '/api/proxy/echo/./.']) {
      const before = upstream.requests.length;
      const response = await raw('GET', path);
      expect(response.status, path).not.toBe(200);
      expect(upstream.requests.length, path).toBe(before);
      expectNoLeak(response);
    }
  });

  it('TRACE is refused and never reaches the upstream', async () => {
    const before = upstream.requests.length;
    for (const path of ['/api/proxy/echo/items/1', '/api/proxy/echo/files/x']) {
      const response = await raw('TRACE', path);
      expect(response.status === 0 || response.status >= 400, `TRACE ${path}: ${response.status}`).toBe(true);
      // No cross-site tracing: the request (with its cookie) is not echoed back.
      expect(response.body).not.toContain(cookie.slice(cookie.indexOf('=') + 1, cookie.indexOf('=') + 40));
      expectNoLeak(response);
    }
    expect(upstream.requests.length).toBe(before);
  });

  it('method-override headers are refused', async () => {
    const before = upstream.requests.length;
    const response = await raw('GET', '/api/proxy/echo/items/1', { 'x-http-method-override': 'DELETE' });
    expect(response.status).toBe(400);
    const query = await raw('GET', '/api/proxy/echo/items/1?_method=DELETE');
    expect(query.status).toBe(400);
    expect(upstream.requests.length).toBe(before);
  });
});
