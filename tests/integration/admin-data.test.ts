import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { createHarness, type Harness } from './harness';

/**
 * What the admin pages read (app/admin/admin-data.ts, app/admin/alerts/alerts-data.ts), from a real runtime: the
 * pages take theirs from `@/keyward`, which here hands them the test's.
 */
let current: Runtime;
vi.mock('@/keyward', () => ({ keyward: { getRuntime: () => current } }));

const { loadOverview } = await import('../../app/admin/admin-data');
const { activeAlertCount } = await import('../../app/admin/alerts/alerts-data');

describe("the Overview's top keys", () => {
  let harness: Harness;
  beforeAll(async () => {
    harness = await createHarness({
      secretEnv: { KEYWARD_VAULT_SECRET: randomSecret('vault') },
      upstreams: (origin) => [
        defineUpstream('byok', { baseUrl: `${origin}/v1/`, auth: { type: 'header', name: 'x-api-key', secret: { user: 'key' } }, routes: [{ method: 'GET', path: '/items/:id' }] }),
      ],
    });
    current = harness.runtime;
  });
  afterAll(() => harness?.close());

  it("lists service keys only: users' own keys (a row per key) neither show nor push a service key out of the list", async () => {
    for (let i = 0; i < 12; i++) {
      const userId = `local:own${i}`;
      await harness.runtime.userKeys!.put('byok', { userId }, randomSecret(`own${i}`));
      const cookie = await sessionCookie(harness.env.AUTH_SECRET!, { sub: userId, roles: ['user'] });
      for (let n = 0; n < 2; n++) expect((await harness.call(['items', String(n)], { upstream: 'byok', cookie })).response.status).toBe(200);
    }
    expect((await harness.call(['items', '1'])).response.status).toBe(200);
    const plan = harness.runtime.registry.get('echo')!.credential;
    const echoKey = plan.source === 'static' ? plan.credential.fingerprint : '';

    const overview = await loadOverview('hour', undefined);
    expect(overview.topKeys.map((row) => [row.upstream, row.label])).toEqual([['echo', echoKey]]);
    expect((await loadOverview('hour', 'byok')).topKeys).toEqual([]);
    // The users' calls are still in the totals and the top users.
    expect(overview.total.calls).toBe(25);
    expect(overview.topUsers.some((row) => row.label === 'local:own0')).toBe(true);
  });
});

describe("the nav's alert count", () => {
  let clock = Date.now();
  beforeAll(() => {
    current = createRuntime({
      env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory', SVC_KEY: randomSecret('svc') },
      upstreams: [
        defineUpstream('svc', { baseUrl: 'http://127.0.0.1:9/', auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } }, routes: [{ method: 'GET', path: '/a' }] }),
      ],
      now: () => clock,
    });
  });

  const throttle = { limit: 1, windowSeconds: 60, forMinutes: 1 };
  const decision = (userId: string, action: 'throttle' | 'revoke') =>
    ({ rule: action === 'revoke' ? 'decoy' : 'calls', action, reason: `${userId}: test.`, subject: { userId, upstream: 'svc' }, evidence: {} }) as const;

  it('counts a suspension in force however many alerts came after it, and says N+ whenever it did not read them all', async () => {
    const bob = await current.alerts.apply(decision('local:bob', 'revoke'), throttle);
    for (let i = 0; i < 5; i++) await current.alerts.apply(decision(`local:t${i}`, 'throttle'), throttle);
    clock += 2 * 60_000;
    expect(await activeAlertCount()).toBe('1');

    for (let i = 5; i < 200; i++) await current.alerts.apply(decision(`local:t${i}`, 'throttle'), throttle);
    clock += 2 * 60_000;
    // The newest 200 are expired throttles: bob's revocation and suspension is still in effect, and older alerts
    // were not read.
    expect(await activeAlertCount()).toBe('1+');

    // Undone, it is no longer counted; the scan still did not reach the end.
    await current.alerts.undo(bob.id, 'local:root');
    expect(await activeAlertCount()).toBe('0+');
  });
});
