import { randomBytes } from 'node:crypto';
import type { Page } from '@playwright/test';
import { findLeaks, findSecretsIn, jsonKeys, type RecordedResponse } from '../fixtures/e2e-leaks';
import { browserFetch, expect, fillLocalSignIn, signInLocal, signInOidc, test } from './fixtures';

/**
 * The browser proof for "no secret ever reaches the browser": one browser context walks every page and flow
 * of the app (signed out, Auth.js's pages, a failed and a good local sign-in, every demo button including the
 * upstream that echoes its key and the route that times out, the own-key flow, both session endpoints, sign
 * out, an OIDC sign-in and a call). Everything it received (every response's URL, status, headers and body)
 * and kept (cookies of every origin, local/session storage, IndexedDB, the HTML after each step) is searched
 * for this run's random canary secrets, raw, URL-encoded and base64-encoded; so is the server's log.
 */

const CSRF = { 'x-keyward-csrf': '1' };

test('leak walk: every page and flow in one browser, no canary secret in anything received, kept or logged', async ({ page, env, traffic }) => {
  test.setTimeout(90_000);
  const ownKey = `demo-user-${randomBytes(18).toString('base64url')}`;
  const tokensBefore = env.oidc.issuedTokens();
  const show = (id: string) => page.getByTestId(id);
  const step = (label: string) => traffic.snapshot(page, label);

  // Signed out: the home page, the API's answers without a session, Auth.js's own pages, a page that is not there.
  await page.goto('/');
  await expect(page.getByText('You are not signed in.')).toBeVisible();
  await step('home, signed out');
  expect((await browserFetch(page, '/api/session')).status).toBe(401);
  expect((await browserFetch(page, '/api/proxy/demo/hello', CSRF)).status).toBe(401);
  expect((await browserFetch(page, '/api/keys/demo-own', CSRF)).status).toBe(401);
  for (const path of ['/api/auth/providers', '/api/auth/csrf', '/api/auth/session', '/api/auth/signout', '/api/auth/error?error=AccessDenied']) {
    const response = await page.goto(path);
    expect(response?.status(), path).toBeLessThan(500);
    await step(`signed out: ${path}`);
  }
  expect((await page.goto('/no-such-page'))?.status()).toBe(404);
  await step('404 page');

  // Keyward's sign-in page (Auth.js's own redirects there), then a failed sign-in.
  await page.goto('/api/auth/signin');
  await expect(page).toHaveURL(/\/signin(\?|$)/);
  // The page fetches its CSRF token for the OIDC button as it starts: leaving before that answer is read would
  // discard its body (Chromium drops a page's resources when it navigates away), and every body must be searched.
  await page.waitForLoadState('networkidle');
  await page.goto('/');
  await show('sign-in').click();
  await expect(page).toHaveURL(/\/signin/);
  await step('sign-in page');
  await fillLocalSignIn(page, env.localUser.username, `${env.localUser.password}-wrong`);
  await expect(page.getByTestId('sign-in-error')).toHaveText('Wrong username or password.');
  expect((await page.context().cookies()).map((c) => c.name)).not.toContain('__Host-keyward.session');
  await step('failed sign-in');

  // Sign in, then every button.
  await signInLocal(page, env.localUser.username, env.localUser.password);
  await step('signed in (local)');
  for (const id of ['call-hello', 'call-item', 'call-echo']) {
    await show(id).click();
    await expect(show('status')).toHaveText('200');
    await step(id);
  }
  await show('call-events').click();
  await expect(show('events')).toContainText('"n":5');
  await expect(show('call-events')).toBeEnabled(); // the stream has ended
  await step('call-events');

  await show('call-leaky').click();
  await expect(show('status')).toHaveText('401');
  await expect(show('body')).toContainText('[REDACTED]');
  await step('call-leaky');

  const slowStarted = Date.now();
  await show('call-slow').click();
  await expect(show('status')).toHaveText('504');
  const slowMs = Date.now() - slowStarted;
  expect(JSON.parse((await show('body').textContent()) ?? '')).toMatchObject({ error: { code: 'upstream_timeout' } });
  // The route's own timeoutMs (1500), not the upstream's 10 s.
  expect(slowMs).toBeGreaterThanOrEqual(1_400);
  expect(slowMs).toBeLessThan(8_000);
  await step('call-slow');

  // The own-key flow: store, call with it, delete, call without it.
  await show('own-key-input').fill(ownKey);
  await show('own-key-save').click();
  await expect(show('own-key-message')).toHaveText('Stored. Keyward will never show it again.');
  await expect(show('own-key-input')).toHaveValue('');
  await step('own key stored');
  await show('call-own').click();
  await expect(show('status')).toHaveText('200');
  expect(JSON.parse((await show('body').textContent()) ?? '')).toMatchObject({ key: 'yours' });
  await step('call-own with my key');
  await show('own-key-delete').click();
  await expect(show('own-key-message')).toHaveText('Deleted.');
  await expect(show('own-key-demo-own').getByText('no key', { exact: true })).toBeVisible();
  await show('call-own').click();
  await expect(show('status')).toHaveText('403');
  await step('own key deleted, call-own refused');

  await checkSessionEndpoints(page);
  await signOut(page);
  await page.reload();
  await expect(page.getByText('You are not signed in.')).toBeVisible();
  await step('home, signed out again');

  // OIDC: sign in at the real provider, one call, the session endpoints, sign out.
  await signInOidc(page, env);
  await step('signed in (OIDC)');
  await show('call-item').click();
  await expect(show('status')).toHaveText('200');
  await step('OIDC call-item');
  await checkSessionEndpoints(page);
  await signOut(page);

  const evidence = await traffic.collect(page);

  // The walk really covered it all: every page and call was recorded, with a readable body.
  const seen = evidence.responses.map((r) => `${r.status} ${new URL(r.url).pathname}`);
  for (const expected of [
    '200 /',
    '404 /no-such-page',
    '302 /api/auth/signin',
    '200 /signin',
    '200 /api/auth/providers',
    '200 /api/auth/signout',
    '401 /api/session',
    '200 /api/session',
    '200 /api/auth/session',
    '200 /api/proxy/demo/hello',
    '200 /api/proxy/demo/items/7',
    '200 /api/proxy/demo/echo',
    '200 /api/proxy/demo/events',
    '401 /api/proxy/demo/leaky',
    '504 /api/proxy/demo/slow',
    '201 /api/keys/demo-own',
    '204 /api/keys/demo-own',
    '200 /api/proxy/demo-own/whoami',
    '403 /api/proxy/demo-own/whoami',
  ]) {
    expect(seen, `recorded ${expected}`).toContain(expected);
  }
  expect(evidence.responses.some((r) => r.url.startsWith(`${env.oidc.issuer}/interaction/`)), 'the provider pages').toBe(true);
  expect(
    evidence.responses.some((r) => r.url.endsWith('/api/auth/callback/credentials') && (r.headers.location ?? '').includes('error=CredentialsSignin')),
    'the failed sign-in',
  ).toBe(true);
  expect(only(evidence.responses, '/api/proxy/demo/events').body).toContain('"n":5');
  const unreadable = evidence.responses.filter((r) => r.bodyUnavailable !== undefined && !(r.status >= 300 && r.status < 400) && r.status !== 204);
  expect(unreadable.map((r) => `${r.status} ${r.url}: ${r.bodyUnavailable}`)).toEqual([]);

  // /leaky: the upstream's 401 echoed the key in its body, an x-debug-key header and www-authenticate.
  const leaky = only(evidence.responses, '/api/proxy/demo/leaky');
  expect(leaky.body).toContain('[REDACTED]');
  expect(leaky.body).not.toContain(env.secrets.DEMO_UPSTREAM_KEY);
  expect(JSON.parse(leaky.body)).toEqual({
    error: { message: 'Invalid API key provided: [REDACTED]. Check your key.', key: '[REDACTED]' },
  });
  expect(Object.keys(leaky.headers)).not.toContain('x-debug-key');
  expect(Object.keys(leaky.headers)).not.toContain('www-authenticate');
  const slow = only(evidence.responses, '/api/proxy/demo/slow');
  expect(JSON.parse(slow.body)).toMatchObject({ error: { code: 'upstream_timeout' } });

  // No canary anywhere the browser looked or kept, at any step.
  const tokensAfter = env.oidc.issuedTokens();
  expect(tokensAfter.accessTokens.length).toBeGreaterThan(tokensBefore.accessTokens.length);
  const canaries: Record<string, string> = {
    ...env.secrets,
    LOCAL_USER_PASSWORD: env.localUser.password,
    OIDC_USER_PASSWORD: env.oidc.account.password,
    OWN_KEY: ownKey,
    ...Object.fromEntries(tokensAfter.accessTokens.map((t, i) => [`OIDC_ACCESS_TOKEN_${i}`, t])),
    ...Object.fromEntries(tokensAfter.refreshTokens.map((t, i) => [`OIDC_REFRESH_TOKEN_${i}`, t])),
    ...Object.fromEntries(tokensAfter.idTokens.map((t, i) => [`OIDC_ID_TOKEN_${i}`, t])),
  };
  expect(Object.keys(env.secrets).sort()).toEqual([
    'AUTH_SECRET',
    'DEMO_UPSTREAM_KEY',
    'KEYWARD_OIDC_CLIENT_SECRET',
    'KEYWARD_SESSION_SECRET',
    'KEYWARD_VAULT_SECRET',
  ]);
  expect(evidence.snapshots?.length).toBeGreaterThanOrEqual(20);
  expect(findLeaks(evidence, canaries)).toEqual([]);

  // The server's log saw the walk (the leaky and slow calls are logged) and holds no canary either.
  await expect.poll(() => env.app.output()).toMatch(/"route":"\/slow".*"status":504/);
  const log = env.app.output();
  expect(log).toMatch(/"route":"\/leaky".*"status":401/);
  expect(findSecretsIn([['server log', log]], canaries)).toEqual([]);
});

/** Both session endpoints answer for the signed-in user, without any token-like field. */
async function checkSessionEndpoints(page: Page) {
  for (const path of ['/api/session', '/api/auth/session']) {
    const response = await browserFetch(page, path);
    expect(response.status, path).toBe(200);
    expect(jsonKeys(JSON.parse(response.body)).filter((key) => /token|secret|password|api[-_]?key|credential/.test(key)), path).toEqual([]);
  }
}

async function signOut(page: Page) {
  await page.getByTestId('sign-out').click();
  await expect(page.getByText('You are not signed in.')).toBeVisible();
  expect((await page.context().cookies()).map((c) => c.name)).not.toContain('__Host-keyward.session');
}

/** The one recorded response for a path (fails when there is none or several). */
function only(responses: readonly RecordedResponse[], path: string): RecordedResponse {
  const found = responses.filter((r) => new URL(r.url).pathname === path);
  expect(found.map((r) => r.url), `exactly one response for ${path}`).toHaveLength(1);
  return found[0]!;
}
