import { randomUUID } from 'node:crypto';
import { NextRequest } from 'next/server';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createKeyward, type Keyward } from '../../lib/next/keyward';
import { testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';

/**
 * A signed-out session stays signed out for every copy of its cookie, however late that copy was renewed.
 * Auth.js renews the cookie (a later `exp`) on every `GET /api/auth/session`, so the copy a thief holds may expire
 * later than the one the user signs out with: the sign-out mark must outlive it, or the copy comes back once the
 * mark is gone, and renews itself from then on.
 *
 * Keyward's real Auth.js handlers and session route (createKeyward), the memory store, and a faked `Date` (the
 * only way to pass an hour here); nothing else is mocked.
 */
const ORIGIN = 'https://app.keyward.test';
// Sessions longer than an app's refresh token (valid: 7 days and 1 day would do the same), so that no mark
// timed from the signed-out copy (its expiry, or its expiry plus the refresh lifetime) covers a later copy.
const MAX_AGE_S = 2 * 3_600; // KEYWARD_SESSION_MAX_AGE
const REFRESH_TTL_S = 3_600; // KEYWARD_MOBILE_REFRESH_TTL, its least
const MINUTE = 60_000;
const SESSION_COOKIE = '__Host-keyward.session';
const secrets = testSessionSecrets();
const t0 = Date.UTC(2030, 0, 1);
let kw: Keyward;

beforeAll(() => {
  vi.useFakeTimers({ toFake: ['Date'] });
  vi.setSystemTime(t0);
  Object.assign(process.env, {
    ...secrets,
    AUTH_URL: ORIGIN,
    KEYWARD_STORE: 'memory',
    KEYWARD_LOG_LEVEL: 'silent',
    KEYWARD_SESSION_MAX_AGE: String(MAX_AGE_S),
    KEYWARD_MOBILE_REFRESH_TTL: String(REFRESH_TTL_S),
  });
  kw = createKeyward();
});

afterAll(() => {
  vi.useRealTimers();
});

function cookieFrom(response: Response, name: string): string | null {
  const line = response.headers.getSetCookie().find((set) => set.startsWith(`${name}=`) && !set.startsWith(`${name}=;`));
  return line ? line.split(';')[0]! : null;
}

const at = (minutes: number) => vi.setSystemTime(t0 + minutes * MINUTE);

/** GET /api/session's status for a cookie: 200 signed in, 401 not. */
async function whoami(cookie: string): Promise<number> {
  const response = await kw.sessionRoute(new Request(`${ORIGIN}/api/session`, { headers: { cookie } }));
  await response.arrayBuffer();
  return response.status;
}

/** GET /api/auth/session: Auth.js renews the cookie it is given (a new `exp`), as a browser's session read does. */
async function renew(cookie: string): Promise<string | null> {
  const response = await kw.authGetRoute(new NextRequest(`${ORIGIN}/api/auth/session`, { headers: { cookie } }));
  await response.arrayBuffer();
  return cookieFrom(response, SESSION_COOKIE);
}

/** Auth.js sign-out as the browser's form does it: GET /api/auth/csrf, then POST /api/auth/signout. */
async function signOut(cookie: string): Promise<number> {
  const csrf = await kw.authGetRoute(new NextRequest(`${ORIGIN}/api/auth/csrf`, { headers: { cookie } }));
  const { csrfToken } = (await csrf.json()) as { csrfToken: string };
  const csrfCookie = cookieFrom(csrf, '__Host-keyward.csrf-token')!;
  const response = await kw.authPostRoute(
    new NextRequest(`${ORIGIN}/api/auth/signout`, {
      method: 'POST',
      headers: { cookie: `${cookie}; ${csrfCookie}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ csrfToken, callbackUrl: '/' }).toString(),
    }),
  );
  await response.arrayBuffer();
  return response.status;
}

/** POST /api/session/logout (Keyward's own sign-out, for cookie and bearer sessions alike). */
async function logout(cookie: string): Promise<number> {
  const response = await kw.logoutRoute(
    new Request(`${ORIGIN}/api/session/logout`, { method: 'POST', headers: { cookie, 'x-keyward-csrf': '1', origin: ORIGIN } }),
    { params: Promise.resolve({}) },
  );
  await response.arrayBuffer();
  return response.status;
}

describe('a copy of the cookie renewed before the sign-out', () => {
  it.each([
    ['Auth.js sign-out (POST /api/auth/signout)', signOut, 302],
    ['Keyward logout (POST /api/session/logout)', logout, 200],
  ])('%s: refused until it expires, past the copy signed out with, and never renewed again', async (_name, end, endStatus) => {
    at(0);
    const original = await sessionCookie(secrets.AUTH_SECRET, { sub: 'oidc:alice', sid: randomUUID(), authMs: t0, roles: ['user'] }, MAX_AGE_S);
    expect(await whoami(original)).toBe(200);

    // An hour and a half on, the thief's copy is renewed: it now expires at minute 210, the user's at 120.
    at(90);
    const renewed = await renew(original);
    expect(renewed).not.toBeNull();
    expect(renewed).not.toBe(original);

    at(91);
    expect(await end(original)).toBe(endStatus);
    expect(await whoami(original)).toBe(401);
    expect(await whoami(renewed!)).toBe(401);

    // Past the user's copy's expiry (and that plus the refresh lifetime), while the renewed copy is within its own.
    for (const minute of [125, 190, 209]) {
      at(minute);
      expect(await whoami(renewed!)).toBe(401);
      expect(await renew(renewed!)).toBeNull();
    }
  });
});

describe('KEYWARD_SESSION_MAX_AGE is a lifetime from the sign-in, not an idle timeout', () => {
  it('a cookie renewed as often as one likes ends MAX_AGE after its sign-in, and is not renewed past it', async () => {
    at(1_000);
    const signedIn = t0 + 1_000 * MINUTE;
    let cookie = await sessionCookie(secrets.AUTH_SECRET, { sub: 'oidc:renewer', sid: randomUUID(), authMs: signedIn }, MAX_AGE_S);
    // Renewed every 25 minutes (each renewal alone would last MAX_AGE from then): alive until the sign-in's end.
    for (let minute = 1_025; minute < 1_120; minute += 25) {
      at(minute);
      const renewed = await renew(cookie);
      expect(renewed, `renewal at minute ${minute}`).not.toBeNull();
      cookie = renewed!;
      expect(await whoami(cookie)).toBe(200);
    }
    // What the browser is told: the session ends with the sign-in's lifetime, not 2 hours after this read.
    at(1_110);
    const read = await kw.authGetRoute(new NextRequest(`${ORIGIN}/api/auth/session`, { headers: { cookie } }));
    expect(((await read.json()) as { expires: string }).expires).toBe(new Date(signedIn + MAX_AGE_S * 1000).toISOString());
    // Two hours after the sign-in, the last renewal (at minute 1,100, its own `exp` at 1,220) is refused, and
    // Auth.js's session read clears it instead of renewing it.
    at(1_120);
    expect(await whoami(cookie)).toBe(401);
    expect(await renew(cookie)).toBeNull();
  });

  it('a cookie without a sign-in time (written before Keyward kept one) gets one at its next renewal, and ends MAX_AGE after that', async () => {
    at(2_000);
    const legacy = await sessionCookie(secrets.AUTH_SECRET, { sub: 'oidc:legacy', sid: randomUUID() }, MAX_AGE_S);
    at(2_030);
    let cookie = (await renew(legacy))!;
    expect(cookie).not.toBeNull();
    for (let minute = 2_060; minute < 2_150; minute += 30) {
      at(minute);
      cookie = (await renew(cookie))!;
      expect(cookie, `renewal at minute ${minute}`).not.toBeNull();
    }
    at(2_150);
    expect(await whoami(cookie)).toBe(401);
    expect(await renew(cookie)).toBeNull();
  });
});
