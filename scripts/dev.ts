/**
 * `npm run dev`: the demo with no account anywhere and no set-up (development only). Generates missing secrets
 * once into .keyward/ (git-ignored), writes the demo users, starts the demo upstream, makes the demo traffic the
 * dashboard shows (demo/traffic.ts: once, when the last 24 hours have none) and starts `next dev`.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import nextEnv from '@next/env';
import { seedDemoTraffic } from '../demo/traffic';
import { startDemoUpstream } from '../demo/upstream';
import { DEMO_ADMIN, DEMO_USER, devPort, ownsConfig, prepareDevEnvironment } from './dev-setup';

const cwd = process.cwd();
// Settings in .env* files first, exactly as `next dev` and the CLI read them, so a secret set there is the one
// used instead of a generated one (the server and the CLI then agree on the vault secret and the config).
nextEnv.loadEnvConfig(cwd, true);
// Your own upstreams or users (e.g. in .env.local) replace the demo's: nothing of the demo is started or advertised.
const ownConfig = ownsConfig(process.env);
const ownUsers = process.env.KEYWARD_USERS_FILE || null;
let env: NodeJS.ProcessEnv;
try {
  env = await prepareDevEnvironment(cwd, process.env);
} catch (error) {
  console.error(`keyward: ${(error as Error).message}`);
  process.exit(1);
}
console.log('keyward: development secrets are in .keyward/dev-secrets.json (git-ignored; delete .keyward/ to reset)');

// config/demo.json names this port.
const port = 4010;
// The demo upstream runs with the demo's config, and whenever the demo page (which calls it) is served; the demo
// traffic is made with the demo's config only.
const demoPage = env.KEYWARD_DEMO === 'true' || env.KEYWARD_DEMO === '1';
if (!ownConfig || demoPage) {
  try {
    await startDemoUpstream(env.DEMO_UPSTREAM_KEY!, port);
  } catch (error) {
    console.error(`keyward: cannot start the demo upstream on 127.0.0.1:${port} (${(error as NodeJS.ErrnoException).code}).`);
    process.exit(1);
  }
  console.log(`keyward: demo upstream on http://127.0.0.1:${port} (it refuses calls without its key)`);
}
if (!ownConfig) await reportDemoTraffic();
else console.log(`keyward: your upstreams (${process.env.KEYWARD_CONFIG || 'KEYWARD_CONFIG_JSON'}); no demo traffic is made`);
const url = `http://localhost:${devPort(process.argv.slice(2), env)}`;
if (ownUsers) {
  console.log(`keyward: open ${url} and sign in as a user of ${ownUsers}`);
} else {
  console.log(`keyward: open ${url} and sign in as "${DEMO_USER.username}" / "${DEMO_USER.password}"`);
  console.log(`keyward: the admin dashboard (/admin): sign in as "${DEMO_ADMIN.username}" / "${DEMO_ADMIN.password}"`);
}

// The demo's users and passwords are public: listen on this machine only, unless told otherwise with -H. (Not
// HOSTNAME: containers export it set to their own name.)
const args = process.argv.slice(2);
const hostGiven = args.some((arg) => arg === '-H' || arg === '--hostname' || arg.startsWith('--hostname='));
const host = hostGiven ? [] : ['--hostname', '127.0.0.1'];
const next = spawn(process.execPath, [join(cwd, 'node_modules', 'next', 'dist', 'bin', 'next'), 'dev', ...host, ...args], {
  env,
  stdio: 'inherit',
});
const stop = (signal: NodeJS.Signals) => next.kill(signal);
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
next.on('exit', (code) => process.exit(code ?? 0));

/** A few hundred calls through the real pipeline for the dashboard's charts, before `next dev` opens the same store. */
async function reportDemoTraffic(): Promise<void> {
  const started = performance.now();
  try {
    const { upstreams } = await import('../upstreams/index');
    const result = await seedDemoTraffic({ env, upstreams, upstreamOrigin: `http://127.0.0.1:${port}` });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    console.log(
      result.seeded
        ? `keyward: demo traffic for the dashboard: ${result.calls} calls by ${result.users} demo users over the last ${result.hours} hours, ${result.alerts} detector alerts (${seconds} s; KEYWARD_DEMO_TRAFFIC=false skips it)`
        : `keyward: no demo traffic made: ${result.reason}`,
    );
  } catch (error) {
    // The server reports a configuration problem itself, in full, when it starts.
    console.log(`keyward: no demo traffic made: ${(error as Error).message.split('\n')[0]}`);
  }
}
