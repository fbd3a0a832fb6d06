import { browserFetch, expect, signInLocal, test } from './fixtures';

test('the session cookie is __Host-, HttpOnly, Secure, SameSite=Strict, Path=/, host-only', async ({ page, env }) => {
  const setCookies: string[] = [];
  page.on('response', async (response) => setCookies.push(...(await response.headerValues('set-cookie'))));

  await signInLocal(page, env.localUser.username, env.localUser.password);

  const cookie = (await page.context().cookies()).find((c) => c.name === '__Host-keyward.session');
  expect(cookie, 'session cookie present').toBeDefined();
  expect(cookie).toMatchObject({ httpOnly: true, secure: true, sameSite: 'Strict', path: '/', domain: 'localhost' });
  // A Domain attribute would be stored as '.localhost'; a host-only cookie keeps the bare host.
  expect(cookie!.domain.startsWith('.')).toBe(false);

  // The Set-Cookie line itself, as the server sent it.
  const line = setCookies.find((value) => value.startsWith('__Host-keyward.session='));
  expect(line, 'Set-Cookie for the session').toBeDefined();
  const attributes = line!.split(';').slice(1).map((a) => a.trim().toLowerCase());
  expect(attributes).toContain('httponly');
  expect(attributes).toContain('secure');
  expect(attributes).toContain('samesite=strict');
  expect(attributes).toContain('path=/');
  expect(attributes.some((a) => a.startsWith('domain'))).toBe(false);

  // HttpOnly: page scripts cannot read it.
  expect(await page.evaluate(() => document.cookie)).not.toContain('keyward.session');
});

test('an unauthenticated browser fetch to the proxy gets a 401 JSON error', async ({ page }) => {
  await page.goto('/');
  await expect(page.getByText('You are not signed in.')).toBeVisible();
  for (const headers of [{ 'x-keyward-csrf': '1' }, {}] as Record<string, string>[]) {
    const response = await browserFetch(page, '/api/proxy/demo/hello', headers);
    expect(response.status).toBe(401);
    expect(response.contentType).toMatch(/^application\/json/);
    const body = JSON.parse(response.body) as { error: { code: string; message: string; requestId: string } };
    expect(body.error.code).toBe('unauthenticated');
    expect(typeof body.error.requestId).toBe('string');
  }
});

test('a signed-in fetch without the x-keyward-csrf header gets 403, with it 200', async ({ page, env }) => {
  await signInLocal(page, env.localUser.username, env.localUser.password);

  const without = await browserFetch(page, '/api/proxy/demo/hello');
  expect(without.status).toBe(403);
  expect(without.contentType).toMatch(/^application\/json/);
  expect(JSON.parse(without.body)).toMatchObject({ error: { code: 'csrf_failed' } });

  const wrongValue = await browserFetch(page, '/api/proxy/demo/hello', { 'x-keyward-csrf': '0' });
  expect(wrongValue.status).toBe(403);

  const withHeader = await browserFetch(page, '/api/proxy/demo/hello', { 'x-keyward-csrf': '1' });
  expect(withHeader.status).toBe(200);
  expect(JSON.parse(withHeader.body)).toMatchObject({ message: expect.stringContaining('Hello from the demo upstream') });
});

// Auth.js JWT sessions are stateless: clearing the cookie alone would leave a copied cookie valid until it
// expires. Sign-out revokes the session server-side (its sid), and every check consults the revocation list.
test('a session cookie copied before sign-out is refused after sign-out', async ({ page, env }) => {
  await signInLocal(page, env.localUser.username, env.localUser.password);
  const copied = (await page.context().cookies()).find((c) => c.name === '__Host-keyward.session');
  expect(copied).toBeDefined();
  await page.getByTestId('sign-out').click();
  await expect(page.getByText('You are not signed in.')).toBeVisible();
  await page.context().addCookies([copied!]);
  expect((await browserFetch(page, '/api/session')).status).toBe(401);
  expect((await browserFetch(page, '/api/proxy/demo/hello', { 'x-keyward-csrf': '1' })).status).toBe(401);
});
