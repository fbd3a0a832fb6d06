import { defineConfig, devices } from '@playwright/test';

/**
 * End-to-end tests against the production build (`next build` must have run; `npm test` does it first).
 * tests/e2e/fixtures.ts starts, once per worker, the demo upstream, a real OpenID Connect provider and
 * `next start`, all on loopback with fresh random secrets, and stops them afterwards.
 * Chromium is the system one (Debian's /usr/bin/chromium, or CHROMIUM_PATH): browsers are never downloaded.
 */
export default defineConfig({
  testDir: 'tests/e2e',
  workers: 1,
  fullyParallel: false,
  forbidOnly: !!process.env.CI,
  retries: 0,
  reporter: 'list',
  timeout: 60_000,
  // The whole suite takes about 7 min on a 2-core machine (its detector tests wait for a fresh minute, up to 30 s
  // each); this is a safety net against a hang, not a target.
  globalTimeout: 15 * 60_000,
  expect: { timeout: 10_000 },
  outputDir: 'test-results',
  use: {
    ...devices['Desktop Chrome'],
    headless: true,
    actionTimeout: 10_000,
    navigationTimeout: 15_000,
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--no-first-run',
        '--disable-sync',
        '--disable-quic',
      ],
    },
  },
});
