import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../lib/core/config/load';
import { assertNoPublicSecrets, misspelledSettings, productionProblems, readSettings } from '../../lib/core/settings';
import type { Env } from '../../lib/core/upstream/registry';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { thrown } from './support';

/** A random string of exactly `length` characters. */
const randomOfLength = (length: number) => randomBytes(length).toString('base64url').slice(0, length);

function settingsError(env: Env): string {
  const error = thrown(() => readSettings(env));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as Error).message;
}

/** The message must not contain the value, nor any 8-character piece of it. */
function expectNotEchoed(message: string, value: string) {
  expect(message).not.toContain(value);
  for (let i = 0; i + 8 <= value.length; i += 4) expect(message).not.toContain(value.slice(i, i + 8));
}

describe('readSettings: session secrets', () => {
  it('accepts two secrets of at least 32 characters and applies defaults', () => {
    const env = { AUTH_SECRET: randomOfLength(32), KEYWARD_SESSION_SECRET: randomOfLength(64) };
    const settings = readSettings(env);
    expect(settings.AUTH_SECRET).toBe(env.AUTH_SECRET);
    expect(settings.KEYWARD_SESSION_SECRET).toBe(env.KEYWARD_SESSION_SECRET);
    expect(settings.KEYWARD_ALLOWED_ORIGINS).toBeNull();
    expect(settings.KEYWARD_DEFAULT_ROLES).toEqual(['user']);
  });

  it('KEYWARD_DEFAULT_ROLES set empty is no roles (what the README advises for an issuer anyone can sign up at)', () => {
    expect(readSettings({ ...testSessionSecrets(), KEYWARD_DEFAULT_ROLES: '' }).KEYWARD_DEFAULT_ROLES).toEqual([]);
    expect(readSettings({ ...testSessionSecrets(), KEYWARD_DEFAULT_ROLES: 'reader, user' }).KEYWARD_DEFAULT_ROLES).toEqual(['reader', 'user']);
  });

  it.each(['AUTH_SECRET', 'KEYWARD_SESSION_SECRET'] as const)('refuses a missing %s and names it', (name) => {
    const env: Record<string, string | undefined> = { ...testSessionSecrets() };
    delete env[name];
    const message = settingsError(env);
    expect(message).toContain(name);
  });

  it.each(['AUTH_SECRET', 'KEYWARD_SESSION_SECRET'] as const)('refuses an empty %s', (name) => {
    expect(settingsError({ ...testSessionSecrets(), [name]: '' })).toContain(name);
  });

  it.each(['AUTH_SECRET', 'KEYWARD_SESSION_SECRET'] as const)(
    'refuses a %s shorter than 32 characters without echoing it',
    (name) => {
      const short = randomOfLength(31);
      const message = settingsError({ ...testSessionSecrets(), [name]: short });
      expect(message).toContain(name);
      expect(message).toContain('32');
      expectNotEchoed(message, short);
    },
  );

  it.each([
    ['a trailing newline', (s: string) => `${s}\n`],
    ['a trailing CR', (s: string) => `${s}\r`],
    ['a leading space', (s: string) => ` ${s}`],
    ['an inner NUL', (s: string) => `${s.slice(0, 16)}\u0000${s.slice(16)}`],
  ])('refuses a secret with %s without echoing it', (_label, mangle) => {
    const value = randomSecret('auth');
    const message = settingsError({ ...testSessionSecrets(), AUTH_SECRET: mangle(value) });
    expect(message).toContain('AUTH_SECRET');
    expectNotEchoed(message, value);
  });

  it('names both secrets when both are missing', () => {
    const message = settingsError({});
    expect(message).toContain('AUTH_SECRET');
    expect(message).toContain('KEYWARD_SESSION_SECRET');
  });

  it('in production, names every missing setting at once: the secrets, AUTH_URL and a sign-in method', () => {
    const message = settingsError({ NODE_ENV: 'production' });
    for (const name of ['AUTH_SECRET', 'KEYWARD_SESSION_SECRET', 'AUTH_URL: must be set in production', 'KEYWARD_USERS_FILE or KEYWARD_OIDC_ISSUER']) {
      expect(message).toContain(name);
    }
    // A malformed AUTH_URL is the schema's to name, once.
    const malformed = settingsError({ NODE_ENV: 'production', AUTH_URL: 'not a url' });
    expect(malformed.match(/AUTH_URL:/g)).toHaveLength(1);
    // Trusting the host (AUTH_TRUST_HOST) and a users file leave only the secrets to name.
    const rest = settingsError({ NODE_ENV: 'production', AUTH_TRUST_HOST: 'true', KEYWARD_USERS_FILE: '/etc/keyward/users.json' });
    expect(rest).not.toContain('AUTH_URL');
    expect(rest).not.toContain('KEYWARD_USERS_FILE');
    // A tool that does not serve (the CLI) is told only about its own settings.
    const tool = thrown(() => readSettings({ NODE_ENV: 'production' }, { serving: false })) as Error;
    expect(tool.message).toContain('AUTH_SECRET');
    expect(tool.message).not.toContain('AUTH_URL');
  });

  it('does not echo a short secret when another setting is also invalid', () => {
    const short = randomOfLength(20);
    const message = settingsError({ AUTH_SECRET: short, KEYWARD_SESSION_SECRET: randomOfLength(40), KEYWARD_SESSION_MAX_AGE: 'x' });
    expectNotEchoed(message, short);
  });

  it('does not echo a REDIS_URL that carries a password', () => {
    const password = randomSecret('redis');
    const message = settingsError({ ...testSessionSecrets(), REDIS_URL: `http://:${password}@cache.internal:6379` });
    expect(message).toContain('REDIS_URL');
    expectNotEchoed(message, password);
  });

  // ioredis decodes the user-info itself and throws a bare "URI malformed" at start-up on a bad escape (a query
  // `?password=` it decodes leniently, as the log scrubber does); refused up front, naming the field only.
  it.each([
    ['the password', (pw: string) => `redis://default:${pw}%ZZ@cache.internal:6379`],
    ['the username', (pw: string) => `redis://us%er:${pw}@cache.internal:6379`],
  ])('refuses a REDIS_URL with malformed percent-encoding in %s, without echoing it', (_, url) => {
    const password = randomSecret('redis');
    const message = settingsError({ ...testSessionSecrets(), REDIS_URL: url(password) });
    expect(message).toContain('REDIS_URL');
    expect(message).toContain('percent-encoding');
    expectNotEchoed(message, password);
  });

  // Not a URL at all (a port out of range, an unclosed IPv6 bracket): said so, not blamed on percent-encoding.
  it.each([
    ['a port out of range', (pw: string) => `redis://:${pw}@127.0.0.1:99999`],
    ['an unclosed IPv6 bracket', (pw: string) => `redis://:${pw}@[::1:6379`],
  ])('refuses a REDIS_URL with %s as a URL that could not be parsed, without echoing it', (_, url) => {
    const password = randomSecret('redis');
    const message = settingsError({ ...testSessionSecrets(), REDIS_URL: url(password) });
    expect(message).toContain('REDIS_URL');
    expect(message).toContain('could not be parsed');
    expect(message).not.toContain('percent-encoding');
    expectNotEchoed(message, password);
  });

  it('accepts a REDIS_URL whose password is percent-encoded correctly', () => {
    const password = `${randomSecret('redis')}/%@:`;
    const settings = readSettings({ ...testSessionSecrets(), REDIS_URL: `redis://default:${encodeURIComponent(password)}@cache.internal:6379` });
    expect(new URL(settings.REDIS_URL!).password).toBe(encodeURIComponent(password));
  });
});

describe('readSettings: KEYWARD_METRICS_TOKEN', () => {
  // A scraper sends `Authorization: Bearer <token>`, one word of ASCII: any other token is a 401 for ever.
  it.each([
    ['an inner space', (t: string) => `${t.slice(0, 20)} ${t.slice(20)}`],
    ['a non-ASCII character', (t: string) => `${t}\u00e9`],
  ])('refuses a token with %s, naming the field without echoing it', (_, token) => {
    const value = token(randomSecret('metrics'));
    const message = settingsError({ ...testSessionSecrets(), KEYWARD_METRICS_TOKEN: value });
    expect(message).toContain('KEYWARD_METRICS_TOKEN');
    expect(message).toContain('no spaces');
    expectNotEchoed(message, value);
  });

  it('accepts a base64 token (openssl rand -base64 32)', () => {
    const value = randomBytes(32).toString('base64');
    expect(readSettings({ ...testSessionSecrets(), KEYWARD_METRICS_TOKEN: value }).KEYWARD_METRICS_TOKEN).toBe(value);
  });
});

describe('readSettings: NEXTAUTH_URL (NextAuth v4)', () => {
  it('alone, or naming another origin than AUTH_URL, stops start-up: Auth.js would read it and Keyward would not', () => {
    for (const env of [
      { NEXTAUTH_URL: 'https://app.example.com' },
      { NEXTAUTH_URL: 'https://old.example.com', AUTH_URL: 'https://app.example.com' },
      { NEXTAUTH_URL: 'not a url', AUTH_URL: 'https://app.example.com' },
    ]) {
      const message = settingsError({ ...testSessionSecrets(), ...env });
      expect(message).toContain('NEXTAUTH_URL');
      expect(message).toContain('AUTH_URL');
    }
  });

  it('beside AUTH_URL with the same origin is harmless', () => {
    const settings = readSettings({ ...testSessionSecrets(), NEXTAUTH_URL: 'https://app.example.com/', AUTH_URL: 'https://app.example.com' });
    expect(settings.AUTH_URL).toBe('https://app.example.com');
  });
});

describe('readSettings: OIDC', () => {
  const oidc = {
    KEYWARD_OIDC_ISSUER: 'https://issuer.example.com',
    KEYWARD_OIDC_CLIENT_ID: 'keyward',
    KEYWARD_OIDC_CLIENT_SECRET: randomSecret('oidc'),
  };

  it('accepts all three together', () => {
    const settings = readSettings({ ...testSessionSecrets(), ...oidc });
    expect(settings.KEYWARD_OIDC_ISSUER).toBe(oidc.KEYWARD_OIDC_ISSUER);
  });

  it('accepts none of them', () => {
    expect(readSettings(testSessionSecrets()).KEYWARD_OIDC_ISSUER).toBeUndefined();
  });

  it.each(Object.keys(oidc))('refuses the set without %s and names all three', (missing) => {
    const env: Record<string, string> = { ...testSessionSecrets(), ...oidc };
    delete env[missing];
    const message = settingsError(env);
    for (const name of Object.keys(oidc)) expect(message).toContain(name);
    expectNotEchoed(message, oidc.KEYWARD_OIDC_CLIENT_SECRET);
  });

  it.each([
    ['a trailing newline', (s: string) => `${s}\n`],
    ['a leading space', (s: string) => ` ${s}`],
    ['an inner NUL', (s: string) => `${s.slice(0, 8)}\u0000${s.slice(8)}`],
  ])('refuses a KEYWARD_OIDC_CLIENT_SECRET with %s without echoing it, as the other secrets', (_label, mangle) => {
    const message = settingsError({ ...testSessionSecrets(), ...oidc, KEYWARD_OIDC_CLIENT_SECRET: mangle(oidc.KEYWARD_OIDC_CLIENT_SECRET) });
    expect(message).toContain('KEYWARD_OIDC_CLIENT_SECRET: has surrounding whitespace or control characters');
    expectNotEchoed(message, oidc.KEYWARD_OIDC_CLIENT_SECRET);
  });

  it.each(Object.keys(oidc))('refuses %s alone', (only) => {
    const env = { ...testSessionSecrets(), [only]: oidc[only as keyof typeof oidc] };
    expect(settingsError(env)).toContain('must be set together');
  });

  // fetch refuses a URL with credentials, and its error quotes the URL: the password would reach the log.
  it.each([
    ['KEYWARD_OIDC_ISSUER', (password: string) => ({ ...oidc, KEYWARD_OIDC_ISSUER: `https://admin:${password}@issuer.example.com` })],
    ['KEYWARD_OIDC_ISSUER', (password: string) => ({ ...oidc, KEYWARD_OIDC_ISSUER: `https://${password}@issuer.example.com` })],
    ['AUTH_URL', (password: string) => ({ AUTH_URL: `https://admin:${password}@app.example.com` })],
  ])('refuses credentials in %s, naming it and never the password', (name, env) => {
    const password = randomSecret('pw');
    const message = settingsError({ ...testSessionSecrets(), ...env(password) });
    expect(message).toContain(`${name}: must not carry a user name or password`);
    expectNotEchoed(message, password);
  });

  it('KEYWARD_OIDC_EMAIL_DOMAINS: a comma-separated list of domain names, in lower case; only beside an issuer', () => {
    const settings = readSettings({ ...testSessionSecrets(), ...oidc, KEYWARD_OIDC_EMAIL_DOMAINS: ' Example.com, corp.example.org ,' });
    expect(settings.KEYWARD_OIDC_EMAIL_DOMAINS).toEqual(['example.com', 'corp.example.org']);
    expect(readSettings({ ...testSessionSecrets(), ...oidc }).KEYWARD_OIDC_EMAIL_DOMAINS).toEqual([]);
    for (const bad of ['@example.com', '*.example.com', 'ada@example.com', 'example.com/', 'exa mple.com']) {
      expect(settingsError({ ...testSessionSecrets(), ...oidc, KEYWARD_OIDC_EMAIL_DOMAINS: bad }), bad).toContain('KEYWARD_OIDC_EMAIL_DOMAINS');
    }
    expect(settingsError({ ...testSessionSecrets(), KEYWARD_OIDC_EMAIL_DOMAINS: 'example.com' })).toContain(
      'KEYWARD_OIDC_EMAIL_DOMAINS: applies to OIDC sign-in, which needs KEYWARD_OIDC_ISSUER',
    );
  });

  it('refuses a non-http issuer', () => {
    expect(settingsError({ ...testSessionSecrets(), ...oidc, KEYWARD_OIDC_ISSUER: 'ftp://issuer.example.com' })).toContain(
      'KEYWARD_OIDC_ISSUER',
    );
  });
});

describe('readSettings: allowed origins', () => {
  it('parses a comma-separated list of origins', () => {
    const settings = readSettings({
      ...testSessionSecrets(),
      KEYWARD_ALLOWED_ORIGINS: 'https://app.example.com, http://localhost:3000',
    });
    expect(settings.KEYWARD_ALLOWED_ORIGINS).toEqual(['https://app.example.com', 'http://localhost:3000']);
  });

  it.each(['https://app.example.com/', 'https://app.example.com/path', '*', 'app.example.com', 'null'])(
    'refuses %j as an origin',
    (value) => {
      expect(settingsError({ ...testSessionSecrets(), KEYWARD_ALLOWED_ORIGINS: value })).toContain(
        'KEYWARD_ALLOWED_ORIGINS',
      );
    },
  );
});

describe('readSettings: KEYWARD_MOBILE_DPOP', () => {
  it('is optional by default, and takes required', () => {
    expect(readSettings(testSessionSecrets()).KEYWARD_MOBILE_DPOP).toBe('optional');
    expect(readSettings({ ...testSessionSecrets(), KEYWARD_MOBILE_DPOP: 'required' }).KEYWARD_MOBILE_DPOP).toBe('required');
  });

  it.each(['true', 'REQUIRED', 'off', ''])('refuses %j, naming the setting', (value) => {
    expect(settingsError({ ...testSessionSecrets(), KEYWARD_MOBILE_DPOP: value })).toMatch(
      /KEYWARD_MOBILE_DPOP: must be optional or required/,
    );
  });
});

describe('readSettings: KEYWARD_LOG_LEVEL', () => {
  it('is info by default and when set empty, and takes each of pino\'s levels', () => {
    expect(readSettings(testSessionSecrets()).KEYWARD_LOG_LEVEL).toBe('info');
    expect(readSettings({ ...testSessionSecrets(), KEYWARD_LOG_LEVEL: '' }).KEYWARD_LOG_LEVEL).toBe('info');
    for (const level of ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']) {
      expect(readSettings({ ...testSessionSecrets(), KEYWARD_LOG_LEVEL: level }).KEYWARD_LOG_LEVEL).toBe(level);
    }
  });

  // pino throws on a level it does not know, which stopped start-up with "an unexpected error".
  it.each(['verbose', 'DEBUG', ' info', 'warning'])('refuses %j, naming the setting and the levels it takes', (value) => {
    expect(settingsError({ ...testSessionSecrets(), KEYWARD_LOG_LEVEL: value })).toContain(
      'KEYWARD_LOG_LEVEL: must be fatal, error, warn, info, debug, trace or silent',
    );
  });
});

describe('readSettings: KEYWARD_MOBILE_REFRESH_GRACE', () => {
  it('is 30 s by default, and takes 0 (no grace) to 120', () => {
    expect(readSettings(testSessionSecrets()).KEYWARD_MOBILE_REFRESH_GRACE).toBe(30);
    for (const value of [0, 120]) {
      expect(readSettings({ ...testSessionSecrets(), KEYWARD_MOBILE_REFRESH_GRACE: String(value) }).KEYWARD_MOBILE_REFRESH_GRACE).toBe(value);
    }
  });

  it.each(['-1', '121', '1.5', 'soon'])('refuses %j, naming the setting', (value) => {
    expect(settingsError({ ...testSessionSecrets(), KEYWARD_MOBILE_REFRESH_GRACE: value })).toContain('KEYWARD_MOBILE_REFRESH_GRACE');
  });
});

describe('assertNoPublicSecrets', () => {
  it('refuses a NEXT_PUBLIC_ variable holding a secret and names only the variable', () => {
    const secret = randomSecret();
    const error = thrown(() => assertNoPublicSecrets({ NEXT_PUBLIC_API_KEY: secret }, [secret]));
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toContain('NEXT_PUBLIC_API_KEY');
    expectNotEchoed(message, secret);
  });

  it('refuses a NEXT_PUBLIC_ variable that contains a secret among other text', () => {
    const secret = randomSecret();
    const env = { NEXT_PUBLIC_URL: `https://api.example.com/?key=${secret}&x=1` };
    const error = thrown(() => assertNoPublicSecrets(env, [randomSecret(), secret]));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('NEXT_PUBLIC_URL');
    expectNotEchoed((error as Error).message, secret);
  });

  it('accepts a secret in a server-only variable and unrelated public variables', () => {
    const secret = randomSecret();
    expect(() =>
      assertNoPublicSecrets(
        { ECHO_KEY: secret, NEXT_PUBLIC_APP_NAME: 'Keyward', NEXT_PUBLIC_EMPTY: '', NEXT_PUBLIC_UNSET: undefined },
        [secret],
      ),
    ).not.toThrow();
  });

  it('accepts anything when there are no secrets', () => {
    expect(() => assertNoPublicSecrets({ NEXT_PUBLIC_X: 'y' }, [])).not.toThrow();
  });
});

describe('productionProblems: AUTH_URL', () => {
  const production = (AUTH_URL: string) =>
    productionProblems({ NODE_ENV: 'production', AUTH_URL, AUTH_TRUST_HOST: false, VERCEL: undefined, KEYWARD_OIDC_ISSUER: undefined }, true);

  it('must be https:// on any name but localhost: browsers drop the Secure session cookies over plain HTTP', () => {
    expect(production('http://app.example.com').join('\n')).toContain('AUTH_URL: must be https:// in production');
    expect(production('http://10.0.0.5:3000').join('\n')).toContain('AUTH_URL: must be https://');
    for (const url of ['https://app.example.com', 'http://localhost:3000', 'http://127.0.0.1:3000', 'http://[::1]:3000']) {
      expect(production(url)).toEqual([]);
    }
  });

  // Auth.js takes AUTH_URL's path as its base path and joins `/callback/oidc` to it: a trailing slash makes
  // `…/api/auth//callback/oidc`, a redirect URI no provider has registered, so nobody could sign in with OIDC.
  it("is the origin, or Auth.js's /api/auth without a trailing slash", () => {
    for (const url of ['https://app.example.com', 'https://app.example.com/', 'https://app.example.com/api/auth']) expect(production(url)).toEqual([]);
    expect(production('https://app.example.com/api/auth/').join('\n')).toContain('AUTH_URL: must be the site\'s origin');
    expect(production('https://app.example.com/app').join('\n')).toContain('AUTH_URL: must be the site\'s origin');
  });
});

describe('productionProblems: KEYWARD_OIDC_ISSUER', () => {
  const withIssuer = (NODE_ENV: string, KEYWARD_OIDC_ISSUER: string) =>
    productionProblems({ NODE_ENV, AUTH_URL: 'https://app.example.com', AUTH_TRUST_HOST: false, VERCEL: undefined, KEYWARD_OIDC_ISSUER }, false);

  it('must be https on any host but a loopback one: the client secret and the tokens that make a session would cross in the clear', () => {
    for (const issuer of ['http://idp.internal:8080/realms/app', 'http://10.0.0.7:8080']) {
      expect(withIssuer('production', issuer).join('\n')).toContain('KEYWARD_OIDC_ISSUER: must be https');
    }
    for (const issuer of ['https://idp.example.com/realms/app', 'http://127.0.0.1:8080', 'http://localhost:9000']) {
      expect(withIssuer('production', issuer)).toEqual([]);
    }
    // Development: the developer's own network.
    expect(withIssuer('development', 'http://idp.internal:8080')).toEqual([]);
  });
});

describe('productionProblems: upstreams', () => {
  const settings = (NODE_ENV: string) =>
    ({
      NODE_ENV,
      AUTH_URL: 'https://app.example.com',
      AUTH_TRUST_HOST: false,
      VERCEL: undefined,
      KEYWARD_OIDC_ISSUER: undefined,
    }) as const;

  it('production with no upstream is a problem (every call would be 404); with one, or not known yet, or in development, it is not', () => {
    expect(productionProblems(settings('production'), true, 0).join('\n')).toContain(
      'KEYWARD_CONFIG or KEYWARD_CONFIG_JSON: no upstream is configured',
    );
    expect(productionProblems(settings('production'), true, 1)).toEqual([]);
    expect(productionProblems(settings('production'), true)).toEqual([]);
    expect(productionProblems(settings('development'), true, 0)).toEqual([]);
  });
});

describe('misspelledSettings', () => {
  it('names a KEYWARD_ variable one or two typing mistakes from a setting, and the setting meant', () => {
    expect(
      misspelledSettings({
        KEYWARD_CONIFG: 'config/keyward.json',
        KEYWARD_USER_FILE: 'users.json',
        KEYWARD_SESION_SECRET: 'x',
      }),
    ).toEqual([
      '  - KEYWARD_CONIFG: not a Keyward setting, so it is ignored; did you mean KEYWARD_CONFIG?',
      '  - KEYWARD_USER_FILE: not a Keyward setting, so it is ignored; did you mean KEYWARD_USERS_FILE?',
      '  - KEYWARD_SESION_SECRET: not a Keyward setting, so it is ignored; did you mean KEYWARD_SESSION_SECRET?',
    ]);
  });

  it('leaves alone the settings, the other variables Keyward reads, other KEYWARD_ names (a key read by name) and other prefixes', () => {
    expect(
      misspelledSettings({
        KEYWARD_CONFIG: 'a',
        KEYWARD_USERS_FILE: 'b',
        KEYWARD_LOG_LEVEL: 'debug',
        KEYWARD_NEXT_PORT: '1',
        KEYWARD_OPENAI_KEY: 'sk-x',
        KEYWARD_STRIPE_SECRET: 'sk-y',
        KEYWARD_CONFIG_JSONX_EXTRA: 'z',
        AUTH_SECRT: 'x',
      }),
    ).toEqual([]);
  });

  it('catches the product name mistyped (KEYWORD_), and leaves alone a variable the configuration reads by name', () => {
    expect(misspelledSettings({ KEYWORD_CONFIG: 'a' })).toEqual([
      '  - KEYWORD_CONFIG: not a Keyward setting, so it is ignored; did you mean KEYWARD_CONFIG?',
    ]);
    expect(misspelledSettings({ KEYWARD_CONFIG_2: 'a' })).toHaveLength(1);
    expect(misspelledSettings({ KEYWARD_CONFIG_2: 'a' }, new Set(['KEYWARD_CONFIG_2']))).toEqual([]);
  });

  it('never shows a value, and is part of the message when the settings do not parse', () => {
    const value = 'a-value-that-must-not-be-printed';
    const error = (
      thrown(() =>
        readSettings({ NODE_ENV: 'production', AUTH_SECRET: 'x'.repeat(40), KEYWARD_SESION_SECRET: value }),
      ) as Error
    ).message;
    expect(error).toContain('KEYWARD_SESSION_SECRET');
    expect(error).toContain(
      'KEYWARD_SESION_SECRET: not a Keyward setting, so it is ignored; did you mean KEYWARD_SESSION_SECRET?',
    );
    expect(error).not.toContain(value);
  });
});
