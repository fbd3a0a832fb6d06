import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { demoDashboardTest as test } from './demo-dashboard';
import { expect, expectNoSecrets, shot, signIn } from './production';

/**
 * The dashboard as `npm run dev` shows it on a fresh checkout: the demo traffic (demo/traffic.ts, made the way
 * dev.ts makes it, into the store the server reads) fills the overview's charts over the last hours, the top
 * users are the demo users, and the Alerts page holds the detector's throttle of the burst and the scrubber-hit
 * alert, whose link leads to the key to rotate. No secret reaches a page.
 *
 * The README's screenshot of the overview (docs/dashboard-overview.png) is this page: `UPDATE_README_SHOT=1 npx
 * playwright test tests/e2e/dashboard-demo.spec.ts` writes it again (1280 px wide, light scheme).
 */

const README_SHOT = join(process.cwd(), 'docs', 'dashboard-overview.png');

test('the overview shows the demo traffic over the last hours (and is the README’s screenshot)', async ({ page, demo }) => {
  await signIn(page, demo.admin.username, demo.admin.password);
  await page.goto('/admin');
  await expect(page.getByTestId('stat-calls')).toHaveText(demo.calls.toLocaleString('en-US'));
  await expect(page.getByTestId('stat-errors')).not.toHaveText('0');
  await expect(page.getByTestId('chart-calls').locator('svg').first()).toBeVisible();
  for (const user of ['local:demo', 'demo:ada', 'demo:grace', 'demo:lin', 'demo:mallory']) await expect(page.getByTestId('top-users')).toContainText(user);
  // The burst's throttle (in effect for 15 minutes) and the echoed key's alert.
  await expect(page.getByTestId('nav-alert-count')).toHaveText('2');
  await expectNoSecrets(page, demo.secrets);
  // Let the charts finish drawing before the picture is taken.
  await expect(page.locator('.recharts-surface').first()).toBeVisible();
  await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
  await shot(page, 'dashboard-demo-overview');
  if (process.env.UPDATE_README_SHOT === '1') {
    mkdirSync(dirname(README_SHOT), { recursive: true });
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.screenshot({ path: README_SHOT, fullPage: true, animations: 'disabled' });
  }
});

test('Alerts shows the throttled burst and the echoed key, whose link leads to the key to rotate', async ({ page, demo }) => {
  await signIn(page, demo.admin.username, demo.admin.password);
  await page.goto('/admin/alerts');
  const throttle = page.locator('[data-testid^="alert-al_"][data-action="throttle"]');
  await expect(throttle).toHaveAttribute('data-state', 'active');
  await expect(throttle.getByTestId('alert-subject')).toContainText('demo:mallory');
  const echoed = page.locator('[data-testid^="alert-al_"][data-rule="scrubber_hits"]');
  await expect(echoed.getByTestId('alert-action')).toHaveText('alert');
  await expect(echoed.getByTestId('alert-reason')).toContainText('Rotate this key');
  const fingerprint = (await echoed.getByTestId('alert-subject').locator('code').last().textContent())!;
  expect(fingerprint).toMatch(/^[0-9a-f]{12}$/);
  await expectNoSecrets(page, demo.secrets);
  await shot(page, 'dashboard-demo-alerts');

  // An alert that took no action is dismissed, not undone: the dialog says so, and nothing about starting over.
  const echoedId = (await echoed.getAttribute('data-testid'))!.slice('alert-'.length);
  await echoed.getByTestId(`undo-${echoedId}`).click();
  const dialog = page.getByTestId(`undo-${echoedId}-dialog`);
  await expect(dialog).toBeVisible();
  await expect(dialog).toContainText('The dismissal is recorded in the audit trail with you as the actor.');
  await expect(dialog).not.toContainText('starts over');
  await shot(page, 'dashboard-demo-dismiss-dialog');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await expect(dialog).toBeHidden();

  await echoed.getByTestId('rotate-key-link').click();
  await expect(page).toHaveURL(/\/admin\/keys$/);
  await expect(page.getByTestId('suggest-rotation-demo')).toContainText(fingerprint);
  // Each echoing response counts every copy of the key the scrubber removed (body and headers).
  await expect(page.getByTestId(`key-version-${fingerprint}`).getByTestId('scrubber-hits')).toHaveText(/^[1-9]\d*suggest rotation$/);
});
