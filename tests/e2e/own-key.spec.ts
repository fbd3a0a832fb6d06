import { createHash, randomBytes } from 'node:crypto';
import type { Page, Response } from '@playwright/test';
import { keyFingerprints } from '../../lib/core/keys/fingerprint';
import { findLeaks, findSecretsIn, jsonKeys, recordRequests, secretForms } from '../fixtures/e2e-leaks';
import { browserFetch, expect, signInLocal, test } from './fixtures';

/**
 * Bring-your-own-key in the browser (upstream `demo-own`, `"secret": {"user": "key"}`): the local user stores
 * a random key through the demo page, sees only its last 4 characters and fingerprint, calls the upstream with
 * it, finds it unreadable after a reload, deletes it, and is then refused. The key goes to the server once, in
 * the PUT that stores it; no response, cookie, storage, HTML or server log line ever carries it back.
 */

const KEYS_PATH = '/api/keys/demo-own';
const isKeysCall = (method: string) => (response: Response) =>
  new URL(response.url()).pathname === KEYS_PATH && response.request().method() === method;

/** Clicks and waits for the matching response (registered before the click, so it cannot be missed). */
async function clickFor(page: Page, testId: string, matches: (response: Response) => boolean): Promise<Response> {
  const [response] = await Promise.all([page.waitForResponse(matches), page.getByTestId(testId).click()]);
  return response;
}

test('own key: stored write-only, shown only as last 4 + fingerprint, used for my call, unreadable after reload, deleted', async ({
  page,
  env,
  traffic,
}) => {
  const userKey = `demo-user-${randomBytes(18).toString('base64url')}`;
  // Keyward shows a keyed fingerprint (HMAC under a key derived from KEYWARD_SESSION_SECRET); the demo upstream
  // reports its own, unkeyed one (a SHA-256 prefix) of the key it received.
  const fingerprint = keyFingerprints(env.secrets.KEYWARD_SESSION_SECRET).of(userKey);
  const upstreamFingerprint = createHash('sha256').update(userKey, 'utf8').digest('hex').slice(0, 12);
  const last4 = userKey.slice(-4);
  const requests = recordRequests(page.context());
  const row = page.getByTestId('own-key-demo-own');
  const keyInfo = row.getByTestId('own-key-info');
  const message = row.getByTestId('own-key-message');
  const noKey = row.getByText('no key', { exact: true });
  const input = row.getByTestId('own-key-input');

  // Signed in, the page asks for the stored key: there is none.
  const firstRead = page.waitForResponse(isKeysCall('GET'));
  await signInLocal(page, env.localUser.username, env.localUser.password);
  expect((await firstRead).status()).toBe(403); // credential_missing (bodies are checked from the recording below)
  await expect(noKey).toBeVisible();
  await expect(row.getByTestId('own-key-delete')).toHaveCount(0); // nothing to delete: not offered

  // Store it through the password input.
  await expect(input).toHaveAttribute('type', 'password');
  await input.fill(userKey);
  const put = await clickFor(page, 'own-key-save', isKeysCall('PUT'));
  expect(put.status()).toBe(201);
  await expect(input).toHaveValue(''); // the draft is gone from the page
  // The row shows exactly the last 4 characters and the fingerprint, nothing else of the key.
  const time = String.raw`\d{4}-\d\d-\d\d \d\d:\d\d UTC`;
  const storedInfo = (lastUsed: string) =>
    new RegExp(`^Ends in …${escapeRegExp(last4)} · fingerprint ${fingerprint} · added ${time} · last used ${lastUsed}$`);
  await expect(keyInfo).toHaveText(storedInfo('never'));
  await expect(message).toHaveText('Stored. Keyward will never show it again.');
  expect(await row.textContent()).not.toContain(userKey.slice(0, -4));
  await traffic.snapshot(page, 'key stored');

  // The upstream sees my key (and only Keyward attached it): its fingerprint of what it received is my key's.
  const whoami = await clickFor(page, 'call-own', (r) => new URL(r.url()).pathname === '/api/proxy/demo-own/whoami');
  expect(whoami.status()).toBe(200);
  await expect(page.getByTestId('status')).toHaveText('200');
  const answer = JSON.parse((await page.getByTestId('body').textContent()) ?? '') as Record<string, unknown>;
  expect(answer).toMatchObject({ key: 'yours', fingerprint: upstreamFingerprint });
  await traffic.snapshot(page, 'called /whoami with my key');

  // After a reload the key is still stored, and still not readable: GET has no `key` field.
  const reread = page.waitForResponse(isKeysCall('GET'));
  await page.reload();
  expect((await reread).status()).toBe(200);
  await expect(keyInfo).toHaveText(storedInfo(`(never|${time})`));
  const described = await browserFetch(page, KEYS_PATH, { 'x-keyward-csrf': '1' });
  expect(described.status).toBe(200);
  const info = JSON.parse(described.body) as Record<string, unknown>;
  expect(jsonKeys(info)).not.toContain('key');
  expect(Object.keys(info).sort()).toEqual(['createdAt', 'fingerprint', 'last4', 'lastUsedAt', 'upstream']);
  expect(info).toMatchObject({ fingerprint, last4 });
  expect(described.body).not.toContain(userKey);
  await traffic.snapshot(page, 'after reload');

  // Delete it: the row says so, and the call is refused for lack of a key.
  const deleted = await clickFor(page, 'own-key-delete', isKeysCall('DELETE'));
  expect(deleted.status()).toBe(204);
  await expect(noKey).toBeVisible();
  await expect(message).toHaveText('Deleted.');
  const refused = await clickFor(page, 'call-own', (r) => new URL(r.url()).pathname === '/api/proxy/demo-own/whoami');
  expect(refused.status()).toBe(403);
  await expect(page.getByTestId('status')).toHaveText('403');
  expect(JSON.parse((await page.getByTestId('body').textContent()) ?? '')).toMatchObject({ error: { code: 'credential_missing' } });
  expect((await browserFetch(page, KEYS_PATH, { 'x-keyward-csrf': '1' })).status).toBe(403);

  // Everything the browser received or kept: no form of the key (nor of the service key) anywhere.
  const evidence = await traffic.collect(page);
  const paths = evidence.responses.map((r) => `${r.status} ${new URL(r.url).pathname}`);
  for (const seen of [`201 ${KEYS_PATH}`, `200 ${KEYS_PATH}`, `204 ${KEYS_PATH}`, '200 /api/proxy/demo-own/whoami', '403 /api/proxy/demo-own/whoami']) {
    expect(paths, `recorded ${seen}`).toContain(seen);
  }
  const unreadable = evidence.responses.filter((r) => r.bodyUnavailable !== undefined && !(r.status >= 300 && r.status < 400) && r.status !== 204);
  expect(unreadable.map((r) => `${r.status} ${r.url}: ${r.bodyUnavailable}`)).toEqual([]);
  expect(evidence.snapshots?.length).toBe(3);
  const secrets = { USER_KEY: userKey, DEMO_UPSTREAM_KEY: env.secrets.DEMO_UPSTREAM_KEY };
  expect(findLeaks(evidence, secrets)).toEqual([]);
  // Read from the recording (the recorder takes streamed bodies over, so Response.body() is not used here).
  const keyAnswers = evidence.responses.filter((r) => new URL(r.url).pathname === KEYS_PATH);
  const bodyOf = (status: number) => JSON.parse(keyAnswers.find((r) => r.status === status)!.body) as Record<string, unknown>;
  expect(bodyOf(403)).toMatchObject({ error: { code: 'credential_missing' } });
  expect(bodyOf(201)).toEqual({ upstream: 'demo-own', fingerprint, last4, createdAt: expect.any(String), lastUsedAt: null });
  for (const answer of keyAnswers.filter((r) => r.status === 200 || r.status === 201)) {
    expect(jsonKeys(JSON.parse(answer.body))).not.toContain('key');
  }

  // The browser sent the key exactly once: in the body of the PUT that stored it (and the search finds it there).
  const sentIn = (await requests.all()).filter((request) => {
    const text = `${request.url}\n${JSON.stringify(request.headers)}\n${request.body}`;
    return [...secretForms(userKey).keys()].some((form) => text.includes(form));
  });
  expect(sentIn.map((r) => `${r.method} ${new URL(r.url).pathname}`)).toEqual([`PUT ${KEYS_PATH}`]);
  expect(JSON.parse(sentIn[0]!.body)).toEqual({ key: userKey });

  // The server's log covered these calls (store, the call with the key, delete) and holds neither key.
  await expect.poll(() => env.app.output()).toContain('user key deleted');
  const log = env.app.output();
  expect(log).toContain(fingerprint);
  expect(log).toMatch(/"upstream":"demo-own".*"route":"\/whoami".*"status":200/);
  expect(findSecretsIn([['server log', log]], secrets)).toEqual([]);
});

function escapeRegExp(value: string): string {
  return value.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
