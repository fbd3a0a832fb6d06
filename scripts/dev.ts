/**
 * `npm run dev`: the demo with no account anywhere and no set-up. Development only: generates the missing
 * secrets once into .keyward/ (git-ignored), writes the demo user, starts the demo upstream and `next dev`.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDemoUpstream } from '../demo/upstream';
import { hashPassword } from '../lib/core/users/password';

if (process.env.NODE_ENV === 'production') {
  console.error('npm run dev is for development only; in production set the secrets yourself (see README).');
  process.exit(1);
}

export const DEMO_USER = { username: 'demo', password: 'keyward-demo' };
const dir = join(process.cwd(), '.keyward');
mkdirSync(dir, { recursive: true, mode: 0o700 });

const secretsFile = join(dir, 'dev-secrets.json');
const generated: Record<string, string> = existsSync(secretsFile) ? JSON.parse(readFileSync(secretsFile, 'utf8')) : {};
let changed = false;
for (const name of ['AUTH_SECRET', 'KEYWARD_SESSION_SECRET', 'DEMO_UPSTREAM_KEY']) {
  if (!process.env[name] && !generated[name]) {
    generated[name] = randomBytes(32).toString('base64url');
    changed = true;
  }
}
if (changed) {
  writeFileSync(secretsFile, JSON.stringify(generated, null, 2) + '\n', { mode: 0o600 });
  console.log('keyward: generated development secrets in .keyward/dev-secrets.json (git-ignored)');
}

const usersFile = join(dir, 'users.json');
if (!existsSync(usersFile)) {
  const passwordHash = await hashPassword(DEMO_USER.password);
  writeFileSync(usersFile, JSON.stringify({ users: [{ username: DEMO_USER.username, name: 'Demo User', passwordHash, roles: ['user'] }] }, null, 2) + '\n', { mode: 0o600 });
}

const env: NodeJS.ProcessEnv = {
  ...process.env,
  ...Object.fromEntries(Object.entries(generated).filter(([name]) => !process.env[name])),
  KEYWARD_CONFIG: process.env.KEYWARD_CONFIG ?? join(process.cwd(), 'config', 'demo.json'),
  KEYWARD_USERS_FILE: process.env.KEYWARD_USERS_FILE ?? usersFile,
};

// config/demo.json names this port.
const port = 4010;
try {
  await startDemoUpstream(env.DEMO_UPSTREAM_KEY!, port);
} catch (error) {
  console.error(`keyward: cannot start the demo upstream on 127.0.0.1:${port} (${(error as NodeJS.ErrnoException).code}).`);
  process.exit(1);
}
console.log(`keyward: demo upstream on http://127.0.0.1:${port} (it refuses calls without its key)`);
console.log(`keyward: sign in at http://localhost:${process.env.PORT ?? 3000} as "${DEMO_USER.username}" / "${DEMO_USER.password}"`);

const next = spawn(process.execPath, [join(process.cwd(), 'node_modules', 'next', 'dist', 'bin', 'next'), 'dev', ...process.argv.slice(2)], {
  env,
  stdio: 'inherit',
});
const stop = (signal: NodeJS.Signals) => next.kill(signal);
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
next.on('exit', (code) => process.exit(code ?? 0));
