import { sealData } from 'iron-session';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SESSION_COOKIE } from '../../lib/core/session/session';
import { randomSecret } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import {
  APP_ORIGIN,
  bearerFor,
  cookieFor,
  createHarness,
  expectKeywardError,
  expectNoSecrets,
  expectNoSecretsInLogs,
  type Harness,
} from './harness';

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

/** Runs `fn` and asserts the upstream received nothing meanwhile. */
async function noUpstreamCall<T>(fn: () => Promise<T>): Promise<T> {
  const before = h.upstream.requests.length;
  const result = await fn();
  expect(h.upstream.requests.length).toBe(before);
  return result;
}

describe('session: 401 without a valid one, and no upstream call', () => {
  it('no session at all', async () => {
    const result = await noUpstreamCall(() => h.call(['items', '1'], { cookie: false }));
    expectKeywardError(result, 401, 'unauthenticated', h);
  });

  it('a tampered session cookie (one character of the JWE changed)', async () => {
    const value = h.cookie.slice(SESSION_COOKIE.length + 1);
    const index = Math.floor(value.length / 2);
    const flipped = value[index] === 'A' ? 'B' : 'A';
    const tampered = `${SESSION_COOKIE}=${value.slice(0, index)}${flipped}${value.slice(index + 1)}`;
    const result = await noUpstreamCall(() => h.call(['items', '1'], { cookie: tampered }));
    expectKeywardError(result, 401, 'unauthenticated', h);
  });

  it('a session cookie minted with another AUTH_SECRET', async () => {
    const forged = await sessionCookie(randomSecret('other'), { roles: ['user', 'admin'] });
    const result = await noUpstreamCall(() => h.call(['items', '1'], { cookie: forged }));
    expectKeywardError(result, 401, 'unauthenticated', h);
  });

  it('an expired session cookie', async () => {
    const expired = await cookieFor(h, { roles: ['user'] }, -3600);
    const result = await noUpstreamCall(() => h.call(['items', '1'], { cookie: expired }));
    expectKeywardError(result, 401, 'unauthenticated', h);
  });

  it('a session cookie without sid or sub', async () => {
    const { encode } = await import('@auth/core/jwt');
    const token = await encode({ token: { sub: 'local:alice', roles: ['user'] }, secret: h.env.AUTH_SECRET!, salt: SESSION_COOKIE, maxAge: 600 });
    const result = await noUpstreamCall(() => h.call(['items', '1'], { cookie: `${SESSION_COOKIE}=${token}` }));
    expectKeywardError(result, 401, 'unauthenticated', h);
  });

  it('a valid session cookie passes (control)', async () => {
    const result = await h.call(['items', '1']);
    expect(result.response.status).toBe(200);
    expectNoSecrets(h.secrets, result.response, result.text);
  });
});

describe('sealed bearer tokens (cookie-less clients)', () => {
  it('work without the CSRF header, also for state-changing methods without Origin', async () => {
    const authorization = await bearerFor(h, { roles: ['user'] });
    const get = await h.call(['items', '1'], { cookie: false, csrf: false, headers: { authorization } });
    expect(get.response.status).toBe(200);
    const put = await h.call(['items', '1'], {
      method: 'PUT',
      cookie: false,
      csrf: false,
      origin: false,
      headers: { authorization, 'content-type': 'application/json' },
      body: '{"name":"x"}',
    });
    expect(put.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.method).toBe('PUT');
    // The session token is Keyward's, not the upstream's: it is never forwarded.
    expect(seen.headers.authorization).toBeUndefined();
    expect(JSON.stringify(seen.rawHeaders)).not.toContain(authorization.slice(7, 40));
    expect(seen.headers['x-api-key']).toBe(h.keys.header);
    expectNoSecrets(h.secrets, put.response, put.text);
  });

  it('an expired bearer token: 401', async () => {
    const authorization = await bearerFor(h, { roles: ['user'] }, -60);
    const result = await noUpstreamCall(() => h.call(['items', '1'], { cookie: false, csrf: false, headers: { authorization } }));
    expectKeywardError(result, 401, 'unauthenticated', h);
  });

  it('a bearer token sealed with another secret: 401', async () => {
    const sealed = await sealData(
      { typ: 'keyward.session', sub: 'local:mallory', roles: ['admin'], sid: 's', exp: Math.floor(Date.now() / 1000) + 600 },
      { password: { 1: randomSecret('other') } },
    );
    const result = await noUpstreamCall(() =>
      h.call(['items', '1'], { cookie: false, csrf: false, headers: { authorization: `Bearer ${sealed}` } }),
    );
    expectKeywardError(result, 401, 'unauthenticated', h);
  });

  it('a sealed payload of another type (not keyward.session): 401', async () => {
    const sealed = await sealData(
      { typ: 'other', sub: 'local:mallory', roles: ['user'], sid: 's', exp: Math.floor(Date.now() / 1000) + 600 },
      { password: { 1: h.env.KEYWARD_SESSION_SECRET! } },
    );
    const result = await noUpstreamCall(() =>
      h.call(['items', '1'], { cookie: false, csrf: false, headers: { authorization: `Bearer ${sealed}` } }),
    );
    expectKeywardError(result, 401, 'unauthenticated', h);
  });

  it('a garbage bearer token: 401', async () => {
    for (const authorization of ['Bearer %', 'Bearer not-a-sealed-token-at-all-123', 'Basic Zm9vOmJhcg==']) {
      const result = await noUpstreamCall(() => h.call(['items', '1'], { cookie: false, csrf: false, headers: { authorization } }));
      expectKeywardError(result, 401, 'unauthenticated', h);
    }
  });
});

describe('CSRF for cookie sessions: 403 and no upstream call', () => {
  it('missing X-Keyward-CSRF on a GET', async () => {
    const result = await noUpstreamCall(() => h.call(['items', '1'], { csrf: false }));
    expectKeywardError(result, 403, 'csrf_failed', h);
  });

  it('X-Keyward-CSRF with another value', async () => {
    const result = await noUpstreamCall(() => h.call(['items', '1'], { csrf: false, headers: { 'x-keyward-csrf': 'true' } }));
    expectKeywardError(result, 403, 'csrf_failed', h);
  });

  it('missing X-Keyward-CSRF on a POST from the allowed origin', async () => {
    const result = await noUpstreamCall(() => h.call(['items'], { method: 'POST', csrf: false, body: '{}' }));
    expectKeywardError(result, 403, 'csrf_failed', h);
  });

  it('POST with a cross-site Origin', async () => {
    const result = await noUpstreamCall(() =>
      h.call(['items'], { method: 'POST', headers: { origin: 'https://evil.example', 'content-type': 'application/json' }, body: '{}' }),
    );
    expectKeywardError(result, 403, 'csrf_failed', h);
  });

  it('POST with Origin: null, or with no Origin', async () => {
    const nullOrigin = await noUpstreamCall(() => h.call(['items'], { method: 'POST', headers: { origin: 'null' }, body: '{}' }));
    expectKeywardError(nullOrigin, 403, 'csrf_failed', h);
    const none = await noUpstreamCall(() => h.call(['items'], { method: 'POST', origin: false, body: '{}' }));
    expectKeywardError(none, 403, 'csrf_failed', h);
  });

  it('POST from a look-alike origin (suffix, other scheme, other port)', async () => {
    for (const origin of [`${APP_ORIGIN}.evil.example`, APP_ORIGIN.replace('https:', 'http:'), `${APP_ORIGIN}:8443`]) {
      const result = await noUpstreamCall(() => h.call(['items'], { method: 'POST', headers: { origin }, body: '{}' }));
      expectKeywardError(result, 403, 'csrf_failed', h);
    }
  });

  it('Sec-Fetch-Site: cross-site (GET and POST), and same-site', async () => {
    const get = await noUpstreamCall(() => h.call(['items', '1'], { headers: { 'sec-fetch-site': 'cross-site' } }));
    expectKeywardError(get, 403, 'csrf_failed', h);
    const post = await noUpstreamCall(() =>
      h.call(['items'], { method: 'POST', headers: { 'sec-fetch-site': 'cross-site' }, body: '{}' }),
    );
    expectKeywardError(post, 403, 'csrf_failed', h);
    const sameSite = await noUpstreamCall(() => h.call(['items', '1'], { headers: { 'sec-fetch-site': 'same-site' } }));
    expectKeywardError(sameSite, 403, 'csrf_failed', h);
  });

  it("is recorded without the user: a page on a sibling subdomain (same-site) cannot run up the victim's figures", async () => {
    const recordOf = (requestId: string) =>
      h.logs
        .flatMap((line) => line.split('\n').filter(Boolean))
        .map((line) => JSON.parse(line) as { proxy?: { requestId: string; userId: string | null; sessionId: string | null } })
        .find((line) => line.proxy?.requestId === requestId)?.proxy;
    const forged = await h.call(['items', '1'], { csrf: false, headers: { 'sec-fetch-site': 'same-site' } });
    expectKeywardError(forged, 403, 'csrf_failed', h);
    expect(recordOf(forged.json<{ error: { requestId: string } }>().error.requestId)).toMatchObject({ userId: null, sessionId: null });
    // Control: the same cookie's call with the header is the user's.
    const own = await h.call(['items', '1']);
    expect(own.response.status).toBe(200);
    expect(recordOf(own.response.headers.get('x-request-id')!)?.userId).toEqual(expect.any(String));
  });

  it('POST with the allowed Origin, the CSRF header and Sec-Fetch-Site: same-origin passes', async () => {
    const before = h.upstream.requests.length;
    const body = JSON.stringify({ name: 'widget' });
    const result = await h.call(['items'], {
      method: 'POST',
      headers: { 'sec-fetch-site': 'same-origin', 'content-type': 'application/json' },
      body,
    });
    expect(result.response.status).toBe(200);
    expect(h.upstream.requests.length).toBe(before + 1);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.method).toBe('POST');
    expect(seen.url).toBe('/v1/items');
    expect(seen.bodyBytes).toBe(Buffer.byteLength(body));
    // Keyward's own headers are not forwarded either.
    expect(seen.headers['x-keyward-csrf']).toBeUndefined();
    expect(seen.headers.origin).toBeUndefined();
    expect(seen.headers['sec-fetch-site']).toBeUndefined();
    expectNoSecrets(h.secrets, result.response, result.text);
  });
});
