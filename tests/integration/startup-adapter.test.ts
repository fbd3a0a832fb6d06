import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../fixtures/app-server';
import { commandEnv } from '../fixtures/processes';
import { testSessionSecrets } from '../fixtures/secrets';

/**
 * A TypeScript upstream whose setting is bad (tests/fixtures/bad-adapter/upstreams.ts: a base URL read from the
 * environment when the module loads) stops start-up as any other bad setting does: exit 1, "Keyward cannot start."
 * and the field, never the value, and no stack. Both doors, from source with tsx and a tsconfig that maps
 * `@/upstreams` to the fixture (a build holds the repository's own upstreams): `npm start`'s server.ts, and
 * instrumentation.ts's `register()` as `next start` runs it. The check runs before Next.js starts, so no build is
 * needed.
 */
const ROOT = process.cwd();
const TSX = join(ROOT, 'node_modules/.bin/tsx');
const FIXTURE = join(ROOT, 'tests/fixtures/bad-adapter');
const BAD_BASE_URL = 'https://api.weather.example/v2/?token=canary-in-the-query';
const FIELD_LINE = 'upstreams.weather.baseUrl: must not contain a query or fragment';

let dir: string;
let tsconfig: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keyward-bad-adapter-'));
  // The repository's tsconfig.json with `@/upstreams` (and `server-only`, which throws outside a React Server
  // bundle, as vitest.config.mts aliases it) mapped to the fixtures: `paths` replaces the extended one whole.
  const root = JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8')) as { compilerOptions: { paths: Record<string, string[]> } };
  const paths: Record<string, string[]> = {
    '@/upstreams': [join(FIXTURE, 'upstreams.ts')],
    'server-only': [join(ROOT, 'tests/fixtures/server-only.ts')],
  };
  for (const [name, targets] of Object.entries(root.compilerOptions.paths)) paths[name] = targets.map((target) => resolve(ROOT, target));
  tsconfig = join(dir, 'tsconfig.json');
  writeFileSync(tsconfig, JSON.stringify({ extends: join(ROOT, 'tsconfig.json'), compilerOptions: { paths } }));
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function run(args: string[], env: Record<string, string>, cwd = ROOT): Promise<{ code: number | null; output: string }> {
  const child = spawn(TSX, ['--tsconfig', tsconfig, ...args], {
    cwd,
    env: { ...commandEnv(), NODE_ENV: 'production', ...testSessionSecrets(), AUTH_TRUST_HOST: 'true', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  return { code, output };
}

function expectOneLineRefusal({ code, output }: { code: number | null; output: string }): void {
  expect(code, output).toBe(1);
  expect(output).toContain(`Keyward cannot start.\nInvalid upstream "weather":\n  - ${FIELD_LINE}\n`);
  expect(output).not.toMatch(/\n\s+at /); // no stack
  expect(output).not.toContain('canary-in-the-query');
}

describe('a TypeScript upstream with a bad setting stops start-up in a line naming the field', () => {
  it('npm start (server.ts), before anything listens', async () => {
    const port = await freePort();
    expectOneLineRefusal(await run([join(ROOT, 'server.ts'), '-p', String(port), '-H', '127.0.0.1'], { WEATHER_BASE_URL: BAD_BASE_URL }));
  });

  it('npm start reads the setting from a .env file, as next start does', async () => {
    const cwd = mkdtempSync(join(dir, 'app-'));
    writeFileSync(join(cwd, '.env'), `WEATHER_BASE_URL=${BAD_BASE_URL}\n`);
    const port = await freePort();
    expectOneLineRefusal(await run([join(ROOT, 'server.ts'), '-p', String(port), '-H', '127.0.0.1'], {}, cwd));
  });

  it("next start (instrumentation.ts's register())", async () => {
    expectOneLineRefusal(await run([join(FIXTURE, 'register.ts')], { WEATHER_BASE_URL: BAD_BASE_URL }));
  });
});

describe("a fault in the app's upstream code stops start-up with its stack, not the values it failed on", () => {
  // Node prints an uncaught error with its properties: a failed `new URL(…)` shows the whole setting in `input`.
  const PARSED = 'https//user:canary-credential-in-a-url@api.weather.example/v2/';

  function expectFault({ code, output }: { code: number | null; output: string }): void {
    expect(code, output).toBe(1);
    expect(output).toContain('Keyward cannot start: loading the upstreams failed (ERR_INVALID_URL):\nTypeError: Invalid URL\n');
    expect(output).toMatch(/\n\s+at .*upstreams\.ts/); // where, in the app's code
    expect(output).not.toContain('canary-credential');
  }

  it('npm start (server.ts)', async () => {
    const port = await freePort();
    expectFault(await run([join(ROOT, 'server.ts'), '-p', String(port), '-H', '127.0.0.1'], { WEATHER_BASE_URL_PARSED: PARSED }));
  });

  it("next start (instrumentation.ts's register())", async () => {
    expectFault(await run([join(FIXTURE, 'register.ts')], { WEATHER_BASE_URL_PARSED: PARSED }));
  });
});
