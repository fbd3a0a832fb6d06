import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { defineUpstream, type UpstreamDefinition } from '../../lib/core/config/load';
import { Limits } from '../../lib/core/limits/limits';
import { periodWindow } from '../../lib/core/limits/period';
import { handleProxy, type ProxyDeps, type ProxyEvent } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import type { Store } from '../../lib/store/types';
import { freePort } from '../fixtures/app-server';
import { capturingLogger, claimsSessionCookie, findLeak, REDIS_URL } from '../fixtures/claims-session';
import { deleteKeysUnder, keysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { echoHandler, startUpstream, type RecordedRequest, type TestUpstream } from '../fixtures/upstream';

/**
 * Rate limits, quotas and budgets (DESIGN.md step 6) through the real pipeline, a real node:http upstream
 * and the test run's Redis (every key under a random prefix for this run, deleted at the end). Counters are read
 * back from the store with the same connection the runtime writes with, so a read is ordered after every
 * write the pipeline issued before it: outcomes are counted, never timed.
 */

const APP_ORIGIN = 'https://app.keyward.test';
const PREFIX = `keyward-test-${randomUUID()}:`;

let upstream: TestUpstream;
let downOrigin: string;
let env: Record<string, string>;
let apiKey: string;
const log = capturingLogger();
const cleanups: Array<() => Promise<unknown>> = [];

/** Each upstream gets its own base path on the one test server, so requests can be told apart. */
function definitions(origin: string): UpstreamDefinition[] {
  const auth = { type: 'header', name: 'x-api-key', secret: { env: 'LIMITS_KEY' } } as const;
  const base = (id: string) => ({ baseUrl: `${origin}/${id}/`, auth, timeoutMs: 60_000 });
  const chatBody = {
    type: 'object',
    properties: {
      max_tokens: { type: 'integer', minimum: 0, maximum: 1_000_000 },
      // Test-only: how much usage the scripted upstream reports (absent: none).
      report: { type: 'integer', minimum: 0 },
      stream: { type: 'boolean' },
    },
  } as const;
  return [
    defineUpstream('peruser', {
      ...base('peruser'),
      rateLimits: [{ by: 'user', limit: 3, windowSeconds: 60 }],
      routes: [
        { method: 'GET', path: '/a' },
        { method: 'GET', path: '/b' },
      ],
    }),
    defineUpstream('perroute', {
      ...base('perroute'),
      routes: [
        { method: 'GET', path: '/limited', rateLimits: [{ by: 'user', limit: 2, windowSeconds: 60 }] },
        { method: 'GET', path: '/free' },
      ],
    }),
    defineUpstream('percred', {
      ...base('percred'),
      rateLimits: [{ by: 'credential', limit: 3, windowSeconds: 60 }],
      routes: [{ method: 'GET', path: '/a' }],
    }),
    defineUpstream('shared', {
      ...base('shared'),
      rateLimits: [
        { by: 'user', limit: 2, windowSeconds: 60 },
        { by: 'credential', limit: 4, windowSeconds: 60 },
      ],
      routes: [{ method: 'GET', path: '/a' }],
    }),
    defineUpstream('perip', {
      ...base('perip'),
      rateLimits: [{ by: 'ip', limit: 2, windowSeconds: 60 }],
      routes: [{ method: 'GET', path: '/a' }],
    }),
    defineUpstream('byrole', {
      ...base('byrole'),
      rateLimits: [
        { by: 'user', limit: 1, windowSeconds: 60, roles: ['free'] },
        { by: 'user', limit: 3, windowSeconds: 60, roles: ['pro'] },
      ],
      routes: [{ method: 'GET', path: '/a' }],
    }),
    defineUpstream('quota', {
      ...base('quota'),
      quotas: [{ by: 'user', requests: 3, period: 'day' }],
      routes: [
        { method: 'GET', path: '/a' },
        { method: 'GET', path: '/b' },
        {
          method: 'POST',
          path: '/contract',
          body: { type: 'object', required: ['n'], properties: { n: { type: 'integer' } } },
        },
      ],
    }),
    defineUpstream('budget', {
      ...base('budget'),
      budgets: [{ name: 'tokens', by: 'user', units: 100, period: 'day' }],
      quotas: [{ by: 'user', requests: 1000, period: 'day' }],
      routes: [
        {
          method: 'POST',
          path: '/chat',
          body: chatBody,
          cost: { reserve: 50, reserveFrom: { field: 'body.max_tokens' }, usage: { json: 'usage.total_tokens' } },
        },
        { method: 'POST', path: '/hdr', cost: { reserve: 40, usage: { header: 'x-usage' } } },
        { method: 'GET', path: '/flat', cost: { reserve: 10 } },
        // No query contract: the field is read as the client sent it.
        { method: 'GET', path: '/search', cost: { reserve: 1, reserveFrom: { field: 'query.limit' } } },
        // A price table whose "*" is cheap: the model named in a passed-through query picks the price.
        {
          method: 'GET',
          path: '/priced',
          cost: {
            reserveFrom: { field: 'query.max' },
            price: { model: 'query.model', table: { big: { input: 0, output: 10 }, '*': { input: 0, output: 0.01 } }, inputTokens: ['usage.in'], outputTokens: ['usage.out'] },
          },
        },
      ],
    }),
    defineUpstream('down', {
      ...base('down'),
      baseUrl: `${downOrigin}/down/`,
      timeoutMs: 5_000,
      budgets: [{ name: 'tokens', by: 'user', units: 100, period: 'day' }],
      quotas: [{ by: 'user', requests: 2, period: 'day' }],
      routes: [
        {
          method: 'POST',
          path: '/chat',
          body: chatBody,
          cost: { reserve: 7, reserveFrom: { field: 'body.max_tokens' } },
        },
      ],
    }),
    defineUpstream('concq', {
      ...base('concq'),
      quotas: [{ by: 'user', requests: 50, period: 'day' }],
      routes: [{ method: 'GET', path: '/q' }],
    }),
    defineUpstream('concb', {
      ...base('concb'),
      budgets: [{ by: 'upstream', units: 50, period: 'day' }],
      routes: [{ method: 'GET', path: '/b', cost: { reserve: 1 } }],
    }),
    defineUpstream('concr', {
      ...base('concr'),
      rateLimits: [{ by: 'upstream', limit: 50, windowSeconds: 600 }],
      routes: [{ method: 'GET', path: '/r' }],
    }),
  ];
}

/** One Keyward "instance": a runtime of its own (its own store connection and upstream client). */
interface Instance {
  readonly runtime: Runtime;
  readonly deps: ProxyDeps;
  readonly store: Store;
  /** Resolves with the pipeline's completion event for a request id (after the response ended or aborted). */
  completion(requestId: string): Promise<ProxyEvent>;
}

function instance(options: { store?: Store; env?: Record<string, string> } = {}): Instance {
  const runtime = createRuntime({
    env: { ...env, ...options.env },
    upstreams: definitions(upstream.origin),
    logger: log.logger,
    store: options.store,
  });
  const events = new Map<string, ProxyEvent>();
  const waiters = new Map<string, (event: ProxyEvent) => void>();
  const deps: ProxyDeps = {
    ...runtime,
    onComplete(event) {
      runtime.onComplete?.(event);
      events.set(event.requestId, event);
      waiters.get(event.requestId)?.(event);
    },
  };
  cleanups.push(async () => {
    await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
    await runtime.store.close();
  });
  return {
    runtime,
    deps,
    store: runtime.store,
    completion(requestId) {
      const done = events.get(requestId);
      if (done) return Promise.resolve(done);
      return new Promise((resolve) => waiters.set(requestId, resolve));
    },
  };
}

async function redisStore(url = REDIS_URL): Promise<RedisStore> {
  const store = new RedisStore(url, { prefix: PREFIX });
  if (url === REDIS_URL) await store.ready();
  return store;
}

interface User {
  readonly sub: string;
  readonly roles: string[];
}
const newUser = (roles: string[] = ['user']): User => ({ sub: `local:${randomUUID()}`, roles });
const cookies = new Map<string, Promise<string>>();
function cookieFor(user: User): Promise<string> {
  const key = `${user.sub}|${user.roles.join(',')}`;
  let cookie = cookies.get(key);
  if (!cookie) {
    cookie = claimsSessionCookie(env.AUTH_SECRET!, { sub: user.sub, roles: user.roles });
    cookies.set(key, cookie);
  }
  return cookie;
}

interface CallOptions {
  method?: string;
  body?: Record<string, unknown> | string;
  xff?: string;
  /** The query string, without "?". */
  query?: string;
  signal?: AbortSignal;
  /** Return before reading the body (streaming tests read it themselves). */
  raw?: boolean;
  deps?: ProxyDeps;
}

interface Result {
  readonly status: number;
  readonly response: Response;
  readonly headers: Headers;
  readonly text: string;
  readonly requestId: string;
  errorCode(): string | null;
}

async function call(
  on: Instance,
  user: User,
  upstreamId: string,
  path: string[],
  options: CallOptions = {},
): Promise<Result> {
  const method = options.method ?? (options.body === undefined ? 'GET' : 'POST');
  const headers = new Headers({ cookie: await cookieFor(user), 'x-keyward-csrf': '1' });
  if (method !== 'GET') headers.set('origin', APP_ORIGIN);
  if (options.xff !== undefined) headers.set('x-forwarded-for', options.xff);
  let body: string | undefined;
  if (options.body !== undefined) {
    body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
    headers.set('content-type', 'application/json');
  }
  const url = `${APP_ORIGIN}/api/proxy/${upstreamId}/${path.join('/')}${options.query ? `?${options.query}` : ''}`;
  const request = new Request(url, { method, headers, body, signal: options.signal });
  const response = await handleProxy(request, { upstream: upstreamId, path }, options.deps ?? on.deps);
  const text = options.raw ? '' : await response.text();
  const requestId = response.headers.get('x-request-id') ?? '';
  return {
    status: response.status,
    response,
    headers: response.headers,
    text,
    requestId,
    errorCode() {
      if (response.status < 400) return null;
      const parsed = JSON.parse(text) as { error: { code: string; message: string; requestId: string } };
      expect(Object.keys(parsed)).toEqual(['error']);
      expect(Object.keys(parsed.error)).toEqual(['code', 'message', 'requestId']);
      expect(parsed.error.requestId).toBe(requestId);
      return parsed.error.code;
    },
  };
}

/** Upstream requests that arrived under one upstream's base path. */
const received = (upstreamId: string) => upstream.requests.filter((r) => r.url.startsWith(`/${upstreamId}/`));

/** The counter key of a quota or budget on an upstream (rule ids are `<upstream>|*|<name>`). */
function meterKey(upstreamId: string, name: string, subject: string, period: 'day' = 'day'): string {
  return `meter:${upstreamId}|*|${name}:${subject}:${periodWindow(period, Date.now()).id}`;
}

async function counter(store: Store, key: string): Promise<number | null> {
  const value = await store.get(key);
  return value === null ? null : Number(value);
}

const secondsToUtcMidnight = () => {
  const now = Date.now();
  const d = new Date(now);
  return Math.ceil((Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1) - now) / 1000);
};

function expect429(result: Result, code: string, maxRetry: number): number {
  expect(result.status).toBe(429);
  expect(result.errorCode()).toBe(code);
  expect(result.headers.get('retry-after')).toMatch(/^\d+$/);
  const retry = Number(result.headers.get('retry-after'));
  expect(retry).toBeGreaterThanOrEqual(1);
  expect(retry).toBeLessThanOrEqual(maxRetry);
  expect(result.headers.get('cache-control')).toBe('private, no-store');
  return retry;
}

/** Parses `"name";r=N;t=N, …` into name → {r, t} (and `q`, `w` for RateLimit-Policy). */
function parseLimitField(value: string | null): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const item of (value ?? '').split(', ').filter(Boolean)) {
    const match = /^"([a-z0-9_-]+)"((?:;[a-z]=\d+)+)$/.exec(item);
    expect(match, `structured field item ${item}`).not.toBeNull();
    out[match![1]!] = Object.fromEntries(
      match![2]!
        .slice(1)
        .split(';')
        .map((p) => [p[0]!, Number(p.slice(2))]),
    );
  }
  return out;
}

let a: Instance;
let b: Instance;

beforeAll(async () => {
  upstream = await startUpstream();
  downOrigin = `http://127.0.0.1:${await freePort()}`;
  apiKey = randomSecret('lim');
  env = { ...testSessionSecrets(), LIMITS_KEY: apiKey, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, KEYWARD_STORE: 'memory' };
  a = instance({ store: await redisStore() });
  b = instance({ store: await redisStore() });
});

afterAll(async () => {
  expect(findLeak(log.lines.join(''), [apiKey, env.AUTH_SECRET!, env.KEYWARD_SESSION_SECRET!])).toBeNull();
  await upstream.close();
  for (const cleanup of cleanups) await cleanup();
  // Remove this run's keys (counters live until the end of the day plus an hour).
  await deleteKeysUnder(REDIS_URL, PREFIX);
});

beforeEach(() => upstream.reset());

describe('rate limits on Redis', () => {
  it('per user: N pass with RateLimit headers, N+1 is 429 rate_limited with Retry-After; another user is unaffected', async () => {
    const alice = newUser();
    const bob = newUser();
    for (let i = 1; i <= 3; i++) {
      const r = await call(a, alice, 'peruser', ['a']);
      expect(r.status).toBe(200);
      expect(parseLimitField(r.headers.get('ratelimit-policy'))).toEqual({ 'user-60s': { q: 3, w: 60 } });
      const state = parseLimitField(r.headers.get('ratelimit'))['user-60s']!;
      expect(state.r).toBe(3 - i);
      expect(state.t).toBeGreaterThanOrEqual(1);
      expect(state.t).toBeLessThanOrEqual(60);
    }
    expect(received('peruser')).toHaveLength(3);
    const refused = await call(a, alice, 'peruser', ['a']);
    expect429(refused, 'rate_limited', 60);
    expect(parseLimitField(refused.headers.get('ratelimit-policy'))).toEqual({ 'user-60s': { q: 3, w: 60 } });
    expect(parseLimitField(refused.headers.get('ratelimit'))['user-60s']!.r).toBe(0);
    // The upstream's rule counts all its routes.
    expect429(await call(a, alice, 'peruser', ['b']), 'rate_limited', 60);
    expect(received('peruser')).toHaveLength(3);

    const other = await call(a, bob, 'peruser', ['b']);
    expect(other.status).toBe(200);
    expect(parseLimitField(other.headers.get('ratelimit'))['user-60s']!.r).toBe(2);
    expect(received('peruser')).toHaveLength(4);
  });

  it("the counter lives in Redis: the second instance sees the first one's count", async () => {
    const carol = newUser();
    expect((await call(a, carol, 'peruser', ['a'])).status).toBe(200);
    expect((await call(b, carol, 'peruser', ['a'])).status).toBe(200);
    const third = await call(a, carol, 'peruser', ['b']);
    expect(parseLimitField(third.headers.get('ratelimit'))['user-60s']!.r).toBe(0);
    expect429(await call(b, carol, 'peruser', ['a']), 'rate_limited', 60);
  });

  it("per route: a route rule does not count (or limit) the upstream's other routes", async () => {
    const dave = newUser();
    for (let i = 1; i <= 2; i++) {
      const r = await call(a, dave, 'perroute', ['limited']);
      expect(r.status).toBe(200);
      expect(parseLimitField(r.headers.get('ratelimit-policy'))).toEqual({ 'route-user-60s': { q: 2, w: 60 } });
      expect(parseLimitField(r.headers.get('ratelimit'))['route-user-60s']!.r).toBe(2 - i);
    }
    expect429(await call(a, dave, 'perroute', ['limited']), 'rate_limited', 60);
    for (let i = 0; i < 5; i++) {
      const free = await call(a, dave, 'perroute', ['free']);
      expect(free.status).toBe(200);
      expect(free.headers.get('ratelimit')).toBeNull();
      expect(free.headers.get('ratelimit-policy')).toBeNull();
    }
    expect(received('perroute').map((r) => r.url)).toEqual([
      '/perroute/limited',
      '/perroute/limited',
      ...Array.from({ length: 5 }, () => '/perroute/free'),
    ]);
  });

  it('per credential: two users on the same service key share one counter', async () => {
    const erin = newUser();
    const frank = newUser();
    expect((await call(a, erin, 'percred', ['a'])).status).toBe(200);
    expect((await call(a, erin, 'percred', ['a'])).status).toBe(200);
    const third = await call(b, frank, 'percred', ['a']);
    expect(third.status).toBe(200);
    expect(parseLimitField(third.headers.get('ratelimit'))['credential-60s']!.r).toBe(0);
    expect429(await call(a, frank, 'percred', ['a']), 'rate_limited', 60);
    expect429(await call(b, erin, 'percred', ['a']), 'rate_limited', 60);
    expect(received('percred')).toHaveLength(3);
  });

  it("a call one rule refuses takes no point from the others: one user's flood over their own limit does not use up the key's shared one", async () => {
    const [hal, ida] = [newUser(), newUser()];
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await call(i % 2 === 0 ? a : b, hal, 'shared', ['a'])).status);
    expect(statuses).toEqual([200, 200, 429, 429, 429, 429, 429, 429]);
    // The key's counter took hal's 2 calls only: ida has her 2, and only then is the key's limit of 4 reached.
    const first = await call(a, ida, 'shared', ['a']);
    expect(first.status).toBe(200);
    expect(parseLimitField(first.headers.get('ratelimit'))['credential-60s']!.r).toBe(1);
    expect((await call(b, ida, 'shared', ['a'])).status).toBe(200);
    expect429(await call(a, newUser(), 'shared', ['a']), 'rate_limited', 60);
    expect(received('shared')).toHaveLength(4);
  });

  it('per ip: the address one hop from the right of X-Forwarded-For, shared by every user on it', async () => {
    const gina = newUser();
    const hank = newUser();
    expect((await call(a, gina, 'perip', ['a'], { xff: '203.0.113.7' })).status).toBe(200);
    const second = await call(a, hank, 'perip', ['a'], { xff: '203.0.113.7' });
    expect(second.status).toBe(200);
    expect(parseLimitField(second.headers.get('ratelimit'))['ip-60s']!.r).toBe(0);
    expect429(await call(a, gina, 'perip', ['a'], { xff: '203.0.113.7' }), 'rate_limited', 60);
    // A client-chosen entry on the left does not make a new address.
    expect429(await call(a, gina, 'perip', ['a'], { xff: '198.51.100.99, 203.0.113.7' }), 'rate_limited', 60);
    const elsewhere = await call(a, gina, 'perip', ['a'], { xff: '203.0.113.8' });
    expect(elsewhere.status).toBe(200);
    expect(parseLimitField(elsewhere.headers.get('ratelimit'))['ip-60s']!.r).toBe(1);
    expect(received('perip')).toHaveLength(3);
  });

  it('role-filtered rules apply only to sessions holding one of their roles', async () => {
    const free = newUser(['free']);
    const first = await call(a, free, 'byrole', ['a']);
    expect(first.status).toBe(200);
    expect(parseLimitField(first.headers.get('ratelimit-policy'))).toEqual({ 'user-60s': { q: 1, w: 60 } });
    expect429(await call(a, free, 'byrole', ['a']), 'rate_limited', 60);

    const pro = newUser(['pro']);
    for (let i = 1; i <= 3; i++) {
      const r = await call(a, pro, 'byrole', ['a']);
      expect(r.status).toBe(200);
      expect(parseLimitField(r.headers.get('ratelimit-policy'))).toEqual({ 'user-60s-2': { q: 3, w: 60 } });
      expect(parseLimitField(r.headers.get('ratelimit'))['user-60s-2']!.r).toBe(3 - i);
    }
    expect429(await call(a, pro, 'byrole', ['a']), 'rate_limited', 60);

    // Both roles: both rules count, the stricter one refuses.
    const both = newUser(['free', 'pro']);
    const once = await call(a, both, 'byrole', ['a']);
    expect(once.status).toBe(200);
    expect(parseLimitField(once.headers.get('ratelimit-policy'))).toEqual({
      'user-60s': { q: 1, w: 60 },
      'user-60s-2': { q: 3, w: 60 },
    });
    const refused = await call(a, both, 'byrole', ['a']);
    expect429(refused, 'rate_limited', 60);
    // The refused call took no point from the rule that had room: it stands at 2 left.
    expect(parseLimitField(refused.headers.get('ratelimit'))).toMatchObject({
      'user-60s': { r: 0 },
      'user-60s-2': { r: 2 },
    });

    // No matching role: no rule, no headers, no limit.
    const other = newUser(['user']);
    for (let i = 0; i < 5; i++) {
      const r = await call(a, other, 'byrole', ['a']);
      expect(r.status).toBe(200);
      expect(r.headers.get('ratelimit')).toBeNull();
    }
    expect(received('byrole')).toHaveLength(1 + 3 + 1 + 5);
  });

  it("rate limiter state is written under the store's key prefix", async () => {
    expect((await keysUnder(REDIS_URL, `${PREFIX}rl|peruser|`)).length).toBeGreaterThan(0);
  });
});

describe('quotas on Redis', () => {
  it('per user per day: 3 pass with headers, the 4th is 429 quota_exceeded until the end of the UTC day', async () => {
    const ivy = newUser();
    const key = meterKey('quota', 'requests-user-day', `u:${ivy.sub}`);
    for (let i = 1; i <= 3; i++) {
      const before = secondsToUtcMidnight();
      const r = await call(a, ivy, 'quota', [i === 2 ? 'b' : 'a']);
      const after = secondsToUtcMidnight();
      expect(r.status).toBe(200);
      expect(parseLimitField(r.headers.get('ratelimit-policy'))).toEqual({ 'requests-user-day': { q: 3, w: 86_400 } });
      const state = parseLimitField(r.headers.get('ratelimit'))['requests-user-day']!;
      expect(state.r).toBe(3 - i);
      if (after <= before) {
        expect(state.t).toBeGreaterThanOrEqual(after);
        expect(state.t).toBeLessThanOrEqual(before);
      }
      expect(await counter(a.store, key)).toBe(i);
    }
    const before = secondsToUtcMidnight();
    const refused = await call(b, ivy, 'quota', ['a']);
    const after = secondsToUtcMidnight();
    const retry = expect429(refused, 'quota_exceeded', 86_400);
    if (after <= before) {
      expect(retry).toBeGreaterThanOrEqual(after);
      expect(retry).toBeLessThanOrEqual(before);
    }
    expect(parseLimitField(refused.headers.get('ratelimit'))['requests-user-day']!.r).toBe(0);
    expect(received('quota')).toHaveLength(3);
    // A refusal adds nothing.
    expect(await counter(a.store, key)).toBe(3);

    const jack = newUser();
    expect((await call(b, jack, 'quota', ['a'])).status).toBe(200);
    expect(await counter(b.store, meterKey('quota', 'requests-user-day', `u:${jack.sub}`))).toBe(1);
  });

  it('a request its contract refuses consumes no quota', async () => {
    const kim = newUser();
    const key = meterKey('quota', 'requests-user-day', `u:${kim.sub}`);
    for (const body of [{ n: 'one' }, { n: 1, extra: true }, '{']) {
      const r = await call(a, kim, 'quota', ['contract'], { body });
      expect(r.status).toBe(400);
      expect(r.errorCode()).toBe('contract_violation');
    }
    expect(await counter(a.store, key)).toBeNull();
    for (let i = 0; i < 3; i++)
      expect((await call(a, kim, 'quota', ['contract'], { body: { n: i } })).status).toBe(200);
    expect429(await call(a, kim, 'quota', ['contract'], { body: { n: 9 } }), 'quota_exceeded', 86_400);
    expect(await counter(a.store, key)).toBe(3);
  });
});

/** A scripted LLM-like upstream: reports `report` as usage.total_tokens, as JSON or as the last SSE event. */
function llm(options: { gate?: Promise<void>; stall?: { events: string[] } } = {}) {
  return async (req: IncomingMessage, res: ServerResponse, record: RecordedRequest) => {
    await record.bodyDone;
    if (!req.url!.startsWith('/budget/chat')) return echoHandler(req, res, record);
    const body = JSON.parse(record.bodyPreview.toString('utf8')) as { report?: number; stream?: boolean };
    await options.gate;
    if (options.stall) {
      // Streams a few events, then stays open until the client goes away.
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const event of options.stall.events) res.write(`data: ${event}\n\n`);
      return;
    }
    const usage = body.report === undefined ? {} : { usage: { prompt_tokens: 1, total_tokens: body.report } };
    if (body.stream) {
      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
      for (const word of ['a', 'b', 'c'])
        res.write(`data: ${JSON.stringify({ choices: [{ delta: { content: word } }], usage: null })}\n\n`);
      res.write(`data: ${JSON.stringify({ choices: [], ...usage })}\n\n`);
      res.end('data: [DONE]\n\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ choices: [{ message: { content: 'ok' } }], ...usage }));
  };
}

describe('budgets on Redis: reserve the worst case, settle to the reported usage', () => {
  const tokensKey = (user: User) => meterKey('budget', 'tokens', `u:${user.sub}`);

  it('JSON: reserves body.max_tokens while the call is in flight, settles to usage.total_tokens', async () => {
    const lee = newUser();
    let release!: () => void;
    upstream.handle(llm({ gate: new Promise<void>((resolve) => (release = resolve)) }));
    const n = upstream.requests.length + 1;
    const pending = call(a, lee, 'budget', ['chat'], { body: { max_tokens: 60, report: 30 } });
    await upstream.nthRequest(n);
    expect(await counter(a.store, tokensKey(lee))).toBe(60);
    release();
    const r = await pending;
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text)).toMatchObject({ usage: { total_tokens: 30 } });
    const event = await a.completion(r.requestId);
    expect(event.outcome).toBe('complete');
    expect(event.units).toBe(30);
    expect(await counter(a.store, tokensKey(lee))).toBe(30);
    // Budgets carry no RateLimit fields of their own; the upstream's quota does.
    expect(Object.keys(parseLimitField(r.headers.get('ratelimit-policy')))).toEqual(['requests-user-day']);
  });

  it('budget 100: three calls reported at 30 leave 10; a 4th reserve of 30 is refused, one of 10 fits exactly', async () => {
    const max = newUser();
    upstream.handle(llm());
    for (let i = 1; i <= 3; i++) {
      const r = await call(i % 2 ? a : b, max, 'budget', ['chat'], { body: { max_tokens: 30, report: 30 } });
      expect(r.status).toBe(200);
      expect(await counter(a.store, tokensKey(max))).toBe(30 * i);
    }
    const upstreamCalls = received('budget').length;
    const before = secondsToUtcMidnight();
    const refused = await call(b, max, 'budget', ['chat'], { body: { max_tokens: 30, report: 30 } });
    const after = secondsToUtcMidnight();
    const retry = expect429(refused, 'budget_exceeded', 86_400);
    if (after <= before) {
      expect(retry).toBeGreaterThanOrEqual(after);
      expect(retry).toBeLessThanOrEqual(before);
    }
    expect(received('budget')).toHaveLength(upstreamCalls);
    expect(await counter(a.store, tokensKey(max))).toBe(90);
    // All or nothing: the refused call did not count against the quota reserved in the same step.
    expect(await counter(a.store, meterKey('budget', 'requests-user-day', `u:${max.sub}`))).toBe(3);

    const fits = await call(a, max, 'budget', ['chat'], { body: { max_tokens: 10, report: 10 } });
    expect(fits.status).toBe(200);
    expect(await counter(a.store, tokensKey(max))).toBe(100);
    expect429(
      await call(a, max, 'budget', ['chat'], { body: { max_tokens: 1, report: 1 } }),
      'budget_exceeded',
      86_400,
    );
    expect(received('budget')).toHaveLength(upstreamCalls + 1);
  });

  it('without the bounding field, "reserve" is used; with no usage reported, the reservation stays charged', async () => {
    const ned = newUser();
    upstream.handle(llm());
    expect((await call(a, ned, 'budget', ['chat'], { body: { report: 12 } })).status).toBe(200);
    expect(await counter(a.store, tokensKey(ned))).toBe(12);
    const silent = await call(a, ned, 'budget', ['chat'], { body: { max_tokens: 40 } });
    expect(silent.status).toBe(200);
    expect((await a.completion(silent.requestId)).units).toBe(40);
    expect(await counter(a.store, tokensKey(ned))).toBe(52);
    // reserve: 50 (no max_tokens) would go over 100: refused.
    expect429(await call(a, ned, 'budget', ['chat'], { body: {} }), 'budget_exceeded', 86_400);
    expect(await counter(a.store, tokensKey(ned))).toBe(52);
    // A route with no usage source is charged its reservation.
    expect((await call(a, ned, 'budget', ['flat'])).status).toBe(200);
    expect(await counter(a.store, tokensKey(ned))).toBe(62);
  });

  it('a bound of 0 (max_tokens: 0) still reserves 1 and settles to the usage reported, so a spent budget refuses it', async () => {
    const zoe = newUser();
    upstream.handle(llm());
    for (let i = 1; i <= 4; i++) {
      const r = await call(a, zoe, 'budget', ['chat'], { body: { max_tokens: 0, report: 25 } });
      expect(r.status).toBe(200);
      expect((await a.completion(r.requestId)).units).toBe(25);
      expect(await counter(a.store, tokensKey(zoe))).toBe(25 * i);
    }
    const upstreamCalls = received('budget').length;
    const spent = await call(b, zoe, 'budget', ['chat'], { body: { max_tokens: 0, report: 25 } });
    expect429(spent, 'budget_exceeded', 86_400);
    expect(received('budget')).toHaveLength(upstreamCalls);
    expect(await counter(a.store, tokensKey(zoe))).toBe(100);
  });

  it('a query field read for the reservation but sent in a form Keyward cannot read as one number is refused (400), not reserved at "reserve"', async () => {
    const quinn = newUser();
    upstream.handle(llm());
    const before = received('budget').length;
    // Read: 5000 is over the budget of 100.
    expect429(await call(a, quinn, 'budget', ['search'], { query: 'limit=5000' }), 'budget_exceeded', 86_400);
    // Each of these is 5000 (or 99999, or 9) to many servers: a repeated parameter's last copy, a sign, a trailing
    // dot, an exponent that Number() reads as 0 or 0.9 but parseInt as 99999 or 9, a leading zero, a spelling a
    // lenient parser takes for `limit` (case, array suffix), alone or beside the real one.
    for (const query of ['limit=1&limit=5000', 'limit=%2B5000', 'limit=5000.', 'limit=5e3x', 'limit=-1', 'limit=99999e-999', 'limit=9e-1', 'limit=05000', 'LIMIT=5000', 'limit%5B%5D=5000', 'limit=1&Limit=5000']) {
      const refused = await call(a, quinn, 'budget', ['search'], { query });
      expect(refused.status).toBe(400);
      expect(refused.errorCode()).toBe('contract_violation');
      expect(JSON.parse(refused.text).error.message).toContain('query.limit');
    }
    expect(received('budget')).toHaveLength(before);
    expect(await counter(a.store, tokensKey(quinn))).toBeNull();
    // Absent, the upstream applies its own default, which "reserve" stands for; a readable number is reserved.
    expect((await call(a, quinn, 'budget', ['search'])).status).toBe(200);
    expect((await call(a, quinn, 'budget', ['search'], { query: 'limit=20' })).status).toBe(200);
    expect(await counter(a.store, tokensKey(quinn))).toBe(21);
  });

  it('a priced query model sent in a form Keyward cannot read as one string is refused (400), not priced at "*"', async () => {
    const rhea = newUser();
    upstream.handle(llm());
    const before = received('budget').length;
    // Read: "big" costs 10 units per output token, 20 tokens are 200, over the budget of 100.
    expect429(await call(a, rhea, 'budget', ['priced'], { query: 'model=big&max=20' }), 'budget_exceeded', 86_400);
    // Each of these is "big" to many servers; "*" would have priced it at 0.01 a token.
    for (const query of ['model=small&model=big&max=20', 'MODEL=big&max=20', 'model%5B%5D=big&max=20', 'model=small&Model=big&max=20']) {
      const refused = await call(a, rhea, 'budget', ['priced'], { query });
      expect(refused.status, query).toBe(400);
      expect(refused.errorCode()).toBe('contract_violation');
      expect(JSON.parse(refused.text).error.message).toContain('query.model');
    }
    expect(received('budget')).toHaveLength(before);
    expect(await counter(a.store, tokensKey(rhea))).toBeNull();
    // Another model, read as one string, is priced at "*".
    expect((await call(a, rhea, 'budget', ['priced'], { query: 'model=small&max=20' })).status).toBe(200);
  });

  it('SSE: settles to the usage of the last event that carries it', async () => {
    const ola = newUser();
    let release!: () => void;
    upstream.handle(llm({ gate: new Promise<void>((resolve) => (release = resolve)) }));
    const n = upstream.requests.length + 1;
    const pending = call(a, ola, 'budget', ['chat'], { body: { max_tokens: 80, report: 25, stream: true } });
    await upstream.nthRequest(n);
    expect(await counter(a.store, tokensKey(ola))).toBe(80);
    release();
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
    expect(r.text.match(/^data: /gm)).toHaveLength(5);
    expect(r.text).toContain('"total_tokens":25');
    expect(r.text.endsWith('data: [DONE]\n\n')).toBe(true);
    const event = await a.completion(r.requestId);
    expect(event.outcome).toBe('complete');
    expect(event.units).toBe(25);
    expect(await counter(a.store, tokensKey(ola))).toBe(25);
  });

  it('SSE without any usage event keeps the reservation', async () => {
    const pat = newUser();
    upstream.handle(llm());
    const r = await call(a, pat, 'budget', ['chat'], { body: { max_tokens: 33, stream: true } });
    expect(r.status).toBe(200);
    expect(r.text.endsWith('data: [DONE]\n\n')).toBe(true);
    expect(await counter(a.store, tokensKey(pat))).toBe(33);
  });

  describe('client disconnect mid-stream is charged the reservation', () => {
    const partial = JSON.stringify({ choices: [{ delta: { content: 'a' } }], usage: { total_tokens: 3 } });
    const plain = JSON.stringify({ choices: [{ delta: { content: 'a' } }], usage: null });

    it.each([
      ['events without usage', [plain, plain]],
      ['an early event already carrying (partial) usage', [partial, plain]],
    ])('cancelling the response body: %s', async (_label, events) => {
      const quinn = newUser();
      upstream.handle(llm({ stall: { events } }));
      const n = upstream.requests.length + 1;
      const r = await call(a, quinn, 'budget', ['chat'], { body: { max_tokens: 70, stream: true }, raw: true });
      expect(r.status).toBe(200);
      const seen = await upstream.nthRequest(n);
      const reader = r.response.body!.getReader();
      const first = await reader.read();
      expect(first.done).toBe(false);
      expect(Buffer.from(first.value!).toString('utf8')).toContain('data: ');
      expect(await counter(a.store, tokensKey(quinn))).toBe(70);
      await reader.cancel();
      await seen.closed;
      expect(seen.closedEarly).toBe(true);
      const event = await a.completion(r.requestId);
      expect(event.outcome).toBe('aborted');
      expect(event.units).toBe(70);
      expect(await counter(a.store, tokensKey(quinn))).toBe(70);
    });

    it('aborting the request (the client went away) while the upstream still streams', async () => {
      const rae = newUser();
      upstream.handle(llm({ stall: { events: [partial] } }));
      const n = upstream.requests.length + 1;
      const controller = new AbortController();
      const r = await call(a, rae, 'budget', ['chat'], {
        body: { max_tokens: 45, stream: true },
        raw: true,
        signal: controller.signal,
      });
      expect(r.status).toBe(200);
      const seen = await upstream.nthRequest(n);
      const reader = r.response.body!.getReader();
      expect((await reader.read()).done).toBe(false);
      controller.abort();
      await reader.read().catch(() => null);
      await seen.closed;
      expect(seen.closedEarly).toBe(true);
      const event = await a.completion(r.requestId);
      expect(['aborted', 'error']).toContain(event.outcome);
      expect(event.units).toBe(45);
      expect(await counter(a.store, tokensKey(rae))).toBe(45);
    });
  });

  it('upstream unreachable (connection refused): nothing is charged, quota included', async () => {
    const sam = newUser();
    // The quota on this upstream is 2 requests: five refused connections must not use it up.
    for (let i = 0; i < 5; i++) {
      const r = await call(i % 2 ? b : a, sam, 'down', ['chat'], { body: { max_tokens: 20 } });
      expect(r.status).toBe(502);
      expect(r.errorCode()).toBe('upstream_unreachable');
      expect((await (i % 2 ? b : a).completion(r.requestId)).units).toBe(0);
    }
    expect(await counter(a.store, meterKey('down', 'tokens', `u:${sam.sub}`))).toBe(0);
    expect(await counter(b.store, meterKey('down', 'requests-user-day', `u:${sam.sub}`))).toBe(0);
  });

  it('usage from a response header', async () => {
    const tia = newUser();
    const reply = (value: string | null) =>
      upstream.handle(async (_req, res, record) => {
        await record.bodyDone;
        res.writeHead(200, { 'content-type': 'text/plain', ...(value === null ? {} : { 'x-usage': value }) });
        res.end('done');
      });
    reply('7');
    expect((await call(a, tia, 'budget', ['hdr'], { body: 'x' })).status).toBe(200);
    expect(await counter(a.store, tokensKey(tia))).toBe(7);
    reply('2.1');
    expect((await call(a, tia, 'budget', ['hdr'], { body: 'x' })).status).toBe(200);
    expect(await counter(a.store, tokensKey(tia))).toBe(10);
    reply(null);
    expect((await call(a, tia, 'budget', ['hdr'], { body: 'x' })).status).toBe(200);
    expect(await counter(a.store, tokensKey(tia))).toBe(50);
    reply('lots');
    expect((await call(a, tia, 'budget', ['hdr'], { body: 'x' })).status).toBe(200);
    expect(await counter(a.store, tokensKey(tia))).toBe(90);
    // 90 + the reservation of 40 > 100, whatever the upstream would report.
    reply('1');
    expect429(await call(a, tia, 'budget', ['hdr'], { body: 'x' }), 'budget_exceeded', 86_400);
    expect(await counter(a.store, tokensKey(tia))).toBe(90);
  });
});

describe('two instances sharing Redis never overshoot', () => {
  /** 200 concurrent calls, alternating between the instances; the upstream reads the counter as each call arrives. */
  async function storm(upstreamId: string, path: string[], key: string | null, users: () => User) {
    const observer = await redisStore();
    cleanups.push(() => observer.close());
    let highest = 0;
    upstream.handle(async (req, res, record) => {
      if (key) highest = Math.max(highest, (await counter(observer, key)) ?? 0);
      return echoHandler(req, res, record);
    });
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => call(i % 2 ? b : a, users(), upstreamId, path)),
    );
    // Each instance took 100 calls. Whichever served more, together they served 50: without the shared
    // counter each would have let 50 through on its own.
    for (const side of [0, 1]) {
      const mine = results.filter((_, i) => i % 2 === side);
      expect(mine).toHaveLength(100);
      expect(mine.filter((r) => r.status === 429).length).toBeGreaterThanOrEqual(50);
    }
    const statuses = new Map<number, number>();
    for (const r of results) statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    return { results, statuses, highest, observer };
  }

  it('a quota of 50 per day: exactly 50 of 200 pass, 150 are 429, the counter never goes above 50', async () => {
    const uma = newUser();
    const key = meterKey('concq', 'requests-user-day', `u:${uma.sub}`);
    const { results, statuses, highest, observer } = await storm('concq', ['q'], key, () => uma);
    expect(Object.fromEntries(statuses)).toEqual({ 200: 50, 429: 150 });
    expect(results.filter((r) => r.status === 429).every((r) => r.errorCode() === 'quota_exceeded')).toBe(true);
    expect(received('concq')).toHaveLength(50);
    expect(highest).toBeLessThanOrEqual(50);
    expect(await counter(observer, key)).toBe(50);
  });

  it('a budget of 50 units for everyone (reserve 1 each, 200 different users): exactly 50 pass', async () => {
    const key = meterKey('concb', 'units-upstream-day', 'all');
    const { results, statuses, highest, observer } = await storm('concb', ['b'], key, () => newUser());
    expect(Object.fromEntries(statuses)).toEqual({ 200: 50, 429: 150 });
    expect(results.filter((r) => r.status === 429).every((r) => r.errorCode() === 'budget_exceeded')).toBe(true);
    expect(received('concb')).toHaveLength(50);
    expect(highest).toBeLessThanOrEqual(50);
    expect(await counter(observer, key)).toBe(50);
  });

  it('a rate limit of 50 per window for the upstream: exactly 50 pass', async () => {
    const { results, statuses } = await storm('concr', ['r'], null, () => newUser());
    expect(Object.fromEntries(statuses)).toEqual({ 200: 50, 429: 150 });
    expect(results.filter((r) => r.status === 429).every((r) => r.errorCode() === 'rate_limited')).toBe(true);
    expect(received('concr')).toHaveLength(50);
  });
});

describe('Redis down: limited routes fail closed', () => {
  it('limits on an unreachable Redis: 503 store_unavailable for rate limits, quotas and budgets; the upstream is not called', async () => {
    const dead = await redisStore('redis://127.0.0.1:1');
    cleanups.push(() => dead.close());
    // The sessions' store is healthy; only the limits' store is down, so the 503 comes from step 6.
    const deps: ProxyDeps = { ...a.deps, limits: new Limits(dead, log.logger) };
    const vic = newUser();
    const before = upstream.requests.length;
    for (const [upstreamId, path, body] of [
      ['peruser', ['a'], undefined],
      ['perroute', ['limited'], undefined],
      ['quota', ['a'], undefined],
      ['budget', ['chat'], { max_tokens: 5 }],
    ] as const) {
      const r = await call(a, vic, upstreamId, [...path], { deps, body });
      expect(r.status, upstreamId).toBe(503);
      expect(r.errorCode()).toBe('store_unavailable');
    }
    expect(upstream.requests.length).toBe(before);
    // A route without limits does not need the limits' store.
    expect((await call(a, vic, 'perroute', ['free'], { deps })).status).toBe(200);
    expect(upstream.requests.length).toBe(before + 1);
  });

  it('a runtime whose whole store is an unreachable Redis: 503 store_unavailable, upstream not called', async () => {
    const down = instance({ store: await redisStore('redis://127.0.0.1:1') });
    const before = upstream.requests.length;
    for (const [upstreamId, path] of [
      ['peruser', ['a']],
      ['quota', ['a']],
    ] as const) {
      const r = await call(down, newUser(), upstreamId, [...path]);
      expect(r.status).toBe(503);
      expect(r.errorCode()).toBe('store_unavailable');
    }
    expect(upstream.requests.length).toBe(before);
  });
});

describe.each(['sqlite', 'memory'] as const)('embedded store (%s), one process', (kind) => {
  let local: Instance;
  beforeAll(() => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-limits-'));
    local = instance({ env: { KEYWARD_STORE: kind, KEYWARD_STORE_PATH: join(dir, 'keyward.db') } });
    expect(local.store.kind).toBe(kind);
  });

  it('quota per user per day: 3 pass, the 4th is 429 quota_exceeded; the counter is in the store', async () => {
    const wes = newUser();
    const key = meterKey('quota', 'requests-user-day', `u:${wes.sub}`);
    for (let i = 1; i <= 3; i++) {
      const r = await call(local, wes, 'quota', ['a']);
      expect(r.status).toBe(200);
      expect(parseLimitField(r.headers.get('ratelimit'))['requests-user-day']!.r).toBe(3 - i);
      expect(await counter(local.store, key)).toBe(i);
    }
    expect429(await call(local, wes, 'quota', ['b']), 'quota_exceeded', 86_400);
    expect(await counter(local.store, key)).toBe(3);
    expect((await call(local, newUser(), 'quota', ['a'])).status).toBe(200);
  });

  it('200 concurrent calls against a quota of 50: exactly 50 pass', async () => {
    const xia = newUser();
    const key = meterKey('concq', 'requests-user-day', `u:${xia.sub}`);
    const before = received('concq').length;
    const results = await Promise.all(Array.from({ length: 200 }, () => call(local, xia, 'concq', ['q'])));
    expect(results.filter((r) => r.status === 200)).toHaveLength(50);
    expect(results.filter((r) => r.status === 429)).toHaveLength(150);
    expect(received('concq').length - before).toBe(50);
    expect(await counter(local.store, key)).toBe(50);
  });

  it('budgets settle to the reported usage; rate limits count in process', async () => {
    const yan = newUser();
    upstream.handle(llm());
    expect((await call(local, yan, 'budget', ['chat'], { body: { max_tokens: 60, report: 21 } })).status).toBe(200);
    expect(await counter(local.store, meterKey('budget', 'tokens', `u:${yan.sub}`))).toBe(21);
    for (let i = 0; i < 3; i++) expect((await call(local, yan, 'peruser', ['a'])).status).toBe(200);
    expect429(await call(local, yan, 'peruser', ['a']), 'rate_limited', 60);
  });
});
