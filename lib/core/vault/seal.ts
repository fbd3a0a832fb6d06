import { sealData, unsealData } from 'iron-session';
import { KeywardError } from '../errors';

/**
 * Authenticated encryption for per-user secrets at rest (BYOK keys, OAuth tokens), with iron-session
 * (AES-256-CBC + HMAC-SHA-256, keys derived from the password). `KEYWARD_VAULT_SECRET` seals;
 * `KEYWARD_VAULT_SECRET_PREVIOUS` still opens seals made before a rotation, so the secret can be rotated
 * without losing stored keys (they are re-sealed with the new secret when next written).
 */
export class Vault {
  private readonly passwords: Record<number, string>;

  constructor(current: string, previous?: string) {
    // iron-session seals with the highest-numbered password and opens with any of them.
    this.passwords = previous ? { 1: previous, 2: current } : { 1: current };
  }

  seal(value: unknown): Promise<string> {
    return sealData(value, { password: this.passwords, ttl: 0 });
  }

  async open<T>(sealed: string): Promise<T> {
    const value = await unsealData<T>(sealed, { password: this.passwords, ttl: 0 });
    // unsealData answers {} for a seal it cannot open (tampered, or sealed with an unknown secret).
    if (value === null || typeof value !== 'object' || Object.keys(value).length === 0) {
      throw new KeywardError('credential_unavailable', { message: 'A stored credential could not be opened.' });
    }
    return value;
  }
}
