import 'server-only';
import { createHash } from 'node:crypto';
import { sealData, unsealData } from 'iron-session';
import { KeywardError } from '../errors';

/**
 * Authenticated encryption for per-user secrets at rest (BYOK keys, OAuth tokens), with iron-session
 * (AES-256-CBC + HMAC-SHA-256, keys derived from the password). `KEYWARD_VAULT_SECRET` seals;
 * `KEYWARD_VAULT_SECRET_PREVIOUS` still opens seals made before a rotation.
 *
 * iron-session writes the password's id into every seal. The id is derived from the secret itself (not its
 * position, which changes when a rotation ends), so a seal stays openable by whichever setting still holds
 * its secret. Stale seals are re-sealed with the current secret when read (see `isCurrent`).
 */
export class Vault {
  private readonly currentId: string;
  private readonly sealPasswords: Record<string, string>;
  private readonly openPasswords: Record<string, string>;

  constructor(current: string, previous?: string) {
    this.currentId = passwordId(current);
    this.sealPasswords = { [this.currentId]: current };
    this.openPasswords = previous ? { [passwordId(previous)]: previous, [this.currentId]: current } : { ...this.sealPasswords };
  }

  seal(value: unknown): Promise<string> {
    return sealData(value, { password: this.sealPasswords, ttl: 0 });
  }

  async open<T>(sealed: string): Promise<T> {
    const value = await unsealData<T>(sealed, { password: this.openPasswords, ttl: 0 });
    // unsealData answers {} for a seal it cannot open (tampered, or sealed with an unknown secret).
    if (value === null || typeof value !== 'object' || Object.keys(value).length === 0) {
      throw new KeywardError('credential_unavailable', { message: 'A stored credential could not be opened.' });
    }
    return value;
  }

  /**
   * Seals a value for the store entry it is written to (`ukey:<upstream>:<user>`, `oauth:<provider>:<user>`):
   * the entry's name is sealed with it, so a seal copied to another entry (another user's, another upstream's)
   * by someone who can write the store but does not hold the vault secret does not open there (`openFor`).
   */
  sealFor(entry: string, value: object): Promise<string> {
    return this.seal({ ...value, [BOUND_TO]: entry });
  }

  /**
   * Opens a seal made by `sealFor(entry)`, whose `secretField` holds the entry's secret as a string. A seal made
   * for another entry, or without that field (another kind of seal of this vault, copied here by someone who can
   * write the store), is refused as one that does not open (503 `credential_unavailable`). A seal from before
   * seals were bound to their entry (none) opens, as does one made with an older secret: `fresh` is false for
   * both, and the caller seals the value again with `sealFor`.
   */
  async openFor<T extends object>(entry: string, sealed: string, secretField: keyof T & string): Promise<{ value: T; fresh: boolean }> {
    const { [BOUND_TO]: bound, ...value } = await this.open<T & { [BOUND_TO]?: unknown }>(sealed);
    if ((bound !== undefined && bound !== entry) || typeof (value as Record<string, unknown>)[secretField] !== 'string') {
      throw new KeywardError('credential_unavailable', { message: 'A stored credential could not be opened.' });
    }
    return { value: value as unknown as T, fresh: bound !== undefined && this.isCurrent(sealed) };
  }

  /** False for a seal made with an older secret: re-seal it so the old secret can be retired. */
  isCurrent(sealed: string): boolean {
    return sealed.split('*')[1] === this.currentId;
  }
}

/** The field `sealFor` seals the entry's name in (no sealed value has a field of that name). */
const BOUND_TO = 'boundTo';

/** A stable numeric id for a secret (iron-session wants numeric ids): 48 bits of its SHA-256. */
function passwordId(secret: string): string {
  return String(parseInt(createHash('sha256').update(`keyward-vault:${secret}`, 'utf8').digest('hex').slice(0, 12), 16));
}
