import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signInAttempt, startApp, type AppServer } from '../fixtures/app-server';
import { REDIS_URL, findLeak } from '../fixtures/claims-session';
import { writeConfigFile } from '../fixtures/config';
import { deleteKeysUnder, keysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile, type TestUser } from '../fixtures/users';

/**
 * One access policy, two production servers (`next start`, needs `next build`) on different ports sharing
 * the test run's Redis (under a key prefix of their own, KEYWARD_REDIS_PREFIX) and the same KEYWARD_CONFIG and
 * KEYWARD_USERS_FILE, in front of one real node:http upstream. Through the HTTP surface only:
 * 1. a per-user rate limit is one counter for both servers: the (N+1)th call is refused on whichever server
 *    it lands, with Retry-After and the RateLimit/RateLimit-Policy fields; a limit for everyone lets exactly its
 *    count through a concurrent burst over both servers;
 * 2. a quota of 50 calls and a budget worth 50 calls hold under 200 concurrent calls split over both servers:
 *    exactly 50 pass, 150 get 429, and the upstream sees exactly 50 calls;
 * 3. role filters, scopes, object-level checks and contracts refuse identically (status, code, message) on
 *    both, and a refused call never reaches the upstream;
 * 4. the sign-in attempt limit (3 per window) is shared: per client IP and per username, counted across
 *    both servers.
 * Outcomes are counted, never timed. Every counter lives under this run's key prefix, deleted at the end;
 * usernames and client IPs also carry a per-run suffix.
 */
const PREFIX = `keyward-test:${randomUUID()}:`;
const RUN = randomBytes(4).toString('hex');
/** A per-run octet, so client IPs (sign-in limiter keys) are fresh each run. */
const OCTET = randomBytes(1)[0]! % 200;

const RATE_LIMIT = 5;
const BURST = 200;
const QUOTA = 50;
/** Budget units and the cost of one call: BUDGET / COST = 50 calls. */
const BUDGET = 150;
const COST = 3;
const SIGNIN_MAX = 3;

const apiKey = randomSecret('svc');
const password = randomSecret('pw');
const sessionSecrets = testSessionSecrets();
const secrets = [apiKey, password, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET];

const name = (base: string) => `${base}-${RUN}`;
const users: Record<string, TestUser> = {
  rate1: { username: name('rate1'), password, roles: ['user'] },
  rate2: { username: name('rate2'), password, roles: ['user'] },
  quota: { username: name('quota'), password, roles: ['user'] },
  budgetA: { username: name('budget-a'), password, roles: ['user'] },
  budgetB: { username: name('budget-b'), password, roles: ['user'] },
  free: { username: name('free'), password, roles: ['user', 'free'] },
  pro: { username: name('pro'), password, roles: ['user', 'pro'] },
  reader: { username: name('reader'), password, roles: ['user'] },
  writer: { username: name('writer'), password, roles: ['user'] },
  victim: { username: name('victim'), password, roles: ['user'] },
  spare: { username: name('spare'), password, roles: ['user'] },
};
/** Claims of the local users (written into the users file next to the hashes). */
const claims: Record<string, Record<string, string>> = {
  reader: { scope: 'files:read', accountId: 'acct-1' },
  writer: { scope: 'files:read files:write', accountId: 'acct-2' },
};

let upstream: TestUpstream;
let serverA: AppServer;
let serverB: AppServer;
let servers: AppServer[] = [];
const cookies: Record<string, string> = {};
/** Every response text from either server, for the leak check at the end. */
const seen: string[] = [];

/** A client address from TEST-NET-2/3, unique to this run and `n`. */
function ip(net: 2 | 3, n: number): string {
  return `${net === 2 ? '198.51.100' : '203.0.113'}.${(OCTET + n) % 250}`;
}

interface Reply {
  status: number;
  code: string | null;
  message: string | null;
  headers: Headers;
  body: string;
}

async function reply(response: Response): Promise<Reply> {
  return replyOf(response, await response.text());
}

/** The same for a response whose body was read already. */
function replyOf(response: Response, body: string): Reply {
  const lines: string[] = [];
  response.headers.forEach((value, key) => lines.push(`${key}: ${value}`));
  seen.push(`${response.status}\n${lines.join('\n')}\n\n${body}`);
  let code: string | null = null;
  let message: string | null = null;
  if (response.status >= 400) {
    const parsed = JSON.parse(body) as { error?: { code?: string; message?: string } };
    code = parsed.error?.code ?? null;
    message = parsed.error?.message ?? null;
  }
  return { status: response.status, code, message, headers: response.headers, body };
}

/** A proxy call with the user's cookie session (and the CSRF header; Origin for state-changing methods). */
async function call(
  server: AppServer,
  user: string,
  path: string,
  init: { method?: string; json?: unknown; body?: string; type?: string } = {},
): Promise<Reply> {
  const method = init.method ?? 'GET';
  const headers: Record<string, string> = { cookie: cookies[user]!, 'x-keyward-csrf': '1' };
  if (method !== 'GET') headers.origin = server.url;
  let body: string | undefined;
  if (init.json !== undefined) {
    body = JSON.stringify(init.json);
    headers['content-type'] = 'application/json';
  } else if (init.body !== undefined) {
    body = init.body;
    headers['content-type'] = init.type ?? 'text/plain';
  }
  return reply(await fetch(`${server.url}/api/proxy/${path}`, { method, headers, body }));
}

interface SignInResult {
  status: number;
  code: string | null;
  retryAfter: string | null;
  /** Where Auth.js sends the browser (a failed sign-in: back to the sign-in page with an error). */
  location: string | null;
  /** The session cookie when the sign-in succeeded. */
  cookie: string | null;
}

/** The browser's form sign-in (Auth.js csrfToken, then the credentials callback) from client address `from`. */
async function signInFrom(server: AppServer, from: string, username: string, pass: string): Promise<SignInResult> {
  const { response, text, cookie } = await signInAttempt(server.url, username, pass, { 'x-forwarded-for': from });
  const result = replyOf(response, text);
  return {
    status: result.status,
    code: result.code,
    retryAfter: response.headers.get('retry-after'),
    location: response.headers.get('location'),
    cookie,
  };
}

/** Auth.js's answer to a wrong password: back to its sign-in page with an error, no session. */
function expectWrongPassword(result: SignInResult): void {
  expect(result.status).toBe(302);
  // Auth.js sends a failed sign-in back to the sign-in page (Keyward's own, /signin) with the error.
  expect(result.location).toMatch(/\/signin\?error=CredentialsSignin/);
  expect(result.cookie).toBeNull();
}

/** The error as a client sees it, without the per-request id. */
const refusal = (r: Reply) => ({
  status: r.status,
  code: r.code,
  message: r.message,
  type: r.headers.get('content-type'),
  cache: r.headers.get('cache-control'),
});

const upstreamCalls = (prefix: string) => upstream.requests.filter((r) => r.url.startsWith(prefix));

beforeAll(async () => {
  upstream = await startUpstream();
  const auth = { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } } as const;
  const config = writeConfigFile({
    upstreams: {
      // 1. One per-user rate limit for all routes of the upstream.
      rl: {
        baseUrl: `${upstream.origin}/rl/`,
        auth,
        rateLimits: [{ name: 'per-user', by: 'user', limit: RATE_LIMIT, windowSeconds: 600 }],
        routes: [{ method: 'GET', path: '/ping' }],
      },
      // 1b. One rate limit for everyone together, hit by a concurrent burst.
      burst: {
        baseUrl: `${upstream.origin}/burst/`,
        auth,
        rateLimits: [{ by: 'upstream', limit: QUOTA, windowSeconds: 600 }],
        routes: [{ method: 'GET', path: '/go' }],
      },
      // 2a. A request quota per user.
      quota: {
        baseUrl: `${upstream.origin}/quota/`,
        auth,
        quotas: [{ by: 'user', requests: QUOTA, period: 'month' }],
        routes: [{ method: 'GET', path: '/q' }],
      },
      // 2b. A cost budget for everyone together; each call reserves max_tokens units (a body field).
      budget: {
        baseUrl: `${upstream.origin}/budget/`,
        auth,
        budgets: [{ by: 'upstream', units: BUDGET, period: 'month' }],
        routes: [
          {
            method: 'POST',
            path: '/complete',
            body: {
              type: 'object',
              required: ['max_tokens'],
              properties: { max_tokens: { type: 'integer', minimum: 1, maximum: 100 } },
            },
            cost: { reserveFrom: { field: 'body.max_tokens' }, reserve: 100 },
          },
        ],
      },
      // 3. Who and what, with a rate limit that applies to one role only.
      policy: {
        baseUrl: `${upstream.origin}/policy/`,
        auth,
        routes: [
          {
            method: 'GET',
            path: '/tiered',
            rateLimits: [{ name: 'free-tier', by: 'user', limit: 3, windowSeconds: 600, roles: ['free'] }],
          },
          { method: 'GET', path: '/admin', roles: ['admin'] },
          { method: 'GET', path: '/files', scopes: ['files:write'] },
          { method: 'GET', path: '/accounts/:id/files', paramEquals: { id: 'claims.accountId' } },
          {
            method: 'GET',
            path: '/search',
            query: {
              properties: { q: { type: 'string', maxLength: 20 }, limit: { type: 'integer', minimum: 1, maximum: 10 } },
            },
          },
          {
            method: 'POST',
            path: '/items',
            body: {
              type: 'object',
              required: ['name'],
              properties: {
                name: { type: 'string', maxLength: 20 },
                qty: { type: 'integer', minimum: 1, maximum: 10 },
                user: { type: 'string' },
              },
            },
            identity: { 'body.user': 'userId' },
          },
        ],
      },
    },
    // 200 concurrent calls by two users is a load test of the limits, which the anomaly detector would throttle
    // as a burst (a step of its own, tested in detector.test.ts): its floor is set out of reach here.
    detector: { calls: { minPerMinute: 1_000_000 } },
  });
  const usersFile = await writeUsersFile(Object.values(users));
  // The fixture writes {username, passwordHash, roles}; add the claims of the scope/ownership users.
  const file = JSON.parse(readFileSync(usersFile, 'utf8')) as {
    users: Array<{ username: string; claims?: Record<string, string> }>;
  };
  for (const [key, value] of Object.entries(claims))
    file.users.find((u) => u.username === users[key]!.username)!.claims = value;
  writeFileSync(usersFile, JSON.stringify(file), { mode: 0o600 });

  const env = {
    ...sessionSecrets,
    SVC_KEY: apiKey,
    KEYWARD_CONFIG: config,
    KEYWARD_USERS_FILE: usersFile,
    REDIS_URL,
    KEYWARD_REDIS_PREFIX: PREFIX,
    KEYWARD_SIGNIN_MAX_ATTEMPTS: String(SIGNIN_MAX),
  };
  servers = await Promise.all([startApp(env), startApp(env)]);
  [serverA, serverB] = servers as [AppServer, AppServer];
  expect(serverA.port).not.toBe(serverB.port);

  // Every user but the sign-in limit's targets signs in once, alternating servers, each from its own address
  // (the per-IP attempt limit is 3 here, and it counts successful sign-ins too).
  const signedIn = Object.keys(users).filter((key) => key !== 'victim' && key !== 'spare');
  for (const [i, key] of signedIn.entries()) {
    const result = await signInFrom(i % 2 === 0 ? serverA : serverB, ip(2, i), users[key]!.username, password);
    if (!result.cookie) throw new Error(`sign-in of ${key} failed with ${result.status} ${result.code ?? ''}`);
    cookies[key] = result.cookie;
  }
}, 120_000);

afterAll(async () => {
  await Promise.all(servers.map((server) => server.stop()));
  await upstream?.close();
  await deleteKeysUnder(REDIS_URL, PREFIX);
});

describe('one policy, two `next start` servers, one Redis', () => {
  it(`a per-user rate limit of ${RATE_LIMIT} is one counter: the call after it is refused on whichever server it lands`, async () => {
    // rate1 starts on A, rate2 on B: with 5 allowed, the 6th call lands on B for one and on A for the other.
    for (const [user, first] of [
      ['rate1', 0],
      ['rate2', 1],
    ] as const) {
      const before = upstreamCalls('/rl/').length;
      const order = Array.from({ length: RATE_LIMIT + 2 }, (_, i) => ((i + first) % 2 === 0 ? serverA : serverB));
      const results: Reply[] = [];
      for (const server of order) results.push(await call(server, user, 'rl/ping'));

      expect(results.map((r) => r.status)).toEqual([...Array(RATE_LIMIT).fill(200), 429, 429]);
      // The remaining count goes down across both servers: one shared counter.
      for (const [i, r] of results.slice(0, RATE_LIMIT).entries()) {
        expect(r.headers.get('ratelimit-policy')).toBe(`"per-user";q=${RATE_LIMIT};w=600`);
        expect(r.headers.get('ratelimit')).toMatch(new RegExp(`^"per-user";r=${RATE_LIMIT - 1 - i};t=\\d+$`));
      }
      const refusedOn = results.slice(RATE_LIMIT).map((_, i) => order[RATE_LIMIT + i]);
      expect(new Set(refusedOn)).toEqual(new Set([serverA, serverB]));
      for (const r of results.slice(RATE_LIMIT)) {
        expect(r.code).toBe('rate_limited');
        const retryAfter = Number(r.headers.get('retry-after'));
        expect(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 600).toBe(true);
        expect(r.headers.get('ratelimit-policy')).toBe(`"per-user";q=${RATE_LIMIT};w=600`);
        expect(r.headers.get('ratelimit')).toMatch(/^"per-user";r=0;t=\d+$/);
      }
      expect(order[RATE_LIMIT]).toBe(first === 0 ? serverB : serverA);
      // Only the allowed calls reached the upstream, with the service key.
      const calls = upstreamCalls('/rl/').slice(before);
      expect(calls).toHaveLength(RATE_LIMIT);
      for (const request of calls) expect(request.headers['x-api-key']).toBe(apiKey);
    }
  });

  it(`a rate limit of ${QUOTA} for everyone under ${BURST} concurrent calls by two users on A and B: exactly ${QUOTA} pass`, async () => {
    const results = await Promise.all(
      Array.from({ length: BURST }, (_, i) =>
        call(i % 2 === 0 ? serverA : serverB, i % 4 < 2 ? 'rate1' : 'rate2', 'burst/go'),
      ),
    );
    const ok = results.filter((r) => r.status === 200);
    expect(ok).toHaveLength(QUOTA);
    for (const r of results.filter((x) => x.status !== 200)) {
      expect([r.status, r.code]).toEqual([429, 'rate_limited']);
      expect(r.headers.get('retry-after')).toMatch(/^\d+$/);
    }
    const remaining = ok
      .map((r) => Number(/;r=(\d+);/.exec(r.headers.get('ratelimit') ?? '')?.[1]))
      .sort((a, b) => a - b);
    expect(remaining).toEqual(Array.from({ length: QUOTA }, (_, i) => i));
    expect(upstreamCalls('/burst/')).toHaveLength(QUOTA);
  }, 60_000);

  it(`a quota of ${QUOTA} under ${BURST} concurrent calls split over A and B: exactly ${QUOTA} pass, the upstream sees ${QUOTA}`, async () => {
    const results = await Promise.all(
      Array.from({ length: BURST }, (_, i) => call(i % 2 === 0 ? serverA : serverB, 'quota', 'quota/q')),
    );
    const ok = results.filter((r) => r.status === 200);
    const refused = results.filter((r) => r.status !== 200);
    expect(ok).toHaveLength(QUOTA);
    expect(refused).toHaveLength(BURST - QUOTA);
    for (const r of refused) {
      expect(r.status).toBe(429);
      expect(r.code).toBe('quota_exceeded');
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(r.headers.get('ratelimit')).toMatch(/^"requests-user-month";r=0;t=\d+$/);
    }
    // Each pass took its own place in the counter: the remaining counts are 49 … 0, each exactly once.
    const remaining = ok
      .map((r) => Number(/;r=(\d+);/.exec(r.headers.get('ratelimit') ?? '')?.[1]))
      .sort((a, b) => a - b);
    expect(remaining).toEqual(Array.from({ length: QUOTA }, (_, i) => i));
    // Both servers let calls through and both refused some.
    const byServer = (parity: number, status: number) =>
      results.filter((r, i) => i % 2 === parity && r.status === status).length;
    expect(byServer(0, 200) + byServer(1, 200)).toBe(QUOTA);
    expect(byServer(0, 429)).toBeGreaterThan(0);
    expect(byServer(1, 429)).toBeGreaterThan(0);
    expect(upstreamCalls('/quota/')).toHaveLength(QUOTA);

    // Spent for the period on both servers.
    for (const server of [serverA, serverB])
      expect((await call(server, 'quota', 'quota/q')).code).toBe('quota_exceeded');
    expect(upstreamCalls('/quota/')).toHaveLength(QUOTA);
  }, 60_000);

  it(`a budget of ${BUDGET} units (${COST} per call) shared by two users on two servers: exactly ${BUDGET / COST} of ${BURST} concurrent calls pass`, async () => {
    const results = await Promise.all(
      Array.from({ length: BURST }, (_, i) =>
        call(i % 2 === 0 ? serverA : serverB, i % 4 < 2 ? 'budgetA' : 'budgetB', 'budget/complete', {
          method: 'POST',
          json: { max_tokens: COST },
        }),
      ),
    );
    const statuses = new Map<string, number>();
    for (const r of results)
      statuses.set(`${r.status} ${r.code ?? ''}`.trim(), (statuses.get(`${r.status} ${r.code ?? ''}`.trim()) ?? 0) + 1);
    expect(Object.fromEntries(statuses)).toEqual({
      '200': BUDGET / COST,
      '429 budget_exceeded': BURST - BUDGET / COST,
    });
    for (const r of results.filter((x) => x.status === 429))
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    const calls = upstreamCalls('/budget/');
    expect(calls).toHaveLength(BUDGET / COST);
    // The upstream got the re-serialised body, never the client's bytes.
    for (const request of calls) expect(JSON.parse(request.bodyPreview.toString('utf8'))).toEqual({ max_tokens: COST });

    // Spent to the unit: even a 1-unit call is refused, on either server.
    for (const server of [serverB, serverA]) {
      const r = await call(server, 'budgetB', 'budget/complete', { method: 'POST', json: { max_tokens: 1 } });
      expect(r.code).toBe('budget_exceeded');
    }
    expect(upstreamCalls('/budget/')).toHaveLength(BUDGET / COST);
  }, 60_000);

  it('a limit filtered by role applies to that role only, the same on both servers', async () => {
    const before = upstreamCalls('/policy/tiered').length;
    const free: Reply[] = [];
    for (let i = 0; i < 5; i++) free.push(await call(i % 2 === 0 ? serverA : serverB, 'free', 'policy/tiered'));
    expect(free.map((r) => r.status)).toEqual([200, 200, 200, 429, 429]);
    expect(free.slice(3).map((r) => r.code)).toEqual(['rate_limited', 'rate_limited']);
    expect(free[0]!.headers.get('ratelimit-policy')).toBe('"free-tier";q=3;w=600');
    for (const r of free.slice(3)) expect(r.headers.get('retry-after')).toMatch(/^\d+$/);

    const pro: Reply[] = [];
    for (let i = 0; i < 8; i++) pro.push(await call(i % 2 === 0 ? serverB : serverA, 'pro', 'policy/tiered'));
    expect(pro.map((r) => r.status)).toEqual(Array(8).fill(200));
    // No rule applies to pro: no RateLimit fields at all.
    for (const r of pro) expect(r.headers.get('ratelimit-policy')).toBeNull();
    expect(upstreamCalls('/policy/tiered').length - before).toBe(3 + 8);
  });

  it('roles, scopes, object-level checks and contracts refuse identically on A and B, before the upstream', async () => {
    const before = upstreamCalls('/policy/').length;
    const cases: Array<{
      what: string;
      user: string;
      path: string;
      init?: Parameters<typeof call>[3];
      status: number;
      code: string;
    }> = [
      { what: 'role', user: 'reader', path: 'policy/admin', status: 403, code: 'forbidden' },
      { what: 'scope', user: 'reader', path: 'policy/files', status: 403, code: 'insufficient_scope' },
      { what: 'another account', user: 'reader', path: 'policy/accounts/acct-2/files', status: 403, code: 'not_owner' },
      {
        what: 'unknown query parameter',
        user: 'reader',
        path: 'policy/search?q=a&debug=1',
        status: 400,
        code: 'contract_violation',
      },
      {
        what: 'repeated query parameter',
        user: 'reader',
        path: 'policy/search?q=a&q=b',
        status: 400,
        code: 'contract_violation',
      },
      {
        what: 'query out of range',
        user: 'reader',
        path: 'policy/search?limit=11',
        status: 400,
        code: 'contract_violation',
      },
      {
        what: 'unknown body field',
        user: 'writer',
        path: 'policy/items',
        init: { method: 'POST', json: { name: 'x', admin: true } },
        status: 400,
        code: 'contract_violation',
      },
      {
        what: 'wrong body type',
        user: 'writer',
        path: 'policy/items',
        init: { method: 'POST', json: { name: 'x', qty: '3' } },
        status: 400,
        code: 'contract_violation',
      },
      {
        what: 'missing required field',
        user: 'writer',
        path: 'policy/items',
        init: { method: 'POST', json: { qty: 3 } },
        status: 400,
        code: 'contract_violation',
      },
      {
        what: 'body not JSON',
        user: 'writer',
        path: 'policy/items',
        init: { method: 'POST', body: 'name=x', type: 'application/x-www-form-urlencoded' },
        status: 415,
        code: 'unsupported_media_type',
      },
    ];
    for (const c of cases) {
      const onA = await call(serverA, c.user, c.path, c.init);
      const onB = await call(serverB, c.user, c.path, c.init);
      expect({ what: c.what, status: onA.status, code: onA.code }).toEqual({
        what: c.what,
        status: c.status,
        code: c.code,
      });
      expect(refusal(onB), c.what).toEqual(refusal(onA));
    }
    // The contract names the path of the unknown field, never the client's name for it nor its value.
    const unknown = await call(serverB, 'writer', 'policy/items', {
      method: 'POST',
      json: { name: 'x', admin: 'SENTINEL-VALUE' },
    });
    expect(unknown.message).toContain('body: unknown field');
    expect(unknown.message).not.toContain('admin');
    expect(unknown.body).not.toContain('SENTINEL-VALUE');
    expect(upstreamCalls('/policy/').length).toBe(before);

    // The controls pass on both, and the identity field is written from the session on both.
    for (const server of [serverA, serverB]) {
      expect((await call(server, 'writer', 'policy/files')).status).toBe(200);
      expect((await call(server, 'writer', 'policy/accounts/acct-2/files')).status).toBe(200);
      expect((await call(server, 'reader', 'policy/search?q=a&limit=10')).status).toBe(200);
      const made = await call(server, 'writer', 'policy/items', {
        method: 'POST',
        json: { name: 'x', qty: 3, user: 'someone-else' },
      });
      expect(made.status).toBe(200);
      const received = upstream.requests.at(-1)!;
      expect(received.url).toBe('/policy/items');
      expect(JSON.parse(received.bodyPreview.toString('utf8'))).toEqual({
        name: 'x',
        qty: 3,
        user: `local:${users.writer!.username}`,
      });
    }
    expect(upstreamCalls('/policy/').length).toBe(before + 8);
  });

  it(`sign-in attempts are limited to ${SIGNIN_MAX} per client IP across both servers`, async () => {
    const from = ip(3, 1);
    const attempts: SignInResult[] = [];
    // Wrong passwords for different (unknown) usernames, so only the per-IP counter can add up.
    for (let i = 0; i < SIGNIN_MAX + 1; i++) {
      attempts.push(await signInFrom(i % 2 === 0 ? serverA : serverB, from, name(`nobody${i}`), 'wrong-password'));
    }
    for (const a of attempts.slice(0, SIGNIN_MAX)) expectWrongPassword(a);
    const fourth = attempts[SIGNIN_MAX]!;
    expect({ status: fourth.status, code: fourth.code }).toEqual({ status: 429, code: 'rate_limited' });
    expect(Number(fourth.retryAfter)).toBeGreaterThanOrEqual(1);
    expect(Number(fourth.retryAfter)).toBeLessThanOrEqual(300);

    // From that address even the right password is refused now, on either server, before it is checked …
    for (const server of [serverA, serverB]) {
      const right = await signInFrom(server, from, users.spare!.username, password);
      expect({ status: right.status, code: right.code, cookie: right.cookie }).toEqual({
        status: 429,
        code: 'rate_limited',
        cookie: null,
      });
    }
    // … while another address signs in.
    expectWrongPassword(await signInFrom(serverB, ip(3, 2), name('nobody-else'), 'wrong-password'));
    const spare = await signInFrom(serverA, ip(3, 3), users.spare!.username, password);
    expect(spare.cookie).toBeTruthy();
  });

  it(`sign-in attempts are limited to ${SIGNIN_MAX} per username across both servers, whatever the address`, async () => {
    const attempts: SignInResult[] = [];
    for (let i = 0; i < SIGNIN_MAX + 1; i++) {
      attempts.push(
        await signInFrom(i % 2 === 0 ? serverB : serverA, ip(3, 10 + i), users.victim!.username, 'wrong-password'),
      );
    }
    for (const a of attempts.slice(0, SIGNIN_MAX)) expectWrongPassword(a);
    expect(attempts[SIGNIN_MAX]).toMatchObject({ status: 429, code: 'rate_limited', cookie: null });
    // The right password from a fresh address: refused too, on both servers.
    for (const [i, server] of [serverA, serverB].entries()) {
      const right = await signInFrom(server, ip(3, 20 + i), users.victim!.username, password);
      expect({ status: right.status, code: right.code, cookie: right.cookie }).toEqual({
        status: 429,
        code: 'rate_limited',
        cookie: null,
      });
    }
  });

  it('no secret in any response from either server, nor in their output', async () => {
    expect(seen.length).toBeGreaterThan(2 * BURST);
    for (const text of seen) expect(findLeak(text, secrets)).toBeNull();
    await Promise.all(servers.map((server) => server.stop()));
    for (const server of servers) {
      expect(server.output()).toContain('Ready');
      expect(findLeak(server.output(), secrets)).toBeNull();
    }
  });

  it("the servers kept their state under this run's key prefix (so deleting that prefix cleans up)", async () => {
    const keys = await keysUnder(REDIS_URL, PREFIX);
    expect(keys.some((key) => key.startsWith(`${PREFIX}rl|`))).toBe(true);
    expect(keys.some((key) => key.startsWith(`${PREFIX}meter:`))).toBe(true);
  });
});
