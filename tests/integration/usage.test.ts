import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { latencyBucket, quantile, LATENCY_BOUNDS_MS } from '../../lib/core/aggregates/model';
import type { TopRow, UsageFigures } from '../../lib/core/aggregates/usage';
import { handleUsage, handleUsageTop } from '../../lib/core/api/usage';
import type { CallRecord } from '../../lib/core/audit/audit';
import { defineUpstream } from '../../lib/core/config/load';
import { keyFingerprints } from '../../lib/core/keys/fingerprint';
import { handleProxy, type ProxyEvent } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { SqliteStore } from '../../lib/store/sqlite';
import type { Store } from '../../lib/store/types';
import { REDIS_URL, capturingLogger } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * Usage aggregates end to end, on each shared backend: two runtimes (two instances) on one store — two Redis
 * connections under one key prefix, or two SQLite handles on one file — take calls through handleProxy
 * against a real node:http upstream. After both audit writers flushed, the series and top lists read from the
 * aggregates must equal what the audit trail says (folded here by hand), be the same from either instance,
 * and the admin API must answer them behind the admin rules. Latency percentiles are checked exactly with
 * events of known durations handed to the runtime's onComplete (the audit writer's entry), since a real
 * call's duration depends on the machine.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const ALICE = 'local:alice';
const BOB = 'local:bob';
const ROOT = 'local:root';
const key = randomSecret('usage');
const secrets = testSessionSecrets();
const prefixes: string[] = [];
let upstream: TestUpstream;

beforeAll(async () => {
  upstream = await startUpstream((req, res) => {
    const path = (req.url ?? '').split('?')[0]!;
    const status = path.startsWith('/v1/fail') ? 500 : path.startsWith('/v1/missing') ? 404 : 200;
    req.resume();
    req.on('end', () => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ path, padding: 'x'.repeat(path.length * 10) }));
    });
  });
});

afterAll(async () => {
  await upstream?.close();
  for (const prefix of prefixes) await deleteKeysUnder(REDIS_URL, prefix);
});

/** Two handles on one store's state, as two instances have. */
const backends: Record<string, () => Promise<[Store, Store]>> = {
  redis: async () => {
    const prefix = `keyward-test:${randomUUID()}:`;
    prefixes.push(prefix);
    const stores: [RedisStore, RedisStore] = [
      new RedisStore(REDIS_URL, { prefix }),
      new RedisStore(REDIS_URL, { prefix }),
    ];
    await Promise.all(stores.map((store) => store.ready()));
    return stores;
  },
  sqlite: async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'keyward-usage-')), 'keyward.db');
    return [new SqliteStore(path), new SqliteStore(path)];
  },
};

function instance(store: Store): Runtime {
  return createRuntime({
    env: { ...secrets, USAGE_KEY: key, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN },
    upstreams: [
      defineUpstream('echo', {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'USAGE_KEY' } },
        routes: [
          { method: 'GET', path: '/items/:id' },
          { method: 'POST', path: '/items' },
          { method: 'GET', path: '/fail' },
          { method: 'GET', path: '/missing' },
          { method: 'GET', path: '/admin', roles: ['admin'] },
        ],
      }),
    ],
    store,
    logger: capturingLogger().logger,
  });
}

describe.each(Object.keys(backends))('usage aggregates: two instances on one %s store', (kind) => {
  let a: Runtime;
  let b: Runtime;
  let stores: [Store, Store];
  const cookies: Record<string, string> = {};
  let started: number;

  beforeAll(async () => {
    stores = await backends[kind]!();
    a = instance(stores[0]);
    b = instance(stores[1]);
    cookies[ALICE] = await sessionCookie(secrets.AUTH_SECRET, { sub: ALICE, roles: ['user'], sid: randomUUID() });
    cookies[BOB] = await sessionCookie(secrets.AUTH_SECRET, { sub: BOB, roles: ['user'], sid: randomUUID() });
    cookies[ROOT] = await sessionCookie(secrets.AUTH_SECRET, {
      sub: ROOT,
      roles: ['user', 'admin'],
      sid: randomUUID(),
    });
    started = Date.now();
  });

  afterAll(async () => {
    await Promise.all([a?.audit.flush().catch(() => {}), b?.audit.flush().catch(() => {})]);
    await Promise.all(stores?.map((store) => store.close()) ?? []);
  });

  async function proxy(runtime: Runtime, user: string, path: string[], body?: string): Promise<number> {
    const headers = new Headers({ cookie: cookies[user]!, 'x-keyward-csrf': '1' });
    if (body !== undefined) {
      headers.set('origin', APP_ORIGIN);
      headers.set('content-type', 'application/json');
    }
    const request = new Request(`${APP_ORIGIN}/api/proxy/echo/${path.join('/')}`, {
      method: body === undefined ? 'GET' : 'POST',
      headers,
      body,
    });
    const response = await handleProxy(request, { upstream: 'echo', path }, runtime);
    await response.arrayBuffer();
    return response.status;
  }

  /** The admin API as a browser with the given session sends it. */
  function admin(path: string, init: { user?: string | null; csrf?: boolean; method?: string } = {}): Request {
    const headers = new Headers();
    const user = init.user === undefined ? ROOT : init.user;
    if (user) headers.set('cookie', cookies[user]!);
    if (init.csrf !== false) headers.set('x-keyward-csrf', '1');
    if (init.method && init.method !== 'GET') headers.set('origin', APP_ORIGIN);
    return new Request(`${APP_ORIGIN}${path}`, { method: init.method ?? 'GET', headers });
  }

  const window = () => ({ period: 'hour' as const, fromMs: started, toMs: Date.now() });

  it('counts what the audit trail holds, the same from either instance; the views never read the log', async () => {
    // 6 × 200 (alternating instances, two users), 2 × 500, 2 × 404 from the upstream, 1 POST with a body,
    // 2 refused by Keyward (bob lacks the admin role): 13 calls.
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push(await proxy(i % 2 ? a : b, i < 4 ? ALICE : BOB, ['items', String(i)]));
    for (let i = 0; i < 2; i++) statuses.push(await proxy(i ? a : b, ALICE, ['fail']));
    for (let i = 0; i < 2; i++) statuses.push(await proxy(a, BOB, ['missing']));
    statuses.push(await proxy(b, ALICE, ['items'], JSON.stringify({ name: 'x'.repeat(100) })));
    for (let i = 0; i < 2; i++) statuses.push(await proxy(i ? a : b, BOB, ['admin']));
    expect(statuses).toEqual([200, 200, 200, 200, 200, 200, 500, 500, 404, 404, 200, 403, 403]);
    await Promise.all([a.audit.flush(), b.audit.flush()]);

    // The expected numbers, folded from the audit trail (both instances write to the one log).
    const { records, cursor } = await a.audit.query({ type: 'call', sinceMs: started - 1 }, { limit: 1000 });
    expect(cursor).toBeNull();
    const calls = records as CallRecord[];
    expect(calls).toHaveLength(13);

    // Reads from aggregates only: a store whose log reads fail still answers.
    const readLog = stores.map((store) => store.readLog);
    for (const store of stores) store.readLog = () => Promise.reject(new Error('a view read the audit log'));
    try {
      const fromA = await a.usage.series(window());
      const fromB = await b.usage.series(window());
      expect(fromB).toEqual(fromA);
      expect(fromA.total).toEqual(fold(calls));
      expect(fromA.total).toMatchObject({
        calls: 13,
        errors: 2,
        status: { '2xx': 7, '3xx': 0, '4xx': 2, '5xx': 2, refused: 2 },
      });
      expect(fromA.total.bytesIn).toBe(JSON.stringify({ name: 'x'.repeat(100) }).length);

      const of = (rows: readonly TopRow[], field: keyof TopRow) => rows.map((row) => [row[field], row.calls]);
      const fingerprint = keyFingerprints(secrets.KEYWARD_SESSION_SECRET).of(key);
      const byUser = await b.usage.top({ ...window(), by: 'user', limit: 10 });
      expect(of(byUser, 'user')).toEqual([
        [ALICE, 7],
        [BOB, 6],
      ]);
      expect(byUser[0]).toEqual({ user: ALICE, ...fold(calls.filter((c) => c.userId === ALICE)) });
      const byRoute = await a.usage.top({ ...window(), by: 'route', limit: 10 });
      expect(of(byRoute, 'route')).toEqual([
        ['/items/:id', 6],
        ['/admin', 2],
        ['/fail', 2],
        ['/missing', 2],
        ['/items', 1],
      ]);
      const byKey = await a.usage.top({ ...window(), by: 'keyVersion', limit: 10 });
      // Refused calls never reached the credential step: no key version.
      expect(of(byKey, 'keyVersion')).toEqual([
        [fingerprint, 11],
        [null, 2],
      ]);
      expect((await a.usage.series({ ...window(), keyVersion: fingerprint })).total).toEqual(
        fold(calls.filter((c) => c.keyFingerprint === fingerprint)),
      );
      expect((await b.usage.series({ ...window(), route: '/fail', upstream: 'echo' })).total).toEqual(
        fold(calls.filter((c) => c.route === '/fail')),
      );
      expect((await b.usage.series({ ...window(), user: BOB })).total).toEqual(
        fold(calls.filter((c) => c.userId === BOB)),
      );
      expect((await b.usage.series({ ...window(), upstream: 'other' })).total.calls).toBe(0);
    } finally {
      stores.forEach((store, i) => (store.readLog = readLog[i]!));
    }
  });

  it('an upstream the registry does not hold is counted as "(unknown)", never under the name the client sent', async () => {
    const from = Date.now();
    for (let i = 0; i < 3; i++) {
      const name = `${randomUUID()}${'n'.repeat(2000)}`;
      const request = new Request(`${APP_ORIGIN}/api/proxy/${name}/x`, { headers: { cookie: cookies[ALICE]!, 'x-keyward-csrf': '1' } });
      const response = await handleProxy(request, { upstream: name, path: ['x'] }, i % 2 ? a : b);
      expect(response.status).toBe(404);
      await response.arrayBuffer();
    }
    await Promise.all([a.audit.flush(), b.audit.flush()]);
    const byUpstream = await a.usage.top({ period: 'hour', fromMs: from, toMs: Date.now(), by: 'upstream', limit: 10 });
    // (The hour's bucket also holds the calls to `echo` made above.)
    expect(byUpstream.filter((row) => row.upstream !== 'echo').map((row) => [row.upstream, row.calls])).toEqual([['(unknown)', 3]]);
  });

  /** The hash reads `run` makes on `store` (keys, and the fields asked for: undefined for whole hashes). */
  async function hashReads(store: Store, run: () => Promise<void>): Promise<Array<{ keys: readonly string[]; fields?: readonly string[] }>> {
    const readHashes = store.readHashes;
    const reads: Array<{ keys: readonly string[]; fields?: readonly string[] }> = [];
    store.readHashes = (keys, fields) => {
      reads.push({ keys, fields });
      return readHashes.call(store, keys, fields);
    };
    try {
      await run();
    } finally {
      store.readHashes = readHashes;
    }
    return reads;
  }

  it("a user's series reads that user's rows of each bucket only, never every user's, also with no upstream named", async () => {
    const reads = await hashReads(stores[1], async () => {
      // The whole window's day buckets, as the admin pages read a user's figures since the retention began.
      const days = { period: 'day' as const, fromMs: started - 399 * 86_400_000, toMs: Date.now() };
      const bob = await b.usage.series({ ...days, user: BOB });
      const { user, ...figures } = (await b.usage.top({ ...days, by: 'user', limit: 10 })).find((top) => top.user === BOB)!;
      expect(user).toBe(BOB);
      expect(bob.total).toEqual(figures);
      expect(bob.total.calls).toBeGreaterThan(0);
    });
    const userRollup = reads.filter((read) => read.keys.some((key) => key.startsWith('usage:day:user:')));
    // The series' read (named fields), then top's (whole buckets, to compare with).
    expect(userRollup).toHaveLength(2);
    const fields = userRollup[0]!.fields!;
    expect(fields.length).toBeGreaterThan(0);
    // Bob's rows of each upstream called in the window (`echo`, and `(unknown)`, which alice called), no one else's.
    expect(new Set(fields.map((field) => field.split(' ')[0]))).toEqual(new Set([JSON.stringify([BOB, 'echo']), JSON.stringify([BOB, '(unknown)'])]));
    expect(userRollup[1]!.fields).toBeUndefined();
  });

  it("a user's series for one upstream reads that user's row of it alone, without the per-upstream rollup first", async () => {
    let calls = 0;
    const reads = await hashReads(stores[0], async () => {
      calls = (await a.usage.series({ ...window(), user: ALICE, upstream: 'echo' })).total.calls;
    });
    expect(calls).toBeGreaterThan(0);
    expect(reads.map((read) => read.keys[0]!.split(':').slice(0, 3).join(':'))).toEqual(['usage:hour:user']);
    expect(new Set(reads[0]!.fields!.map((field) => field.split(' ')[0]))).toEqual(new Set([JSON.stringify([ALICE, 'echo'])]));
  });

  it('estimates p50 and p95 from the merged latency buckets of both instances', async () => {
    // 10 calls of 3 ms (≤ 5), 9 of 80 ms (in (50, 100]), 1 of 3 s (in (2500, 5000]), split over the instances.
    const durations = [...Array(10).fill(3), ...Array(9).fill(80), 3000] as number[];
    durations.forEach((durationMs, i) => (i % 2 ? a : b).onComplete!(syntheticEvent(durationMs)));
    await Promise.all([a.audit.flush(), b.audit.flush()]);
    const series = await a.usage.series({ ...window(), upstream: 'synthetic' });
    // p50: rank 10 is the last call of the first bucket, its top: 5. p95: rank 19 is the last of (50, 100]: 100.
    expect(series.total).toMatchObject({ calls: 20, p50: 5, p95: 100, latency: { '5': 10, '100': 9, '5000': 1 } });
  });

  it('serves GET /api/admin/usage and /api/admin/usage/top to admins only, with the documented errors', async () => {
    const from = new Date(started).toISOString();
    const series = await handleUsage(admin(`/api/admin/usage?period=hour&from=${from}`), a);
    expect(series.status).toBe(200);
    expect(series.headers.get('cache-control')).toBe('private, no-store');
    const body = (await series.json()) as { period: string; points: unknown[]; total: UsageFigures };
    expect(body.period).toBe('hour');
    expect(body.total).toEqual((await b.usage.series({ ...window(), fromMs: started })).total);

    const top = await handleUsageTop(admin(`/api/admin/usage/top?by=user&limit=1&from=${from}`), b);
    expect(top.status).toBe(200);
    const topBody = (await top.json()) as { by: string; rows: Array<{ user: string; calls: number }> };
    expect(topBody.by).toBe('user');
    expect(topBody.rows).toHaveLength(1);

    const expectError = async (response: Response, status: number, code: string) => {
      expect(response.status).toBe(status);
      const error = ((await response.json()) as { error: { code: string; message: string; requestId: string } }).error;
      expect(error).toMatchObject({ code });
      expect(typeof error.requestId).toBe('string');
      return error.message;
    };
    await expectError(await handleUsage(admin('/api/admin/usage', { user: null }), a), 401, 'unauthenticated');
    await expectError(await handleUsage(admin('/api/admin/usage', { user: ALICE }), a), 403, 'forbidden');
    await expectError(
      await handleUsageTop(admin('/api/admin/usage/top?by=user', { user: ALICE }), a),
      403,
      'forbidden',
    );
    await expectError(await handleUsage(admin('/api/admin/usage', { csrf: false }), a), 403, 'csrf_failed');
    await expectError(await handleUsage(admin('/api/admin/usage', { method: 'POST' }), a), 405, 'method_not_allowed');

    // Invalid parameters: 400, and the message names the parameter, never the value sent.
    const secretish = randomSecret('echoed');
    const bad = [
      `/api/admin/usage?period=${secretish}`,
      `/api/admin/usage?from=${secretish}`,
      `/api/admin/usage?${secretish}=1`,
      '/api/admin/usage?__proto__=1',
      '/api/admin/usage?constructor=1',
      `/api/admin/usage?user=a&user=${secretish}`,
      `/api/admin/usage?user=${secretish}&route=${secretish}`,
      `/api/admin/usage?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z`,
      `/api/admin/usage?period=minute&from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z`,
      `/api/admin/usage?upstream=${'u'.repeat(257)}`,
      `/api/admin/usage?user=oidc:${'u'.repeat(296)}`,
      `/api/admin/usage?user=${encodeURIComponent('oidc:é')}`,
    ];
    for (const path of bad) {
      const message = await expectError(await handleUsage(admin(path), a), 400, 'bad_request');
      expect(message).not.toContain(secretish);
    }
    // The longest user id the other admin APIs take (an OIDC sub of 255 characters, a URL) is one this API takes.
    const longest = `oidc:https://idp.example/${'s'.repeat(230)}`;
    expect((await handleUsage(admin(`/api/admin/usage?user=${encodeURIComponent(longest)}`), a)).status).toBe(200);
    for (const query of [
      '',
      `by=${secretish}`,
      'by=user&limit=0',
      'by=user&limit=101',
      'by=user&limit=2.5',
      'by=user&route=/items',
    ]) {
      const message = await expectError(
        await handleUsageTop(admin(`/api/admin/usage/top?${query}`), a),
        400,
        'bad_request',
      );
      expect(message).not.toContain(secretish);
    }
  });
});

function syntheticEvent(durationMs: number): ProxyEvent {
  return {
    requestId: randomUUID(),
    userId: 'local:synthetic',
    sessionId: null,
    upstream: 'synthetic',
    route: '/timed',
    target: null,
    method: 'GET',
    status: 200,
    keyFingerprint: null,
    bytesIn: 0,
    bytesOut: 10,
    durationMs,
    outcome: 'complete',
    errorCode: null,
    clientIp: null,
    units: 0,
    scrubberHits: 0,
  };
}

/** What the aggregates must show for these audit records, computed from the records alone. */
function fold(records: readonly CallRecord[]): UsageFigures {
  const latency = new Array<number>(LATENCY_BOUNDS_MS.length + 1).fill(0);
  const status = { '1xx': 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0, refused: 0 };
  for (const record of records) {
    latency[latencyBucket(record.durationMs)]!++;
    const cls =
      record.outcome === 'refused' ? 'refused' : (`${Math.floor(record.status / 100)}xx` as keyof typeof status);
    status[cls]++;
  }
  const sum = (pick: (record: CallRecord) => number) => records.reduce((total, record) => total + pick(record), 0);
  return {
    calls: records.length,
    errors: records.filter((r) => r.status >= 500 || r.outcome === 'error' || r.outcome === 'upstream_error').length,
    bytesIn: sum((r) => r.bytesIn),
    bytesOut: sum((r) => r.bytesOut),
    units: sum((r) => r.units),
    scrubberHits: 0,
    status,
    p50: quantile(latency, 0.5),
    p95: quantile(latency, 0.95),
    latency: Object.fromEntries([...LATENCY_BOUNDS_MS.map(String), '+Inf'].map((bound, i) => [bound, latency[i]!])),
  };
}
