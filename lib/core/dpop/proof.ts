import 'server-only';
import { createHash } from 'node:crypto';
import { calculateJwkThumbprint, decodeProtectedHeader, EmbeddedJWK, jwtVerify, type JWTPayload } from 'jose';
import type { CoreRequest } from '../request';
import { guard } from '../store/guard';
import type { Store } from '../../store/types';
import { DPOP_ALGORITHMS } from './algorithms';
import type { DpopNonces } from './nonce';

/**
 * DPoP proofs (RFC 9449, "OAuth 2.0 Demonstrating Proof of Possession"): a native app holds a private key and
 * signs a short JWT for each request, naming the method and URL and, at a resource, the hash of the access
 * token. Tokens issued with a proof are bound to the key's thumbprint (`cnf.jkt`), so a copied token is
 * useless without the key. Verified with jose (panva/jose), the checks of RFC 9449 §4.3 in its order.
 */

/** How far a proof's `iat` may be from the server's clock, either way (seconds): clock skew and transit. */
export const IAT_LEEWAY_S = 60;
/** How far apart instances' clocks may be while a replay is still refused on every one of them (seconds). */
export const MAX_CLOCK_SKEW_S = 300;
/**
 * How long a proof's `jti` is remembered: longer than any instance accepts the proof (iat ± the leeway, on each
 * instance's own clock, so the time the proof is good for somewhere spans the leeway twice plus their skew).
 */
export const JTI_TTL_MS = (2 * IAT_LEEWAY_S + MAX_CLOCK_SKEW_S + 10) * 1000;

const MAX_PROOF_CHARS = 8192;
/** A compact JWS: three base64url parts. Two `DPoP` headers arrive joined by ", " and fail here (§4.3 check 1). */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
/** Private key members (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2) and the symmetric key (§6.4.1): never in a proof. */
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;
/** RFC 9449 §4.2: "at least 96 bits of pseudorandom data" is 16 base64url characters; a UUID is 36. */
const JTI = /^[\x21-\x7e]{16,256}$/;
const THUMBPRINT = /^[A-Za-z0-9_-]{43}$/;

export type DpopErrorCode = 'invalid_dpop_proof' | 'use_dpop_nonce';

/** A refused proof. Messages are fixed strings: nothing from the proof (or the token) is echoed. */
export class DpopError extends Error {
  override readonly name = 'DpopError';
  constructor(
    readonly code: DpopErrorCode,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

/** What the proof must match: the request it came with, and at a resource the token it accompanies. */
export interface ProofExpectations {
  /** `htm`: the request's method. */
  readonly method: string;
  /** `htu`: the URL the client called, as the public origin sees it (see `requestHtu`); null: unknown, refused. */
  readonly url: string | null;
  /** At a resource: the access token sent with the proof (`ath` must be its SHA-256). */
  readonly accessToken?: string;
  /** The thumbprint (`cnf.jkt`) of the key the token is bound to: the proof must be signed with that key. */
  readonly boundTo?: string;
  /** Require a nonce this server handed out (the token endpoint); absent: a nonce is not asked for. */
  readonly nonces?: DpopNonces;
}

/** A proof that passed every check. */
export interface VerifiedProof {
  /** The JWK SHA-256 thumbprint of the proof's key (RFC 7638), what tokens are bound to. */
  readonly jkt: string;
}

export class DpopProofs {
  constructor(
    private readonly store: Store,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Verifies the `DPoP` header value against what the request is, then records its `jti` (one store write:
   * a replayed proof is refused, on every instance). Throws DpopError, or store_unavailable (fail closed).
   */
  async verify(header: string | null, expected: ProofExpectations): Promise<VerifiedProof> {
    const { payload, jkt } = await this.verifySignature(header);
    checkClaims(payload, expected, Math.floor(this.now() / 1000));
    if (expected.boundTo !== undefined && jkt !== expected.boundTo) {
      throw new DpopError(
        'invalid_dpop_proof',
        'The DPoP proof is signed with another key than the one the token is bound to.',
      );
    }
    if (expected.nonces && !(typeof payload.nonce === 'string' && expected.nonces.isValid(payload.nonce))) {
      throw new DpopError('use_dpop_nonce', 'Sign the DPoP proof again with the nonce in the DPoP-Nonce header.');
    }
    // Last, so that only a proof good in every other way uses up its jti (and costs a store write).
    const first = await guard(() => this.store.setIfAbsent(replayKey(jkt, payload.jti as string), '1', JTI_TTL_MS));
    if (!first)
      throw new DpopError('invalid_dpop_proof', 'This DPoP proof was already used: sign a new one for each request.');
    return { jkt };
  }

  /** §4.3 checks 1–7: one well-formed JWT, typ dpop+jwt, an allowed asymmetric alg, a public jwk that verifies it. */
  private async verifySignature(header: string | null): Promise<{ payload: JWTPayload; jkt: string }> {
    if (header === null || header.length > MAX_PROOF_CHARS || !COMPACT_JWS.test(header)) {
      throw new DpopError('invalid_dpop_proof', 'Send exactly one DPoP header holding one DPoP proof JWT.');
    }
    let protectedHeader: ReturnType<typeof decodeProtectedHeader>;
    try {
      protectedHeader = decodeProtectedHeader(header);
    } catch (cause) {
      throw new DpopError('invalid_dpop_proof', 'The DPoP proof is not a well-formed JWT.', { cause });
    }
    if (protectedHeader.typ !== 'dpop+jwt') {
      throw new DpopError('invalid_dpop_proof', 'The DPoP proof must have the header typ "dpop+jwt".');
    }
    if (!(DPOP_ALGORITHMS as readonly unknown[]).includes(protectedHeader.alg)) {
      throw new DpopError(
        'invalid_dpop_proof',
        `The DPoP proof must be signed with one of ${DPOP_ALGORITHMS.join(', ')}.`,
      );
    }
    const jwk = protectedHeader.jwk;
    if (!jwk || typeof jwk !== 'object' || Array.isArray(jwk)) {
      throw new DpopError('invalid_dpop_proof', 'The DPoP proof must carry its public key in the jwk header.');
    }
    if (PRIVATE_JWK_MEMBERS.some((member) => Object.hasOwn(jwk, member))) {
      throw new DpopError('invalid_dpop_proof', 'The jwk header of the DPoP proof must hold a public key only.');
    }
    // An RSA key with a huge public exponent or modulus costs ~100× the CPU to verify, before anything is
    // authenticated: the usual exponent (65537) and at most 4096 bits (RFC 8017 allows more; nobody needs it).
    if (jwk.kty === 'RSA' && (jwk.e !== 'AQAB' || typeof jwk.n !== 'string' || Buffer.from(jwk.n, 'base64url').length > 512)) {
      throw new DpopError('invalid_dpop_proof', 'An RSA key in a DPoP proof must use the exponent 65537 and at most 4096 bits.');
    }
    let payload: JWTPayload;
    try {
      // EmbeddedJWK also refuses anything that does not import as a public key (an `oct` key, a private one).
      ({ payload } = await jwtVerify(header, EmbeddedJWK, {
        typ: 'dpop+jwt',
        algorithms: [...DPOP_ALGORITHMS],
        currentDate: new Date(this.now()),
      }));
    } catch (cause) {
      throw new DpopError('invalid_dpop_proof', 'The DPoP proof signature does not verify with its jwk.', { cause });
    }
    return { payload, jkt: await calculateJwkThumbprint(jwk, 'sha256') };
  }
}

/** §4.3 checks 8–12 (but the key binding and the nonce): claims present and matching the request. */
function checkClaims(payload: JWTPayload, expected: ProofExpectations, nowSeconds: number): void {
  if (typeof payload.jti !== 'string' || !JTI.test(payload.jti)) {
    throw new DpopError(
      'invalid_dpop_proof',
      'The DPoP proof needs a jti of 16 to 256 characters, unique for each proof.',
    );
  }
  if (typeof payload.htm !== 'string' || payload.htm !== expected.method.toUpperCase()) {
    throw new DpopError('invalid_dpop_proof', "The DPoP proof's htm is not this request's method.");
  }
  const htu = typeof payload.htu === 'string' ? normalizeHtu(payload.htu) : null;
  const target = expected.url === null ? null : normalizeHtu(expected.url);
  if (htu === null || target === null || htu !== target) {
    throw new DpopError('invalid_dpop_proof', "The DPoP proof's htu is not this request's URL.");
  }
  if (
    typeof payload.iat !== 'number' ||
    !Number.isFinite(payload.iat) ||
    Math.abs(nowSeconds - payload.iat) > IAT_LEEWAY_S
  ) {
    throw new DpopError(
      'invalid_dpop_proof',
      `The DPoP proof's iat must be within ${IAT_LEEWAY_S} seconds of the server's clock.`,
    );
  }
  if (expected.accessToken !== undefined && payload.ath !== accessTokenHash(expected.accessToken)) {
    throw new DpopError('invalid_dpop_proof', "The DPoP proof's ath is not the hash of the access token sent with it.");
  }
}

/** `ath` (RFC 9449 §4.2): base64url of the SHA-256 of the access token's ASCII bytes. */
export function accessTokenHash(accessToken: string): string {
  return createHash('sha256').update(accessToken, 'ascii').digest('base64url');
}

/**
 * An `htu` in the form compared (RFC 9449 §4.3 check 9: without query and fragment, after RFC 3986 §6.2.2 and
 * §6.2.3 normalisation): the WHATWG URL parser already lower-cases scheme and host, drops a default port,
 * resolves dot segments and turns an empty path into "/"; here percent-escapes are upper-cased and escaped
 * unreserved characters decoded. Only http(s) URLs without user info; anything else is null (refused).
 */
export function normalizeHtu(value: string): string | null {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return null;
  }
  if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.username !== '' || url.password !== '')
    return null;
  const path = url.pathname.replace(/%[0-9A-Fa-f]{2}/g, (escape) => {
    const char = String.fromCharCode(Number.parseInt(escape.slice(1), 16));
    return /^[A-Za-z0-9._~-]$/.test(char) ? char : escape.toUpperCase();
  });
  return `${url.origin}${path}`;
}

/**
 * The URL a request was sent to, as the client named it: the public origin (AUTH_URL, or the trusted Host;
 * never `request.url`'s, which inside Next is the internal http://localhost:<port>) and the request's path.
 */
export function requestHtu(request: Pick<CoreRequest, 'url'>, publicOrigin: string | null): string | null {
  if (publicOrigin === null) return null;
  return `${publicOrigin}${new URL(request.url).pathname}`;
}

/** Whether `value` has the form of a JWK SHA-256 thumbprint (a `cnf.jkt`). */
export function isThumbprint(value: unknown): value is string {
  return typeof value === 'string' && THUMBPRINT.test(value);
}

/** Where a proof's jti is remembered: per key, hashed (a store dump shows no proof data). */
function replayKey(jkt: string, jti: string): string {
  return `dpop:jti:${createHash('sha256').update(`${jkt}\n${jti}`).digest('base64url')}`;
}
