import 'server-only';
import { ConfigError, variableNamed } from '../config/error';
import { envValue, type Env } from '../upstream/registry';
import type { ConnectionConfig, ConnectionPreset, ConnectionsConfig } from './config';

/**
 * The connection presets: each provider's endpoints, default scopes and quirks, so a deployment only brings its
 * client id and secret. Sources: GitHub's "Authorizing OAuth apps" and its 2025 PKCE changelog; Google's "Using
 * OAuth 2.0 for Web Server Applications"; Slack's "Installing with OAuth" (v2) and "Using PKCE"; Microsoft
 * identity platform's "OAuth 2.0 authorization code flow".
 */

export type ClientAuthMethod = 'client_secret_basic' | 'client_secret_post' | 'none';

/**
 * How a token is revoked on disconnect: RFC 7009 at an endpoint; GitHub's own "delete an app authorization" API
 * (the whole grant, authenticated with the client's credentials); Slack's `auth.revoke` (with the token itself);
 * or not at all (Microsoft has no revocation endpoint: the tokens are deleted, the user removes the app's access
 * in their account settings).
 */
export type Revocation =
  | { readonly kind: 'rfc7009'; readonly url: string | null }
  | { readonly kind: 'github-grant'; readonly apiUrl: string }
  | { readonly kind: 'slack'; readonly url: string }
  | { readonly kind: 'none' };

export interface ConnectionProvider {
  readonly id: string;
  readonly name: string;
  readonly preset: ConnectionPreset;
  readonly clientId: string;
  /** Null for a public client (clientAuth "none"). */
  readonly clientSecret: string | null;
  readonly clientAuth: ClientAuthMethod;
  readonly pkce: boolean;
  /** Asked for at every connect. */
  readonly scopes: readonly string[];
  /** Every scope a user may ask for with `?scope=` (scopes and optionalScopes). */
  readonly allowedScopes: ReadonlySet<string>;
  /** Discovered from (generic with issuer); null when the endpoints are given. */
  readonly issuer: string | null;
  readonly authorizationUrl: string | null;
  readonly tokenUrl: string | null;
  readonly revocation: Revocation;
  /** Added to the authorization request (Google's `access_type=offline&prompt=consent` …). */
  readonly authorizationParams: Readonly<Record<string, string>>;
  /** The authorization request parameter that carries the scopes: Slack asks for user scopes in `user_scope`. */
  readonly scopeParam: 'scope' | 'user_scope';
  /** Slack's code exchange puts the user's token under `authed_user` (the top level is the bot's). */
  readonly tokenShape: 'standard' | 'slack-user';
}

interface PresetDefaults {
  readonly name: string;
  readonly authorizationUrl: (config: ConnectionConfig) => string;
  readonly tokenUrl: (config: ConnectionConfig) => string;
  readonly revocation: Revocation;
  readonly scopes: readonly string[];
  readonly pkce: boolean;
  readonly clientAuth: ClientAuthMethod;
  readonly authorizationParams?: Readonly<Record<string, string>>;
  readonly scopeParam?: 'scope' | 'user_scope';
  readonly tokenShape?: 'standard' | 'slack-user';
}

const PRESETS: Readonly<Record<Exclude<ConnectionPreset, 'generic'>, PresetDefaults>> = {
  // OAuth apps' user tokens do not expire and come without a refresh token; GitHub Apps with expiring user tokens
  // send expires_in and a refresh token (8 h / 6 months), which Keyward then refreshes. No RFC 7009 endpoint: the
  // grant is deleted through the REST API. PKCE (S256) since July 2025. Errors come back with HTTP 200.
  github: {
    name: 'GitHub',
    authorizationUrl: () => 'https://github.com/login/oauth/authorize',
    tokenUrl: () => 'https://github.com/login/oauth/access_token',
    revocation: { kind: 'github-grant', apiUrl: 'https://api.github.com' },
    scopes: ['read:user'],
    pkce: true,
    clientAuth: 'client_secret_post',
  },
  // A refresh token only with access_type=offline, and only at the first consent unless prompt=consent asks again;
  // include_granted_scopes=true is Google's incremental authorization. Google does not rotate refresh tokens.
  google: {
    name: 'Google',
    authorizationUrl: () => 'https://accounts.google.com/o/oauth2/v2/auth',
    tokenUrl: () => 'https://oauth2.googleapis.com/token',
    revocation: { kind: 'rfc7009', url: 'https://oauth2.googleapis.com/revoke' },
    scopes: ['openid', 'email'],
    pkce: true,
    clientAuth: 'client_secret_post',
    authorizationParams: { access_type: 'offline', prompt: 'consent', include_granted_scopes: 'true' },
  },
  // OAuth v2 with user scopes (`user_scope`): the user's own token, under `authed_user` in the code exchange.
  // Refresh tokens only when the app turns token rotation on. PKCE is off: enabling it in Slack makes the app a
  // public client for good. Errors come back with HTTP 200 (`{"ok": false}`).
  slack: {
    name: 'Slack',
    authorizationUrl: () => 'https://slack.com/oauth/v2/authorize',
    tokenUrl: () => 'https://slack.com/api/oauth.v2.access',
    revocation: { kind: 'slack', url: 'https://slack.com/api/auth.revoke' },
    scopes: ['users:read'],
    pkce: false,
    clientAuth: 'client_secret_post',
    scopeParam: 'user_scope',
    tokenShape: 'slack-user',
  },
  // offline_access for a refresh token (rotated on every use). No revocation endpoint.
  microsoft: {
    name: 'Microsoft',
    authorizationUrl: (config) =>
      `https://login.microsoftonline.com/${config.tenant ?? 'common'}/oauth2/v2.0/authorize`,
    tokenUrl: (config) => `https://login.microsoftonline.com/${config.tenant ?? 'common'}/oauth2/v2.0/token`,
    revocation: { kind: 'none' },
    scopes: ['openid', 'offline_access', 'User.Read'],
    pkce: true,
    clientAuth: 'client_secret_post',
  },
};

/**
 * The configured providers, with their client credentials read from the environment. Throws a ConfigError
 * naming each bad field (never a value).
 */
export function resolveConnections(config: ConnectionsConfig, env: Env): Map<string, ConnectionProvider> {
  const providers = new Map<string, ConnectionProvider>();
  const problems: string[] = [];
  for (const [id, entry] of Object.entries(config)) {
    try {
      providers.set(id, resolveProvider(id, entry, env));
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      problems.push(error.message);
    }
  }
  if (problems.length > 0) throw new ConfigError(`Keyward configuration is invalid:\n${problems.join('\n')}`);
  return providers;
}

function resolveProvider(id: string, config: ConnectionConfig, env: Env): ConnectionProvider {
  const clientId = readEnv(id, 'clientId', config.clientId.env, env, 1);
  const clientSecret = config.clientSecret ? readEnv(id, 'clientSecret', config.clientSecret.env, env, 8) : null;
  const scopes = config.scopes ?? (config.preset === 'generic' ? [] : PRESETS[config.preset].scopes);
  const allowedScopes = new Set([...scopes, ...config.optionalScopes]);
  if (config.preset === 'generic') {
    return {
      id,
      name: config.name ?? id,
      preset: 'generic',
      clientId,
      clientSecret,
      clientAuth: config.clientAuth ?? 'client_secret_basic',
      pkce: config.pkce ?? true,
      scopes,
      allowedScopes,
      issuer: config.issuer ?? null,
      authorizationUrl: config.authorizationUrl ?? null,
      tokenUrl: config.tokenUrl ?? null,
      // With an issuer, discovery may name a revocation endpoint (url null: use the discovered one, if any).
      revocation:
        config.revocationUrl || config.issuer
          ? { kind: 'rfc7009', url: config.revocationUrl ?? null }
          : { kind: 'none' },
      authorizationParams: { ...config.authorizationParams },
      scopeParam: 'scope',
      tokenShape: 'standard',
    };
  }
  const preset = PRESETS[config.preset];
  return {
    id,
    name: config.name ?? preset.name,
    preset: config.preset,
    clientId,
    clientSecret,
    clientAuth: preset.clientAuth,
    pkce: preset.pkce,
    scopes,
    allowedScopes,
    issuer: null,
    authorizationUrl: config.authorizationUrl ?? preset.authorizationUrl(config),
    tokenUrl: config.tokenUrl ?? preset.tokenUrl(config),
    revocation: presetRevocation(config, preset),
    authorizationParams: { ...preset.authorizationParams, ...config.authorizationParams },
    scopeParam: preset.scopeParam ?? 'scope',
    tokenShape: preset.tokenShape ?? 'standard',
  };
}

/**
 * Where a preset's grant is revoked. An explicit revocationUrl is an RFC 7009 endpoint, whatever the preset does
 * by default. A token URL moved to another host (GitHub Enterprise, GovSlack, a proxy) moves revocation with it:
 * the client secret and the user's token go only to the host that issued them, never to the public service's
 * default endpoint. GitHub's grant API is found the way GitHub documents it for its other hosts (GHE.com:
 * `api.<host>`; Enterprise Server: `<host>/api/v3`); other presets then have none (disconnect forgets the token
 * and answers `revokedAtProvider: false`) unless revocationUrl names one.
 */
function presetRevocation(config: Exclude<ConnectionConfig, { preset: 'generic' }>, preset: PresetDefaults): Revocation {
  if (config.revocationUrl) return { kind: 'rfc7009', url: config.revocationUrl };
  const tokenUrl = new URL(config.tokenUrl ?? preset.tokenUrl(config));
  if (tokenUrl.origin === new URL(preset.tokenUrl(config)).origin) return preset.revocation;
  if (preset.revocation.kind === 'github-grant') {
    const apiUrl = tokenUrl.hostname.endsWith('.ghe.com') ? `${tokenUrl.protocol}//api.${tokenUrl.host}` : `${tokenUrl.origin}/api/v3`;
    return { kind: 'github-grant', apiUrl };
  }
  return { kind: 'none' };
}

function readEnv(id: string, field: string, name: string, env: Env, minLength: number): string {
  const where = `  - connections.${id}.${field}`;
  const value = envValue(env, name);
  if (value === undefined || value === '') throw new ConfigError(`${where}: ${variableNamed(name)} is not set`);
  if (value !== value.trim() || /[\x00-\x1f\x7f]/.test(value)) {
    throw new ConfigError(`${where}: ${name} has surrounding whitespace or control characters (value not shown)`);
  }
  if (value.length < minLength)
    throw new ConfigError(`${where}: ${name} is shorter than ${minLength} characters (value not shown)`);
  return value;
}

/** Scopes as providers write them: space-separated (RFC 6749 §3.3), or comma-separated (GitHub). */
export function parseScopes(value: string | null | undefined): string[] {
  if (!value) return [];
  return [...new Set(value.split(/[\s,]+/).filter(Boolean))];
}
