import { randomUUID } from 'node:crypto';
import { sealData } from 'iron-session';
import { Redis } from 'ioredis';
import { RateLimiterRedis } from 'rate-limiter-flexible';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { authorizeUpgrade } from '../../lib/core/ws/upgrade';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { REDIS_URL, capturingLogger, claimsSessionCookie, responseText } from '../fixtures/claims-session';
import { batchScriptOf, deleteKeysUnder, keysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { dpopKey, dpopProof } from '../fixtures/dpop';
import { bearerToken } from '../fixtures/session';
import { suspensionKey } from '../../lib/core/detect/marks';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * Issue 12 part 3, "one store round trip per call", counted on a runtime's own Redis connection: every write
 * to its socket is one request/answer exchange (ioredis writes a pipeline in one write, a command alone in
 * one), and every command sent is recorded with the write that carried it. Calls are made one at a time, so
 * the writes between a call's start and its response's end are that call's; the audit writer's batches (a
 * script each, up to 100 ms after a call) are told apart by their first key (`label`). The server's own INFO commandstats
 * confirms the counts. Two runtimes with their own connections to one key prefix stand for two instances.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const PREFIX = `keyward-test-${randomUUID()}:`;
const CALLS = 20;

let upstream: TestUpstream;
let a: Runtime;
let b: Runtime;
let storeA: RedisStore;
let storeB: RedisStore;
let info: Redis;
let counter: Counter;
const secrets = testSessionSecrets();
const firstKey = randomSecret('rt');
const credKey = randomSecret('cred');
const vaultSecret = randomSecret('vault-secret-of-32-characters-or-more');
const { logger } = capturingLogger();

/**
 * A command's name as the Counter records it: the batched audit writer's scripts (`batchScriptOf`: the records'
 * and the usage aggregates') as `batch:log` and `batch:hash`, apart from a call's script. ioredis names a script
 * command `evalsha` (it sends EVAL the first time on a connection).
 */
function label(command: { name: string; args: unknown[] }): string {
  const batch = batchScriptOf(command.name, command.args[2] === undefined ? undefined : String(command.args[2]));
  return batch ? `batch:${batch}` : command.name.toLowerCase();
}

/**
 * Waits (bounded) until instance A has recorded the first use of a user's key: after the call has answered, a
 * SET NX of the minute's marker, then a SET of the time (UserKeys.touch), on A's connection. Counted before they
 * land, they would be taken for the next call's.
 */
async function keyUseRecorded(): Promise<void> {
  for (let i = 0; i < 200 && counter.rounds.flat().filter((name) => name === 'set').length < 2; i++) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  expect(counter.rounds.flat().filter((name) => name === 'set')).toHaveLength(2);
}

/** The commands of each write the client made to its socket. */
class Counter {
  rounds: string[][] = [];
  private pending: string[] = [];

  constructor(client: Redis) {
    const sendCommand = client.sendCommand.bind(client);
    client.sendCommand = ((command: { name: string; args: unknown[] }, stream?: unknown) => {
      this.pending.push(label(command));
      return sendCommand(command as never, stream as never);
    }) as typeof client.sendCommand;
    const socket = client.stream;
    const write = socket.write.bind(socket);
    socket.write = ((...args: Parameters<typeof socket.write>) => {
      this.rounds.push(this.pending);
      this.pending = [];
      return write(...args);
    }) as typeof socket.write;
  }

  /**
   * The writes since the last take, as the calls' commands and the audit writer's (its records and its usage
   * aggregates). A writer's script issued in the same turn as a call's goes out in the same write
   * (auto-pipelining) without adding a round trip to the call: it is counted with the writer's.
   */
  take(): { calls: string[][]; audit: string[][]; usage: string[][]; writer: number } {
    const rounds = this.rounds;
    this.rounds = [];
    const pick = (test: (name: string) => boolean) => rounds.map((round) => round.filter(test)).filter((round) => round.length > 0);
    const audit = pick((name) => name === 'batch:log');
    const usage = pick((name) => name === 'batch:hash');
    return { calls: pick((name) => !name.startsWith('batch:')), audit, usage, writer: audit.flat().length + usage.flat().length };
  }
}

function definitions(origin: string) {
  const auth = { type: 'header', name: 'x-api-key', secret: { env: 'RT_KEY' } } as const;
  return [
    defineUpstream('plain', { baseUrl: `${origin}/plain/`, auth, routes: [{ method: 'GET', path: '/a' }] }),
    defineUpstream('rated', {
      baseUrl: `${origin}/rated/`,
      auth,
      rateLimits: [
        { by: 'user', limit: 10_000, windowSeconds: 60 },
        { by: 'upstream', limit: 10_000, windowSeconds: 60 },
      ],
      routes: [{ method: 'GET', path: '/a' }],
    }),
    defineUpstream('percred', {
      baseUrl: `${origin}/percred/`,
      auth: { ...auth, secret: { env: 'RT_CRED_KEY' } },
      rateLimits: [{ by: 'credential', limit: 10_000, windowSeconds: 60 }],
      routes: [{ method: 'GET', path: '/a' }],
    }),
    defineUpstream('tight', {
      baseUrl: `${origin}/tight/`,
      auth,
      rateLimits: [{ by: 'user', limit: 3, windowSeconds: 60 }],
      routes: [{ method: 'GET', path: '/a' }, { method: 'POST', path: '/a' }],
    }),
    defineUpstream('sock', {
      baseUrl: `${origin}/sock/`,
      auth,
      rateLimits: [{ by: 'user', limit: 10_000, windowSeconds: 60 }],
      routes: [{ method: 'GET', path: '/a', websocket: true }],
    }),
    defineUpstream('own', {
      baseUrl: `${origin}/own/`,
      auth: { type: 'header', name: 'x-api-key', secret: { user: 'key' } },
      rateLimits: [{ by: 'user', limit: 10_000, windowSeconds: 60 }],
      routes: [{ method: 'GET', path: '/a' }],
    }),
    defineUpstream('owncred', {
      baseUrl: `${origin}/owncred/`,
      auth: { type: 'header', name: 'x-api-key', secret: { user: 'key' } },
      rateLimits: [{ by: 'credential', limit: 10_000, windowSeconds: 60 }],
      routes: [{ method: 'GET', path: '/a' }],
    }),
    defineUpstream('token', {
      baseUrl: `${origin}/token/`,
      auth: { type: 'bearer', secret: { oauth: 'oidc' } },
      rateLimits: [{ by: 'user', limit: 10_000, windowSeconds: 60 }],
      routes: [{ method: 'GET', path: '/a' }],
    }),
    defineUpstream('quota', {
      baseUrl: `${origin}/quota/`,
      auth,
      rateLimits: [{ by: 'user', limit: 10_000, windowSeconds: 60 }],
      quotas: [{ by: 'user', requests: 10_000, period: 'day' }],
      routes: [{ method: 'GET', path: '/a' }],
    }),
  ];
}

function instance(store: RedisStore): Runtime {
  return createRuntime({
    env: {
      ...secrets,
      RT_KEY: firstKey,
      RT_CRED_KEY: credKey,
      KEYWARD_VAULT_SECRET: vaultSecret,
      KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
      // The `token` upstream's provider. Its tokens are saved fresh below, so it is never asked for a refresh:
      // nothing listens at this address.
      KEYWARD_OIDC_ISSUER: 'https://idp.keyward.test',
      KEYWARD_OIDC_CLIENT_ID: 'keyward',
      KEYWARD_OIDC_CLIENT_SECRET: randomSecret('oidc-client'),
    },
    upstreams: definitions(upstream.origin),
    store,
    logger,
    // This file counts every command sent while calls run, many calls a second per user. The detector would
    // throttle that as a burst, and report that the test upstream echoes its key: background writes tested in
    // detector.test.ts, not a call's round trip. (The throttle mark is still read in each call's script.)
    detector: { calls: { minPerMinute: 1_000_000 }, scrubberHits: { alert: false } },
  });
}

async function call(
  runtime: Runtime,
  id: string,
  session: string,
  init: { method?: string; csrf?: boolean } = {},
): Promise<{ status: number; code: string | null }> {
  const headers: Record<string, string> = session.startsWith('Bearer ') ? { authorization: session } : { cookie: session };
  if (init.csrf !== false && !session.startsWith('Bearer ')) headers['x-keyward-csrf'] = '1';
  const request = new Request(`${APP_ORIGIN}/api/proxy/${id}/a`, { method: init.method ?? 'GET', headers });
  const { status, body } = await responseText(await handleProxy(request, { upstream: id, path: ['a'] }, a === runtime ? a : runtime));
  const code = status >= 400 ? ((JSON.parse(body) as { error: { code: string } }).error.code ?? null) : null;
  return { status, code };
}

/**
 * Each of `CALLS` calls on instance A with its own round trips (after one warm-up call), and what the server
 * counted for them (INFO commandstats: commands the scripts run inside are counted under their own names).
 */
async function perCall(id: string, session: string): Promise<string[][][] & { server: Record<string, number> }> {
  expect((await call(a, id, session)).status).toBe(200);
  // Nothing queued, and the writer's scripts loaded on this connection (EVALSHA from now on).
  await a.audit.flush();
  counter.take();
  const before = await commandStats();
  const calls: string[][][] = [];
  let writer = 0;
  for (let i = 0; i < CALLS; i++) {
    expect((await call(a, id, session)).status).toBe(200);
    const taken = counter.take();
    calls.push(taken.calls);
    writer += taken.writer;
  }
  const after = await commandStats();
  const server = Object.fromEntries(Object.keys(after).map((name) => [name, after[name]! - (before[name] ?? 0)]));
  // The audit writer's batches (one script each, flushed within 100 ms) may fall inside the window: they are
  // the writer's, not the calls'.
  server.evalsha = (server.evalsha ?? 0) - writer;
  return Object.assign(calls, { server });
}

async function commandStats(): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const [, name, calls] of (await info.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out[name!] = Number(calls);
  return out;
}

const cookieFor = (sub: string, sid = randomUUID()) => claimsSessionCookie(secrets.AUTH_SECRET, { sub, roles: ['user'], sid });

beforeAll(async () => {
  upstream = await startUpstream();
  storeA = new RedisStore(REDIS_URL, { prefix: PREFIX });
  storeB = new RedisStore(REDIS_URL, { prefix: PREFIX });
  await Promise.all([storeA.ready(), storeB.ready()]);
  a = instance(storeA);
  b = instance(storeB);
  counter = new Counter(storeA.client);
  info = new Redis(REDIS_URL);
});

afterAll(async () => {
  await Promise.all([a?.audit.flush().catch(() => {}), b?.audit.flush().catch(() => {})]);
  await Promise.all([storeA?.close(), storeB?.close()]);
  info?.disconnect();
  await upstream?.close();
  await deleteKeysUnder(REDIS_URL, PREFIX);
});

describe('one store round trip per proxied call (Redis)', () => {
  it('session cookie, service key ring and two rate limits: one round trip, one command (the script)', async () => {
    const cookie = await cookieFor('local:ada');
    const calls = await perCall('rated', cookie);
    for (const rounds of calls) expect(rounds).toEqual([['evalsha']]);
    // The server ran one script per call and none of the separate commands of before (MGET of the
    // revocation keys, GET of the ring, one EVALSHA per rate rule); INFO itself is the only other command.
    expect(calls.server.evalsha).toBe(CALLS);
    expect(calls.server.mget ?? 0).toBe(0);
    expect(calls.server.eval ?? 0).toBe(0);
    // Inside the script: 5 reads (GET: the three revocation marks, the detector's throttle mark, the ring), a GET
    // per rule (every counter must have room before any is taken), then per rule SET NX, INCRBY, PTTL.
    expect(calls.server.get).toBe(7 * CALLS);
    expect(calls.server.incrby).toBe(2 * CALLS);
    // The counters are rate-limiter-flexible's: same keys, same values.
    const keys = await keysUnder(REDIS_URL, `${PREFIX}rl|rated|`);
    expect(keys.sort()).toEqual([`${PREFIX}rl|rated|*|upstream-60s:all`, `${PREFIX}rl|rated|*|user-60s:u:local:ada`]);
    expect(await info.get(`${PREFIX}rl|rated|*|user-60s:u:local:ada`)).toBe(String(CALLS + 1));
  });

  it('concurrent calls share socket writes (auto-pipelining): still one script and one answer each', async () => {
    const cookie = await cookieFor('local:pip');
    expect((await call(a, 'rated', cookie)).status).toBe(200);
    await a.audit.flush();
    counter.take();
    const before = await commandStats();
    const results = await Promise.all(Array.from({ length: CALLS }, () => call(a, 'rated', cookie)));
    expect(results.map((result) => result.status)).toEqual(Array(CALLS).fill(200));
    const { calls, writer } = counter.take();
    // Without auto-pipelining each call's script is its own write: CALLS writes. Issued in the same turn of
    // the event loop, they leave together.
    expect(calls.flat()).toEqual(Array(CALLS).fill('evalsha'));
    expect(calls.length).toBeLessThan(CALLS / 2);
    const after = await commandStats();
    expect(after.evalsha! - (before.evalsha ?? 0) - writer).toBe(CALLS);
    expect(await info.get(`${PREFIX}rl|rated|*|user-60s:u:local:pip`)).toBe(String(CALLS + 1));
  });

  it('a WebSocket upgrade with a cookie session: one round trip, as a call; a revoked session is refused first', async () => {
    const sid = randomUUID();
    const cookie = await cookieFor('local:ws', sid);
    const upgrade = () =>
      authorizeUpgrade(
        new Request(`${APP_ORIGIN}/api/proxy/sock/a`, { headers: { cookie, origin: APP_ORIGIN } }),
        { upstream: 'sock', path: ['a'] },
        a,
      );
    expect(await upgrade()).not.toBeInstanceOf(Response); // warm-up: the key ring's state is known after it
    counter.take();
    for (let i = 0; i < 5; i++) {
      expect(await upgrade()).not.toBeInstanceOf(Response);
      expect(counter.take().calls).toEqual([['evalsha']]);
    }
    // A cross-site Origin is refused, but a revoked session's upgrade is answered 401 first (steps in order).
    await a.revocations.revokeSession(sid);
    counter.take();
    const refused = await authorizeUpgrade(
      new Request(`${APP_ORIGIN}/api/proxy/sock/a`, { headers: { cookie, origin: 'https://evil.example' } }),
      { upstream: 'sock', path: ['a'] },
      a,
    );
    expect(refused).toBeInstanceOf(Response);
    expect((refused as Response).status).toBe(401);
    expect(await upgrade()).toMatchObject({ status: 401 });
  });

  it('a bearer (mobile) session, and a route without limits: one round trip too', async () => {
    const bearer = `Bearer ${await bearerToken(secrets.KEYWARD_SESSION_SECRET, { sub: 'local:bo' })}`;
    for (const rounds of await perCall('rated', bearer)) expect(rounds).toEqual([['evalsha']]);
    for (const rounds of await perCall('plain', await cookieFor('local:cy'))) expect(rounds).toEqual([['evalsha']]);
  });

  it("a DPoP-bound mobile session: one round trip more, first, for the proof's jti (SET NX), then the script", async () => {
    const key = await dpopKey();
    const exp = Math.floor(Date.now() / 1000) + 3600;
    const claims = { typ: 'keyward.session', sub: 'local:dp', roles: ['user'], sid: randomUUID(), exp, cnf: { jkt: key.jkt } };
    const accessToken = await sealData(claims, { password: { 1: secrets.KEYWARD_SESSION_SECRET } });
    const url = `${APP_ORIGIN}/api/proxy/rated/a`;
    const dpopCall = async () => {
      const headers = { authorization: `DPoP ${accessToken}`, dpop: await dpopProof(key, 'GET', url, { accessToken }) };
      return (await responseText(await handleProxy(new Request(url, { headers }), { upstream: 'rated', path: ['a'] }, a))).status;
    };
    expect(await dpopCall()).toBe(200);
    counter.take();
    for (let i = 0; i < 5; i++) {
      expect(await dpopCall()).toBe(200);
      expect(counter.take().calls).toEqual([['set'], ['evalsha']]);
    }
  });

  it('a rate limit per key: one round trip; after a key rotation on another instance, two once (state, then counters on the new key)', async () => {
    const cookie = await cookieFor('local:di');
    for (const rounds of await perCall('percred', cookie)) expect(rounds).toEqual([['evalsha']]);
    const oldKeys = await keysUnder(REDIS_URL, `${PREFIX}rl|percred|`);
    expect(oldKeys).toHaveLength(1);

    const fresh = randomSecret('rotated');
    await b.keyRings.rotate('percred', fresh, { skipCanary: true, actor: 'local:root' });
    counter.take();
    const seen = upstream.requests.length;
    expect((await call(a, 'percred', cookie)).status).toBe(200);
    const { calls } = counter.take();
    // The round trip that saw the change took no counter; the new key's counter was taken in a second one
    // (after the managed key's sealed value was read once, for this process).
    expect(calls[0]).toEqual(['evalsha']);
    expect(calls.at(-1)).toEqual(['evalsha']);
    expect(calls.filter((round) => round.includes('evalsha'))).toHaveLength(2);
    expect(upstream.requests[seen]!.headers['x-api-key']).toBe(fresh);
    const newKeys = (await keysUnder(REDIS_URL, `${PREFIX}rl|percred|`)).filter((key) => !oldKeys.includes(key));
    expect(newKeys).toHaveLength(1);
    expect(await info.get(newKeys[0]!)).toBe('1');
    expect(await info.get(oldKeys[0]!)).toBe(String(CALLS + 1));

    // The change is known now: one round trip again, on the new key.
    for (const rounds of await perCall('percred', cookie)) expect(rounds).toEqual([['evalsha']]);
    expect(await info.get(newKeys[0]!)).toBe(String(CALLS + 2));
  });

  it('a revocation on another instance applies to the next call, in its one round trip, and moves no counter', async () => {
    const sid = randomUUID();
    const cookie = await cookieFor('local:eve', sid);
    expect((await call(a, 'tight', cookie)).status).toBe(200);
    const counterKey = `${PREFIX}rl|tight|*|user-60s:u:local:eve`;
    expect(await info.get(counterKey)).toBe('1');

    await b.revocations.revokeSession(sid);
    counter.take();
    for (let i = 0; i < 5; i++) expect(await call(a, 'tight', cookie)).toEqual({ status: 401, code: 'unauthenticated' });
    expect(counter.take().calls).toEqual(Array.from({ length: 5 }, () => ['evalsha']));
    expect(await info.get(counterKey)).toBe('1');

    // A new sign-in of the same user still has its limit: the revoked calls took nothing from it.
    const again = await cookieFor('local:eve');
    expect((await call(a, 'tight', again)).status).toBe(200);
    expect((await call(a, 'tight', again)).status).toBe(200);
    expect(await call(a, 'tight', again)).toEqual({ status: 429, code: 'rate_limited' });

    // "Sign out everywhere" on B: the next call on A is refused.
    const fay = await cookieFor('local:fay');
    expect((await call(a, 'rated', fay)).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 5));
    await b.revocations.revokeUser('local:fay');
    expect(await call(a, 'rated', fay)).toEqual({ status: 401, code: 'unauthenticated' });
  });

  it('a revoked session is 401 even where a later step would refuse the call (CSRF), and a CSRF refusal moves no counter', async () => {
    const sid = randomUUID();
    const cookie = await cookieFor('local:gus', sid);
    expect(await call(a, 'tight', cookie, { method: 'POST', csrf: false })).toEqual({ status: 403, code: 'csrf_failed' });
    expect(await keysUnder(REDIS_URL, `${PREFIX}rl|tight|*|user-60s:u:local:gus`)).toEqual([]);
    await b.revocations.revokeSession(sid);
    expect(await call(a, 'tight', cookie, { method: 'POST', csrf: false })).toEqual({ status: 401, code: 'unauthenticated' });
  });

  it("a user's own key: one round trip, the suspension mark and the sealed key read in the script with the revocation marks and the counters", async () => {
    const own = randomSecret('own');
    await a.userKeys!.put('own', { userId: 'local:kim' }, own);
    const seen = upstream.requests.length;
    const calls = await perCall('own', await cookieFor('local:kim'));
    for (const rounds of calls) expect(rounds).toEqual([['evalsha']]);
    // Before: the script (revocation, throttle, no counter), a GET of the mark and the key, then the counters'
    // script: three round trips. Inside the one script now: 6 reads (three revocation marks, the throttle mark,
    // the suspension mark, the key), and the user's counter.
    expect(calls.server.evalsha).toBe(CALLS);
    expect(calls.server.mget ?? 0).toBe(0);
    expect(calls.server.get).toBe(6 * CALLS);
    expect(calls.server.incrby).toBe(CALLS);
    // Recording the key's use is one marker a minute, not a command per call.
    expect(calls.server.set ?? 0).toBe(CALLS); // the counter's SET NX in the script, nothing else
    expect(upstream.requests.slice(seen).map((request) => request.headers['x-api-key'])).toEqual(Array(CALLS + 1).fill(own));
    expect(await info.get(`${PREFIX}rl|own|*|user-60s:u:local:kim`)).toBe(String(CALLS + 1));
  });

  it("a user's own key: no key, a suspended user or a revoked session is refused in that one round trip and moves no counter", async () => {
    const counterOf = (user: string) => info.get(`${PREFIX}rl|own|*|user-60s:u:${user}`);
    // No key stored.
    counter.take();
    expect(await call(a, 'own', await cookieFor('local:nokey'))).toEqual({ status: 403, code: 'credential_missing' });
    expect(counter.take().calls).toEqual([['evalsha']]);
    expect(await counterOf('local:nokey')).toBeNull();

    // Suspended by the anomaly detector: refused although the key is there.
    await a.userKeys!.put('own', { userId: 'local:sus' }, randomSecret('sus'));
    const susCookie = await cookieFor('local:sus');
    counter.take();
    expect((await call(a, 'own', susCookie)).status).toBe(200);
    await keyUseRecorded();
    await storeB.set(suspensionKey('local:sus'), String(Date.now()));
    counter.take();
    expect(await call(a, 'own', susCookie)).toEqual({ status: 403, code: 'key_suspended' });
    expect(counter.take().calls).toEqual([['evalsha']]);
    expect(await counterOf('local:sus')).toBe('1');

    // Revoked on another instance: 401, no counter, and the sealed key is not even read (one GET fewer).
    const sid = randomUUID();
    await a.userKeys!.put('own', { userId: 'local:rev' }, randomSecret('rev'));
    const revCookie = await cookieFor('local:rev', sid);
    expect((await call(a, 'own', revCookie)).status).toBe(200);
    await b.revocations.revokeSession(sid);
    await a.audit.flush();
    counter.take();
    const before = await commandStats();
    expect(await call(a, 'own', revCookie)).toEqual({ status: 401, code: 'unauthenticated' });
    const after = await commandStats();
    expect(counter.take().calls).toEqual([['evalsha']]);
    expect(after.get! - before.get!).toBe(5);
    expect(await counterOf('local:rev')).toBe('1');
  });

  it("a user's own key with a rate limit per key: the counter waits for the key, a second round trip", async () => {
    await a.userKeys!.put('owncred', { userId: 'local:lee' }, randomSecret('lee'));
    for (const rounds of await perCall('owncred', await cookieFor('local:lee'))) expect(rounds).toEqual([['evalsha'], ['evalsha']]);
    const keys = await keysUnder(REDIS_URL, `${PREFIX}rl|owncred|`);
    expect(keys).toHaveLength(1);
    expect(await info.get(keys[0]!)).toBe(String(CALLS + 1));
  });

  it("the user's OAuth token: one round trip, the sealed token read in the script", async () => {
    const token = randomSecret('access');
    await a.oauthTokens!.save('oidc', { userId: 'local:max' }, { accessToken: token, refreshToken: null, expiresAt: Date.now() + 3_600_000 });
    const seen = upstream.requests.length;
    const calls = await perCall('token', await cookieFor('local:max'));
    for (const rounds of calls) expect(rounds).toEqual([['evalsha']]);
    expect(calls.server.get).toBe(5 * CALLS); // three revocation marks, the throttle mark, the token
    expect(upstream.requests.slice(seen).map((request) => request.headers.authorization)).toEqual(Array(CALLS + 1).fill(`Bearer ${token}`));
    expect(await info.get(`${PREFIX}rl|token|*|user-60s:u:local:max`)).toBe(String(CALLS + 1));
    // No token: refused in the same one round trip, nothing counted.
    counter.take();
    expect(await call(a, 'token', await cookieFor('local:notoken'))).toEqual({ status: 403, code: 'credential_missing' });
    expect(counter.take().calls).toEqual([['evalsha']]);
    expect(await info.get(`${PREFIX}rl|token|*|user-60s:u:local:notoken`)).toBeNull();
  });

  it("a secret that cannot be used (a sealed value that does not open, a token the provider must refresh and cannot) gives its counter back", async () => {
    const counterOf = (id: string, user: string) => info.get(`${PREFIX}rl|${id}|*|user-60s:u:${user}`);
    // A stored key whose seal is damaged: 503 credential_unavailable, and the point taken in the script returned.
    await a.userKeys!.put('own', { userId: 'local:bad' }, randomSecret('bad'));
    const cookie = await cookieFor('local:bad');
    expect((await call(a, 'own', cookie)).status).toBe(200);
    const stored = JSON.parse((await storeA.get('ukey:own:local:bad'))!) as { sealed: string };
    await storeA.set('ukey:own:local:bad', JSON.stringify({ ...stored, sealed: `${stored.sealed.slice(0, -4)}AAAA` }));
    expect(await call(a, 'own', cookie)).toEqual({ status: 503, code: 'credential_unavailable' });
    expect(await counterOf('own', 'local:bad')).toBe('1');

    // An expired token without a refresh token: 401 reauth_required, nothing counted.
    await a.oauthTokens!.save('oidc', { userId: 'local:old' }, { accessToken: randomSecret('old'), refreshToken: null, expiresAt: Date.now() - 1_000 });
    const result = await call(a, 'token', await cookieFor('local:old'));
    expect(result.status).toBeGreaterThanOrEqual(400);
    expect(['reauth_required', 'credential_unavailable']).toContain(result.code);
    expect(await counterOf('token', 'local:old')).toBe('0');
  });

  it("fails closed: a revocation mark the script reads as revoking is 401, though Keyward's own reading of it differs", async () => {
    // Lua's tonumber('inf') is infinity, JavaScript's Number('inf') NaN: marks Keyward never writes, read two ways.
    const cookie = await cookieFor('local:inf');
    expect((await call(a, 'rated', cookie)).status).toBe(200);
    await storeB.set('rev:user:local:inf', 'inf');
    expect(await call(a, 'rated', cookie)).toEqual({ status: 401, code: 'unauthenticated' });
    expect(await info.get(`${PREFIX}rl|rated|*|user-60s:u:local:inf`)).toBe('1');
  });

  it('quotas and budgets are reserved after the body is read: a second round trip (Store.reserve)', async () => {
    for (const rounds of await perCall('quota', await cookieFor('local:hal'))) expect(rounds).toEqual([['evalsha'], ['eval']]);
  });

  it('the audit record stays off the hot path: written after the calls, a script per batch', async () => {
    await a.audit.flush();
    counter.take();
    const before = await commandStats();
    const cookie = await cookieFor('local:ida');
    for (let i = 0; i < CALLS; i++) expect((await call(a, 'rated', cookie)).status).toBe(200);
    const during = counter.take();
    expect(during.calls.flat()).toEqual(Array(CALLS).fill('evalsha'));
    await a.audit.flush();
    const audit = [...during.audit, ...counter.take().audit];
    // One script per batch (a batch is what 100 ms or 256 records gather), not a command per record: how many
    // batches the calls span depends on how fast this machine makes them (5 seen under load), never one per call.
    expect(audit.flat().length).toBeGreaterThanOrEqual(1);
    expect(audit.flat().length).toBeLessThanOrEqual(CALLS / 2);
    // Inside those scripts, one XADD per call record.
    const after = await commandStats();
    expect(after.xadd! - (before.xadd ?? 0)).toBe(CALLS);
  });

  it('usage aggregates stay off the hot path too: written with the audit batches, never during a call', async () => {
    const cookie = await cookieFor('local:jo');
    expect((await call(a, 'rated', cookie)).status).toBe(200); // warm-up, as perCall
    await a.audit.flush();
    counter.take();
    for (let i = 0; i < CALLS; i++) expect((await call(a, 'rated', cookie)).status).toBe(200);
    const during = counter.take();
    // Every call still made exactly its one round trip; no call's round carried an aggregate command.
    expect(during.calls).toEqual(Array(CALLS).fill(['evalsha']));
    await a.audit.flush();
    const after = counter.take();
    const usage = [...during.usage, ...after.usage];
    // One script per batch of the audit records above, not one per call: how many batches there are depends on
    // how fast the calls went (a batch goes out 100 ms after its first record), so they are counted, not assumed.
    const batches = during.audit.length + after.audit.length;
    expect(usage.length).toBeGreaterThanOrEqual(1);
    expect(usage.length).toBeLessThanOrEqual(batches);
    const series = await a.usage.series({ period: 'hour', fromMs: Date.now() - 3_600_000, toMs: Date.now(), user: 'local:jo' });
    expect(series.total.calls).toBe(CALLS + 1);
  });
});

describe('RedisStore.round', () => {
  const rounds = new RedisStore(REDIS_URL, { prefix: `${PREFIX}round:` });
  afterAll(() => rounds.close());

  it('reads, stops on a present key or a number at or above the bound, sends a known value only when it changed', async () => {
    await rounds.set('v', 'hello');
    await rounds.set('n', '1000');
    const sha1 = (await import('node:crypto')).createHash('sha1').update('hello').digest('hex');
    const go = await rounds.round(
      [{ key: 'missing', stopIfPresent: true }, { key: 'n', stopIfAtLeast: 1001 }, { key: 'v', knownSha1: sha1 }, { key: 'n' }],
      [{ key: 'c', points: 1, windowSeconds: 60, limit: 100 }],
    );
    expect(go).toEqual({
      stopped: false,
      stoppedAt: null,
      changed: false,
      values: [null, '1000', undefined, '1000'],
      counters: [{ consumed: 1, ttlMs: expect.any(Number) }],
      taken: true,
    });
    expect(go.counters![0]!.ttlMs).toBeGreaterThan(59_000);

    const atBound = await rounds.round([{ key: 'n', stopIfAtLeast: 1000 }], [{ key: 'c', points: 1, windowSeconds: 60, limit: 100 }]);
    expect(atBound).toMatchObject({ stopped: true, stoppedAt: 0, counters: null });
    const present = await rounds.round([{ key: 'v', stopIfPresent: true }], [{ key: 'c', points: 1, windowSeconds: 60, limit: 100 }]);
    expect(present).toMatchObject({ stopped: true, values: ['hello'], counters: null });
    const changed = await rounds.round([{ key: 'v', knownSha1: 'f'.repeat(40) }], [{ key: 'c', points: 1, windowSeconds: 60, limit: 100 }]);
    expect(changed).toMatchObject({ stopped: false, changed: true, values: ['hello'], counters: null });
    const gone = await rounds.round([{ key: 'missing', knownSha1: sha1 }], []);
    expect(gone).toMatchObject({ changed: true, values: [null] });
    const absent = await rounds.round([{ key: 'missing', knownSha1: null }], []);
    expect(absent).toMatchObject({ changed: false, values: [undefined] });
    expect(await rounds.get('c')).toBe('1');
  });

  it('takes no counter when one has no room left: each is answered as if taken, none is written', async () => {
    const counters = [
      { key: 'own', points: 1, windowSeconds: 60, limit: 2 },
      { key: 'shared', points: 1, windowSeconds: 60, limit: 100 },
    ];
    const first = await rounds.round([], counters);
    expect(first.taken).toBe(true);
    expect(first.counters!.map((c) => c.consumed)).toEqual([1, 1]);
    expect((await rounds.round([], counters)).counters!.map((c) => c.consumed)).toEqual([2, 2]);
    const refused = await rounds.round([], counters);
    expect(refused.taken).toBe(false);
    // The counter without room is answered over its limit, the other as it stands.
    expect(refused.counters!.map((c) => c.consumed)).toEqual([3, 2]);
    expect(refused.counters![0]!.ttlMs).toBeGreaterThan(59_000);
    expect([await rounds.get('own'), await rounds.get('shared')]).toEqual(['2', '2']);
    // A counter nobody took yet is answered with its whole window.
    const fresh = await rounds.round([], [{ key: 'own', points: 1, windowSeconds: 60, limit: 2 }, { key: 'new', points: 1, windowSeconds: 30, limit: 5 }]);
    expect(fresh.counters).toEqual([{ consumed: 3, ttlMs: expect.any(Number) }, { consumed: 0, ttlMs: 30_000 }]);
    expect(await rounds.get('new')).toBeNull();
  });

  it('reads a secret only when no earlier read stopped the round, and stops it when the secret is absent', async () => {
    await rounds.set('sealed', 'opaque');
    await rounds.set('mark', 'x');
    const counter = [{ key: 's', points: 1, windowSeconds: 60, limit: 100 }];
    const go = await rounds.round([{ key: 'nomark', stopIfPresent: true }, { key: 'sealed', secret: true }], counter);
    expect(go).toMatchObject({ stopped: false, values: [null, 'opaque'], counters: [{ consumed: 1 }] });
    const marked = await rounds.round([{ key: 'mark', stopIfPresent: true }, { key: 'sealed', secret: true }], counter);
    expect(marked).toMatchObject({ stopped: true, stoppedAt: 0, values: ['x', null], counters: null });
    const absent = await rounds.round([{ key: 'nomark', stopIfPresent: true }, { key: 'nosecret', secret: true }], counter);
    expect(absent).toMatchObject({ stopped: true, stoppedAt: 1, values: [null, null], counters: null });
    // The first read that stopped the round is the one reported.
    const both = await rounds.round([{ key: 'n', stopIfAtLeast: 1 }, { key: 'mark', stopIfPresent: true }], counter);
    expect(both).toMatchObject({ stoppedAt: 0, values: ['1000', 'x'] });
    expect(await rounds.get('s')).toBe('1');
  });

  it('gives points back only to a counter that still exists (a window that ended is not restarted)', async () => {
    await rounds.round([], [{ key: 'gb', points: 3, windowSeconds: 60, limit: 100 }]);
    expect(await rounds.giveBack('gb', 1)).toBe(2);
    expect(await rounds.giveBack('gone', 1)).toBeNull();
    expect(await rounds.get('gone')).toBeNull();
  });

  it("counts on rate-limiter-flexible's counters: the same key, window and values", async () => {
    const limiter = new RateLimiterRedis({ storeClient: rounds.client, points: 5, duration: 60, keyPrefix: 'rl|rule' });
    expect((await limiter.consume('u:1')).consumedPoints).toBe(1);
    const taken = await rounds.round([], [{ key: 'rl|rule:u:1', points: 1, windowSeconds: 60, limit: 100 }]);
    expect(taken.counters![0]!.consumed).toBe(2);
    expect((await limiter.consume('u:1')).consumedPoints).toBe(3);
    expect(taken.counters![0]!.ttlMs).toBeLessThanOrEqual(60_000);
  });
});
