import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { limitSignIn } from '../../lib/core/api/sign-in';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { capturingLogger } from '../fixtures/claims-session';
import { testSessionSecrets } from '../fixtures/secrets';

/**
 * Sign-in attempt limits (lib/core/api/sign-in.ts) with a runtime from createRuntime (memory store):
 * per client IP and per username, counted before Auth.js would check the password.
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

/** A fresh address and name per test, so tests do not share counters. */
let next = 0;
const freshIp = () => `198.51.100.${++next}`;
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

async function expectLimited(response: Response | null): Promise<void> {
  expect(response).not.toBeNull();
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
    for (let i = 0; i < MAX; i++) expect(await limitSignIn(attempt({ ip }), runtime)).toBeNull();
    await expectLimited(await limitSignIn(attempt({ ip }), runtime));
    await expectLimited(await limitSignIn(attempt({ ip }), runtime));
    expect(await limitSignIn(attempt({ ip: freshIp() }), runtime)).toBeNull();
  });

  it('counts the address one hop from the right: a client-chosen entry on the left does not make a new address', async () => {
    const ip = freshIp();
    for (let i = 0; i < MAX; i++) expect(await limitSignIn(attempt({ ip: `10.9.9.${i}, ${ip}` }), runtime)).toBeNull();
    await expectLimited(await limitSignIn(attempt({ ip: `10.9.9.200, ${ip}` }), runtime));
    await expectLimited(await limitSignIn(attempt({ ip }), runtime));
  });

  it('counts attempts whose body is not a form (Auth.js refuses them, the address still pays)', async () => {
    const ip = freshIp();
    for (let i = 0; i < MAX; i++) {
      expect(
        await limitSignIn(attempt({ ip, body: '{"username":"x"}', contentType: 'application/json' }), runtime),
      ).toBeNull();
    }
    await expectLimited(await limitSignIn(attempt({ ip }), runtime));
  });

  it('leaves the request body readable for Auth.js', async () => {
    const request = attempt({ ip: freshIp(), username: 'reader' });
    expect(await limitSignIn(request, runtime)).toBeNull();
    const form = await request.formData();
    expect(form.get('username')).toBe('reader');
    expect(form.get('password')).toBe('wrong-password');
  });
});

describe('per username', () => {
  it('the same username from many addresses is limited by the username counter', async () => {
    const username = freshName();
    for (let i = 0; i < MAX; i++) expect(await limitSignIn(attempt({ ip: freshIp(), username }), runtime)).toBeNull();
    await expectLimited(await limitSignIn(attempt({ ip: freshIp(), username }), runtime));
    // Case does not make a new account name.
    await expectLimited(await limitSignIn(attempt({ ip: freshIp(), username: username.toUpperCase() }), runtime));
    // Other usernames from fresh addresses are unaffected.
    expect(await limitSignIn(attempt({ ip: freshIp(), username: freshName() }), runtime)).toBeNull();
  });

  it('a limited address is refused whichever username it tries', async () => {
    const ip = freshIp();
    for (let i = 0; i < MAX; i++) expect(await limitSignIn(attempt({ ip, username: freshName() }), runtime)).toBeNull();
    await expectLimited(await limitSignIn(attempt({ ip, username: freshName() }), runtime));
  });
});

describe('only credential sign-in posts are limited', () => {
  it('GET and other paths are never limited, even from a limited address with a limited username', async () => {
    const ip = freshIp();
    const username = freshName();
    for (let i = 0; i < MAX; i++) expect(await limitSignIn(attempt({ ip, username }), runtime)).toBeNull();
    await expectLimited(await limitSignIn(attempt({ ip, username }), runtime));

    for (let i = 0; i < 3 * MAX; i++) {
      expect(await limitSignIn(attempt({ ip, method: 'GET', body: null }), runtime)).toBeNull();
      expect(await limitSignIn(attempt({ ip, method: 'HEAD', body: null }), runtime)).toBeNull();
      for (const path of [
        '/api/auth/signin',
        '/api/auth/callback/oidc',
        '/api/auth/csrf',
        '/api/auth/signout',
        '/api/proxy/echo/items',
      ]) {
        expect(await limitSignIn(attempt({ ip, username, url: `${ORIGIN}${path}` }), runtime)).toBeNull();
      }
      expect(await limitSignIn(attempt({ ip, username, url: `${CALLBACK}/extra` }), runtime)).toBeNull();
    }
    // The refused pair is still refused: the other requests neither counted nor reset anything.
    await expectLimited(await limitSignIn(attempt({ ip, username }), runtime));
  });

  it('the limit applies under any base path ending in /callback/credentials', async () => {
    const ip = freshIp();
    for (let i = 0; i < MAX; i++) {
      expect(
        await limitSignIn(attempt({ ip, url: `${ORIGIN}/base/api/auth/callback/credentials?x=1` }), runtime),
      ).toBeNull();
    }
    await expectLimited(await limitSignIn(attempt({ ip }), runtime));
  });
});
