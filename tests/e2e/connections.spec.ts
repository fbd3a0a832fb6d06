import { test as base, expect, type Page } from '@playwright/test';
import { startConnectEnvironment, type ConnectEnvironment } from '../fixtures/e2e-connect-env';
import { findLeaks, findSecretsIn, recordRequests, recordTraffic } from '../fixtures/e2e-leaks';
import { shot, signIn } from './production';

/**
 * Connected accounts in Chromium, on the production build (README "Connected accounts"): a signed-in user
 * connects Acme at a real OAuth provider (its login and consent pages), the app calls Acme's API as the user,
 * the provider ends the grant and the page asks to reconnect, the user reconnects, then disconnects (revoked at
 * the provider). Every response the browser received, every request it sent, its cookies, storage and pages
 * are searched for every token the provider issued: none may be there.
 */
const test = base.extend<object, { connect: ConnectEnvironment }>({
  connect: [
    // Playwright requires the object-destructuring form for the (unused) fixtures argument.
    async ({}, provide) => {
      const env = await startConnectEnvironment();
      try {
        await provide(env);
      } finally {
        await env.stop();
      }
    },
    { scope: 'worker', timeout: 90_000 },
  ],
  baseURL: async ({ connect }, provide) => provide(connect.appUrl),
});

function acmeRow(page: Page) {
  return page.getByTestId('connection-acme');
}

/** At the provider: sign in if it asks, then Allow. */
async function consentAtProvider(page: Page, env: ConnectEnvironment): Promise<void> {
  await expect(page).toHaveURL(
    new RegExp(`^${env.provider.issuer.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/interaction/`),
  );
  if (await page.locator('#idp-login').isVisible()) {
    await page.locator('#idp-username').fill(env.provider.username);
    await page.locator('#idp-password').fill(env.provider.password);
    await page.locator('#idp-login').click();
  }
  await page.locator('#idp-allow').click();
}

/** The page's own fetch of the Acme API through Keyward: status and body. */
function callAcme(page: Page) {
  return page.evaluate(async () => {
    const response = await fetch('/api/proxy/acme-api/me', { headers: { 'x-keyward-csrf': '1' }, cache: 'no-store' });
    return { status: response.status, body: await response.text() };
  });
}

test('connect, call, reconnect after the provider ends the grant, disconnect: no provider token ever reaches the browser', async ({
  page,
  context,
  connect: env,
}) => {
  const traffic = recordTraffic(context);
  const requests = recordRequests(context);

  await signIn(page, env.user.username, env.user.password);
  const card = page.getByTestId('connected-accounts');
  await expect(acmeRow(page).locator('.badge')).toHaveText('not connected');
  await expect(page.getByTestId('connection-github').locator('.badge')).toHaveText('not connected');
  await expect(card.getByTestId('no-connections')).toBeVisible();
  await shot(page, 'connections-empty');

  // Before connecting, a call says what is missing and where to fix it.
  const before = await callAcme(page);
  expect(before.status).toBe(403);
  expect(JSON.parse(before.body).error).toMatchObject({ code: 'connection_required', connectUrl: '/api/connect/acme' });

  // Connect: Keyward → the provider's login and consent → back home, connected.
  await acmeRow(page).getByTestId('connect').click();
  await consentAtProvider(page, env);
  await expect(page.getByTestId('connect-notice')).toHaveText(
    'Acme is connected. Its tokens stay on the server; this page never sees them.',
  );
  await expect(acmeRow(page).getByTestId('connection-status')).toHaveText('connected');
  await expect(acmeRow(page)).toContainText('read:user');
  // The callback's query is taken off the address bar.
  expect(page.url()).toBe(`${env.appUrl}/`);
  await traffic.snapshot(page, 'connected');
  await shot(page, 'connections-connected');

  const called = await callAcme(page);
  expect(called.status).toBe(200);
  expect(JSON.parse(called.body)).toEqual({ login: 'linus', tokenAccepted: true });

  // The provider ends the grant (an administrator there revokes it). Access tokens live 2 s: the next call that
  // needs a refresh is refused by the provider, and the connection needs reconnecting.
  await env.provider.revoke('acme', env.provider.issued().refreshTokens.at(-1)!);
  await expect.poll(async () => (await callAcme(page)).status, { timeout: 15_000 }).toBe(403);
  const refused = await callAcme(page);
  expect(JSON.parse(refused.body).error).toMatchObject({
    code: 'connection_required',
    connectUrl: '/api/connect/acme',
  });
  await page.reload();
  await expect(acmeRow(page).getByTestId('connection-status')).toHaveText('needs reconnecting');
  await expect(acmeRow(page).getByTestId('reconnect-hint')).toContainText('Acme stopped accepting');
  await traffic.snapshot(page, 'needs reconnect');
  await shot(page, 'connections-needs-reconnect');

  // The admin sees it on the user's page too: provider, status and scopes, never a token.
  const admin = await page.context().browser()!.newPage({ baseURL: env.appUrl });
  await signIn(admin, env.admin.username, env.admin.password);
  await admin.goto(`/admin/users/${encodeURIComponent(`local:${env.user.username}`)}`);
  await expect(admin.getByTestId('user-connection-acme')).toContainText('needs reconnecting');
  await expect(admin.getByTestId('user-connection-acme')).toContainText('read:user');
  const adminHtml = await admin.content();
  const { accessTokens, refreshTokens } = env.provider.issued();
  for (const token of [...accessTokens, ...refreshTokens]) expect(adminHtml.includes(token), 'a provider token reached the admin page').toBe(false);
  await shot(admin, 'connections-admin-user');
  await admin.close();

  // Reconnect: the provider asks again (its grant is gone), the connection is back.
  await acmeRow(page).getByTestId('reconnect').click();
  await consentAtProvider(page, env);
  await expect(acmeRow(page).getByTestId('connection-status')).toHaveText('connected');
  expect((await callAcme(page)).status).toBe(200);

  // Disconnect: confirm, revoked at the provider, gone from the page; calls need a connection again.
  const lastAccess = env.provider.issued().accessTokens.at(-1)!;
  await acmeRow(page).getByTestId('disconnect').click();
  await expect(acmeRow(page)).toContainText('Disconnect Acme?');
  await shot(page, 'connections-confirm-disconnect');
  await acmeRow(page).getByTestId('confirm-disconnect').click();
  await expect(page.getByTestId('connect-notice')).toHaveText(
    'Acme is disconnected, and its access was revoked at Acme.',
  );
  await expect(acmeRow(page).locator('.badge')).toHaveText('not connected');
  expect(await env.provider.isActive('acme', lastAccess)).toBe(false);
  expect((await callAcme(page)).status).toBe(403);

  // Not one token the provider issued (nor a client secret) in anything the browser received, kept or sent.
  const issued = env.provider.issued();
  expect(issued.accessTokens.length).toBeGreaterThanOrEqual(2);
  expect(issued.refreshTokens.length).toBeGreaterThanOrEqual(2);
  const secrets: Record<string, string> = { ...env.secrets };
  issued.accessTokens.forEach((token, i) => (secrets[`access token ${i}`] = token));
  issued.refreshTokens.forEach((token, i) => (secrets[`refresh token ${i}`] = token));
  const evidence = await traffic.collect(page);
  expect(evidence.responses.length).toBeGreaterThan(10);
  expect(findLeaks(evidence, secrets)).toEqual([]);
  const sent = (await requests.all()).map(
    (r) => [`${r.method} ${r.url}`, `${r.url}\n${JSON.stringify(r.headers)}\n${r.body}`] as const,
  );
  expect(findSecretsIn(sent, secrets)).toEqual([]);
  // The server's own output has none either.
  expect(findSecretsIn([['next start output', env.app.output()]], secrets)).toEqual([]);
});

test('a refusal at the provider comes back as a clear message on the page', async ({ page, connect: env }) => {
  await signIn(page, env.user.username, env.user.password);
  // `repo` is offered (optionalScopes) but not granted yet: the provider asks, and the user denies.
  await page.goto('/api/connect/acme?scope=repo');
  await expect(page).toHaveURL(new RegExp('/interaction/'));
  if (await page.locator('#idp-login').isVisible()) {
    await page.locator('#idp-username').fill(env.provider.username);
    await page.locator('#idp-password').fill(env.provider.password);
    await page.locator('#idp-login').click();
  }
  await page.locator('#idp-deny').click();
  await expect(page.getByTestId('connect-notice')).toHaveText('You did not allow access at Acme. Nothing was changed.');
  // The provider's own text (with markup in it) is nowhere on the page.
  expect(await page.content()).not.toContain('The user said no');
  await shot(page, 'connections-denied');

  // When the list cannot be loaded, the card says so (the store down, as the API answers it).
  await page.route('**/api/connections', (route) =>
    route.fulfill({
      status: 503,
      contentType: 'application/json',
      body: JSON.stringify({
        error: {
          code: 'store_unavailable',
          message: 'Keyward cannot reach its session store; try again shortly.',
          requestId: 'r',
        },
      }),
    }),
  );
  await page.reload();
  await expect(page.getByTestId('connections-error')).toHaveText(
    'Keyward cannot reach its session store; try again shortly.',
  );
  await expect(page.getByTestId('connect')).toHaveCount(0);
  await shot(page, 'connections-error');
});
