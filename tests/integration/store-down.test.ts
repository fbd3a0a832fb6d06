import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleAudit, handleKeyAction, handleKeyList, handleKeyRevoke } from '../../lib/core/api/admin';
import { handleUserKey } from '../../lib/core/api/keys';
import { handleMobileAuthorize, handleMobileToken } from '../../lib/core/api/mobile';
import { handleAdminRevoke, handleLogout, handleRevokeAll } from '../../lib/core/api/revoke';
import { handleSession } from '../../lib/core/api/session';
import { handleSignInPost } from '../../lib/core/api/sign-in';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { freePort, startApp, type AppServer } from '../fixtures/app-server';
import { capturingLogger, claimsSessionCookie, findLeak } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { bearerToken } from '../fixtures/session';
import { passwordVersionIn, writeUsersFile } from '../fixtures/users';
import { uncalledUpstream } from '../fixtures/config';

/**
 * Issue 11, finding 4: with the store down, every Keyward route answers 503 `store_unavailable` (the
 * documented fail-closed answer), never a 500 and never a success. Each core handler is called with a
 * runtime whose store is a RedisStore pointed at a closed port.
 */
const ORIGIN = 'https://app.keyward.test';
const APP_REDIRECT = 'com.example.keyward:/oauth/callback';
const secrets = testSessionSecrets();
const vaultSecret = randomSecret('vault');
const { logger } = capturingLogger();
let store: RedisStore;
let runtime: Runtime;
let adminCookie: string;

beforeAll(async () => {
  store = new RedisStore(`redis://127.0.0.1:${await freePort()}`, { prefix: `keyward-test:down:${randomUUID()}:`, commandTimeoutMs: 500 });
  runtime = createRuntime({
    env: {
      ...secrets,
      KEYWARD_VAULT_SECRET: vaultSecret,
      SVC_KEY: randomSecret('svc'),
      KEYWARD_ALLOWED_ORIGINS: ORIGIN,
      KEYWARD_MOBILE_REDIRECT_URIS: APP_REDIRECT,
    },
    upstreams: [
      defineUpstream('svc', {
        baseUrl: 'http://127.0.0.1:9/v1/',
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
      defineUpstream('byok', {
        baseUrl: 'http://127.0.0.1:9/v1/',
        auth: { type: 'bearer', secret: { user: 'key' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
    ],
    store,
    logger,
  });
  adminCookie = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:root', roles: ['admin', 'user'] });
});

afterAll(async () => {
  await (runtime?.dispatcher as { close?: () => Promise<void> } | undefined)?.close?.().catch(() => {});
  await store?.close();
});

function request(path: string, init: { method?: string; body?: string; contentType?: string; cookie?: string | null; authorization?: string } = {}): Request {
  const headers = new Headers({ origin: ORIGIN, 'x-keyward-csrf': '1' });
  const cookie = init.cookie === undefined ? adminCookie : init.cookie;
  if (cookie) headers.set('cookie', cookie);
  if (init.authorization) headers.set('authorization', init.authorization);
  if (init.body !== undefined) headers.set('content-type', init.contentType ?? 'application/json');
  return new Request(`${ORIGIN}${path}`, { method: init.method ?? 'GET', headers, body: init.body });
}

async function expectStoreUnavailable(response: Response): Promise<void> {
  const text = await response.text();
  expect(response.status, text).toBe(503);
  expect(response.headers.get('content-type')).toBe('application/json; charset=utf-8');
  expect(response.headers.get('cache-control')).toBe('private, no-store');
  // Transient: the client is told when to try again.
  expect(response.headers.get('retry-after')).toBe('2');
  const body = JSON.parse(text) as { error: { code: string; message: string; requestId: string } };
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error.code).toBe('store_unavailable');
  expect(findLeak(text, [secrets.AUTH_SECRET, secrets.KEYWARD_SESSION_SECRET, vaultSecret])).toBeNull();
}

describe('the store is down: every route answers 503 store_unavailable', () => {
  it('GET /api/session with a cookie session and with a bearer token (was a 500)', async () => {
    await expectStoreUnavailable(await handleSession(request('/api/session'), runtime));
    const bearer = await bearerToken(secrets.KEYWARD_SESSION_SECRET, { sub: 'local:app' });
    await expectStoreUnavailable(await handleSession(request('/api/session', { cookie: null, authorization: `Bearer ${bearer}` }), runtime));
  });

  it('GET /api/session without any session is still 401 (nothing to check in the store)', async () => {
    const response = await handleSession(request('/api/session', { cookie: null }), runtime);
    expect(response.status).toBe(401);
  });

  it('session routes: logout, revoke-all, an admin revoking a user', async () => {
    await expectStoreUnavailable(await handleLogout(request('/api/session/logout', { method: 'POST' }), runtime));
    await expectStoreUnavailable(await handleRevokeAll(request('/api/session/revoke-all', { method: 'POST' }), runtime));
    await expectStoreUnavailable(await handleAdminRevoke(request('/api/admin/users/local:bob/revoke-sessions', { method: 'POST' }), 'local:bob', runtime));
  });

  it('user keys: GET, PUT, DELETE /api/keys/<upstream>', async () => {
    await expectStoreUnavailable(await handleUserKey(request('/api/keys/byok'), 'byok', runtime));
    await expectStoreUnavailable(await handleUserKey(request('/api/keys/byok', { method: 'PUT', body: JSON.stringify({ key: randomSecret('own') }) }), 'byok', runtime));
    await expectStoreUnavailable(await handleUserKey(request('/api/keys/byok', { method: 'DELETE' }), 'byok', runtime));
  });

  it('admin keys and audit: list, add a version, revoke, audit page and JSON Lines export (not a 200 with a broken body)', async () => {
    await expectStoreUnavailable(await handleKeyList(request('/api/admin/keys'), runtime));
    await expectStoreUnavailable(
      await handleKeyAction(request('/api/admin/keys/svc/versions', { method: 'POST', body: JSON.stringify({ key: randomSecret('new') }) }), 'svc', 'versions', runtime),
    );
    await expectStoreUnavailable(await handleKeyRevoke(request('/api/admin/keys/revoke', { method: 'POST', body: JSON.stringify({ fingerprint: '0123456789ab' }) }), runtime));
    await expectStoreUnavailable(await handleAudit(request('/api/admin/audit'), runtime));
    await expectStoreUnavailable(await handleAudit(request('/api/admin/audit?format=jsonl'), runtime));
  });

  it('mobile (OAuth errors): authorize sends temporarily_unavailable back to the app; the token endpoint answers 503 temporarily_unavailable', async () => {
    // RFC 6749 §4.1.2.1: a 503 cannot reach the app through a redirect, so the error is sent to its redirect URI.
    const authorize = await handleMobileAuthorize(
      request(`/api/session/mobile/authorize?${new URLSearchParams({ redirect_uri: APP_REDIRECT, code_challenge: 'a'.repeat(43), code_challenge_method: 'S256', state: 's1' })}`),
      runtime,
    );
    expect(authorize.status).toBe(302);
    const callback = new URL(authorize.headers.get('location')!);
    expect(`${callback.protocol}${callback.pathname}`).toBe(APP_REDIRECT);
    expect(callback.searchParams.get('error')).toBe('temporarily_unavailable');
    expect(callback.searchParams.get('state')).toBe('s1');
    expect(callback.searchParams.has('code')).toBe(false);

    const form = (params: Record<string, string>) =>
      request('/api/session/token', { method: 'POST', cookie: null, body: new URLSearchParams(params).toString(), contentType: 'application/x-www-form-urlencoded' });
    const expectTemporarilyUnavailable = async (response: Response) => {
      const text = await response.text();
      expect(response.status, text).toBe(503);
      expect(response.headers.get('cache-control')).toBe('no-store');
      expect(response.headers.get('retry-after')).toBe('2');
      expect(JSON.parse(text)).toEqual({ error: 'temporarily_unavailable', error_description: expect.any(String) });
      expect(findLeak(text, [secrets.AUTH_SECRET, secrets.KEYWARD_SESSION_SECRET, vaultSecret])).toBeNull();
    };
    await expectTemporarilyUnavailable(
      await handleMobileToken(form({ grant_type: 'authorization_code', code: 'kwc_x', code_verifier: 'v'.repeat(43), redirect_uri: APP_REDIRECT }), runtime),
    );
    await expectTemporarilyUnavailable(await handleMobileToken(form({ grant_type: 'refresh_token', refresh_token: 'kwr_x' }), runtime));
  });

  it('sign-in: the credentials callback answers 503 before Auth.js would check a password', async () => {
    let reached = false;
    const response = await handleSignInPost(
      request('/api/auth/callback/credentials', {
        method: 'POST',
        cookie: null,
        body: 'username=bob&password=whatever-password&csrfToken=t',
        contentType: 'application/x-www-form-urlencoded',
      }),
      runtime,
      async () => {
        reached = true;
        return new Response(null, { status: 302 });
      },
    );
    await expectStoreUnavailable(response);
    expect(reached).toBe(false);
  });
});

/**
 * The same through `next start` (REDIS_URL at a closed port), for what only the Next layer does: Auth.js
 * swallows errors in its callbacks, so with the store down it answered "no session" and deleted the
 * session cookie, and signed the user out without writing the server-side revocation.
 */
describe('the store is down, through next start: Auth.js routes answer 503 too', () => {
  const appSecrets = testSessionSecrets();
  let app: AppServer;
  let cookie: string;

  beforeAll(async () => {
    const usersFile = await writeUsersFile([{ username: 'bob', password: `pw-${randomUUID()}`, roles: ['user'] }]);
    app = await startApp({
      ...appSecrets,
      KEYWARD_USERS_FILE: usersFile,
      ...uncalledUpstream(),
      REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
      KEYWARD_REDIS_PREFIX: `keyward-test:down-app:${randomUUID()}:`,
    });
    cookie = await claimsSessionCookie(appSecrets.AUTH_SECRET, { sub: 'local:bob', passwordVersion: passwordVersionIn(usersFile, 'bob') });
  }, 90_000);

  afterAll(async () => {
    await app?.stop();
  });

  async function expectUnavailableAndCookieKept(response: Response): Promise<void> {
    expect(response.headers.getSetCookie().filter((line) => line.startsWith('__Host-keyward.session='))).toEqual([]);
    await expectStoreUnavailable(response);
  }

  it('GET /api/session and GET /api/auth/session with a session cookie: 503, and the cookie is not deleted', async () => {
    await expectStoreUnavailable(await fetch(`${app.url}/api/session`, { headers: { cookie } }));
    await expectUnavailableAndCookieKept(await fetch(`${app.url}/api/auth/session`, { headers: { cookie } }));
  });

  it('POST /api/auth/signout: 503 (the revocation could not be written), not a redirect that only drops the cookie', async () => {
    const csrfResponse = await fetch(`${app.url}/api/auth/csrf`);
    const { csrfToken } = (await csrfResponse.json()) as { csrfToken: string };
    const csrfCookie = csrfResponse.headers.getSetCookie().map((line) => line.split(';')[0]).join('; ');
    const response = await fetch(`${app.url}/api/auth/signout`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: `${csrfCookie}; ${cookie}` },
      body: new URLSearchParams({ csrfToken }),
    });
    await expectUnavailableAndCookieKept(response);
  });

  it('POST /api/auth/callback/credentials: 503 before any password check', async () => {
    const response = await fetch(`${app.url}/api/auth/callback/credentials`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ username: 'bob', password: 'whatever-password', csrfToken: 'x' }),
    });
    await expectStoreUnavailable(response);
  });

  it('pages that do not touch the store still work (the CSRF token, the providers list)', async () => {
    expect((await fetch(`${app.url}/api/auth/csrf`)).status).toBe(200);
    expect((await fetch(`${app.url}/api/auth/providers`)).status).toBe(200);
  });
});
