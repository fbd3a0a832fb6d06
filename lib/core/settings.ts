import 'server-only';
import { z } from 'zod';
import { ConfigError } from './config/load';
import { formatIssues, isLoopbackHost } from './config/schema';
import { LOG_LEVELS, type LogLevel } from './log/logger';
import type { Env } from './upstream/registry';

/**
 * Whether a secret is free of surrounding whitespace and control characters (README "Security model"): either is
 * almost always a copy-paste accident, and a CR/LF could split a header.
 */
export const isCleanSecret = (value: string): boolean => value === value.trim() && !/[\x00-\x1f\x7f]/.test(value);
const UNCLEAN_SECRET = 'has surrounding whitespace or control characters';

const secret = z
  .string({ error: 'is not set' })
  .min(32, 'must be at least 32 characters')
  .refine(isCleanSecret, UNCLEAN_SECRET);

/**
 * Whether a Redis URL's user name and password decode: ioredis decodes them itself and throws a bare
 * "URI malformed" at start-up on a stray `%`, and the log scrubber could not learn such a password.
 */
function hasDecodableUserInfo(value: string): boolean {
  const url = URL.parse(value);
  // Not a URL at all: the parse check's to name.
  if (url === null) return true;
  try {
    decodeURIComponent(url.username);
    decodeURIComponent(url.password);
    return true;
  } catch {
    return false;
  }
}

const origin = z.string().refine(
  (value) => {
    try {
      return new URL(value).origin === value;
    } catch {
      return false;
    }
  },
  { message: 'each entry must be an origin such as https://app.example.com' },
);

/**
 * A URL Keyward fetches or hands to the browser must not carry `user:password@`: fetch refuses such a URL with an
 * error that quotes it, which would put the password in the log; and nothing here sends it anyway.
 */
const noUserInfo = (value: string) => {
  // zod runs refinements after a failed format check too: a value that is no URL is that check's to name.
  const url = URL.parse(value);
  return url === null || (url.username === '' && url.password === '');
};
const NO_USER_INFO = 'must not carry a user name or password (user:password@)';

/** A DNS name of letters, digits and hyphens, in dot-separated labels: what follows the "@" of an email address. */
const EMAIL_DOMAIN = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;

const flag = z
  .enum(['true', '1'], { error: 'must be true or 1, or unset' })
  .optional()
  .transform((value) => value !== undefined);

/** Every environment setting Keyward reads, validated in one place (read lazily, never at module load). */
const settingsSchema = z.object({
  NODE_ENV: z.string().optional(),
  /** The public URL of the deployment (Auth.js reads it too); its origin is the one browsers call. */
  AUTH_URL: z
    .url({ protocol: /^https?$/, error: 'must be the public http(s) URL of the site, such as https://app.example.com' })
    .refine(noUserInfo, NO_USER_INFO)
    .optional(),
  /**
   * Trust the Host / X-Forwarded-Host headers for the public origin (Auth.js's setting). Only `true`/`1`:
   * Auth.js treats ANY value as true, so `false` would trust the host there and not here.
   */
  AUTH_TRUST_HOST: flag,
  /** Set by Vercel in its functions; Auth.js trusts the host there. */
  VERCEL: z.string().optional(),
  /** Serves the demo page, its user and the benchmark's naive route (`npm run dev` sets it). */
  KEYWARD_DEMO: flag,
  AUTH_SECRET: secret,
  KEYWARD_SESSION_SECRET: secret,
  KEYWARD_CONFIG: z.string().min(1).optional(),
  /** The config file's content itself, for hosts where shipping a file is awkward (Vercel). */
  KEYWARD_CONFIG_JSON: z.string().min(1).optional(),
  KEYWARD_ALLOWED_ORIGINS: z
    .string()
    .optional()
    .transform((value) => (value ? value.split(',').map((v) => v.trim()).filter(Boolean) : null))
    .pipe(z.array(origin).nullable()),
  KEYWARD_USERS_FILE: z.string().min(1).optional(),
  /** Decoy credentials (honeytokens) to recognise, from `npm run keyward -- decoys create` (README "Decoy keys"). */
  KEYWARD_DECOYS_FILE: z.string().min(1).optional(),
  KEYWARD_OIDC_ISSUER: z.url({ protocol: /^https?$/ }).refine(noUserInfo, NO_USER_INFO).optional(),
  KEYWARD_OIDC_CLIENT_ID: z.string().min(1).optional(),
  KEYWARD_OIDC_CLIENT_SECRET: z.string().min(1).refine(isCleanSecret, UNCLEAN_SECRET).optional(),
  KEYWARD_OIDC_NAME: z.string().min(1).max(64).default('Single sign-on'),
  KEYWARD_OIDC_ROLES_CLAIM: z.string().min(1).default('roles'),
  /** OIDC profile claims (string values) copied into the session, e.g. `org` to choose a per-organisation key. */
  KEYWARD_OIDC_CLAIMS: z
    .string()
    .default('')
    .transform((value) => value.split(',').map((v) => v.trim()).filter(Boolean)),
  /**
   * OIDC sign-in only for accounts whose ID token has a verified email at one of these domains (exact, no
   * subdomains); empty: the issuer alone decides who signs in.
   */
  KEYWARD_OIDC_EMAIL_DOMAINS: z
    .string()
    .default('')
    .transform((value) => value.split(',').map((v) => v.trim().toLowerCase()).filter(Boolean))
    .pipe(z.array(z.string().regex(EMAIL_DOMAIN, 'each entry must be a domain name such as example.com (no "@", no "*")'))),
  KEYWARD_DEFAULT_ROLES: z
    .string()
    .default('user')
    .transform((value) => value.split(',').map((v) => v.trim()).filter(Boolean)),
  KEYWARD_SESSION_MAX_AGE: z.coerce.number().int().min(60).max(30 * 24 * 3600).default(8 * 3600),
  /** Shared store: Redis when REDIS_URL is set, else the embedded SQLite file (memory only for tests). */
  REDIS_URL: z
    .string()
    .regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL')
    // A port out of range, an unclosed IPv6 bracket: said so, the value never echoed (it may hold the password).
    .refine((value) => URL.canParse(value), 'could not be parsed as a URL (check the host, the port and any [IPv6] brackets)')
    .refine(hasDecodableUserInfo, 'malformed percent-encoding in the user name or password (write % as %25)')
    .optional(),
  /** Prefix of every Redis key Keyward writes, so several apps (or test runs) can share one Redis. */
  KEYWARD_REDIS_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9:_.-]{1,64}$/, 'must be 1-64 characters of letters, digits and : _ . -')
    .default('keyward:'),
  KEYWARD_STORE: z.enum(['sqlite', 'memory', 'redis']).optional(),
  KEYWARD_STORE_PATH: z.string().min(1).default('.keyward/keyward.db'),
  /** Seals per-user secrets at rest (BYOK keys, OAuth tokens). The previous one still opens old seals. */
  KEYWARD_VAULT_SECRET: secret.optional(),
  KEYWARD_VAULT_SECRET_PREVIOUS: secret.optional(),
  /** Redirect URIs of native apps allowed to use the mobile token exchange (comma-separated). */
  KEYWARD_MOBILE_REDIRECT_URIS: z
    .string()
    .optional()
    .transform((value) => (value ? value.split(',').map((v) => v.trim()).filter(Boolean) : []))
    .pipe(
      z.array(
        z.string().refine((value) => {
          try {
            const url = new URL(value);
            // Private-use schemes (com.example.app:/cb) or loopback http (RFC 8252 §7.1, §7.3); never plain web http.
            return url.protocol === 'https:' || (url.protocol === 'http:' && ['127.0.0.1', '[::1]', 'localhost'].includes(url.hostname)) || /^[a-z][a-z0-9+.-]*\.[a-z0-9+.-]+:$/.test(url.protocol);
          } catch {
            return false;
          }
        }, 'each entry must be a private-use scheme (com.example.app:/callback), https, or loopback http URL'),
      ),
    ),
  /** How long audit records are kept (calls and admin actions), in days. */
  KEYWARD_AUDIT_RETENTION_DAYS: z.coerce.number().int().min(1).max(3650).default(30),
  /** How long usage aggregates are kept: per-minute buckets (hours), per-hour and per-day buckets (days). */
  KEYWARD_USAGE_MINUTES_RETENTION_HOURS: z.coerce.number().int().min(1).max(24 * 90).default(48),
  KEYWARD_USAGE_HOURS_RETENTION_DAYS: z.coerce.number().int().min(1).max(3650).default(35),
  KEYWARD_USAGE_DAYS_RETENTION_DAYS: z.coerce.number().int().min(1).max(3650).default(400),
  /** Proxies in front of Keyward that append to X-Forwarded-For (Vercel, a load balancer): 1 for one. */
  KEYWARD_TRUSTED_PROXY_HOPS: z.coerce.number().int().min(1).max(10).default(1),
  /** Sign-in attempts allowed per client IP, and per username, in each window. */
  KEYWARD_SIGNIN_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(1_000_000).default(10),
  KEYWARD_SIGNIN_WINDOW_SECONDS: z.coerce.number().int().min(1).max(86_400).default(300),
  /** Bearer token for GET /api/metrics (Prometheus); unset: the endpoint does not exist (404). */
  KEYWARD_METRICS_TOKEN: secret
    // It travels as `Authorization: Bearer <token>`: a space or a non-ASCII character could never match.
    .refine((value) => /^[\x21-\x7e]+$/.test(value), { message: 'must be one word of printable ASCII (no spaces)' })
    .optional(),
  KEYWARD_MOBILE_ACCESS_TTL: z.coerce.number().int().min(60).max(3600).default(900),
  KEYWARD_MOBILE_REFRESH_TTL: z.coerce.number().int().min(3600).max(90 * 24 * 3600).default(30 * 24 * 3600),
  /** Seconds after a refresh during which the same refresh token gets the same successor again; 0: never. */
  KEYWARD_MOBILE_REFRESH_GRACE: z.coerce.number().int().min(0).max(120).default(30),
  /**
   * DPoP (RFC 9449) at the mobile token endpoint: `optional` binds the tokens to the app's key when it sends a
   * proof; `required` refuses a grant without one (`invalid_dpop_proof`). Bound tokens need a proof either way.
   */
  KEYWARD_MOBILE_DPOP: z.enum(['optional', 'required'], { error: 'must be optional or required' }).default('optional'),
  /** pino's level; unset or empty: info. pino throws on any other value, so it is named here instead. */
  KEYWARD_LOG_LEVEL: z
    .enum([...LOG_LEVELS, ''], { error: 'must be fatal, error, warn, info, debug, trace or silent' })
    .optional()
    .transform((value): LogLevel => value || 'info'),
});

export type Settings = z.output<typeof settingsSchema>;

/**
 * `KEYWARD_` variables read outside the settings above: the fast lane's two processes, the demo and the
 * benchmark. With the settings, the names a near miss is compared with (misspelledSettings).
 */
const OTHER_KEYWARD_VARIABLES = [
  'KEYWARD_DIST_DIR',
  'KEYWARD_NEXT_SOCKET',
  'KEYWARD_NEXT_PORT',
  'KEYWARD_NEXT_HOSTNAME',
  'KEYWARD_DEMO_TRAFFIC',
  'KEYWARD_BENCH_NAIVE_BASE',
  'KEYWARD_BENCH_NAIVE_KEY',
  'KEYWARD_BENCH_UPSTREAM_KEY',
];
const KEYWARD_VARIABLES = new Set([...Object.keys(settingsSchema.shape).filter((name) => name.startsWith('KEYWARD_')), ...OTHER_KEYWARD_VARIABLES]);

/**
 * `KEYWARD_` variables that Keyward does not read but that are one or two typing mistakes away from one it does
 * (`KEYWARD_CONIFG`, `KEYWARD_USER_FILE`): each silently does nothing, so a deployment would run without what the
 * operator meant to set. One line each, naming the variable and what was probably meant, never a value. Other
 * `KEYWARD_` names, and those in `referenced` (what the configuration reads by name, such as an upstream's key),
 * are left alone.
 */
export function misspelledSettings(env: Env, referenced: ReadonlySet<string> = new Set()): string[] {
  const lines: string[] = [];
  for (const name of Object.keys(env)) {
    // KEYWORD_ as well: the product's name is itself easy to mistype.
    if (!/^KEYW[AO]RD_/.test(name) || KEYWARD_VARIABLES.has(name) || referenced.has(name)) continue;
    let best: { name: string; distance: number } | null = null;
    for (const known of KEYWARD_VARIABLES) {
      const distance = editDistance(name, known);
      if (distance <= 2 && (best === null || distance < best.distance)) best = { name: known, distance };
    }
    if (best) lines.push(`  - ${name}: not a Keyward setting, so it is ignored; did you mean ${best.name}?`);
  }
  return lines;
}

/**
 * Optimal string alignment distance (Levenshtein with adjacent transpositions, so `CONIFG` is 1 from `CONFIG`).
 * Written here rather than taken from a package: a dozen lines over a few dozen short names, once at start-up.
 */
function editDistance(a: string, b: string): number {
  const rows: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) rows[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let value = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        value = Math.min(value, rows[i - 2]![j - 2]! + 1);
      }
      rows[i]![j] = value;
    }
  }
  return rows[a.length]![b.length]!;
}

export function isProduction(settings: Pick<Settings, 'NODE_ENV'>): boolean {
  return settings.NODE_ENV === 'production';
}

/** Whether the Host/forwarded headers name the public origin: Auth.js's rule (AUTH_TRUST_HOST, Vercel, development). */
export function trustsHost(settings: Pick<Settings, 'NODE_ENV' | 'AUTH_TRUST_HOST' | 'VERCEL'>): boolean {
  return settings.AUTH_TRUST_HOST || Boolean(settings.VERCEL) || !isProduction(settings);
}

/**
 * What production needs before it can serve anyone, in the Auth.js style: one line per problem, naming the
 * setting (never a value). Development has defaults for all of these.
 */
export function productionProblems(
  settings: Pick<Settings, 'NODE_ENV' | 'AUTH_URL' | 'AUTH_TRUST_HOST' | 'VERCEL' | 'KEYWARD_OIDC_ISSUER'>,
  hasUsers: boolean,
  upstreams: number | null = null,
): string[] {
  if (!isProduction(settings)) return [];
  const problems: string[] = [];
  if (!settings.AUTH_URL && !trustsHost(settings)) {
    problems.push(
      '  - AUTH_URL: must be set in production to the public URL of the site (https://app.example.com), or set AUTH_TRUST_HOST=true behind a proxy that sets Host/X-Forwarded-Host and X-Forwarded-Proto (Vercel does this for you)',
    );
  }
  const authUrl = settings.AUTH_URL ? new URL(settings.AUTH_URL) : null;
  // Not `/api/auth/`: Auth.js joins `/callback/oidc` to the path as it is, and `…/api/auth//callback/oidc` is a
  // redirect URI no provider has registered.
  if (authUrl && !['/', '/api/auth'].includes(authUrl.pathname)) {
    problems.push(
      "  - AUTH_URL: must be the site's origin (https://app.example.com), with no path but Auth.js's own /api/auth (no trailing slash); Auth.js takes its path as its own base path",
    );
  }
  if (authUrl?.protocol === 'http:' && !LOOPBACK_HOSTS.has(authUrl.hostname)) {
    problems.push(
      "  - AUTH_URL: must be https:// in production: Keyward's session and sign-in cookies are Secure (__Host-), and browsers do not keep Secure cookies over plain HTTP (except on localhost), so nobody could sign in; serve the site over HTTPS (a TLS proxy in front is fine) and name that URL",
    );
  }
  const issuer = settings.KEYWARD_OIDC_ISSUER ? new URL(settings.KEYWARD_OIDC_ISSUER) : null;
  if (issuer?.protocol === 'http:' && !isLoopbackHost(issuer.hostname)) {
    problems.push(
      '  - KEYWARD_OIDC_ISSUER: must be https (plain http only on a loopback address): the client secret and the tokens that make a session would cross the network in the clear, and anyone on the path could answer as the provider',
    );
  }
  if (!hasUsers && !settings.KEYWARD_OIDC_ISSUER) {
    problems.push(
      '  - KEYWARD_USERS_FILE or KEYWARD_OIDC_ISSUER: no sign-in method is configured; set KEYWARD_USERS_FILE to a users file (npm run keyward -- hash-password) or KEYWARD_OIDC_ISSUER, KEYWARD_OIDC_CLIENT_ID and KEYWARD_OIDC_CLIENT_SECRET',
    );
  }
  // `upstreams` is null when they are not known yet (the settings did not parse).
  if (upstreams === 0) {
    problems.push(
      '  - KEYWARD_CONFIG or KEYWARD_CONFIG_JSON: no upstream is configured, so every proxied call would be 404; set KEYWARD_CONFIG to your JSON config file, or KEYWARD_CONFIG_JSON to its content, or list TypeScript adapters in upstreams/index.ts',
    );
  }
  return problems;
}

/** Whether two URLs have one origin (false when either is missing or does not parse). */
function sameOrigin(a: string, b: string | undefined): boolean {
  return b !== undefined && URL.canParse(a) && URL.canParse(b) && new URL(a).origin === new URL(b).origin;
}

/** Host names browsers treat as secure over plain HTTP (they keep Secure cookies there). */
const LOOPBACK_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]']);

/**
 * The settings, validated. `serving`: the process will serve requests (not a CLI tool), so a failure also names
 * what production needs to serve (productionProblems), in the same message.
 */
export function readSettings(env: Env, options: { serving?: boolean } = {}): Settings {
  const result = settingsSchema.safeParse(env);
  if (!result.success) {
    const hint =
      env.NODE_ENV === 'production'
        ? ''
        : '\n  (in development, `npm run dev` generates these into .keyward/dev-secrets.json)';
    // What production needs as well, so that one start-up names every missing setting, not one batch at a time.
    const alsoNeeded = (options.serving === false ? [] : productionProblemsOfEnv(env)).filter((line) => !result.error.issues.some((issue) => line.startsWith(`  - ${String(issue.path[0])}:`)));
    const problems = [formatIssues(result.error.issues, ''), ...alsoNeeded, ...misspelledSettings(env)].join('\n');
    throw new ConfigError(`Keyward settings are invalid:\n${problems}${hint}`);
  }
  const oidc = [result.data.KEYWARD_OIDC_ISSUER, result.data.KEYWARD_OIDC_CLIENT_ID, result.data.KEYWARD_OIDC_CLIENT_SECRET];
  if (oidc.some(Boolean) && !oidc.every(Boolean)) {
    throw new ConfigError(
      'Keyward settings are invalid:\n  - KEYWARD_OIDC_ISSUER, KEYWARD_OIDC_CLIENT_ID and KEYWARD_OIDC_CLIENT_SECRET must be set together',
    );
  }
  if (result.data.KEYWARD_OIDC_EMAIL_DOMAINS.length > 0 && !result.data.KEYWARD_OIDC_ISSUER) {
    throw new ConfigError('Keyward settings are invalid:\n  - KEYWARD_OIDC_EMAIL_DOMAINS: applies to OIDC sign-in, which needs KEYWARD_OIDC_ISSUER');
  }
  if (result.data.KEYWARD_CONFIG && result.data.KEYWARD_CONFIG_JSON) {
    throw new ConfigError('Keyward settings are invalid:\n  - KEYWARD_CONFIG_JSON: set either KEYWARD_CONFIG (a file) or KEYWARD_CONFIG_JSON (its content), not both');
  }
  if (result.data.KEYWARD_STORE === 'redis' && !result.data.REDIS_URL) {
    throw new ConfigError('Keyward settings are invalid:\n  - REDIS_URL: must be set when KEYWARD_STORE is redis');
  }
  // next-auth reads NextAuth v4's NEXTAUTH_URL when AUTH_URL is unset; Keyward's origin checks read AUTH_URL only,
  // so with one and not the other, sign-in would be sent to one origin and every call checked against another.
  if (env.NEXTAUTH_URL && !sameOrigin(env.NEXTAUTH_URL, result.data.AUTH_URL)) {
    throw new ConfigError(
      'Keyward settings are invalid:\n  - NEXTAUTH_URL: is the NextAuth v4 name, which Auth.js still reads but Keyward does not: rename it AUTH_URL (or remove it if AUTH_URL is set to the same origin)',
    );
  }
  if (result.data.KEYWARD_VAULT_SECRET_PREVIOUS && !result.data.KEYWARD_VAULT_SECRET) {
    throw new ConfigError('Keyward settings are invalid:\n  - KEYWARD_VAULT_SECRET: must be set when KEYWARD_VAULT_SECRET_PREVIOUS is');
  }
  return result.data;
}

/**
 * productionProblems on the raw environment, for when the settings themselves did not parse: only what can be
 * read safely from it (a malformed AUTH_URL is the schema's to report).
 */
function productionProblemsOfEnv(env: Env): string[] {
  let authUrl: string | undefined = env.AUTH_URL;
  try {
    if (authUrl !== undefined) new URL(authUrl);
  } catch {
    authUrl = undefined;
  }
  return productionProblems(
    {
      NODE_ENV: env.NODE_ENV,
      AUTH_URL: authUrl,
      AUTH_TRUST_HOST: env.AUTH_TRUST_HOST === 'true' || env.AUTH_TRUST_HOST === '1',
      VERCEL: env.VERCEL,
      KEYWARD_OIDC_ISSUER: env.KEYWARD_OIDC_ISSUER,
    },
    Boolean(env.KEYWARD_USERS_FILE),
  );
}

/**
 * Refuses a secret that is also exposed through a NEXT_PUBLIC_ variable: Next inlines those into the
 * browser bundle. Names the variable, never the value.
 */
export function assertNoPublicSecrets(env: Env, secrets: Iterable<string>): void {
  const values = new Set(secrets);
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('NEXT_PUBLIC_') || !value) continue;
    for (const secretValue of values) {
      if (value.includes(secretValue)) {
        throw new ConfigError(`Keyward settings are invalid:\n  - ${name}: holds a secret; NEXT_PUBLIC_ variables are sent to browsers`);
      }
    }
  }
}
