import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join, sep } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, signIn, startApp, type AppServer } from '../fixtures/app-server';
import { findLeak, responseText } from '../fixtures/claims-session';
import { alive, commandEnv as baseEnv, descendants, runToEnd as run } from '../fixtures/processes';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * README "Containers with the fast lane", as a Dockerfile would follow it, without Docker: after `npm run build`
 * (the test command's), copy only what the paragraph lists into a fresh folder, `npm ci --omit=dev` there (no
 * tsx, esbuild or TypeScript), hash a password and read the audit trail with the bundled command line, and run
 * `npm start` with the README's production settings on 127.0.0.2: sign in, proxy a call whose upstream echoes
 * its key, and stop it with SIGTERM to npm, as `docker stop` does. As images are built, the copied files belong to
 * root and the server runs as a user who cannot write them (run as root, the test runs the server and the command
 * line as `nobody`, with a Node binary that user can run and a data folder of its own for the store).
 */
const cwd = process.cwd();
const distDir = process.env.KEYWARD_DIST_DIR || '.next';
/** npm's own script, run by this Node (the one the tests run on), as a container's `npm` is. */
const npmCli = realpathSync(execFileSync('which', ['npm'], { encoding: 'utf8' }).trim());
/** The image's unprivileged user (Debian's `nobody`), when the test can switch to it. */
const asUser = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : null;


describe('README "Containers with the fast lane": the copied files, production dependencies only, npm start', () => {
  const password = randomSecret('pw');
  const echoKey = randomSecret('echo');
  const sessionSecrets = testSessionSecrets();
  const secrets = [password, echoKey, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET];
  let work: string;
  let image: string;
  let upstream: TestUpstream;
  let app: AppServer;
  let settings: Record<string, string>;
  /** The command environment of the image's user: its Node first on PATH, its HOME. */
  let userEnv: Record<string, string>;
  let nodeBin: string;

  beforeAll(async () => {
    if (!existsSync(join(cwd, distDir, 'keyward-server.mjs')) || !existsSync(join(cwd, distDir, 'keyward-cli.mjs'))) {
      throw new Error(`No production build in ${distDir}: run \`npm run build\` first (npm test does).`);
    }
    upstream = await startUpstream();
    work = mkdtempSync(join(tmpdir(), 'keyward-container-'));
    chmodSync(work, 0o755);
    image = join(work, 'app');
    mkdirSync(image);
    // The user's own folders: HOME (npm's cache and logs) and the store's volume. Everything else stays root's.
    for (const folder of ['home', 'data']) {
      mkdirSync(join(work, folder));
      if (asUser) chownSync(join(work, folder), asUser.uid, asUser.gid);
    }
    // This Node, where that user can run it (the tests' may sit under root's home).
    const node = asUser ? join(work, 'node', 'bin', 'node') : process.execPath;
    if (asUser) {
      mkdirSync(join(work, 'node', 'bin'), { recursive: true });
      copyFileSync(process.execPath, node);
      chmodSync(node, 0o755);
    }
    userEnv = { ...baseEnv(), PATH: [join(work, 'node', 'bin'), baseEnv().PATH].join(delimiter), HOME: join(work, 'home') };
    nodeBin = node;
    // What the paragraph lists: the build without its cache and `next dev`'s folder, the manifest and its lock,
    // next.config.ts, scripts/, the config. (This app has no public/.)
    const skipped = [join(cwd, distDir, 'cache'), join(cwd, distDir, 'dev')];
    cpSync(join(cwd, distDir), join(image, distDir), {
      recursive: true,
      verbatimSymlinks: true,
      filter: (source) => !skipped.some((skip) => source === skip || source.startsWith(skip + sep)),
    });
    for (const file of ['package.json', 'package-lock.json', 'next.config.ts', 'scripts']) {
      cpSync(join(cwd, file), join(image, file), { recursive: true });
    }
    mkdirSync(join(image, 'config'));
    writeFileSync(
      join(image, 'config', 'keyward.json'),
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
    await run(process.execPath, [npmCli, 'ci', '--omit=dev', '--prefer-offline', '--no-audit', '--no-fund'], {
      cwd: image,
      env: baseEnv(),
      timeoutMs: 420_000,
    });
    // The production dependencies only: none of the build's tools.
    for (const tool of ['tsx', 'esbuild', 'typescript', 'vitest']) expect(existsSync(join(image, 'node_modules', tool)), tool).toBe(false);

    // The README's hash command, from the bundled command line (tsx is not there to run scripts/keyward.ts).
    const cli = join(image, distDir, 'keyward-cli.mjs');
    const hash = (await run(nodeBin, [cli, 'hash-password'], { cwd: image, env: userEnv, input: `${password}\n`, timeoutMs: 60_000, user: asUser })).trim();
    const usersFile = join(work, 'users.json');
    writeFileSync(usersFile, JSON.stringify({ users: [{ username: 'alice', passwordHash: hash, roles: ['user'] }] }), { mode: 0o600 });
    // Mounted for the user the server runs as (a secret volume), readable by it alone.
    if (asUser) chownSync(usersFile, asUser.uid, asUser.gid);
    settings = {
      ...sessionSecrets,
      AUTH_TRUST_HOST: 'true',
      KEYWARD_USERS_FILE: usersFile,
      KEYWARD_CONFIG: 'config/keyward.json',
      KEYWARD_STORE_PATH: join(work, 'data', 'keyward.db'),
      ECHO_KEY: echoKey,
    };
    const port = await freePort();
    app = await startApp(
      { ...userEnv, ...settings },
      {
        cwd: image,
        port,
        host: '127.0.0.2',
        testDefaults: false,
        command: [npmCli, 'start', '--', '-p', String(port), '-H', '127.0.0.2'],
        node: nodeBin,
        ...(asUser ? { user: asUser } : {}),
      },
    );
  }, 600_000);

  afterAll(async () => {
    const tree = app ? descendants(app.pid) : [];
    await app?.stop();
    for (const pid of tree) if (alive(pid)) process.kill(pid, 'SIGKILL');
    await upstream?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it.runIf(asUser)('runs as the image\'s user: npm, the fast lane and Next', () => {
    const tree = [app.pid, ...descendants(app.pid)];
    expect(tree.length).toBeGreaterThanOrEqual(3);
    for (const pid of tree) expect(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1], `process ${pid}`).toBe(String(asUser!.uid));
  });

  it('signs in and proxies a call, the echoed key scrubbed; pages render', async () => {
    const cookie = await signIn(app.url, 'alice', password);
    const response = await fetch(`${app.url}/api/proxy/echo/items/7`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    const { status, text } = await responseText(response);
    expect(status).toBe(200);
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(echoKey);
    expect(text).toContain('[REDACTED]');
    expect(findLeak(text, secrets)).toBeNull();
    const page = await fetch(`${app.url}/signin`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('data-testid="local-sign-in"');
  });

  it('runs the command line from the bundle: the audit trail holds the call', async () => {
    const cli = join(image, distDir, 'keyward-cli.mjs');
    const env = { ...userEnv, ...settings, NODE_ENV: 'production' };
    let tail = '';
    // The fast lane's batch writer records a call within about 100 ms.
    for (let attempt = 0; attempt < 50 && !tail.includes('/items/:id'); attempt++) {
      tail = await run(nodeBin, [cli, 'audit', 'tail', '--json'], { cwd: image, env, timeoutMs: 60_000, user: asUser });
      if (!tail.includes('/items/:id')) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(tail).toContain('"route":"/items/:id"');
    expect(findLeak(tail, secrets)).toBeNull();
    expect(await run(nodeBin, [cli, 'check-config'], { cwd: image, env, timeoutMs: 60_000, user: asUser })).toContain('configuration is valid for production');
    // Its usage names it as it was run, not as `npm run keyward`, which needs the tools this image lacks.
    const usage = await run(nodeBin, [cli, '--help'], { cwd: image, env, timeoutMs: 60_000, user: asUser });
    expect(usage.split('\n')[0]).toBe(`usage: node ${distDir}/keyward-cli.mjs <command> [options]`);
    expect(usage).not.toContain('npm run keyward');
  });

  it('SIGTERM to npm (docker stop) reaches the fast lane, which stops Next: nothing is left running', async () => {
    const tree = descendants(app.pid);
    // npm's shell replaced by the fast lane (`exec`), and Next's process under it.
    expect(tree.length).toBeGreaterThanOrEqual(2);
    await app.stop();
    for (const pid of tree) {
      for (let i = 0; i < 100 && alive(pid); i++) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(alive(pid), `process ${pid} outlived npm`).toBe(false);
    }
  });
});
