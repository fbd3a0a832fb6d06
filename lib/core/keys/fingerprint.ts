import { createHash, createHmac, hkdfSync, randomBytes, scrypt } from 'node:crypto';

/**
 * Key fingerprints: how Keyward names a key without showing it (admin lists, the audit trail, user keys,
 * revocation by fingerprint). 12 hex digits of HMAC-SHA256 over the key, with a key derived (HKDF-SHA256,
 * RFC 5869) from KEYWARD_SESSION_SECRET and a fixed info string. An unkeyed hash next to the last 4
 * characters would let anyone who sees it confirm a guessed key offline; a keyed one needs the server secret.
 *
 * Rotating KEYWARD_SESSION_SECRET changes every fingerprint (there is no previous secret to derive the old
 * ones from): records already written keep the value they were written with. Key-ring state therefore does
 * not depend on fingerprints alone: each stored version also carries a verifier (`keyVerifier`, keyed by a
 * random salt kept in the store, not by any server secret), so a revoked or retired key stays so after any
 * server secret is rotated. Fingerprints written before keyed fingerprints existed (unkeyed SHA-256) are
 * still recognised.
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

/**
 * A key's verifier: how a key ring recognises a value whatever the server secrets are now. scrypt (RFC 7914;
 * N=2^14, r=8, p=1, 32 bytes, full hex) with the ring's random salt, which is kept in the store next to the
 * verifiers: no server secret is involved, so rotating one changes nothing. It is slow on purpose: someone who
 * can read the store could otherwise test guesses of a weak key (a basic-auth password) quickly. Never shown.
 */
export function keyVerifier(value: string, salt: string): Promise<string> {
  return new Promise((resolve, reject) => {
    scrypt(Buffer.from(value, 'utf8'), Buffer.from(salt, 'utf8'), 32, { N: 16_384, r: 8, p: 1 }, (error, derived) =>
      error ? reject(error) : resolve(derived.toString('hex')),
    );
  });
}

/** A fresh salt for a key ring's verifiers (32 random bytes). */
export function newVerifierSalt(): string {
  return randomBytes(32).toString('base64url');
}
