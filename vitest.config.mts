import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: {
    alias: {
      '@': fileURLToPath(new URL('./', import.meta.url)),
      // `server-only` throws outside a React Server bundle; in Node tests the modules are server code anyway.
      'server-only': fileURLToPath(new URL('./tests/fixtures/server-only.ts', import.meta.url)),
    },
  },
  test: {
    environment: 'node',
    server: { deps: { inline: ['next-auth'] } },
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Integration tests start real servers on loopback ports; keep files in separate workers.
    pool: 'forks',
    projects: [
      { extends: true, test: { name: 'unit', include: ['tests/unit/**/*.test.ts'] } },
      {
        extends: true,
        test: {
          name: 'integration',
          include: ['tests/integration/**/*.test.ts'],
          // A private redis-server for the run (tests/fixtures/redis-global-setup.ts): no test touches the
          // machine's Redis.
          globalSetup: ['tests/fixtures/redis-global-setup.ts'],
          // One file at a time, on any machine (a 2-core CI runner gets 1 worker anyway): files that run
          // two `next start` servers, scrypt sign-ins and 200-call bursts must not starve each other into
          // store timeouts, which would fail a test for the machine's sake rather than the code's.
          maxWorkers: 1,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
