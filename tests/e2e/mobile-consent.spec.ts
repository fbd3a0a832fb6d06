import { createHash, randomBytes } from 'node:crypto';
import type { Page } from '@playwright/test';
import { MOBILE_APP_LINK, MOBILE_REDIRECT_URI } from '../fixtures/e2e-env';
import { expect, signInLocal, test } from './fixtures';

/**
 * A native app's sign-in in the system browser (README "Mobile apps"): its redirect URI is a private-use scheme,
 * which any app on the device could claim (RFC 8252 §8.6), so the signed-in user is asked on Keyward's consent
 * page before the app gets a code. The browser cannot open `com.example.keyward:` here, so the redirect to the
 * app is read from the consent form's response rather than followed. The page is screenshotted into the test's
 * output folder.
 */

function authorizePath(state: string, redirectUri = MOBILE_REDIRECT_URI): { path: string; verifier: string } {
  const verifier = randomBytes(32).toString('base64url');
  const query = new URLSearchParams({
    response_type: 'code',
    client_id: 'com.example.keyward',
    redirect_uri: redirectUri,
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256',
    state,
  });
  return { path: `/api/session/mobile/authorize?${query}`, verifier };
}

/** Clicks one of the consent page's buttons and returns where the answer sends the browser (the app). */
async function answer(page: Page, button: 'Allow' | 'Deny'): Promise<URL> {
  const posted = page.waitForResponse(
    (response) => response.url().endsWith('/api/session/mobile/authorize') && response.request().method() === 'POST',
  );
  await page.getByRole('button', { name: button, exact: true }).click();
  const response = await posted;
  expect(response.status()).toBe(303);
  return new URL(response.headers()['location']!);
}

test('mobile sign-in: the consent page names the app and the user; Allow hands the app a code it can exchange', async ({
  page,
  env,
}) => {
  await signInLocal(page, env.localUser.username, env.localUser.password);
  const { path, verifier } = authorizePath('st-allow');
  await page.goto(path);

  await expect(page).toHaveURL(/\/authorize\?/);
  await expect(page.getByRole('heading', { name: 'Sign in to an app?' })).toBeVisible();
  await expect(page.locator('.consent-app')).toHaveText('com.example.keyward');
  await expect(page.locator('.consent-target')).toHaveText(MOBILE_REDIRECT_URI);
  await expect(page.getByText(env.localUser.username, { exact: true })).toBeVisible();
  await page.screenshot({ path: test.info().outputPath('mobile-consent.png'), fullPage: true });

  const callback = await answer(page, 'Allow');
  expect(`${callback.protocol}${callback.pathname}`).toBe(MOBILE_REDIRECT_URI);
  expect(callback.searchParams.get('state')).toBe('st-allow');
  expect(callback.searchParams.get('iss')).toBe(env.appUrl);
  const code = callback.searchParams.get('code');
  expect(code).toMatch(/^kwc_/);

  // The app's half: the code and its verifier at the token endpoint.
  const tokens = await page.request.post('/api/session/token', {
    form: {
      grant_type: 'authorization_code',
      code: code!,
      code_verifier: verifier,
      redirect_uri: MOBILE_REDIRECT_URI,
      client_id: 'com.example.keyward',
    },
  });
  expect(tokens.status()).toBe(200);
  expect(await tokens.json()).toMatchObject({ token_type: 'Bearer', access_token: expect.any(String) });
});

test('mobile sign-in: Deny sends access_denied back to the app, and no code', async ({ page, env }) => {
  await signInLocal(page, env.localUser.username, env.localUser.password);
  await page.goto(authorizePath('st-deny').path);
  const callback = await answer(page, 'Deny');
  expect(callback.searchParams.get('error')).toBe('access_denied');
  expect(callback.searchParams.get('state')).toBe('st-deny');
  expect(callback.searchParams.has('code')).toBe(false);
});

test('mobile sign-in: signed out, the browser signs in first and then sees the consent page', async ({ page, env }) => {
  await page.goto(authorizePath('st-later').path);
  await expect(page).toHaveURL(/\/signin/);
  await page.getByLabel('Username').fill(env.localUser.username);
  await page.getByLabel('Password').fill(env.localUser.password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await expect(page.getByRole('heading', { name: 'Sign in to an app?' })).toBeVisible();
});

test('mobile sign-in with an app link: signed out, the browser signs in and is sent to the app with one code it can exchange', async ({ page, env }) => {
  const { path, verifier } = authorizePath('st-link-app', MOBILE_APP_LINK);
  await page.goto(path);
  await expect(page).toHaveURL(/\/signin/);
  // The app link's host does not exist here: the navigation to it is caught, not followed.
  const toApp = page.waitForRequest((request) => request.url().startsWith(MOBILE_APP_LINK));
  await page.route(`${new URL(MOBILE_APP_LINK).origin}/**`, (route) => route.fulfill({ status: 200, body: 'the app' }));
  await page.getByLabel('Username').fill(env.localUser.username);
  await page.getByLabel('Password').fill(env.localUser.password);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  const callback = new URL((await toApp).url());
  expect(callback.searchParams.get('state')).toBe('st-link-app');
  const tokens = await page.request.post('/api/session/token', {
    form: { grant_type: 'authorization_code', code: callback.searchParams.get('code')!, code_verifier: verifier, redirect_uri: MOBILE_APP_LINK, client_id: 'com.example.keyward' },
  });
  expect(tokens.status()).toBe(200);
});

test('mobile sign-in: signed out, the browser signs in through the OIDC provider (another site) and comes back to the consent page', async ({
  page,
  env,
}) => {
  const { path, verifier } = authorizePath('st-oidc');
  await page.goto(path);
  await expect(page).toHaveURL(/\/signin/);
  await page.getByRole('button', { name: `Sign in with ${env.oidcProviderName}` }).click();
  await expect(page).toHaveURL(new RegExp(`^${env.oidc.issuer.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/interaction/`));
  await page.locator('#idp-username').fill(env.oidc.account.username);
  await page.locator('#idp-password').fill(env.oidc.account.password);
  await page.locator('#idp-login').click();
  await page.locator('#idp-allow').click();
  // Back from another site: the browser sends no Strict cookie and says cross-site, so Keyward's own page takes it
  // the last step (same-origin), and only because this browser started the request (a cookie of the start).
  await expect(page.getByRole('heading', { name: 'Sign in to an app?' })).toBeVisible();
  await expect(page.getByText(env.oidc.account.username)).toBeVisible();
  const callback = await answer(page, 'Allow');
  expect(callback.searchParams.get('state')).toBe('st-oidc');
  const tokens = await page.request.post('/api/session/token', {
    form: { grant_type: 'authorization_code', code: callback.searchParams.get('code')!, code_verifier: verifier, redirect_uri: MOBILE_REDIRECT_URI, client_id: 'com.example.keyward' },
  });
  expect(tokens.status()).toBe(200);
});

test('a web page cannot start a mobile sign-in for the user, even after the app started one in this browser', async ({ page, env }) => {
  // The app starts one (signed out: off to the sign-in page, which leaves the start's cookie).
  await page.goto(authorizePath('st-app').path);
  await expect(page).toHaveURL(/\/signin/);
  await signInLocal(page, env.localUser.username, env.localUser.password);
  // Another site links to the authorization endpoint with a request of its own: refused, not redirected.
  const other = `http://127.0.0.1:${new URL(env.appUrl).port}`;
  const { path } = authorizePath('st-cross');
  await page.goto(`${other}/signin`);
  await page.evaluate((href) => {
    const link = document.createElement('a');
    link.href = href;
    link.textContent = 'go';
    document.body.append(link);
  }, `${env.appUrl}${path}`);
  const [response] = await Promise.all([page.waitForResponse((r) => r.url().includes('/api/session/mobile/authorize')), page.getByText('go', { exact: true }).click()]);
  expect(response.status()).toBe(403);
  expect(await response.json()).toMatchObject({ error: 'access_denied' });
});

test('the consent page explains a request it cannot use instead of offering to allow it', async ({ page, env }) => {
  await signInLocal(page, env.localUser.username, env.localUser.password);
  await page.goto(`/authorize?${new URLSearchParams({ redirect_uri: 'com.evil.app:/cb', code_challenge_method: 'S256' })}`);
  await expect(page.getByRole('heading', { name: 'Nothing to allow' })).toBeVisible();
  await expect(page.locator('.alert.error')).toContainText('redirect_uri is missing or not registered');
  await expect(page.getByRole('button', { name: 'Allow' })).toHaveCount(0);
});

test('a link to the sign-in page cannot carry a mobile sign-in of its own through it (the page goes there same-origin)', async ({ page, env }) => {
  // Another site's link: the sign-in page with a callbackUrl of the authorization endpoint and parameters of its
  // own. Once the user signs in, the page navigates there itself, which the browser calls same-origin.
  const { path } = authorizePath('st-link');
  await page.goto(`/signin?callbackUrl=${encodeURIComponent(path)}`);
  await page.getByLabel('Username').fill(env.localUser.username);
  await page.getByLabel('Password').fill(env.localUser.password);
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().includes('/api/session/mobile/authorize') && r.request().method() === 'GET'),
    page.getByRole('button', { name: 'Sign in', exact: true }).click(),
  ]);
  expect(response.status()).toBe(403);
  await expect(page.locator('body')).toContainText('access_denied');
  await expect(page.getByRole('heading', { name: 'Sign in to an app?' })).toHaveCount(0);
});
