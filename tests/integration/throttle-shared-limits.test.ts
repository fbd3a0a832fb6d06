import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { throttleKey, type ThrottleMark } from '../../lib/core/detect/marks';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import type { Store } from '../../lib/store';
import { RedisStore } from '../../lib/store/redis';
import { SqliteStore } from '../../lib/store/sqlite';
import { REDIS_URL, capturingLogger, claimsSessionCookie, responseText } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * A call the anomaly detector's throttle refuses takes no point from the limits other users share (the key's, the
 * upstream's, an address's), as a refusal by a configured rule takes none: else a throttled user who keeps calling
 * would use up everyone's limit, the very harm the throttle is there to stop. With the embedded store the throttle
 * counts in the same all-or-nothing take as the configured rules; with Redis the call's round trip took the shared
 * points before the mark was read, and gives them back. A real node:http upstream on loopback and real Redis.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const PREFIX = `keyward-test-throttle-shared-${randomUUID()}:`;
const secrets = testSessionSecrets();
let upstream: TestUpstream;

beforeAll(async () => {
  upstream = await startUpstream();
});

afterAll(async () => {
  await upstream?.close();
  await deleteKeysUnder(REDIS_URL, PREFIX);
});

async function call(runtime: Runtime, cookie: string): Promise<{ status: number; code: string | null }> {
  const request = new Request(`${APP_ORIGIN}/api/proxy/shared/a`, { headers: { cookie, 'x-keyward-csrf': '1' } });
  const { status, body } = await responseText(await handleProxy(request, { upstream: 'shared', path: ['a'] }, runtime));
  return { status, code: status >= 400 ? (JSON.parse(body) as { error: { code: string } }).error.code : null };
}

function runtimeOn(store: Store): Runtime {
  return createRuntime({
    env: { ...secrets, SHARED_KEY: randomSecret('shared-key'), KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN },
    upstreams: [
      defineUpstream('shared', {
        baseUrl: `${upstream.origin}/shared/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'SHARED_KEY' } },
        rateLimits: [
          { by: 'user', limit: 100, windowSeconds: 60 },
          { by: 'upstream', limit: 3, windowSeconds: 60 },
        ],
        routes: [{ method: 'GET', path: '/a' }],
      }),
    ],
    store,
    logger: capturingLogger().logger,
  });
}

const stores: Array<[string, () => Promise<Store>]> = [
  ['the embedded store', async () => new SqliteStore(':memory:')],
  [
    'Redis',
    async () => {
      const store = new RedisStore(REDIS_URL, { prefix: `${PREFIX}${randomUUID()}:` });
      await store.ready();
      return store;
    },
  ],
];

describe.each(stores)("the detector's throttle and the limits users share, with %s", (_name, open) => {
  let runtime: Runtime;

  beforeAll(async () => {
    runtime = runtimeOn(await open());
  });

  afterAll(async () => {
    await runtime?.audit.flush().catch(() => {});
    await runtime?.store.close();
  });

  it("a throttled user's refused calls leave the upstream's limit to the others", async () => {
    const mark: ThrottleMark = { limit: 1, windowSeconds: 60, alertId: 'alert-test' };
    await runtime.store.set(throttleKey('local:mallory'), JSON.stringify(mark), 60_000);
    const mallory = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:mallory', roles: ['user'] });
    const alice = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:alice', roles: ['user'] });
    const before = upstream.requests.length;

    expect(await call(runtime, mallory)).toEqual({ status: 200, code: null });
    for (let i = 0; i < 5; i++) expect(await call(runtime, mallory)).toEqual({ status: 429, code: 'throttled' });
    // The upstream's limit of 3 has had one call: Alice gets the other two, then the limit refuses her too.
    const statuses: Array<number> = [];
    for (let i = 0; i < 3; i++) statuses.push((await call(runtime, alice)).status);
    expect(statuses).toEqual([200, 200, 429]);
    expect(await call(runtime, alice)).toEqual({ status: 429, code: 'rate_limited' });
    expect(upstream.requests.length - before).toBe(3);
  });
});
