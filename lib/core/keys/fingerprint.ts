import { createHash, createHmac, hkdfSync, randomBytes } from 'node:crypto';

/**
 * Key fingerprints: how Keyward names a key without showing it (admin lists, the audit trail, user keys,
 * revocation by fingerprint). 12 hex digits of HMAC-SHA256 over the key, with a key derived (HKDF-SHA256,
 * RFC 5869) from KEYWARD_SESSION_SECRET and a fixed info string. An unkeyed hash next to the last 4
 * characters would let anyone who sees it confirm a guessed key offline; a keyed one needs the server secret.
 *
 * Rotating KEYWARD_SESSION_SECRET changes every fingerprint (there is no previous secret to derive the old
 * ones from): records already written keep the value they were written with, and state kept by fingerprint
 * is matched against the current key only (see the README's security model for what that means).
 * Fingerprints written before keyed fingerprints existed (unkeyed SHA-256) are still recognised, so stored
 * key-ring state from then keeps applying; nothing rewrites them.
 */
export interface KeyFingerprints {
  /** The fingerprint of a key value, as shown and stored from now on. */
  of(value: string): string;
  /** Whether a stored fingerprint names this value: the current form, or the unkeyed one of older records. */
  matches(value: string, stored: string): boolean;
}

const INFO = 'keyward key fingerprint v1';

export function keyFingerprints(serverSecret: string): KeyFingerprints {
  const key = Buffer.from(hkdfSync('sha256', Buffer.from(serverSecret, 'utf8'), Buffer.alloc(0), INFO, 32));
  const of = (value: string) => createHmac('sha256', key).update(value, 'utf8').digest('hex').slice(0, 12);
  return { of, matches: (value, stored) => stored === of(value) || stored === legacyFingerprint(value) };
}

/** The unkeyed form used before (SHA-256 prefix): only to recognise records written with it. */
export function legacyFingerprint(value: string): string {
  return createHash('sha256').update(value, 'utf8').digest('hex').slice(0, 12);
}

let processWide: KeyFingerprints | undefined;

/**
 * For a registry or key store built on its own (tests, tools): keyed with a random key, so its fingerprints
 * mean something only inside this process. The runtime always passes the one derived from the server secret.
 */
export function processFingerprints(): KeyFingerprints {
  processWide ??= keyFingerprints(randomBytes(32).toString('base64url'));
  return processWide;
}
