import 'server-only';
import { decode } from '@auth/core/jwt';
import { parseCookie } from 'cookie';
import { unsealData } from 'iron-session';
import type { SessionRevocations } from './revocation';
import { SESSION_COOKIE, sessionFromClaims, type Session, type SessionClaims } from './session';
import type { CoreRequest } from '../request';

export interface SessionSecrets {
  /** AUTH_SECRET: Auth.js encrypts the session cookie (JWE, A256CBC-HS512) with a key derived from it. */
  readonly authSecret: string;
  /** KEYWARD_SESSION_SECRET: iron-session seals bearer tokens for cookie-less clients with it. */
  readonly sessionSecret: string;
}

export interface SessionVerifier {
  (request: CoreRequest): Promise<Session | null>;
  /**
   * For a caller that reads revocation together with its other store reads (the proxy pipeline's one round
   * trip per call): the session decoded without any store read, and the revocations it must then be checked
   * against before anything else is done for it. Absent: the verifier checks revocation itself (or has none).
   */
  readonly deferred?: { readonly decode: (request: CoreRequest) => Promise<Session | null>; readonly revocations: SessionRevocations };
}

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
  const verified = new VerifiedTokens(now);
  const decodeSession = async (request: CoreRequest): Promise<Session | null> => {
    const cookieHeader = request.headers.get('cookie');
    const cookieToken = cookieHeader ? readSessionCookie(cookieHeader) : null;
    const authorization = request.headers.get('authorization');

    if (cookieToken !== null) {
      const hit = verified.get(`c:${cookieToken}`);
      if (hit !== undefined) return hit;
      const claims = await decode<SessionClaims>({ token: cookieToken, secret: secrets.authSecret, salt: SESSION_COOKIE }).catch(
        () => null,
      );
      return verified.remember(`c:${cookieToken}`, claims ? notExpired(sessionFromClaims(claims, 'cookie'), now) : null);
    }
    if (authorization !== null) {
      // The scheme is case-insensitive (RFC 9110 §11.1): SDKs send `bearer` as well as `Bearer`.
      const match = /^Bearer ([A-Za-z0-9*_~.-]{20,4096})$/i.exec(authorization);
      if (!match) return null;
      const hit = verified.get(`b:${match[1]}`);
      if (hit !== undefined) return hit;
      const claims = await unsealData<Partial<BearerClaims>>(match[1]!, { password: ironPassword }).catch(() => null);
      if (!claims || claims.typ !== 'keyward.session') return null;
      return verified.remember(`b:${match[1]}`, notExpired(sessionFromClaims(claims, 'bearer'), now));
    }
    return null;
  };
  const verify = async (request: CoreRequest): Promise<Session | null> => {
    const session = await decodeSession(request);
    // Revoked sessions are refused; a store failure throws store_unavailable (503), never "not revoked".
    if (session && revocations && (await revocations.isRevoked(session))) return null;
    return session;
  };
  return revocations ? Object.assign(verify, { deferred: { decode: decodeSession, revocations } }) : verify;
}

/**
 * Decoding a session (HKDF key derivation and JWE decryption through WebCrypto) costs ~0.5–0.9 ms of CPU, a
 * quarter of a proxied request (see README, Benchmark). Tokens that verified are remembered by their exact
 * value, for at most 60 s and never past the session's expiry, so a repeat costs a Map lookup. Only successes
 * are kept; revocation is still read from the store on every request, so caching never delays a sign-out.
 */
class VerifiedTokens {
  private static readonly MAX_ENTRIES = 10_000;
  private static readonly MAX_AGE_MS = 60_000;
  private readonly entries = new Map<string, { session: Session; until: number }>();

  constructor(private readonly now: () => number) {}

  /** The remembered session, or undefined when this token must be decoded. */
  get(token: string): Session | undefined {
    const entry = this.entries.get(token);
    if (!entry) return undefined;
    if (entry.until <= this.now()) {
      this.entries.delete(token);
      return undefined;
    }
    return entry.session;
  }

  remember(token: string, session: Session | null): Session | null {
    if (!session) return null;
    if (this.entries.size >= VerifiedTokens.MAX_ENTRIES) {
      // Maps iterate in insertion order: drop the oldest entry.
      this.entries.delete(this.entries.keys().next().value!);
    }
    this.entries.set(token, { session, until: Math.min(session.expiresAt, this.now() + VerifiedTokens.MAX_AGE_MS) });
    return session;
  }
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
