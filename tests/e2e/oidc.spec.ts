import { browserFetch, expect, signInOidc, test } from './fixtures';
import type { E2eEnvironment } from '../fixtures/e2e-env';

test('OIDC: sign in at the real provider with login and consent, roles from its claim, call the upstream', async ({ page, env }) => {
  const before = env.oidc.interactions();
  const issuedBefore = env.oidc.issuedTokens().accessTokens.length;

  await signInOidc(page, env);

  // The provider's own login and consent pages were served, and its token endpoint issued tokens.
  const after = env.oidc.interactions();
  expect(after.login ?? 0).toBe((before.login ?? 0) + 1);
  expect(after.consent ?? 0).toBe((before.consent ?? 0) + 1);
  expect(env.oidc.issuedTokens().accessTokens.length).toBe(issuedBefore + 1);

  // Name and roles come from the provider's ID token claims (roles claim: ['user', 'sso-analyst']);
  // the default role setting is only 'user', so 'sso-analyst' proves the claim was read.
  await expect(page.getByTestId('signed-in')).toContainText(`Signed in as ${env.oidc.account.name}`);
  await expect(page.getByTestId('signed-in')).toContainText('roles: user, sso-analyst');
  const session = await browserFetch(page, '/api/session');
  expect(session.status).toBe(200);
  expect(JSON.parse(session.body)).toMatchObject({ roles: ['user', 'sso-analyst'], user: { name: env.oidc.account.name } });
  expect(JSON.parse(session.body).user.id).toMatch(/^oidc:acct-/);

  await page.getByTestId('call-hello').click();
  await expect(page.getByTestId('status')).toHaveText('200');
  await expect(page.getByTestId('body')).toContainText('Hello from the demo upstream.');

  // A route that needs the 'user' role (granted by the claim).
  await page.getByTestId('call-item').click();
  await expect(page.locator('h2', { hasText: 'GET /items/7' })).toBeVisible();
  await expect(page.getByTestId('status')).toHaveText('200');
  expect(JSON.parse((await page.getByTestId('body').textContent()) ?? '')).toEqual({ id: '7', name: 'Item 7', price: 42 });
});

test('OIDC: an account whose sub is not ASCII is refused at sign-in (no admin could act on it), and the page says so', async ({ page, env }) => {
  await page.goto('/');
  await page.getByTestId('sign-in').click();
  await page.getByRole('button', { name: `Sign in with ${env.oidcProviderName}` }).click();
  await page.locator('#idp-username').fill(env.oidc.nonAsciiAccount.username);
  await page.locator('#idp-password').fill(env.oidc.nonAsciiAccount.password);
  await page.locator('#idp-login').click();
  await page.locator('#idp-allow').click();
  // Back from the provider, refused by Keyward: its own sign-in page, with the reason, and no session.
  await expect(page).toHaveURL(/\/signin\?error=AccessDenied/);
  await expect(page.getByTestId('sign-in-error')).toContainText('cannot be used here');
  expect((await browserFetch(page, '/api/session')).status).toBe(401);
  await page.goto('/');
  await expect(page.getByText('You are not signed in.')).toBeVisible();
});

for (const [who, pick] of [
  ['whose verified email is at a domain KEYWARD_OIDC_EMAIL_DOMAINS does not list', (env: E2eEnvironment) => env.oidc.outsiderAccount],
  ['whose email at a listed domain the provider has not verified', (env: E2eEnvironment) => env.oidc.unverifiedAccount],
] as const) {
  test(`OIDC: an account ${who} is refused at sign-in, and the page says so`, async ({ page, env }) => {
    const account = pick(env);
    await page.goto('/signin');
    await page.getByRole('button', { name: `Sign in with ${env.oidcProviderName}` }).click();
    await page.locator('#idp-username').fill(account.username);
    await page.locator('#idp-password').fill(account.password);
    await page.locator('#idp-login').click();
    await page.locator('#idp-allow').click();
    await expect(page).toHaveURL(/\/signin\?error=AccessDenied/);
    await expect(page.getByTestId('sign-in-error')).toContainText('cannot be used here');
    expect((await browserFetch(page, '/api/session')).status).toBe(401);
    expect((await page.context().cookies()).map((c) => c.name)).not.toContain('__Host-keyward.session');
  });
}

test('OIDC: a wrong password at the provider does not come back signed in', async ({ page, env }) => {
  await page.goto('/');
  await page.getByTestId('sign-in').click();
  await page.getByRole('button', { name: `Sign in with ${env.oidcProviderName}` }).click();
  await page.locator('#idp-username').fill(env.oidc.account.username);
  await page.locator('#idp-password').fill('not-the-password');
  await page.locator('#idp-login').click();
  await expect(page.locator('#idp-error')).toBeVisible();
  await page.goto('/');
  await expect(page.getByText('You are not signed in.')).toBeVisible();
  expect((await browserFetch(page, '/api/session')).status).toBe(401);
});

test('OIDC: back from the provider without the flow cookies (too slow, cleared, or started on another address), the page says to start again', async ({ page, env }) => {
  await page.goto('/signin');
  await page.getByRole('button', { name: `Sign in with ${env.oidcProviderName}` }).click();
  await expect(page.locator('#idp-username')).toBeVisible();
  // What 15 minutes at the provider, cookies cleared meanwhile, or a sign-in started on another host name leave
  // on the callback's host: none of the flow's cookies.
  for (const name of ['__Host-keyward.pkce', '__Host-keyward.state', '__Host-keyward.nonce']) await page.context().clearCookies({ name });
  await page.locator('#idp-username').fill(env.oidc.account.username);
  await page.locator('#idp-password').fill(env.oidc.account.password);
  await page.locator('#idp-login').click();
  await page.locator('#idp-allow').click();
  await expect(page).toHaveURL(/\/signin\?error=SignInExpired$/);
  await expect(page.getByTestId('sign-in-error')).toHaveText('The sign-in took too long, or was started on another address of this site. Start again.');
  expect((await browserFetch(page, '/api/session')).status).toBe(401);
  // Starting again works (the provider may remember the login, and the consent, from the first time).
  await page.getByRole('button', { name: `Sign in with ${env.oidcProviderName}` }).click();
  const signedIn = page.getByTestId('signed-in');
  for (const step of ['#idp-login', '#idp-allow']) {
    await expect(page.locator(step).or(page.locator('#idp-allow')).or(signedIn).first()).toBeVisible();
    if (step === '#idp-login' && (await page.locator(step).isVisible())) {
      await page.locator('#idp-username').fill(env.oidc.account.username);
      await page.locator('#idp-password').fill(env.oidc.account.password);
      await page.locator(step).click();
    } else if (step === '#idp-allow' && (await page.locator(step).isVisible())) await page.locator(step).click();
  }
  await expect(signedIn).toContainText('Signed in as');
});
