import { test as base, expect, type Page } from '@playwright/test';
import { startE2eEnvironment, type E2eEnvironment } from '../fixtures/e2e-env';
import { recordTraffic, type TrafficRecorder } from '../fixtures/e2e-leaks';

/**
 * `env`: one environment per worker (the suite runs with one worker): demo upstream, OIDC provider and the
 * production app, started once and stopped after the last test. `baseURL` points at the app.
 * `traffic`: records every response of the test's browser context from its first request.
 */
export const test = base.extend<{ traffic: TrafficRecorder }, { env: E2eEnvironment }>({
  env: [
    // Playwright requires the object-destructuring form for the (unused) fixtures argument.
    async ({}, provide) => {
      const env = await startE2eEnvironment();
      try {
        await provide(env);
      } finally {
        await env.stop();
      }
    },
    { scope: 'worker', timeout: 90_000 },
  ],
  baseURL: async ({ env }, provide) => provide(env.appUrl),
  traffic: async ({ context }, provide) => provide(recordTraffic(context)),
});

export { expect };

/** Signs a local user in through the UI: the demo's Sign in link, Keyward's sign-in page, the form. */
export async function signInLocal(page: Page, username: string, password: string): Promise<void> {
  await page.goto('/');
  await page.getByTestId('sign-in').click();
  await expect(page).toHaveURL(/\/signin/);
  await fillLocalSignIn(page, username, password);
  await expect(page.getByTestId('signed-in')).toContainText('Signed in as');
  expect(new URL(page.url()).pathname).toBe('/');
}

/** Fills and sends the local account form of Keyward's sign-in page. */
export async function fillLocalSignIn(page: Page, username: string, password: string): Promise<void> {
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
}

/** Signs in through the OIDC provider: its button on Keyward's sign-in page, the provider's login form and consent. */
export async function signInOidc(page: Page, env: E2eEnvironment): Promise<void> {
  await page.goto('/');
  await page.getByTestId('sign-in').click();
  await expect(page).toHaveURL(/\/signin/);
  await page.getByRole('button', { name: `Sign in with ${env.oidcProviderName}` }).click();

  // Now at the real provider (a different origin), on its login interaction.
  await expect(page).toHaveURL(new RegExp(`^${escapeRegExp(env.oidc.issuer)}/interaction/`));
  await page.locator('#idp-username').fill(env.oidc.account.username);
  await page.locator('#idp-password').fill(env.oidc.account.password);
  await page.locator('#idp-login').click();

  await expect(page.locator('#idp-consent-text')).toContainText('openid');
  await page.locator('#idp-allow').click();

  await expect(page.getByTestId('signed-in')).toContainText('Signed in as');
  expect(page.url()).toBe(`${env.appUrl}/`);
}

/** fetch() from inside the page (same origin, with the browser's cookies); returns status, type and body. */
export function browserFetch(page: Page, path: string, headers: Record<string, string> = {}) {
  return page.evaluate(
    async ({ path, headers }) => {
      const response = await fetch(path, { headers, cache: 'no-store' });
      return { status: response.status, contentType: response.headers.get('content-type'), body: await response.text() };
    },
    { path, headers },
  );
}

function escapeRegExp(value: string): string {
  return value.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
