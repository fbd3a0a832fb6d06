import 'server-only';
import { hkdfSync } from 'node:crypto';

/**
 * A 32-byte key of its own for one use of KEYWARD_SESSION_SECRET (HKDF-SHA256, RFC 5869, salt `keyward`), named
 * by `info`: an HMAC made with it can never double as anything else the secret signs or seals. Every instance
 * derives the same key, so what one issues another checks without a store read, and a rotated secret ends what
 * was issued with the old one.
 */
export function derivedKey(secret: string, info: string): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, 'keyward', info, 32));
}
