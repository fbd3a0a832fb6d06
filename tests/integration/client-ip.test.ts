import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientIp } from '../../lib/core/client/ip';
import { defineUpstream } from '../../lib/core/config/load';
import { KeywardError } from '../../lib/core/errors';
import { createLogger } from '../../lib/core/log/logger';
import { handleProxy, type ProxyDeps, type ProxyEvent } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * Per-IP limits against the addresses the attack session used: an IPv4-mapped IPv6 address is the same
 * client as its IPv4 address, and a non-address X-Forwarded-For cannot use up a bucket shared with others.
 * Real pipeline, real node:http upstream, the in-process store (rate limits counted in this process).
 */

const APP_ORIGIN = 'https://app.keyward.test';
let upstream: TestUpstream;
let runtime: Runtime;
let deps: ProxyDeps;
const events: ProxyEvent[] = [];

beforeAll(async () => {
  upstream = await startUpstream();
  const auth = { type: 'header', name: 'x-api-key', secret: { env: 'IP_KEY' } } as const;
  runtime = createRuntime({
    env: { ...testSessionSecrets(), IP_KEY: randomSecret('ip'), KEYWARD_STORE: 'memory', KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN },
    upstreams: [
      defineUpstream('perip', {
        baseUrl: `${upstream.origin}/perip/`,
        auth,
        rateLimits: [{ by: 'ip', limit: 2, windowSeconds: 600 }],
        routes: [{ method: 'GET', path: '/a' }],
      }),
      defineUpstream('both', {
        baseUrl: `${upstream.origin}/both/`,
        auth,
        rateLimits: [
          { by: 'ip', limit: 2, windowSeconds: 600 },
          { by: 'user', limit: 3, windowSeconds: 600 },
        ],
        routes: [{ method: 'GET', path: '/a' }],
      }),
    ],
    logger: createLogger({ level: 'silent' }),
  });
  deps = { ...runtime, onComplete: (event) => events.push(event) };
});
afterAll(async () => {
  await upstream.close();
  await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
});

/** A new user each time unless given, so only the per-IP rule can tie two calls together. */
async function call(upstreamId: string, xff: string | null, user = `local:${randomUUID()}`): Promise<{ status: number; requestId: string }> {
  const headers = new Headers({ cookie: await sessionCookie(runtime.settings.AUTH_SECRET, { sub: user }), 'x-keyward-csrf': '1' });
  if (xff !== null) headers.set('x-forwarded-for', xff);
  const request = new Request(`${APP_ORIGIN}/api/proxy/${upstreamId}/a`, { headers });
  const response = await handleProxy(request, { upstream: upstreamId, path: ['a'] }, deps);
  await response.arrayBuffer();
  return { status: response.status, requestId: response.headers.get('x-request-id') ?? '' };
}

/** A fresh address per test, so tests do not share buckets. */
let next = 1;
const freshV4 = () => `10.60.${Math.floor(next / 250)}.${(next++ % 250) + 1}`;

describe('one client, one bucket, whatever the spelling of its address', () => {
  it('::ffff:10.60.x.y and 10.60.x.y share one per-IP bucket', async () => {
    const v4 = freshV4();
    expect((await call('perip', `::ffff:${v4}`)).status).toBe(200);
    expect((await call('perip', v4)).status).toBe(200);
    expect((await call('perip', `::FFFF:${v4}`)).status).toBe(429);
    expect((await call('perip', `[::ffff:${v4}]:443`)).status).toBe(429);
    // Another address is another bucket.
    expect((await call('perip', freshV4())).status).toBe(200);
  });

  it('IPv6 spellings of one address share one bucket', async () => {
    expect((await call('perip', '2001:db8:0:0:0:0:0:42')).status).toBe(200);
    expect((await call('perip', '2001:DB8::42')).status).toBe(200);
    expect((await call('perip', '[2001:db8:0::42]:8443')).status).toBe(429);
  });

  it('the audit event names the address in its one spelling', async () => {
    const v4 = freshV4();
    const { requestId } = await call('perip', `::ffff:${v4}`);
    expect(events.find((event) => event.requestId === requestId)?.clientIp).toBe(v4);
    const v6 = await call('perip', '2001:0DB8:0000:0000:0000:0000:0000:0099');
    expect(events.find((event) => event.requestId === v6.requestId)?.clientIp).toBe('2001:db8::99');
  });
});

describe('a request without a usable address', () => {
  it('is not put in one shared per-IP bucket that one client could use up for everyone', async () => {
    // One client sends non-address X-Forwarded-For values well past the limit of 2 ...
    for (const garbage of ['unknown', 'unknown', 'unknown', 'evil', '<script>', '0x7f.1']) {
      expect((await call('perip', garbage)).status).toBe(200);
    }
    // ... and another caller without a usable address is not locked out.
    expect((await call('perip', 'unknown')).status).toBe(200);
    expect((await call('perip', null)).status).toBe(200);
  });

  it("still counts against the caller's per-user limit", async () => {
    const user = `local:${randomUUID()}`;
    for (let i = 0; i < 3; i++) expect((await call('both', 'not-an-ip', user)).status).toBe(200);
    expect((await call('both', 'also-not-an-ip', user)).status).toBe(429);
  });

  it('sign-in: rotating non-address X-Forwarded-For values does not escape the per-IP attempt limit', async () => {
    // Sign-in has no user yet: unattributed attempts share one bucket (the per-username limit holds too).
    const { limits, settings } = runtime;
    const attempt = (xff: string) =>
      limits.checkSignIn(clientIp(new Headers({ 'x-forwarded-for': xff }), 1), `user-${randomUUID()}`, 3, 600).then(
        () => 'allowed',
        (error: unknown) => (error instanceof KeywardError ? error.code : 'other'),
      );
    expect(settings.KEYWARD_TRUSTED_PROXY_HOPS).toBe(1);
    expect(await attempt('unknown')).toBe('allowed');
    expect(await attempt('evil.example')).toBe('allowed');
    expect(await attempt('[2001:db8::1]')).toBe('allowed');
    expect(await attempt('anything-else')).toBe('rate_limited');
    expect(await attempt('1.2.3.4/32')).toBe('rate_limited');
    // A usable address has its own bucket; its mapped spelling is the same bucket.
    const v4 = freshV4();
    for (let i = 0; i < 3; i++) expect(await attempt(i % 2 ? v4 : `::ffff:${v4}`)).toBe('allowed');
    expect(await attempt(v4)).toBe('rate_limited');
  });
});
