import { signInAttempt, startApp } from '../fixtures/app-server';
import { uncalledUpstream } from '../fixtures/config';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { writeUsersFile } from '../fixtures/users';
import { browserFetch, expect, fillLocalSignIn, signInLocal, test } from './fixtures';

declare global {
  interface Window {
    __kwEventCounts?: number[];
  }
}

test('local user: sign in, call the upstream (GET, POST, SSE), sign out', async ({ page, env }) => {
  await page.goto('/');
  await expect(page.getByText('You are not signed in.')).toBeVisible();

  await signInLocal(page, env.localUser.username, env.localUser.password);
  await expect(page.getByTestId('signed-in')).toContainText(`Signed in as ${env.localUser.username}`);
  await expect(page.getByTestId('signed-in')).toContainText('roles: user');

  // GET /hello: the upstream only answers 200 when Keyward attached its key.
  await page.getByTestId('call-hello').click();
  await expect(page.getByTestId('status')).toHaveText('200');
  await expect(page.getByTestId('body')).toContainText('Hello from the demo upstream.');

  // POST /echo: body validated, re-serialised and forwarded; the upstream echoes what it received.
  await page.getByTestId('call-echo').click();
  await expect(page.locator('h2', { hasText: 'POST /echo' })).toBeVisible();
  await expect(page.getByTestId('status')).toHaveText('200');
  const echoed = JSON.parse((await page.getByTestId('body').textContent()) ?? '') as { received: string };
  // The route's contract re-serialises the body and stamps the caller's id into `user` (an identity field).
  expect(JSON.parse(echoed.received)).toEqual({ note: 'hello upstream', user: expect.stringMatching(/^local:/) });

  // SSE: record every rendered state of the events list; a buffered stream would render all 5 at once.
  await page.evaluate(() => {
    const counts: number[] = [];
    window.__kwEventCounts = counts;
    const observer = new MutationObserver(() => {
      const text = document.querySelector('[data-testid="events"]')?.textContent ?? '';
      const n = text.split('\n').filter((line) => line.includes('event: tick')).length;
      if (n > 0 && counts.at(-1) !== n) counts.push(n);
    });
    observer.observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await page.getByTestId('call-events').click();
  await expect(page.getByTestId('events')).toContainText('"n":1');
  await expect(page.getByTestId('events')).toContainText('"n":5');
  await expect(page.getByTestId('call-events')).toBeEnabled(); // the stream has ended
  const lines = ((await page.getByTestId('events').textContent()) ?? '').split('\n');
  expect(lines).toHaveLength(5);
  lines.forEach((line, i) => expect(line).toContain(`"n":${i + 1}`));
  // The page rendered a state with only the first event (the fifth not there yet), then more, up to 5.
  const counts = await page.evaluate(() => window.__kwEventCounts ?? []);
  expect(counts[0]).toBe(1);
  expect(counts).toEqual([...counts].sort((a, b) => a - b));
  expect(counts.at(-1)).toBe(5);
  expect(counts.length).toBeGreaterThan(1);

  // Sign out: back to the signed-out view, the session cookie is gone, and the API says 401.
  await page.getByTestId('sign-out').click();
  await expect(page.getByText('You are not signed in.')).toBeVisible();
  expect((await page.context().cookies()).map((c) => c.name)).not.toContain('__Host-keyward.session');
  const session = await browserFetch(page, '/api/session');
  expect(session.status).toBe(401);
  expect(JSON.parse(session.body)).toMatchObject({ error: { code: 'unauthenticated' } });
  const proxied = await browserFetch(page, '/api/proxy/demo/hello', { 'x-keyward-csrf': '1' });
  expect(proxied.status).toBe(401);
});

test('demo page: a sign-out or an own-key store that fails on the network is said, and loses nothing', async ({ page, env }) => {
  await page.goto('/');
  await signInLocal(page, env.localUser.username, env.localUser.password);
  await expect(page.getByTestId('signed-in')).toBeVisible();

  // Storing the key fails on the way: said, and the key stays in its field for another try.
  await page.route('**/api/keys/demo-own', (route) => (route.request().method() === 'PUT' ? route.abort('connectionreset') : route.fallback()));
  const draft = 'demo-user-network-test-1234';
  await page.getByTestId('own-key-input').fill(draft);
  await page.getByTestId('own-key-save').click();
  await expect(page.getByTestId('own-key-message')).toContainText('Your key was not stored: Keyward could not be reached.');
  await expect(page.getByTestId('own-key-input')).toHaveValue(draft);
  await page.unroute('**/api/keys/demo-own');

  // Sign-out fails on the network: the page says so and still shows the session (it is still valid).
  await page.route('**/api/auth/signout', (route) => route.abort('connectionreset'));
  await page.getByTestId('sign-out').click();
  await expect(page.getByTestId('sign-out-error')).toContainText('Sign-out failed: you are still signed in.');
  await expect(page.getByTestId('signed-in')).toBeVisible();
  expect((await browserFetch(page, '/api/session')).status).toBe(200);
  await page.unroute('**/api/auth/signout');
  await page.getByTestId('sign-out').click();
  await expect(page.getByText('You are not signed in.')).toBeVisible();
  expect((await browserFetch(page, '/api/session')).status).toBe(401);
});

test('local user: a wrong password does not sign in', async ({ page, env }) => {
  await page.goto('/');
  await page.getByTestId('sign-in').click();
  await fillLocalSignIn(page, env.localUser.username, `${env.localUser.password}-wrong`);
  await expect(page.getByTestId('sign-in-error')).toHaveText('Wrong username or password.');
  expect((await page.context().cookies()).map((c) => c.name)).not.toContain('__Host-keyward.session');
  expect((await browserFetch(page, '/api/session')).status).toBe(401);
});

test('local user: a username others locked still signs in from a browser it signed in from before (device cookie)', async ({ browser }) => {
  test.setTimeout(120_000);
  // An app of its own with the attempt limit at 4 (the suite's app lifts it): the test locks this username.
  const dora = { username: 'dora', password: randomSecret('pw'), roles: ['user'] };
  const app = await startApp({
    ...testSessionSecrets(),
    KEYWARD_USERS_FILE: await writeUsersFile([dora]),
    ...uncalledUpstream(),
    KEYWARD_STORE: 'memory',
    KEYWARD_SIGNIN_MAX_ATTEMPTS: '4',
  });
  const known = await browser.newContext({ baseURL: app.url });
  const stranger = await browser.newContext({ baseURL: app.url });
  try {
    const page = await known.newPage();
    const signIn = async (on: typeof page) => {
      await on.goto('/signin');
      await fillLocalSignIn(on, dora.username, dora.password);
    };
    await signIn(page);
    await expect(page).toHaveURL(`${app.url}/`);
    const device = (await known.cookies()).find((c) => c.name === '__Host-keyward.device');
    expect(device).toMatchObject({ httpOnly: true, secure: true, sameSite: 'Strict', path: '/' });
    await known.clearCookies({ name: '__Host-keyward.session' });
    expect((await browserFetch(page, '/api/session')).status).toBe(401);

    // Someone else posts wrong passwords for the username from addresses of their own (one proxy hop is trusted,
    // so X-Forwarded-For names the client) until it is locked: the right password is refused too.
    for (let i = 1; i <= 4; i++) await signInAttempt(app.url, dora.username, `wrong-${i}`, { 'x-forwarded-for': `198.51.100.${i}` });
    expect((await signInAttempt(app.url, dora.username, dora.password, { 'x-forwarded-for': '198.51.100.5' })).response.status).toBe(429);

    // The browser that signed in before sends its device cookie with the sign-in form's request: it signs in.
    await signIn(page);
    await expect(page).toHaveURL(`${app.url}/`);
    const session = await browserFetch(page, '/api/session');
    expect(session.status).toBe(200);
    expect(JSON.parse(session.body)).toMatchObject({ user: { id: 'local:dora' } });

    // A browser without the cookie meets the lock, and the page says so.
    const other = await stranger.newPage();
    await signIn(other);
    await expect(other.getByTestId('sign-in-error')).toContainText('Too many sign-in attempts');
  } finally {
    await known.close();
    await stranger.close();
    await app.stop();
  }
});
