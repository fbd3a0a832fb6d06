import 'server-only';
import type { Logger } from 'pino';
import { KeywardError } from '../errors';
import { guard } from '../store/guard';
import { processFingerprints, type KeyFingerprints } from '../keys/fingerprint';
import type { Vault } from '../vault/seal';
import type { Store } from '../../store/types';
import { suspensionKey } from '../detect/marks';
import { OtherOwnerWarnings, ownerStamp, ownership, type Owner } from '../users/owner';

/** What GET /api/keys/<upstream> shows: never the key, only enough to recognise it. */
export interface UserKeyInfo {
  readonly upstream: string;
  readonly fingerprint: string;
  readonly last4: string;
  readonly createdAt: string;
  readonly lastUsedAt: string | null;
}

interface StoredUserKey {
  sealed: string;
  fingerprint: string;
  last4: string;
  createdAt: number;
  /**
   * A local user's password version when they stored it (users/owner.ts): a key stamped with another one is no
   * key for the name's next owner. Absent for other users, and in keys stored before keys were stamped.
   */
  passwordVersion?: string;
}

const KEY_FORMAT = /^[\x21-\x7e]{8,4096}$/;
const TOUCH_EVERY_MS = 60_000;
/**
 * How long a key's "last used" time is kept after its last use: a key replaced or deleted leaves no record
 * behind for good (each new key is a new record, so a loop of key changes could otherwise pile them up).
 */
const LAST_USED_TTL_MS = 400 * 86_400_000;
/** Keys whose use this process recorded in the last minute; past this many the memo starts over (bounded memory). */
const TOUCHED_MAX = 10_000;

/**
 * Bring-your-own-key: each user's key for an upstream, sealed by the vault and stored write-only. The plain
 * key is only ever returned to the proxy pipeline, for that user's own calls.
 */
export class UserKeys {
  /** When this process last recorded each key's use (`touch`). */
  private readonly touched = new Map<string, number>();
  private readonly otherOwners: OtherOwnerWarnings;

  constructor(
    private readonly store: Store,
    private readonly vault: Vault,
    private readonly now: () => number = Date.now,
    /** The deployment's keyed fingerprints (the runtime passes the registry's); stored keys keep theirs. */
    private readonly fingerprints: KeyFingerprints = processFingerprints(),
    logger: Pick<Logger, 'warn'> | null = null,
  ) {
    this.otherOwners = new OtherOwnerWarnings(logger);
  }

  private static key(upstream: string, userId: string): string {
    return `ukey:${upstream}:${userId}`;
  }

  /** "Last used" lives in its own entry, so recording a use can never overwrite a key being replaced. */
  private static usedKey(upstream: string, userId: string, print: string): string {
    return `ukey-used:${upstream}:${userId}:${print}`;
  }

  /** Stores the owner's key, stamped with a local owner's password version (in place of any key stored before). */
  async put(upstream: string, owner: Owner, key: string): Promise<UserKeyInfo> {
    const { userId } = owner;
    if (typeof key !== 'string' || !KEY_FORMAT.test(key)) {
      throw new KeywardError('bad_request', {
        message: 'The key must be 8 to 4096 printable characters, without spaces or line breaks.',
      });
    }
    // A suspended user cannot put a new key in place of the suspended one (lib/core/detect).
    const storeKey = UserKeys.key(upstream, userId);
    const [suspended, previous] = await guard(() => this.store.getMany([suspensionKey(userId), storeKey]));
    if (suspended !== null && suspended !== undefined) throw new KeywardError('key_suspended');
    const stamp = ownerStamp(owner);
    const stored: StoredUserKey = {
      sealed: await this.vault.sealFor(storeKey, { key }),
      fingerprint: this.fingerprints.of(key),
      last4: key.slice(-4),
      createdAt: this.now(),
      ...(stamp === null ? {} : { passwordVersion: stamp }),
    };
    await guard(() => this.store.set(storeKey, JSON.stringify(stored)));
    // The key it replaces leaves no "last used" record behind.
    const replaced = previous ? (JSON.parse(previous) as StoredUserKey).fingerprint : null;
    if (replaced !== null && replaced !== stored.fingerprint) {
      await guard(() => this.store.delete(UserKeys.usedKey(upstream, userId, replaced)));
    }
    return info(upstream, stored, null);
  }

  /** The owner's key as GET /api/keys shows it; null when there is none, or it was stored under another password. */
  async describe(upstream: string, owner: Owner): Promise<UserKeyInfo | null> {
    const stored = await this.readOwned(upstream, owner);
    if (!stored) return null;
    const used = await guard(() => this.store.get(UserKeys.usedKey(upstream, owner.userId, stored.fingerprint)));
    return info(upstream, stored, used === null ? null : Number(used));
  }

  /** Deletes the key stored under the user id, whoever stored it (the name's next owner can clear the last one's). */
  async delete(upstream: string, userId: string): Promise<boolean> {
    const stored = await this.read(upstream, userId);
    const deleted = await guard(() => this.store.delete(UserKeys.key(upstream, userId)));
    if (stored) await guard(() => this.store.delete(UserKeys.usedKey(upstream, userId, stored.fingerprint)));
    return deleted;
  }

  /**
   * The plain key, for the pipeline only. Records the use (at most once a minute, off the hot path). Read with
   * the user's suspension mark (the anomaly detector's last step): a suspended user's keys are not used.
   */
  async use(upstream: string, owner: Owner): Promise<string | null> {
    const { suspension, secret } = this.reads(upstream, owner.userId);
    const [suspended, raw] = await guard(() => this.store.getMany([suspension, secret]));
    return this.opened(upstream, owner, suspended ?? null, raw ?? null);
  }

  /**
   * What `use` reads, for a call that reads them in its one store round trip (lib/core/store/round.ts): the
   * user's suspension mark and the sealed key, and the store they are in.
   */
  reads(
    upstream: string,
    userId: string,
  ): { readonly store: Store; readonly suspension: string; readonly secret: string } {
    return { store: this.store, suspension: suspensionKey(userId), secret: UserKeys.key(upstream, userId) };
  }

  /**
   * `use` on the values of `reads` (suspension mark, stored key) read already. A local user's key stored under
   * another password version is no key (null, as with none; kept in the store, and warned of once); one stored
   * before keys were stamped is taken as the owner's and stamped with their password version now.
   */
  async opened(upstream: string, owner: Owner, suspended: string | null, raw: string | null): Promise<string | null> {
    if (suspended !== null) throw new KeywardError('key_suspended');
    if (!raw) return null;
    const stored = JSON.parse(raw) as StoredUserKey;
    const owned = ownership(owner, stored.passwordVersion);
    if (owned === 'other') {
      this.otherOwners.warn(owner.userId, { upstream });
      return null;
    }
    const storeKey = UserKeys.key(upstream, owner.userId);
    // Opens only under the entry it was sealed for: another user's key copied here in the store does not.
    const { value: { key }, fresh } = await this.vault.openFor<{ key: string }>(storeKey, stored.sealed, 'key');
    const stamp = owned === 'unstamped' ? ownerStamp(owner) : null;
    if (!fresh || stamp !== null) {
      // Sealed before a vault rotation, or before seals named their entry: sealed again. Stored before keys were
      // stamped: stamped. Compare-and-set, so a key the user replaced in the meantime is never overwritten by
      // this older one, and of two first uses under different passwords only one stamps it.
      const stamped = stamp === null ? stored : { ...stored, passwordVersion: stamp };
      (fresh ? Promise.resolve(stored.sealed) : this.vault.sealFor(storeKey, { key }))
        .then((sealed) => this.store.replaceIfEquals(storeKey, raw, JSON.stringify({ ...stamped, sealed })))
        .catch(() => {});
    }
    this.touch(UserKeys.usedKey(upstream, owner.userId, stored.fingerprint));
    return key;
  }

  /**
   * Records a use: at most one write a minute per key across instances (setIfAbsent on a minute-long marker),
   * and at most one marker command a minute per key from this process, so a call does not cost a second store
   * command. Best effort, never fails the call.
   */
  private touch(usedKey: string): void {
    const now = this.now();
    const last = this.touched.get(usedKey);
    if (last !== undefined && now - last < TOUCH_EVERY_MS) return;
    if (this.touched.size >= TOUCHED_MAX) this.touched.clear();
    this.touched.set(usedKey, now);
    this.store
      .setIfAbsent(`${usedKey}:marker`, '1', TOUCH_EVERY_MS)
      .then((first) => (first ? this.store.set(usedKey, String(now), LAST_USED_TTL_MS) : undefined))
      .catch(() => {});
  }

  /**
   * The fingerprint, under `fingerprints`, of the user's key as stored now; null when there is none. For open
   * WebSockets (lib/core/ws/sockets.ts), which compare it with the key their handshake used: unlike `use`, it
   * records no use. The key is opened rather than its stored fingerprint read, because a stored fingerprint
   * may be from before a KEYWARD_SESSION_SECRET rotation. A key stored under another password is none, as in `use`.
   */
  async currentFingerprint(upstream: string, owner: Owner, fingerprints: KeyFingerprints): Promise<string | null> {
    const stored = await this.readOwned(upstream, owner);
    if (!stored) return null;
    const { key } = (await this.vault.openFor<{ key: string }>(UserKeys.key(upstream, owner.userId), stored.sealed, 'key')).value;
    return fingerprints.of(key);
  }

  private async read(upstream: string, userId: string): Promise<StoredUserKey | null> {
    const raw = await guard(() => this.store.get(UserKeys.key(upstream, userId)));
    return raw ? (JSON.parse(raw) as StoredUserKey) : null;
  }

  /** The stored key if it is the owner's (an unstamped one is, until its first use stamps it); else null. */
  private async readOwned(upstream: string, owner: Owner): Promise<StoredUserKey | null> {
    const stored = await this.read(upstream, owner.userId);
    return stored && ownership(owner, stored.passwordVersion) !== 'other' ? stored : null;
  }
}

function info(upstream: string, stored: StoredUserKey, lastUsedAt: number | null): UserKeyInfo {
  return {
    upstream,
    fingerprint: stored.fingerprint,
    last4: stored.last4,
    createdAt: new Date(stored.createdAt).toISOString(),
    lastUsedAt: lastUsedAt === null ? null : new Date(lastUsedAt).toISOString(),
  };
}
