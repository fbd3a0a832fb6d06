import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleSignInPost } from '../../lib/core/api/sign-in';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { signIn, signInAttempt, startApp, type AppServer } from '../fixtures/app-server';
import { capturingLogger } from '../fixtures/claims-session';
import { testSessionSecrets } from '../fixtures/secrets';
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
  url?: string;
  method?: string;
  body?: BodyInit | null;
  contentType?: string;
}): Request {
  const headers = new Headers();
  if (options.ip) headers.set('x-forwarded-for', options.ip);
  const method = options.method ?? 'POST';
  let body: BodyInit | null | undefined = options.body;
  if (body === undefined && method === 'POST') {
    const form = new URLSearchParams({ csrfToken: 'token', password: 'wrong-password' });
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

/**
 * The attacks of issue 11 against the production server: once `bob` is locked out, neither a JSON body nor
 * a repeated username may try his password. Before the fix both signed in with the right password.
 */
describe('against next start: a locked-out user stays locked out', () => {
  const bobPassword = `pw-${randomUUID()}`;
  let app: AppServer;

  beforeAll(async () => {
    const usersFile = await writeUsersFile([{ username: 'bob', password: bobPassword, roles: ['user'] }]);
    app = await startApp({
      ...testSessionSecrets(),
      KEYWARD_USERS_FILE: usersFile,
      ...uncalledUpstream(),
      KEYWARD_STORE: 'memory',
      KEYWARD_SIGNIN_MAX_ATTEMPTS: String(MAX),
      KEYWARD_SIGNIN_WINDOW_SECONDS: String(WINDOW),
    });
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

  it("Auth.js's own messages are Keyward's JSON log lines, not console text: a wrong password at info, a missing CSRF token as an error", async () => {
    const mark = app.output().length;
    await signInAttempt(app.url, `nobody-${randomUUID()}`, 'wrong-password', { 'x-forwarded-for': freshIp() });
    const noCsrf = await fetch(`${app.url}/api/auth/callback/credentials`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-forwarded-for': freshIp() },
      body: new URLSearchParams({ username: `nobody-${randomUUID()}`, password: 'wrong-password' }),
    });
    await noCsrf.arrayBuffer();
    await expect.poll(() => app.output().slice(mark), { timeout: 5_000 }).toContain('auth.js: MissingCSRF');
    const output = app.output().slice(mark);
    expect(output).not.toContain('[auth]');
    const lines = output.split('\n').filter((line) => line.includes('auth.js'));
    const parsed = lines.map((line) => JSON.parse(line) as { level: number; msg: string; authError: string });
    const refused = { level: 30, msg: 'auth.js: credentials sign-in refused', authError: 'CredentialsSignin' };
    expect(parsed).toContainEqual(expect.objectContaining(refused));
    const missingCsrf = { level: 50, msg: 'auth.js: MissingCSRF', authError: 'MissingCSRF' };
    expect(parsed).toContainEqual(expect.objectContaining(missingCsrf));
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
