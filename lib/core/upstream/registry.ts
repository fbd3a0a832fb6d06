import 'server-only';
import type { AuthConfig, CredentialSource, RouteConfig, RouteMethod, SecretRef, UpstreamConfig } from '../config/schema';
import { ConfigError, type UpstreamDefinition } from '../config/load';
import { variableNamed } from '../config/error';
import { processFingerprints, type KeyFingerprints } from '../keys/fingerprint';
import type { SessionValue } from '../config/policy';
import { compileRouteLimits, type RouteLimits } from '../limits/rules';
import { compileContract, type CompiledContract } from '../policy/contract';
import { awsCredential, type AwsKeyPair } from '../credential/aws-sigv4';
import { hmacCredential } from '../credential/hmac';
import type { RequestSigner } from '../credential/sign';
import { bySpecificity, compileTemplate, type TemplateSegment } from '../route/template';
import { compileGenAi, type GenAiRoute } from '../observe/gen-ai';
import type { LinkMode } from '../respond/links';

export interface CompiledRoute {
  readonly method: RouteMethod;
  /** The declared template, e.g. `/items/:id`: what logs and audit records name. */
  readonly template: string;
  /** Literal segments are strings; parameters are `{ param, prefix, suffix, colons }`; a final `*` is `{ rest: true }`. */
  readonly segments: readonly TemplateSegment[];
  readonly roles: ReadonlySet<string> | null;
  /** Every one of these is needed (null: none). */
  readonly scopes: ReadonlySet<string> | null;
  /** Object-level checks: path parameter → the session value it must equal. */
  readonly paramEquals: ReadonlyMap<string, SessionValue>;
  readonly contract: CompiledContract;
  readonly limits: RouteLimits;
  readonly maxRequestBytes: number;
  /** Largest decoded size of a compressed response body (lib/core/respond/body.ts). */
  readonly maxDecodedResponseBytes: number;
  readonly timeoutMs: number;
  readonly cacheControl: string;
  /** What becomes of the upstream's `Link` header (lib/core/respond/links.ts): the route's, else the upstream's. */
  readonly links: LinkMode;
  /** WebSocket upgrades (fast lane only): null unless the route declares `websocket: true`. */
  readonly websocket: WebSocketRoute | null;
  /** OpenTelemetry GenAI attributes for this route's spans (the LLM presets declare them); null: none. */
  readonly genAi: GenAiRoute | null;
  /** A decoy route (`"decoy": true`): never forwarded; calling it is a decoy hit (README "Decoy keys"). */
  readonly decoy: boolean;
}

export interface WebSocketRoute {
  /** Largest message either way; a larger one closes the socket. */
  readonly maxMessageBytes: number;
  /** The socket is closed after this long without a message either way. */
  readonly idleTimeoutMs: number;
  /** The subprotocols a client may offer; an upgrade offering any other is refused. Empty: none. */
  readonly subprotocols: ReadonlySet<string>;
}

/**
 * A credential ready to attach: header and/or query value, or a signer that signs the finished request
 * (`aws-sigv4`, `hmac`); every raw secret it holds, and its fingerprint.
 */
export interface ResolvedCredential {
  readonly type: AuthConfig['type'];
  readonly headerName?: string;
  readonly headerValue?: string;
  readonly queryName?: string;
  readonly queryValue?: string;
  /** Signs the request last, over exactly what is sent (lib/core/credential/sign.ts). */
  readonly signer?: RequestSigner;
  /**
   * Every secret value this credential holds, for scrubbing and leak checks; as a key ring hands it to a call,
   * the other versions of the ring after its own (lib/core/keys/rings.ts, `withRingSecrets`), and for a key
   * chosen by a claim, the upstream's other keys after its own.
   */
  readonly secrets: readonly string[];
  /** Names the key in logs and audit without revealing it: the first 12 hex digits of its SHA-256. */
  readonly fingerprint: string;
}

export interface Upstream {
  readonly id: string;
  readonly base: URL;
  readonly origin: string;
  readonly basePath: string;
  readonly routes: readonly CompiledRoute[];
  readonly timeoutMs: number;
  /** Calls one user may have in progress to it at once, in this process (lib/core/limits/in-flight.ts). */
  readonly maxCallsInFlightPerUser: number;
  /** Where this upstream's credential comes from; resolved per call by lib/core/credential/resolve.ts. */
  readonly credential: CredentialPlan;
  readonly auth: AuthConfig;
  /** How this deployment fingerprints key values (keyed by the server secret: lib/core/keys/fingerprint.ts). */
  readonly fingerprints: KeyFingerprints;
  readonly requestHeaders: ReadonlySet<string>;
  readonly responseHeaders: ReadonlySet<string>;
  /** Fixed request headers (`headers`), lowercased: set after the client's are filtered, so they win. */
  readonly fixedHeaders: ReadonlyArray<readonly [string, string]>;
  /** `defaultHeaders`, lowercased: set when the filtered client headers hold none of that name. */
  readonly defaultHeaders: ReadonlyArray<readonly [string, string]>;
}

/**
 * `static`: one service key, resolved at start-up. `claim`: service keys resolved at start-up, chosen per call
 * by a session claim. `user-key` and `oauth`: per-user secrets looked up in the store on each call.
 */
export type CredentialPlan =
  | {
      readonly source: 'static';
      /** The version in auth.secret. */
      readonly credential: ResolvedCredential;
      /** Every version from the environment (auth.secret first, then keys.versions), for the key ring. */
      readonly envVersions: readonly EnvKeyVersion[];
      readonly ring: KeyRingSettings;
      /** `basic` with `username: {env}`: the username read at start-up, for key versions added later. */
      readonly username?: string;
    }
  | {
      readonly source: 'claim';
      readonly claim: string;
      readonly byValue: ReadonlyMap<string, ResolvedCredential>;
      /** Each key with only its own secrets (byValue's hold the upstream's other keys too), to name a key by them. */
      readonly keys: readonly ResolvedCredential[];
    }
  | { readonly source: 'user-key'; readonly username?: string }
  | { readonly source: 'oauth'; readonly provider: string; readonly username?: string };

export interface EnvKeyVersion {
  /** `env:<NAME>`: the variable it was read from (never the value). */
  readonly id: string;
  readonly credential: ResolvedCredential;
  readonly notBefore: number | null;
  readonly expiresAt: number | null;
}

export interface KeyRingSettings {
  readonly expiresInDays: number;
  readonly graceSeconds: number;
  readonly canary: { readonly method: 'GET' | 'HEAD'; readonly path: string } | null;
}

export type Env = Readonly<Record<string, string | undefined>>;

/**
 * The variable's value, or undefined when it is not set. Read as an own string property only: the environment is
 * an ordinary object (process.env's prototype is Object.prototype), where `constructor` or `toString` would
 * otherwise name a function, and `__proto__` an object, and break the checks after the read with a TypeError.
 */
export function envValue(env: Env, name: string): string | undefined {
  const value: unknown = Object.hasOwn(env, name) ? env[name] : undefined;
  return typeof value === 'string' ? value : undefined;
}

/**
 * Builds the registry. A `Map`, never a plain object: `__proto__`, `constructor` and friends must not resolve.
 * Secrets are read here, once, so a missing one stops start-up instead of failing the first request.
 */
export function buildRegistry(
  definitions: readonly UpstreamDefinition[],
  env: Env,
  fingerprints: KeyFingerprints = processFingerprints(),
): Map<string, Upstream> {
  return compileEach(definitions, (id, config) => compileUpstream(id, config, env, fingerprints));
}

/**
 * The upstreams' routes compiled as buildRegistry compiles them (contracts, limits, path templates), reading no
 * secret: for a tool that reads the config without serving it (`keyward types`), so that a config start-up
 * refuses is refused there too, with the same message.
 */
export function checkRoutes(definitions: readonly UpstreamDefinition[]): void {
  compileEach(definitions, (id, config) => config.routes.map((route, index) => compileRoute(id, index, route, config)));
}

/** Each upstream compiled by `compile`, by id; every problem found (ConfigError) thrown at the end, in one error. */
function compileEach<T>(definitions: readonly UpstreamDefinition[], compile: (id: string, config: UpstreamConfig) => T): Map<string, T> {
  const compiled = new Map<string, T>();
  const problems: string[] = [];
  for (const { id, config } of definitions) {
    if (compiled.has(id)) {
      problems.push(`  - upstreams.${id}: declared more than once (JSON and TypeScript)`);
      continue;
    }
    try {
      compiled.set(id, compile(id, config));
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      problems.push(error.message);
    }
  }
  if (problems.length > 0) throw new ConfigError(`Keyward configuration is invalid:\n${problems.join('\n')}`);
  return compiled;
}

function compileUpstream(id: string, config: UpstreamConfig, env: Env, fingerprints: KeyFingerprints): Upstream {
  const base = new URL(config.baseUrl);
  return {
    id,
    base,
    origin: base.origin,
    basePath: base.pathname,
    // Tried most specific first (a stable sort: equal ranks keep their declared order), so a route declared for
    // a narrower path always serves it, wherever it is declared (a preset's broader route included).
    routes: config.routes.map((route, index) => compileRoute(id, index, route, config)).sort((a, b) => bySpecificity(a.segments, b.segments)),
    timeoutMs: config.timeoutMs,
    maxCallsInFlightPerUser: config.maxCallsInFlightPerUser,
    credential: planCredential(id, config, env, fingerprints),
    auth: config.auth,
    fingerprints,
    requestHeaders: new Set(config.requestHeaders),
    responseHeaders: new Set(config.responseHeaders),
    fixedHeaders: Object.entries(config.headers).map(([name, value]) => [name.toLowerCase(), value] as const),
    defaultHeaders: Object.entries(config.defaultHeaders).map(([name, value]) => [name.toLowerCase(), value] as const),
  };
}

function compileRoute(upstreamId: string, index: number, route: RouteConfig, upstream: UpstreamConfig): CompiledRoute {
  const where = `upstreams.${upstreamId}.routes.${index}`;
  return {
    method: route.method,
    template: route.path,
    segments: compileTemplate(route.path),
    roles: route.roles ? new Set(route.roles) : null,
    scopes: route.scopes ? new Set(route.scopes) : null,
    paramEquals: new Map(Object.entries(route.paramEquals ?? {})),
    contract: compileContract(route, where, upstream.auth.type === 'aws-sigv4'),
    limits: compileRouteLimits(upstreamId, `${route.method} ${route.path}`, upstream, route, where),
    maxRequestBytes: route.maxRequestBytes ?? upstream.maxRequestBytes,
    maxDecodedResponseBytes: route.maxDecodedResponseBytes ?? upstream.maxDecodedResponseBytes,
    timeoutMs: route.timeoutMs ?? upstream.timeoutMs,
    cacheControl: route.cacheControl ?? 'private, no-store',
    links: route.links ?? upstream.links,
    websocket: route.websocket
      ? {
          maxMessageBytes: route.maxMessageBytes ?? upstream.maxMessageBytes,
          idleTimeoutMs: route.idleTimeoutMs ?? upstream.idleTimeoutMs,
          subprotocols: new Set(route.subprotocols ?? upstream.subprotocols),
        }
      : null,
    genAi: route.genAi ? compileGenAi(route.genAi) : null,
    decoy: route.decoy ?? false,
  };
}

/** The shortest secret read from the environment (`auth.secret`, key versions); a basic username may be shorter. */
export const MIN_SECRET_LENGTH = 8;

/**
 * A `basic` username read from the environment, as a secret to scrub (an account id some APIs want kept): none when
 * it is too short to be one, since the forms of `abc` (hex `616263`, base64 `YWJj`) are ordinary text.
 */
export function usernameSecrets(username: string | undefined): string[] {
  return username !== undefined && username.length >= MIN_SECRET_LENGTH ? [username] : [];
}

function readSecret(upstreamId: string, field: string, ref: SecretRef, env: Env, minLength = MIN_SECRET_LENGTH): string {
  const where = `upstreams.${upstreamId}.${field}`;
  const value = envValue(env, ref.env);
  if (value === undefined || value === '') {
    throw new ConfigError(`  - ${where}: ${variableNamed(ref.env)} is not set`);
  }
  // Whitespace or CR/LF around a key is almost always a copy-paste accident, and a CR/LF could split a header.
  if (value !== value.trim() || /[\x00-\x1f\x7f]/.test(value)) {
    throw new ConfigError(`  - ${where}: ${ref.env} has surrounding whitespace or control characters (value not shown)`);
  }
  if (value.length < minLength) {
    throw new ConfigError(`  - ${where}: ${ref.env} is shorter than ${minLength} characters (value not shown)`);
  }
  return value;
}

function planCredential(id: string, config: UpstreamConfig, env: Env, fingerprints: KeyFingerprints): CredentialPlan {
  const { auth } = config;
  const source: CredentialSource = auth.secret;
  const username =
    auth.type === 'basic' && typeof auth.username !== 'string' ? readSecret(id, 'auth.username', auth.username, env, 1) : undefined;
  if (username?.includes(':')) {
    // RFC 7617 §2: the user-id cannot contain a colon.
    throw new ConfigError(`  - upstreams.${id}.auth.username: the value must not contain ":" (value not shown)`);
  }
  if ('env' in source) {
    const keys = config.keys;
    const time = (value: string | undefined) => (value === undefined ? null : Date.parse(value));
    const primary =
      auth.type === 'aws-sigv4'
        ? awsCredential(auth, readAwsKeyPair(id, auth, source, env), fingerprints)
        : credentialFor(auth, readSecret(id, 'auth.secret', source, env), fingerprints, username);
    const envVersions: EnvKeyVersion[] = [{ id: `env:${source.env}`, credential: primary, notBefore: null, expiresAt: time(keys?.primaryExpiresAt) }];
    (keys?.versions ?? []).forEach((version, index) => {
      const credential = credentialFor(auth, readSecret(id, `keys.versions.${index}`, version, env), fingerprints, username);
      if (envVersions.some((other) => other.id === `env:${version.env}`)) {
        throw new ConfigError(`  - upstreams.${id}.keys.versions.${index}.env: ${version.env} is already a version of this key`);
      }
      envVersions.push({ id: `env:${version.env}`, credential, notBefore: time(version.notBefore), expiresAt: time(version.expiresAt) });
    });
    const ring: KeyRingSettings = {
      expiresInDays: keys?.expiresInDays ?? 90,
      graceSeconds: keys?.graceSeconds ?? 86_400,
      canary: keys?.canary ?? null,
    };
    return { source: 'static', credential: primary, envVersions, ring, username };
  }
  if ('claim' in source) {
    const chosen = Object.entries(source.keys).map(
      ([value, ref]) => [value, credentialFor(auth, readSecret(id, `auth.secret.keys.${value}`, ref, env), fingerprints, username)] as const,
    );
    // Each key's `secrets` holds every other key of the upstream after its own, so the leak scrubber takes them
    // all out of an answer: an endpoint that lists the account's keys never shows one claim's key to another.
    const every = chosen.flatMap(([, credential]) => credential.secrets);
    const byValue = new Map<string, ResolvedCredential>(
      chosen.map(([value, credential]) => [value, withSecrets(credential, every)]),
    );
    return { source: 'claim', claim: source.claim, byValue, keys: chosen.map(([, credential]) => credential) };
  }
  // `basic` with `username: {env}`: read here, at start-up, and used with each user's secret as the password.
  if ('user' in source) return { source: 'user-key', username };
  return { source: 'oauth', provider: source.oauth, username };
}

/**
 * The credential with `extra` secrets after its own (which stay first: hits and key-ring versions read them), for
 * the leak scrubber to take out of answers too; the credential itself when they add none.
 */
export function withSecrets(credential: ResolvedCredential, extra: readonly string[]): ResolvedCredential {
  const secrets = [...new Set([...credential.secrets, ...extra])];
  return secrets.length === credential.secrets.length ? credential : { ...credential, secrets };
}

/** Builds what is attached upstream for one secret value, in the upstream's declared auth shape. */
export function credentialFor(auth: AuthConfig, secret: string, fingerprints: KeyFingerprints, secretUsername?: string): ResolvedCredential {
  const print = fingerprints.of(secret);
  switch (auth.type) {
    case 'header':
      return {
        type: 'header',
        headerName: auth.name,
        headerValue: `${auth.prefix ?? ''}${secret}`,
        secrets: [secret],
        fingerprint: print,
      };
    case 'bearer':
      return { type: 'bearer', headerName: 'authorization', headerValue: `Bearer ${secret}`, secrets: [secret], fingerprint: print };
    case 'basic': {
      const username = typeof auth.username === 'string' ? auth.username : secretUsername;
      // Never `undefined:<secret>`: every caller passes the username read at start-up (planCredential).
      if (username === undefined) throw new TypeError('basic auth: the username read from the environment was not passed');
      const encoded = Buffer.from(`${username}:${secret}`, 'utf8').toString('base64');
      const secrets = [secret, ...(typeof auth.username === 'string' ? [] : usernameSecrets(username)), encoded];
      return { type: 'basic', headerName: 'authorization', headerValue: `Basic ${encoded}`, secrets, fingerprint: print };
    }
    case 'query':
      return { type: 'query', queryName: auth.name, queryValue: secret, secrets: [secret], fingerprint: print };
    case 'hmac':
      return hmacCredential(auth, secret, fingerprints);
    case 'aws-sigv4':
      // A pair (and maybe a session token), read together at start-up: the schema refuses any other source.
      throw new TypeError('aws-sigv4 credentials are built from their key pair (awsCredential)');
  }
}

/** The access key id, secret access key and session token of an `aws-sigv4` upstream, from the environment. */
function readAwsKeyPair(id: string, auth: Extract<AuthConfig, { type: 'aws-sigv4' }>, secret: SecretRef, env: Env): AwsKeyPair {
  return {
    accessKeyId: readSecret(id, 'auth.accessKeyId', auth.accessKeyId, env),
    secretAccessKey: readSecret(id, 'auth.secret', secret, env),
    sessionToken: auth.sessionToken === undefined ? undefined : readSecret(id, 'auth.sessionToken', auth.sessionToken, env),
  };
}
