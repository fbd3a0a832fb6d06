import { describe, expect, it } from 'vitest';
import { keyVerifier, newVerifierSalt } from '../../../lib/core/keys/fingerprint';

/** Key verifiers: how a key ring names a value independently of every server secret (scrypt with the ring's salt). */
describe('keyVerifier', () => {
  it('is the full scrypt output in hex, the same for the same value and salt, different for another value or salt', async () => {
    const salt = newVerifierSalt();
    const one = await keyVerifier('sk-test-value-one', salt);
    expect(one).toMatch(/^[0-9a-f]{64}$/);
    expect(await keyVerifier('sk-test-value-one', salt)).toBe(one);
    expect(await keyVerifier('sk-test-value-two', salt)).not.toBe(one);
    expect(await keyVerifier('sk-test-value-one', newVerifierSalt())).not.toBe(one);
  });

  it('salts are 32 random bytes (base64url), never twice the same', () => {
    const salts = new Set(Array.from({ length: 50 }, () => newVerifierSalt()));
    expect(salts.size).toBe(50);
    for (const salt of salts) expect(Buffer.from(salt, 'base64url')).toHaveLength(32);
  });
});
