import { expect, expectNoSecrets, productionTest, proxyCall, shot, signIn } from './production';

/**
 * The dashboard against Redis, as a deployment of two instances shares it (README "Shared store and
 * revocation"): two `next start` servers on one redis-server, each with its own public origin. Calls made on
 * either show up as one set of numbers on both; the other suites drive the same pages on the embedded store.
 */
const test = productionTest({ instances: 2 });

const ON_A = 3;
const ON_B = 4;

test('two instances on one Redis: calls on either are one set of numbers, on either dashboard', async ({ page, prod, browser }) => {
  test.setTimeout(120_000);
  // alice calls through A, then through B (cookies belong to the host, not the port: the same session).
  await signIn(page, prod.user.username, prod.user.password);
  for (let i = 0; i < ON_A; i++) expect(await proxyCall(page, '/api/proxy/demo/hello')).toBe(200);
  await page.goto(`${prod.secondUrl}/`);
  await expect(page.getByTestId('signed-in')).toBeVisible();
  for (let i = 0; i < ON_B; i++) expect(await proxyCall(page, '/api/proxy/demo/hello')).toBe(200);

  const admin = await browser.newPage({ baseURL: prod.appUrl });
  await signIn(admin, prod.admin.username, prod.admin.password);
  for (const origin of [prod.appUrl, prod.secondUrl!]) {
    // Records reach the store when each instance's audit writer flushes its batch (within 100 ms): reload until then.
    await expect(async () => {
      await admin.goto(`${origin}/admin`);
      await expect(admin.getByTestId('stat-calls')).toHaveText(String(ON_A + ON_B), { timeout: 1_000 });
    }).toPass({ timeout: 15_000 });
    await expectNoSecrets(admin, prod.secrets);

    await admin.goto(`${origin}/admin/users`);
    const row = admin.getByTestId(`user-local:${prod.user.username}`);
    await expect(row.getByTestId('user-calls')).toHaveText(String(ON_A + ON_B));
    await expectNoSecrets(admin, prod.secrets);
  }
  await shot(admin, 'admin-users-redis');
  await admin.close();
});

test('Redis goes down: pages say the store is unavailable and calls get 503, then all recovers by itself', async ({ page, prod }) => {
  test.setTimeout(120_000);
  await signIn(page, prod.admin.username, prod.admin.password);
  await page.goto('/admin');
  await expect(page.getByTestId('stat-calls')).toBeVisible();

  await prod.redisOutage!.stop();
  // Nothing waits for Redis: commands are not queued while it is down, so every page answers at once.
  await page.goto('/admin');
  await expect(page.getByTestId('store-unavailable')).toBeVisible();
  await expect(page.getByTestId('stat-calls')).toHaveCount(0);
  await shot(page, 'admin-store-unavailable');
  await page.goto('/');
  await expect(page.getByTestId('store-unavailable')).toBeVisible();
  await expect(page.getByTestId('signed-in')).toHaveCount(0);
  await shot(page, 'home-store-unavailable');
  const refused = await page.evaluate(async () => {
    const response = await fetch('/api/proxy/demo/hello', { headers: { 'x-keyward-csrf': '1' }, cache: 'no-store' });
    return { status: response.status, retryAfter: response.headers.get('retry-after'), body: await response.text() };
  });
  expect(refused.status).toBe(503);
  expect(refused.retryAfter).toBe('2');
  expect(JSON.parse(refused.body).error.code).toBe('store_unavailable');
  await expectNoSecrets(page, prod.secrets);

  // Back, empty (it kept nothing): the session cookie still verifies (no revocation mark says otherwise), and
  // ioredis has reconnected in the background without a restart of either instance.
  await prod.redisOutage!.restart();
  // The home page's own way back, still on the outage page: "Try again" until the store answers.
  await expect(async () => {
    if (await page.getByTestId('retry').isVisible()) await page.getByTestId('retry').click();
    await expect(page.getByTestId('signed-in')).toBeVisible({ timeout: 1_000 });
  }).toPass({ timeout: 30_000 });
  await page.goto('/admin');
  await expect(page.getByTestId('stat-calls')).toBeVisible();
  expect(await proxyCall(page, '/api/proxy/demo/hello')).toBe(200);
});
