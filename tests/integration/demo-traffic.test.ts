import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BURST_USER, DEMO_CALLERS, DEMO_HOURS, MAX_DEMO_CALLS, seedDemoTraffic } from '../../demo/traffic';
import { startDemoUpstream } from '../../demo/upstream';
import { createLogger } from '../../lib/core/log/logger';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { freePort } from '../fixtures/app-server';
import { writeDemoConfig } from '../fixtures/e2e-env';
import { writeUsersFile } from '../fixtures/users';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';

/**
 * `npm run dev`'s demo traffic (demo/traffic.ts) against the real demo upstream and an embedded SQLite store, read
 * back afterwards by another runtime on the same file, as `next dev` reads it: the calls are in the usage
 * aggregates, spread over the last hours; the burst left an active throttle (enforced on the next calls) and the
 * echoing route a scrubber-hit alert; nothing is made outside demo mode, against another upstream, into a store
 * the server cannot see, or a second time.
 */
const HOUR_MS = 3_600_000;
let upstream: Server;
let upstreamOrigin: string;
let dir: string;
let env: Record<string, string>;
const opened: Runtime[] = [];

beforeAll(async () => {
  const port = await freePort();
  const key = randomSecret('demo_key');
  upstream = await startDemoUpstream(key, port, '127.0.0.1');
  upstreamOrigin = `http://127.0.0.1:${port}`;
  dir = mkdtempSync(join(tmpdir(), 'keyward-demo-traffic-'));
  env = {
    ...testSessionSecrets(),
    KEYWARD_VAULT_SECRET: randomSecret('vault'),
    DEMO_UPSTREAM_KEY: key,
    KEYWARD_CONFIG: writeDemoConfig(dir, port),
    KEYWARD_STORE_PATH: join(dir, 'store.db'),
    KEYWARD_DEMO: 'true',
    NODE_ENV: 'development',
    // As `npm run dev` has it (scripts/dev-setup.ts): the demo account in a users file, which every call of
    // local:demo is checked against.
    KEYWARD_USERS_FILE: await writeUsersFile([{ username: 'demo', password: randomSecret('pw'), roles: ['user'] }]),
  };
});

afterAll(async () => {
  for (const runtime of opened) {
    await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
    await runtime.store.close().catch(() => {});
  }
  upstream?.closeAllConnections();
  await new Promise<void>((resolve) => (upstream ? upstream.close(() => resolve()) : resolve()));
  rmSync(dir, { recursive: true, force: true });
});

/** The server's view of the store: a runtime of its own on the same SQLite file, with the real clock. */
function serverRuntime(): Runtime {
  const runtime = createRuntime({ env, logger: createLogger({ level: 'silent' }) });
  opened.push(runtime);
  return runtime;
}

describe('demo traffic for npm run dev', () => {
  it('makes nothing outside demo mode, against another upstream, or into a store the server cannot see', async () => {
    const refusals = [
      { env: { ...env, NODE_ENV: 'production' }, reason: /never in production/ },
      { env: { ...env, KEYWARD_DEMO: 'false' }, reason: /only in demo mode/ },
      { env: { ...env, KEYWARD_DEMO_TRAFFIC: 'false' }, reason: /turned off/ },
      { env: { ...env, KEYWARD_STORE: 'memory' }, reason: /memory/ },
    ];
    for (const { env: refusedEnv, reason } of refusals) {
      const result = await seedDemoTraffic({ env: refusedEnv, upstreamOrigin });
      expect(result.seeded).toBe(false);
      expect(!result.seeded && result.reason).toMatch(reason);
    }
    const elsewhere = await seedDemoTraffic({ env, upstreamOrigin: 'http://127.0.0.1:1' });
    expect(elsewhere).toMatchObject({ seeded: false, reason: expect.stringMatching(/not the local demo upstream/) });

    const usage = serverRuntime().usage;
    const now = Date.now();
    expect((await usage.series({ period: 'hour', fromMs: now - 23 * HOUR_MS, toMs: now })).total.calls).toBe(0);
  });

  it('records a few hundred calls over the last hours, with a throttle the server enforces and a scrubber-hit alert', async () => {
    const now = Date.now();
    const result = await seedDemoTraffic({ env, upstreamOrigin, now });
    expect(result.seeded).toBe(true);
    if (!result.seeded) return;
    expect(result.calls).toBeGreaterThan(200);
    expect(result.calls).toBeLessThanOrEqual(MAX_DEMO_CALLS);
    // Real answers of the real pipeline: successes, contract refusals, the echoing route's 401, the throttle's 429s
    // and the route timeout's 504s.
    expect(result.statuses['200']).toBeGreaterThan(result.calls / 2);
    expect(Object.keys(result.statuses).sort()).toEqual(['200', '400', '401', '429', '504']);

    const runtime = serverRuntime();
    const hours = await runtime.usage.series({ period: 'hour', fromMs: now - 23 * HOUR_MS, toMs: now });
    expect(hours.total.calls).toBe(result.calls);
    expect(hours.total.errors).toBe(result.statuses['504']);
    // Spread over the hours it was planned for, not all in the current one.
    expect(hours.points.filter((point) => point.calls > 0).length).toBeGreaterThanOrEqual(DEMO_HOURS);
    expect(hours.points.filter((point) => Date.parse(point.at) < now - DEMO_HOURS * HOUR_MS - HOUR_MS && point.calls > 0)).toEqual([]);
    const users = await runtime.usage.top({ period: 'hour', fromMs: now - 23 * HOUR_MS, toMs: now, by: 'user', limit: 10 });
    expect(users.map((row) => row.user).sort()).toEqual(DEMO_CALLERS.map((caller) => caller.userId).sort());

    const { alerts } = await runtime.alerts.list({ limit: 10 });
    const throttle = alerts.find((alert) => alert.action === 'throttle');
    expect(throttle).toMatchObject({ rule: 'calls', state: 'active', subject: { userId: BURST_USER, upstream: 'demo' } });
    expect(Date.parse(throttle!.expiresAt!)).toBeGreaterThan(Date.now());
    const echoed = alerts.find((alert) => alert.rule === 'scrubber_hits');
    expect(echoed).toMatchObject({ action: 'alert', state: 'active', subject: { upstream: 'demo', fingerprint: expect.stringMatching(/^[0-9a-f]{12}$/) } });
    expect(echoed!.reason).toMatch(/Rotate this key/);
    expect(JSON.stringify(alerts)).not.toContain(env.DEMO_UPSTREAM_KEY);

    // The server enforces the throttle: the burst user's calls are refused once its tighter limit is used up.
    const cookie = await sessionCookie(env.AUTH_SECRET!, { sub: BURST_USER, roles: ['user'] });
    let refused: Response | null = null;
    for (let i = 0; i < 20 && !refused; i++) {
      const request = new Request(`http://localhost:3000/api/proxy/demo/hello`, { headers: { cookie, 'x-keyward-csrf': '1' } });
      const response = await handleProxy(request, { upstream: 'demo', path: ['hello'] }, runtime);
      if (response.status === 429) refused = response;
      else await response.arrayBuffer();
    }
    expect(refused).not.toBeNull();
    expect(((await refused!.json()) as { error: { code: string } }).error.code).toBe('throttled');
  });

  it('does not add more on the next start', async () => {
    expect(await seedDemoTraffic({ env, upstreamOrigin })).toEqual({ seeded: false, reason: 'the last 24 hours already have calls' });
  });
});
