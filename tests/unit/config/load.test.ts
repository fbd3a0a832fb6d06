import { mkdtempSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, defineUpstream, parseConfig, readConfigFile, type UpstreamDefinition } from '../../../lib/core/config/load';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import { randomSecret } from '../../fixtures/secrets';
import { thrown } from '../support';

function valid(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    baseUrl: 'https://api.example.com/v1/',
    auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
    routes: [{ method: 'GET', path: '/items/:id', roles: ['user'] }],
    ...overrides,
  };
}

/** parseConfig must throw a ConfigError; returns its message. */
function configError(json: unknown): string {
  const error = thrown(() => parseConfig(json, 'test config'));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as ConfigError).message;
}

function tempFile(name: string, content: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'keyward-config-'));
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

describe('parseConfig', () => {
  it('parses the documented example and applies defaults', () => {
    const defs = parseConfig(
      {
        upstreams: {
          echo: {
            baseUrl: 'http://127.0.0.1:4010/v1/',
            auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
            routes: [
              { method: 'GET', path: '/items/:id', roles: ['user'] },
              { method: 'POST', path: '/items', roles: ['user'], maxRequestBytes: 65536 },
            ],
            timeoutMs: 30000,
          },
        },
      },
      'example',
    );
    expect(defs).toHaveLength(1);
    const [def] = defs;
    expect(def!.id).toBe('echo');
    expect(def!.config.timeoutMs).toBe(30000);
    expect(def!.config.allowInsecureHttp).toBe(false);
    expect(def!.config.requestHeaders).toEqual([]);
    expect(def!.config.routes[1]!.maxRequestBytes).toBe(65536);
  });

  it("refuses a credential header that Keyward sets itself or that frames the request (the key would replace it)", () => {
    for (const name of ['X-Request-Id', 'accept-encoding', 'user-agent', 'content-type', 'host', 'cookie', 'connection', 'content-length']) {
      const auth = { type: 'header', name, secret: { env: 'ECHO_KEY' } };
      expect(configError({ upstreams: { echo: valid({ auth }) } }), name).toContain('upstreams.echo.auth.name: cannot carry a credential');
    }
    for (const name of ['x-api-key', 'authorization', 'api-key', 'x-goog-api-key', 'proxy-authorization']) {
      expect(parseConfig({ upstreams: { echo: valid({ auth: { type: 'header', name, secret: { env: 'ECHO_KEY' } } }) } }, 'c')).toHaveLength(1);
    }
  });

  it('adds a trailing slash to a base URL without one', () => {
    const [def] = parseConfig({ upstreams: { a: valid({ baseUrl: 'https://api.example.com/v1' }) } }, 't');
    expect(def!.config.baseUrl).toBe('https://api.example.com/v1/');
  });

  it('accepts $schema at the top level', () => {
    expect(parseConfig({ $schema: './keyward.schema.json', upstreams: {} }, 't')).toEqual([]);
  });

  it('names the source in the error', () => {
    expect(configError({ upstreams: { echo: valid({ baseUrl: 'ftp://x.example/' }) } })).toContain('test config');
  });

  describe('unknown fields are refused and named', () => {
    it.each([
      ['top level', { upstreams: {}, extra: true }, 'extra'],
      ['upstream', { upstreams: { echo: valid({ baseURL: 'https://x.example/' }) } }, 'baseURL'],
      [
        'auth',
        { upstreams: { echo: valid({ auth: { type: 'bearer', secret: { env: 'K' }, name: 'x' } }) } },
        'upstreams.echo.auth',
      ],
      [
        'route',
        { upstreams: { echo: valid({ routes: [{ method: 'GET', path: '/', role: ['x'] }] }) } },
        'upstreams.echo.routes.0',
      ],
      [
        'secret reference',
        { upstreams: { echo: valid({ auth: { type: 'bearer', secret: { env: 'K', value: 'v' } } }) } },
        'upstreams.echo.auth.secret',
      ],
    ])('%s', (_label, json, expected) => {
      expect(configError(json)).toContain(expected);
    });
  });

  describe('baseUrl', () => {
    it.each([
      ['a query', 'https://api.example.com/v1/?a=1'],
      ['an empty query', 'https://api.example.com/v1/?'],
      ['a fragment', 'https://api.example.com/v1/#x'],
      ['credentials', 'https://user:pass@api.example.com/v1/'],
      ['a username only', 'https://user@api.example.com/v1/'],
      ['ftp:', 'ftp://api.example.com/'],
      ['file:', 'file:///etc/passwd'],
      ['javascript:', 'javascript:alert(1)'],
      ['plain http to a DNS host', 'http://api.example.com/v1/'],
      ['plain http to a private address', 'http://10.0.0.1/'],
      ['plain http to 0.0.0.0', 'http://0.0.0.0:8080/'],
      ['plain http to a look-alike of localhost', 'http://localhost.evil.example/'],
      ['plain http to a look-alike of 127.0.0.1', 'http://127.0.0.1.nip.io/'],
    ])('refuses %s, naming upstreams.echo.baseUrl', (_label, baseUrl) => {
      expect(configError({ upstreams: { echo: valid({ baseUrl }) } })).toContain('upstreams.echo.baseUrl');
    });

    it('never echoes credentials or a query from the refused URL', () => {
      const secret = randomSecret();
      const message = [
        configError({ upstreams: { echo: valid({ baseUrl: `https://svc:${secret}@api.example.com/` }) } }),
        configError({ upstreams: { echo: valid({ baseUrl: `https://api.example.com/?key=${secret}` }) } }),
        configError({ upstreams: { echo: valid({ baseUrl: `https://api.example.com/#${secret}` }) } }),
      ].join('\n');
      expect(message).not.toContain(secret);
    });

    // Regression test (fixed bug in lib/core/config/schema.ts:170): upstreamSchema's superRefine calls `new URL(upstream.baseUrl)` even
    // after baseUrlSchema reported the value as unparsable (custom issues do not abort in zod 4), so the
    // TypeError "Invalid URL" escapes parseConfig/defineUpstream/readConfigFile instead of a ConfigError.
    it.each([
      ['not a URL', 'api.example.com/v1'],
      ['a relative path', '/v1/'],
      ['an empty string', ''],
    ])('refuses %s with a ConfigError naming upstreams.echo.baseUrl', (_label, baseUrl) => {
      expect(configError({ upstreams: { echo: valid({ baseUrl }) } })).toContain('upstreams.echo.baseUrl');
    });

    it.each([
      'http://127.0.0.1:4010/v1/',
      'http://127.42.0.7/',
      'http://localhost:8080/x/',
      'http://[::1]:9000/',
      'https://api.example.com/',
      'https://api.example.com:8443/a/b/',
    ])('accepts %s', (baseUrl) => {
      expect(parseConfig({ upstreams: { echo: valid({ baseUrl }) } }, 't')).toHaveLength(1);
    });

    it('accepts plain http to a DNS host only with allowInsecureHttp', () => {
      const defs = parseConfig(
        { upstreams: { echo: valid({ baseUrl: 'http://api.example.com/', allowInsecureHttp: true }) } },
        't',
      );
      expect(defs[0]!.config.baseUrl).toBe('http://api.example.com/');
    });
  });

  describe('route templates', () => {
    it.each([
      ['no leading slash', 'items'],
      ['trailing slash', '/items/'],
      ['empty segment', '/a//b'],
      ['dot-dot', '/../admin'],
      ['dot', '/./x'],
      ['empty parameter name', '/a/:'],
      ['parameter starting with a digit', '/a/:1x'],
      ['query', '/a?x=1'],
      ['fragment', '/a#b'],
      ['percent', '/a/%2f'],
      ['space', '/a b'],
      ['non-ASCII', '/caf\u00e9'],
      ['* inside a segment', '/a*b/:c*'],
    ])('refuses %s, naming the route path', (_label, path) => {
      const message = configError({ upstreams: { echo: valid({ routes: [{ method: 'GET', path }] }) } });
      expect(message).toContain('upstreams.echo.routes.0.path');
    });

    it.each(['/a/*/b', '/*/*', '/*/x'])('refuses %s: "*" may only be last', (path) => {
      const message = configError({
        upstreams: { echo: valid({ routes: [{ method: 'GET', path: '/' }, { method: 'GET', path }] }) },
      });
      expect(message).toContain('upstreams.echo.routes.1.path');
      expect(message).toContain('"*" may only be the last segment');
    });

    it.each(['/', '/items', '/items/:id', '/files/*', '/*', '/v1/a.b/:x_y/sub/:Z9'])('accepts %s', (path) => {
      expect(parseConfig({ upstreams: { echo: valid({ routes: [{ method: 'GET', path }] }) } }, 't')).toHaveLength(1);
    });

    it.each(['TRACE', 'CONNECT', 'get', 'FOO'])('refuses method %s', (method) => {
      const message = configError({ upstreams: { echo: valid({ routes: [{ method, path: '/' }] }) } });
      expect(message).toContain('upstreams.echo.routes.0.method');
    });

    it('refuses an upstream without routes', () => {
      expect(configError({ upstreams: { echo: valid({ routes: [] }) } })).toContain('upstreams.echo.routes');
    });
  });

  describe('secret references', () => {
    it.each(['NEXT_PUBLIC_ECHO_KEY', 'next_public_echo_key', 'Next_Public_X'])('refuses %s', (env) => {
      const message = configError({ upstreams: { echo: valid({ auth: { type: 'bearer', secret: { env } } }) } });
      expect(message).toContain('upstreams.echo.auth.secret.env');
      expect(message).toContain('NEXT_PUBLIC_');
    });

    it('refuses a basic username taken from a NEXT_PUBLIC_ variable', () => {
      const message = configError({
        upstreams: {
          echo: valid({ auth: { type: 'basic', username: { env: 'NEXT_PUBLIC_USER' }, secret: { env: 'PW' } } }),
        },
      });
      expect(message).toContain('upstreams.echo.auth.username');
    });

    it('refuses an inlined secret value without echoing it', () => {
      const secret = randomSecret();
      const message = configError({
        upstreams: { echo: valid({ auth: { type: 'bearer', secret } }) },
      });
      expect(message).toContain('upstreams.echo.auth.secret');
      expect(message).not.toContain(secret);
    });

    it.each(['1KEY', 'MY-KEY', 'A B', ''])('refuses the env name %j', (env) => {
      expect(configError({ upstreams: { echo: valid({ auth: { type: 'bearer', secret: { env } } }) } })).toContain(
        'upstreams.echo.auth.secret.env',
      );
    });
  });

  describe('pass-through headers', () => {
    const FORBIDDEN = [
      'authorization',
      'Authorization',
      'proxy-authorization',
      'cookie',
      'set-cookie',
      'www-authenticate',
      'proxy-authenticate',
      'x-api-key',
      'host',
      'connection',
      'transfer-encoding',
      'upgrade',
      'location',
      'DPoP',
    ];
    it.each(FORBIDDEN)('refuses %s in requestHeaders and responseHeaders', (name) => {
      expect(configError({ upstreams: { echo: valid({ requestHeaders: ['x-ok', name] }) } })).toContain(
        'upstreams.echo.requestHeaders.1',
      );
      expect(configError({ upstreams: { echo: valid({ responseHeaders: [name] }) } })).toContain(
        'upstreams.echo.responseHeaders.0',
      );
    });

    it.each(['X-Original-URL', 'x-rewrite-url', 'x-forwarded-prefix', 'X-Forwarded-Host', 'x-forwarded-for', 'x-forwarded-ssl', 'X-Forwarded-Scheme', 'x-forwarded-uri', 'x-original-host', 'forwarded', 'x-real-ip'])(
      'refuses %s in requestHeaders (an upstream routes by it or trusts it about the caller), not in headers or responseHeaders',
      (name) => {
        expect(configError({ upstreams: { echo: valid({ requestHeaders: ['x-ok', name] }) } })).toContain(
          `upstreams.echo.requestHeaders.1: "${name.toLowerCase()}" is never taken from a client`,
        );
        expect(() => parseConfig({ upstreams: { echo: valid({ responseHeaders: [name], headers: { [name]: 'fixed' } }) } }, 'test')).not.toThrow();
      },
    );

    it("refuses the upstream's own credential header", () => {
      const auth = { type: 'header', name: 'X-Custom-Token', secret: { env: 'K' } };
      expect(configError({ upstreams: { echo: valid({ auth, requestHeaders: ['x-custom-token'] }) } })).toContain(
        'upstreams.echo.requestHeaders.0',
      );
      expect(configError({ upstreams: { echo: valid({ auth, responseHeaders: ['X-CUSTOM-TOKEN'] }) } })).toContain(
        'upstreams.echo.responseHeaders.0',
      );
    });

    it('refuses a header name that is not an HTTP token', () => {
      expect(configError({ upstreams: { echo: valid({ requestHeaders: ['x bad'] }) } })).toContain(
        'upstreams.echo.requestHeaders.0',
      );
    });

    it.each(['host', 'cookie', 'content-length', 'transfer-encoding'])(
      'refuses %s as the credential header',
      (name) => {
        expect(
          configError({ upstreams: { echo: valid({ auth: { type: 'header', name, secret: { env: 'K' } } }) } }),
        ).toContain('upstreams.echo.auth.name');
      },
    );
  });

  describe('upstream ids', () => {
    it.each(['Echo', '-x', '', 'a b', 'a'.repeat(64), 'a/b'])('refuses the id %j', (id) => {
      expect(configError({ upstreams: { [id]: valid() } })).toContain('upstreams');
    });

    const protoJson = () =>
      JSON.parse(`{"upstreams":{"__proto__":${JSON.stringify(valid({ baseUrl: 'https://polluted.example/' }))}}}`);

    it('an own __proto__ id neither pollutes Object.prototype nor becomes an upstream', () => {
      const json = protoJson();
      expect(Object.keys(json.upstreams)).toEqual(['__proto__']);
      let defs: { id: string }[] = [];
      try {
        defs = parseConfig(json, 't');
      } catch (error) {
        expect(error).toBeInstanceOf(ConfigError);
      }
      expect(defs.map((d) => d.id)).not.toContain('__proto__');
      expect(({} as Record<string, unknown>).baseUrl).toBeUndefined();
      expect(Object.prototype).not.toHaveProperty('baseUrl');
    });

    // Regression test (fixed bug in lib/core/config/schema.ts keywardConfigSchema, via zod's record parser which skips "__proto__"
    // keys): the id fails UPSTREAM_ID, yet the entry is silently dropped and parseConfig returns [] instead
    // of a ConfigError naming upstreams.__proto__ ("invalid config → exit non-zero naming the field").
    it('refuses __proto__ as an id with a ConfigError naming it', () => {
      expect(configError(protoJson())).toContain('upstreams.__proto__');
    });

    // zod's record parser skips an own `__proto__` key, so a `paramEquals` (or `caps`, a claim's `keys`, a body
    // contract's `properties`) naming it was accepted with that entry gone: an ownership check dropped in silence.
    it.each([
      ['paramEquals', '{"method":"GET","path":"/users/:__proto__","paramEquals":{"__proto__":"userId"}}', 'routes.0.paramEquals.__proto__'],
      ['a body contract', '{"method":"POST","path":"/x","body":{"type":"object","properties":{"__proto__":{"type":"string"}}}}', 'routes.0.body.properties.__proto__'],
    ])('refuses a __proto__ key in %s, naming where it is', (_what, route, at) => {
      const json = JSON.parse(`{"upstreams":{"a":${JSON.stringify(valid({ routes: [] })).replace('"routes":[]', `"routes":[${route}]`)}}}`);
      expect(configError(json)).toContain(`upstreams.a.${at}`);
    });

    it('refuses a config nested too deep to be checked for __proto__, naming where', () => {
      let spec = '{"type":"object","properties":{"__proto__":{"type":"string"}}}';
      for (let i = 0; i < 30; i++) spec = `{"type":"object","properties":{"a":${spec}}}`;
      const json = JSON.parse(`{"upstreams":{"a":${JSON.stringify(valid({ routes: [] })).replace('"routes":[]', `"routes":[{"method":"POST","path":"/x","body":${spec}}]`)}}}`);
      expect(configError(json)).toMatch(/upstreams\.a\.routes\.0\.body(\.properties\.a)+: nested more than 64 levels deep/);
    });

    it('accepts constructor as an ordinary id', () => {
      const defs = parseConfig({ upstreams: { constructor: valid() } }, 't');
      expect(defs.map((d) => d.id)).toEqual(['constructor']);
    });
  });
});

describe('defineUpstream', () => {
  it('returns the parsed config with defaults', () => {
    const def = defineUpstream('echo', valid() as unknown as UpstreamInput);
    expect(def.id).toBe('echo');
    expect(def.config.timeoutMs).toBe(30_000);
    expect(def.config.auth).toEqual({ type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } });
  });

  it('names the field path under upstreams.<id>', () => {
    const error = thrown(() => defineUpstream('echo', valid({ baseUrl: 'ftp://x.example/' }) as unknown as UpstreamInput));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('upstreams.echo.baseUrl');
  });

  it('an id of __proto__ does not touch Object.prototype', () => {
    try {
      defineUpstream('__proto__', valid({ baseUrl: 'https://polluted.example/' }) as unknown as UpstreamInput);
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
    }
    expect(Object.prototype).not.toHaveProperty('baseUrl');
    expect(Object.prototype).not.toHaveProperty('routes');
  });

  it('refuses a __proto__ key anywhere in the input (zod would drop it), naming where it is', () => {
    const route: Record<string, unknown> = { method: 'GET', path: '/users/:__proto__' };
    route.paramEquals = JSON.parse('{"__proto__":"userId"}');
    const error = thrown(() => defineUpstream('echo', valid({ routes: [route] }) as unknown as UpstreamInput));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('upstreams.echo.routes.0.paramEquals.__proto__');
  });

  it.each(['_proto', 'Echo', 'a b', '-x'])('refuses the invalid id %j', (id) => {
    expect(thrown(() => defineUpstream(id, valid() as unknown as UpstreamInput))).toBeInstanceOf(ConfigError);
  });

  // Regression test (fixed bug in lib/core/config/load.ts defineUpstream): the id is validated by parsing `{ [id]: input }` with the
  // record schema, and zod's record parser skips an own "__proto__" key, so no issue is raised and
  // defineUpstream('__proto__', …) returns a definition that buildRegistry then registers. Every other id
  // that breaks UPSTREAM_ID (e.g. "_proto") is refused.
  it('refuses __proto__ as an id', () => {
    expect(thrown(() => defineUpstream('__proto__', valid() as unknown as UpstreamInput))).toBeInstanceOf(ConfigError);
  });
});

describe('a key pasted where a name belongs is not printed by the error that refuses it', () => {
  const secret = randomSecret('pasted-key');
  /** The same, as a parameter may be named (letters, digits and `_`). */
  const asName = secret.replace(/-/g, '_');
  const cases: Record<string, unknown> = {
    'a header name': { ...valid(), headers: { [`Authorization: Bearer ${secret}`]: 'x' } },
    'an unknown field': { ...valid(), [secret]: true },
    'an unknown field of a secret reference': { ...valid(), auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY', [secret]: 1 } } },
    'a paramEquals name that is not a parameter': { ...valid(), routes: [{ method: 'GET', path: '/items/:id', paramEquals: { [asName]: 'userId' } }] },
    "a body contract's required name": {
      ...valid(),
      routes: [{ method: 'POST', path: '/items', body: { type: 'object', properties: { a: { type: 'string' } }, required: [secret] } }],
    },
    "a query contract's required name": {
      ...valid(),
      routes: [{ method: 'GET', path: '/items', query: { properties: { a: { type: 'string' } }, required: [secret] } }],
    },
    'a body field a route without a body contract names': { ...valid(), routes: [{ method: 'POST', path: '/items', identity: { [`body.${secret}`]: 'userId' } }] },
    'a duplicate route whose path holds it': {
      ...valid(),
      routes: [
        { method: 'GET', path: `/bot${secret}/getMe` },
        { method: 'GET', path: `/bot${secret}/getMe` },
      ],
    },
  };
  for (const [name, upstream] of Object.entries(cases)) {
    it(name, () => {
      const error = thrown(() => parseConfig({ upstreams: { echo: upstream } }, 'KEYWARD_CONFIG'));
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toMatch(/upstreams\.echo/);
      expect((error as Error).message).not.toContain(secret);
      expect((error as Error).message).not.toContain(asName);
    });
  }

  it('an upstream id, in a file and in defineUpstream', () => {
    expect((thrown(() => parseConfig({ upstreams: { [secret]: valid() } }, 'KEYWARD_CONFIG')) as Error).message).not.toContain(secret);
    const error = thrown(() => defineUpstream(secret, valid() as never));
    expect((error as Error).message).toContain('(a name not shown)');
    expect((error as Error).message).not.toContain(secret);
  });

  it('a short plain name is still shown (control)', () => {
    const error = thrown(() => parseConfig({ upstreams: { echo: { ...valid(), colour: 'blue' } } }, 'KEYWARD_CONFIG'));
    expect((error as Error).message).toContain('upstreams.echo: unknown field: "colour"');
  });
});

describe("a route's cacheControl on an upstream with per-user credentials keeps answers out of shared caches", () => {
  const perUser = {
    '{"user":"key"}': { user: 'key' },
    '{"oauth":…}': { oauth: 'github' },
    '{"claim":…}': { claim: 'org', keys: { acme: { env: 'ACME_KEY' } } },
  };
  const withCache = (secret: unknown, cacheControl: string) =>
    ({ upstreams: { echo: valid({ auth: { type: 'bearer', secret }, routes: [{ method: 'GET', path: '/items/:id', cacheControl }] }) } });

  for (const [shown, secret] of Object.entries(perUser)) {
    for (const cacheControl of [
      'public, s-maxage=300',
      'max-age=60',
      's-maxage=60',
      'no-cache',
      'private, public, max-age=5',
      'PUBLIC, no-store',
      // An argument makes `private` name headers only: the rest of the answer may still be stored.
      'private="set-cookie", s-maxage=600',
      'private=x-foo, s-maxage=600',
      'private="a, b", max-age=60',
      // A comma inside a quoted argument separates nothing: there is no `no-store` directive here.
      's-maxage=600, ext="a, no-store, b"',
      // A cache that knows `must-understand` ignores `no-store` for a status it understands.
      'must-understand, no-store, s-maxage=600',
      // Not a list of directives as a cache reads one.
      'no-store "x"',
      'private, max-age=60 extra',
      'ext="unterminated, no-store',
    ]) {
      it(`${shown}: "${cacheControl}" stops start-up, naming the field`, () => {
        const message = configError(withCache(secret, cacheControl));
        expect(message).toContain(`upstreams.echo.routes.0.cacheControl: each user's answers come with their own credential (${shown})`);
      });
    }
    for (const cacheControl of ['private, max-age=3600', 'no-store', 'Private', 'no-store, max-age=0', ' private ,max-age=5', 'no-store, ext="a, public, b"', 'private, ext="say \\"public\\""', 'private, must-understand, no-store']) {
      it(`${shown}: "${cacheControl}" is taken`, () => {
        expect(parseConfig(withCache(secret, cacheControl), 'test config')).toHaveLength(1);
      });
    }
  }

  it('a shared service key may let shared caches store its answers (the operator\'s choice)', () => {
    expect(parseConfig(withCache({ env: 'ECHO_KEY' }, 'public, s-maxage=300'), 'test config')).toHaveLength(1);
  });
});

describe('a key written into a fixed header is refused, naming the header, never printing the key', () => {
  // Random, with a digit at the end as a real key's random part has one somewhere (KEY_SHAPED looks for it).
  const random = (length: number) => `${randomBytes(length).toString('base64url').slice(0, length - 1)}${randomBytes(1)[0]! % 10}`;
  // Made up at run time in the shapes their issuers document; none is a real key.
  const shaped: Record<string, string> = {
    "a JWT (Supabase's apikey)": `eyJ${random(30)}.eyJ${random(60)}.${random(43)}`,
    'a scheme and a token': `Bearer ${random(32)}`,
    'an OpenAI key': `sk-proj-${random(48)}`,
    'a Stripe secret key': `sk_live_${random(40)}`,
    'a GitHub token': `ghp_${random(36)}`,
    'an AWS access key id': `AKIA${randomBytes(16).toString('hex').toUpperCase().slice(0, 16)}`,
    'a Google API key': `AIza${random(35)}`,
    'a key inside other text': `token=gho_${random(36)}; v=1`,
  };
  for (const [what, value] of Object.entries(shaped)) {
    for (const field of ['headers', 'defaultHeaders'] as const) {
      it(`${what}, in ${field}`, () => {
        const error = thrown(() => parseConfig({ upstreams: { echo: { ...valid(), [field]: { 'x-extra': value } } } }, 'KEYWARD_CONFIG'));
        expect(error).toBeInstanceOf(ConfigError);
        expect((error as Error).message).toContain(`upstreams.echo.${field}.x-extra: looks like a key or token`);
        expect((error as Error).message).not.toContain(value);
      });
    }
  }

  it('ordinary fixed values pass (control)', () => {
    const headers = {
      'anthropic-version': '2023-06-01',
      'openai-organization': 'org_4f1c9d2b7a',
      'x-tenant': '3f2b8a1e-6c4d-4b9e-9f0a-1d2c3b4a5e6f',
      accept: 'application/vnd.github+json',
      'x-mode': 'sk-shortish',
      // Words after a prefix or a scheme, no random part (no digit): settings, not keys.
      'x-features': 'hf_transfer_enabled_for_all',
      'x-note': 'Token exchange enabled',
      'want-digest': 'Digest sha-256=abcdefghijkl',
    };
    const [definition] = parseConfig({ upstreams: { echo: { ...valid(), headers } } }, 'KEYWARD_CONFIG');
    expect(definition!.config.headers).toEqual(headers);
  });
});

describe('readConfigFile', () => {
  it('reads and validates a JSON file', () => {
    const path = tempFile('keyward.json', JSON.stringify({ upstreams: { echo: valid(), other: valid() } }));
    expect(readConfigFile(path).map((d) => d.id)).toEqual(['echo', 'other']);
  });

  it('refuses a name given twice in one object (JSON.parse would keep the last), naming where, in the file and the variable', async () => {
    const upstream = JSON.stringify(valid());
    // The same upstream id twice: the first (stricter) definition would be dropped without a word.
    const twice = `{\n  "upstreams": {\n    "echo": ${upstream},\n    "echo": ${upstream}\n  }\n}`;
    const error = thrown(() => readConfigFile(tempFile('twice.json', twice)));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toMatch(/is invalid:\n {2}- upstreams\.echo: appears twice in one object \(again at line 4, column 5\)/);
    // A field inside a route, as deep as it goes: `roles` twice would leave the route open to the second list.
    const roles = `{"upstreams": {"echo": {"baseUrl": "https://api.example.com/v1/", "auth": {"type": "header", "name": "x-api-key", "secret": {"env": "ECHO_KEY"}},
      "routes": [{"method": "GET", "path": "/a"}, {"method": "GET", "path": "/b", "roles": ["admin"], "roles": ["user"]}]}}}`;
    const { readConfigJson } = await import('../../../lib/core/config/load');
    expect((thrown(() => readConfigJson(roles)) as Error).message).toMatch(
      /^KEYWARD_CONFIG_JSON is invalid:\n {2}- upstreams\.echo\.routes\.1\.roles: appears twice in one object \(again at line 2, column \d+\)/,
    );
    // A long name (it may be a key pasted in the wrong place) is not shown.
    const secret = randomSecret('pasted-key');
    const pasted = thrown(() => readConfigJson(`{"upstreams": {}, "${secret}": 1, "${secret}": 2}`));
    expect((pasted as Error).message).toContain('(a name not shown): appears twice');
    expect((pasted as Error).message).not.toContain(secret);
    // The same name in different objects is fine.
    expect(readConfigFile(tempFile('ok.json', JSON.stringify({ upstreams: { echo: valid(), other: valid() } }))).map((d) => d.id)).toEqual(['echo', 'other']);
  });

  it('a file nested thousands of levels deep is a ConfigError naming where, not a stack overflow at start-up', async () => {
    const { readConfigJson } = await import('../../../lib/core/config/load');
    // Deep enough to overflow a recursive walk, shallow enough for JSON.parse and the duplicate-name parser.
    for (const [open, close] of [['[', ']'], ['{"a":', '}']] as const) {
      const text = `{"upstreams": {"echo": ${open.repeat(2_400)}1${close.repeat(2_400)}}}`;
      const error = thrown(() => readConfigJson(text));
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toMatch(/upstreams\.echo(\.(0|a))+: nested more than 64 levels deep/);
    }
  });

  it('names the file and the reason when it cannot be read', () => {
    const path = join(mkdtempSync(join(tmpdir(), 'keyward-config-')), 'missing.json');
    const error = thrown(() => readConfigFile(path));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain(path);
    expect((error as Error).message).toContain('ENOENT');
  });

  it('reads a file saved with a UTF-8 byte order mark (as some Windows editors save it)', () => {
    const path = tempFile('bom.json', `\uFEFF${JSON.stringify({ upstreams: { echo: valid() } })}`);
    expect(readConfigFile(path).map((d) => d.id)).toEqual(['echo']);
  });

  it('does not echo file contents when the JSON is broken', () => {
    const secret = randomSecret();
    const path = tempFile('broken.json', `{"upstreams": {"echo": {"auth": {"secret": "${secret}"`);
    const error = thrown(() => readConfigFile(path));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('not valid JSON');
    expect((error as Error).message).not.toContain(secret);
  });

  it('names the field of an invalid file and never echoes an inlined secret', () => {
    const secret = randomSecret();
    const path = tempFile(
      'inline.json',
      JSON.stringify({ upstreams: { echo: valid({ auth: { type: 'header', name: 'x-api-key', secret } }) } }),
    );
    const error = thrown(() => readConfigFile(path));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('upstreams.echo.auth.secret');
    expect((error as Error).message).not.toContain(secret);
  });
});

describe('variables that look like a misspelled setting', () => {
  it('are warned about once at start-up, except those the configuration reads by name (a TypeScript upstream with zod schemas too)', async () => {
    const { createRuntime } = await import('../../../lib/core/runtime');
    const { defineUpstream } = await import('../../../lib/core/config/load');
    const { z } = await import('zod');
    const warnings: string[] = [];
    const typed = defineUpstream('typed', {
      baseUrl: 'https://api.example.com/v1/',
      auth: { type: 'bearer', secret: { env: 'KEYWARD_CONFIG_2' } },
      routes: [{ method: 'GET', path: '/items', query: z.object({ q: z.string().max(10) }) }],
    });
    createRuntime({
      env: {
        AUTH_SECRET: randomSecret('auth'),
        KEYWARD_SESSION_SECRET: randomSecret('sess'),
        KEYWARD_STORE: 'memory',
        KEYWARD_CONFIG_2: randomSecret('typed-key'),
        KEYWARD_USER_FILE: '/etc/keyward/users.json',
      },
      upstreams: [typed],
      warn: (message) => warnings.push(message),
    });
    expect(warnings).toEqual(['KEYWARD_USER_FILE: not a Keyward setting, so it is ignored; did you mean KEYWARD_USERS_FILE?']);
  });
});

describe("a secret Keyward gives away (an upstream's key, a client secret, the webhook's) is never one of its own", () => {
  const settings = () => ({
    AUTH_SECRET: randomSecret('auth'),
    KEYWARD_SESSION_SECRET: randomSecret('sess'),
    KEYWARD_VAULT_SECRET: randomSecret('vault-secret-of-32-characters-or-more'),
    KEYWARD_STORE: 'memory',
  });

  it.each([
    [
      'by its variable',
      (env: Record<string, string>) => ({ env: 'AUTH_SECRET', copy: env.AUTH_SECRET!, named: 'AUTH_SECRET' }),
    ],
    [
      'by a copy of its value',
      (env: Record<string, string>) => ({
        env: 'ECHO_KEY',
        copy: env.KEYWARD_VAULT_SECRET!,
        named: 'KEYWARD_VAULT_SECRET',
      }),
    ],
  ])('refused %s, naming the upstream and the setting, never the value', async (_how, pick) => {
    const { createRuntime } = await import('../../../lib/core/runtime');
    const env: Record<string, string> = settings();
    const { env: variable, copy, named } = pick(env);
    const config = { upstreams: { echo: valid({ auth: { type: 'bearer', secret: { env: variable } } }) } };
    const error = thrown(() => createRuntime({ env: { ...env, ECHO_KEY: copy, KEYWARD_CONFIG_JSON: JSON.stringify(config) } }));
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toContain(`upstreams.echo.auth: its key is the value of ${named}, Keyward's own secret`);
    for (const value of Object.values(env)) if (value.length > 8) expect(message).not.toContain(value);
  });

  it.each([
    ['its password', (url: string, password: string) => ({ variable: 'ECHO_KEY', value: password, url, named: 'the password in REDIS_URL' })],
    ['the whole URL', (url: string) => ({ variable: 'REDIS_URL', value: url, url, named: 'REDIS_URL' })],
    ['a ?password= in it', (_url: string, password: string) => ({ variable: 'ECHO_KEY', value: password, url: `redis://10.0.0.5:6379/0?password=${password}`, named: 'the password in REDIS_URL' })],
  ])('refuses an upstream key that is the Redis store\'s: %s, naming it, never the value', async (_what, pick) => {
    const { createRuntime } = await import('../../../lib/core/runtime');
    const password = randomSecret('redis');
    const { variable, value, url, named } = pick(`redis://default:${password}@10.0.0.5:6379`, password);
    const config = { upstreams: { echo: valid({ auth: { type: 'bearer', secret: { env: variable } } }) } };
    // The memory store: the check is on the settings, before any connection is made.
    const env = { ...settings(), REDIS_URL: url, ...(variable === 'ECHO_KEY' ? { ECHO_KEY: value } : {}), KEYWARD_CONFIG_JSON: JSON.stringify(config) };
    const error = thrown(() => createRuntime({ env, serving: false }));
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toContain(`upstreams.echo.auth: its key is the value of ${named}, Keyward's own secret`);
    expect(message).not.toContain(password);
  });

  it("refuses a connection's client secret or the webhook's signing secret that is one, naming the field", async () => {
    const { createRuntime } = await import('../../../lib/core/runtime');
    const env: Record<string, string> = settings();
    const config = {
      upstreams: { echo: valid() },
      connections: { github: { preset: 'github', clientId: { env: 'GH_ID' }, clientSecret: { env: 'GH_SECRET' } } },
      detector: { webhook: { url: 'https://alerts.example.com/k', secret: { env: 'ALERTS_SECRET' } } },
    };
    const error = thrown(() =>
      createRuntime({
        env: {
          ...env,
          ECHO_KEY: randomSecret('key'),
          GH_ID: 'gh-client-id',
          GH_SECRET: env.AUTH_SECRET!,
          ALERTS_SECRET: env.KEYWARD_SESSION_SECRET!,
          KEYWARD_CONFIG_JSON: JSON.stringify(config),
        },
      }),
    );
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toContain("connections.github.clientSecret: its client secret is the value of AUTH_SECRET, Keyward's own secret");
    expect(message).toContain("detector.webhook.secret: its signing secret is the value of KEYWARD_SESSION_SECRET, Keyward's own secret");
    expect(message).not.toContain('upstreams.echo');
    for (const value of Object.values(env)) if (value.length > 8) expect(message).not.toContain(value);
  });

  it('a key of its own is accepted', async () => {
    const { createRuntime } = await import('../../../lib/core/runtime');
    const env = { ...settings(), ECHO_KEY: randomSecret('key'), KEYWARD_CONFIG_JSON: JSON.stringify({ upstreams: { echo: valid() } }) };
    expect([...createRuntime({ env }).registry.keys()]).toEqual(['echo']);
  });
});

describe('the upstreams declared in TypeScript', () => {
  it('an object of upstreams instead of a list stops start-up saying so, not with a TypeError', async () => {
    const { createRuntime } = await import('../../../lib/core/runtime');
    const echo = defineUpstream('echo', valid() as unknown as UpstreamInput);
    const env = { AUTH_SECRET: randomSecret('auth'), KEYWARD_SESSION_SECRET: randomSecret('sess'), KEYWARD_STORE: 'memory', ECHO_KEY: randomSecret('key') };
    const error = thrown(() => createRuntime({ env, upstreams: { echo } as unknown as UpstreamDefinition[] }));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('upstreams (upstreams/index.ts, or createKeyward\'s option): must be a list of upstreams');
    expect([...createRuntime({ env, upstreams: [echo] }).registry.keys()]).toEqual(['echo']);
  });
});

describe('KEYWARD_CONFIG_JSON (the config held in an environment variable)', () => {
  it('reads the same config as the file', async () => {
    const { createRuntime } = await import('../../../lib/core/runtime');
    const runtime = createRuntime({
      env: {
        AUTH_SECRET: randomSecret('auth'),
        KEYWARD_SESSION_SECRET: randomSecret('sess'),
        KEYWARD_STORE: 'memory',
        ECHO_KEY: randomSecret('key'),
        KEYWARD_CONFIG_JSON: JSON.stringify({ upstreams: { echo: valid() } }),
      },
    });
    expect([...runtime.registry.keys()]).toEqual(['echo']);
  });

  it('names the variable, never its content, when it is not JSON or not valid', async () => {
    const { readConfigJson } = await import('../../../lib/core/config/load');
    const notJson = thrown(() => readConfigJson('{"upstreams": sk-live-secret'));
    expect(notJson).toBeInstanceOf(ConfigError);
    expect((notJson as Error).message).toBe('KEYWARD_CONFIG_JSON: is not valid JSON');
    // Where it broke, when V8 says, and only the numbers: its message quotes the text.
    const trailingComma = thrown(() => readConfigJson('{\n  "upstreams": {},\n  "sk-live-secret": 1,\n}'));
    expect((trailingComma as Error).message).toBe('KEYWARD_CONFIG_JSON: is not valid JSON at line 4, column 1');
    const invalid = thrown(() => readConfigJson(JSON.stringify({ upstreams: { echo: valid({ baseUrl: 'ftp://x' }) } })));
    expect((invalid as Error).message).toMatch(/^KEYWARD_CONFIG_JSON is invalid:\n {2}- upstreams\.echo\.baseUrl/);
  });

  it('is refused together with KEYWARD_CONFIG', async () => {
    const { readSettings } = await import('../../../lib/core/settings');
    const error = thrown(() =>
      readSettings({ AUTH_SECRET: randomSecret('auth'), KEYWARD_SESSION_SECRET: randomSecret('sess'), KEYWARD_CONFIG: 'a.json', KEYWARD_CONFIG_JSON: '{}' }),
    );
    expect((error as Error).message).toContain('KEYWARD_CONFIG_JSON: set either KEYWARD_CONFIG (a file) or KEYWARD_CONFIG_JSON');
  });
});
