import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  defineUpstream,
  parseConfig,
  parseConfigSections,
  type UpstreamDefinition,
} from '../../../lib/core/config/load';
import { connectionsSchema, type ConnectionsInput } from '../../../lib/core/connect/config';
import { parseExtraScopes, safeReturnTo } from '../../../lib/core/connect/connections';
import { parseScopes, resolveConnections } from '../../../lib/core/connect/providers';
import { formatIssues } from '../../../lib/core/config/schema';
import { KeywardError } from '../../../lib/core/errors';
import { logScrubber } from '../../../lib/core/log/logger';
import { createRuntime } from '../../../lib/core/runtime';
import { randomSecret, testSessionSecrets } from '../../fixtures/secrets';

/** The `connections` section: presets, the generic provider, and what is refused (naming the field). */
const env = { GH_ID: 'Iv1.0123456789abcdef', GH_SECRET: 'gh-secret-0123456789', PUB_ID: 'public-client' };

function problems(input: unknown): string {
  const result = connectionsSchema.safeParse(input);
  return result.success ? '' : formatIssues(result.error.issues, 'connections');
}

describe('presets', () => {
  it('github: its endpoints, client_secret_post, PKCE, the grant-deletion API for revocation, read:user', () => {
    const providers = resolveConnections(
      connectionsSchema.parse({
        github: { preset: 'github', clientId: { env: 'GH_ID' }, clientSecret: { env: 'GH_SECRET' } },
      }),
      env,
    );
    expect(providers.get('github')).toMatchObject({
      name: 'GitHub',
      clientId: env.GH_ID,
      clientSecret: env.GH_SECRET,
      clientAuth: 'client_secret_post',
      pkce: true,
      scopes: ['read:user'],
      authorizationUrl: 'https://github.com/login/oauth/authorize',
      tokenUrl: 'https://github.com/login/oauth/access_token',
      revocation: { kind: 'github-grant', apiUrl: 'https://api.github.com' },
      scopeParam: 'scope',
    });
  });

  it('google asks for a refresh token every time (offline, consent) and merges granted scopes; slack uses user scopes without PKCE', () => {
    const providers = resolveConnections(
      connectionsSchema.parse({
        google: { preset: 'google', clientId: { env: 'GH_ID' }, clientSecret: { env: 'GH_SECRET' } },
        slack: {
          preset: 'slack',
          clientId: { env: 'GH_ID' },
          clientSecret: { env: 'GH_SECRET' },
          scopes: ['channels:read', 'chat:write'],
        },
        ms: {
          preset: 'microsoft',
          tenant: 'contoso.onmicrosoft.com',
          clientId: { env: 'GH_ID' },
          clientSecret: { env: 'GH_SECRET' },
        },
      }),
      env,
    );
    expect(providers.get('google')).toMatchObject({
      authorizationParams: { access_type: 'offline', prompt: 'consent', include_granted_scopes: 'true' },
      revocation: { kind: 'rfc7009', url: 'https://oauth2.googleapis.com/revoke' },
    });
    expect(providers.get('slack')).toMatchObject({
      pkce: false,
      scopeParam: 'user_scope',
      tokenShape: 'slack-user',
      scopes: ['channels:read', 'chat:write'],
    });
    expect(providers.get('ms')).toMatchObject({
      authorizationUrl: 'https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize',
      revocation: { kind: 'none' },
      scopes: ['openid', 'offline_access', 'User.Read'],
    });
  });

  it("a preset's endpoints can be overridden; an explicit revocationUrl is RFC 7009", () => {
    const providers = resolveConnections(
      connectionsSchema.parse({
        github: {
          preset: 'github',
          clientId: { env: 'GH_ID' },
          clientSecret: { env: 'GH_SECRET' },
          authorizationUrl: 'https://ghe.example.com/login/oauth/authorize',
          tokenUrl: 'https://ghe.example.com/login/oauth/access_token',
          revocationUrl: 'http://127.0.0.1:9/revoke',
          authorizationParams: { allow_signup: 'false' },
        },
      }),
      env,
    );
    expect(providers.get('github')).toMatchObject({
      authorizationUrl: 'https://ghe.example.com/login/oauth/authorize',
      revocation: { kind: 'rfc7009', url: 'http://127.0.0.1:9/revoke' },
      authorizationParams: { allow_signup: 'false' },
    });
  });

  it("a token URL moved to another host moves revocation with it: the secret and the user's token never go to the public default", () => {
    const resolve = (entry: Record<string, unknown>) =>
      resolveConnections(connectionsSchema.parse({ p: { clientId: { env: 'GH_ID' }, clientSecret: { env: 'GH_SECRET' }, ...entry } }), env).get('p')!
        .revocation;
    // GitHub Enterprise Server: the REST API under /api/v3 of the same host.
    expect(
      resolve({ preset: 'github', authorizationUrl: 'https://ghe.example.com/login/oauth/authorize', tokenUrl: 'https://ghe.example.com/login/oauth/access_token' }),
    ).toEqual({ kind: 'github-grant', apiUrl: 'https://ghe.example.com/api/v3' });
    // GHE.com (data residency): api.<subdomain>.ghe.com.
    expect(resolve({ preset: 'github', tokenUrl: 'https://octo.ghe.com/login/oauth/access_token' })).toEqual({
      kind: 'github-grant',
      apiUrl: 'https://api.octo.ghe.com',
    });
    // Slack on another host (GovSlack): its revocation endpoint is not guessed.
    expect(resolve({ preset: 'slack', tokenUrl: 'https://slack-gov.com/api/oauth.v2.access' })).toEqual({ kind: 'none' });
    expect(resolve({ preset: 'google', tokenUrl: 'https://oauth.corp.example/token' })).toEqual({ kind: 'none' });
    // The preset's own host keeps the preset's revocation; an explicit revocationUrl still wins.
    expect(resolve({ preset: 'github', tokenUrl: 'https://github.com/login/oauth/access_token' })).toEqual({
      kind: 'github-grant',
      apiUrl: 'https://api.github.com',
    });
    expect(resolve({ preset: 'slack', tokenUrl: 'https://slack-gov.com/api/oauth.v2.access', revocationUrl: 'https://slack-gov.com/api/revoke' })).toEqual({
      kind: 'rfc7009',
      url: 'https://slack-gov.com/api/revoke',
    });
  });

  it('generic: discovery by issuer (revocation discovered), or explicit endpoints; PKCE and client auth configurable', () => {
    const providers = resolveConnections(
      connectionsSchema.parse({
        acme: {
          preset: 'generic',
          issuer: 'https://id.acme.test',
          clientId: { env: 'GH_ID' },
          clientSecret: { env: 'GH_SECRET' },
          scopes: ['api'],
        },
        spa: {
          preset: 'generic',
          authorizationUrl: 'https://auth.example.test/authorize',
          tokenUrl: 'https://auth.example.test/token',
          clientId: { env: 'PUB_ID' },
          clientAuth: 'none',
        },
      }),
      env,
    );
    expect(providers.get('acme')).toMatchObject({
      name: 'acme',
      issuer: 'https://id.acme.test',
      pkce: true,
      clientAuth: 'client_secret_basic',
      revocation: { kind: 'rfc7009', url: null },
    });
    expect(providers.get('spa')).toMatchObject({
      clientSecret: null,
      clientAuth: 'none',
      revocation: { kind: 'none' },
      scopes: [],
    });
  });
});

describe('refused configurations name the field', () => {
  it.each([
    [
      { x: { preset: 'generic', clientId: { env: 'A' }, clientSecret: { env: 'B' } } },
      'connections.x.issuer: a generic provider needs an issuer',
    ],
    [{ x: { preset: 'github', clientId: { env: 'A' } } }, 'connections.x.clientSecret: must be set'],
    [
      { x: { preset: 'github', clientId: { env: 'A' }, clientSecret: { env: 'B' }, pkce: false } },
      'connections.x.pkce: applies to the generic preset only',
    ],
    [
      { x: { preset: 'google', clientId: { env: 'A' }, clientSecret: { env: 'B' }, tenant: 'common' } },
      'connections.x.tenant: applies to the microsoft preset only',
    ],
    [
      {
        x: {
          preset: 'github',
          clientId: { env: 'A' },
          clientSecret: { env: 'B' },
          tokenUrl: 'http://auth.example.test/token',
        },
      },
      'connections.x.tokenUrl: must be https',
    ],
    [
      {
        x: {
          preset: 'github',
          clientId: { env: 'A' },
          clientSecret: { env: 'B' },
          authorizationParams: { redirect_uri: 'https://evil.test' },
        },
      },
      'connections.x.authorizationParams.redirect_uri: is written by Keyward',
    ],
    [
      { x: { preset: 'github', clientId: { env: 'A' }, clientSecret: { env: 'NEXT_PUBLIC_B' } } },
      'connections.x.clientSecret.env: NEXT_PUBLIC_',
    ],
    [
      { x: { preset: 'generic', issuer: 'https://a.test', clientId: { env: 'A' }, clientAuth: 'none', pkce: false } },
      'connections.x.pkce: a public client',
    ],
    [
      { x: { preset: 'github', clientId: { env: 'A' }, clientSecret: { env: 'B' }, scopes: ['read user'] } },
      'connections.x.scopes.0: must be one OAuth scope',
    ],
    [
      { oidc: { preset: 'github', clientId: { env: 'A' }, clientSecret: { env: 'B' } } },
      'connections.oidc: "oidc" and "credentials" name the sign-in providers',
    ],
    [
      { GitHub: { preset: 'github', clientId: { env: 'A' }, clientSecret: { env: 'B' } } },
      'connections.GitHub: connection ids are',
    ],
  ])('%j', (input, message) => {
    expect(problems(input)).toContain(message);
  });

  it.each(['issuer', 'authorizationUrl', 'tokenUrl', 'revocationUrl'])(
    '%s that is no URL at all is named, not a crash (zod still runs the refinements)',
    (field) => {
      for (const preset of ['generic', 'github']) {
        const input = { x: { preset, clientId: { env: 'A' }, clientSecret: { env: 'B' }, [field]: 'not a url' } };
        expect(problems(input)).toContain(`connections.x.${field}: must be an absolute https URL`);
      }
    },
  );

  it('a missing environment variable, named without its value', () => {
    expect(() =>
      resolveConnections(
        connectionsSchema.parse({
          gh: { preset: 'github', clientId: { env: 'GH_ID' }, clientSecret: { env: 'NOPE' } },
        }),
        env,
      ),
    ).toThrow(/connections\.gh\.clientSecret: environment variable NOPE is not set/);
  });

  it('a secret pasted where the variable name goes (a GitHub client secret, an upstream key) is never repeated in the error', async () => {
    const { createRuntime } = await import('../../../lib/core/runtime');
    const pasted = ['ghp_' + 'a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8', 'sk_live_51Habc' + 'DEFghiJKLmnoPQRstu', 'AKIA' + 'IOSFODNN7EXAMPLE'];
    for (const key of pasted) {
      let message = '';
      try {
        resolveConnections(connectionsSchema.parse({ gh: { preset: 'github', clientId: { env: 'GH_ID' }, clientSecret: { env: key } } }), env);
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message).toContain('connections.gh.clientSecret: the environment variable this field names (its name is not shown');
      expect(message).not.toContain(key);
      const upstream = { baseUrl: 'https://api.example.com/v1/', auth: { type: 'bearer', secret: { env: key } }, routes: [{ method: 'GET', path: '/items' }] };
      message = '';
      try {
        createRuntime({
          env: { AUTH_SECRET: 'a'.repeat(40), KEYWARD_SESSION_SECRET: 'b'.repeat(40), KEYWARD_STORE: 'memory', KEYWARD_CONFIG_JSON: JSON.stringify({ upstreams: { pay: upstream } }) },
        });
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message).toContain('upstreams.pay.auth.secret: the environment variable this field names (its name is not shown');
      expect(message).not.toContain(key);
    }
  });

  it('the config file: a `connections` section beside the upstreams; a __proto__ id is refused, not dropped', () => {
    const sections = parseConfigSections(
      {
        upstreams: {},
        connections: { github: { preset: 'github', clientId: { env: 'A' }, clientSecret: { env: 'B' } } },
      },
      'test.json',
    );
    expect(Object.keys(sections.connections!)).toEqual(['github']);
    const json = JSON.parse('{"upstreams": {}, "connections": {"__proto__": {"preset": "github"}}}') as unknown;
    expect(() => parseConfig(json, 'test.json')).toThrow(/connections\.__proto__/);
  });
});

describe('what users send', () => {
  it('returnTo: a path on this site, else the home page', () => {
    expect(safeReturnTo('/settings?tab=accounts#github')).toBe('/settings?tab=accounts#github');
    for (const bad of [
      null,
      '',
      'https://evil.test/',
      '//evil.test',
      '/\\evil.test',
      '\\\\evil.test',
      '/x\ny',
      'javascript:alert(1)',
      `/${'a'.repeat(600)}`,
      // Paths that only become `//host` once normalised.
      '/.//a//attacker.example/login',
      '/%2e//a//attacker.example/login',
      '/a/..//attacker.example/',
    ]) {
      expect(safeReturnTo(bad)).toBe('/');
    }
  });

  it('?scope=: space-separated scope tokens, at most 32', () => {
    expect(parseExtraScopes('repo  gist repo')).toEqual(['repo', 'gist']);
    expect(parseExtraScopes(null)).toEqual([]);
    for (const bad of ['re"po', 'a\\b', Array.from({ length: 33 }, (_, i) => `s${i}`).join(' ')]) {
      expect(() => parseExtraScopes(bad)).toThrow(KeywardError);
    }
  });

  it('granted scopes as providers write them: spaces (RFC 6749) or commas (GitHub)', () => {
    expect(parseScopes('repo,gist read:user')).toEqual(['repo', 'gist', 'read:user']);
    expect(parseScopes('')).toEqual([]);
  });
});

describe('README "Connected accounts"', () => {
  it('its example config parses as written, and resolves with its variables set', () => {
    const readme = readFileSync('README.md', 'utf8');
    const at = readme.indexOf('### Connected accounts');
    expect(at, 'README: the "Connected accounts" section is gone').toBeGreaterThan(0);
    const block = /```json\n([\s\S]*?)\n```/.exec(readme.slice(at))![1]!;
    const sections = parseConfigSections(JSON.parse(block), 'README');
    expect(sections.upstreams.map((u) => u.id)).toEqual(['github']);
    const providers = resolveConnections(sections.connections!, {
      GITHUB_CLIENT_ID: 'Iv1.readme',
      GITHUB_CLIENT_SECRET: 'readme-secret-1234',
      ACME_CLIENT_ID: 'acme',
      ACME_CLIENT_SECRET: 'readme-secret-5678',
    });
    expect([...providers.keys()]).toEqual(['github', 'acme']);
  });
});

describe('the runtime with connections', () => {
  const github = { preset: 'github', clientId: { env: 'GH_ID' }, clientSecret: { env: 'GH_SECRET' } } as const;
  const ghSecret = randomSecret('gh_client_secret');
  function start(options: {
    connections?: ConnectionsInput;
    env?: Record<string, string | undefined>;
    upstreams?: UpstreamDefinition[];
  }) {
    return () =>
      createRuntime({
        env: {
          ...testSessionSecrets(),
          KEYWARD_STORE: 'memory',
          KEYWARD_VAULT_SECRET: randomSecret('vault'),
          GH_ID: 'Iv1.x',
          GH_SECRET: ghSecret,
          ...options.env,
        },
        connections: options.connections,
        upstreams: options.upstreams,
        serving: false,
      });
  }
  const upstream = (provider: string) =>
    defineUpstream('gh', {
      baseUrl: 'https://api.github.com/',
      auth: { type: 'bearer', secret: { oauth: provider } },
      routes: [{ method: 'GET', path: '/user' }],
    });

  it('an upstream may name a connection; a provider that is neither a connection nor the sign-in one is refused', () => {
    const runtime = start({ connections: { github }, upstreams: [upstream('github')] })();
    expect(runtime.connections?.has('github')).toBe(true);
    expect(runtime.connectionKeeper).not.toBeNull();
    expect(start({ connections: { github }, upstreams: [upstream('gitlab')] })).toThrow(
      /upstreams\.gh\.auth\.secret\.oauth: no provider "gitlab" is configured/,
    );
  });

  it('connections need the vault secret; the client secret is refused in a NEXT_PUBLIC_ variable and scrubbed from logs', () => {
    expect(start({ connections: { github }, env: { KEYWARD_VAULT_SECRET: undefined } })).toThrow(
      /KEYWARD_VAULT_SECRET: must be set .* or connections are configured/,
    );
    let message = '';
    try {
      start({ connections: { github }, env: { NEXT_PUBLIC_GH: ghSecret } })();
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain('NEXT_PUBLIC_GH: holds a secret');
    expect(message).not.toContain(ghSecret);
    start({ connections: { github } })();
    expect(logScrubber.scrub(`token exchange with ${ghSecret}`)).not.toContain(ghSecret);
  });

  it('no connections: none of it exists', () => {
    const runtime = start({})();
    expect(runtime.connections).toBeNull();
    expect(runtime.connectionKeeper).toBeNull();
  });
});
