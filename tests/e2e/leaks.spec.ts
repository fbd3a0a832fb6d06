import type { Page } from '@playwright/test';
import type { E2eEnvironment } from '../fixtures/e2e-env';
import { findLeaks, jsonKeys, type BrowserEvidence } from '../fixtures/e2e-leaks';
import { browserFetch, expect, signInLocal, signInOidc, test } from './fixtures';

/**
 * Leak proof: everything the browser received during a whole session (every response's URL, status, headers
 * and body; cookies of every origin; local/session storage; IndexedDB; the final HTML) is searched for every
 * server-side secret and provider token, raw, URL-encoded and base64-encoded.
 */

const TOKEN_FIELD = /token|secret|password|api[-_]?key|credential/;
const JWT_LIKE = /eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/;

/** Uses every demo call, reads both session endpoints (and checks them), then signs out. */
async function exerciseSession(page: Page) {
  for (const id of ['call-hello', 'call-item', 'call-echo']) {
    await page.getByTestId(id).click();
    await expect(page.getByTestId('status')).toHaveText('200');
  }
  await page.getByTestId('call-events').click();
  await expect(page.getByTestId('events')).toContainText('"n":5');
  await expect(page.getByTestId('call-events')).toBeEnabled();

  for (const path of ['/api/auth/session', '/api/session']) {
    const response = await browserFetch(page, path);
    expect(response.status, path).toBe(200);
    const keys = jsonKeys(JSON.parse(response.body));
    // Soft: a failure here is reported together with the secret scan below.
    expect.soft(keys.filter((key) => TOKEN_FIELD.test(key)), `${path} has no token-like fields`).toEqual([]);
    for (const field of ['access_token', 'refresh_token', 'id_token', 'accesstoken', 'refreshtoken', 'idtoken']) {
      expect.soft(response.body.toLowerCase(), path).not.toContain(field);
    }
    expect.soft(response.body, `${path} holds no JWT`).not.toMatch(JWT_LIKE);
  }
  await page.getByTestId('sign-out').click();
  await expect(page.getByText('You are not signed in.')).toBeVisible();
}

function assertNoLeaks(evidence: BrowserEvidence, secrets: Record<string, string>) {
  // The scan covered real traffic: the proxied calls, the SSE stream and the session endpoints were recorded.
  const urls = evidence.responses.map((r) => new URL(r.url).pathname);
  for (const path of ['/api/proxy/demo/hello', '/api/proxy/demo/echo', '/api/proxy/demo/events', '/api/auth/session', '/api/session']) {
    expect(urls, `recorded ${path}`).toContain(path);
  }
  const events = evidence.responses.find((r) => r.url.endsWith('/api/proxy/demo/events'));
  expect(events?.body).toContain('"n":5');
  // Bodies that could not be read are only redirects (which have none).
  const unreadable = evidence.responses.filter((r) => r.bodyUnavailable !== undefined && !(r.status >= 300 && r.status < 400));
  expect(unreadable.map((r) => `${r.status} ${r.url}: ${r.bodyUnavailable}`)).toEqual([]);

  expect(findLeaks(evidence, secrets)).toEqual([]);
}

function serverSecrets(env: E2eEnvironment): Record<string, string> {
  const tokens = env.oidc.issuedTokens();
  return {
    ...env.secrets,
    LOCAL_USER_PASSWORD: env.localUser.password,
    OIDC_USER_PASSWORD: env.oidc.account.password,
    ...Object.fromEntries(tokens.accessTokens.map((t, i) => [`OIDC_ACCESS_TOKEN_${i}`, t])),
    ...Object.fromEntries(tokens.refreshTokens.map((t, i) => [`OIDC_REFRESH_TOKEN_${i}`, t])),
    ...Object.fromEntries(tokens.idTokens.map((t, i) => [`OIDC_ID_TOKEN_${i}`, t])),
  };
}

test('leak proof, local user: no secret in anything the browser received or stored', async ({ page, env, traffic }) => {
  await signInLocal(page, env.localUser.username, env.localUser.password);
  await exerciseSession(page);
  const evidence = await traffic.collect(page);
  assertNoLeaks(evidence, serverSecrets(env));
});

test('leak proof, OIDC: no secret or provider token in anything the browser received or stored', async ({ page, env, traffic }) => {
  const before = env.oidc.issuedTokens();
  await signInOidc(page, env);
  const after = env.oidc.issuedTokens();
  // The provider really issued an access, refresh and ID token in this sign-in: they are searched for below.
  expect(after.accessTokens.length).toBe(before.accessTokens.length + 1);
  expect(after.refreshTokens.length).toBe(before.refreshTokens.length + 1);
  expect(after.idTokens.length).toBe(before.idTokens.length + 1);

  await exerciseSession(page);
  const evidence = await traffic.collect(page);
  // The provider's pages were part of the recorded traffic too.
  expect(evidence.responses.some((r) => r.url.startsWith(`${env.oidc.issuer}/interaction/`))).toBe(true);
  assertNoLeaks(evidence, serverSecrets(env));
});

test('leak detector self-check: it finds a secret in raw, URL-encoded and base64 forms', () => {
  const secret = 'kwtest_selfcheck_R4nd0m+/=value-1234567890';
  const inside = (text: string) => ({ responses: [{ url: 'http://x/', status: 200, headers: {}, body: text }], cookies: '', storage: '', html: '' });
  for (const prefix of ['', 'a', 'ab', 'abc']) {
    const b64 = Buffer.from(`${prefix}{"k":"${secret}"}`).toString('base64');
    expect(findLeaks(inside(`x${b64}y`), { S: secret }).length, `base64 at offset ${prefix.length}`).toBeGreaterThan(0);
    const b64url = Buffer.from(`${prefix}${secret}!`).toString('base64url');
    expect(findLeaks(inside(b64url), { S: secret }).length, `base64url at offset ${prefix.length}`).toBeGreaterThan(0);
  }
  expect(findLeaks(inside(encodeURIComponent(secret)), { S: secret }).length).toBeGreaterThan(0);
  expect(findLeaks(inside(`<p>${secret}</p>`), { S: secret }).length).toBeGreaterThan(0);
  expect(findLeaks(inside('nothing here'), { S: secret })).toEqual([]);
});
