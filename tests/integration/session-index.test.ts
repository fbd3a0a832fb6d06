import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { unsealData } from 'iron-session';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashSessionId } from '../../lib/core/audit/audit';
import { defineUpstream } from '../../lib/core/config/load';
import { handleMobileAuthorize, handleMobileToken } from '../../lib/core/api/mobile';
import { handleAdminRevoke, handleLogout } from '../../lib/core/api/revoke';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { SESSION_SLOTS, SessionIndex, type NewSession } from '../../lib/core/session/session-index';
import { SessionRevocations } from '../../lib/core/session/revocation';
import { MemoryStore } from '../../lib/store/memory';
import { RedisStore } from '../../lib/store/redis';
import { SqliteStore } from '../../lib/store/sqlite';
import type { Store } from '../../lib/store/types';
import { REDIS_URL, capturingLogger, claimsSessionCookie } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';

/**
 * The session index behind the admin Users pages, on the real stores: sign-ins recorded at once from two
 * instances never overwrite each other (the slot comes from an atomic counter) and stay bounded; and the mobile
 * code exchange lists each new token family once (a refresh adds nothing), by its id's hash, showing it revoked
 * after a bearer logout or an admin's "revoke sessions".
 */
const HOUR = 3_600_000;
const redisPrefix = `keyward-test:session-index:${randomUUID()}:`;
const opened: Store[] = [];

function session(overrides: Partial<NewSession> = {}): NewSession {
  return { sessionId: randomUUID(), kind: 'browser', expiresAt: Date.now() + 8 * HOUR, authTime: Date.now(), roles: ['user'], ...overrides };
}

async function redisPair(): Promise<[Store, Store]> {
  const a = new RedisStore(REDIS_URL, { prefix: redisPrefix });
  const b = new RedisStore(REDIS_URL, { prefix: redisPrefix });
  await Promise.all([a.ready(), b.ready()]);
  opened.push(a, b);
  return [a, b];
}

function sqlitePair(): [Store, Store] {
  const path = join(mkdtempSync(join(tmpdir(), 'keyward-session-index-')), 'store.db');
  const pair: [Store, Store] = [new SqliteStore(path), new SqliteStore(path)];
  opened.push(...pair);
  return pair;
}

afterAll(async () => {
  await Promise.all(opened.map((store) => store.close()));
  await deleteKeysUnder(REDIS_URL, redisPrefix);
});

describe.each([
  ['Redis', redisPair],
  ['SQLite', async () => sqlitePair()],
] as const)('SessionIndex on %s, two instances', (_name, open) => {
  it('keeps every one of concurrent sign-ins (up to the bound) and never the session ids', async () => {
    const [a, b] = await open();
    const one = new SessionIndex(a, 30 * 24 * HOUR);
    const two = new SessionIndex(b, 30 * 24 * HOUR);
    const user = `local:user-${randomUUID()}`;
    const first = Array.from({ length: SESSION_SLOTS - 4 }, () => session());
    await Promise.all(first.map((entry, i) => (i % 2 === 0 ? one : two).record(user, entry)));
    const listed = await two.list(user);
    expect(listed.map((entry) => entry.sessionIdHash).sort()).toEqual(first.map((entry) => hashSessionId(entry.sessionId)).sort());

    // Past the bound: the ring holds the last SESSION_SLOTS, each a distinct sign-in.
    const more = Array.from({ length: 10 }, () => session({ kind: 'mobile' }));
    await Promise.all(more.map((entry, i) => (i % 2 === 0 ? two : one).record(user, entry)));
    const after = await one.list(user);
    expect(after).toHaveLength(SESSION_SLOTS);
    expect(new Set(after.map((entry) => entry.sessionIdHash)).size).toBe(SESSION_SLOTS);
    const all = new Set([...first, ...more].map((entry) => hashSessionId(entry.sessionId)));
    for (const entry of after) expect(all.has(entry.sessionIdHash)).toBe(true);

    // A revocation written by one instance shows on the other's list.
    await new SessionRevocations(a, 30 * 24 * HOUR).revokeSession(more[0]!.sessionId);
    const revoked = (await two.list(user)).filter((entry) => entry.revoked).map((entry) => entry.sessionIdHash);
    expect(revoked).toEqual([hashSessionId(more[0]!.sessionId)]);
  });
});

describe('the mobile code exchange lists each token family once', () => {
  const APP_ORIGIN = 'https://app.keyward.test';
  // An https app link (verified by the platform): no consent page in between (tests/integration/mobile-tokens.test.ts).
  const APP_REDIRECT = 'https://app.keyward.test/oauth/callback';
  // Not a local user: a local one is re-read from the users file at every exchange, and there is none here.
  const ALICE = 'oidc:alice';
  const secrets = testSessionSecrets();
  const { logger } = capturingLogger();
  let runtime: Runtime;
  let aliceCookie: string;
  let adminCookie: string;

  beforeAll(async () => {
    runtime = createRuntime({
      env: { ...secrets, SVC_KEY: randomSecret('svc'), KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, KEYWARD_MOBILE_REDIRECT_URIS: APP_REDIRECT },
      upstreams: [
        defineUpstream('svc', {
          baseUrl: 'http://127.0.0.1:9/v1/',
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
          routes: [{ method: 'GET', path: '/items/:id' }],
        }),
      ],
      store: new MemoryStore(),
      logger,
    });
    aliceCookie = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: ALICE, roles: ['user'], authTimeMs: Date.now() - 1_000 });
    adminCookie = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:root', roles: ['user', 'admin'] });
  });

  async function signInApp(): Promise<{ access_token: string; refresh_token: string }> {
    const verifier = randomBytes(32).toString('base64url');
    const challenge = createHash('sha256').update(verifier).digest('base64url');
    const query = new URLSearchParams({ redirect_uri: APP_REDIRECT, code_challenge: challenge, code_challenge_method: 'S256', state: 's' });
    const authorized = await handleMobileAuthorize(
      new Request(`${APP_ORIGIN}/api/session/mobile/authorize?${query}`, { headers: { cookie: aliceCookie } }),
      runtime,
    );
    expect(authorized.status).toBe(302);
    const code = new URL(authorized.headers.get('location')!).searchParams.get('code')!;
    const tokens = await token({ grant_type: 'authorization_code', code, code_verifier: verifier, redirect_uri: APP_REDIRECT });
    expect(tokens.status, await tokens.clone().text()).toBe(200);
    return (await tokens.json()) as { access_token: string; refresh_token: string };
  }

  function token(params: Record<string, string>): Promise<Response> {
    const request = new Request(`${APP_ORIGIN}/api/session/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(params).toString(),
    });
    return handleMobileToken(request, runtime);
  }

  /** The family id, from inside the sealed access token (only the server can open it). */
  async function familyOf(accessToken: string): Promise<string> {
    const claims = await unsealData<{ sid: string }>(accessToken, { password: { 1: secrets.KEYWARD_SESSION_SECRET } });
    return claims.sid;
  }

  it('one mobile entry per exchange, none per refresh; revoked by a bearer logout and by an admin', async () => {
    const app = await signInApp();
    const family = await familyOf(app.access_token);
    let listed = await runtime.sessionIndex.list(ALICE);
    expect(listed.map((entry) => [entry.kind, entry.sessionIdHash, entry.revoked])).toEqual([['mobile', hashSessionId(family), false]]);
    expect(listed[0]!.roles).toEqual(['user']);
    expect(JSON.stringify(listed)).not.toContain(family);

    const refreshed = await token({ grant_type: 'refresh_token', refresh_token: app.refresh_token });
    expect(refreshed.status).toBe(200);
    expect(await runtime.sessionIndex.list(ALICE)).toHaveLength(1);

    // The app signs out: its family is revoked, and the list says so.
    const logout = await handleLogout(
      new Request(`${APP_ORIGIN}/api/session/logout`, { method: 'POST', headers: { authorization: `Bearer ${app.access_token}` } }),
      runtime,
    );
    expect(logout.status).toBe(200);
    const second = await familyOf((await signInApp()).access_token);
    listed = await runtime.sessionIndex.list(ALICE);
    expect(listed.map((entry) => [entry.sessionIdHash, entry.revoked])).toEqual([
      [hashSessionId(second), false],
      [hashSessionId(family), true],
    ]);

    // An admin revokes every session of the user: the second family too.
    const revoke = await handleAdminRevoke(
      new Request(`${APP_ORIGIN}/api/admin/users/${encodeURIComponent(ALICE)}/revoke-sessions`, {
        method: 'POST',
        headers: { cookie: adminCookie, 'x-keyward-csrf': '1', origin: APP_ORIGIN },
      }),
      ALICE,
      runtime,
    );
    expect(revoke.status).toBe(200);
    expect((await runtime.sessionIndex.list(ALICE)).map((entry) => entry.revoked)).toEqual([true, true]);
  });
});
