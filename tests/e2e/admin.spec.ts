import { expect, expectNoSecrets, productionTest, proxyCall, shot, signIn } from './production';

/**
 * The admin dashboard (/admin, /admin/keys) on a production deployment: known traffic through the proxy shows up
 * in the overview's figures and the key page's counts, a user without the admin role gets the 403 page, a
 * signed-out visitor the sign-in page, and no secret reaches any of these pages. Each state is screenshotted
 * into the test's output folder (a CI artifact).
 */
const test = productionTest();

const OK_CALLS = 5;
const ERROR_CALLS = 2;

test('signed out: the dashboard sends you to sign in', async ({ page }) => {
  await page.goto('/admin');
  await expect(page).toHaveURL(/\/signin\?callbackUrl=%2Fadmin$/);
  await page.goto('/admin/keys');
  await expect(page).toHaveURL(/\/signin\?callbackUrl=%2Fadmin%2Fkeys$/);
});

test('a user without the admin role gets the 403 page and no figures', async ({ page, prod }) => {
  await signIn(page, prod.user.username, prod.user.password);
  for (const path of ['/admin', '/admin/keys']) {
    await page.goto(path);
    await expect(page.getByTestId('admin-forbidden')).toContainText('Admins only');
    await expect(page.getByTestId('usage-summary')).toHaveCount(0);
    await expect(page.locator('[data-testid^="key-ring-"]')).toHaveCount(0);
    await expectNoSecrets(page, prod.secrets);
  }
  await shot(page, 'admin-forbidden');
});

test('an admin sees the traffic just made, by period and upstream, and the key that served it', async ({ page, prod }) => {
  test.setTimeout(90_000);
  await signIn(page, prod.admin.username, prod.admin.password);

  // Before any call: the empty state.
  await page.goto('/admin');
  await expect(page.getByTestId('stat-calls')).toHaveText('0');
  await expect(page.getByTestId('usage-empty')).toBeVisible();
  await shot(page, 'admin-overview-empty');

  // Known traffic: successful calls, and calls the upstream never answers (Keyward's 504 after the route's timeout).
  for (let i = 0; i < OK_CALLS; i++) expect(await proxyCall(page, '/api/proxy/demo/hello')).toBe(200);
  for (let i = 0; i < ERROR_CALLS; i++) expect(await proxyCall(page, '/api/proxy/demo/slow')).toBe(504);
  const total = OK_CALLS + ERROR_CALLS;

  // The audit writer adds calls to the aggregates in batches, after each response: reload until they are there.
  await page.goto('/admin');
  await expect(async () => {
    await page.reload();
    await expect(page.getByTestId('stat-calls')).toHaveText(String(total), { timeout: 1_000 });
  }).toPass({ timeout: 20_000 });
  await expect(page.getByTestId('stat-errors')).toHaveText(String(ERROR_CALLS));
  await expect(page.getByTestId('usage-summary')).toContainText(`${total} calls · ${ERROR_CALLS} errors (${Math.round((ERROR_CALLS / total) * 1000) / 10}%)`);
  await expect(page.getByTestId('chart-calls').locator('svg').first()).toBeVisible();
  await expect(page.getByTestId('top-users')).toContainText('local:root');
  await expect(page.getByTestId('top-users').locator('tbody tr')).toHaveCount(1);
  await shot(page, 'admin-overview-24h');

  // The fingerprint the key admin API names for the demo upstream's serving version.
  const keys = (await (await page.request.get('/api/admin/keys', { headers: { 'x-keyward-csrf': '1' } })).json()) as {
    upstreams: { upstream: string; versions: { fingerprint: string; status: string }[] }[];
  };
  const demo = keys.upstreams.find((ring) => ring.upstream === 'demo');
  const fingerprint = demo?.versions.find((version) => version.status === 'serving')?.fingerprint;
  expect(fingerprint).toMatch(/^[0-9a-f]{12}$/);
  await expect(page.getByTestId('top-keys')).toContainText(fingerprint!);

  // The last hour by minute holds the same calls.
  await page.getByTestId('period-switch').getByRole('link', { name: '1 h' }).click();
  await expect(page).toHaveURL(/\/admin\?period=minute$/);
  await expect(page.getByTestId('stat-calls')).toHaveText(String(total));
  await shot(page, 'admin-overview-1h');

  // Another upstream had no traffic: its view is empty.
  await page.getByTestId('upstream-filter').getByRole('link', { name: 'demo-own' }).click();
  await expect(page).toHaveURL(/\/admin\?period=minute&upstream=demo-own$/);
  await expect(page.getByTestId('stat-calls')).toHaveText('0');
  await expect(page.getByTestId('usage-empty')).toBeVisible();
  await expectNoSecrets(page, prod.secrets);

  // Keys: the demo upstream's version by fingerprint, with the calls it served.
  await page.getByRole('navigation', { name: 'Admin' }).getByRole('link', { name: 'Keys' }).click();
  await expect(page).toHaveURL(/\/admin\/keys$/);
  const row = page.getByTestId('key-ring-demo').getByTestId(`key-version-${fingerprint}`);
  await expect(row).toContainText('serving');
  await expect(row.getByTestId('calls-since')).toHaveText(String(total));
  await expect(row).toContainText('this hour');
  await shot(page, 'admin-keys');
  await expectNoSecrets(page, prod.secrets);
});
