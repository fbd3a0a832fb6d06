import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hashPassword } from '../lib/core/users/password';

export const DEMO_USER = { username: 'demo', password: 'keyward-demo' } as const;
export const GENERATED_SECRETS = ['AUTH_SECRET', 'KEYWARD_SESSION_SECRET', 'KEYWARD_VAULT_SECRET', 'DEMO_UPSTREAM_KEY'] as const;

/**
 * Development only: fills in the secrets the environment lacks, generating each once into
 * `<cwd>/.keyward/dev-secrets.json` (git-ignored, 0600) and reusing it afterwards, writes the demo user, and
 * returns the environment for `next dev`. Refuses to run in production, where secrets must be set explicitly.
 */
export async function prepareDevEnvironment(cwd: string, env: NodeJS.ProcessEnv): Promise<NodeJS.ProcessEnv> {
  if (env.NODE_ENV === 'production') {
    throw new Error('npm run dev is for development only; in production set the secrets yourself (see README).');
  }
  const dir = join(cwd, '.keyward');
  mkdirSync(dir, { recursive: true, mode: 0o700 });

  const secretsFile = join(dir, 'dev-secrets.json');
  const stored: Record<string, string> = existsSync(secretsFile) ? JSON.parse(readFileSync(secretsFile, 'utf8')) : {};
  let changed = false;
  for (const name of GENERATED_SECRETS) {
    if (!env[name] && !stored[name]) {
      stored[name] = randomBytes(32).toString('base64url');
      changed = true;
    }
  }
  if (changed) writeFileSync(secretsFile, JSON.stringify(stored, null, 2) + '\n', { mode: 0o600 });

  const usersFile = join(dir, 'users.json');
  if (!existsSync(usersFile)) {
    const passwordHash = await hashPassword(DEMO_USER.password);
    const users = { users: [{ username: DEMO_USER.username, name: 'Demo User', passwordHash, roles: ['user'] }] };
    writeFileSync(usersFile, JSON.stringify(users, null, 2) + '\n', { mode: 0o600 });
  }

  const fromFile = Object.fromEntries(GENERATED_SECRETS.filter((name) => !env[name]).map((name) => [name, stored[name]!]));
  return {
    ...env,
    ...fromFile,
    KEYWARD_CONFIG: env.KEYWARD_CONFIG ?? join(cwd, 'config', 'demo.json'),
    KEYWARD_USERS_FILE: env.KEYWARD_USERS_FILE ?? usersFile,
    // The demo page and its user: served by `npm run dev` only (production needs KEYWARD_DEMO=true to show it).
    KEYWARD_DEMO: env.KEYWARD_DEMO ?? 'true',
  };
}
