import 'server-only';
import { createHash, createHmac } from 'node:crypto';
import type { AuthConfig } from '../config/schema';
import type { KeyFingerprints } from '../keys/fingerprint';
import type { ResolvedCredential } from '../upstream/registry';
import type { RequestSigner, SignedBody } from './sign';

type HmacAuth = Extract<AuthConfig, { type: 'hmac' }>;

const EMPTY = Buffer.alloc(0);

/**
 * The string an `hmac` signature covers (README "Request signing"; an in-house verifier rebuilds it): four lines
 * joined by "\n", no trailing newline —
 *   the signing time (Unix seconds, as in the timestamp header),
 *   the method in upper case,
 *   the path and query exactly as on the request line (`/v1/items?page=2`; no "?" without a query),
 *   the lowercase hex SHA-256 of the body bytes as sent (of no bytes when there is no body).
 */
export function hmacCanonicalString(
  timestamp: string,
  method: string,
  pathAndQuery: string,
  body: Buffer | null,
): string {
  const bodyHash = createHash('sha256')
    .update(body ?? EMPTY)
    .digest('hex');
  return `${timestamp}\n${method}\n${pathAndQuery}\n${bodyHash}`;
}

/** The credential of an `hmac` upstream for one key: signs each call with node:crypto's HMAC (RFC 2104). */
export function hmacCredential(
  auth: HmacAuth,
  secret: string,
  fingerprints: KeyFingerprints,
  now: () => number = Date.now,
): ResolvedCredential {
  return {
    type: 'hmac',
    signer: hmacSigner(auth, secret, now),
    secrets: [secret],
    fingerprint: fingerprints.of(secret),
  };
}

function hmacSigner(auth: HmacAuth, secret: string, now: () => number): RequestSigner {
  return {
    // The body's hash is part of the signed string: a streamed body is read whole first.
    streamedBody: 'buffer',
    async sign({ method, url, headers, body }) {
      const timestamp = String(Math.floor(now() / 1000));
      const canonical = hmacCanonicalString(timestamp, method, url.pathname + url.search, wholeBody(body));
      const signature = createHmac(auth.algorithm, secret).update(canonical, 'utf8').digest(auth.encoding);
      headers[auth.timestampHeader] = timestamp;
      headers[auth.header] = `${auth.prefix ?? ''}${signature}`;
      if (auth.keyId !== undefined) headers[auth.keyIdHeader] = auth.keyId;
    },
  };
}

function wholeBody(body: SignedBody): Buffer | null {
  if (body === 'streamed') throw new TypeError('an hmac signature covers the whole body: it must be read first');
  return body;
}
