import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, jsonErrorAt } from '../lib/core/config/error';
import { hashPassword } from '../lib/core/users/password';

export const DEMO_USER = { username: 'demo', password: 'keyward-demo' } as const;
/** The demo's admin, for the dashboard (/admin), which needs the `admin` role. Development only, as DEMO_USER. */
export const DEMO_ADMIN = { username: 'admin', password: 'keyward-admin' } as const;
/** The users `npm run dev` writes to .keyward/users.json, adding any missing from an older file. */
const DEMO_USERS = [
  { ...DEMO_USER, name: 'Demo User', roles: ['user'] },
  { ...DEMO_ADMIN, name: 'Demo Admin', roles: ['user', 'admin'] },
] as const;
export const GENERATED_SECRETS = ['AUTH_SECRET', 'KEYWARD_SESSION_SECRET', 'KEYWARD_VAULT_SECRET', 'DEMO_UPSTREAM_KEY'] as const;

/**
 * Development only: fills in the secrets the environment lacks, generating each once into
 * `<cwd>/.keyward/dev-secrets.json` (git-ignored, 0600) and reusing it afterwards, writes the demo users (unless
 * KEYWARD_USERS_FILE names your own file), and returns the environment for `next dev`. Refuses to run in production, where secrets must be set explicitly.
 */
export async function prepareDevEnvironment(cwd: string, env: NodeJS.ProcessEnv): Promise<NodeJS.ProcessEnv> {
  if (env.NODE_ENV === 'production') {
    throw new Error('npm run dev is for development only; in production set the secrets yourself (see README).');
  }
  const dir = join(cwd, '.keyward');
  mkdirSync(dir, { recursive: true, mode: 0o700 });

  const secretsFile = join(dir, 'dev-secrets.json');
  const stored = existsSync(secretsFile) ? readObject(secretsFile, (value) => Object.values(value).every((entry) => typeof entry === 'string')) : {};
  let changed = false;
  for (const name of GENERATED_SECRETS) {
    if (!env[name] && !stored[name]) {
      stored[name] = randomBytes(32).toString('base64url');
      changed = true;
    }
  }
  if (changed) writePrivate(secretsFile, JSON.stringify(stored, null, 2) + '\n');

  const usersFile = join(dir, 'users.json');
  // Your own users file (even one you keep at .keyward/users.json) is yours: the demo users, whose passwords the
  // README publishes, are never added to it.
  if (!env.KEYWARD_USERS_FILE) await writeDemoUsers(usersFile);

  const fromFile = Object.fromEntries(GENERATED_SECRETS.filter((name) => !env[name]).map((name) => [name, stored[name]!]));
  const demo = !ownsConfig(env);
  return {
    ...env,
    ...fromFile,
    // Your own upstreams (KEYWARD_CONFIG or KEYWARD_CONFIG_JSON, e.g. in .env.local) replace the demo's.
    ...(demo ? { KEYWARD_CONFIG: join(cwd, 'config', 'demo.json') } : {}),
    KEYWARD_USERS_FILE: env.KEYWARD_USERS_FILE || usersFile,
    // The demo page and its user: served by `npm run dev` with the demo's upstreams only (production needs
    // KEYWARD_DEMO=true to show it); with your own, the page is the one production serves.
    ...(env.KEYWARD_DEMO === undefined && demo ? { KEYWARD_DEMO: 'true' } : {}),
  };
}

/** Whether the environment names its own upstreams (then the demo's config, upstream and page are left out). */
export function ownsConfig(env: NodeJS.ProcessEnv): boolean {
  return Boolean(env.KEYWARD_CONFIG || env.KEYWARD_CONFIG_JSON);
}

/**
 * Writes the demo users into the generated users file: all of them into a new file, and into an existing one
 * those it lacks (a file from before the demo had an admin), leaving every user already there as it is.
 */
async function writeDemoUsers(usersFile: string): Promise<void> {
  const existing = existsSync(usersFile)
    ? (readObject(usersFile, (value) => Array.isArray(value.users) && value.users.every((user) => user !== null && typeof user === 'object')) as {
        users: Array<Record<string, unknown>>;
      })
    : { users: [] };
  const missing = DEMO_USERS.filter((demo) => !existing.users.some((user) => user.username === demo.username));
  if (missing.length === 0) return;
  for (const { username, password, name, roles } of missing) {
    existing.users.push({ username, name, passwordHash: await hashPassword(password), roles: [...roles] });
  }
  writePrivate(usersFile, JSON.stringify(existing, null, 2) + '\n');
}

/**
 * Writes a file of secrets or password hashes readable by its owner only (0600, whoever made the file before:
 * a mode given to writeFile applies only to a new file), whole or not at all: a temporary file renamed over it,
 * so a crash never leaves half a file (and a new vault secret when it is deleted).
 */
function writePrivate(path: string, text: string): void {
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, text, { mode: 0o600 });
  chmodSync(temporary, 0o600);
  renameSync(temporary, path);
}

/**
 * The port `next dev` will listen on, for the URL the launcher prints: `-p`/`--port` among the arguments passed
 * through (`npm run dev -- -p 3001`, the last one wins as in Next's parser), else PORT, else Next's 3000.
 */
export function devPort(args: readonly string[], env: { readonly [name: string]: string | undefined }): string {
  let port = env.PORT || '3000';
  args.forEach((arg, index) => {
    const inline = /^(?:-p|--port)=(.+)$/.exec(arg);
    if (inline) port = inline[1]!;
    else if ((arg === '-p' || arg === '--port') && args[index + 1] !== undefined) port = args[index + 1]!;
  });
  return port;
}

/**
 * A file of secrets or password hashes, parsed, that must be a JSON object of the expected shape; when it is not,
 * the error says where, never what: V8's message quotes the text around the mistake, which here is a secret or a
 * hash. A ConfigError, so the CLI and `npm run dev` print it.
 */
function readObject(path: string, shaped: (value: Record<string, unknown>) => boolean): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new ConfigError(`${path} is not valid JSON${jsonErrorAt(error)} (its text is not shown: it holds secrets); fix or delete it`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value) || !shaped(value as Record<string, unknown>)) {
    throw new ConfigError(`${path} is not what Keyward wrote there (its text is not shown: it holds secrets); fix or delete it`);
  }
  return value as Record<string, unknown>;
}

