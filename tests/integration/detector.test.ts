import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleAlerts, handleAlertUndo } from '../../lib/core/api/alerts';
import { defineUpstream } from '../../lib/core/config/load';
import type { Alert } from '../../lib/core/detect/alerts';
import { verifyWebhookSignature } from '../../lib/core/detect/webhook';
import { randomSecret } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { APP_ORIGIN, createHarness, expectKeywardError, type Harness } from './harness';
import { RedisStore } from '../../lib/store/redis';
import { suspensionKey } from '../../lib/core/detect/marks';
import { REDIS_URL } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { setup } from '../fixtures/detector';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../lib/store/sqlite';
import type { Store } from '../../lib/store/types';

/**
 * The detector's actions through the real pipeline and admin API: a burst is throttled on the caller's next
 * calls (429 `throttled`), an admin lists and undoes it, the webhook receives a signed alert on a real loopback
 * receiver, and the last step suspends the user's own key. Real time, so the rules are set low for a test burst.
 */
let harness: Harness;
const webhookSecret = randomSecret('whk');
const hooks: Array<{ body: string; signature: string | null }> = [];
const receiver = createServer((request, response) => {
  const chunks: Buffer[] = [];
  request.on('data', (chunk: Buffer) => chunks.push(chunk));
  request.on('end', () => {
    hooks.push({ body: Buffer.concat(chunks).toString('utf8'), signature: (request.headers['keyward-signature'] as string | undefined) ?? null });
    response.end();
  });
});
let adminCookie: string;

beforeAll(async () => {
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const port = (receiver.address() as AddressInfo).port;
  harness = await createHarness({
    secretEnv: { ALERT_WEBHOOK_SECRET: webhookSecret, KEYWARD_VAULT_SECRET: randomSecret('vault') },
    upstreams: (origin) => [
      defineUpstream('byok', {
        baseUrl: `${origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { user: 'key' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
    ],
    detector: {
      calls: { factor: 5, minPerMinute: 6 },
      throttle: { limit: 2, windowSeconds: 60, forMinutes: 5 },
      webhook: { url: `http://127.0.0.1:${port}/keyward-alerts`, secret: { env: 'ALERT_WEBHOOK_SECRET' } },
    },
  });
  adminCookie = await sessionCookie(harness.env.AUTH_SECRET!, { sub: 'local:root', roles: ['admin'] });
});

afterAll(async () => {
  await harness?.close();
  await new Promise<void>((resolve) => receiver.close(() => resolve()));
});

function admin(path: string, method = 'GET'): Request {
  const headers: Record<string, string> = { cookie: adminCookie, 'x-keyward-csrf': '1' };
  if (method !== 'GET') headers.origin = APP_ORIGIN;
  return new Request(`${APP_ORIGIN}${path}`, { method, headers });
}

async function alerts(): Promise<Alert[]> {
  const response = await handleAlerts(admin('/api/admin/alerts'), harness.runtime);
  expect(response.status).toBe(200);
  return ((await response.json()) as { alerts: Alert[] }).alerts;
}

describe('anomaly detection through the pipeline', () => {
  it('throttles a burst on the next calls, shows it to admins only, and an undo lifts it', async () => {
    const cookie = await sessionCookie(harness.env.AUTH_SECRET!, { sub: 'local:burst', roles: ['user'] });
    const statuses: number[] = [];
    let throttled = null;
    for (let i = 0; i < 20 && !throttled; i++) {
      const result = await harness.call(['items', String(i)], { cookie });
      statuses.push(result.response.status);
      if (result.response.status === 429) throttled = result;
      await harness.runtime.detector.settled();
    }
    expect(throttled, `statuses: ${statuses.join(',')}`).not.toBeNull();
    expectKeywardError(throttled!, 429, 'throttled', harness);
    expect(Number(throttled!.response.headers.get('retry-after'))).toBeGreaterThan(0);
    // Allowed calls after the mark: the throttle's own limit (2), then refusals.
    expect(statuses.filter((status) => status === 200).length).toBeLessThanOrEqual(6 + 1 + 2);

    const list = await alerts();
    const alert = list.find((a) => a.subject.userId === 'local:burst')!;
    expect(alert).toMatchObject({ rule: 'calls', action: 'throttle', state: 'active', subject: { upstream: 'echo' } });
    const listed = JSON.stringify(list);
    for (const secret of harness.secrets) expect(listed.includes(secret)).toBe(false);

    // Not for a user without the admin role; undo needs the CSRF header and an allowed Origin, as every POST.
    const user = new Request(`${APP_ORIGIN}/api/admin/alerts`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    expect((await handleAlerts(user, harness.runtime)).status).toBe(403);
    const crossSite = new Request(`${APP_ORIGIN}/api/admin/alerts/${alert.id}/undo`, {
      method: 'POST',
      headers: { cookie: adminCookie, 'x-keyward-csrf': '1', origin: 'https://evil.example' },
    });
    expect((await handleAlertUndo(crossSite, alert.id, harness.runtime)).status).toBe(403);
    expect((await handleAlertUndo(admin('/api/admin/alerts/al_nope/undo', 'POST'), 'al_nope', harness.runtime)).status).toBe(404);

    // Counted for Prometheus: the step, and the calls it refused.
    const scraped = await harness.runtime.metrics.scrape();
    expect(scraped).toMatch(/^keyward_detector_actions_total\{rule="calls",action="throttle"\} 1$/m);
    expect(scraped).toMatch(/^keyward_limit_refusals_total\{upstream="echo",kind="throttled"\} [1-9]/m);

    const undo = await handleAlertUndo(admin(`/api/admin/alerts/${alert.id}/undo`, 'POST'), alert.id, harness.runtime);
    expect(undo.status).toBe(200);
    expect(((await undo.json()) as { alert: Alert }).alert).toMatchObject({ state: 'undone', undoneBy: 'local:root' });
    expect((await harness.call(['items', 'after-undo'], { cookie })).response.status).toBe(200);
  });

  it('sends each alert to the webhook, signed: the throttle, and the test upstream echoing its key', async () => {
    const deadline = Date.now() + 10_000;
    while (hooks.length < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    for (const { body, signature } of hooks) expect(verifyWebhookSignature(webhookSecret, signature, body, Date.now())).toBe(true);
    const sent = hooks.map(({ body }) => JSON.parse(body) as { type: string; alert: Alert });
    expect(sent.every((hook) => hook.type === 'keyward.alert')).toBe(true);
    expect(sent.map((hook) => [hook.alert.rule, hook.alert.action]).sort()).toEqual([
      ['calls', 'throttle'],
      ['scrubber_hits', 'alert'],
    ]);
    expect(sent.find((hook) => hook.alert.rule === 'calls')!.alert.subject).toEqual({ userId: 'local:burst', upstream: 'echo' });
    // The echo upstream sends the request's headers back: the scrubber caught the key, and the alert names its fingerprint.
    expect(sent.find((hook) => hook.alert.rule === 'scrubber_hits')!.alert.subject).toMatchObject({ upstream: 'echo', fingerprint: expect.stringMatching(/^[0-9a-f]{12}$/) });
    for (const { body } of hooks) for (const secret of harness.secrets) expect(body.includes(secret)).toBe(false);
  });

  it('suspends the user’s own keys at the last step, until an admin undoes it', async () => {
    const userKeys = harness.runtime.userKeys!;
    await userKeys.put('byok', { userId: 'local:carol' }, randomSecret('own'));
    harness.runtime.detector.decoyHit({
      kind: 'route',
      decoyId: null,
      where: 'route',
      userId: 'local:carol',
      sessionId: 'carol-session',
      ip: '203.0.113.9',
      upstream: 'echo',
      route: '/admin/export',
      requestId: 'req-decoy',
    });
    await harness.runtime.detector.settled();
    const alert = (await alerts()).find((a) => a.subject.userId === 'local:carol')!;
    expect(alert).toMatchObject({ rule: 'decoy', action: 'revoke' });
    // Signed in again after the revocation: the session is good, the own key is not.
    await new Promise((resolve) => setTimeout(resolve, 5));
    const cookie = await sessionCookie(harness.env.AUTH_SECRET!, { sub: 'local:carol', roles: ['user'], authMs: Date.now() });
    expectKeywardError(await harness.call(['items', '1'], { upstream: 'byok', cookie }), 403, 'key_suspended', harness);
    await expect(userKeys.put('byok', { userId: 'local:carol' }, randomSecret('own'))).rejects.toMatchObject({ code: 'key_suspended' });

    expect((await handleAlertUndo(admin(`/api/admin/alerts/${alert.id}/undo`, 'POST'), alert.id, harness.runtime)).status).toBe(200);
    expect((await harness.call(['items', '1'], { upstream: 'byok', cookie })).response.status).toBe(200);
  });

  it("an admin cannot undo an alert about themselves (a hijacked admin account would lift the detector's answer to it): another admin can", async () => {
    // An admin calling as a user: their own burst is throttled, as anyone's.
    const cookie = await sessionCookie(harness.env.AUTH_SECRET!, { sub: 'local:ops', roles: ['admin', 'user'] });
    let throttled = false;
    for (let i = 0; i < 20 && !throttled; i++) {
      throttled = (await harness.call(['items', String(i)], { cookie })).response.status === 429;
      await harness.runtime.detector.settled();
    }
    expect(throttled).toBe(true);
    const alert = (await alerts()).find((a) => a.subject.userId === 'local:ops')!;
    expect(alert).toMatchObject({ rule: 'calls', action: 'throttle', state: 'active' });

    const self = new Request(`${APP_ORIGIN}/api/admin/alerts/${alert.id}/undo`, { method: 'POST', headers: { cookie, 'x-keyward-csrf': '1', origin: APP_ORIGIN } });
    const refused = await handleAlertUndo(self, alert.id, harness.runtime);
    expect(refused.status).toBe(403);
    const { error } = (await refused.json()) as { error: { code: string; message: string } };
    expect(error.code).toBe('forbidden');
    expect(error.message).toMatch(/another admin/);
    // Nothing lifted: the alert is active, the throttle still refuses, and the detector was not told to start over.
    expect((await alerts()).find((a) => a.id === alert.id)).toMatchObject({ state: 'active' });
    expect((await harness.call(['items', 'after-refusal'], { cookie })).response.status).toBe(429);
    expect(await harness.runtime.alerts.forgivenAt('local:ops')).toBeNull();

    const undo = await handleAlertUndo(admin(`/api/admin/alerts/${alert.id}/undo`, 'POST'), alert.id, harness.runtime);
    expect(undo.status).toBe(200);
    expect(((await undo.json()) as { alert: Alert }).alert).toMatchObject({ state: 'undone', undoneBy: 'local:root' });
    expect((await harness.call(['items', 'after-undo'], { cookie })).response.status).toBe(200);
  });
});

describe('alerts on Redis (what two instances share)', () => {
  const prefix = `keyward-test-detect-${randomSecret('p').slice(-10)}:`;
  const stores: RedisStore[] = [];
  afterAll(async () => {
    await Promise.all(stores.map((store) => store.close()));
    await deleteKeysUnder(REDIS_URL, prefix);
  });

  it('an action written by one instance is listed and undone through another, and the undo reaches the first', async () => {
    const redis = () => {
      const store = new RedisStore(REDIS_URL, { prefix });
      stores.push(store);
      return store;
    };
    const a = setup({}, redis);
    const b = setup({}, redis);
    // Real time: Redis expires keys on its own clock.
    a.clock.now = b.clock.now = Date.now();
    a.detector.decoyHit({ kind: 'credential', decoyId: 'dk_2', where: 'query:key', userId: 'local:eve', sessionId: 's', ip: '203.0.113.5', upstream: 'openai', route: null, requestId: 'r' });
    await a.detector.settled();
    const [alert] = (await b.alerts.list({ limit: 10 })).alerts;
    expect(alert).toMatchObject({ rule: 'decoy', action: 'revoke', subject: { userId: 'local:eve' }, state: 'active' });
    const session = { userId: 'local:eve', sessionId: 'x', authTime: a.clock.now - 1000 };
    expect(await a.revocations.isRevoked(session)).toBe(true);
    expect(await a.store.get(suspensionKey('local:eve'))).toBe(alert!.id);

    b.clock.now += 1000;
    await b.alerts.undo(alert!.id, 'local:root');
    expect(await a.revocations.isRevoked(session)).toBe(false);
    expect(await a.store.get(suspensionKey('local:eve'))).toBeNull();
    expect((await a.alerts.list({ limit: 10 })).alerts[0]).toMatchObject({ state: 'undone', undoneBy: 'local:root' });
    expect(await a.alerts.forgivenAt('local:eve')).toBe(b.clock.now);
  });
});

describe('the alert list pages (the Alerts page and GET /api/admin/alerts read it 25 at a time)', () => {
  const prefix = `keyward-test-detect-pages-${randomSecret('p').slice(-10)}:`;
  const opened: Store[] = [];
  afterAll(async () => {
    await Promise.all(opened.map((store) => store.close()));
    await deleteKeysUnder(REDIS_URL, prefix);
  });
  const stores: Array<[string, (now: () => number) => Store]> = [
    ['SQLite', (now) => new SqliteStore(join(mkdtempSync(join(tmpdir(), 'keyward-alert-pages-')), 'keyward.db'), now)],
    ['Redis', () => new RedisStore(REDIS_URL, { prefix })],
  ];

  it.each(stores)(
    '%s: 60 alerts come back newest first, each once, and the last page says there is no more',
    async (_name, make) => {
      const { alerts, clock } = setup({}, (now) => {
        const store = make(now);
        opened.push(store);
        return store;
      });
      clock.now = Date.now(); // Redis expires keys on its own clock
      const throttle = { limit: 2, windowSeconds: 60, forMinutes: 5 };
      const written: string[] = [];
      for (let i = 0; i < 60; i++) {
        clock.now += 1_000;
        const subject = { userId: `local:user${i}` };
        written.push(
          (
            await alerts.apply(
              { rule: 'calls', action: 'alert', reason: `alert ${i}`, subject, evidence: { i } },
              throttle,
            )
          ).id,
        );
      }
      const pages: string[][] = [];
      let cursor: string | undefined;
      for (let page = 0; page < 5; page++) {
        const listed = await alerts.list({ limit: 25, ...(cursor ? { cursor } : {}) });
        pages.push(listed.alerts.map((alert) => alert.id));
        if (listed.cursor === null) break;
        cursor = listed.cursor;
      }
      expect(pages.map((page) => page.length)).toEqual([25, 25, 10]);
      expect(pages.flat()).toEqual([...written].reverse());
    },
  );
});
