import 'server-only';
import type { Logger } from 'pino';
import { Agent, type Dispatcher } from 'undici';
import { ConfigError, loadConfigFile, loadConfigJson, type ConfigSections, type UpstreamDefinition } from './config/load';
import { variableNamed } from './config/error';
import { formatIssues, isLoopbackHost } from './config/schema';
import { Alerts } from './detect/alerts';
import { detectorSchema, type DetectorConfig, type DetectorInput } from './detect/config';
import { Detector } from './detect/detector';
import { loadDecoys, type DecoySet } from './detect/decoys';
import { AlertWebhook } from './detect/webhook';
import { OAuthTokenStore, oidcRefresher, type TokenRefresher } from './credential/oauth';
import type { ConnectionsInput } from './connect/config';
import { Connections } from './connect/connections';
import { ConnectionKeeper } from './connect/keeper';
import { connectionSetup } from './connect/setup';
import { UserKeys } from './credential/user-keys';
import { MobileTokens } from './mobile/tokens';
import { DpopNonces } from './dpop/nonce';
import { DpopProofs } from './dpop/proof';
import { AuditLog } from './audit/audit';
import { usageRetention } from './aggregates/model';
import { UsageAggregates } from './aggregates/usage';
import { keyFingerprints } from './keys/fingerprint';
import { KeyRings, type OwnSecrets } from './keys/rings';
import { processHeldSecrets, type HeldSecrets, type HeldSecretSource } from './respond/held-secrets';
import { DeviceCookies } from './limits/device-cookie';
import { Limits } from './limits/limits';
import { processMetrics, type ProxyMetrics } from './observe/metrics';
import { otlpHeaderSecrets } from './observe/otlp-env';
import { getLogger, logScrubber } from './log/logger';
import type { ProxyDeps } from './pipeline';
import { SessionRevocations } from './session/revocation';
import { SessionIndex } from './session/session-index';
import { LogoutTokenVerifier } from './session/logout-token';
import { ProviderSessions } from './session/provider-sessions';
import { createSessionVerifier } from './session/verify';
import { createOriginPolicy } from './origin/public-origin';
import { assertNoPublicSecrets, isCleanSecret, isProduction, misspelledSettings, productionProblems, readSettings, trustsHost, type Settings } from './settings';
import { buildRegistry, envValue, MIN_SECRET_LENGTH, usernameSecrets, type Env, type ResolvedCredential, type Upstream } from './upstream/registry';
import { LOCAL_SUBJECT_PREFIX, loadUsersFile, type LocalUsers } from './users/file';
import { OtherOwnerWarnings } from './users/owner';
import { Vault } from './vault/seal';
import { guard } from './store/guard';
import { QueueDeadlineDispatcher } from './forward/queue-deadline';
import { createStore, type Store } from '../store';

export interface Runtime extends ProxyDeps {
  readonly settings: Settings;
  /** Local users from KEYWARD_USERS_FILE, validated at start-up; null when the file is not configured. */
  readonly users: LocalUsers | null;
  /** The shared store: revocations, per-user secrets, locks, counters. */
  readonly store: Store;
  readonly revocations: SessionRevocations;
  /** Each user's recent sign-ins (hashed ids), written at sign-in, read by the admin pages. */
  readonly sessionIndex: SessionIndex;
  /** Which sessions came from which OpenID provider session, for back-channel logout (written at sign-in). */
  readonly providerSessions: ProviderSessions;
  /** Verifies the OIDC provider's back-channel logout tokens; null when no OIDC sign-in is configured. */
  readonly logoutTokens: LogoutTokenVerifier | null;
  /** Null unless an upstream takes the user's own key. */
  readonly userKeys: UserKeys | null;
  /** Null unless an upstream takes the user's OAuth token. */
  readonly oauthTokens: OAuthTokenStore | null;
  /** Provider ids whose tokens must be kept at sign-in (referenced by an upstream). */
  readonly oauthProviders: ReadonlySet<string>;
  /** The native-app token exchange (enabled by KEYWARD_MOBILE_REDIRECT_URIS). */
  readonly mobile: MobileTokens;
  /** DPoP proofs (RFC 9449) for mobile tokens bound to a key: checked at the token endpoint and at every call. */
  readonly dpop: { readonly proofs: DpopProofs; readonly nonces: DpopNonces };
  readonly limits: Limits;
  /** Sign-in device cookies: a browser's attempts for a username it signed in as count on its own counter. */
  readonly deviceCookies: DeviceCookies;
  readonly keyRings: KeyRings;
  /**
   * Every secret each answer is scrubbed of, one list per process (processHeldSecrets): what each runtime read at
   * start-up, and each managed key version once added or opened here.
   */
  readonly heldSecrets: HeldSecrets;
  readonly audit: AuditLog;
  /** Prometheus metrics, one set per process (shared with the other door's runtime; GET /api/metrics). */
  readonly metrics: ProxyMetrics;
  /** Usage aggregates (calls, errors, latency, bytes, units per minute/hour/day), written by the audit writer. */
  readonly usage: UsageAggregates;
  /** The anomaly detector (lib/core/detect): fed every call's record and every decoy hit. */
  readonly detector: Detector;
  /** What the detector did, and its undo (GET /api/admin/alerts). */
  readonly alerts: Alerts;
  /** Connected accounts (README "Connected accounts"); null when no connection provider is configured. */
  readonly connections: Connections | null;
  /** Refreshes idle connections at least daily; started by `keyward.register()`, never by itself. */
  readonly connectionKeeper: ConnectionKeeper | null;
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
  /** The anomaly detector's rules from TypeScript (`createKeyward({ detector })`); or the config file's `detector`. */
  readonly detector?: DetectorInput;
  /** Connected-account providers from TypeScript (`createKeyward({ connections })`), with the config file's `connections`. */
  readonly connections?: ConnectionsInput;
  /** Waits between webhook retries (tests). */
  readonly sleep?: (ms: number) => Promise<void>;
  /**
   * false for tools (the CLI): they serve nobody, so production's serving checks (a public origin, a sign-in
   * method) do not apply. Every other setting is checked the same.
   */
  readonly serving?: boolean;
  /**
   * Where start-up warnings go (a variable that looks like a misspelled setting, a users file whose hashes differ in
   * cost, also when an edit brings that); default: the logger, as warnings.
   */
  readonly warn?: (message: string) => void;
}

/**
 * The upstreams declared in TypeScript (`upstreams/index.ts`'s `upstreams`), which must be a list: an object of them
 * (`export const upstreams = { openai, weather }`) is a ConfigError saying so, not a TypeError from the spread.
 */
function typedUpstreams(upstreams: unknown): readonly UpstreamDefinition[] {
  if (upstreams === undefined) return [];
  if (Array.isArray(upstreams)) return upstreams as UpstreamDefinition[];
  throw new ConfigError(
    'Keyward configuration is invalid:\n  - upstreams (upstreams/index.ts, or createKeyward\'s option): must be a list of upstreams ' +
      '(`export const upstreams = [openai, weather] satisfies UpstreamDefinition[]`), not an object or anything else',
  );
}

/**
 * Validates every setting and upstream and resolves every secret. Throws ConfigError (naming fields,
 * never values) on any problem, so start-up stops instead of a request failing open later.
 */
export function createRuntime(options: RuntimeOptions): Runtime {
  const { env } = options;
  const now = options.now ?? Date.now;
  const settings = readSettings(env, { serving: options.serving !== false });
  const files: ConfigSections[] = [
    ...(settings.KEYWARD_CONFIG ? [loadConfigFile(settings.KEYWARD_CONFIG)] : []),
    ...(settings.KEYWARD_CONFIG_JSON ? [loadConfigJson(settings.KEYWARD_CONFIG_JSON)] : []),
  ];
  const definitions = [...typedUpstreams(options.upstreams), ...files.flatMap((file) => file.upstreams)];
  const detectorConfig = detectorSettings(options.detector, files);
  // Key fingerprints are keyed by the server secret (lib/core/keys/fingerprint.ts), the same everywhere.
  const fingerprints = keyFingerprints(settings.KEYWARD_SESSION_SECRET);
  const registry = buildRegistry(definitions, env, fingerprints);
  const logger = options.logger ?? getLogger(settings.KEYWARD_LOG_LEVEL);
  // A user taken out of the file is signed out everywhere (every session and app token issued so far), and loses
  // their own keys and connected accounts, by each process that sees the edit: putting the name back, for the
  // same person or another, revives none of them (the name's next owner must not call with the last one's keys).
  const warn = options.warn ?? ((message: string) => logger.warn(message));
  const users = settings.KEYWARD_USERS_FILE
    ? loadUsersFile(settings.KEYWARD_USERS_FILE, {
        logger,
        warn,
        onRemoved: (usernames) => {
          for (const username of usernames) {
            const userId = `${LOCAL_SUBJECT_PREFIX}${username}`;
            revocations.revokeUser(userId).catch((error: unknown) => {
              logger.error(
                { err: error instanceof Error ? error.name : 'unknown' },
                'users file: a removed user could not be signed out everywhere',
              );
            });
            forget(userId, 0);
          }
        },
      })
    : null;
  const forgetCredentials = async (userId: string): Promise<void> => {
    for (const upstream of registry.values()) {
      if (upstream.credential.source !== 'user-key' || !(await userKeys?.delete(upstream.id, userId))) continue;
      await audit.recordAdmin({ action: 'user_key.delete', actor: 'users-file', upstream: upstream.id, targetUser: userId, outcome: 'deleted' });
    }
    await connections?.disconnectAll(userId, 'users-file');
  };
  // Each attempt deletes what is left (the keys and connections already gone are not found, and not recorded
  // again); see FORGET_RETRY_MS.
  const forget = (userId: string, attempt: number): void => {
    forgetCredentials(userId).then(
      () => {
        if (attempt > 0) logger.info({ userId, attempts: attempt + 1 }, "users file: a removed user's own keys and connected accounts are deleted now");
      },
      (error: unknown) => {
        const retryMs = FORGET_RETRY_MS[attempt];
        logger.error(
          { err: error instanceof Error ? error.name : 'unknown', userId, retryInSeconds: retryMs === undefined ? null : retryMs / 1000 },
          retryMs === undefined
            ? "users file: a removed user's own keys or connected accounts could not all be deleted; no more attempts"
            : "users file: a removed user's own keys or connected accounts could not all be deleted; trying again",
        );
        if (retryMs !== undefined) setTimeout(() => forget(userId, attempt + 1), retryMs).unref();
      },
    );
  };
  const decoys = settings.KEYWARD_DECOYS_FILE ? loadDecoys(settings.KEYWARD_DECOYS_FILE) : null;

  const webhookSecret = detectorConfig.webhook ? webhookSecretFrom(env, detectorConfig.webhook.secret.env) : null;
  const connectionConfig = connectionSetup(options.connections, files, env, now);
  // The secrets Keyward hands to someone else; with its own, every secret it holds (scrubbed from logs, refused in
  // NEXT_PUBLIC_ variables and as decoys).
  const shared: SharedSecret[] = [
    ...[...registry.values()].map((upstream) => ({
      field: `upstreams.${upstream.id}.auth`,
      what: 'its key',
      where: 'sent upstream with every call',
      values: serviceSecrets(upstream),
    })),
    ...[...connectionConfig.providers.values()].map((provider) => ({
      field: `connections.${provider.id}.clientSecret`,
      what: 'its client secret',
      where: "sent to the provider's token endpoint",
      values: provider.clientSecret ? [provider.clientSecret] : [],
    })),
    { field: 'detector.webhook.secret', what: 'its signing secret', where: "shared with the webhook's receiver", values: webhookSecret ? [webhookSecret] : [] },
  ];
  const owned = ownSecrets(settings);
  assertNoOwnSecretShared(owned, shared);
  const secrets = [
    ...OWN_SECRETS.flatMap((name) => settings[name] ?? []),
    ...redisPassword(settings.REDIS_URL),
    ...shared.flatMap((secret) => secret.values),
  ];
  assertNoPublicSecrets(env, secrets);
  if (decoys) assertNoSecretDecoys(decoys, secrets);
  logScrubber.add(secrets);
  // The OTLP exporter's header values (a collector's API key) are not Keyward's to hold or share, but no log line
  // may carry them either. Logs only: some are no secret (a tenant id), and an upstream's answer may hold one.
  logScrubber.add(otlpHeaderSecrets(env));

  const { userKeys: needsUserKeys, oauthProviders } = perUserNeeds(registry);
  const refreshers = new Map<string, TokenRefresher>();
  if (settings.KEYWARD_OIDC_ISSUER && settings.KEYWARD_OIDC_CLIENT_ID && settings.KEYWARD_OIDC_CLIENT_SECRET) {
    refreshers.set('oidc', oidcRefresher(settings.KEYWARD_OIDC_ISSUER, settings.KEYWARD_OIDC_CLIENT_ID, settings.KEYWARD_OIDC_CLIENT_SECRET, now));
  }
  for (const [provider, refresher] of connectionConfig.refreshers) refreshers.set(provider, refresher);
  const problems = options.serving === false ? [] : productionProblems(settings, users !== null, registry.size);
  for (const [provider, upstreamId] of oauthProviders) {
    if (!refreshers.has(provider)) {
      problems.push(`  - upstreams.${upstreamId}.auth.secret.oauth: no provider "${provider}" is configured (KEYWARD_OIDC_* gives "oidc"; "connections" gives the others)`);
    }
  }
  if ((needsUserKeys || oauthProviders.size > 0 || connectionConfig.providers.size > 0) && !settings.KEYWARD_VAULT_SECRET) {
    problems.push('  - KEYWARD_VAULT_SECRET: must be set (≥ 32 characters) when an upstream uses per-user keys or OAuth tokens, or connections are configured');
  }
  // A variable one typing mistake away from a setting is named with the problems it probably explains, else logged.
  const misspelled = misspelledSettings(
    env,
    referencedVariables([definitions.map((d) => d.config), files, options.connections, options.detector]),
  );
  if (problems.length > 0) {
    throw new ConfigError(`Keyward configuration is invalid:\n${[...problems, ...misspelled].join('\n')}`);
  }
  for (const line of misspelled) warn(line.replace(/^ {2}- /, ''));

  const store = options.store ?? createStore(settings, logger);
  // The longest any session can live: a browser sign-in, then a mobile family refreshed from it.
  const sessionHorizonMs = settings.KEYWARD_SESSION_MAX_AGE * 1000 + settings.KEYWARD_MOBILE_REFRESH_TTL * 1000;
  const sessionIndex = new SessionIndex(store, sessionHorizonMs, now, users);
  const revocations = new SessionRevocations(store, sessionHorizonMs, now, (userId) => sessionIndex.latestSignIn(userId));
  const vault = settings.KEYWARD_VAULT_SECRET ? new Vault(settings.KEYWARD_VAULT_SECRET, settings.KEYWARD_VAULT_SECRET_PREVIOUS) : null;
  const userKeys = vault && needsUserKeys ? new UserKeys(store, vault, now, fingerprints, logger) : null;
  // Connections keep their status from the token store's reports (set once `connections` exists, below).
  let connections: Connections | null = null;
  // Tokens a local user's name had under another password (lib/core/users/owner.ts): said once per user and provider.
  const otherOwners = new OtherOwnerWarnings(logger);
  const oauthTokens =
    vault && (oauthProviders.size > 0 || connectionConfig.providers.size > 0)
      ? new OAuthTokenStore(store, vault, refreshers, now, {
          refreshed: async (provider, userId, tokens) => connections?.refreshed(provider, userId, tokens),
          ended: async (provider, userId, reason) => connections?.ended(provider, userId, reason),
          orphaned: async (provider, userId, tokens) => connections?.orphaned(provider, userId, tokens),
          otherOwner: (provider, userId) => otherOwners.warn(userId, { provider }),
          stamped: async (provider, userId, passwordVersion) => connections?.stamped(provider, userId, passwordVersion),
          connectionStamp: async (provider, userId) => connections?.stampOf(provider, userId) ?? null,
          failed: (provider, userId, reason) =>
            logger.warn({ provider, userId, reason }, 'token refresh failed; the link is kept for a later try'),
        })
      : null;
  const providerSessions = new ProviderSessions(store, revocations, settings.KEYWARD_SESSION_MAX_AGE * 1000 + settings.KEYWARD_MOBILE_REFRESH_TTL * 1000, logger, now);
  const mobile = new MobileTokens(
    store,
    revocations,
    {
      redirectUris: settings.KEYWARD_MOBILE_REDIRECT_URIS,
      accessTtlSeconds: settings.KEYWARD_MOBILE_ACCESS_TTL,
      refreshTtlSeconds: settings.KEYWARD_MOBILE_REFRESH_TTL,
      refreshGraceSeconds: settings.KEYWARD_MOBILE_REFRESH_GRACE,
      sessionSecret: settings.KEYWARD_SESSION_SECRET,
      localUsers: users,
    },
    logger,
    now,
    sessionIndex,
    providerSessions,
  );

  const dpop = { proofs: new DpopProofs(store, now), nonces: new DpopNonces(settings.KEYWARD_SESSION_SECRET, now) };
  const allowedOrigins = createOriginPolicy(
    {
      authUrl: settings.AUTH_URL,
      trustHost: trustsHost(settings),
      extraOrigins: settings.KEYWARD_ALLOWED_ORIGINS,
      production: isProduction(settings),
    },
    logger,
    now,
  );

  const dispatcher = options.dispatcher ?? createUpstreamAgent();
  const held = processHeldSecrets();
  for (const { values, source } of heldSecrets(settings, registry, [
    ...[...connectionConfig.providers.values()].map((provider) => ({
      values: provider.clientSecret ? [provider.clientSecret] : [],
      source: { kind: 'setting', setting: `connections.${provider.id}.clientSecret` } as const,
    })),
    ...(webhookSecret && detectorConfig.webhook ? [{ values: [webhookSecret], source: { kind: 'setting', setting: detectorConfig.webhook.secret.env } as const }] : []),
  ])) {
    held.add(values, source);
  }
  const keyRings = new KeyRings(registry, store, vault, dispatcher, logger, held, now, owned);
  const audit = new AuditLog(store, settings.KEYWARD_AUDIT_RETENTION_DAYS * 86_400_000, logger, now, usageRetention(settings));

  const retentionMs = settings.KEYWARD_AUDIT_RETENTION_DAYS * 86_400_000;
  const webhook =
    detectorConfig.webhook && webhookSecret
      ? new AlertWebhook({ url: detectorConfig.webhook.url, secret: webhookSecret, maxAttempts: detectorConfig.webhook.maxAttempts, logger, now, sleep: options.sleep })
      : null;
  const metrics = options.metrics ?? processMetrics();
  const alerts = new Alerts(store, revocations, audit, logger, retentionMs, webhook, now, (alert) => metrics.countDetectorAction(alert.rule, alert.action));
  const detector = new Detector(detectorConfig, alerts, logger, now, (upstream) => registry.get(upstream)?.credential.source);
  connections =
    oauthTokens && vault && connectionConfig.providers.size > 0
      ? new Connections({ ...connectionConfig, store, vault, tokens: oauthTokens, revocations, audit, logger, webhook, localUsers: users, now })
      : null;

  return {
    settings,
    users,
    registry,
    store,
    revocations,
    sessionIndex,
    providerSessions,
    logoutTokens:
      settings.KEYWARD_OIDC_ISSUER && settings.KEYWARD_OIDC_CLIENT_ID && settings.KEYWARD_OIDC_CLIENT_SECRET
        ? new LogoutTokenVerifier(settings.KEYWARD_OIDC_ISSUER, settings.KEYWARD_OIDC_CLIENT_ID, now)
        : null,
    userKeys,
    oauthTokens,
    oauthProviders: new Set(oauthProviders.keys()),
    mobile,
    dpop,
    limits: new Limits(store, logger, now),
    deviceCookies: new DeviceCookies(settings.KEYWARD_SESSION_SECRET, (username) => users?.find(username)?.passwordVersion ?? null, now),
    keyRings,
    audit,
    metrics,
    usage: new UsageAggregates(store, () => guard(() => audit.flush())),
    onComplete: (event) => {
      audit.recordCall(event);
      detector.observe(event);
    },
    detector,
    alerts,
    connections,
    connectionKeeper: connections ? new ConnectionKeeper(connections, store, logger, { now }) : null,
    signals: detector,
    decoys: decoys ?? undefined,
    throttleStore: store,
    heldSecrets: held,
    trustedProxyHops: settings.KEYWARD_TRUSTED_PROXY_HOPS,
    credentials: { userKeys, oauthTokens, keyRings, connections },
    verifySession: createSessionVerifier(
      { authSecret: settings.AUTH_SECRET, sessionSecret: settings.KEYWARD_SESSION_SECRET },
      {
        revocations,
        now,
        dpop: { proofs: dpop.proofs, publicOrigin: (request) => allowedOrigins.publicOrigin(request) },
        localUsers: users,
        maxSessionAgeMs: settings.KEYWARD_SESSION_MAX_AGE * 1000,
      },
    ),
    allowedOrigins,
    dispatcher,
    logger,
    now,
  };
}

/**
 * The environment variables a configuration reads by name (`{"env": "NAME"}` anywhere in it: keys, key versions,
 * client secrets, the webhook's), which a look-alike of a setting may legitimately be (misspelledSettings), and
 * which `npm run check:leaks` fills with canaries.
 */
export function referencedVariables(configs: readonly unknown[]): Set<string> {
  const names = new Set<string>();
  // Once per object: a TypeScript upstream may hold zod schemas, whose objects refer to each other.
  const seen = new Set<object>();
  const visit = (value: unknown): void => {
    if (value === null || typeof value !== 'object' || seen.has(value)) return;
    seen.add(value);
    if (Array.isArray(value)) return value.forEach(visit);
    const { env } = value as { env?: unknown };
    if (typeof env === 'string') names.add(env);
    Object.values(value).forEach(visit);
  };
  configs.forEach(visit);
  return names;
}

/**
 * When a removed user's own keys or connected accounts could not all be deleted (a store error; a refresh, the
 * keeper's or another disconnect holding a connection's lock past 15 s), the deletion is tried again after each
 * of these delays in turn, about 50 minutes in all, whatever the users file says by then: a name given to someone
 * else meanwhile must not find the last owner's key or token, and the new owner's own, if they made any in that
 * time, go too (they add them again). Timers do not keep the process alive.
 */
const FORGET_RETRY_MS = [1_000, 10_000, 60_000, 300_000, 900_000, 1_800_000];

/** Keyward's own secrets, which no upstream may take as its key. */
export const OWN_SECRETS = [
  'AUTH_SECRET',
  'KEYWARD_SESSION_SECRET',
  'KEYWARD_OIDC_CLIENT_SECRET',
  'KEYWARD_VAULT_SECRET',
  'KEYWARD_VAULT_SECRET_PREVIOUS',
  'KEYWARD_METRICS_TOKEN',
] as const;

/** Keyward's own secrets by setting, as no upstream key and no secret it shares may be (none are shown). */
function ownSecrets(settings: Settings): OwnSecrets {
  // The Redis store's password is Keyward's own too (lib/core/log/scrub.ts scrubs it), and so is its whole URL.
  return [
    ...OWN_SECRETS.map((name) => [name, settings[name] === undefined ? [] : [settings[name]]] as const),
    ['REDIS_URL', settings.REDIS_URL === undefined ? [] : [settings.REDIS_URL]],
    ['the password in REDIS_URL', redisPassword(settings.REDIS_URL)],
  ];
}

/** A secret Keyward gives to someone else: an upstream's key, a connection's client secret, the webhook's. */
interface SharedSecret {
  readonly field: string;
  readonly what: string;
  readonly where: string;
  readonly values: readonly string[];
}

/**
 * Refuses a secret Keyward hands to a third party (an upstream's key, any of its versions or parts; a
 * connection's client secret; the detector webhook's signing secret) that is one of Keyward's own secrets, by the
 * same variable or a copy of its value: whoever receives it could then forge sessions or open the vault. Names
 * the field and the setting, never the value.
 */
function assertNoOwnSecretShared(owned: OwnSecrets, shared: readonly SharedSecret[]): void {
  const problems: string[] = [];
  for (const { field, what, where, values } of shared) {
    const given = new Set(values);
    const own = owned.filter(([, ownValues]) => ownValues.some((value) => given.has(value))).map(([name]) => name);
    if (own.length > 0) {
      problems.push(
        `  - ${field}: ${what} is the value of ${own.join(' and ')}, Keyward's own secret, which would be ${where}; give it a secret of its own (value not shown)`,
      );
    }
  }
  if (problems.length > 0) throw new ConfigError(`Keyward configuration is invalid:\n${problems.join('\n')}`);
}

/** The detector's rules: from TypeScript or from the config file (one place), else the defaults. */
function detectorSettings(input: DetectorInput | undefined, files: readonly ConfigSections[]): DetectorConfig {
  const fromFiles = files.flatMap((file) => (file.detector ? [file.detector] : []));
  if (fromFiles.length + (input ? 1 : 0) > 1) {
    throw new ConfigError('Keyward configuration is invalid:\n  - detector: set it in one place (createKeyward, KEYWARD_CONFIG or KEYWARD_CONFIG_JSON)');
  }
  let config = fromFiles[0];
  if (!config) {
    const result = detectorSchema.safeParse(input ?? {});
    if (!result.success) throw new ConfigError(`Keyward configuration is invalid:\n${formatIssues(result.error.issues, 'detector')}`);
    config = result.data;
  }
  const url = config.webhook ? new URL(config.webhook.url) : null;
  if (url && url.protocol === 'http:' && !isLoopbackHost(url.hostname)) {
    throw new ConfigError('Keyward configuration is invalid:\n  - detector.webhook.url: must be https (http only on a loopback address)');
  }
  return config;
}

/** The webhook's signing secret: set, long enough to resist guessing and clean (as Keyward's own secrets). */
function webhookSecretFrom(env: Env, name: string): string {
  const value = envValue(env, name);
  if (!value || value.length < 32) {
    throw new ConfigError(`Keyward configuration is invalid:\n  - detector.webhook.secret: ${variableNamed(name)} must be set to at least 32 characters`);
  }
  if (!isCleanSecret(value)) {
    throw new ConfigError(`Keyward configuration is invalid:\n  - detector.webhook.secret: ${variableNamed(name)} has surrounding whitespace or control characters (value not shown)`);
  }
  return value;
}

/**
 * A real secret listed as a decoy would be refused where it serves, and reported as expected by check:leaks:
 * refused at start-up, naming the decoy (never the value).
 */
function assertNoSecretDecoys(decoys: DecoySet, secrets: readonly string[]): void {
  for (const secret of secrets) {
    const decoyId = decoys.find(secret);
    if (decoyId) throw new ConfigError(`Keyward settings are invalid:\n  - KEYWARD_DECOYS_FILE: decoy ${decoyId} is a secret Keyward uses; a decoy must be minted (npm run keyward -- decoys create)`);
  }
}

/**
 * What every answer is scrubbed of from start-up (ProxyDeps.heldSecrets, to which KeyRings adds each managed key
 * version this process adds or opens), each with what it is, so a scrubber hit names the secret echoed: every
 * secret Keyward holds but a `basic` username read from the environment. That is an account name (`svc-report`, a
 * bot's email) that other APIs may rightly show, so it is scrubbed from its own upstream's answers only, as before.
 * `shared`: the secrets Keyward gives to others besides the upstreams' keys (a connection's client secret, the
 * webhook's), by the setting that holds each.
 */
function heldSecrets(
  settings: Settings,
  registry: ReadonlyMap<string, Upstream>,
  shared: ReadonlyArray<{ readonly values: readonly string[]; readonly source: HeldSecretSource }>,
): Array<{ values: string[]; source: HeldSecretSource }> {
  const usernames = new Set(
    [...registry.values()].flatMap((upstream) => ('username' in upstream.credential ? usernameSecrets(upstream.credential.username) : [])),
  );
  const setting = (name: string, values: readonly string[]) => ({ values: [...values], source: { kind: 'setting', setting: name } as const });
  const groups = [
    ...OWN_SECRETS.map((name) => setting(name, settings[name] === undefined ? [] : [settings[name]])),
    setting('REDIS_URL', redisPassword(settings.REDIS_URL)),
    ...[...registry.values()].flatMap((upstream) =>
      serviceKeys(upstream).map(({ credential, claim }) => ({
        values: [...credential.secrets],
        source: { kind: 'key', upstream: upstream.id, fingerprint: credential.fingerprint, ...(claim ? { claim } : {}) } as const,
      })),
    ),
    ...shared.map(({ values, source }) => ({ values: [...values], source })),
  ];
  return groups.map(({ values, source }) => ({ values: values.filter((secret) => !usernames.has(secret)), source }));
}

/** An upstream's service keys, each with its own secrets only: its key ring's versions from the environment, or the keys a claim chooses. */
function serviceKeys(upstream: Upstream): Array<{ credential: ResolvedCredential; claim?: true }> {
  const plan = upstream.credential;
  if (plan.source === 'static') return plan.envVersions.map((version) => ({ credential: version.credential }));
  if (plan.source === 'claim') return plan.keys.map((credential) => ({ credential, claim: true }));
  return [];
}

function serviceSecrets(upstream: Upstream): string[] {
  const plan = upstream.credential;
  if (plan.source === 'static') return plan.envVersions.flatMap((version) => version.credential.secrets);
  if (plan.source === 'claim') return [...plan.byValue.values()].flatMap((credential) => credential.secrets);
  // A user's own key or token is scrubbed per call; a `basic` username from the environment is the same for
  // every user (credentialFor lists it per call too).
  return usernameSecrets(plan.username);
}

/**
 * The password in REDIS_URL, a secret like Keyward's own (ioredis may put a command's arguments, AUTH's too, in
 * an error): when long enough to be one, since scrubbing a short one would cut ordinary words out of log lines.
 */
function redisPassword(url: string | undefined): string[] {
  if (!url) return [];
  try {
    const parsed = new URL(url);
    // In the authority, or as ioredis also reads it, in the query (`?password=`).
    const passwords = [decodeURIComponent(parsed.password), parsed.searchParams.get('password') ?? ''];
    return passwords.filter((password) => password.length >= MIN_SECRET_LENGTH);
  } catch {
    return [];
  }
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

/**
 * One pooled, keep-alive client for all upstream calls (a connection per request halves throughput). A call that
 * waits for a free connection gets the same deadline as its answer (`QueueDeadlineDispatcher`).
 */
export function createUpstreamAgent(): Dispatcher {
  return new QueueDeadlineDispatcher(new Agent({ keepAliveTimeout: 10_000, keepAliveMaxTimeout: 60_000, connections: 256, pipelining: 1 }));
}
