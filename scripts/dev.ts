/**
 * `npm run dev`: the demo with no account anywhere and no set-up (development only). Generates missing secrets
 * once into .keyward/ (git-ignored), writes the demo user, starts the demo upstream and `next dev`.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import nextEnv from '@next/env';
import { startDemoUpstream } from '../demo/upstream';
import { DEMO_USER, prepareDevEnvironment } from './dev-setup';

const cwd = process.cwd();
// Settings in .env* files first, exactly as `next dev` and the CLI read them, so a secret set there is the one
// used instead of a generated one (the server and the CLI then agree on the vault secret and the config).
nextEnv.loadEnvConfig(cwd, true);
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
try {
  await startDemoUpstream(env.DEMO_UPSTREAM_KEY!, port);
} catch (error) {
  console.error(`keyward: cannot start the demo upstream on 127.0.0.1:${port} (${(error as NodeJS.ErrnoException).code}).`);
  process.exit(1);
}
console.log(`keyward: demo upstream on http://127.0.0.1:${port} (it refuses calls without its key)`);
console.log(`keyward: open http://localhost:${env.PORT ?? 3000} and sign in as "${DEMO_USER.username}" / "${DEMO_USER.password}"`);

const next = spawn(process.execPath, [join(cwd, 'node_modules', 'next', 'dist', 'bin', 'next'), 'dev', ...process.argv.slice(2)], {
  env,
  stdio: 'inherit',
});
const stop = (signal: NodeJS.Signals) => next.kill(signal);
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
next.on('exit', (code) => process.exit(code ?? 0));
