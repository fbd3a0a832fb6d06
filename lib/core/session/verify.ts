import { decode } from '@auth/core/jwt';
import { parseCookie } from 'cookie';
import { unsealData } from 'iron-session';
import type { SessionRevocations } from './revocation';
import { SESSION_COOKIE, sessionFromClaims, type Session, type SessionClaims } from './session';

export interface SessionSecrets {
  /** AUTH_SECRET: Auth.js encrypts the session cookie (JWE, A256CBC-HS512) with a key derived from it. */
  readonly authSecret: string;
  /** KEYWARD_SESSION_SECRET: iron-session seals bearer tokens for cookie-less clients with it. */
  readonly sessionSecret: string;
}

export type SessionVerifier = (request: Request) => Promise<Session | null>;

/** Sealed bearer-token payload (issued by the mobile token exchange). */
export interface BearerClaims extends SessionClaims {
  typ: 'keyward.session';
}

/**
 * Reads the caller's session from the `__Host-keyward.session` cookie or an `Authorization: Bearer` sealed
 * token. Checked inside every handler, every time. Fails closed: anything unreadable, tampered with,
 * expired or incomplete is "no session", which the pipeline turns into 401.
 */
export function createSessionVerifier(
  secrets: SessionSecrets,
  options: { revocations?: SessionRevocations; now?: () => number } = {},
): SessionVerifier {
  const ironPassword = { 1: secrets.sessionSecret };
  const now = options.now ?? Date.now;
  const { revocations } = options;
  const decodeSession = async (request: Request): Promise<Session | null> => {
    const cookieHeader = request.headers.get('cookie');
    const cookieToken = cookieHeader ? readSessionCookie(cookieHeader) : null;
    const authorization = request.headers.get('authorization');

    if (cookieToken !== null) {
      const claims = await decode<SessionClaims>({ token: cookieToken, secret: secrets.authSecret, salt: SESSION_COOKIE }).catch(
        () => null,
      );
      return claims ? notExpired(sessionFromClaims(claims, 'cookie'), now) : null;
    }
    if (authorization !== null) {
      const match = /^Bearer ([A-Za-z0-9*_~.-]{20,4096})$/.exec(authorization);
      if (!match) return null;
      const claims = await unsealData<Partial<BearerClaims>>(match[1]!, { password: ironPassword }).catch(() => null);
      if (!claims || claims.typ !== 'keyward.session') return null;
      return notExpired(sessionFromClaims(claims, 'bearer'), now);
    }
    return null;
  };
  return async (request) => {
    const session = await decodeSession(request);
    // Revoked sessions are refused; a store failure throws store_unavailable (503), never "not revoked".
    if (session && revocations && (await revocations.isRevoked(session))) return null;
    return session;
  };
}

function notExpired(session: Session | null, now: () => number): Session | null {
  return session && session.expiresAt > now() ? session : null;
}

/** Auth.js splits large cookies into `name.0`, `name.1`, …; join them back in order. */
function readSessionCookie(header: string): string | null {
  const cookies = parseCookie(header);
  const whole = cookies[SESSION_COOKIE];
  if (whole) return whole;
  let joined = '';
  for (let i = 0; ; i++) {
    const chunk = cookies[`${SESSION_COOKIE}.${i}`];
    if (chunk === undefined) break;
    joined += chunk;
  }
  return joined || null;
}
