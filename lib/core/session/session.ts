/** Who is calling, as the pipeline sees it. Never holds a token or key. */
export interface Session {
  readonly userId: string;
  readonly name: string | null;
  readonly roles: readonly string[];
  /** Epoch milliseconds. */
  readonly expiresAt: number;
  /** Identifies this sign-in (for revocation and audit); not a secret. */
  readonly sessionId: string;
  /** When the user signed in (epoch ms); constant while the session is renewed. 0 if unknown. */
  readonly authTime: number;
  /** Extra string claims (e.g. `org`) copied at sign-in; used to choose a per-organisation key. */
  readonly claims: Readonly<Record<string, string>>;
  /** `cookie` sessions need the CSRF checks; `bearer` (mobile) sessions do not. */
  readonly via: 'cookie' | 'bearer';
  /**
   * A local user's password version at sign-in (lib/core/users/file.ts CheckedUser): a session whose version is
   * no longer the users file's is no session. Null for other users, and for sessions sealed without one.
   */
  readonly passwordVersion?: string | null;
}

/** The browser session cookie. `__Host-`: Secure, Path=/, no Domain (RFC 6265bis §4.1.3.2). */
export const SESSION_COOKIE = '__Host-keyward.session';

/** Claims Keyward writes into the Auth.js JWT at sign-in (see lib/next/auth.ts). */
export interface SessionClaims {
  sub?: string;
  name?: string | null;
  roles?: unknown;
  sid?: unknown;
  exp?: number;
  /** Seconds since the epoch at sign-in (OIDC's `auth_time`). */
  auth_time?: unknown;
  /** The same instant in milliseconds: "sign out everywhere" is recorded in ms, and a sign-in in the same
   *  second right after it must not count as revoked. */
  auth_ms?: unknown;
  claims?: unknown;
  /** A local user's password version at sign-in (Session.passwordVersion). */
  pwv?: unknown;
}

export function sessionFromClaims(claims: SessionClaims, via: Session['via']): Session | null {
  if (typeof claims.sub !== 'string' || claims.sub === '') return null;
  if (typeof claims.exp !== 'number') return null;
  if (typeof claims.sid !== 'string' || claims.sid === '') return null;
  const roles = Array.isArray(claims.roles) ? claims.roles.filter((r): r is string => typeof r === 'string') : [];
  return {
    userId: claims.sub,
    name: typeof claims.name === 'string' ? claims.name : null,
    roles,
    expiresAt: claims.exp * 1000,
    sessionId: claims.sid,
    authTime:
      typeof claims.auth_ms === 'number' ? claims.auth_ms : typeof claims.auth_time === 'number' ? claims.auth_time * 1000 : 0,
    claims: stringClaims(claims.claims),
    via,
    passwordVersion: typeof claims.pwv === 'string' ? claims.pwv : null,
  };
}

/**
 * A session's claims from a decoded token, a stored record or the users file: its string values, in an object
 * without a prototype, so that a claim named like an Object method (`constructor`) is never found by inheritance.
 */
export function stringClaims(value: unknown): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [name, claim] of Object.entries(value)) if (typeof claim === 'string') out[name] = claim;
  }
  return out;
}

/**
 * When a browser session ends however often Auth.js renews its cookie: `maxAgeMs` (KEYWARD_SESSION_MAX_AGE) after
 * its sign-in; never (Infinity) for a cookie without a sign-in time (written before Keyward kept one).
 */
export function signInLifetimeEnd(session: Pick<Session, 'authTime'>, maxAgeMs: number): number {
  return session.authTime > 0 ? session.authTime + maxAgeMs : Infinity;
}

/** The sign-in time claims written into session cookies and mobile tokens. */
export function authTimeClaims(epochMs: number): { auth_time: number; auth_ms: number } {
  return { auth_time: Math.floor(epochMs / 1000), auth_ms: epochMs };
}
