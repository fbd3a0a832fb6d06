import type { Page, Response } from '@playwright/test';
import { expect, productionTest, signIn } from './production';

/**
 * The pages' Content-Security-Policy (proxy.ts) on a production deployment: each page load has a nonce of its
 * own, every script Next.js rendered carries it and runs (the page hydrates), and script that markup injected
 * into a page (an XSS) does not run. Without it, such a script could call /api/proxy as the signed-in user.
 */
const test = productionTest();

/** The page's script-src nonce, and the policy it came in. */
function nonceOf(response: Response): { nonce: string; policy: string } {
  const policy = response.headers()['content-security-policy'] ?? '';
  const nonce = /'nonce-([A-Za-z0-9+/]+={0,2})'/.exec(policy)?.[1];
  expect(nonce, policy).toBeDefined();
  return { nonce: nonce!, policy };
}

/** Checks a page load: its own nonce on every script of the HTML, the page hydrated, no policy violation. */
async function expectNonced(page: Page, path: string, violations: readonly string[]): Promise<string> {
  const response = (await page.goto(path))!;
  const { nonce, policy } = nonceOf(response);
  expect(policy).toContain("'strict-dynamic'");
  expect(policy).not.toContain('unsafe-inline');
  expect(policy).not.toContain('unsafe-eval');
  const scripts = [...(await response.text()).matchAll(/<script\b[^>]*>/g)].map(([tag]) => tag);
  expect(scripts.length, path).toBeGreaterThan(0);
  for (const tag of scripts) expect(tag, path).toContain(`nonce="${nonce}"`);
  // The App Router's client runtime ran (it sets window.next when it starts).
  await page.waitForFunction(() => (window as { next?: { version?: string } }).next?.version !== undefined);
  expect(violations, path).toEqual([]);
  return nonce;
}

test('every page runs the scripts it was rendered with, under a nonce of its own; injected markup runs nothing', async ({
  page,
  prod,
}) => {
  const violations: string[] = [];
  page.on('console', (message) => {
    if (/Content Security Policy/i.test(message.text())) violations.push(message.text());
  });
  const first = await expectNonced(page, '/signin', violations);
  expect(await expectNonced(page, '/signin', violations)).not.toBe(first);
  await signIn(page, prod.user.username, prod.user.password);
  for (const path of ['/', '/usage', '/no-such-page']) await expectNonced(page, path, violations);
  await page.goto('/');

  // What an XSS would inject: an inline event handler, and a script element the page's own code did not make.
  const outcome = await page.evaluate(
    () =>
      new Promise<{ directives: string[]; ran: unknown }>((resolve) => {
        const directives: string[] = [];
        document.addEventListener('securitypolicyviolation', (event) => directives.push(event.violatedDirective));
        document.body.insertAdjacentHTML(
          'beforeend',
          '<img src="/no-such-image.png" onerror="window.__injected = true">',
        );
        const parsed = new DOMParser().parseFromString('<script>window.__injected = true</script>', 'text/html');
        document.body.append(document.importNode(parsed.querySelector('script')!, true));
        setTimeout(() => resolve({ directives, ran: (window as { __injected?: unknown }).__injected }), 1_000);
      }),
  );
  expect(outcome.ran).toBeUndefined();
  expect(outcome.directives.length).toBeGreaterThan(0);
  for (const directive of outcome.directives) expect(directive).toMatch(/^script-src/);
});
