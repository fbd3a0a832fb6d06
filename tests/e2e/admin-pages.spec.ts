import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Browser, Page } from '@playwright/test';
import { expect, expectNoSecrets, productionTest, proxyCall, shot, signIn } from './production';
import { randomSecret } from '../fixtures/secrets';

/**
 * The admin dashboard's Users, Audit and Keys actions on a production deployment, driven in Chromium: traffic the
 * test makes shows on the Users pages for the user who made it (with their quota used and their sessions), the
 * audit page filters to the test's own calls, pages through them and exports them, a key is rotated (cancelled
 * once, refused by its canary once), rolled back and a version revoked through the confirmation dialogs, and an
 * admin's "revoke sessions" refuses that user's next call. No secret (the new keys included) reaches any page.
 */
const test = productionTest();

const ALICE_CALLS = 3;
/** More than one audit page (25 a page) of the admin's own calls. */
const ROOT_CALLS = 30;

async function newPage(browser: Browser, baseURL: string): Promise<Page> {
  return (await browser.newContext({ baseURL })).newPage();
}

/** The audit writer adds calls in batches after each response: reload until `check` passes. */
async function eventually(page: Page, check: () => Promise<void>): Promise<void> {
  await expect(async () => {
    await page.reload();
    await check();
  }).toPass({ timeout: 20_000 });
}

/** The demo upstream's versions as the key admin API lists them. */
async function demoVersions(page: Page): Promise<{ versions: { fingerprint: string; status: string }[]; rotations: { id: string; state: string }[] }> {
  const response = await page.request.get('/api/admin/keys', { headers: { 'x-keyward-csrf': '1' } });
  const body = (await response.json()) as { upstreams: { upstream: string; versions: { fingerprint: string; status: string }[]; rotations: { id: string; state: string }[] }[] };
  return body.upstreams.find((ring) => ring.upstream === 'demo')!;
}

async function servingFingerprint(page: Page): Promise<string> {
  return (await demoVersions(page)).versions.find((version) => version.status === 'serving')!.fingerprint;
}

test('signed out: the new pages send you to sign in; without the admin role: 403 and no data', async ({ page, prod }) => {
  await page.goto('/admin/users');
  await expect(page).toHaveURL(/\/signin\?callbackUrl=%2Fadmin%2Fusers$/);
  await page.goto('/admin/audit?userId=local%3Aalice');
  await expect(page).toHaveURL(/\/signin\?callbackUrl=%2Fadmin%2Faudit%3FuserId%3Dlocal%253Aalice$/);

  await signIn(page, prod.user.username, prod.user.password);
  for (const path of ['/admin/users', '/admin/users/local%3Aalice', '/admin/audit']) {
    await page.goto(path);
    await expect(page.getByTestId('admin-forbidden')).toContainText('Admins only');
    await expect(page.getByTestId('users-table')).toHaveCount(0);
    await expect(page.getByTestId('audit-records')).toHaveCount(0);
    await expect(page.getByTestId('user-sessions')).toHaveCount(0);
    await expectNoSecrets(page, prod.secrets);
  }
  // The admin API behind the buttons refuses too.
  const refused = await page.evaluate(async () => (await fetch('/api/admin/keys/revoke', { method: 'POST', headers: { 'x-keyward-csrf': '1', 'content-type': 'application/json' }, body: '{"fingerprint":"000000000000"}' })).status);
  expect(refused).toBe(403);
});

test('Users shows each user’s own traffic, quota and sessions; Audit filters, pages and exports the admin’s own calls', async ({ page, browser, prod }) => {
  test.setTimeout(120_000);
  await signIn(page, prod.admin.username, prod.admin.password);

  // Before any call: every user of the users file is listed, with their roles, and no calls.
  await page.goto('/admin/users');
  await expect(page.getByTestId('user-local:alice').getByTestId('user-calls')).toHaveText('0');
  await expect(page.getByTestId('user-local:root').getByTestId('user-roles')).toContainText('admin');
  await expect(page.getByTestId('user-local:alice').getByTestId('user-roles')).toHaveText('user');
  // Sessions alice already has (an earlier test of this file signs her in too); hers below adds one.
  const aliceSessions = parseInt((await page.getByTestId('user-local:alice').getByTestId('user-sessions').textContent()) ?? '', 10);
  expect(aliceSessions).toBeGreaterThanOrEqual(0);

  // Traffic: alice's calls in her own browser, then the admin's.
  const alice = await newPage(browser, prod.appUrl);
  await signIn(alice, prod.user.username, prod.user.password);
  for (let i = 0; i < ALICE_CALLS; i++) expect(await proxyCall(alice, '/api/proxy/demo/hello')).toBe(200);
  for (let i = 0; i < ROOT_CALLS; i++) expect(await proxyCall(page, '/api/proxy/demo/hello')).toBe(200);

  await eventually(page, async () => {
    await expect(page.getByTestId('user-local:alice').getByTestId('user-calls')).toHaveText(String(ALICE_CALLS), { timeout: 1_000 });
    await expect(page.getByTestId('user-local:root').getByTestId('user-calls')).toHaveText(String(ROOT_CALLS), { timeout: 1_000 });
  });
  const aliceRow = page.getByTestId('user-local:alice');
  await expect(aliceRow.getByTestId('user-errors')).toHaveText('0');
  // config/demo.json: a quota of 5000 requests a day per user, counted live.
  await expect(aliceRow.getByTestId('user-closest')).toContainText(`${ALICE_CALLS} / 5,000 requests today`);
  await expect(aliceRow.getByTestId('user-sessions')).toHaveText(String(aliceSessions + 1));
  // The busiest user first.
  await expect(page.getByTestId('users-table').locator('tbody tr').first()).toHaveAttribute('data-testid', 'user-local:root');
  await shot(page, 'admin-users');
  await expectNoSecrets(page, prod.secrets);

  // Alice's page: her calls, her quota, her browser session.
  await aliceRow.getByTestId('user-link').click();
  await expect(page).toHaveURL(/\/admin\/users\/local%3Aalice$/);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText('local:alice');
  await expect(page.getByTestId('stat-calls')).toHaveText(String(ALICE_CALLS));
  await expect(page.getByTestId('meter-demo-requests-user-day').getByTestId('meter-used')).toContainText(`${ALICE_CALLS} / 5,000 requests today`);
  await expect(page.getByTestId('user-rates')).toContainText('120 requests / 60 s, per user');
  await expect(page.getByTestId('user-key-demo-own')).toContainText('no key');
  const sessions = page.getByTestId('user-sessions').locator('tbody tr');
  await expect(sessions).toHaveCount(aliceSessions + 1);
  await expect(sessions.first()).toContainText('browser');
  await expect(sessions.first().getByTestId('session-state')).toHaveText('active');
  await shot(page, 'admin-user-detail');
  await expectNoSecrets(page, prod.secrets);

  // Audit: filtered to the admin's own calls to the demo upstream, through the GET form.
  await page.getByRole('navigation', { name: 'Admin' }).getByRole('link', { name: 'Audit' }).click();
  await expect(page).toHaveURL(/\/admin\/audit$/);
  await page.getByLabel('Type').selectOption('call');
  await page.getByLabel('Upstream').fill('demo');
  await page.getByLabel('User').fill('local:root');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await expect(page).toHaveURL(/\/admin\/audit\?type=call&upstream=demo&userId=local%3Aroot&/);
  const rows = page.getByTestId('audit-record');
  await expect(rows).toHaveCount(25);
  for (const row of await rows.all()) await expect(row).toContainText('local:root');
  await expect(page.getByTestId('audit-newer')).toHaveCount(0);
  // User ids and fingerprints stay whole (not "local:ro|ot", "5015b975|5ff9"): each on one line.
  const codeLines = await page.locator('[data-testid="audit-record"] td:is(:nth-child(2), :nth-child(5)) code').evaluateAll((codes) => codes.map((code) => code.getClientRects().length));
  expect(codeLines.length).toBeGreaterThan(0);
  expect(codeLines.every((count) => count === 1)).toBe(true);
  await shot(page, 'admin-audit');
  await expectNoSecrets(page, prod.secrets);
  const firstPage = await rows.allTextContents();

  await page.getByTestId('audit-older').click();
  await expect(page).toHaveURL(/[?&]older=/);
  await expect(rows).toHaveCount(ROOT_CALLS - 25);
  for (const row of await rows.all()) await expect(row).toContainText('GET /hello');
  await expect(page.getByTestId('audit-older')).toHaveCount(0);
  await page.getByTestId('audit-newer').click();
  await expect(rows).toHaveCount(25);
  expect(await rows.allTextContents()).toEqual(firstPage);

  // Alice's calls are not in the admin's filtered view, and a filter naming her shows hers only.
  await page.getByLabel('User').fill('local:alice');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await expect(rows).toHaveCount(ALICE_CALLS);
  await expect(page.getByTestId('audit-pager')).toHaveCount(0);

  // A value the API refuses is said so, not swallowed.
  await page.goto('/admin/audit?fingerprint=not*hex');
  await expect(page.getByTestId('audit-invalid')).toContainText('fingerprint is not valid');

  // Export: the same filters, every match as JSON Lines, oldest first.
  await page.goto('/admin/audit?type=call&upstream=demo&userId=local%3Aroot');
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('audit-export').click()]);
  expect(download.suggestedFilename()).toBe('keyward-audit.jsonl');
  const lines = (await readFile((await download.path())!, 'utf8')).trim().split('\n');
  const records = lines.map((line) => JSON.parse(line) as { type: string; userId: string; upstream: string; route: string; at: string; status: number });
  expect(records).toHaveLength(ROOT_CALLS);
  for (const record of records) expect(record).toMatchObject({ type: 'call', userId: 'local:root', upstream: 'demo', route: '/hello', status: 200 });
  expect(records.map((record) => record.at)).toEqual([...records.map((record) => record.at)].sort());
  const text = lines.join('\n');
  for (const secret of prod.secrets) expect(text.includes(secret)).toBe(false);
  await alice.context().close();
});

test('a user id as long as one may be (300 characters, no space) wraps: the user page is no wider than the window', async ({ page, prod }) => {
  await signIn(page, prod.admin.username, prod.admin.password);
  const userId = `oidc:${'x'.repeat(295)}`;
  await page.goto(`/admin/users/${encodeURIComponent(userId)}`);
  await expect(page.getByRole('heading', { level: 1 })).toHaveText(userId);
  await expect(page.getByTestId('user-unknown')).toBeVisible();
  expect(await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)).toBeLessThanOrEqual(0);
  await shot(page, 'admin-user-long-id');
});

test('Keys: rotate (cancelled, refused by the canary, then skipping it), roll back and revoke through the dialogs; scrubber hits', async ({ page, prod }) => {
  test.setTimeout(120_000);
  await signIn(page, prod.admin.username, prod.admin.password);
  const original = await servingFingerprint(page);

  // The demo upstream echoes its key on /leaky: Keyward scrubs it and counts a hit for the serving version.
  expect(await proxyCall(page, '/api/proxy/demo/leaky')).toBe(401);
  await page.goto('/admin/keys');
  const ring = page.getByTestId('key-ring-demo');
  const row = (fingerprint: string) => ring.getByTestId(`key-version-${fingerprint}`);
  await eventually(page, async () => {
    await expect(row(original).getByTestId('scrubber-hits').locator('.badge')).toHaveText(/^[1-9]\d*$/, { timeout: 1_000 });
  });
  await expect(row(original).getByTestId('scrubber-hits')).toContainText('suggest rotation');
  await expect(page.getByTestId('suggest-rotation-demo')).toContainText(original);

  // Cancel: the dialog closes, nothing changes.
  const refusedKey = randomSecret('rot_refused');
  const newKey = randomSecret('rot_new');
  const secrets = [...prod.secrets, refusedKey, newKey];
  await page.getByTestId('rotate-demo').click();
  const dialog = page.getByTestId('rotate-demo-dialog');
  await expect(dialog).toBeVisible();
  await expect(dialog).toContainText('GET /hello');
  await expect(dialog).toContainText(original);
  await dialog.getByLabel('New key', { exact: true }).fill(refusedKey);
  await shot(page, 'admin-keys-rotate-dialog');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await expect(dialog).toBeHidden();
  expect((await demoVersions(page)).rotations).toEqual([]);
  expect(await servingFingerprint(page)).toBe(original);
  await page.getByTestId('rotate-demo').click();
  await expect(dialog.getByLabel('New key', { exact: true })).toHaveValue('');
  await dialog.getByRole('button', { name: 'Cancel' }).click();

  // With the canary: the demo upstream refuses an unknown key, so nothing is switched.
  await page.getByTestId('rotate-demo').click();
  await dialog.getByLabel('New key', { exact: true }).fill(refusedKey);
  await dialog.getByRole('button', { name: 'Rotate', exact: true }).click();
  const result = page.getByTestId('key-action-result-demo');
  await expect(result).toContainText('Not rotated: the canary call with the new key');
  await expect(result).toContainText('was answered 401');
  await expect(dialog).toBeHidden();
  expect(await servingFingerprint(page)).toBe(original);
  await expect(row(original).getByTestId('version-status')).toHaveText('serving');

  // Skipping the canary: the new key serves, the old one is a fallback.
  await page.getByTestId('rotate-demo').click();
  await dialog.getByLabel('New key', { exact: true }).fill(newKey);
  await dialog.getByLabel(/Skip the canary/).check();
  await dialog.getByRole('button', { name: 'Rotate', exact: true }).click();
  await expect(result).toContainText('Rotated demo:');
  const rotated = await servingFingerprint(page);
  expect(rotated).not.toBe(original);
  await expect(result).toContainText(rotated);
  await expect(row(rotated).getByTestId('version-status')).toHaveText('serving');
  await expect(row(original).getByTestId('version-status')).not.toHaveText('serving');
  await shot(page, 'admin-keys-rotated');
  await expectNoSecrets(page, secrets);

  // Roll back: the original serves again, the new one is retired.
  await page.getByTestId('rollback-demo').click();
  await expect(page.getByTestId('rollback-demo-dialog')).toContainText(rotated);
  await page.getByTestId('rollback-demo-dialog').getByRole('button', { name: 'Roll back' }).click();
  await expect(result).toContainText('Rolled back');
  await expect(row(original).getByTestId('version-status')).toHaveText('serving');
  await expect(row(rotated).getByTestId('version-status')).toHaveText('retired');
  expect(await servingFingerprint(page)).toBe(original);
  await expect(page.getByTestId('rollback-demo')).toHaveCount(0);

  // Rotating to the rolled-back key again is that rotation again: the page says nothing changed.
  await page.getByTestId('rotate-demo').click();
  await dialog.getByLabel('New key', { exact: true }).fill(newKey);
  await dialog.getByLabel(/Skip the canary/).check();
  await dialog.getByRole('button', { name: 'Rotate', exact: true }).click();
  await expect(result).toContainText(`Nothing changed: this key (${rotated}) was rotated to before`);
  await expect(result).toContainText('rolled back');
  await expect(result).toContainText('another rotation id');
  expect(await servingFingerprint(page)).toBe(original);
  await shot(page, 'admin-keys-rotate-repeated');

  // Revoke the rotated version by its fingerprint.
  await page.getByTestId(`revoke-${rotated}`).click();
  const revokeDialog = page.getByTestId(`revoke-${rotated}-dialog`);
  await expect(revokeDialog).toContainText('cannot be undone');
  await revokeDialog.getByRole('button', { name: 'Revoke' }).click();
  await expect(result).toContainText(`Revoked ${rotated}`);
  await expect(row(rotated).getByTestId('version-status')).toHaveText('revoked');
  await expect(page.getByTestId(`revoke-${rotated}`)).toHaveCount(0);
  expect(await proxyCall(page, '/api/proxy/demo/hello')).toBe(200);
  await shot(page, 'admin-keys-revoked');
  await expectNoSecrets(page, secrets);

  // Every action is on the audit page, by fingerprint.
  await page.goto('/admin/audit?type=admin');
  const actions = page.getByTestId('audit-record');
  await expect(actions.filter({ hasText: 'key.revoke' })).toContainText(rotated);
  await expect(actions.filter({ hasText: 'key.rollback' })).toHaveCount(1);
  await expect(actions.filter({ hasText: 'key.rotate' })).toHaveCount(3);
  await expect(actions.filter({ hasText: 'key.rotate' }).filter({ hasText: 'unchanged' })).toHaveCount(1);
  await expectNoSecrets(page, secrets);
});

test('Revoke sessions: the dialog asks first, then that user’s next call is refused', async ({ page, browser, prod }) => {
  test.setTimeout(90_000);
  const alice = await newPage(browser, prod.appUrl);
  await signIn(alice, prod.user.username, prod.user.password);
  expect(await proxyCall(alice, '/api/proxy/demo/hello')).toBe(200);

  await signIn(page, prod.admin.username, prod.admin.password);
  await page.goto('/admin/users/local%3Aalice');
  const states = page.getByTestId('user-sessions').getByTestId('session-state');
  await expect(states.first()).toHaveText('active');

  // Cancel changes nothing.
  await page.getByTestId('revoke-sessions').click();
  const dialog = page.getByTestId('revoke-sessions-dialog');
  await expect(dialog).toContainText('local:alice');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  expect(await proxyCall(alice, '/api/proxy/demo/hello')).toBe(200);

  await page.getByTestId('revoke-sessions').click();
  await dialog.getByRole('button', { name: 'Revoke sessions' }).click();
  await expect(page.getByTestId('revoke-sessions-result')).toContainText('Every session of local:alice is revoked');
  for (const state of await states.all()) await expect(state).toHaveText('revoked');
  await expect(page.getByTestId('stat-sessions')).toHaveText('0');
  await shot(page, 'admin-user-revoked');
  await expectNoSecrets(page, prod.secrets);

  expect(await proxyCall(alice, '/api/proxy/demo/hello')).toBe(401);
  // The admin's own session is untouched.
  expect(await proxyCall(page, '/api/proxy/demo/hello')).toBe(200);
  await alice.context().close();
});

test('at 390 px wide no admin page, nor My usage, is wider than the window', async ({ page, prod }) => {
  await page.setViewportSize({ width: 390, height: 844 });
  await signIn(page, prod.admin.username, prod.admin.password);
  // After the tests above: top users and keys, audit records, an alert (the key echoed on /leaky) to lay out.
  for (const path of ['/admin', '/admin/keys', '/admin/users', '/admin/users/local%3Aalice', '/admin/audit', '/admin/alerts', '/usage']) {
    await page.goto(path);
    expect(await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth), path).toBeLessThanOrEqual(0);
  }
  await shot(page, 'usage-390');
});

test('Keys: a ring no version serves says so in red, with why; every row, its Revoke button too, fits the card', async ({ page, prod }) => {
  test.setTimeout(90_000);
  await signIn(page, prod.admin.username, prod.admin.password);
  // An operator rotates on a server started with another KEYWARD_VAULT_SECRET: this one cannot open the new key.
  const otherVault = randomSecret('vault_other');
  const newKey = randomSecret('rot_other_vault');
  const cli = promisify(execFile)(
    process.execPath,
    [join(process.cwd(), 'node_modules', 'tsx', 'dist', 'cli.mjs'), '--conditions=react-server', 'scripts/keyward.ts', 'keys', 'rotate', 'demo', '--skip-canary'],
    { env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', NODE_ENV: 'production', ...prod.env, KEYWARD_VAULT_SECRET: otherVault, AUTH_URL: prod.appUrl }, timeout: 60_000 },
  );
  cli.child.stdin!.end(newKey);
  await cli;
  expect(await proxyCall(page, '/api/proxy/demo/hello')).toBe(503);

  await page.goto('/admin/keys');
  const ring = page.getByTestId('key-ring-demo');
  const alert = ring.getByTestId('no-serving-demo');
  await expect(alert).toContainText('No key serves: every call to demo answers 503 credential_unavailable');
  await expect(alert).toContainText('does not open with this KEYWARD_VAULT_SECRET');
  await expect(ring.getByTestId('version-status').filter({ hasText: 'unreadable' })).toHaveCount(1);
  // Nothing scrolls out of the card: the table fits, each fingerprint stays on one line, each Revoke is in view.
  expect(await ring.locator('.table-scroll').evaluate((el) => el.scrollWidth - el.clientWidth)).toBeLessThanOrEqual(0);
  const fingerprintLines = await ring.locator('tbody td:first-child code').evaluateAll((codes) => codes.map((code) => code.getClientRects().length));
  expect(fingerprintLines.every((count) => count === 1)).toBe(true);
  const card = (await ring.boundingBox())!;
  const revokeButtons = ring.getByRole('button', { name: /^Revoke demo key version / });
  await expect(revokeButtons).not.toHaveCount(0);
  for (const button of await revokeButtons.all()) {
    const box = (await button.boundingBox())!;
    expect(box.x + box.width).toBeLessThanOrEqual(card.x + card.width);
  }
  await shot(page, 'admin-keys-none-serves');
  await expectNoSecrets(page, [...prod.secrets, otherVault, newKey]);
});
