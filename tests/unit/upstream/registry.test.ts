import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ConfigError, defineUpstream, parseConfig, type UpstreamDefinition } from '../../../lib/core/config/load';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import { keyFingerprints, legacyFingerprint } from '../../../lib/core/keys/fingerprint';
import {
  buildRegistry,
  type Env,
  type ResolvedCredential,
  type Upstream,
} from '../../../lib/core/upstream/registry';
import { randomSecret } from '../../fixtures/secrets';
import { thrown } from '../support';

const ROUTES: UpstreamInput['routes'] = [{ method: 'GET', path: '/items/:id' }];

function define(auth: UpstreamInput['auth'], id = 'echo', extra: Partial<UpstreamInput> = {}): UpstreamDefinition {
  return defineUpstream(id, { baseUrl: 'https://api.example.com/v1/', auth, routes: ROUTES, ...extra });
}

function only(registry: Map<string, Upstream>, id = 'echo'): Upstream {
  const upstream = registry.get(id);
  if (!upstream) throw new Error(`no upstream ${id}`);
  return upstream;
}

function staticCredential(upstream: Upstream): ResolvedCredential {
  const plan = upstream.credential;
  if (plan.source !== 'static') throw new Error(`expected a static credential, got ${plan.source}`);
  return plan.credential;
}

/** buildRegistry must throw a ConfigError; returns its message. */
function registryError(definitions: UpstreamDefinition[], env: Env): string {
  const error = thrown(() => buildRegistry(definitions, env));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as Error).message;
}

const sha256Prefix = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex').slice(0, 12);

describe('buildRegistry', () => {
  it('returns a Map keyed by upstream id', () => {
    const registry = buildRegistry(
      [define({ type: 'bearer', secret: { env: 'A' } }, 'a'), define({ type: 'bearer', secret: { env: 'B' } }, 'b')],
      { A: randomSecret(), B: randomSecret() },
    );
    expect(registry).toBeInstanceOf(Map);
    expect([...registry.keys()]).toEqual(['a', 'b']);
  });

  it('resolves nothing through the prototype chain', () => {
    const registry = buildRegistry([define({ type: 'bearer', secret: { env: 'A' } }, 'a')], { A: randomSecret() });
    for (const id of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
      expect(registry.get(id)).toBeUndefined();
      expect(registry.has(id)).toBe(false);
    }
  });

  it('keeps constructor as an ordinary id', () => {
    const [def] = parseConfig(
      { upstreams: { constructor: { baseUrl: 'https://c.example/', auth: { type: 'bearer', secret: { env: 'C' } }, routes: ROUTES } } },
      't',
    );
    const registry = buildRegistry([def!], { C: randomSecret() });
    expect(only(registry, 'constructor').origin).toBe('https://c.example');
  });

  it('compiles base, origin, base path, routes and header sets', () => {
    const secret = randomSecret();
    const upstream = only(
      buildRegistry(
        [
          define({ type: 'bearer', secret: { env: 'K' } }, 'echo', {
            baseUrl: 'https://api.example.com:8443/v1',
            routes: [
              { method: 'GET', path: '/' },
              { method: 'POST', path: '/items/:id/*', roles: ['admin'], maxRequestBytes: 100, cacheControl: 'max-age=5' },
            ],
            requestHeaders: ['X-Tenant'],
            responseHeaders: ['x-trace'],
            maxRequestBytes: 2048,
          }),
        ],
        { K: secret },
      ),
    );
    expect(upstream.origin).toBe('https://api.example.com:8443');
    expect(upstream.basePath).toBe('/v1/');
    expect(upstream.routes[0]).toMatchObject({ method: 'GET', template: '/', segments: [], roles: null, maxRequestBytes: 2048 });
    expect(upstream.routes[0]!.cacheControl).toBe('private, no-store');
    expect(upstream.routes[1]).toMatchObject({
      method: 'POST',
      template: '/items/:id/*',
      segments: ['items', { param: 'id' }, { rest: true }],
      maxRequestBytes: 100,
      cacheControl: 'max-age=5',
    });
    expect([...upstream.routes[1]!.roles!]).toEqual(['admin']);
    expect([...upstream.requestHeaders]).toEqual(['x-tenant']);
    expect([...upstream.responseHeaders]).toEqual(['x-trace']);
  });

  it('refuses an id declared twice and names it', () => {
    const a = define({ type: 'bearer', secret: { env: 'A' } });
    const b = define({ type: 'bearer', secret: { env: 'A' } });
    const message = registryError([a, b], { A: randomSecret() });
    expect(message).toContain('upstreams.echo');
    expect(message).toContain('more than once');
  });

  it('reports every invalid upstream, not only the first', () => {
    const message = registryError(
      [define({ type: 'bearer', secret: { env: 'MISSING_A' } }, 'a'), define({ type: 'bearer', secret: { env: 'MISSING_B' } }, 'b')],
      {},
    );
    expect(message).toContain('upstreams.a.auth.secret');
    expect(message).toContain('upstreams.b.auth.secret');
  });
});

describe('secret resolution', () => {
  it.each([
    ['unset', undefined],
    ['empty', ''],
  ])('a %s variable is refused, naming the field and the variable', (_label, value) => {
    const message = registryError([define({ type: 'bearer', secret: { env: 'KW_ABSENT_KEY' } })], {
      KW_ABSENT_KEY: value,
    });
    expect(message).toContain('upstreams.echo.auth.secret');
    expect(message).toContain('KW_ABSENT_KEY');
  });

  // The environment is an ordinary object (process.env's prototype is Object.prototype): a name it inherits is not set.
  it.each(['constructor', 'toString', 'hasOwnProperty', '__proto__'])('a variable named %s that is not set is refused as not set', (name) => {
    const message = registryError([define({ type: 'bearer', secret: { env: name } })], process.env);
    expect(message).toMatch(/upstreams\.echo\.auth\.secret: the environment variable this field names .* is not set/);
  });

  it.each([
    ['a leading space', (s: string) => ` ${s}`],
    ['a trailing space', (s: string) => `${s} `],
    ['a trailing CR', (s: string) => `${s}\r`],
    ['a trailing CR LF', (s: string) => `${s}\r\n`],
    ['a leading tab', (s: string) => `\t${s}`],
    ['an inner LF', (s: string) => `${s.slice(0, 10)}\n${s.slice(10)}`],
    ['an inner NUL', (s: string) => `${s.slice(0, 10)}\u0000${s.slice(10)}`],
  ])('a secret with %s is refused without echoing the value', (_label, mangle) => {
    const secret = randomSecret();
    const message = registryError([define({ type: 'bearer', secret: { env: 'KW_KEY' } })], { KW_KEY: mangle(secret) });
    expect(message).toContain('upstreams.echo.auth.secret');
    expect(message).toContain('KW_KEY');
    // Neither the value nor a recognisable piece of it.
    for (let i = 0; i + 8 <= secret.length; i += 4) expect(message).not.toContain(secret.slice(i, i + 8));
  });

  it('a too-short secret is refused without echoing it', () => {
    const short = randomSecret('x').slice(-7);
    const message = registryError([define({ type: 'bearer', secret: { env: 'KW_KEY' } })], { KW_KEY: short });
    expect(message).toContain('upstreams.echo.auth.secret');
    expect(message).not.toContain(short);
  });

  it('a basic username from a missing variable names the username field', () => {
    const message = registryError(
      [define({ type: 'basic', username: { env: 'KW_USER' }, secret: { env: 'KW_PW' } })],
      { KW_PW: randomSecret() },
    );
    expect(message).toContain('upstreams.echo.auth.username');
    expect(message).toContain('KW_USER');
  });
});

describe('credentials', () => {
  it('header: lowercased name, prefix + secret', () => {
    const secret = randomSecret();
    const credential = staticCredential(
      only(buildRegistry([define({ type: 'header', name: 'X-Api-Key', prefix: 'Token ', secret: { env: 'K' } })], { K: secret })),
    );
    expect(credential).toMatchObject({ type: 'header', headerName: 'x-api-key', headerValue: `Token ${secret}` });
    expect(credential.queryName).toBeUndefined();
    expect(credential.secrets).toEqual([secret]);
  });

  it('bearer: Authorization: Bearer <secret>', () => {
    const secret = randomSecret();
    const credential = staticCredential(only(buildRegistry([define({ type: 'bearer', secret: { env: 'K' } })], { K: secret })));
    expect(credential).toMatchObject({ type: 'bearer', headerName: 'authorization', headerValue: `Bearer ${secret}` });
    expect(credential.secrets).toEqual([secret]);
  });

  it('basic with a literal username: RFC 7617 user:password in base64, all secret forms listed', () => {
    const secret = randomSecret();
    const credential = staticCredential(
      only(buildRegistry([define({ type: 'basic', username: 'svc-account', secret: { env: 'K' } })], { K: secret })),
    );
    expect(credential.headerName).toBe('authorization');
    const [scheme, token] = credential.headerValue!.split(' ');
    expect(scheme).toBe('Basic');
    expect(Buffer.from(token!, 'base64').toString('utf8')).toBe(`svc-account:${secret}`);
    expect(credential.secrets).toContain(secret);
    expect(credential.secrets).toContain(token);
  });

  it('basic with a username from the environment lists the username as a secret too', () => {
    const [user, secret] = [randomSecret('user'), randomSecret()];
    const credential = staticCredential(
      only(
        buildRegistry([define({ type: 'basic', username: { env: 'U' }, secret: { env: 'K' } })], { U: user, K: secret }),
      ),
    );
    const token = credential.headerValue!.slice('Basic '.length);
    expect(Buffer.from(token, 'base64').toString('utf8')).toBe(`${user}:${secret}`);
    expect([...credential.secrets].sort()).toEqual([secret, user, token].sort());
  });

  it('basic with a username from the environment shorter than a secret (8 characters): the username is not listed', () => {
    const secret = randomSecret();
    for (const user of ['a', 'abc', 'svc1234']) {
      const credential = staticCredential(
        only(buildRegistry([define({ type: 'basic', username: { env: 'U' }, secret: { env: 'K' } })], { U: user, K: secret })),
      );
      const token = credential.headerValue!.slice('Basic '.length);
      expect(Buffer.from(token, 'base64').toString('utf8')).toBe(`${user}:${secret}`);
      // Listed, `abc` would have its hex (616263) and base64 (YWJj) cut out of any log line and response.
      expect([...credential.secrets].sort(), user).toEqual([secret, token].sort());
    }
  });

  it('query: name and value, no header', () => {
    const secret = randomSecret();
    const credential = staticCredential(
      only(buildRegistry([define({ type: 'query', name: 'api_key', secret: { env: 'K' } })], { K: secret })),
    );
    expect(credential).toMatchObject({ type: 'query', queryName: 'api_key', queryValue: secret });
    expect(credential.headerName).toBeUndefined();
    expect(credential.secrets).toEqual([secret]);
  });
});

describe('fingerprint', () => {
  it('is keyed: 12 hex digits of an HMAC under the key the registry is given, not the bare SHA-256 of the secret', () => {
    const secret = randomSecret();
    const fingerprints = keyFingerprints(randomSecret('server'));
    const print = staticCredential(only(buildRegistry([define({ type: 'bearer', secret: { env: 'K' } })], { K: secret }, fingerprints))).fingerprint;
    expect(print).toMatch(/^[0-9a-f]{12}$/);
    expect(print).toBe(fingerprints.of(secret));
    expect(print).not.toBe(sha256Prefix(secret));
    expect(secret).not.toContain(print);
  });

  it('depends on the secret only: not on the id, auth type, variable name, prefix or username', () => {
    const secret = randomSecret();
    const fingerprints = keyFingerprints(randomSecret('server'));
    const registry = buildRegistry(
      [
        define({ type: 'header', name: 'x-key', prefix: 'Token ', secret: { env: 'A' } }, 'one'),
        define({ type: 'bearer', secret: { env: 'B' } }, 'two'),
        define({ type: 'query', name: 'k', secret: { env: 'A' } }, 'three'),
        define({ type: 'basic', username: 'someone', secret: { env: 'B' } }, 'four'),
        define({ type: 'basic', username: { env: 'U' }, secret: { env: 'A' } }, 'five'),
      ],
      { A: secret, B: secret, U: randomSecret('user') },
      fingerprints,
    );
    const prints = [...registry.values()].map((u) => staticCredential(u).fingerprint);
    expect(new Set(prints)).toEqual(new Set([fingerprints.of(secret)]));
    expect(legacyFingerprint(secret)).toBe(sha256Prefix(secret));
  });
});

