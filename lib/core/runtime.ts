import 'server-only';
import type { Logger } from 'pino';
import { Agent, type Dispatcher } from 'undici';
import { ConfigError, readConfigFile, readConfigJson, type UpstreamDefinition } from './config/load';
import { OAuthTokenStore, oidcRefresher, type TokenRefresher } from './credential/oauth';
import { UserKeys } from './credential/user-keys';
import { MobileTokens } from './mobile/tokens';
import { AuditLog } from './audit/audit';
import { UsageAggregates } from './aggregates/usage';
import { keyFingerprints } from './keys/fingerprint';
import { KeyRings } from './keys/rings';
import { Limits } from './limits/limits';
import { processMetrics, type ProxyMetrics } from './observe/metrics';
import { getLogger, logScrubber } from './log/logger';
import type { ProxyDeps } from './pipeline';
import { SessionRevocations } from './session/revocation';
import { createSessionVerifier } from './session/verify';
import { createOriginPolicy } from './origin/public-origin';
import { assertNoPublicSecrets, productionProblems, readSettings, trustsHost, type Settings } from './settings';
import { buildRegistry, type Env, type Upstream } from './upstream/registry';
import { loadUsersFile, type LocalUsers } from './users/file';
import { Vault } from './vault/seal';
import { guard } from './store/guard';
import { createStore, type Store } from '../store';

export interface Runtime extends ProxyDeps {
  readonly settings: Settings;
  /** Local users from KEYWARD_USERS_FILE, validated at start-up; null when the file is not configured. */
  readonly users: LocalUsers | null;
  /** The shared store: revocations, per-user secrets, locks, counters. */
  readonly store: Store;
  readonly revocations: SessionRevocations;
  /** Null unless an upstream takes the user's own key. */
  readonly userKeys: UserKeys | null;
  /** Null unless an upstream takes the user's OAuth token. */
  readonly oauthTokens: OAuthTokenStore | null;
  /** Provider ids whose tokens must be kept at sign-in (referenced by an upstream). */
  readonly oauthProviders: ReadonlySet<string>;
  /** The native-app token exchange (enabled by KEYWARD_MOBILE_REDIRECT_URIS). */
  readonly mobile: MobileTokens;
  readonly limits: Limits;
  readonly keyRings: KeyRings;
  readonly audit: AuditLog;
  /** Prometheus metrics, one set per process (shared with the other door's runtime; GET /api/metrics). */
  readonly metrics: ProxyMetrics;
  /** Usage aggregates (calls, errors, latency, bytes, units per minute/hour/day), written by the audit writer. */
  readonly usage: UsageAggregates;
}

export interface RuntimeOptions {
  readonly env: Env;
  /** Upstreams declared in TypeScript with `defineUpstream`; merged with the KEYWARD_CONFIG file. */
  readonly upstreams?: readonly UpstreamDefinition[];
  readonly logger?: Logger;
  readonly dispatcher?: Dispatcher;
  /** A store to use instead of the one the settings name (tests). */
  readonly store?: Store;
  readonly now?: () => number;
  /** Metrics to count into instead of the process's (tests). */
  readonly metrics?: ProxyMetrics;
  /**
   * false for tools (the CLI): they serve nobody, so production's serving checks (a public origin, a sign-in
   * method) do not apply. Every other setting is checked the same.
   */
  readonly serving?: boolean;
}

/**
 * Validates every setting and upstream and resolves every secret. Throws ConfigError (naming fields,
 * never values) on any problem, so start-up stops instead of a request failing open later.
 */
export function createRuntime(options: RuntimeOptions): Runtime {
  const { env } = options;
  const now = options.now ?? Date.now;
  const settings = readSettings(env);
  const definitions = [
    ...(options.upstreams ?? []),
    ...(settings.KEYWARD_CONFIG ? readConfigFile(settings.KEYWARD_CONFIG) : []),
    ...(settings.KEYWARD_CONFIG_JSON ? readConfigJson(settings.KEYWARD_CONFIG_JSON) : []),
  ];
  // Key fingerprints are keyed by the server secret (lib/core/keys/fingerprint.ts), the same everywhere.
  const fingerprints = keyFingerprints(settings.KEYWARD_SESSION_SECRET);
  const registry = buildRegistry(definitions, env, fingerprints);
  const users = settings.KEYWARD_USERS_FILE ? loadUsersFile(settings.KEYWARD_USERS_FILE) : null;

  const secrets = [settings.AUTH_SECRET, settings.KEYWARD_SESSION_SECRET];
  for (const name of ['KEYWARD_OIDC_CLIENT_SECRET', 'KEYWARD_VAULT_SECRET', 'KEYWARD_VAULT_SECRET_PREVIOUS', 'KEYWARD_METRICS_TOKEN'] as const) {
    const value = settings[name];
    if (value) secrets.push(value);
  }
  for (const upstream of registry.values()) secrets.push(...serviceSecrets(upstream));
  assertNoPublicSecrets(env, secrets);
  logScrubber.add(secrets);

  const { userKeys: needsUserKeys, oauthProviders } = perUserNeeds(registry);
  const refreshers = new Map<string, TokenRefresher>();
  if (settings.KEYWARD_OIDC_ISSUER && settings.KEYWARD_OIDC_CLIENT_ID && settings.KEYWARD_OIDC_CLIENT_SECRET) {
    refreshers.set('oidc', oidcRefresher(settings.KEYWARD_OIDC_ISSUER, settings.KEYWARD_OIDC_CLIENT_ID, settings.KEYWARD_OIDC_CLIENT_SECRET, now));
  }
  const problems = options.serving === false ? [] : productionProblems(settings, users !== null);
  for (const [provider, upstreamId] of oauthProviders) {
    if (!refreshers.has(provider)) {
      problems.push(`  - upstreams.${upstreamId}.auth.secret.oauth: no sign-in provider "${provider}" is configured (KEYWARD_OIDC_* gives "oidc")`);
    }
  }
  if ((needsUserKeys || oauthProviders.size > 0) && !settings.KEYWARD_VAULT_SECRET) {
    problems.push('  - KEYWARD_VAULT_SECRET: must be set (≥ 32 characters) when an upstream uses per-user keys or OAuth tokens');
  }
  if (problems.length > 0) throw new ConfigError(`Keyward configuration is invalid:\n${problems.join('\n')}`);

  const store = options.store ?? createStore(settings);
  const revocations = new SessionRevocations(store, settings.KEYWARD_SESSION_MAX_AGE * 1000 + settings.KEYWARD_MOBILE_REFRESH_TTL * 1000, now);
  const vault = settings.KEYWARD_VAULT_SECRET ? new Vault(settings.KEYWARD_VAULT_SECRET, settings.KEYWARD_VAULT_SECRET_PREVIOUS) : null;
  const userKeys = vault && needsUserKeys ? new UserKeys(store, vault, now, fingerprints) : null;
  const oauthTokens = vault && oauthProviders.size > 0 ? new OAuthTokenStore(store, vault, refreshers, now) : null;
  const logger = options.logger ?? getLogger();
  const mobile = new MobileTokens(
    store,
    revocations,
    {
      redirectUris: settings.KEYWARD_MOBILE_REDIRECT_URIS,
      accessTtlSeconds: settings.KEYWARD_MOBILE_ACCESS_TTL,
      refreshTtlSeconds: settings.KEYWARD_MOBILE_REFRESH_TTL,
      sessionSecret: settings.KEYWARD_SESSION_SECRET,
      localUsers: users,
    },
    logger,
    now,
  );

  const dispatcher = options.dispatcher ?? createUpstreamAgent();
  const keyRings = new KeyRings(registry, store, vault, dispatcher, logger, now);
  const audit = new AuditLog(store, settings.KEYWARD_AUDIT_RETENTION_DAYS * 86_400_000, logger, now, {
    minute: settings.KEYWARD_USAGE_MINUTES_RETENTION_HOURS * 3_600_000,
    hour: settings.KEYWARD_USAGE_HOURS_RETENTION_DAYS * 86_400_000,
    day: settings.KEYWARD_USAGE_DAYS_RETENTION_DAYS * 86_400_000,
  });

  return {
    settings,
    users,
    registry,
    store,
    revocations,
    userKeys,
    oauthTokens,
    oauthProviders: new Set(oauthProviders.keys()),
    mobile,
    limits: new Limits(store, logger, now),
    keyRings,
    audit,
    metrics: options.metrics ?? processMetrics(),
    usage: new UsageAggregates(store, () => guard(() => audit.flush())),
    onComplete: (event) => audit.recordCall(event),
    trustedProxyHops: settings.KEYWARD_TRUSTED_PROXY_HOPS,
    credentials: { userKeys, oauthTokens, keyRings },
    verifySession: createSessionVerifier(
      { authSecret: settings.AUTH_SECRET, sessionSecret: settings.KEYWARD_SESSION_SECRET },
      { revocations, now },
    ),
    allowedOrigins: createOriginPolicy({
      authUrl: settings.AUTH_URL,
      trustHost: trustsHost(settings),
      extraOrigins: settings.KEYWARD_ALLOWED_ORIGINS,
    }),
    dispatcher,
    logger,
  };
}

function serviceSecrets(upstream: Upstream): string[] {
  const plan = upstream.credential;
  if (plan.source === 'static') return plan.envVersions.flatMap((version) => version.credential.secrets);
  if (plan.source === 'claim') return [...plan.byValue.values()].flatMap((credential) => credential.secrets);
  return [];
}

function perUserNeeds(registry: ReadonlyMap<string, Upstream>) {
  let userKeys = false;
  const oauthProviders = new Map<string, string>();
  for (const upstream of registry.values()) {
    if (upstream.credential.source === 'user-key') userKeys = true;
    if (upstream.credential.source === 'oauth') oauthProviders.set(upstream.credential.provider, upstream.id);
  }
  return { userKeys, oauthProviders };
}

/** One pooled, keep-alive client for all upstream calls (a connection per request halves throughput). */
export function createUpstreamAgent(): Agent {
  return new Agent({ keepAliveTimeout: 10_000, keepAliveMaxTimeout: 60_000, connections: 256, pipelining: 1 });
}
