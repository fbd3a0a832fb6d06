import { test as base, expect, type Page } from '@playwright/test';
import { startProductionEnvironment, type ProductionEnvironment, type ProductionOptions } from '../fixtures/e2e-env';

/**
 * For the suites that drive Keyward's own pages on a production deployment set up as the README says
 * (pages.spec.ts, admin.spec.ts, my-usage.spec.ts), and the steps they share. `productionTest()` gives a suite its
 * `prod` fixture: an environment of its own per worker (a fixture made by another call is another fixture, so
 * no two suites share users' traffic or figures), started once and stopped after the suite's last test, with
 * `baseURL` pointing at its app.
 */
export function productionTest(options: ProductionOptions = {}) {
  return base.extend<object, { prod: ProductionEnvironment }>({
    prod: [
      // Playwright requires the object-destructuring form for the (unused) fixtures argument.
      async ({}, provide) => {
        const prod = await startProductionEnvironment(options);
        try {
          await provide(prod);
        } finally {
          await prod.stop();
        }
      },
      { scope: 'worker', timeout: 90_000 },
    ],
    baseURL: async ({ prod }, provide) => provide(prod.appUrl),
  });
}

export { expect };

/** A full-page screenshot into the test's output folder (a CI artifact). */
export async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: base.info().outputPath(`${name}.png`), fullPage: true });
}

/** No secret in the page: the DOM with its inline RSC payload, and the HTML exactly as the server sent it. */
export async function expectNoSecrets(page: Page, secrets: readonly string[]): Promise<void> {
  const html = [await page.content(), await (await page.request.get(page.url())).text()];
  for (const text of html) for (const secret of secrets) expect(text.includes(secret), 'a secret reached the page').toBe(false);
}

/** Signs a local user in through Keyward's sign-in page and waits for the signed-in home page. */
export async function signIn(page: Page, username: string, password: string): Promise<void> {
  await page.goto('/signin');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await expect(page.getByTestId('signed-in')).toBeVisible();
}

/** A proxied call from the page, as the app's own frontend makes it; returns the status. */
export function proxyCall(page: Page, path: string): Promise<number> {
  return page.evaluate(async (path) => (await fetch(path, { headers: { 'x-keyward-csrf': '1' }, cache: 'no-store' })).status, path);
}
