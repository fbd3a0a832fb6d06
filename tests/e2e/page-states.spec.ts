import type { Page } from '@playwright/test';
import { expect, productionTest, proxyCall, signIn } from './production';

/**
 * The states of Keyward's pages that only show when something goes wrong: a request that fails on the network
 * (page.route aborts it, as a dropped connection does), an identity provider that is down (the deployment's
 * OIDC issuer is a loopback port nothing listens on), a session that ended while its cookie was still there.
 * Each is said in words, with the way forward; times are in the one format of every page, whatever the
 * browser's zone; and every page has a title of its own. Screenshots at desktop and phone widths.
 */
const test = productionTest({ unreachableOidc: true });

const SESSION_COOKIE = '__Host-keyward.session';
const KEYS = '**/api/keys/demo-own';

/** The page at 1280×800 and 390×844, into the test's output folder. */
async function shots(page: Page, name: string): Promise<void> {
  for (const [width, height] of [
    [1280, 800],
    [390, 844],
  ] as const) {
    await page.setViewportSize({ width, height });
    await page.screenshot({ path: test.info().outputPath(`${name}-${width}.png`), fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

test('sign-out that fails on the network says so, leaves the button usable, and works on retry', async ({ page, prod }) => {
  await signIn(page, prod.user.username, prod.user.password);
  await page.route('**/api/auth/signout', (route) => route.abort('internetdisconnected'));
  const button = page.getByTestId('sign-out');
  await button.click();
  await expect(page.getByTestId('sign-out-error')).toHaveText('Sign-out failed: you are still signed in. Check your connection and try again.');
  await expect(button).toBeEnabled();
  await expect(button).toHaveText('Sign out');
  expect((await page.request.get('/api/session')).status()).toBe(200);
  await shots(page, 'sign-out-failed');

  await page.unroute('**/api/auth/signout');
  await button.click();
  await expect(page.getByTestId('signed-out')).toBeVisible();
  expect((await page.request.get('/api/session')).status()).toBe(401);
});

test('your keys: no action offered while loading, a failed load has a retry, failed store and delete are said', async ({ page, prod }) => {
  await signIn(page, prod.user.username, prod.user.password);
  const row = page.getByTestId('own-key-demo-own');
  await expect(row.getByText('no key')).toBeVisible();

  // While the key is being read, the row offers neither Store nor Replace: a key may well be stored.
  let release: () => void = () => {};
  const held = new Promise<void>((resolve) => (release = resolve));
  await page.route(KEYS, async (route) => {
    await held;
    await route.continue();
  });
  await page.reload();
  await expect(row.locator('.skeleton').first()).toBeVisible();
  await expect(row.getByRole('button')).toHaveCount(0);
  await expect(row.getByRole('textbox')).toHaveCount(0);
  await shots(page, 'own-key-loading');
  release();
  await expect(row.getByText('no key')).toBeVisible();
  await page.unroute(KEYS);

  // Loading fails on the network: an error in words and a retry, not a skeleton forever.
  await page.route(KEYS, (route) => route.abort('internetdisconnected'));
  await page.reload();
  await expect(row.getByTestId('own-key-load-error')).toHaveText('Keyward could not be reached to read your key. Check your connection and try again.');
  await expect(row.locator('.skeleton')).toHaveCount(0);
  await expect(row.getByRole('button', { name: /Store|Replace/ })).toHaveCount(0);
  await shots(page, 'own-key-load-failed');
  await page.unroute(KEYS);
  await row.getByRole('button', { name: 'Try again' }).click();
  await expect(row.getByText('no key')).toBeVisible();

  // Storing fails on the network: said, and the key stays in the field for another try.
  const ownKey = `demo-user-${crypto.randomUUID()}`;
  const field = row.getByLabel('Your key for demo-own');
  await field.fill(ownKey);
  await page.route(KEYS, (route) => (route.request().method() === 'PUT' ? route.abort('internetdisconnected') : route.continue()));
  await row.getByRole('button', { name: 'Store' }).click();
  await expect(row.locator('.alert.error')).toHaveText(
    'Your key was not stored: Keyward could not be reached. It is still in the field; check your connection and try again.',
  );
  await expect(field).toHaveValue(ownKey);
  await expect(row.getByText('no key')).toBeVisible();
  await shots(page, 'own-key-store-failed');
  await page.unroute(KEYS);
  await row.getByRole('button', { name: 'Store' }).click();
  await expect(row.getByText('key stored')).toBeVisible();
  await expect(field).toHaveValue('');

  // Deleting fails on the network: said; the key is still stored.
  await page.route(KEYS, (route) => (route.request().method() === 'DELETE' ? route.abort('internetdisconnected') : route.continue()));
  await row.getByRole('button', { name: 'Delete' }).click();
  await expect(row.locator('.alert.error')).toHaveText('Your key was not deleted: Keyward could not be reached. Check your connection and try again.');
  await expect(row.getByText('key stored')).toBeVisible();
  await shots(page, 'own-key-delete-failed');
  await page.unroute(KEYS);
  await row.getByRole('button', { name: 'Delete' }).click();
  await expect(row.getByText('no key')).toBeVisible();
});

test('an identity provider that cannot be reached is said as such, not as a server misconfiguration', async ({ page, prod }) => {
  await page.goto('/signin');
  const sso = page.getByRole('button', { name: 'Sign in with Company SSO' });
  await expect(sso).toBeEnabled();
  await sso.click();
  await expect(page).toHaveURL(/\/signin\?error=ProviderUnreachable$/);
  await expect(page.getByTestId('sign-in-error')).toHaveText('The sign-in provider cannot be reached right now. Try again later.');
  await shots(page, 'sign-in-provider-unreachable');
  // The operator's log says what happened.
  expect(prod.app.output()).toMatch(/ECONNREFUSED|fetch failed/);
  // Local accounts still sign in.
  await signIn(page, prod.user.username, prod.user.password);
});

test('a session that ended sends to sign-in with the reason; a first visit shows none', async ({ page, prod, browser }) => {
  const fresh = await browser.newPage({ baseURL: prod.appUrl });
  await fresh.goto('/usage');
  await expect(fresh).toHaveURL(/\/signin\?callbackUrl=%2Fusage$/);
  await expect(fresh.getByRole('heading', { name: 'Sign in' })).toBeVisible();
  await expect(fresh.getByTestId('session-ended')).toHaveCount(0);
  await fresh.close();

  await signIn(page, prod.user.username, prod.user.password);
  const cookie = (await page.context().cookies()).find((c) => c.name === SESSION_COOKIE);
  expect(cookie).toBeDefined();
  await page.getByTestId('sign-out').click();
  await expect(page.getByTestId('signed-out')).toBeVisible();
  // The session is over on the server; its cookie is still in the browser (as after a revocation or "sign out everywhere").
  await page.context().addCookies([cookie!]);
  await page.goto('/');
  await expect(page.getByTestId('signed-out').getByTestId('session-ended')).toHaveText('Your session ended. Sign in again to continue.');
  await page.goto('/usage');
  await expect(page).toHaveURL(/\/signin\?callbackUrl=%2Fusage$/);
  await expect(page.getByTestId('session-ended')).toHaveText('Your session ended. Sign in again to continue.');
  await expect(page.getByTestId('sign-in-error')).toHaveCount(0);
  await shots(page, 'sign-in-session-ended');
  await page.getByLabel('Username').fill(prod.user.username);
  await page.getByLabel('Password').fill(prod.user.password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await expect(page).toHaveURL(/\/usage$/);
});

test.describe('in another time zone', () => {
  test.use({ timezoneId: 'America/Los_Angeles', locale: 'en-US' });

  test('own-key dates and audit times are in the one UTC format of every page', async ({ page, prod }) => {
    await signIn(page, prod.admin.username, prod.admin.password);
    const row = page.getByTestId('own-key-demo-own');
    await row.getByLabel('Your key for demo-own').fill(`demo-user-${crypto.randomUUID()}`);
    await row.getByRole('button', { name: 'Store' }).click();
    await expect(row.getByText('key stored')).toBeVisible();
    await expect(row.getByTestId('own-key-info')).toHaveText(/ · added \d{4}-\d\d-\d\d \d\d:\d\d UTC · last used never$/);
    expect(await proxyCall(page, '/api/proxy/demo-own/whoami')).toBe(200);
    await page.reload();
    await expect(row.getByTestId('own-key-info')).toHaveText(/ · added \d{4}-\d\d-\d\d \d\d:\d\d UTC · last used \d{4}-\d\d-\d\d \d\d:\d\d UTC$/);
    await shots(page, 'home-times-utc');
    await row.getByRole('button', { name: 'Delete' }).click();
    await expect(row.getByText('no key')).toBeVisible();

    await page.goto('/admin/audit');
    const first = page.getByTestId('audit-record').first();
    await expect(first.getByTestId('audit-time')).toHaveText(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/);
    await shots(page, 'audit-times-utc');
  });
});

test('every page has a title of its own', async ({ page, prod }) => {
  await page.goto('/');
  await expect(page).toHaveTitle('Home · Keyward');
  await page.goto('/signin');
  await expect(page).toHaveTitle('Sign in · Keyward');
  await page.goto('/no-such-page');
  await expect(page).toHaveTitle('Not found · Keyward');

  await signIn(page, prod.user.username, prod.user.password);
  await expect(page).toHaveTitle('Home · Keyward');
  await page.goto('/usage');
  await expect(page).toHaveTitle('My usage · Keyward');
  await page.goto('/admin');
  await expect(page.getByTestId('admin-forbidden')).toBeVisible();
  await expect(page).toHaveTitle('Forbidden · Keyward');

  await page.context().clearCookies();
  await signIn(page, prod.admin.username, prod.admin.password);
  for (const [path, title] of [
    ['/admin', 'Overview'],
    ['/admin/keys', 'Keys'],
    ['/admin/users', 'Users'],
    ['/admin/audit', 'Audit'],
    ['/admin/alerts', 'Alerts'],
    [`/admin/users/${encodeURIComponent(`local:${prod.user.username}`)}`, `User local:${prod.user.username}`],
  ] as const) {
    await page.goto(path);
    await expect(page, path).toHaveTitle(`${title} · Keyward`);
  }
});
