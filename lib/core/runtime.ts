import type { Logger } from 'pino';
import { Agent, type Dispatcher } from 'undici';
import { readConfigFile, type UpstreamDefinition } from './config/load';
import { getLogger, logScrubber } from './log/logger';
import type { ProxyDeps } from './pipeline';
import { createSessionVerifier } from './session/verify';
import { loadUsersFile, type LocalUsers } from './users/file';
import { assertNoPublicSecrets, readSettings, type Settings } from './settings';
import { buildRegistry, type Env } from './upstream/registry';

export interface Runtime extends ProxyDeps {
  readonly settings: Settings;
  /** Local users from KEYWARD_USERS_FILE, validated at start-up; null when the file is not configured. */
  readonly users: LocalUsers | null;
}

export interface RuntimeOptions {
  readonly env: Env;
  /** Upstreams declared in TypeScript with `defineUpstream`; merged with the KEYWARD_CONFIG file. */
  readonly upstreams?: readonly UpstreamDefinition[];
  readonly logger?: Logger;
  readonly dispatcher?: Dispatcher;
}

/**
 * Validates every setting and upstream and resolves every secret. Throws ConfigError (naming fields,
 * never values) on any problem, so start-up stops instead of a request failing open later.
 */
export function createRuntime(options: RuntimeOptions): Runtime {
  const { env } = options;
  const settings = readSettings(env);
  const definitions = [...(options.upstreams ?? []), ...(settings.KEYWARD_CONFIG ? readConfigFile(settings.KEYWARD_CONFIG) : [])];
  const registry = buildRegistry(definitions, env);

  const secrets = [settings.AUTH_SECRET, settings.KEYWARD_SESSION_SECRET];
  if (settings.KEYWARD_OIDC_CLIENT_SECRET) secrets.push(settings.KEYWARD_OIDC_CLIENT_SECRET);
  for (const upstream of registry.values()) secrets.push(...upstream.credential.secrets);
  assertNoPublicSecrets(env, secrets);
  logScrubber.add(secrets);

  return {
    settings,
    users: settings.KEYWARD_USERS_FILE ? loadUsersFile(settings.KEYWARD_USERS_FILE) : null,
    registry,
    verifySession: createSessionVerifier({ authSecret: settings.AUTH_SECRET, sessionSecret: settings.KEYWARD_SESSION_SECRET }),
    allowedOrigins: settings.KEYWARD_ALLOWED_ORIGINS ? new Set(settings.KEYWARD_ALLOWED_ORIGINS) : null,
    dispatcher: options.dispatcher ?? createUpstreamAgent(),
    logger: options.logger ?? getLogger(),
  };
}

/** One pooled, keep-alive client for all upstream calls (a connection per request halves throughput). */
export function createUpstreamAgent(): Agent {
  return new Agent({ keepAliveTimeout: 10_000, keepAliveMaxTimeout: 60_000, connections: 256, pipelining: 1 });
}
