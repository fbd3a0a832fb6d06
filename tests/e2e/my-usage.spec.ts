import type { Browser, Page } from '@playwright/test';
import { expect, expectNoSecrets, productionTest, proxyCall, signIn } from './production';
import { randomSecret } from '../fixtures/secrets';

/**
 * "My usage" (/usage) on a production deployment: a user's calls through the proxy show up on their own page
 * (in total and for the upstream, next to the upstream's configured limits), another user's calls do not, the
 * user's own key is named by fingerprint and last 4 only, a signed-out visitor gets the sign-in page, and no
 * secret reaches the HTML. The signed-in page is screenshotted into the test's output folder.
 */
const test = productionTest();

const ALICE_CALLS = 4;
const ROOT_CALLS = 3;

async function newPage(browser: Browser, baseURL: string): Promise<Page> {
  return (await browser.newContext({ baseURL })).newPage();
}

/** The audit writer adds calls to the aggregates after each response: reload until the count is there. */
async function expectCalls(page: Page, calls: number) {
  await page.goto('/usage');
  await expect(async () => {
    await page.reload();
    await expect(page.getByTestId('stat-calls')).toHaveText(String(calls), { timeout: 1_000 });
  }).toPass({ timeout: 20_000 });
}

test('signed out: /usage sends you to sign in and back', async ({ page }) => {
  await page.goto('/usage');
  await expect(page).toHaveURL(/\/signin\?callbackUrl=%2Fusage$/);
  await expect(page.getByTestId('stat-calls')).toHaveCount(0);
});

test('a user sees their own calls, keys and limits, and not another user’s calls', async ({ page, browser, prod }) => {
  test.setTimeout(90_000);
  await signIn(page, prod.user.username, prod.user.password);

  // From the home page; before any call, the empty state.
  await page.getByTestId('my-usage-link').getByRole('link').click();
  await expect(page).toHaveURL(/\/usage$/);
  await expect(page.getByTestId('stat-calls')).toHaveText('0');
  await expect(page.getByTestId('usage-empty')).toBeVisible();
  await expect(page.getByTestId('my-key-demo-own')).toContainText('no key');

  // Another user's traffic first, counted on their own page before alice makes hers.
  const root = await newPage(browser, prod.appUrl);
  await signIn(root, prod.admin.username, prod.admin.password);
  for (let i = 0; i < ROOT_CALLS; i++) expect(await proxyCall(root, '/api/proxy/demo/hello')).toBe(200);
  await expectCalls(root, ROOT_CALLS);

  // Alice's own key for demo-own, and her calls to the demo upstream.
  const ownKey = randomSecret('own_key');
  const stored = await page.evaluate(
    async (key) => (await fetch('/api/keys/demo-own', { method: 'PUT', headers: { 'x-keyward-csrf': '1', 'content-type': 'application/json' }, body: JSON.stringify({ key }) })).json(),
    ownKey,
  );
  const { fingerprint } = stored as { fingerprint: string };
  for (let i = 0; i < ALICE_CALLS; i++) expect(await proxyCall(page, '/api/proxy/demo/hello')).toBe(200);

  await expectCalls(page, ALICE_CALLS);
  await expect(page.getByTestId('stat-errors')).toHaveText('0');
  await expect(page.getByTestId('chart-calls').locator('svg').first()).toBeVisible();
  const demo = page.getByTestId('upstream-demo');
  await expect(demo.getByTestId('upstream-calls')).toHaveText(String(ALICE_CALLS));
  // config/demo.json: the demo upstream's rate limit and quota, both per user; demo-own has none.
  await expect(demo.getByTestId('upstream-limits')).toContainText('rate limit: 120 requests / 60 s, per user');
  await expect(demo.getByTestId('upstream-limits')).toContainText('quota: 5000 requests / day, per user');
  await expect(page.getByTestId('upstream-demo-own').getByTestId('upstream-calls')).toHaveText('0');
  await expect(page.getByTestId('upstream-demo-own').getByTestId('upstream-limits')).toHaveText('none');
  const key = page.getByTestId('my-key-demo-own');
  await expect(key).toContainText(`…${ownKey.slice(-4)}`);
  await expect(key).toContainText(fingerprint);
  await page.screenshot({ path: test.info().outputPath('my-usage.png'), fullPage: true });

  // Nothing of the other user's on alice's page, and no secret, her own key included.
  const html = await page.content();
  expect(html).not.toContain('local:root');
  await expectNoSecrets(page, [...prod.secrets, ownKey]);

  // And the other user still sees only their own calls.
  await expectCalls(root, ROOT_CALLS);
  await expect(root.getByTestId('upstream-demo').getByTestId('upstream-calls')).toHaveText(String(ROOT_CALLS));
  await expect(root.getByTestId('my-key-demo-own')).toContainText('no key');
  await expectNoSecrets(root, [...prod.secrets, ownKey]);
  await root.context().close();
});
