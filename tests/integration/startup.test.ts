import { describe, expect, it } from 'vitest';
import { startApp } from '../fixtures/app-server';
import { writeConfigFile } from '../fixtures/config';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';

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

async function expectStartupFailure(env: Record<string, string>): Promise<string> {
  const error = await startApp(env).then(
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
