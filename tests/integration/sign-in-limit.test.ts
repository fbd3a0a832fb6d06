import { randomUUID } from 'node:crypto';
import { mkdtempSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleSignInPost } from '../../lib/core/api/sign-in';
import { DeviceCookies } from '../../lib/core/limits/device-cookie';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { USERS_RECHECK_MS } from '../../lib/core/users/file';
import { signIn, signInAttempt, startApp, startFastLane, type AppServer } from '../fixtures/app-server';
import { capturingLogger } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { writeUsersFile } from '../fixtures/users';
import { uncalledUpstream } from '../fixtures/config';

/**
 * Sign-in attempt limits and body rules (lib/core/api/sign-in.ts): first at handler level with a runtime
 * from createRuntime (memory store) and a stand-in for Auth.js that records what it was given; then the
 * attacks of issue 11 (a JSON body, a repeated username) against the real `next start` server.
 */

const ORIGIN = 'https://app.keyward.test';
const CALLBACK = `${ORIGIN}/api/auth/callback/credentials`;
const MAX = 3;
const WINDOW = 120;

let runtime: Runtime;

beforeAll(() => {
  runtime = createRuntime({
    env: {
      ...testSessionSecrets(),
      KEYWARD_STORE: 'memory',
      KEYWARD_SIGNIN_MAX_ATTEMPTS: String(MAX),
      KEYWARD_SIGNIN_WINDOW_SECONDS: String(WINDOW),
    },
    upstreams: [],
    logger: capturingLogger().logger,
  });
});

afterAll(async () => {
  await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
  await runtime.store.close();
});

/** What the stand-in for Auth.js received: the request's content type and body, exactly as it would parse them. */
interface Received {
  contentType: string | null;
  body: string;
}

/**
 * Runs one POST through the sign-in rules. `passed` is what Auth.js would have been given (null when the
 * rules answered themselves); `response` is the rules' own answer, or the stand-in's 302.
 */
async function limitSignIn(request: Request): Promise<{ response: Response; passed: Received | null }> {
  let passed: Received | null = null;
  const response = await handleSignInPost(request, runtime, async (forwarded) => {
    passed = { contentType: forwarded.headers.get('content-type'), body: forwarded.method === 'POST' ? await forwarded.text() : '' };
    return new Response(null, { status: 302, headers: { location: '/' } });
  });
  return { response, passed };
}

/** Let through to Auth.js (the stand-in answered). */
async function expectPassed(result: Promise<{ response: Response; passed: Received | null }>): Promise<Received> {
  const { response, passed } = await result;
  expect(response.status).toBe(302);
  expect(passed).not.toBeNull();
  return passed!;
}

/** A fresh address and name per test, so tests do not share counters. */
let next = 0;
const freshIp = () => {
  next++;
  return `198.51.${Math.floor(next / 250)}.${(next % 250) + 1}`;
};
const freshName = () => `user-${randomUUID().slice(0, 8)}`;

function attempt(options: {
  ip?: string | null;
  username?: string | null;
  password?: string;
  cookie?: string;
  url?: string;
  method?: string;
  body?: BodyInit | null;
  contentType?: string;
}): Request {
  const headers = new Headers();
  if (options.ip) headers.set('x-forwarded-for', options.ip);
  if (options.cookie) headers.set('cookie', options.cookie);
  const method = options.method ?? 'POST';
  let body: BodyInit | null | undefined = options.body;
  if (body === undefined && method === 'POST') {
    const form = new URLSearchParams({ csrfToken: 'token', password: options.password ?? 'wrong-password' });
    if (options.username !== null) form.set('username', options.username ?? freshName());
    body = form;
  }
  if (options.contentType) headers.set('content-type', options.contentType);
  return new Request(options.url ?? CALLBACK, { method, headers, body: body ?? null });
}

async function expectLimited(result: Promise<{ response: Response; passed: Received | null }>): Promise<void> {
  const { response: limited, passed } = await result;
  expect(passed, 'a refused attempt must not reach Auth.js').toBeNull();
  const response: Response | null = limited;
  expect(response!.status).toBe(429);
  const retry = Number(response!.headers.get('retry-after'));
  expect(response!.headers.get('retry-after')).toMatch(/^\d+$/);
  expect(retry).toBeGreaterThanOrEqual(1);
  expect(retry).toBeLessThanOrEqual(WINDOW);
  expect(response!.headers.get('content-type')).toBe('application/json; charset=utf-8');
  expect(response!.headers.get('cache-control')).toBe('private, no-store');
  const body = (await response!.json()) as { error: { code: string; message: string; requestId: string } };
  expect(Object.keys(body)).toEqual(['error']);
  expect(Object.keys(body.error)).toEqual(['code', 'message', 'requestId']);
  expect(body.error.code).toBe('rate_limited');
  expect(body.error.requestId).toBe(response!.headers.get('x-request-id'));
}

describe('per client IP', () => {
  it(`allows ${MAX} attempts from one X-Forwarded-For address, then 429 with Retry-After; another address is still allowed`, async () => {
    const ip = freshIp();
    for (let i = 0; i < MAX; i++) await expectPassed(limitSignIn(attempt({ ip })));
    await expectLimited(limitSignIn(attempt({ ip })));
    await expectLimited(limitSignIn(attempt({ ip })));
    await expectPassed(limitSignIn(attempt({ ip: freshIp() })));
  });

  it('counts IPv6 clients by their /64: a host rotating addresses in its prefix is one client, another /64 is not', async () => {
    const prefix = `2001:db8:${(++next).toString(16)}:7`;
    const hosts = ['::1', '::2', ':ffff:1:2:3', ':0:0:0:beef', '::a', ':1:0:0:1'];
    for (let i = 0; i < MAX; i++) await expectPassed(limitSignIn(attempt({ ip: `${prefix}${hosts[i]}` })));
    for (const host of hosts.slice(MAX)) await expectLimited(limitSignIn(attempt({ ip: `${prefix}${host}` })));
    await expectPassed(limitSignIn(attempt({ ip: `2001:db8:${(++next).toString(16)}:8::1` })));
  });

  it('counts the address one hop from the right: a client-chosen entry on the left does not make a new address', async () => {
    const ip = freshIp();
    for (let i = 0; i < MAX; i++) await expectPassed(limitSignIn(attempt({ ip: `10.9.9.${i}, ${ip}` })));
    await expectLimited(limitSignIn(attempt({ ip: `10.9.9.200, ${ip}` })));
    await expectLimited(limitSignIn(attempt({ ip })));
  });

  it('hands Auth.js exactly the bytes that were checked, labelled as a plain form', async () => {
    const body = 'csrfToken=t&username=reader&password=wrong-password&callbackUrl=%2F';
    const passed = await expectPassed(
      limitSignIn(attempt({ ip: freshIp(), body, contentType: 'application/x-www-form-urlencoded; charset=UTF-8' })),
    );
    expect(passed.contentType).toBe('application/x-www-form-urlencoded');
    expect(passed.body).toBe(body);
  });
});

describe('one unambiguous body (issue 11, finding 1)', () => {
  async function expectRefused(result: Promise<{ response: Response; passed: Received | null }>, message: RegExp): Promise<void> {
    const { response, passed } = await result;
    expect(passed, 'a refused body must not reach Auth.js').toBeNull();
    expect(response.status).toBe(400);
    expect(response.headers.get('cache-control')).toBe('private, no-store');
    const body = (await response.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('bad_request');
    expect(body.error.message).toMatch(message);
  }

  it('a JSON body is refused (Auth.js would read it; the limiter would not): 400, Auth.js never sees it', async () => {
    const body = JSON.stringify({ username: 'bob', password: 'x', csrfToken: 't' });
    await expectRefused(limitSignIn(attempt({ ip: freshIp(), body, contentType: 'application/json' })), /form body/);
    // Auth.js matches content types by substring: a form type with "application/json" in a parameter is refused too.
    for (const contentType of [
      'text/plain; x=application/json',
      'application/x-www-form-urlencoded, application/json',
      'application/x-www-form-urlencoded; charset=iso-8859-1',
      'multipart/form-data; boundary=x',
      'text/plain',
    ]) {
      await expectRefused(limitSignIn(attempt({ ip: freshIp(), body: 'username=bob&password=x', contentType })), /form body/);
    }
    // No content type at all.
    const bare = new Request(CALLBACK, { method: 'POST', body: new Blob(['username=bob&password=x']) });
    await expectRefused(limitSignIn(bare), /form body/);
  });

  it('a repeated field is refused (Auth.js keeps the last value; the limiter would count the first)', async () => {
    for (const body of [
      'username=decoy&username=bob&password=x&csrfToken=t',
      'username=bob&password=x&password=y&csrfToken=t',
      'username=bob&password=x&csrfToken=t&csrfToken=u',
      'username=bob&password=x&csrfToken=t&username=',
    ]) {
      await expectRefused(limitSignIn(attempt({ ip: freshIp(), body, contentType: 'application/x-www-form-urlencoded' })), /only once/);
    }
  });

  it('a body over 8 KiB is refused (413) before it is parsed, chunked or not', async () => {
    const big = `username=bob&password=${'x'.repeat(9000)}`;
    const declared = await limitSignIn(attempt({ ip: freshIp(), body: big, contentType: 'application/x-www-form-urlencoded' }));
    expect(declared.passed).toBeNull();
    expect(declared.response.status).toBe(413);
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(big));
        controller.close();
      },
    });
    const chunked = new Request(CALLBACK, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: stream,
      duplex: 'half',
    } as RequestInit);
    const result = await limitSignIn(chunked);
    expect(result.passed).toBeNull();
    expect(result.response.status).toBe(413);
  });
});

describe('per username', () => {
  it('the same username from many addresses is limited by the username counter', async () => {
    const username = freshName();
    for (let i = 0; i < MAX; i++) await expectPassed(limitSignIn(attempt({ ip: freshIp(), username })));
    await expectLimited(limitSignIn(attempt({ ip: freshIp(), username })));
    // Case does not make a new account name.
    await expectLimited(limitSignIn(attempt({ ip: freshIp(), username: username.toUpperCase() })));
    // Other usernames from fresh addresses are unaffected.
    await expectPassed(limitSignIn(attempt({ ip: freshIp(), username: freshName() })));
  });

  it('a limited address is refused whichever username it tries', async () => {
    const ip = freshIp();
    for (let i = 0; i < MAX; i++) await expectPassed(limitSignIn(attempt({ ip, username: freshName() })));
    await expectLimited(limitSignIn(attempt({ ip, username: freshName() })));
  });
});

/**
 * Device cookies (OWASP, "Slow Down Online Guessing Attacks with Device Cookies"): a browser that signed in as a
 * user counts its attempts for that user on its own counter, so posts naming the user from elsewhere lock out
 * every other client but not that browser. The stand-in for Auth.js signs in as Auth.js does, by setting the
 * session cookie, when the password is RIGHT.
 */
describe('device cookies', () => {
  const RIGHT = 'right-password';
  const DEVICE = '__Host-keyward.device';
  /**
   * Each user's password version as a users file would give it (this runtime has none: the stand-in for Auth.js
   * decides the password); a user not set here has the first. The wiring to KEYWARD_USERS_FILE is tested below.
   */
  const versions = new Map<string, string>();
  let devices: Runtime;

  beforeAll(() => {
    devices = { ...runtime, deviceCookies: new DeviceCookies(runtime.settings.KEYWARD_SESSION_SECRET, (name) => versions.get(name) ?? 'first-version') };
  });

  interface DeviceAttempt {
    response: Response;
    /** Whether the attempt reached (the stand-in for) Auth.js. */
    passed: boolean;
    /** The device cookie's Set-Cookie line in the answer, if any. */
    device: string | null;
  }

  async function deviceAttempt(options: { username: string; password?: string; cookie?: string; ip?: string; sessionCookie?: string }): Promise<DeviceAttempt> {
    let passed = false;
    const request = attempt({ ip: options.ip ?? freshIp(), username: options.username, password: options.password, cookie: options.cookie });
    const response = await handleSignInPost(request, devices, async (forwarded) => {
      passed = true;
      const right = new URLSearchParams(await forwarded.text()).get('password') === RIGHT;
      const headers = new Headers({ location: right ? '/' : '/signin?error=CredentialsSignin' });
      if (right) headers.append('set-cookie', `${options.sessionCookie ?? '__Host-keyward.session'}=stand-in.${randomUUID()}; Path=/; HttpOnly; Secure; SameSite=Strict`);
      return new Response(null, { status: 302, headers });
    });
    const device = response.headers.getSetCookie().find((line) => line.startsWith(`${DEVICE}=`)) ?? null;
    return { response, passed, device };
  }

  /** The Cookie header a browser sends back for a device cookie's Set-Cookie line. */
  const asCookie = (line: string | null) => line!.split(';')[0]!;

  /** Signs `username` in (no device cookie: counted on the username) and returns the device cookie it got. */
  async function deviceCookieFor(username: string): Promise<string> {
    const { response, device } = await deviceAttempt({ username, password: RIGHT });
    expect(response.status).toBe(302);
    expect(device).not.toBeNull();
    return asCookie(device);
  }

  /** An attacker's posts naming `username`, each from a new address, until the username's counter refuses. */
  async function lockOut(username: string): Promise<void> {
    for (let i = 0; i < MAX + 7; i++) await deviceAttempt({ username });
    const locked = await deviceAttempt({ username, password: RIGHT });
    await expectRefused(locked);
  }

  async function expectRefused(result: DeviceAttempt): Promise<void> {
    expect(result.passed, 'a refused attempt must not reach Auth.js').toBe(false);
    expect(result.device).toBeNull();
    await expectLimited(Promise.resolve({ response: result.response, passed: null }));
  }

  async function expectSignedIn(result: DeviceAttempt): Promise<void> {
    expect(result.passed).toBe(true);
    expect(result.response.status).toBe(302);
    expect(result.response.headers.get('location')).toBe('/');
    expect(result.device).not.toBeNull();
  }

  it('a successful sign-in also sets a device cookie (__Host-, HttpOnly, Secure, SameSite=Strict, 180 days); a refused one does not', async () => {
    const username = `Reader-${randomUUID().slice(0, 8)}`;
    const first = await deviceAttempt({ username, password: RIGHT });
    await expectSignedIn(first);
    const [pair, ...attributes] = first.device!.split(';').map((part) => part.trim());
    expect(attributes.sort()).toEqual(['HttpOnly', 'Max-Age=15552000', 'Path=/', 'SameSite=Strict', 'Secure']);
    // Auth.js's own session cookie is still there.
    expect(first.response.headers.getSetCookie().some((line) => line.startsWith('__Host-keyward.session=stand-in.'))).toBe(true);
    // It names no user and holds nothing of the password or the session.
    const value = pair!.slice(`${DEVICE}=`.length);
    expect(value).toMatch(/^v2\.[A-Za-z0-9_-]{22}\.[0-9a-z]+\.[A-Za-z0-9_-]{43}$/);
    expect(value.toLowerCase()).not.toContain(username.toLowerCase());
    expect(value).not.toContain(RIGHT);

    // Each sign-in gets a new device (nonce).
    const second = await deviceAttempt({ username, password: RIGHT, cookie: asCookie(first.device) });
    await expectSignedIn(second);
    const nonce = (line: string | null) => asCookie(line).slice(`${DEVICE}=`.length).split('.')[1];
    expect(nonce(second.device)).not.toBe(nonce(first.device));

    // A wrong password: Auth.js sets no session cookie, and no device cookie is set.
    const wrong = await deviceAttempt({ username: freshName() });
    expect(wrong.passed).toBe(true);
    expect(wrong.device).toBeNull();
    // A session cookie Auth.js split in chunks is a sign-in too.
    await expectSignedIn(await deviceAttempt({ username: freshName(), password: RIGHT, sessionCookie: '__Host-keyward.session.0' }));
  });

  it("an attacker's attempts lock the username for cookie-less clients, but the browser with a device cookie still signs in", async () => {
    const username = freshName();
    const cookie = await deviceCookieFor(username);
    await lockOut(username);
    // The right password without the cookie: still refused (the trade-off that remains).
    await expectRefused(await deviceAttempt({ username, password: RIGHT }));

    const signedIn = await deviceAttempt({ username, password: RIGHT, cookie: `other=1; ${cookie}` });
    await expectSignedIn(signedIn);
    expect(asCookie(signedIn.device)).not.toBe(cookie);
    // The new cookie works as well, for that username as written only: usernames are case-sensitive, so another
    // spelling may be another account, whose lock this cookie must not lift.
    await expectSignedIn(await deviceAttempt({ username, password: RIGHT, cookie: asCookie(signedIn.device) }));
    await expectRefused(await deviceAttempt({ username: username.toUpperCase(), password: RIGHT, cookie: asCookie(signedIn.device) }));
    // The lock still holds for everyone else.
    await expectRefused(await deviceAttempt({ username, password: RIGHT }));
  });

  it("another username's device cookie does not help", async () => {
    const username = freshName();
    const others = await deviceCookieFor(freshName());
    await lockOut(username);
    await expectRefused(await deviceAttempt({ username, password: RIGHT, cookie: others }));
  });

  it('a forged, tampered or foreign device cookie is no device cookie (never an error)', async () => {
    const username = freshName();
    const cookie = await deviceCookieFor(username);
    await lockOut(username);
    const [, nonce, issued, mac] = cookie.slice(`${DEVICE}=`.length).split('.') as [string, string, string, string];
    const flip = (text: string, at: number) => `${text.slice(0, at)}${text[at] === 'A' ? 'B' : 'A'}${text.slice(at + 1)}`;
    // Issued for this username by a deployment with another KEYWARD_SESSION_SECRET (or before a rotation).
    const foreign = new DeviceCookies(randomSecret('sess'), () => 'first-version').issue(username)!.split(';')[0]!.slice(`${DEVICE}=`.length);
    const values = [
      `v2.${nonce}.${issued}.${flip(mac, 42)}`,
      `v2.${nonce}.${issued}.${flip(mac, 0)}`,
      `v2.${flip(nonce, 3)}.${issued}.${mac}`,
      `v2.${nonce}.${(Number.parseInt(issued, 36) + 86_400).toString(36)}.${mac}`,
      `v2.${nonce}.0${issued}.${mac}`,
      `V2.${nonce}.${issued}.${mac}`,
      // The format before the MAC covered the password version: none since.
      `v1.${nonce}.${issued}.${mac}`,
      `v2.${nonce}.${issued}.${mac}.`,
      `v2.${nonce}.${issued}`,
      foreign,
      '',
      'v2...',
      'x'.repeat(4000),
      '%E2%82%AC;%00',
      '"v2"',
    ];
    for (const value of values) {
      await expectRefused(await deviceAttempt({ username, password: RIGHT, cookie: `${DEVICE}=${value}` }));
    }
    // A stolen cookie's nonce under its own name is nothing either.
    await expectRefused(await deviceAttempt({ username, password: RIGHT, cookie: `${DEVICE}=${nonce}` }));
    // The real one still works.
    await expectSignedIn(await deviceAttempt({ username, password: RIGHT, cookie }));
  });

  it('a new password ends the device cookies issued before it: that browser meets the username\'s lock again', async () => {
    const username = freshName();
    const cookie = await deviceCookieFor(username);
    await lockOut(username);
    await expectSignedIn(await deviceAttempt({ username, password: RIGHT, cookie }));
    // The users file now holds another password for the user (say, after the attack, an admin set a new one).
    versions.set(username, 'second-version');
    await expectRefused(await deviceAttempt({ username, password: RIGHT, cookie }));
    await expectRefused(await deviceAttempt({ username, password: RIGHT }));
  });

  it("a device's attempts count on its own counter: after the limit that device is locked for the window, not the others nor the username", async () => {
    const username = freshName();
    const first = await deviceCookieFor(username);
    const second = await deviceCookieFor(username);
    for (let i = 0; i < MAX; i++) {
      const wrong = await deviceAttempt({ username, cookie: first });
      expect(wrong.passed).toBe(true);
    }
    await expectRefused(await deviceAttempt({ username, password: RIGHT, cookie: first }));
    await expectSignedIn(await deviceAttempt({ username, password: RIGHT, cookie: second }));
    // The first device's attempts were not counted on the username: cookie-less clients had 2 of MAX so far.
    await expectSignedIn(await deviceAttempt({ username, password: RIGHT }));
    await expectRefused(await deviceAttempt({ username, password: RIGHT }));
    await expectRefused(await deviceAttempt({ username, password: RIGHT, cookie: first }));
  });

  it('the address counters still come first: a device cookie does not lift a limited address', async () => {
    const username = freshName();
    const cookie = await deviceCookieFor(username);
    const ip = freshIp();
    for (let i = 0; i < MAX; i++) expect((await deviceAttempt({ username: freshName(), ip })).passed).toBe(true);
    await expectRefused(await deviceAttempt({ username, password: RIGHT, cookie, ip }));
  });
});

/**
 * The runtime's device cookies take each user's password version from KEYWARD_USERS_FILE, as the file holds it now:
 * none for a username not in the file, and a new password (an edit picked up within USERS_RECHECK_MS, the way an
 * admin's edit is) ends the cookies issued before it.
 */
describe('device cookies follow KEYWARD_USERS_FILE', () => {
  it('no cookie for a username not in the file; a new password there ends the earlier cookies', async () => {
    const path = await writeUsersFile([{ username: 'dave', password: 'dave-first-password', roles: ['user'] }]);
    const withFile = createRuntime({
      env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory', KEYWARD_USERS_FILE: path },
      upstreams: [],
      logger: capturingLogger().logger,
    });
    try {
      const value = (line: string | null) => line!.split(';')[0]!.slice('__Host-keyward.device='.length);
      expect(withFile.deviceCookies.issue('mallory')).toBeNull();
      const before = value(withFile.deviceCookies.issue('dave'));
      expect(withFile.deviceCookies.deviceOf(before, 'dave')).not.toBeNull();
      expect(withFile.deviceCookies.deviceOf(before, 'mallory')).toBeNull();

      // A new file in its place (a new inode: the edit is seen whatever the file system's time stamps).
      renameSync(await writeUsersFile([{ username: 'dave', password: 'dave-second-password', roles: ['user'] }]), path);
      await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 100));
      expect(withFile.deviceCookies.deviceOf(before, 'dave')).toBeNull();
      const after = value(withFile.deviceCookies.issue('dave'));
      expect(withFile.deviceCookies.deviceOf(after, 'dave')).not.toBeNull();
    } finally {
      await withFile.store.close();
    }
  });
});

describe("the other Auth.js POSTs (sign-out, session update, OIDC callbacks): their body is read under a cap", () => {
  const SIGNOUT = `${ORIGIN}/api/auth/signout`;
  const chunkedBody = (text: string) =>
    new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(text));
        controller.close();
      },
    });

  it('over 16 KiB: 413 before Auth.js reads it (which it would do whole, before its CSRF check), declared or chunked', async () => {
    const big = `csrfToken=x&pad=${'x'.repeat(17 * 1024)}`;
    for (const url of [SIGNOUT, `${ORIGIN}/api/auth/session`, `${ORIGIN}/api/auth/callback/oidc`]) {
      const declared = await limitSignIn(new Request(url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: big }));
      expect(declared.passed, url).toBeNull();
      expect(declared.response.status).toBe(413);
      const chunked = await limitSignIn(
        new Request(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: chunkedBody(big), duplex: 'half' } as RequestInit),
      );
      expect(chunked.passed, url).toBeNull();
      expect(chunked.response.status).toBe(413);
    }
  });

  it('a small body reaches Auth.js byte for byte, with its content type', async () => {
    const body = `csrfToken=${randomUUID()}&callbackUrl=%2F`;
    const passed = await expectPassed(limitSignIn(new Request(SIGNOUT, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body })));
    expect(passed).toEqual({ contentType: 'application/x-www-form-urlencoded', body });
  });
});

describe('only credential sign-in posts are limited', () => {
  it('GET and other paths are never limited, even from a limited address with a limited username', async () => {
    const ip = freshIp();
    const username = freshName();
    for (let i = 0; i < MAX; i++) await expectPassed(limitSignIn(attempt({ ip, username })));
    await expectLimited(limitSignIn(attempt({ ip, username })));

    for (let i = 0; i < 3 * MAX; i++) {
      await expectPassed(limitSignIn(attempt({ ip, method: 'GET', body: null })));
      for (const path of ['/api/auth/signin', '/api/auth/callback/oidc', '/api/auth/csrf', '/api/auth/signout']) {
        await expectPassed(limitSignIn(attempt({ ip, username, url: `${ORIGIN}${path}` })));
      }
      await expectPassed(limitSignIn(attempt({ ip, username, url: `${CALLBACK}/extra` })));
    }
    // The refused pair is still refused: the other requests neither counted nor reset anything.
    await expectLimited(limitSignIn(attempt({ ip, username })));
  });

  it('the limit applies under any base path ending in /callback/credentials', async () => {
    const ip = freshIp();
    for (let i = 0; i < MAX; i++) {
      await expectPassed(limitSignIn(attempt({ ip, url: `${ORIGIN}/base/api/auth/callback/credentials?x=1` })));
    }
    await expectLimited(limitSignIn(attempt({ ip })));
  });

  it('a trailing or doubled slash is the same callback to Auth.js, and gets the same rules (limits, form body only)', async () => {
    const ip = freshIp();
    const username = freshName();
    const variants = [
      `${CALLBACK}/`,
      `${ORIGIN}/api/auth/callback//credentials`,
      `${ORIGIN}/api/auth//callback/credentials//`,
    ];
    for (const url of variants) {
      const body = JSON.stringify({ username, password: 'x' });
      const json = await limitSignIn(attempt({ ip: freshIp(), url, body, contentType: 'application/json' }));
      expect(json.response.status, url).toBe(400);
      expect(json.passed).toBeNull();
    }
    for (let i = 0; i < MAX; i++) await expectPassed(limitSignIn(attempt({ ip, url: variants[i % variants.length] })));
    for (const url of variants) await expectLimited(limitSignIn(attempt({ ip, url })));
  });
});

/** The built app's environment: one local user, this file's attempt limit, and the given store settings. */
async function appSettings(username: string, password: string, store: Record<string, string>): Promise<Record<string, string>> {
  return {
    ...testSessionSecrets(),
    KEYWARD_USERS_FILE: await writeUsersFile([{ username, password, roles: ['user'] }]),
    ...uncalledUpstream(),
    ...store,
    KEYWARD_SIGNIN_MAX_ATTEMPTS: String(MAX),
    KEYWARD_SIGNIN_WINDOW_SECONDS: String(WINDOW),
  };
}

/**
 * The attacks of issue 11 against the production server: once `bob` is locked out, neither a JSON body nor
 * a repeated username may try his password. Before the fix both signed in with the right password.
 */
describe('against next start: a locked-out user stays locked out', () => {
  const bobPassword = `pw-${randomUUID()}`;
  let app: AppServer;

  beforeAll(async () => {
    app = await startApp(await appSettings('bob', bobPassword, { KEYWARD_STORE: 'memory' }));
  }, 90_000);

  afterAll(async () => {
    await app?.stop();
  });

  /** Auth.js's CSRF token and cookie, fetched from a fresh address so the IP counter never decides. */
  async function csrf(ip: string): Promise<{ csrfToken: string; cookie: string }> {
    const response = await fetch(`${app.url}/api/auth/csrf`, { headers: { 'x-forwarded-for': ip } });
    const { csrfToken } = (await response.json()) as { csrfToken: string };
    const cookie = response.headers.getSetCookie().map((line) => line.split(';')[0]).join('; ');
    return { csrfToken, cookie };
  }

  async function post(contentType: string, body: (csrfToken: string) => string): Promise<{ response: Response; session: boolean }> {
    const ip = freshIp();
    const { csrfToken, cookie } = await csrf(ip);
    const response = await fetch(`${app.url}/api/auth/callback/credentials`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': contentType, cookie, 'x-forwarded-for': ip },
      body: body(csrfToken),
    });
    await response.arrayBuffer();
    const session = response.headers.getSetCookie().some((line) => line.startsWith('__Host-keyward.session=') && !line.startsWith('__Host-keyward.session=;'));
    return { response, session };
  }

  it('the right password works before the lock-out (the attack requests below are well formed)', async () => {
    // Done through a JSON-free, single-field form: the happy path still works.
    expect(await signIn(app.url, 'bob', bobPassword)).toMatch(/^__Host-keyward\.session=/);
  });

  it('after bob is locked out: a JSON body and a repeated username are refused, and never sign in', async () => {
    for (let i = 0; i < MAX; i++) await signInAttempt(app.url, 'bob', 'wrong-password', { 'x-forwarded-for': freshIp() });
    const locked = await signInAttempt(app.url, 'bob', bobPassword, { 'x-forwarded-for': freshIp() });
    expect(locked.response.status).toBe(429);
    expect(locked.cookie).toBeNull();

    const json = await post('application/json', (csrfToken) => JSON.stringify({ username: 'bob', password: bobPassword, csrfToken }));
    expect(json.response.status).toBe(400);
    expect(json.session).toBe(false);

    const repeated = await post('application/x-www-form-urlencoded', (csrfToken) =>
      `username=decoy&username=bob&password=${encodeURIComponent(bobPassword)}&csrfToken=${encodeURIComponent(csrfToken)}`,
    );
    expect(repeated.response.status).toBe(400);
    expect(repeated.session).toBe(false);

    // A form variant Auth.js would read as JSON by substring is refused as well.
    const disguised = await post('text/plain; x=application/json', (csrfToken) => JSON.stringify({ username: 'bob', password: bobPassword, csrfToken }));
    expect(disguised.response.status).toBe(400);
    expect(disguised.session).toBe(false);

    // And bob is still locked out through the plain form.
    expect((await signInAttempt(app.url, 'bob', bobPassword, { 'x-forwarded-for': freshIp() })).response.status).toBe(429);
  });

  it("Auth.js's own messages are Keyward's JSON log lines, not console text: a wrong password at info, a missing CSRF token (the client's doing) as a warning", async () => {
    const mark = app.output().length;
    await signInAttempt(app.url, `nobody-${randomUUID()}`, 'wrong-password', { 'x-forwarded-for': freshIp() });
    const noCsrf = await fetch(`${app.url}/api/auth/callback/credentials`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-forwarded-for': freshIp() },
      body: new URLSearchParams({ username: `nobody-${randomUUID()}`, password: 'wrong-password' }),
    });
    await noCsrf.arrayBuffer();
    // A session cookie that is not one of ours (it does not decode): the client's doing too.
    await (await fetch(`${app.url}/api/auth/session`, { headers: { cookie: '__Host-keyward.session=not-a-jwe' } })).arrayBuffer();
    await expect.poll(() => app.output().slice(mark), { timeout: 5_000 }).toContain('auth.js: MissingCSRF');
    await expect.poll(() => app.output().slice(mark), { timeout: 5_000 }).toContain('auth.js: JWTSessionError');
    const output = app.output().slice(mark);
    expect(output).not.toContain('[auth]');
    const lines = output.split('\n').filter((line) => line.includes('auth.js'));
    const parsed = lines.map((line) => JSON.parse(line) as { level: number; msg: string; authError: string });
    const refused = { level: 30, msg: 'auth.js: credentials sign-in refused', authError: 'CredentialsSignin' };
    expect(parsed).toContainEqual(expect.objectContaining(refused));
    const missingCsrf = { level: 40, msg: 'auth.js: MissingCSRF', authError: 'MissingCSRF' };
    expect(parsed).toContainEqual(expect.objectContaining(missingCsrf));
    expect(parsed).toContainEqual(expect.objectContaining({ level: 40, msg: 'auth.js: JWTSessionError', authError: 'JWTSessionError' }));
  });

  it('a callbackUrl Auth.js would refuse (not a path, not an http(s) URL), in the query or its cookie, is dropped: no 500, no "not configured" page, no error logged', async () => {
    const mark = app.output().length;
    for (const path of ['/api/auth/session', '/api/auth/csrf', '/api/auth/providers']) {
      const query = await fetch(`${app.url}${path}?callbackUrl=foo`, { redirect: 'manual' });
      expect([path, query.status]).toEqual([path, 200]);
      await query.arrayBuffer();
      for (const value of ['%', 'javascript%3Aalert(1)', 'http%3A%2F%2F%5B']) {
        const cookie = await fetch(`${app.url}${path}`, { redirect: 'manual', headers: { cookie: `__Host-keyward.callback-url=${value}` } });
        expect([path, value, cookie.status]).toEqual([path, value, 200]);
        await cookie.arrayBuffer();
      }
    }
    // The sign-in page is reached as it would be without one: it goes home after sign-in.
    const signin = await fetch(`${app.url}/api/auth/signin?callbackUrl=foo`, { redirect: 'manual' });
    await signin.arrayBuffer();
    expect(signin.headers.get('location') ?? '').not.toContain('error=Configuration');
    // A path is kept as it was.
    const kept = await fetch(`${app.url}/api/auth/signin?callbackUrl=%2Fdashboard`, { redirect: 'manual' });
    await kept.arrayBuffer();
    expect(kept.headers.get('location') ?? '').toContain('callbackUrl=');
    expect(app.output().slice(mark)).not.toContain('InvalidCallbackUrl');
  });

  it('every Auth.js page answers Cache-Control: private, no-store (they set or carry the CSRF token)', async () => {
    for (const path of ['/api/auth/csrf', '/api/auth/signin', '/api/auth/providers', '/api/auth/session', '/api/auth/signout', '/api/auth/error']) {
      const response = await fetch(`${app.url}${path}`, { redirect: 'manual' });
      await response.arrayBuffer();
      expect(response.headers.get('cache-control'), path).toBe('private, no-store');
    }
    const attempt = await signInAttempt(app.url, 'nobody', 'wrong-password', { 'x-forwarded-for': freshIp() });
    expect(attempt.response.headers.get('cache-control')).toBe('private, no-store');
  });
});

/**
 * Device cookies against the built app, through both doors: `next start`'s route handler, and the fast lane
 * (`npm start`), which hands /api/auth to Next. A real sign-in sets the cookie next to Auth.js's session cookie,
 * and once carol's username is locked by posts from other addresses, her browser still signs in with it.
 */
describe.each([
  ['next start', startApp],
  ['the fast lane (npm start)', startFastLane],
] as const)('device cookies against %s', (_, start) => {
  const carolPassword = `pw-${randomUUID()}`;
  let app: AppServer;

  beforeAll(async () => {
    // The embedded store: the fast lane and Next's handlers cannot share a memory store.
    const store = { KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-device-')), 'keyward.db') };
    app = await start(await appSettings('carol', carolPassword, store));
  }, 90_000);

  afterAll(async () => {
    await app?.stop();
  });

  const deviceLine = (response: Response) => response.headers.getSetCookie().find((line) => line.startsWith('__Host-keyward.device=')) ?? null;

  it('a real sign-in sets the device cookie; with it, carol signs in while her username is locked for everyone else', async () => {
    const first = await signInAttempt(app.url, 'carol', carolPassword, { 'x-forwarded-for': freshIp() });
    expect(first.cookie).toMatch(/^__Host-keyward\.session=/);
    const line = deviceLine(first.response);
    expect(line).toMatch(/^__Host-keyward\.device=v2\.[^;]+; Path=\/; Max-Age=15552000; HttpOnly; Secure; SameSite=Strict$/);
    const device = line!.split(';')[0]!;

    // A wrong password sets no device cookie.
    const wrong = await signInAttempt(app.url, 'carol', 'wrong-password', { 'x-forwarded-for': freshIp() });
    expect(wrong.cookie).toBeNull();
    expect(deviceLine(wrong.response)).toBeNull();

    // Someone else names carol from other addresses until her username is locked.
    for (let i = 0; i < MAX; i++) await signInAttempt(app.url, 'carol', 'wrong-password', { 'x-forwarded-for': freshIp() });
    const locked = await signInAttempt(app.url, 'carol', carolPassword, { 'x-forwarded-for': freshIp() });
    expect(locked.response.status).toBe(429);
    expect(locked.cookie).toBeNull();

    // Her browser, with its device cookie, still signs in, and is given a new one.
    const again = await signInAttempt(app.url, 'carol', carolPassword, { 'x-forwarded-for': freshIp(), cookie: device });
    expect(again.response.status).toBe(302);
    expect(again.cookie).toMatch(/^__Host-keyward\.session=/);
    expect(deviceLine(again.response)?.split(';')[0]).not.toBe(device);
    // A tampered copy of it does not.
    const tampered = `${device.slice(0, -1)}${device.endsWith('A') ? 'B' : 'A'}`;
    expect((await signInAttempt(app.url, 'carol', carolPassword, { 'x-forwarded-for': freshIp(), cookie: tampered })).response.status).toBe(429);
  });
});
