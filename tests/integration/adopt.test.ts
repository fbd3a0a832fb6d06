import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, signIn, startApp, type AppServer } from '../fixtures/app-server';
import { findLeak, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { commandEnv, runToEnd, type RunOptions } from '../fixtures/processes';

/**
 * README "Add Keyward to an existing Next.js app", run as written: `npm pack` the package built from lib/,
 * create a fresh Next.js app in a temporary folder (written by hand, as create-next-app would, which needs its
 * templates from the network), install the tarball and the app's dependencies from the npm cache, add the
 * README's files (read from the README itself, so the two cannot drift), hash a password with the README's
 * command, `next build` once, `next start` with only the README's settings, sign in through Auth.js's
 * credentials flow and proxy a call to a loopback upstream.
 */
const cwd = process.cwd();
const SECTION = 'Add Keyward to an existing Next.js app';
const manifest = JSON.parse(readFileSync(join(cwd, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

/** The README section's text, up to the next `## ` heading. */
function readmeSection(): string {
  const readme = readFileSync(join(cwd, 'README.md'), 'utf8');
  const start = readme.indexOf(`\n## ${SECTION}\n`);
  if (start < 0) throw new Error(`README.md has no "## ${SECTION}" section`);
  const end = readme.indexOf('\n## ', start + 1);
  return readme.slice(start, end < 0 ? undefined : end);
}

interface CodeBlock {
  readonly lang: string;
  readonly body: string;
}

function codeBlocks(text: string): CodeBlock[] {
  return [...text.matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].map(([, lang, body]) => ({ lang: lang!, body: body! }));
}

/** The TypeScript blocks whose first line names their file (`// app/api/…/route.ts`): path → content. */
function readmeFiles(blocks: readonly CodeBlock[]): Map<string, string> {
  const files = new Map<string, string>();
  for (const { lang, body } of blocks) {
    const named = /^\/\/ (\S+\.tsx?)\n/.exec(body);
    if (lang === 'ts' && named) files.set(named[1]!, body.slice(named[0].length));
  }
  return files;
}

function onlyBlock(blocks: readonly CodeBlock[], lang: string, containing: string): string {
  const found = blocks.filter((block) => block.lang === lang && block.body.includes(containing));
  if (found.length !== 1)
    throw new Error(
      `README "${SECTION}": expected one \`\`\`${lang} block with "${containing}", found ${found.length}`,
    );
  return found[0]!.body;
}

const blocks = codeBlocks(readmeSection());
const files = readmeFiles(blocks);
const configJson = onlyBlock(blocks, 'json', '"upstreams"');
const settingsBlock = onlyBlock(blocks, 'bash', 'AUTH_SECRET=');
const hashCommand = onlyBlock(blocks, 'bash', 'hashPassword');
const settingNames = [...settingsBlock.matchAll(/^([A-Z][A-Z0-9_]*)=/gm)].map(([, name]) => name!);
/** The README's example upstream origin, replaced by the loopback upstream's in the test app. */
const EXAMPLE_BASE = 'https://api.example.com/v1/';

describe(`README "${SECTION}"`, () => {
  it("shows this repository's own route handlers and instrumentation.ts, literally", () => {
    const shared = [...files.keys()].filter((path) => path !== 'keyward.ts');
    expect(shared).toEqual(
      expect.arrayContaining([
        'app/api/auth/[...nextauth]/route.ts',
        'app/api/proxy/[upstream]/[[...path]]/route.ts',
        'instrumentation.ts',
      ]),
    );
    for (const path of shared) expect(files.get(path), path).toBe(readFileSync(join(cwd, path), 'utf8'));
    expect(files.get('keyward.ts')).toContain("from 'keyward/next'");
  });
});

/**
 * Only what a command needs from this process's environment (commandEnv). NODE_ENV is production (as `next build`
 * sets it) except for `npm install`, which would then leave out TypeScript.
 */
function baseEnv(NODE_ENV: 'development' | 'production' = 'production'): NodeJS.ProcessEnv {
  return { NODE_ENV, ...commandEnv() };
}

/** Runs a command to completion (see runToEnd), in this test's base environment unless `env` says otherwise. */
function run(command: string, args: readonly string[], options: Omit<RunOptions, 'env'> & { readonly env?: NodeJS.ProcessEnv }): Promise<string> {
  return runToEnd(command, args, { ...options, env: options.env ?? baseEnv() });
}

/** The fresh app's own files, as create-next-app would write them (TypeScript, App Router, the `@/*` alias). */
function writeFreshApp(dir: string, tarball: string): void {
  const version = (name: string) => manifest.dependencies[name] ?? manifest.devDependencies[name]!;
  const pin = (names: string[]) => Object.fromEntries(names.map((name) => [name, version(name)]));
  const packageJson = {
    name: 'existing-app',
    private: true,
    scripts: { build: 'next build', start: 'next start' },
    dependencies: { [manifest.name]: `file:${tarball}`, ...pin(['next', 'next-auth', 'react', 'react-dom']) },
    devDependencies: pin(['@types/node', '@types/react', '@types/react-dom', 'typescript']),
  };
  const tsconfig = {
    compilerOptions: {
      target: 'ES2017',
      lib: ['dom', 'dom.iterable', 'esnext'],
      allowJs: true,
      skipLibCheck: true,
      strict: true,
      noEmit: true,
      esModuleInterop: true,
      module: 'esnext',
      moduleResolution: 'bundler',
      resolveJsonModule: true,
      isolatedModules: true,
      jsx: 'react-jsx',
      incremental: true,
      plugins: [{ name: 'next' }],
      paths: { '@/*': ['./*'] },
    },
    include: ['next-env.d.ts', '**/*.ts', '**/*.tsx', '.next/types/**/*.ts', '.next/dev/types/**/*.ts'],
    exclude: ['node_modules'],
  };
  write(dir, 'package.json', `${JSON.stringify(packageJson, null, 2)}\n`);
  write(dir, 'tsconfig.json', `${JSON.stringify(tsconfig, null, 2)}\n`);
  write(
    dir,
    'app/layout.tsx',
    [
      "import type { ReactNode } from 'react';",
      '',
      'export default function RootLayout({ children }: { children: ReactNode }) {',
      '  return (',
      '    <html lang="en">',
      '      <body>{children}</body>',
      '    </html>',
      '  );',
      '}',
      '',
    ].join('\n'),
  );
  write(dir, 'app/page.tsx', 'export default function Home() {\n  return <main>An existing app</main>;\n}\n');
}

function write(dir: string, path: string, content: string): void {
  mkdirSync(dirname(join(dir, path)), { recursive: true });
  writeFileSync(join(dir, path), content);
}

describe('the packed package, adopted by a fresh Next.js app', () => {
  const password = randomSecret('pw');
  const catalogKey = randomSecret('catalog');
  const weatherKey = randomSecret('weather');
  const sessionSecrets = testSessionSecrets();
  const secrets = [catalogKey, weatherKey, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET];
  let work: string;
  let appDir: string;
  let upstream: TestUpstream;
  let app: AppServer;
  let packed: { filename: string; files: { path: string }[] };
  let settings: Record<string, string>;

  beforeAll(async () => {
    upstream = await startUpstream();
    work = mkdtempSync(join(tmpdir(), 'keyward-adopt-'));
    appDir = join(work, 'existing-app');

    // 1. The package, built from lib/ and packed by npm (README step 1: `npm run package`).
    const packageDir = join(work, 'package');
    await run(process.execPath, [join(cwd, 'scripts', 'build-package.mjs'), '--out', packageDir], {
      cwd,
      timeoutMs: 180_000,
    });
    [packed] = JSON.parse(
      await run('npm', ['pack', packageDir, '--json', '--pack-destination', work], { cwd: work, timeoutMs: 120_000 }),
    );

    // 2. A fresh app, the package and the app's dependencies installed from the npm cache (this repository's
    //    install warmed it; only the npm registry is reachable for anything missing).
    writeFreshApp(appDir, join(work, packed.filename));
    await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund'], {
      cwd: appDir,
      env: baseEnv('development'),
      timeoutMs: 420_000,
    });

    // 3. The README's files; its JSON upstream calls the loopback upstream instead of api.example.com.
    for (const [path, content] of files) write(appDir, path, content);
    expect(configJson).toContain(EXAMPLE_BASE);
    write(appDir, 'config/keyward.json', configJson.replace(EXAMPLE_BASE, `${upstream.origin}/v1/`));

    // 4. A users file with a hash from the README's command (the package's JavaScript, loaded by plain Node).
    const hash = (
      await run('bash', ['-c', hashCommand], { cwd: appDir, input: `${password}\n`, timeoutMs: 60_000 })
    ).trim();
    const usersFile = join(work, 'users.json');
    writeFileSync(usersFile, JSON.stringify({ users: [{ username: 'alice', passwordHash: hash, roles: ['user'] }] }), {
      mode: 0o600,
    });

    // 5. One production build, then `next start` with the README's settings and nothing else.
    await run(process.execPath, [join(appDir, 'node_modules', 'next', 'dist', 'bin', 'next'), 'build'], {
      cwd: appDir,
      timeoutMs: 480_000,
    });
    const port = await freePort();
    settings = {
      ...sessionSecrets,
      AUTH_URL: `http://localhost:${port}`,
      KEYWARD_CONFIG: 'config/keyward.json',
      KEYWARD_USERS_FILE: usersFile,
      CATALOG_API_KEY: catalogKey,
      WEATHER_API_KEY: weatherKey,
    };
    app = await startApp(settings, { cwd: appDir, port, testDefaults: false });
  }, 1_200_000);

  afterAll(async () => {
    await app?.stop();
    await upstream?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('packs compiled JavaScript, types and the JSON Schema, and nothing else', () => {
    const paths = packed.files.map((file) => file.path);
    for (const path of paths)
      expect(path).toMatch(/^(package\.json|README\.md|keyward\.schema\.json|dist\/.+\.js|types\/lib\/.+\.d\.ts)$/);
    const installed = JSON.parse(readFileSync(join(appDir, 'node_modules', 'keyward', 'package.json'), 'utf8'));
    expect(installed.private).toBeUndefined();
    expect(installed.version).toBe(manifest.version);
    expect(Object.keys(installed.exports)).toEqual(
      expect.arrayContaining(['./next', './core', './presets', './client', './node', './store']),
    );
    for (const entry of Object.values(installed.exports) as Array<string | { types: string; default: string }>) {
      for (const target of typeof entry === 'string' ? [entry] : [entry.types, entry.default])
        expect(paths).toContain(target.slice(2));
    }
    expect(installed.peerDependencies['next-auth']).toBe(manifest.dependencies['next-auth']);
    // Peers are the app's own: one Next.js in the app, not a second one under keyward/.
    expect(existsSync(join(appDir, 'node_modules', 'keyward', 'node_modules', 'next'))).toBe(false);
  });

  // keyward/next is for Next's bundler only: Next.js and Auth.js import `next/server`, which plain Node cannot resolve.
  it('loads in plain Node: keyward/client anywhere, the other server entry points only under react-server', async () => {
    const load = (entry: string, conditions: string[]) =>
      run(process.execPath, [...conditions, '--input-type=module', '-e', `await import('${entry}')`], {
        cwd: appDir,
        timeoutMs: 60_000,
      });
    await load('keyward/client', []);
    for (const entry of ['keyward/core', 'keyward/presets', 'keyward/store', 'keyward/node'])
      await load(entry, ['--conditions=react-server']);
    // `server-only` kept its import: outside a server bundle the server code refuses to load.
    await expect(load('keyward/core', [])).rejects.toThrow(/only be used from a Server Component/);
  });

  it("the README's settings are exactly what the app was started with", () => {
    expect(Object.keys(settings).sort()).toEqual([...settingNames].sort());
  });

  it('signs in with a local user and proxies a call with the key attached, never returned', async () => {
    const cookie = await signIn(app.url, 'alice', password);
    const session = await fetch(`${app.url}/api/session`, { headers: { cookie } });
    expect(session.status).toBe(200);
    expect(await session.json()).toMatchObject({ user: { id: 'local:alice' }, roles: ['user'] });
    // A method the endpoint does not take: Keyward's JSON 405 (keyward.everyMethod), not Next's empty one.
    const wrongMethod = await fetch(`${app.url}/api/session`, { method: 'PUT', headers: { cookie } });
    expect([wrongMethod.status, wrongMethod.headers.get('allow')]).toEqual([405, 'GET, HEAD']);
    expect(await wrongMethod.json()).toMatchObject({ error: { code: 'method_not_allowed' } });

    const before = upstream.requests.length;
    const response = await fetch(`${app.url}/api/proxy/catalog/items/42`, {
      headers: { cookie, 'x-keyward-csrf': '1' },
    });
    const { status, text } = await responseText(response);
    expect(status).toBe(200);
    expect(upstream.requests).toHaveLength(before + 1);
    const seen = upstream.requests.at(-1)!;
    expect(seen.url).toBe('/v1/items/42');
    expect(seen.headers['x-api-key']).toBe(catalogKey);
    // The echo upstream sends the key back; the answer carries it scrubbed, and no other secret either.
    expect(text).toContain('[REDACTED]');
    expect(findLeak(text, secrets)).toBeNull();
  });

  it("refuses a call without a session, and knows keyward.ts's TypeScript upstream", async () => {
    const anonymous = await fetch(`${app.url}/api/proxy/catalog/items/42`, { headers: { 'x-keyward-csrf': '1' } });
    expect(anonymous.status).toBe(401);
    const cookie = await signIn(app.url, 'alice', password);
    const call = (path: string) =>
      fetch(`${app.url}/api/proxy/${path}`, { headers: { cookie, 'x-keyward-csrf': '1' } }).then((r) => r.json());
    // Declared in keyward.ts, so the upstream exists (without calling api.weather.example: no such route).
    expect(await call('weather/no-such-route')).toMatchObject({ error: { code: 'route_not_found' } });
    expect(await call('nowhere/items/1')).toMatchObject({ error: { code: 'upstream_not_found' } });
  });

  it("offers Auth.js's own sign-in page, with the local account's form", async () => {
    const page = await fetch(`${app.url}/api/auth/signin`);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain('name="username"');
    expect(html).toContain('name="password"');
  });

  it("stops `next start` through the README's instrumentation.ts when a setting is missing, naming it", async () => {
    const incomplete = Object.fromEntries(Object.entries(settings).filter(([name]) => name !== 'WEATHER_API_KEY'));
    const error = await startApp(incomplete, { cwd: appDir, testDefaults: false }).then(
      async (started) => {
        await started.stop();
        throw new Error('the server started');
      },
      (reason: Error) => reason,
    );
    expect(error.message).toMatch(/next start exited with 1/);
    expect(error.message).toContain('WEATHER_API_KEY is not set');
    expect(findLeak(error.message, secrets)).toBeNull();
  });

  it('logs no secret', () => {
    expect(findLeak(app.output(), secrets)).toBeNull();
  });
});
