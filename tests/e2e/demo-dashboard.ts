import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { test as base } from '@playwright/test';
import { startDemoUpstream } from '../../demo/upstream';
import { freePort, startApp, type AppServer } from '../fixtures/app-server';
import { writeDemoConfig } from '../fixtures/e2e-env';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { writeUsersFile, type TestUser } from '../fixtures/users';

export interface DemoDashboard {
  readonly appUrl: string;
  readonly admin: TestUser;
  readonly calls: number;
  readonly secrets: readonly string[];
}

type Seeded = { seeded: true; calls: number; alerts: number } | { seeded: false; reason: string };

/**
 * `demo`: the production app over a store holding `npm run dev`'s demo traffic (demo/traffic.ts, made the way dev.ts
 * makes it, into the store the server reads), with one admin; started once per worker. `baseURL` points at the app.
 */
export const demoDashboardTest = base.extend<object, { demo: DemoDashboard }>({
  demo: [
    // Playwright requires the object-destructuring form for the (unused) fixtures argument.
    async ({}, provide) => {
      const cleanups: Array<() => unknown> = [];
      try {
        const upstreamKey = randomSecret('demo_key');
        const upstreamPort = await freePort();
        const upstream: Server = await startDemoUpstream(upstreamKey, upstreamPort, '127.0.0.1');
        cleanups.push(() => new Promise((resolve) => (upstream.closeAllConnections(), upstream.close(resolve))));
        const dir = mkdtempSync(join(tmpdir(), 'keyward-demo-dashboard-'));
        cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
        const admin: TestUser = { username: 'root', password: randomSecret('pw'), roles: ['user', 'admin'] };
        const usersFile = await writeUsersFile([admin]);
        cleanups.push(() => rmSync(dirname(usersFile), { recursive: true, force: true }));
        const vaultSecret = randomSecret('vault');
        const sessionSecrets = testSessionSecrets();
        const shared = {
          ...sessionSecrets,
          KEYWARD_VAULT_SECRET: vaultSecret,
          KEYWARD_CONFIG: writeDemoConfig(dir, upstreamPort),
          KEYWARD_STORE_PATH: join(dir, 'store.db'),
          DEMO_UPSTREAM_KEY: upstreamKey,
        };

        // As dev.ts does it, before the server starts: demo mode, development.
        const { stdout } = await promisify(execFile)(
          process.execPath,
          [join(process.cwd(), 'node_modules', 'tsx', 'dist', 'cli.mjs'), '--conditions=react-server', 'tests/fixtures/seed-demo-traffic.ts', `http://127.0.0.1:${upstreamPort}`],
          { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', NODE_ENV: 'development', KEYWARD_DEMO: 'true', KEYWARD_LOG_LEVEL: 'error', ...shared }, timeout: 60_000 },
        );
        const seeded = JSON.parse(stdout) as Seeded;
        if (!seeded.seeded) throw new Error(`no demo traffic: ${seeded.reason}`);

        const appPort = await freePort();
        const appUrl = `http://localhost:${appPort}`;
        const app: AppServer = await startApp({ ...shared, AUTH_URL: appUrl, KEYWARD_USERS_FILE: usersFile }, { port: appPort, testDefaults: false });
        cleanups.push(() => app.stop());
        await provide({ appUrl, admin, calls: seeded.calls, secrets: [upstreamKey, vaultSecret, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET] });
      } finally {
        for (const cleanup of cleanups.reverse()) await Promise.resolve(cleanup()).catch(() => {});
      }
    },
    { scope: 'worker', timeout: 120_000 },
  ],
  baseURL: async ({ demo }, provide) => provide(demo.appUrl),
});
