import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDemoUpstream } from '../../demo/upstream';
import { scanBuild } from '../../scripts/leak-scan';
import { freePort, signIn, startApp, type AppServer } from '../fixtures/app-server';
import { writeDemoConfig } from '../fixtures/e2e-env';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { writeUsersFile } from '../fixtures/users';

/**
 * A decoy key planted in the client bundle, found and used as an attacker would (README "Decoy keys"):
 * 1. `npm run keyward -- decoys create --shape openai` mints it into a decoys file;
 * 2. the app is built with it in NEXT_PUBLIC_KEYWARD_DECOY, which the demo page's client code embeds;
 * 3. the production server (`next start`, KEYWARD_DECOYS_FILE set) serves the demo page;
 * 4. the attacker, signed in with an account of their own, downloads the page's JavaScript, finds a string
 *    shaped like an OpenAI key in it, and calls /api/proxy with it beside their session cookie;
 * 5. the call is refused as unauthenticated, and the decoy hit is raised for the attacker's session: the
 *    server's log line (the detector's response to it, revocation, is asserted where the detector is tested).
 * The build goes to its own folder (`.next-decoys`), so the suite's `.next` is left alone.
 */
const cwd = process.cwd();
const distDir = '.next-decoys';
const TSX = join(cwd, 'node_modules/.bin/tsx');
/** The pattern secret scanners use for OpenAI project keys: the attacker's regex, not the test's knowledge. */
const OPENAI_KEY = /sk-proj-[A-Za-z0-9_-]{74}T3BlbkFJ[A-Za-z0-9_-]{74}/g;

const password = randomSecret('pw');
let dir: string;
let upstream: Server;
let app: AppServer;
let minted: { id: string; value: string };

/** Runs a command from the project's root; its output (stdout) once it exited 0. */
async function run(command: string[], env: Record<string, string>, where = cwd): Promise<string> {
  const childEnv: Record<string, string> = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env };
  const child = spawn(command[0]!, command.slice(1), {
    cwd: where,
    env: childEnv as NodeJS.ProcessEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => ((stdout += chunk.toString('utf8')), (output += chunk.toString('utf8'))));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`${command.join(' ')} exited with ${code}:\n${output}`);
  return stdout;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keyward-decoy-bundle-'));
  const decoysFile = join(dir, 'keyward.decoys.json');
  // 1. Mint (the CLI runs in an empty directory: it reads the .env files of its working directory).
  const printed = await run(
    [
      TSX,
      '--conditions=react-server',
      join(cwd, 'scripts/keyward.ts'),
      'decoys',
      'create',
      '--shape',
      'openai',
      '--note',
      'demo bundle',
      '--json',
    ],
    { KEYWARD_DECOYS_FILE: decoysFile, TSX_TSCONFIG_PATH: join(cwd, 'tsconfig.json') },
    dir,
  );
  minted = JSON.parse(printed) as { id: string; value: string };
  // 2. Build with the decoy planted.
  await run([process.execPath, join(cwd, 'node_modules/next/dist/bin/next'), 'build'], {
    NODE_ENV: 'production',
    NEXT_TELEMETRY_DISABLED: '1',
    KEYWARD_DIST_DIR: distDir,
    NEXT_PUBLIC_KEYWARD_DECOY: minted.value,
  });
  // 3. Serve it, with the demo upstream and the decoys file.
  const upstreamKey = randomSecret('demo_key');
  const upstreamPort = await freePort();
  upstream = await startDemoUpstream(upstreamKey, upstreamPort, '127.0.0.1');
  app = await startApp({
    ...testSessionSecrets(),
    KEYWARD_DIST_DIR: distDir,
    KEYWARD_CONFIG: writeDemoConfig(dir, upstreamPort),
    DEMO_UPSTREAM_KEY: upstreamKey,
    KEYWARD_VAULT_SECRET: randomSecret('vault'),
    KEYWARD_USERS_FILE: await writeUsersFile([{ username: 'mallory', password, roles: ['user'] }]),
    KEYWARD_STORE_PATH: join(dir, 'store.db'),
    KEYWARD_DECOYS_FILE: decoysFile,
    KEYWARD_DEMO: 'true',
  });
}, 600_000);

afterAll(async () => {
  await app?.stop();
  if (upstream) {
    upstream.closeAllConnections();
    await new Promise((resolve) => upstream.close(resolve));
  }
  rmSync(join(cwd, distDir), { recursive: true, force: true });
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Every script the page loads, downloaded as a scraper would: the page's `<script src>`s, then their text. */
async function pageScripts(url: string): Promise<string[]> {
  const html = await (await fetch(url)).text();
  const sources = [...html.matchAll(/<script[^>]+src="([^"]+)"/g)].map((match) => match[1]!);
  expect(sources.length).toBeGreaterThan(0);
  return Promise.all(sources.map(async (source) => (await fetch(new URL(source, url))).text()));
}

describe('a decoy planted in the client bundle', () => {
  it("is found by an attacker, and using it raises a decoy hit for the attacker's session", async () => {
    // The attacker signs in with an account of their own: the session the hit is raised for.
    const cookie = await signIn(app.url, 'mallory', password);
    const session = (await (await fetch(`${app.url}/api/session`, { headers: { cookie } })).json()) as {
      user: { id: string };
    };

    // 4. Scrape the demo page's JavaScript for anything shaped like an OpenAI key.
    const found = new Set((await pageScripts(`${app.url}/`)).flatMap((script) => script.match(OPENAI_KEY) ?? []));
    expect([...found]).toEqual([minted.value]);
    const [key] = found;

    // 5. Use it, as the page's own calls are made (cookie session, CSRF header), with the key as a bearer.
    const response = await fetch(`${app.url}/api/proxy/demo/hello`, {
      headers: { cookie, 'x-keyward-csrf': '1', authorization: `Bearer ${key}` },
    });
    expect(response.status).toBe(401);
    const { error } = (await response.json()) as { error: { code: string; message: string; requestId: string } };
    expect(error.code).toBe('unauthenticated');
    expect(error.message.toLowerCase()).not.toContain('decoy');

    const hits = app
      .output()
      .split('\n')
      .filter((line) => line.includes('"decoyHit"'))
      .map((line) => (JSON.parse(line) as { decoyHit: Record<string, unknown> }).decoyHit);
    expect(hits).toEqual([
      expect.objectContaining({
        kind: 'credential',
        decoyId: minted.id,
        where: 'header:authorization',
        userId: session.user.id,
        sessionIdHash: expect.stringMatching(/^[0-9a-f]{16}$/),
        upstream: 'demo',
        route: '/hello',
        requestId: error.requestId,
      }),
    ]);
    expect(app.output()).not.toContain(minted.value);

    // 6. The anomaly detector's answer (README "Anomaly detection"): straight to revocation, so the attacker's own
    // session is refused from now on, on every instance (written to the store as the detector acts, just after).
    let status = 200;
    for (let attempt = 0; attempt < 100 && status === 200; attempt++) {
      status = (await fetch(`${app.url}/api/session`, { headers: { cookie } })).status;
      if (status === 200) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(status).toBe(401);
    const plain = await fetch(`${app.url}/api/proxy/demo/hello`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    expect(plain.status).toBe(401);
    expect(app.output()).toMatch(/"rule":"decoy","action":"revoke"/);
  });

  it('is reported by the leak scan as a decoy (expected), not as a leak', () => {
    const scan = scanBuild(join(cwd, distDir), { NOT_IN_BUILD: randomSecret('canary') }, { [minted.id]: minted.value });
    expect(scan.leaks).toEqual([]);
    expect(scan.decoys.some((hit) => hit.file.startsWith('static/chunks/') && hit.name === minted.id)).toBe(true);
  });
});
