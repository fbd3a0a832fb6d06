import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { startApp } from '../fixtures/app-server';
import { writeConfigFile } from '../fixtures/config';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { writeUsersFile } from '../fixtures/users';

/** The real production server (`next start`, after `next build`) must refuse to start on bad configuration. */
const writeConfig = writeConfigFile;

const upstream = (secretEnv: string) => ({
  upstreams: {
    echo: {
      baseUrl: 'http://127.0.0.1:9/v1/',
      auth: { type: 'header', name: 'x-api-key', secret: { env: secretEnv } },
      routes: [{ method: 'GET', path: '/items/:id' }],
    },
  },
});

async function expectStartupFailure(env: Record<string, string>, testDefaults = true): Promise<string> {
  const error = await startApp(env, { testDefaults }).then(
    async (app) => {
      await app.stop();
      throw new Error('the server started');
    },
    (reason: Error) => reason,
  );
  expect(error.message).toMatch(/next start exited with 1/);
  expect(error.message).toContain('Keyward cannot start.');
  return error.message;
}

describe('start-up refuses bad configuration', () => {
  it('without AUTH_SECRET and KEYWARD_SESSION_SECRET in production', async () => {
    const output = await expectStartupFailure({});
    expect(output).toContain('AUTH_SECRET: is not set');
    expect(output).toContain('KEYWARD_SESSION_SECRET: is not set');
  });

  it('with a short KEYWARD_SESSION_SECRET, naming it without echoing it', async () => {
    const short = randomSecret('s').slice(0, 20);
    const output = await expectStartupFailure({ AUTH_SECRET: randomSecret('auth'), KEYWARD_SESSION_SECRET: short });
    expect(output).toContain('KEYWARD_SESSION_SECRET: must be at least 32 characters');
    expect(output).not.toContain(short);
  });

  it('naming the upstream field whose secret is missing', async () => {
    const output = await expectStartupFailure({ ...testSessionSecrets(), KEYWARD_CONFIG: writeConfig(upstream('ECHO_KEY')) });
    expect(output).toContain('upstreams.echo.auth.secret: environment variable ECHO_KEY is not set');
  });

  it('refusing a secret with surrounding whitespace without printing it', async () => {
    const key = randomSecret('key');
    const output = await expectStartupFailure({
      ...testSessionSecrets(),
      KEYWARD_CONFIG: writeConfig(upstream('ECHO_KEY')),
      ECHO_KEY: `${key}\r\n`,
    });
    expect(output).toContain('upstreams.echo.auth.secret: ECHO_KEY has surrounding whitespace or control characters');
    expect(output).not.toContain(key);
  });

  it('refusing a secret referenced through a NEXT_PUBLIC_ variable', async () => {
    const key = randomSecret('key');
    const output = await expectStartupFailure({
      ...testSessionSecrets(),
      KEYWARD_CONFIG: writeConfig(upstream('NEXT_PUBLIC_ECHO_KEY')),
      NEXT_PUBLIC_ECHO_KEY: key,
    });
    expect(output).toContain('upstreams.echo.auth.secret.env: NEXT_PUBLIC_ variables are inlined into browser bundles');
    expect(output).not.toContain(key);
  });

  it('refusing a NEXT_PUBLIC_ variable that holds a secret', async () => {
    const key = randomSecret('key');
    const output = await expectStartupFailure({
      ...testSessionSecrets(),
      KEYWARD_CONFIG: writeConfig(upstream('ECHO_KEY')),
      ECHO_KEY: key,
      NEXT_PUBLIC_DEBUG: `key=${key}`,
    });
    expect(output).toContain('NEXT_PUBLIC_DEBUG: holds a secret');
    expect(output).not.toContain(key);
  });

  it('naming an invalid field of the JSON config', async () => {
    const config = upstream('ECHO_KEY');
    (config.upstreams.echo as Record<string, unknown>).baseUrl = 'http://api.example.com/v1/?token=abc';
    const output = await expectStartupFailure({ ...testSessionSecrets(), KEYWARD_CONFIG: writeConfig(config), ECHO_KEY: randomSecret() });
    expect(output).toMatch(/upstreams\.echo\.baseUrl: must not contain a query or fragment/);
    expect(output).not.toContain('token=abc');
  });
});

/**
 * What production needs before anyone can sign in, checked at start-up in the Auth.js style: one line per
 * problem, naming the setting. These servers get only the env given (none of the suite's defaults).
 */
describe('start-up refuses a production that could not serve anyone', () => {
  let usersFile: string;
  beforeAll(async () => {
    usersFile = await writeUsersFile([{ username: 'alice', password: randomSecret('pw'), roles: ['user'] }]);
  });

  it('without a way to compute the public origin (no AUTH_URL, no AUTH_TRUST_HOST)', async () => {
    const output = await expectStartupFailure({ ...testSessionSecrets(), KEYWARD_USERS_FILE: usersFile }, false);
    expect(output).toContain('AUTH_URL: must be set in production');
    expect(output).not.toContain('KEYWARD_USERS_FILE or KEYWARD_OIDC_ISSUER');
  });

  it('without a sign-in method (no users file, no OIDC issuer)', async () => {
    const output = await expectStartupFailure({ ...testSessionSecrets(), AUTH_URL: 'https://app.example.com' }, false);
    expect(output).toContain('KEYWARD_USERS_FILE or KEYWARD_OIDC_ISSUER: no sign-in method is configured');
    expect(output).not.toContain('AUTH_URL: must');
  });

  it('one line per problem when several are missing', async () => {
    const output = await expectStartupFailure({ ...testSessionSecrets() }, false);
    expect(output).toContain('AUTH_URL: must be set in production');
    expect(output).toContain('KEYWARD_USERS_FILE or KEYWARD_OIDC_ISSUER: no sign-in method is configured');
  });

  it('with an AUTH_URL that has a path Auth.js would take as its base', async () => {
    const output = await expectStartupFailure({ ...testSessionSecrets(), KEYWARD_USERS_FILE: usersFile, AUTH_URL: 'https://app.example.com/keyward' }, false);
    expect(output).toContain("AUTH_URL: must be the site's origin");
  });

  it('with AUTH_TRUST_HOST=false (Auth.js would trust the host anyway)', async () => {
    const output = await expectStartupFailure({ ...testSessionSecrets(), KEYWARD_USERS_FILE: usersFile, AUTH_TRUST_HOST: 'false' }, false);
    expect(output).toContain('AUTH_TRUST_HOST: must be true or 1, or unset');
  });

  it('with a users file that lists nobody', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-users-'));
    const empty = join(dir, 'users.json');
    writeFileSync(empty, JSON.stringify({ users: [] }));
    const output = await expectStartupFailure({ ...testSessionSecrets(), KEYWARD_USERS_FILE: empty, AUTH_URL: 'https://app.example.com' }, false);
    expect(output).toContain('users: must list at least one user');
    rmSync(dir, { recursive: true, force: true });
  });

  it('with half an OIDC configuration', async () => {
    const output = await expectStartupFailure(
      { ...testSessionSecrets(), AUTH_URL: 'https://app.example.com', KEYWARD_OIDC_ISSUER: 'https://id.example.com', KEYWARD_OIDC_CLIENT_ID: 'keyward' },
      false,
    );
    expect(output).toContain('KEYWARD_OIDC_ISSUER, KEYWARD_OIDC_CLIENT_ID and KEYWARD_OIDC_CLIENT_SECRET must be set together');
  });

  it('without any upstream, naming a variable that looks like a misspelled setting (KEYWARD_CONIFG)', async () => {
    const output = await expectStartupFailure(
      {
        ...testSessionSecrets(),
        AUTH_URL: 'https://app.example.com',
        KEYWARD_USERS_FILE: usersFile,
        KEYWARD_CONIFG: writeConfig(upstream('ECHO_KEY')),
      },
      false,
    );
    expect(output).toContain('KEYWARD_CONFIG or KEYWARD_CONFIG_JSON: no upstream is configured');
    expect(output).toContain('KEYWARD_CONIFG: not a Keyward setting, so it is ignored; did you mean KEYWARD_CONFIG?');
    expect(output).not.toContain('AUTH_URL: must');
  });

  it('and starts with exactly the README settings (AUTH_URL, the two secrets, a users file, the upstreams and their key)', async () => {
    const app = await startApp(
      {
        ...testSessionSecrets(),
        AUTH_URL: 'https://app.example.com',
        KEYWARD_USERS_FILE: usersFile,
        KEYWARD_CONFIG: writeConfig(upstream('ECHO_KEY')),
        ECHO_KEY: randomSecret('echo'),
      },
      { testDefaults: false },
    );
    try {
      expect((await fetch(`${app.url}/api/session`)).status).toBe(401);
      expect((await fetch(`${app.url}/api/auth/csrf`)).status).toBe(200);
    } finally {
      await app.stop();
    }
  });
});
