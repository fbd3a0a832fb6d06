import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
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
import { expect, expectNoSecrets, shot, signIn } from './production';

/**
 * The dashboard as `npm run dev` shows it on a fresh checkout: the demo traffic (demo/traffic.ts, made the way
 * dev.ts makes it, into the store the server reads) fills the overview's charts over the last hours, the top
 * users are the demo users, and the Alerts page holds the detector's throttle of the burst and the scrubber-hit
 * alert, whose link leads to the key to rotate. No secret reaches a page.
 *
 * The README's screenshot of the overview (docs/dashboard-overview.png) is this page: `UPDATE_README_SHOT=1 npx
 * playwright test tests/e2e/dashboard-demo.spec.ts` writes it again (1280 px wide, light scheme).
 */

interface DemoDashboard {
  readonly appUrl: string;
  readonly admin: TestUser;
  readonly calls: number;
  readonly secrets: readonly string[];
}

type Seeded = { seeded: true; calls: number; alerts: number } | { seeded: false; reason: string };

const README_SHOT = join(process.cwd(), 'docs', 'dashboard-overview.png');

const test = base.extend<object, { demo: DemoDashboard }>({
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

test('the overview shows the demo traffic over the last hours (and is the README’s screenshot)', async ({ page, demo }) => {
  await signIn(page, demo.admin.username, demo.admin.password);
  await page.goto('/admin');
  await expect(page.getByTestId('stat-calls')).toHaveText(demo.calls.toLocaleString('en-US'));
  await expect(page.getByTestId('stat-errors')).not.toHaveText('0');
  await expect(page.getByTestId('chart-calls').locator('svg').first()).toBeVisible();
  for (const user of ['local:demo', 'demo:ada', 'demo:grace', 'demo:lin', 'demo:mallory']) await expect(page.getByTestId('top-users')).toContainText(user);
  // The burst's throttle (in effect for 15 minutes) and the echoed key's alert.
  await expect(page.getByTestId('nav-alert-count')).toHaveText('2');
  await expectNoSecrets(page, demo.secrets);
  // Let the charts finish drawing before the picture is taken.
  await expect(page.locator('.recharts-surface').first()).toBeVisible();
  await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
  await shot(page, 'dashboard-demo-overview');
  if (process.env.UPDATE_README_SHOT === '1') {
    mkdirSync(dirname(README_SHOT), { recursive: true });
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.screenshot({ path: README_SHOT, fullPage: true, animations: 'disabled' });
  }
});

test('Alerts shows the throttled burst and the echoed key, whose link leads to the key to rotate', async ({ page, demo }) => {
  await signIn(page, demo.admin.username, demo.admin.password);
  await page.goto('/admin/alerts');
  const throttle = page.locator('[data-testid^="alert-al_"][data-action="throttle"]');
  await expect(throttle).toHaveAttribute('data-state', 'active');
  await expect(throttle.getByTestId('alert-subject')).toContainText('demo:mallory');
  const echoed = page.locator('[data-testid^="alert-al_"][data-rule="scrubber_hits"]');
  await expect(echoed.getByTestId('alert-action')).toHaveText('alert');
  await expect(echoed.getByTestId('alert-reason')).toContainText('Rotate this key');
  const fingerprint = (await echoed.getByTestId('alert-subject').locator('code').last().textContent())!;
  expect(fingerprint).toMatch(/^[0-9a-f]{12}$/);
  await expectNoSecrets(page, demo.secrets);
  await shot(page, 'dashboard-demo-alerts');

  // An alert that took no action is dismissed, not undone: the dialog says so, and nothing about starting over.
  const echoedId = (await echoed.getAttribute('data-testid'))!.slice('alert-'.length);
  await echoed.getByTestId(`undo-${echoedId}`).click();
  const dialog = page.getByTestId(`undo-${echoedId}-dialog`);
  await expect(dialog).toBeVisible();
  await expect(dialog).toContainText('The dismissal is recorded in the audit trail with you as the actor.');
  await expect(dialog).not.toContainText('starts over');
  await shot(page, 'dashboard-demo-dismiss-dialog');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await expect(dialog).toBeHidden();

  await echoed.getByTestId('rotate-key-link').click();
  await expect(page).toHaveURL(/\/admin\/keys$/);
  await expect(page.getByTestId('suggest-rotation-demo')).toContainText(fingerprint);
  // Each echoing response counts every copy of the key the scrubber removed (body and headers).
  await expect(page.getByTestId(`key-version-${fingerprint}`).getByTestId('scrubber-hits')).toHaveText(/^[1-9]\d*suggest rotation$/);
});
