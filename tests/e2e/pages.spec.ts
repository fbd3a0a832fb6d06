import { expect, expectNoSecrets, productionTest, shot, signIn } from './production';

/**
 * Keyward's own pages on a production deployment set up as the README says (AUTH_URL, secrets, users file,
 * config; no demo opt-in): the home page signed out and in, the sign-in page and its errors, the user's own
 * keys, the admin card, sign-out. Each state is screenshotted into the test's output folder (a CI artifact),
 * and no secret or stored key appears in any page.
 */
const test = productionTest();

test('signed out: the home page offers sign-in and shows no demo', async ({ page, prod }) => {
  await page.goto('/');
  await expect(page.getByTestId('signed-out')).toBeVisible();
  const html = await page.content();
  expect(html).not.toContain('keyward-demo');
  expect(html).not.toContain('demo-user-');
  expect(html).not.toMatch(/Keyward demo/);
  await shot(page, 'home-signed-out');
  await page.getByTestId('sign-in').click();
  await expect(page).toHaveURL(/\/signin$/);
  await expect(page.getByRole('heading', { name: 'Sign in' })).toBeVisible();
  await shot(page, 'sign-in');
  // Auth.js's own sign-in URL lands on Keyward's page too.
  await page.goto('/api/auth/signin');
  await expect(page).toHaveURL(/\/signin/);
  await expectNoSecrets(page, prod.secrets);
});

test('sign-in: a wrong password is said in words, on the same page, with no session', async ({ page, prod }) => {
  await page.goto('/signin');
  await page.getByLabel('Username').fill(prod.user.username);
  await page.getByLabel('Password').fill(`${prod.user.password}-wrong`);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await expect(page.getByTestId('sign-in-error')).toHaveText('Wrong username or password.');
  expect((await page.context().cookies()).map((c) => c.name)).not.toContain('__Host-keyward.session');
  await shot(page, 'sign-in-wrong-password');
});

test('signed in: who, own keys stored write-only, no admin card for a user, sign out', async ({ page, prod }) => {
  await signIn(page, prod.user.username, prod.user.password);
  await expect(page.getByTestId('signed-in')).toHaveText('Signed in as alice');
  await expect(page.getByTestId('admin-links')).toHaveCount(0);
  // In the format of every other page: "2026-12-06 16:20 UTC".
  await expect(page.getByTestId('session-ends')).toHaveText(/^Session ends \d{4}-\d\d-\d\d \d\d:\d\d UTC$/);
  const row = page.getByTestId('own-key-demo-own');
  await expect(row.getByText('no key')).toBeVisible();
  await shot(page, 'home-signed-in');

  const ownKey = `demo-user-${crypto.randomUUID()}`;
  await row.getByLabel('Your key for demo-own').fill(ownKey);
  await row.getByRole('button', { name: 'Store' }).click();
  await expect(row.getByText('key stored')).toBeVisible();
  await expect(row).toContainText(`Ends in …${ownKey.slice(-4)}`);
  await shot(page, 'home-own-key-stored');
  await page.reload();
  await expect(page.getByTestId('own-key-demo-own').getByText('key stored')).toBeVisible();
  await expectNoSecrets(page, [...prod.secrets, ownKey]);

  await page.getByTestId('own-key-demo-own').getByRole('button', { name: 'Delete' }).click();
  await expect(page.getByTestId('own-key-demo-own').getByText('no key')).toBeVisible();

  await page.getByTestId('sign-out').click();
  await expect(page.getByTestId('signed-out')).toBeVisible();
  expect((await page.request.get('/api/session')).status()).toBe(401);
});

test('an own key the page cannot read for another reason than "none stored" is said as an error, not as no key', async ({ page, prod }) => {
  await signIn(page, prod.user.username, prod.user.password);
  await expect(page.getByTestId('own-key-demo-own').getByText('no key')).toBeVisible();
  const REFUSED = 'The request failed the cross-site request forgery check: The Origin header names a site that is not allowed to call.';
  // A 403 other than `credential_missing`: here `csrf_failed`, which this correctly set-up server never answers
  // its own page, so the browser is handed that documented answer instead (the only stand-in here). The page
  // must say it, not show an empty slot that invites storing the key again.
  await page.route('**/api/keys/demo-own', (route) =>
    route.request().method() === 'GET'
      ? route.fulfill({
          status: 403,
          contentType: 'application/json',
          body: JSON.stringify({ error: { code: 'csrf_failed', message: REFUSED } }),
        })
      : route.continue(),
  );
  await page.reload();
  const row = page.getByTestId('own-key-demo-own');
  await expect(row.getByTestId('own-key-load-error')).toHaveText(REFUSED);
  await expect(row.getByText('no key')).toHaveCount(0);
  await shot(page, 'home-own-key-unreadable');
});

test('an admin sees the administration card', async ({ page, prod }) => {
  await signIn(page, prod.admin.username, prod.admin.password);
  await expect(page.getByTestId('admin-links')).toBeVisible();
  await shot(page, 'home-admin');
  await expectNoSecrets(page, prod.secrets);
});

test('over plain HTTP on a real host name, the sign-in page says why signing in cannot work, not "wrong password"', async ({ prod, playwright }) => {
  // Chromium resolving app.test to the server: a deployment reached by name over http, as a misconfigured one is.
  const browser = await playwright.chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--host-resolver-rules=MAP app.test 127.0.0.1'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`http://app.test:${new URL(prod.appUrl).port}/signin`);
    await expect(page.getByTestId('sign-in-insecure')).toContainText('served over plain HTTP');
    await page.getByLabel('Username').fill(prod.user.username);
    await page.getByLabel('Password').fill(prod.user.password);
    await shot(page, 'signin-plain-http');
    // The password is not sent in the clear for a sign-in that cannot work: the button stays disabled.
    await expect(page.getByRole('button', { name: 'Sign in', exact: true })).toBeDisabled();
    await expect(page.getByTestId('sign-in-error')).toHaveCount(0);
  } finally {
    await browser.close();
  }
});

test('the sign-in page sends a signed-in user home, and never back to another site', async ({ page, prod }) => {
  await signIn(page, prod.user.username, prod.user.password);
  await page.goto('/signin?callbackUrl=https%3A%2F%2Fevil.example%2F');
  await expect(page).toHaveURL(`${prod.appUrl}/`);
});

test("an error code the page does not know, an Object.prototype name among them, is the generic message", async ({ page }) => {
  for (const code of ['nonsense', 'constructor', '__proto__', 'toString']) {
    const response = await page.goto(`/signin?error=${code}`);
    expect(response?.status(), code).toBe(200);
    await expect(page.getByTestId('sign-in-error')).toHaveText('Sign-in failed. Try again.');
    await expect(page.getByLabel('Username')).toBeVisible();
  }
});

test('a page that does not exist: 404 in the pages\' own card, with the way home', async ({ page }) => {
  const response = await page.goto('/no-such-page');
  expect(response?.status()).toBe(404);
  const card = page.getByTestId('not-found');
  await expect(card).toContainText('404');
  await expect(card.getByRole('link', { name: 'Back home' })).toHaveAttribute('href', '/');
  await shot(page, 'not-found');
  await card.getByRole('link', { name: 'Back home' }).click();
  await expect(page.getByTestId('signed-out')).toBeVisible();
});
