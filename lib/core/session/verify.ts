import 'server-only';
import { decode } from '@auth/core/jwt';
import { parseCookie } from 'cookie';
import { unsealData } from 'iron-session';
import { DPOP_ALGORITHMS } from '../dpop/algorithms';
import { DpopError, isThumbprint, requestHtu, type DpopProofs } from '../dpop/proof';
import { KeywardError } from '../errors';
import type { SessionRevocations } from './revocation';
import { SESSION_COOKIE, sessionFromClaims, signInLifetimeEnd, type Session, type SessionClaims } from './session';
import type { CoreRequest } from '../request';
import { currentLocalUser, type LocalUsers } from '../users/file';

/**
 * The longest access token Keyward issues to an app and reads back (Authorization header, revocation). A
 * token carries its user's roles and claims, so a user with many groups gets a long one; 12 KiB leaves room
 * for a DPoP proof and the other headers under Node's 16 KiB header limit. The token endpoint refuses to
 * issue a longer one rather than hand out a token nothing would accept.
 */
export const MAX_ACCESS_TOKEN_LENGTH = 12 * 1024;
const BEARER_HEADER = new RegExp(`^(Bearer|DPoP) ([A-Za-z0-9*_~.-]{20,${MAX_ACCESS_TOKEN_LENGTH}})$`, 'i');

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
   * The one exception is a DPoP-bound token: its proof's `jti` is recorded while decoding (one store write,
   * for DPoP calls only; see `DpopResource`).
   */
  readonly deferred?: { readonly decode: (request: CoreRequest) => Promise<Session | null>; readonly revocations: SessionRevocations };
}

/** Sealed bearer-token payload (issued by the mobile token exchange). */
export interface BearerClaims extends SessionClaims {
  typ: 'keyward.session';
  /** RFC 9449 §6.1 / RFC 7800: the token is bound to the DPoP key with this JWK SHA-256 thumbprint. */
  cnf?: { jkt?: unknown };
  /** RFC 9068 §2.2: the app the token was issued to (null when its authorization request named none). */
  client_id?: string | null;
}

/**
 * The claims of a bearer token the mobile token exchange sealed (lib/core/mobile/tokens.ts), unchecked beyond
 * that; null for anything else (another kind of seal, another secret, tampered or expired).
 */
export async function unsealBearer(token: string, password: { readonly 1: string }): Promise<Partial<BearerClaims> | null> {
  const claims = await unsealData<Partial<BearerClaims>>(token, { password }).catch(() => null);
  return claims?.typ === 'keyward.session' ? claims : null;
}

/**
 * DPoP at the resource (RFC 9449 §7): a token bound to a key (`cnf.jkt`) is accepted only as
 * `Authorization: DPoP <token>` with a proof for this request (method, URL as the public origin sees it, the
 * token's hash) signed with that key, never as Bearer. The proof's `jti` is recorded in the store: for a
 * DPoP call, that write is the one store round trip more than a Bearer call makes (cookie and Bearer calls
 * make none here).
 */
export interface DpopResource {
  readonly proofs: DpopProofs;
  /** The public origin of a request (AUTH_URL or the trusted Host), whose URLs DPoP proofs name. */
  readonly publicOrigin: (request: CoreRequest) => string | null;
}

/** A decoded token: who, and the DPoP key it is bound to (null: not bound; always null for cookies). */
interface Decoded {
  readonly session: Session;
  readonly jkt: string | null;
}

/**
 * Reads the caller's session from the `__Host-keyward.session` cookie or an `Authorization: Bearer` sealed
 * token (`Authorization: DPoP` with a `DPoP` proof for a token bound to a key). Checked inside every handler,
 * every time. Fails closed: anything unreadable, tampered with, expired or incomplete is "no session", which
 * the pipeline turns into 401; a DPoP failure throws 401 `unauthenticated` with its DPoP challenge.
 */
export function createSessionVerifier(
  secrets: SessionSecrets,
  options: {
    revocations?: SessionRevocations;
    now?: () => number;
    dpop?: DpopResource;
    localUsers?: Pick<LocalUsers, 'find'> | null;
    /** KEYWARD_SESSION_MAX_AGE: a browser session ends this long after its sign-in, however often it was renewed. */
    maxSessionAgeMs?: number;
  } = {},
): SessionVerifier {
  const ironPassword = { 1: secrets.sessionSecret };
  const now = options.now ?? Date.now;
  const { revocations, dpop, localUsers } = options;
  const verified = new VerifiedTokens(now);
  const decodeBearer = async (token: string): Promise<Decoded | null> => {
    const hit = verified.get(`b:${token}`);
    if (hit !== undefined) return hit;
    const claims = await unsealBearer(token, ironPassword);
    if (!claims) return null;
    const jkt = claims.cnf === undefined ? null : claims.cnf?.jkt;
    // A `cnf` that is there but unreadable binds to no key anyone holds: refused rather than read as unbound.
    if (jkt !== null && !isThumbprint(jkt)) return null;
    const session = notExpired(sessionFromClaims(claims, 'bearer'), now);
    return verified.remember(`b:${token}`, session && { session, jkt });
  };
  // A local user's roles, claims and name are the users file's (KEYWARD_USERS_FILE) on every call, not the ones
  // sealed at sign-in; a user no longer in the file has no session. Decoded tokens are remembered as they were
  // sealed, so an edit applies within USERS_RECHECK_MS. Without a users file there is nothing to read them from.
  const decodeSession = async (request: CoreRequest): Promise<Session | null> => {
    const session = await decodeToken(request);
    return session && localUsers ? currentLocalUser(session, localUsers) : session;
  };
  const decodeToken = async (request: CoreRequest): Promise<Session | null> => {
    const cookieHeader = request.headers.get('cookie');
    const cookieToken = cookieHeader ? readSessionCookie(cookieHeader) : null;
    const authorization = request.headers.get('authorization');

    if (cookieToken !== null) {
      const hit = verified.get(`c:${cookieToken}`);
      if (hit !== undefined) return hit.session;
      const claims = await decode<SessionClaims>({ token: cookieToken, secret: secrets.authSecret, salt: SESSION_COOKIE }).catch(
        () => null,
      );
      const session = claims ? notExpired(cookieSession(claims, options.maxSessionAgeMs), now) : null;
      return verified.remember(`c:${cookieToken}`, session && { session, jkt: null })?.session ?? null;
    }
    if (authorization !== null) {
      // The scheme is case-insensitive (RFC 9110 §11.1): SDKs send `bearer` as well as `Bearer`.
      const match = BEARER_HEADER.exec(authorization);
      if (!match) return null;
      const token = match[2]!;
      const decoded = await decodeBearer(token);
      if (match[1]!.toLowerCase() === 'bearer') {
        if (decoded?.jkt) throw dpopRefusal('invalid_token', BOUND_AS_BEARER);
        return decoded?.session ?? null;
      }
      if (!decoded) throw dpopRefusal('invalid_token', 'The access token is invalid or has expired.');
      if (decoded.jkt === null) throw dpopRefusal('invalid_token', 'This access token is not bound to a DPoP key: send it as Authorization: Bearer.');
      await checkProof(request, token, decoded.jkt, dpop);
      return decoded.session;
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

const BOUND_AS_BEARER = 'This access token is bound to a DPoP key: send it as Authorization: DPoP with a DPoP proof.';

/**
 * RFC 9449 §7.1: the proof that must come with a bound token, for this request (method and public URL), this
 * token (`ath`) and its key (`jkt`), never seen before (`jti`). No DPoP configured: refused (fail closed).
 */
async function checkProof(request: CoreRequest, token: string, jkt: string, dpop: DpopResource | undefined): Promise<void> {
  if (!dpop) throw dpopRefusal('invalid_token', 'DPoP-bound tokens are not accepted here.');
  try {
    await dpop.proofs.verify(request.headers.get('dpop'), {
      method: request.method,
      url: requestHtu(request, dpop.publicOrigin(request)),
      accessToken: token,
      boundTo: jkt,
    });
  } catch (error) {
    if (error instanceof DpopError) throw dpopRefusal('invalid_dpop_proof', error.message, error);
    throw error;
  }
}

/**
 * A DPoP refusal at a resource: 401 with the DPoP challenge (RFC 9449 §7.1), `algs` naming what a proof may be
 * signed with. Keyward's JSON error (`unauthenticated`) carries the reason.
 */
function dpopRefusal(error: 'invalid_token' | 'invalid_dpop_proof', message: string, cause?: unknown): KeywardError {
  return new KeywardError('unauthenticated', {
    message,
    cause,
    headers: { 'www-authenticate': `DPoP error="${error}", algs="${DPOP_ALGORITHMS.join(' ')}"` },
  });
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
  private readonly entries = new Map<string, { decoded: Decoded; until: number }>();

  constructor(private readonly now: () => number) {}

  /** The remembered token, or undefined when it must be decoded. A DPoP proof is never remembered. */
  get(token: string): Decoded | undefined {
    const entry = this.entries.get(token);
    if (!entry) return undefined;
    if (entry.until <= this.now()) {
      this.entries.delete(token);
      return undefined;
    }
    return entry.decoded;
  }

  remember(token: string, decoded: Decoded | null): Decoded | null {
    if (!decoded) return null;
    if (this.entries.size >= VerifiedTokens.MAX_ENTRIES) {
      // Maps iterate in insertion order: drop the oldest entry.
      this.entries.delete(this.entries.keys().next().value!);
    }
    this.entries.set(token, { decoded, until: Math.min(decoded.session.expiresAt, this.now() + VerifiedTokens.MAX_AGE_MS) });
    return decoded;
  }
}

/**
 * A cookie's session, ending `maxSessionAgeMs` after its sign-in at the latest. Auth.js renews the cookie's `exp`
 * on every session read, which alone would let whoever holds a copy keep it alive for good, past the revocation
 * marks and provider-session links that are kept as long as a session can live. A cookie without a sign-in time
 * (written before Keyward kept one) ends at its `exp`; its next renewal gives it one (lib/next/auth.ts).
 */
function cookieSession(claims: SessionClaims, maxSessionAgeMs: number | undefined): Session | null {
  const session = sessionFromClaims(claims, 'cookie');
  if (!session || maxSessionAgeMs === undefined) return session;
  return { ...session, expiresAt: Math.min(session.expiresAt, signInLifetimeEnd(session, maxSessionAgeMs)) };
}

function notExpired(session: Session | null, now: () => number): Session | null {
  return session && session.expiresAt > now() ? session : null;
}

/** Auth.js splits large cookies into `name.0`, `name.1`, …; join them back in order. */
export function readSessionCookie(header: string): string | null {
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
