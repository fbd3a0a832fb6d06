import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { REDIS_URL, capturingLogger, claimsSessionCookie, responseText } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * Rate limits with a user's own key on real Redis: a call whose key cannot be used gives back the points its round
 * trip took (no counter moves for a call whose credential cannot be had), and only those. A round trip that
 * refused the call (a counter without room) took none, so it gives none back: else each such call would free a
 * place in a limit others share. A real node:http upstream on loopback; the broken key is a seal altered in the store.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const PREFIX = `keyward-test-giveback-${randomUUID()}:`;
const secrets = testSessionSecrets();
let upstream: TestUpstream;
let store: RedisStore;
let runtime: Runtime;

async function call(cookie: string): Promise<{ status: number; code: string | null }> {
  const request = new Request(`${APP_ORIGIN}/api/proxy/own/a`, { headers: { cookie, 'x-keyward-csrf': '1' } });
  const { status, body } = await responseText(await handleProxy(request, { upstream: 'own', path: ['a'] }, runtime));
  return { status, code: status >= 400 ? (JSON.parse(body) as { error: { code: string } }).error.code : null };
}

beforeAll(async () => {
  upstream = await startUpstream();
  store = new RedisStore(REDIS_URL, { prefix: PREFIX });
  await store.ready();
  runtime = createRuntime({
    env: { ...secrets, KEYWARD_VAULT_SECRET: randomSecret('vault-secret-of-32-characters-or-more'), KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN },
    upstreams: [
      defineUpstream('own', {
        baseUrl: `${upstream.origin}/own/`,
        auth: { type: 'header', name: 'x-api-key', secret: { user: 'key' } },
        rateLimits: [
          { by: 'user', limit: 100, windowSeconds: 60 },
          { by: 'upstream', limit: 1, windowSeconds: 60 },
        ],
        routes: [{ method: 'GET', path: '/a' }],
      }),
    ],
    store,
    logger: capturingLogger().logger,
  });
});

afterAll(async () => {
  await runtime?.audit.flush().catch(() => {});
  await store?.close();
  await upstream?.close();
  await deleteKeysUnder(REDIS_URL, PREFIX);
});

describe("a call whose own key cannot be used gives back only the points its round trip took", () => {
  it('calls refused for want of room, then failing on their key, free no place in the upstream-wide limit', async () => {
    await runtime.userKeys!.put('own', { userId: 'local:good' }, randomSecret('good'));
    await runtime.userKeys!.put('own', { userId: 'local:bad' }, randomSecret('bad'));
    // The bad user's sealed key no longer opens.
    const stored = JSON.parse((await store.get('ukey:own:local:bad'))!) as { sealed: string };
    await store.set('ukey:own:local:bad', JSON.stringify({ ...stored, sealed: `${stored.sealed.slice(0, -4)}AAAA` }));
    const good = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:good', roles: ['user'] });
    const bad = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:bad', roles: ['user'] });
    // Before the upstream's one place is taken, the bad call's points are given back: it does not use the place up.
    expect(await call(bad)).toEqual({ status: 503, code: 'credential_unavailable' });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      statuses.push((await call(good)).status);
      expect((await call(bad)).status).toBeGreaterThanOrEqual(429);
    }
    expect(statuses).toEqual([200, 429, 429, 429]);
    expect(upstream.requests).toHaveLength(1);
  });
});
