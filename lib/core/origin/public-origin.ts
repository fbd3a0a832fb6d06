import type { Logger } from 'pino';
import type { CoreRequest } from '../request';
import { OriginWarnings } from './warnings';

/**
 * The origin browsers use to reach Keyward (DESIGN.md "The public origin"). Inside Next, `request.url` is the
 * internal `http://localhost:<port>` whatever the Host was, so it is never used where a Host header exists:
 * the origin is `AUTH_URL`'s, or, where the host is trusted (`AUTH_TRUST_HOST`, Vercel, development), the one
 * the forwarded/Host headers name — the same rule Auth.js's `createActionURL` uses. Auth.js's route handlers build
 * their URLs on the request's URL instead, so lib/next/api-routes.ts hands them requests on this origin.
 */
export interface OriginPolicy {
  /** The public origin for this request; null when it cannot be computed (production without a setting). */
  publicOrigin(request: CoreRequest): string | null;
  /** Whether `origin` may make state-changing calls with a cookie session: the public origin, or a listed one. */
  allows(origin: string, request: CoreRequest): boolean;
}

export interface OriginSettings {
  /** `AUTH_URL`: the deployment's fixed public URL (only its origin is used). */
  readonly authUrl?: string | null;
  /** Trust the Host / X-Forwarded-Host / X-Forwarded-Proto headers (AUTH_TRUST_HOST, Vercel, development). */
  readonly trustHost: boolean;
  /** `KEYWARD_ALLOWED_ORIGINS`: further origins (another front end of the same app) allowed to call. */
  readonly extraOrigins?: readonly string[] | null;
  /** Production: a trusted-host origin on plain `http://` (not loopback) is then logged as a likely proxy mistake. */
  readonly production?: boolean;
}

/**
 * `logger`: where a refusal a reverse proxy's headers explain, and (in production) a plain-HTTP trusted-host
 * origin, are logged as warnings (lib/core/origin/warnings.ts); none without it.
 */
export function createOriginPolicy(
  settings: OriginSettings,
  logger: Pick<Logger, 'warn'> | null = null,
  now?: () => number,
): OriginPolicy {
  const fixed = settings.authUrl ? new URL(settings.authUrl).origin : null;
  const extra = new Set(settings.extraOrigins ?? []);
  const warnings = logger ? new OriginWarnings(logger, fixed !== null, now) : null;
  const warnPlainHttp = warnings !== null && fixed === null && settings.trustHost && settings.production === true;
  const publicOrigin = (request: CoreRequest): string | null => {
    if (fixed) return fixed;
    if (!settings.trustHost) return null;
    const origin = originFromHeaders(request);
    if (warnPlainHttp && origin?.startsWith('http:')) warnings.plainHttpOrigin(origin);
    return origin;
  };
  return {
    publicOrigin,
    allows(origin, request) {
      if (extra.has(origin)) return true;
      const expected = publicOrigin(request);
      if (origin === expected) return true;
      warnings?.refusedOrigin(origin, expected);
      return false;
    },
  };
}

/**
 * `X-Forwarded-Proto`/`X-Forwarded-Host` (first value: the one the outermost proxy saw), else `Host`. A request
 * with no Host at all (a `Request` built in code, the fast lane's tests) is taken at its own URL. Anything that
 * is not a plain host[:port] gives null, which refuses the call (fail closed).
 */
export function originFromHeaders(request: CoreRequest): string | null {
  const { headers } = request;
  const host = firstValue(headers.get('x-forwarded-host')) ?? firstValue(headers.get('host'));
  const ownUrl = new URL(request.url);
  if (host === null) return ownUrl.origin;
  const proto = (firstValue(headers.get('x-forwarded-proto')) ?? ownUrl.protocol.replace(/:$/, '')).toLowerCase();
  if (proto !== 'http' && proto !== 'https') return null;
  if (!/^[A-Za-z0-9.-]+(?::\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::\d{1,5})?$/.test(host)) return null;
  try {
    return new URL(`${proto}://${host}`).origin;
  } catch {
    return null;
  }
}

function firstValue(value: string | null): string | null {
  if (value === null) return null;
  const first = value.split(',')[0]!.trim();
  return first === '' ? null : first;
}
