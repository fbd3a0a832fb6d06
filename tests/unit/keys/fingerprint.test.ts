import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { keyFingerprints, legacyFingerprint, processFingerprints } from '../../../lib/core/keys/fingerprint';
import { randomSecret } from '../../fixtures/secrets';

/**
 * Issue 11: a key's fingerprint was the bare SHA-256 prefix of the key, shown next to its last 4
 * characters, so anyone who saw it could confirm a guessed key offline. It is now an HMAC under a key
 * derived from the server secret.
 */
const sha256Prefix = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex').slice(0, 12);

describe('keyFingerprints', () => {
  it('is 12 hex digits, stable for one server secret, and not the unkeyed SHA-256 a guesser could compute', () => {
    const server = randomSecret('server');
    const key = randomSecret('key');
    const print = keyFingerprints(server).of(key);
    expect(print).toMatch(/^[0-9a-f]{12}$/);
    expect(keyFingerprints(server).of(key)).toBe(print);
    expect(print).not.toBe(sha256Prefix(key));
    expect(key).not.toContain(print);
    expect(keyFingerprints(server).of(randomSecret('key'))).not.toBe(print);
  });

  it('another server secret gives another fingerprint (rotating KEYWARD_SESSION_SECRET changes them all)', () => {
    const key = randomSecret('key');
    expect(keyFingerprints(randomSecret('a')).of(key)).not.toBe(keyFingerprints(randomSecret('b')).of(key));
  });

  it('matches: the current keyed form and the unkeyed form of records written before, nothing else', () => {
    const fingerprints = keyFingerprints(randomSecret('server'));
    const key = randomSecret('key');
    expect(fingerprints.matches(key, fingerprints.of(key))).toBe(true);
    expect(fingerprints.matches(key, legacyFingerprint(key))).toBe(true);
    expect(legacyFingerprint(key)).toBe(sha256Prefix(key));
    expect(fingerprints.matches(key, fingerprints.of(randomSecret('other')))).toBe(false);
    expect(fingerprints.matches(key, keyFingerprints(randomSecret('old-server')).of(key))).toBe(false);
  });

  it('processFingerprints (registries built without a runtime) is keyed too, and the same within the process', () => {
    const key = randomSecret('key');
    expect(processFingerprints().of(key)).toBe(processFingerprints().of(key));
    expect(processFingerprints().of(key)).not.toBe(sha256Prefix(key));
  });
});
