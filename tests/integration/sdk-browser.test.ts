import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type BrowserContext, type Page } from '@playwright/test';
import { build } from 'esbuild';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { openai } from '../../lib/core/presets';
import { SESSION_COOKIE } from '../../lib/core/session/session';
import { findLeak } from '../fixtures/claims-session';
import { FAKE_TOKENS, type FakeApi } from '../fixtures/fake-apis';
import { everythingFakesReceived, sdkTestPolicy, startKeyward, type KeywardServer } from '../fixtures/keyward-server';
import { BROWSER_PLACEHOLDER } from '../fixtures/sdk-placeholder';

/**
 * The SDKs in a real browser (the system Chromium, as playwright.config.ts uses; nothing is downloaded):
 * tests/fixtures/sdk-page.tsx, bundled with esbuild and served from Keyward's own origin, renders the AI SDK's
 * `useChat` hook (with `DirectChatTransport`: the agent runs in the page, its model calls go through Keyward)
 * and runs the `openai` SDK with `dangerouslyAllowBrowser`. The browser itself adds the session cookie, Origin
 * and Fetch Metadata; the page holds no key, only the placeholder `apiKey: 'keyward'`.
 */

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let kw: KeywardServer;
let fake: FakeApi;
let browser: Browser;
let context: BrowserContext;
let page: Page;
let cookieValue: string;

async function bundlePage(): Promise<string> {
  const result = await build({
    entryPoints: [fileURLToPath(new URL('../fixtures/sdk-page.tsx', import.meta.url))],
    bundle: true,
    write: false,
    format: 'iife',
    platform: 'browser',
    target: 'chrome120',
    jsx: 'automatic',
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'silent',
  });
  return result.outputFiles[0]!.text;
}

beforeAll(async () => {
  const script = await bundlePage();
  kw = await startKeyward(['openai'], (fakes) => [openai({ baseUrl: `${fakes.openai!.origin}/v1/`, ...sdkTestPolicy })], {
    pages: {
      '/chat': { contentType: 'text/html; charset=utf-8', body: '<!doctype html><meta charset="utf-8"><title>SDKs</title><div id="root"></div><script src="/chat.js"></script>' },
      '/chat.js': { contentType: 'text/javascript; charset=utf-8', body: script },
    },
  });
  fake = kw.fakes.openai!;
  cookieValue = (await kw.cookie()).slice(SESSION_COOKIE.length + 1);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run'] });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  if (!kw) return;
  const received = everythingFakesReceived(kw.fakes);
  expect(findLeak(received, [BROWSER_PLACEHOLDER, cookieValue]), 'a client credential reached the API').toBeNull();
  expect(fake.requests.every((request) => request.headers.authorization === `Bearer ${fake.key}`)).toBe(true);
  expect(kw.leak(), 'a secret leaked').toBeNull();
  await kw.close();
});

beforeEach(async () => {
  fake.stepwise(false);
  context = await browser.newContext();
  // The session cookie as sign-in sets it (__Host-: Secure, Path=/, no Domain; HttpOnly; SameSite=Strict).
  // (Chromium's DevTools protocol refuses a __Host- cookie given by `url`; a host name without a leading dot
  // is a host-only cookie.) Chromium treats loopback as a secure context, so it sends it over http here.
  await context.addCookies([{ name: SESSION_COOKIE, value: cookieValue, domain: '127.0.0.1', path: '/', secure: true, httpOnly: true, sameSite: 'Strict' }]);
  page = await context.newPage();
  await page.goto(`${kw.origin}/chat`);
  await page.waitForSelector('#status');
});

afterEach(async () => {
  await context?.close();
});

/** Waits until the assistant's message on the page reads `text` (a wait for a state, not a timed assertion). */
async function assistantShows(text: string): Promise<void> {
  await page.waitForFunction((expected) => document.querySelector('li[data-role="assistant"]')?.textContent === expected, text);
}

describe('useChat (AI SDK) in the browser through Keyward', () => {
  it('renders the answer token by token', async () => {
    fake.stepwise(true);
    await page.click('#send');
    for (let n = 1; n <= FAKE_TOKENS.length; n++) {
      await assistantShows(FAKE_TOKENS.slice(0, n).join(''));
      // The page shows N tokens while the fake has sent exactly N.
      expect(fake.tokensSent).toBe(n);
      fake.step();
    }
    await page.waitForFunction(() => document.getElementById('status')?.textContent === 'ready');
    const request = fake.requests.at(-1)!;
    expect(request.url).toBe('/v1/responses');
    expect(request.headers.authorization).toBe(`Bearer ${fake.key}`);
    expect(request.headers.cookie).toBeUndefined();
  });

  it('stop() mid-answer closes the connection to the API', async () => {
    fake.stepwise(true);
    await page.click('#send');
    await assistantShows(FAKE_TOKENS[0]!);
    const request = fake.requests.at(-1)!;
    await page.click('#stop');
    await request.closed;
    expect(request.closedEarly).toBe(true);
    expect(fake.tokensSent).toBe(1);
  });

  it('without a session the chat shows an error, and nothing reaches the API', async () => {
    await page.context().clearCookies();
    const before = fake.requests.length;
    await page.click('#send');
    await page.waitForFunction(() => document.getElementById('error')?.textContent === 'error');
    expect(fake.requests.length).toBe(before);
    expect(kw.responses.at(-1)!.status).toBe(401);
  });
});

describe('the openai SDK in the browser through Keyward (dangerouslyAllowBrowser, placeholder apiKey)', () => {
  it('streams token by token', async () => {
    fake.stepwise(true);
    const done = page.evaluate(() => (window as unknown as { streamWithOpenAI(): Promise<string> }).streamWithOpenAI());
    for (let n = 1; n <= FAKE_TOKENS.length; n++) {
      await page.waitForFunction((expected) => document.getElementById('sdk')?.textContent === expected, FAKE_TOKENS.slice(0, n).join(''));
      expect(fake.tokensSent).toBe(n);
      fake.step();
    }
    expect(await done).toBe(FAKE_TOKENS.join(''));
    expect(fake.requests.at(-1)!.url).toBe('/v1/chat/completions');
  });
});
