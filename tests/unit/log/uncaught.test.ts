import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { randomSecret } from '../../fixtures/secrets';

/**
 * An uncaught exception in a process of Keyward's own (npm start's fast lane, server.ts): Node would print it with
 * its own writer, secret and all; printUncaughtErrorsScrubbed prints it through the scrubbed console and exits 1.
 * Each case is a real Node process (tsx, as `npm run keyward` runs), since the point is what Node does at the end.
 */
const ROOT = resolve(import.meta.dirname, '../../..');
const dir = mkdtempSync(join(tmpdir(), 'keyward-uncaught-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(install: boolean, failure: string): { status: number | null; stderr: string; key: string } {
  const key = randomSecret('uncaught');
  const file = join(dir, `case-${Math.random().toString(36).slice(2)}.ts`);
  writeFileSync(
    file,
    [
      `import { logScrubber } from ${JSON.stringify(join(ROOT, 'lib/core/log/logger.ts'))};`,
      `import { printUncaughtErrorsScrubbed, scrubConsole } from ${JSON.stringify(join(ROOT, 'lib/core/log/console.ts'))};`,
      `const key = process.env.CASE_KEY!;`,
      `logScrubber.add([key]);`,
      `scrubConsole();`,
      install ? `printUncaughtErrorsScrubbed();` : '',
      `setTimeout(() => { ${failure} }, 10);`,
    ].join('\n'),
  );
  const result = spawnSync(join(ROOT, 'node_modules/.bin/tsx'), ['--conditions=react-server', file], {
    cwd: ROOT,
    env: { ...process.env, CASE_KEY: key, NODE_OPTIONS: '' },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: result.status, stderr: result.stderr, key };
}

const THROWN = "throw new Error(`upstream refused https://api.example.test/v1?key=${key}`, { cause: { apiKey: key } });";
const REJECTED = "void Promise.reject(new TypeError(`bad header value ${key}`));";

describe('printUncaughtErrorsScrubbed', () => {
  it("without it Node prints an uncaught exception's secret itself (what this guards against)", () => {
    const { status, stderr, key } = run(false, THROWN);
    expect(status).toBe(1);
    expect(stderr).toContain(key);
  });

  it.each([
    ['an uncaught exception (message and cause)', THROWN, 'An uncaught exception stops the process', 'upstream refused'],
    ['an unhandled rejection', REJECTED, 'An unhandled rejection stops the process', 'bad header value'],
  ])('%s is printed scrubbed, with its stack, and the process exits 1', (_, failure, heading, message) => {
    const { status, stderr, key } = run(true, failure);
    expect(status).toBe(1);
    expect(stderr).toContain(heading);
    expect(stderr).toContain(message);
    expect(stderr).toContain('[REDACTED]');
    expect(stderr).toMatch(/\n\s+at /);
    expect(stderr).not.toContain(key);
    expect(stderr).not.toContain(key.slice(0, 12));
  });
});
