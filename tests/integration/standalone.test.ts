import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, signIn, startApp, type AppServer } from '../fixtures/app-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';
import { decoyId, mintDecoy } from '../../lib/core/detect/mint';

/**
 * The README's standalone deployment, run as written: build with `NEXT_OUTPUT=standalone` and KEYWARD_CONFIG and
 * KEYWARD_DECOYS_FILE set (paths inside the project, so next.config.ts traces them into the output), copy exactly the folders the README
 * lists to another directory, start `node server.js` there with the README's settings, sign in, proxy a call.
 * The build goes to its own folder (`.next-standalone`) so the suite's `.next` is left alone; the README's
 * `.next` paths are the same with that name.
 */
const cwd = process.cwd();
const distDir = '.next-standalone';
const configRelative = '.next-standalone-input/keyward.json';
const decoysRelative = '.next-standalone-input/keyward.decoys.json';
const decoy = { id: decoyId(), ...mintDecoy('openai'), createdAt: new Date().toISOString() };
const echoKey = randomSecret('echo');
const password = randomSecret('pw');
let upstream: TestUpstream;
let deployDir: string;
let app: AppServer;

async function run(command: string[], env: Record<string, string>): Promise<void> {
  const childEnv: NodeJS.ProcessEnv = { NODE_ENV: 'production', PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env };
  const child = spawn(process.execPath, command, { cwd, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`${command.join(' ')} exited with ${code}:\n${output}`);
}

beforeAll(async () => {
  upstream = await startUpstream();
  mkdirSync(join(cwd, '.next-standalone-input'), { recursive: true });
  writeFileSync(
    join(cwd, configRelative),
    JSON.stringify({
      upstreams: {
        echo: {
          baseUrl: `${upstream.origin}/v1/`,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
          routes: [{ method: 'GET', path: '/items/:id' }],
        },
      },
    }),
  );
  writeFileSync(join(cwd, decoysRelative), JSON.stringify({ decoys: [decoy] }), { mode: 0o600 });
  // 1. Build (README: `NEXT_OUTPUT=standalone KEYWARD_CONFIG=config/keyward.json npm run build`).
  await run([join(cwd, 'node_modules', 'next', 'dist', 'bin', 'next'), 'build'], {
    NEXT_TELEMETRY_DISABLED: '1',
    NEXT_OUTPUT: 'standalone',
    KEYWARD_DIST_DIR: distDir,
    KEYWARD_CONFIG: configRelative,
    KEYWARD_DECOYS_FILE: decoysRelative,
  });
  // 2. Copy exactly what the README lists: the standalone folder, and the static assets beside its server.
  deployDir = mkdtempSync(join(tmpdir(), 'keyward-standalone-'));
  cpSync(join(cwd, distDir, 'standalone'), deployDir, { recursive: true });
  cpSync(join(cwd, distDir, 'static'), join(deployDir, distDir, 'static'), { recursive: true });
  // 3. Start from that directory with the README's settings (the store and users file live outside the app).
  const port = await freePort();
  app = await startApp(
    {
      ...testSessionSecrets(),
      PORT: String(port),
      HOSTNAME: '127.0.0.1',
      AUTH_URL: `http://localhost:${port}`,
      KEYWARD_CONFIG: configRelative,
      KEYWARD_DECOYS_FILE: decoysRelative,
      KEYWARD_USERS_FILE: await writeUsersFile([{ username: 'alice', password, roles: ['user'] }]),
      KEYWARD_STORE_PATH: join(deployDir, 'data', 'keyward.db'),
      ECHO_KEY: echoKey,
    },
    { port, cwd: deployDir, testDefaults: false, command: [join(deployDir, 'server.js')] },
  );
}, 360_000);

afterAll(async () => {
  await app?.stop();
  await upstream?.close();
  if (deployDir) rmSync(deployDir, { recursive: true, force: true });
  rmSync(join(cwd, distDir), { recursive: true, force: true });
  rmSync(join(cwd, '.next-standalone-input'), { recursive: true, force: true });
});

describe('standalone output, deployed as the README says', () => {
  it('carries the KEYWARD_CONFIG file, signs in, and proxies a call with the key', async () => {
    const cookie = await signIn(app.url, 'alice', password);
    const response = await fetch(`${app.url}/api/proxy/echo/items/7`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    expect(response.status).toBe(200);
    const body = await response.text();
    expect(body).not.toContain(echoKey);
    const seen = upstream.requests.at(-1)!;
    expect(seen.url).toBe('/v1/items/7');
    expect(seen.headers['x-api-key']).toBe(echoKey);
  });

  it('serves the pages and their static assets', async () => {
    const html = await (await fetch(`${app.url}/signin`)).text();
    expect(html).toContain('data-testid="local-sign-in"');
    const asset = /\/_next\/static\/[^"']+\.(?:js|css)/.exec(html)?.[0];
    expect(asset).toBeTruthy();
    expect((await fetch(`${app.url}${asset}`)).status).toBe(200);
  });

  it('carries the KEYWARD_DECOYS_FILE: a decoy presented as the key is refused and signs the session out', async () => {
    const cookie = await signIn(app.url, 'alice', password);
    const calls = upstream.requests.length;
    const headers = { cookie, 'x-keyward-csrf': '1' };
    const presented = await fetch(`${app.url}/api/proxy/echo/items/8`, {
      headers: { ...headers, authorization: `Bearer ${decoy.value}` },
    });
    expect(presented.status).toBe(401);
    expect((await presented.json()).error.code).toBe('unauthenticated');
    expect(upstream.requests.length).toBe(calls);
    // The session that presented it was revoked (README "Decoy keys": revoke and suspend).
    expect((await fetch(`${app.url}/api/proxy/echo/items/8`, { headers })).status).toBe(401);
  });
});
