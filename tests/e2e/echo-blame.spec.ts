import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test as base, expect } from '@playwright/test';
import { freePort, startApp, type AppServer } from '../fixtures/app-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { writeUsersFile, type TestUser } from '../fixtures/users';
import { expectNoSecrets, proxyCall, shot, signIn } from './production';

/**
 * An upstream (`alpha`) whose answers hold a secret other than its own key, on a production deployment: another
 * upstream's (`gamma`) service key, and KEYWARD_SESSION_SECRET. The client gets [REDACTED]; the Alerts page names
 * gamma's key (with the link to rotate it) and the setting, the Keys page suggests rotating gamma's key, not
 * alpha's, and the Overview lists both upstreams' keys. Each page is screenshotted into the test's output folder.
 */
interface Deployment {
  readonly app: AppServer;
  readonly admin: TestUser;
  readonly secrets: readonly string[];
  stop(): Promise<void>;
}

const test = base.extend<object, { deployment: Deployment }>({
  deployment: [
    // Playwright requires the object-destructuring form for the (unused) fixtures argument.
    async ({}, provide) => {
      const keys = { ALPHA_KEY: randomSecret('alpha'), GAMMA_KEY: randomSecret('gamma') };
      const session = testSessionSecrets();
      // The in-house API behind alpha and gamma: /v1/leak/<what> answers with the secret it names.
      const dump: Server = createServer((req, res) => {
        const what = (req.url ?? '').split('/').at(-1);
        const value = what === 'gamma' ? keys.GAMMA_KEY : what === 'session' ? session.KEYWARD_SESSION_SECRET : 'nothing';
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ env: { VALUE: value } }));
      });
      await new Promise<void>((resolve) => dump.listen(0, '127.0.0.1', resolve));
      const base = `http://127.0.0.1:${(dump.address() as AddressInfo).port}/v1/`;
      const dir = mkdtempSync(join(tmpdir(), 'keyward-echo-'));
      const routes = [{ method: 'GET', path: '/leak/:what', roles: ['user'] }];
      const config = join(dir, 'keyward.json');
      writeFileSync(
        config,
        JSON.stringify({
          upstreams: {
            alpha: { baseUrl: base, auth: { type: 'header', name: 'x-api-key', secret: { env: 'ALPHA_KEY' } }, routes },
            gamma: { baseUrl: base, auth: { type: 'header', name: 'x-api-key', secret: { env: 'GAMMA_KEY' } }, routes },
          },
        }),
      );
      const admin: TestUser = { username: 'root', password: randomSecret('pw'), roles: ['user', 'admin'] };
      const usersFile = await writeUsersFile([admin]);
      const port = await freePort();
      const app = await startApp(
        { ...session, ...keys, KEYWARD_CONFIG: config, KEYWARD_USERS_FILE: usersFile, KEYWARD_STORE_PATH: join(dir, 'store.db'), AUTH_URL: `http://localhost:${port}` },
        { port, testDefaults: false },
      );
      const stop = async () => {
        await app.stop();
        dump.closeAllConnections();
        await new Promise((resolve) => dump.close(resolve));
        rmSync(dir, { recursive: true, force: true });
        rmSync(dirname(usersFile), { recursive: true, force: true });
      };
      try {
        await provide({ app, admin, secrets: [...Object.values(keys), session.AUTH_SECRET, session.KEYWARD_SESSION_SECRET], stop });
      } finally {
        await stop();
      }
    },
    { scope: 'worker', timeout: 90_000 },
  ],
  baseURL: async ({ deployment }, provide) => provide(deployment.app.url),
});

test("an echoed secret is named on Alerts and Keys: gamma's key and the setting, not alpha's key", async ({ page, deployment }) => {
  await signIn(page, deployment.admin.username, deployment.admin.password);
  const body = (path: string) => page.evaluate(async (path) => (await fetch(path, { headers: { 'x-keyward-csrf': '1' }, cache: 'no-store' })).text(), path);
  expect(JSON.parse(await body('/api/proxy/alpha/leak/gamma'))).toEqual({ env: { VALUE: '[REDACTED]' } });
  expect(JSON.parse(await body('/api/proxy/alpha/leak/session'))).toEqual({ env: { VALUE: '[REDACTED]' } });
  expect(await proxyCall(page, '/api/proxy/gamma/leak/nothing')).toBe(200);

  // The Keys page: gamma's version was echoed (by alpha's answer); alpha's was not.
  await expect(async () => {
    await page.goto('/admin/keys');
    await expect(page.getByTestId('suggest-rotation-gamma')).toBeVisible({ timeout: 1_000 });
  }).toPass();
  const gammaKey = (await page.getByTestId('key-ring-gamma').locator('[data-testid^="key-version-"]').first().getAttribute('data-testid'))!.slice('key-version-'.length);
  const alphaKey = (await page.getByTestId('key-ring-alpha').locator('[data-testid^="key-version-"]').first().getAttribute('data-testid'))!.slice('key-version-'.length);
  await expect(page.getByTestId('suggest-rotation-gamma')).toContainText(gammaKey);
  await expect(page.getByTestId('suggest-rotation-gamma')).toContainText('by this upstream or another');
  await expect(page.getByTestId('suggest-rotation-alpha')).toHaveCount(0);
  await expectNoSecrets(page, deployment.secrets);
  await shot(page, 'echo-keys');

  // Alerts: one about gamma's key (with the link to rotate it), one about the setting; none about alpha's key.
  await page.goto('/admin/alerts');
  const echoes = page.locator('[data-testid^="alert-al_"][data-rule="scrubber_hits"]');
  await expect(echoes).toHaveCount(2);
  const aboutKey = echoes.filter({ hasText: gammaKey });
  await expect(aboutKey.getByTestId('alert-subject')).toContainText('gamma');
  await expect(aboutKey.getByTestId('alert-reason')).toContainText(`alpha echoed gamma's key ${gammaKey}`);
  await expect(aboutKey.getByTestId('alert-evidence')).toContainText('echoed by alpha');
  await expect(aboutKey.getByTestId('rotate-key-link')).toBeVisible();
  const aboutSetting = echoes.filter({ hasText: 'KEYWARD_SESSION_SECRET' });
  await expect(aboutSetting.getByTestId('alert-subject')).toContainText('setting KEYWARD_SESSION_SECRET');
  await expect(aboutSetting.getByTestId('alert-reason')).toContainText('Change KEYWARD_SESSION_SECRET');
  await expect(aboutSetting.getByTestId('rotate-key-link')).toHaveCount(0);
  await expect(page.getByTestId('alerts-table')).not.toContainText(alphaKey);
  await expect(page.getByTestId('nav-alert-count')).toHaveText('2');
  await expectNoSecrets(page, deployment.secrets);
  await shot(page, 'echo-alerts');

  // The Overview's top keys: service keys, each with its upstream.
  await page.goto('/admin');
  await expect(page.getByTestId('top-keys')).toContainText(alphaKey);
  await expect(page.getByTestId('top-keys')).toContainText(gammaKey);
  await expect(page.getByTestId('top-keys-note')).toContainText('Service keys only');
  await shot(page, 'echo-overview');
});
