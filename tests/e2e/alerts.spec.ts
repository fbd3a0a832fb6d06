import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Browser, Page } from '@playwright/test';
import { expect, expectNoSecrets, productionTest, shot, signIn } from './production';

/**
 * The Alerts page (/admin/alerts) on a production deployment with the detector's default rules: a burst of calls
 * by a user is throttled (their calls answer 429 `throttled`), the admin sees the alert with its figures, cancels
 * the undo once (nothing changes), confirms it (the alert is undone, by whom, and the user's next call passes),
 * and the undo is in the audit trail. Non-admins get the 403 page. No secret reaches the page.
 */
const test = productionTest();

/** Above the default floor of 40 calls a minute, then the throttle's own 10: a 429 comes well before this many. */
const MAX_BURST = 90;

/**
 * A burst of proxied calls from the page until the detector throttles them (429 `throttled`), started early in a
 * minute: the detector compares this minute with the ones before, and a burst cut in two by a minute's end would
 * make its first half the baseline. Returns the statuses, the last being the throttle's.
 */
async function burstUntilThrottled(page: Page): Promise<number[]> {
  const intoMinute = Date.now() % 60_000;
  if (intoMinute > 30_000) await page.waitForTimeout(60_000 - intoMinute + 250);
  const statuses: number[] = [];
  let refusal: { status: number; code: string | null } | null = null;
  for (let i = 0; i < MAX_BURST && !refusal; i++) {
    const answer = await call(page, `/api/proxy/demo/items/${i}`);
    statuses.push(answer.status);
    if (answer.status !== 200) refusal = answer;
  }
  expect(refusal, `statuses: ${statuses.join(',')}`).toEqual({ status: 429, code: 'throttled' });
  return statuses;
}

async function newPage(browser: Browser, baseURL: string): Promise<Page> {
  return (await browser.newContext({ baseURL })).newPage();
}

/** A proxied call from the page as the app's frontend makes it: the status and Keyward's error code, if any. */
function call(page: Page, path: string): Promise<{ status: number; code: string | null }> {
  return page.evaluate(async (path) => {
    const response = await fetch(path, { headers: { 'x-keyward-csrf': '1' }, cache: 'no-store' });
    const body = (await response.json().catch(() => null)) as { error?: { code?: string } } | null;
    return { status: response.status, code: body?.error?.code ?? null };
  }, path);
}

test('signed out: sign in first; without the admin role: 403 and no alerts', async ({ page, prod }) => {
  await page.goto('/admin/alerts');
  await expect(page).toHaveURL(/\/signin\?callbackUrl=%2Fadmin%2Falerts$/);
  await signIn(page, prod.user.username, prod.user.password);
  await page.goto('/admin/alerts');
  await expect(page.getByTestId('admin-forbidden')).toContainText('Admins only');
  await expect(page.getByTestId('alerts-table')).toHaveCount(0);
  await expect(page.getByTestId('alerts-empty')).toHaveCount(0);
  // The API behind the Undo button refuses too.
  const refused = await page.evaluate(async () => (await fetch('/api/admin/alerts/al_00000000-0000-0000-0000-000000000000/undo', { method: 'POST', headers: { 'x-keyward-csrf': '1' } })).status);
  expect(refused).toBe(403);
});

test('a burst is throttled, shown on Alerts, and undone through the dialog; the user’s next call passes', async ({ page, browser, prod }) => {
  test.setTimeout(150_000);
  await signIn(page, prod.admin.username, prod.admin.password);
  await page.goto('/admin/alerts');
  await expect(page.getByTestId('alerts-empty')).toContainText('No alerts: the detector has not acted');
  await expect(page.getByTestId('nav-alert-count')).toHaveCount(0);
  await shot(page, 'alerts-empty');
  // An edited page link: said so, as the API refuses it (read as none, it would show the newest alerts as older).
  await page.goto('/admin/alerts?cursor=not-a-cursor');
  await expect(page.getByTestId('alerts-invalid')).toContainText('This page link is not valid');
  await expect(page.getByTestId('alerts-empty')).toHaveCount(0);
  await shot(page, 'alerts-invalid-link');
  await page.goto('/admin/alerts');

  // alice's burst, in her own browser. The detector compares this minute with the ones before: a burst cut in
  // two by a minute's end would make its first half the baseline, so it starts early in a minute.
  const alice = await newPage(browser, prod.appUrl);
  await signIn(alice, prod.user.username, prod.user.password);
  const statuses = await burstUntilThrottled(alice);
  // Beyond the default floor (40 a minute) before the step, then the throttle's 10 a minute.
  expect(statuses.length).toBeGreaterThan(40);

  // The admin sees it: the step, the subject, the reason and its figures, active until it lifts.
  await page.reload();
  const row = page.locator('[data-testid^="alert-al_"][data-action="throttle"]');
  await expect(row).toHaveCount(1);
  await expect(row).toHaveAttribute('data-state', 'active');
  await expect(row.getByTestId('alert-action')).toHaveText('throttle');
  await expect(row.getByTestId('alert-subject')).toContainText('local:alice');
  await expect(row.getByTestId('alert-subject')).toContainText('demo');
  await expect(row.getByTestId('alert-reason')).toContainText('local:alice: calls per minute far above their baseline');
  await expect(row.getByTestId('alert-evidence')).toContainText('threshold 40');
  await expect(row.getByTestId('alert-state')).toContainText(/active\s*lifts (\d{4}-\d\d-\d\d )?\d\d:\d\d UTC/);
  await expect(page.getByTestId('nav-alert-count')).toHaveText('1');
  await expectNoSecrets(page, prod.secrets);
  await shot(page, 'alerts-throttle');

  // Still throttled.
  expect(await call(alice, '/api/proxy/demo/hello')).toEqual({ status: 429, code: 'throttled' });

  // Undo: cancelled once (nothing changes), then confirmed.
  const alertId = (await row.getAttribute('data-testid'))!.slice('alert-'.length);
  const dialog = page.getByTestId(`undo-${alertId}-dialog`);
  // Its accessible name says which step of whom (one "Undo…" per row).
  await expect(row.getByRole('button', { name: 'Undo the throttle of local:alice…' })).toBeVisible();
  await row.getByTestId(`undo-${alertId}`).click();
  await expect(dialog).toBeVisible();
  await expect(dialog).toContainText('Lifts the throttle on local:alice at once');
  await shot(page, 'alerts-undo-dialog');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await expect(dialog).toBeHidden();
  await page.reload();
  await expect(row).toHaveAttribute('data-state', 'active');
  expect(await call(alice, '/api/proxy/demo/hello')).toEqual({ status: 429, code: 'throttled' });

  await row.getByTestId(`undo-${alertId}`).click();
  await dialog.getByRole('button', { name: 'Undo', exact: true }).click();
  await expect(page.getByTestId('alert-action-result')).toHaveText('The throttle on local:alice is lifted.');
  await expect(row).toHaveAttribute('data-state', 'undone');
  await expect(row.getByTestId('alert-state')).toContainText('undone');
  await expect(row.getByTestId('alert-state')).toContainText('by local:root');
  await expect(row.getByTestId(`undo-${alertId}`)).toHaveCount(0);
  await expect(page.getByTestId('nav-alert-count')).toHaveCount(0);
  await expectNoSecrets(page, prod.secrets);
  await shot(page, 'alerts-undone');

  // alice's next call passes, and the undo is on record with the admin as its actor.
  expect(await call(alice, '/api/proxy/demo/hello')).toEqual({ status: 200, code: null });
  const audit = (await (await page.request.get('/api/admin/audit?action=detector.undo', { headers: { 'x-keyward-csrf': '1' } })).json()) as {
    records: Array<{ actor: string; alertId: string; targetUser: string }>;
  };
  expect(audit.records).toEqual([expect.objectContaining({ actor: 'local:root', alertId, targetUser: 'local:alice' })]);
});

test('an alert about the admin: no Undo for them on the page (the API refuses it); an operator undoes it on the command line', async ({ page, prod }) => {
  test.setTimeout(150_000);
  await signIn(page, prod.admin.username, prod.admin.password);
  // root's own burst, from the admin's browser.
  await burstUntilThrottled(page);

  await page.goto('/admin/alerts');
  const row = page.locator('[data-testid^="alert-al_"][data-action="throttle"][data-state="active"]', { hasText: 'local:root' });
  await expect(row).toHaveCount(1);
  const alertId = (await row.getAttribute('data-testid'))!.slice('alert-'.length);
  await expect(row.getByTestId('alert-reason')).toContainText('local:root: calls per minute far above their baseline');
  // No Undo button: the page says who can lift it, and how.
  await expect(row.getByTestId(`undo-${alertId}`)).toHaveCount(0);
  await expect(row.getByTestId(`undo-${alertId}-own`)).toHaveText(
    `About you: another admin must undo it, or an operator on the server with npm run keyward -- alerts undo ${alertId}.`,
  );
  // The note wraps in its cell: as one line it squeezed "What was seen" to a word per line, and ran off the card.
  const reasonWidth = (await row.getByTestId('alert-reason').boundingBox())!.width;
  expect(reasonWidth).toBeGreaterThan(200);
  const card = (await page.getByTestId('alerts-table').boundingBox())!;
  const note = (await row.getByTestId(`undo-${alertId}-own`).boundingBox())!;
  expect(note.x + note.width).toBeLessThanOrEqual(card.x + card.width);
  await expectNoSecrets(page, prod.secrets);
  await shot(page, 'alerts-about-you');
  // The API behind the button refuses it too, and nothing is lifted.
  const refused = await page.request.post(`/api/admin/alerts/${alertId}/undo`, { headers: { 'x-keyward-csrf': '1' } });
  expect(refused.status()).toBe(403);
  expect(await call(page, '/api/proxy/demo/hello')).toEqual({ status: 429, code: 'throttled' });

  // The operator, on the server, with the servers' settings (README "Command line").
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [join(process.cwd(), 'node_modules', 'tsx', 'dist', 'cli.mjs'), '--conditions=react-server', 'scripts/keyward.ts', 'alerts', 'undo', alertId],
    { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', NODE_ENV: 'production', ...prod.env, AUTH_URL: prod.appUrl }, timeout: 60_000 },
  );
  expect(stdout).toContain('local:root');
  await page.reload();
  await expect(row).toHaveCount(0);
  const undone = page.getByTestId(`alert-${alertId}`);
  await expect(undone).toHaveAttribute('data-state', 'undone');
  await expect(undone.getByTestId('alert-state')).toContainText('by cli:');
  await shot(page, 'alerts-about-you-undone');
  expect(await call(page, '/api/proxy/demo/hello')).toEqual({ status: 200, code: null });
});
