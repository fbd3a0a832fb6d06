import 'server-only';
import { createHash, randomUUID } from 'node:crypto';
import * as oauth from 'oauth4webapi';
import { parseRetryAfter } from '../../client/errors';
import { cappedFetch } from './capped-fetch';
import { KeywardError } from '../errors';
import { guard } from '../store/guard';
import type { Vault } from '../vault/seal';
import { ownerStamp, ownership, type Owner } from '../users/owner';
import type { Store } from '../../store/types';

/** A user's tokens from a linked provider. Kept sealed in the store; never in a cookie or a response. */
export interface OAuthTokens {
  accessToken: string;
  refreshToken: string | null;
  /** Epoch ms; 0 when the provider did not say. */
  expiresAt: number;
}

/** Exchanges a refresh token. Throws OAuthGrantError when the provider refuses it for good. */
export type TokenRefresher = (refreshToken: string) => Promise<OAuthTokens>;

/** As sealed in the store: `refreshAt` (epoch ms) is when the access token is due for a refresh; `savedAt`, when it was saved. */
interface StoredTokens extends OAuthTokens {
  refreshAt?: number;
  savedAt?: number;
  /**
   * A local user's password version when the tokens were saved (users/owner.ts): tokens stamped with another one
   * are no tokens for the name's next owner. Absent for other users, and in tokens saved before they were stamped.
   */
  passwordVersion?: string;
}

/**
 * Why a link ended: the provider refused the refresh for good (`refused`), the access token expired with no
 * refresh token to renew it (`expired`: the provider gave none, and was not asked), or an upstream refused a token
 * that never expires and the provider confirmed it is no longer valid (`revoked`: see `endIfRevoked`).
 */
export type EndReason = 'refused' | 'expired' | 'revoked';

/**
 * What the token store reports as it goes (connected accounts keep their status with these,
 * lib/core/connect/connections.ts). Called after the store write; a hook's failure is the hook's to handle.
 */
export interface TokenEvents {
  /** A refresh was saved (with the grant's stamp, users/owner.ts, where it has one). */
  refreshed?(provider: string, userId: string, tokens: OAuthTokens & { passwordVersion?: string }): Promise<void>;
  /** The link ended: the provider refused the refresh for good, or the token expired with nothing to refresh it. */
  ended?(provider: string, userId: string, reason: EndReason): Promise<void>;
  /**
   * A refresh failed and the link is kept: the provider was unreachable, timed out, or refused the app's own
   * client (`invalid_client` after a client secret rotation). `reason`: the provider's OAuth error code, or the
   * error's name; never a token.
   */
  failed?(provider: string, userId: string, reason: string): void;
  /**
   * A refresh got new tokens from the provider after the link was deleted (a disconnect while it ran, which
   * revoked only the tokens it saw): they are for nobody now, and are to be revoked at the provider.
   */
  orphaned?(provider: string, userId: string, tokens: OAuthTokens): Promise<void>;
  /** A call found the user's tokens saved under another password (users/owner.ts `other`): they serve as none. */
  otherOwner?(provider: string, userId: string): void;
  /** Tokens saved before they were stamped were stamped with this password version (their first use). */
  stamped?(provider: string, userId: string, passwordVersion: string): Promise<void>;
  /**
   * Not a report but a question, asked before a local user's call takes unstamped tokens as theirs: the password
   * version the user's connection record is stamped with, or null. Tokens lose their stamp when an instance of the
   * version before stamps refreshes them (a rolling deploy, a rollback); the record still names their owner.
   */
  connectionStamp?(provider: string, userId: string): Promise<string | null>;
}

/**
 * A fixed "60 s before expiry" would make a token that lives 60 s or less due at once: every call, and every
 * caller waiting on the single-flight lock, would refresh again. Tokens that short are refreshed halfway
 * through their life instead.
 */
function refreshTime(expiresAt: number, now: number): number {
  if (expiresAt === 0) return 0;
  return expiresAt - Math.min(REFRESH_SKEW_MS, Math.max(expiresAt - now, 0) / 2);
}

/** Ten years: a longer `expires_in` is read as this (an absurd one made the expiry Infinity, which no store keeps). */
const MAX_EXPIRES_IN_S = 10 * 365 * 86_400;

/**
 * When an access token given `expires_in` seconds at `now` expires (ms), or 0 when the provider did not say. A
 * negative `expires_in` has expired already (a connect's first token is refreshed before its first use; a refresh
 * answer with one is refused by oauth4webapi). 0, which no provider means as "expired", is read as unsaid: taken as
 * an expiry, it made a refreshed token due at once, so every call (and every caller waiting behind the refresh
 * lock) refreshed it again.
 */
export function expiryOf(expiresIn: unknown, now: number): number {
  if (typeof expiresIn !== 'number' || !Number.isFinite(expiresIn) || expiresIn === 0) return 0;
  return expiresIn < 0 ? now : now + Math.min(expiresIn, MAX_EXPIRES_IN_S) * 1000;
}

export class OAuthGrantError extends Error {
  override readonly name = 'OAuthGrantError';
}

/** Refresh this long before expiry, or halfway through the token's life if that is shorter (see refreshTime). */
const REFRESH_SKEW_MS = 60_000;
/**
 * The refresh lock outlives the slowest refresh, so no second holder can use a refresh token while the first's
 * request may still reach the provider: a refresh makes at most three requests of REFRESH_TIMEOUT_MS each in turn
 * (discovery, a connection's RFC 8414 fallback, the token request; discovery only once per process), 30 s, and
 * the lock lasts 45 s. A holder that crashed delays that user's next refresh by as much; waiters give up at
 * WAIT_LIMIT_MS with 503 meanwhile. A disconnect holds it too (`exclusive`) while it revokes: at most four requests
 * of 10 s each (lib/core/connect/client.ts: discovery, the RFC 8414 fallback, revoking the refresh token, then the
 * access token), 40 s, still within the lock's life. (GitHub and Slack, configured by endpoints, never discover: their
 * disconnect refreshes an expired token first, then revokes, two requests.)
 */
const LOCK_TTL_MS = 45_000;
/** How many unsaved refreshes a process keeps (OAuthTokenStore.unsaved), and for how long. */
const UNSAVED_LIMIT = 10_000;
const UNSAVED_TTL_MS = 24 * 3_600_000;
/** Each request of a refresh that has not answered by then is abandoned (see LOCK_TTL_MS). */
const REFRESH_TIMEOUT_MS = 10_000;
const WAIT_STEP_MS = 50;
const WAIT_LIMIT_MS = 15_000;
/**
 * After a refresh failed for a reason other than the grant (the provider unreachable or answering 5xx, the app's
 * client refused), the grant's refresh is not tried again in this process for BACKOFF_MS, or for as long as the
 * provider's Retry-After says, up to MAX_BACKOFF_MS (OAuthTokenStore.backoff). Meanwhile an access token that
 * has not expired is still served, until EXPIRY_MARGIN_MS before its expiry (time for the call to reach the
 * upstream); an expired one is answered 503 with Retry-After.
 */
const BACKOFF_MS = 30_000;
const MAX_BACKOFF_MS = 5 * 60_000;
const BACKOFF_LIMIT = 10_000;
const EXPIRY_MARGIN_MS = 5_000;
const PROVIDER_UNAVAILABLE =
  "The credential's provider could not renew it (unreachable or failing); try again after the time in Retry-After.";
/**
 * What `exclusive` answers when the lock stays taken past WAIT_LIMIT_MS. Whoever holds it (a refresh, the
 * keeper's refresh, another disconnect of the same connection) took it at least that long ago, so a holder that
 * is still answering is done in 15 s more (a refresh makes its requests within 30 s; a disconnect, within 40 s
 * and it held the lock from before this one waited). A holder that crashed leaves it for up to LOCK_TTL_MS.
 */
const LOCK_BUSY = {
  message: 'This connection is busy (a token refresh or another disconnect of it is under way); try again after the time in Retry-After.',
  headers: { 'retry-after': '15' },
};
/**
 * Stored in place of the tokens when the provider refused to refresh them for good: nothing usable, but calls
 * can tell "sign in again" (`reauth_required`) from "never linked" (`credential_missing`) in the same single read.
 * Not a seal (iron-session seals begin `Fe26.2`), so it never opens as tokens.
 */
const ENDED = 'ended';

/**
 * Server-side OAuth tokens per (provider, user), refreshed before expiry. The refresh is single-flight across
 * every instance sharing the store: one caller takes a lock in the store, re-reads the tokens (another instance
 * may just have refreshed), refreshes, saves and releases; everyone else waits for the saved result. A rotating
 * refresh token is therefore never used twice. A refused refresh ends the link (`reauth_required`), no loop; one
 * that failed (the provider down) is not tried again for a while, and the access token serves while it is valid.
 */
export class OAuthTokenStore {
  /**
   * Refreshes the provider answered but the store could not save (it failed right then), by key: the sealed
   * value refreshed (`from`) and the one to write over it (`to`). A rotating provider has already retired the old
   * refresh token, so the next refresh of this grant in this process writes these instead of presenting the old
   * one (which a provider like Google or Okta would count as reuse, ending the grant). Bounded: the oldest is
   * dropped past UNSAVED_LIMIT, and one is kept UNSAVED_TTL_MS at most.
   */
  private readonly unsaved = new Map<string, { readonly from: string; readonly to: string; readonly at: number }>();
  /**
   * Grants whose refresh failed transiently, by key: a digest of the sealed value that could not be refreshed
   * (`digest`: 43 characters, where the value is a few KiB) and until when its refresh is not tried again
   * (BACKOFF_MS). Tied to the sealed value, so a refresh another instance saved meanwhile, or a reconnect, is
   * used at once. Bounded like `unsaved`.
   *
   * Kept in this process, not in the store: an outage then costs one provider request per grant per backoff on
   * each instance (the store lock already keeps them one at a time), a small number; a mark in the store would
   * add a write to every failure and a read to every call that finds its token due, and would itself fail when
   * the store does.
   */
  private readonly backoff = new Map<string, { readonly digest: string; readonly until: number }>();

  constructor(
    private readonly store: Store,
    private readonly vault: Vault,
    private readonly refreshers: ReadonlyMap<string, TokenRefresher>,
    private readonly now: () => number = Date.now,
    private readonly events: TokenEvents = {},
  ) {}

  private static key(provider: string, userId: string) {
    return `oauth:${provider}:${userId}`;
  }

  /** Saves the owner's tokens, stamped with a local owner's password version (in place of any saved before). */
  async save(provider: string, owner: Owner, tokens: OAuthTokens): Promise<void> {
    const stamp = ownerStamp(owner);
    const stored: StoredTokens = {
      ...tokens,
      refreshAt: refreshTime(tokens.expiresAt, this.now()),
      savedAt: this.now(),
      ...(stamp === null ? {} : { passwordVersion: stamp }),
    };
    const key = OAuthTokenStore.key(provider, owner.userId);
    await guard(async () => this.store.set(key, await this.vault.sealFor(key, stored)));
  }

  async load(provider: string, userId: string): Promise<OAuthTokens | null> {
    return (await this.read(provider, userId))?.tokens ?? null;
  }

  /**
   * What `accessToken` reads first, for a call that reads it in its one store round trip
   * (lib/core/store/round.ts): the sealed tokens' key and the store it is in.
   */
  reads(provider: string, userId: string): { readonly store: Store; readonly secret: string } {
    return { store: this.store, secret: OAuthTokenStore.key(provider, userId) };
  }

  /**
   * The tokens and the sealed value they were read from (for compare-and-set writes); `known`: the sealed value
   * as the caller already read it (`reads`), instead of reading it here. With an `owner` (a call's): tokens saved
   * under another password are none (null), and tokens saved before they were stamped are stamped now.
   */
  private async read(
    provider: string,
    userId: string,
    known?: string | null,
    owner?: Owner,
  ): Promise<{ tokens: StoredTokens; sealed: string } | null> {
    const key = OAuthTokenStore.key(provider, userId);
    const sealed = known !== undefined ? known : await guard(() => this.store.get(key));
    if (!sealed || sealed === ENDED) return null;
    // Opens only under the entry it was sealed for: another user's tokens copied here in the store do not.
    const { value: tokens, fresh } = await this.vault.openFor<StoredTokens>(key, sealed, 'accessToken');
    const claim = owner ? await this.claim(owner, provider, tokens) : 'own';
    if (claim === 'refused') return null;
    const stamp = claim === 'adopted' ? ownerStamp(owner!) : null;
    if (!fresh || stamp !== null) {
      // Sealed before a vault rotation, or before seals named their entry: sealed again. Saved before tokens were
      // stamped: stamped. Unless a refresh replaced it meanwhile (compare-and-set).
      this.vault
        .sealFor(key, stamp === null ? tokens : { ...tokens, passwordVersion: stamp })
        .then((resealed) => this.store.replaceIfEquals(key, sealed, resealed))
        .then((replaced) => (replaced && stamp !== null ? this.events.stamped?.(provider, userId, stamp) : undefined))
        .catch(() => {});
    }
    return { tokens, sealed };
  }

  /**
   * What the tokens are to the calling owner: `own` (stamped with their password version), `adopted` (saved before
   * tokens were stamped, and the connection record names no other owner: theirs, to be stamped), or `refused`
   * (saved under another password, or unstamped while the connection record is stamped with another, as after an
   * earlier version's refresh; said once through `otherOwner`).
   */
  private async claim(owner: Owner, provider: string, tokens: StoredTokens): Promise<'own' | 'adopted' | 'refused'> {
    const stamped = ownership(owner, tokens.passwordVersion);
    if (stamped === 'own') return 'own';
    if (stamped === 'unstamped') {
      const recorded = (await this.events.connectionStamp?.(provider, owner.userId)) ?? null;
      if (recorded === null || ownership(owner, recorded) !== 'other') return 'adopted';
    }
    this.events.otherOwner?.(provider, owner.userId);
    return 'refused';
  }

  /** Whether these tokens were saved under another password than the owner's (and, if so, says it once). */
  private anotherOwners(owner: Owner, provider: string, tokens: StoredTokens): boolean {
    if (ownership(owner, tokens.passwordVersion) !== 'other') return false;
    this.events.otherOwner?.(provider, owner.userId);
    return true;
  }

  /**
   * Whether the user still holds a grant from this provider: false once it was disconnected or the link ended
   * (lib/core/ws/sockets.ts closes the WebSockets opened with it). Reads the key's presence only, nothing unsealed.
   */
  async hasGrant(provider: string, userId: string): Promise<boolean> {
    const sealed = await guard(() => this.store.get(OAuthTokenStore.key(provider, userId)));
    return sealed !== null && sealed !== ENDED;
  }

  /**
   * Runs `task` holding the grant's refresh lock, as a refresh does: no refresh of the grant is under way meanwhile,
   * and none starts until the task ends. A disconnect runs in it, so the tokens it reads are the ones it revokes:
   * a refresh between its read and its delete would save tokens nobody revokes (with a provider that rotates
   * refresh tokens, revoking the rotated-out one may leave the grant alive), or find the refresh token just revoked
   * and report the connection as needing a reconnect. Waits for a refresh under way up to WAIT_LIMIT_MS, then
   * answers 503 `service_unavailable` with Retry-After (LOCK_BUSY).
   */
  async exclusive<T>(provider: string, userId: string, task: () => Promise<T>): Promise<T> {
    const deadline = this.now() + WAIT_LIMIT_MS;
    for (;;) {
      const done = await this.ifUnlocked(provider, userId, task);
      if (done) return done.value;
      if (this.now() > deadline) throw new KeywardError('service_unavailable', LOCK_BUSY);
      await new Promise((resolve) => setTimeout(resolve, WAIT_STEP_MS));
    }
  }

  /**
   * Runs `task` holding the grant's refresh lock if the lock is free: `{ value }`, the task's result, or null
   * without running it when another caller holds the lock. The one lock of a grant: a refresh (`accessToken`,
   * `keepAlive`) and a disconnect (`exclusive`) each take it here. Released however the task ends, and only if
   * this caller still holds it (a lock that outlived LOCK_TTL_MS and was taken by another is left alone).
   */
  private async ifUnlocked<T>(provider: string, userId: string, task: () => Promise<T>): Promise<{ value: T } | null> {
    const lockKey = `lock:${OAuthTokenStore.key(provider, userId)}`;
    const holder = randomUUID();
    if (!(await guard(() => this.store.setIfAbsent(lockKey, holder, LOCK_TTL_MS)))) return null;
    try {
      return { value: await task() };
    } finally {
      await this.store.deleteIfEquals(lockKey, holder).catch(() => {});
    }
  }

  async unlink(provider: string, userId: string): Promise<void> {
    await guard(() => this.store.delete(OAuthTokenStore.key(provider, userId)));
  }

  private fresh(tokens: StoredTokens): boolean {
    if (tokens.expiresAt === 0) return true;
    return (tokens.refreshAt ?? tokens.expiresAt - REFRESH_SKEW_MS) > this.now();
  }

  /**
   * A valid access token for the owner, refreshing it first if it is about to expire. `known`: the sealed tokens
   * as the call's round trip read them (`reads`); a refresh reads them again under its lock. Tokens a local user
   * saved under another password are none (`credential_missing`), and are kept.
   */
  async accessToken(provider: string, owner: Owner, known?: string | null): Promise<string> {
    const { userId } = owner;
    const sealed = known !== undefined ? known : await guard(() => this.store.get(OAuthTokenStore.key(provider, userId)));
    // An ended link answers `reauth_required` on every call until the user signs in again, not only on the one
    // that found out; no link at all is `credential_missing`.
    if (sealed === ENDED) throw new KeywardError('reauth_required');
    const read = await this.read(provider, userId, sealed, owner);
    if (!read) throw new KeywardError('credential_missing');
    if (this.fresh(read.tokens)) return read.tokens.accessToken;
    // A refresh that failed a moment ago is not tried again yet; checked before the lock, which costs a store write.
    const until = this.backedOffUntil(OAuthTokenStore.key(provider, userId), read.sealed);
    if (until !== null) return this.heldBack(read.tokens, until);

    const deadline = this.now() + WAIT_LIMIT_MS;
    for (;;) {
      const done = await this.ifUnlocked(provider, userId, () => this.refreshHoldingLock(provider, userId, false, owner));
      if (done) return done.value;
      await new Promise((resolve) => setTimeout(resolve, WAIT_STEP_MS));
      const current = (await this.read(provider, userId))?.tokens;
      if (!current) throw new KeywardError('reauth_required');
      // Reconnected meanwhile by the name's next owner, or refreshed unstamped by an earlier version for them: not
      // this owner's.
      if ((await this.claim(owner, provider, current)) === 'refused') throw new KeywardError('credential_missing');
      if (this.fresh(current)) return current.accessToken;
      if (this.now() > deadline) throw new KeywardError('credential_unavailable');
    }
  }

  /**
   * Refreshes a grant that is still valid but has not been refreshed since `olderThan` (epoch ms), so an idle
   * refresh token is used before the provider expires it (lib/core/connect/keeper.ts). Single-flight like
   * accessToken, but never waits: if another caller holds the lock, that caller is refreshing. True when this
   * call refreshed. Throws as accessToken does when the provider refuses.
   */
  async keepAlive(provider: string, userId: string, olderThan: number): Promise<boolean> {
    const done = await this.ifUnlocked(provider, userId, async () => {
      const current = (await this.load(provider, userId)) as StoredTokens | null;
      if (!current?.refreshToken || (current.savedAt ?? 0) >= olderThan) return false;
      await this.refreshHoldingLock(provider, userId, true);
      return true;
    });
    return done?.value ?? false;
  }

  /**
   * Refreshes under the lock. The result is written only over the tokens it refreshed (compare-and-set): a
   * reconnect that landed after the lock expired (a connect saves under the lock: Connections.complete), or a
   * disconnect that did, wins, and a refused refresh of an old grant never deletes, or marks as ended, the grant that replaced it.
   * `owner`: the call's (none for the keeper): tokens another owner saved meanwhile are not handed to it.
   */
  private async refreshHoldingLock(provider: string, userId: string, force = false, owner?: Owner): Promise<string> {
    const key = OAuthTokenStore.key(provider, userId);
    const read = await this.read(provider, userId);
    if (!read) {
      this.unsaved.delete(key);
      throw new KeywardError('reauth_required');
    }
    const { tokens: current, sealed } = read;
    const claim = owner ? await this.claim(owner, provider, current) : 'own';
    if (claim === 'refused') throw new KeywardError('credential_missing');
    const pending = this.unsaved.get(key);
    if (pending) {
      this.unsaved.delete(key);
      // The refresh this process could not save: written now over the tokens it refreshed, then used.
      if (pending.from === sealed && this.now() - pending.at < UNSAVED_TTL_MS && (await this.write(key, sealed, pending.to))) {
        const saved = (await this.vault.openFor<StoredTokens>(key, pending.to, 'accessToken')).value;
        await this.events.refreshed?.(provider, userId, saved);
        return this.refreshHoldingLock(provider, userId, false, owner);
      }
    }
    if (!force && this.fresh(current)) return current.accessToken;
    const until = this.backedOffUntil(key, sealed);
    if (until !== null) return this.heldBack(current, until, force);
    const refresher = this.refreshers.get(provider);
    if (!current.refreshToken || !refresher) {
      await this.endIfUnchanged(provider, userId, sealed, 'expired');
      throw new KeywardError('reauth_required');
    }
    let next: OAuthTokens;
    try {
      next = await refresher(current.refreshToken);
    } catch (error) {
      if (error instanceof OAuthGrantError) {
        await this.endIfUnchanged(provider, userId, sealed, 'refused');
        throw new KeywardError('reauth_required', { cause: error });
      }
      // The provider could not be reached, or refused the app rather than the grant: keep the link, and do not
      // try again before the backoff ends; meanwhile the current access token serves while it is valid.
      this.events.failed?.(provider, userId, failureReason(error));
      return this.heldBack(current, this.backOff(key, sealed, error), force, error);
    }
    this.backoff.delete(key);
    // Providers that do not rotate refresh tokens omit it from the response: keep the old one. The grant keeps
    // its stamp (or, saved before tokens were stamped, takes the calling owner's).
    let saved: StoredTokens = {
      ...next,
      refreshToken: next.refreshToken ?? current.refreshToken,
      refreshAt: refreshTime(next.expiresAt, this.now()),
      savedAt: this.now(),
    };
    let stamp = current.passwordVersion ?? (claim === 'adopted' ? ownerStamp(owner!) : null);
    let expected = sealed;
    for (let attempt = 0; ; attempt++) {
      if (stamp !== null) saved = { ...saved, passwordVersion: stamp };
      if (await this.write(key, expected, await this.vault.sealFor(key, saved))) break;
      if (attempt === 3) throw new KeywardError('credential_unavailable');
      const now = await this.read(provider, userId);
      // Disconnected (nothing to use) or reconnected (use the new grant) while this refresh was under way.
      if (!now) {
        await this.events.orphaned?.(provider, userId, saved).catch(() => {});
        throw new KeywardError('reauth_required');
      }
      const sameGrant = now.tokens.refreshToken === current.refreshToken && now.tokens.accessToken === current.accessToken;
      if (!sameGrant && owner && (await this.claim(owner, provider, now.tokens)) === 'refused') throw new KeywardError('credential_missing');
      if (!sameGrant) return now.tokens.accessToken;
      // The same grant, re-sealed after a vault rotation (read's background write), or stamped by another call's
      // first use of it (which may be another owner's: they won it, and keep it): written over, with its stamp.
      stamp = now.tokens.passwordVersion ?? stamp;
      expected = now.sealed;
    }
    await this.events.refreshed?.(provider, userId, saved);
    if (owner && this.anotherOwners(owner, provider, saved)) throw new KeywardError('credential_missing');
    return next.accessToken;
  }

  /** Until when the refresh of these tokens (as sealed) is backed off, or null when it may be tried now. */
  private backedOffUntil(key: string, sealed: string): number | null {
    const entry = this.backoff.get(key);
    if (!entry) return null;
    if (entry.until > this.now() && entry.digest === digestOf(sealed)) return entry.until;
    this.backoff.delete(key);
    return null;
  }

  /** Backs off the refresh of these tokens after `error`: for the provider's Retry-After if it sent one, within bounds. */
  private backOff(key: string, sealed: string, error: unknown): number {
    const retryAfterMs = retryAfterOf(error, this.now());
    const until = this.now() + Math.min(Math.max(retryAfterMs ?? BACKOFF_MS, 1_000), MAX_BACKOFF_MS);
    this.backoff.delete(key);
    if (this.backoff.size >= BACKOFF_LIMIT) this.backoff.delete(this.backoff.keys().next().value!);
    this.backoff.set(key, { digest: digestOf(sealed), until });
    return until;
  }

  /**
   * The answer while a grant's refresh is backed off until `until`: the current access token if it has not expired
   * (with EXPIRY_MARGIN_MS to spare), else 503 `credential_unavailable` with Retry-After. `force` (keepAlive) is
   * always the 503: the keeper asked for a refresh, and counts this one as failed (retried next pass).
   */
  private heldBack(tokens: OAuthTokens, until: number, force = false, cause?: unknown): string {
    const now = this.now();
    if (!force && tokens.expiresAt - EXPIRY_MARGIN_MS > now) return tokens.accessToken;
    throw new KeywardError('credential_unavailable', {
      message: PROVIDER_UNAVAILABLE,
      headers: { 'retry-after': String(Math.max(1, Math.ceil((until - now) / 1000))) },
      ...(cause === undefined ? {} : { cause }),
    });
  }

  /**
   * Ends the link when `accessToken`, which an upstream just refused, is still the one stored, never expires (so no
   * refresh would ever find out it ended), and `revoked` (asked of the provider) says it is no longer valid. Under
   * the grant's lock, without waiting for it (a refresh or disconnect under way has the grant in hand): true when
   * the link ended here.
   */
  async endIfRevoked(provider: string, userId: string, accessToken: string, revoked: (accessToken: string) => Promise<boolean>): Promise<boolean> {
    const done = await this.ifUnlocked(provider, userId, async () => {
      const read = await this.read(provider, userId);
      if (!read || read.tokens.accessToken !== accessToken || read.tokens.expiresAt !== 0) return false;
      if (!(await revoked(accessToken))) return false;
      return this.endIfUnchanged(provider, userId, read.sealed, 'revoked');
    });
    return done?.value ?? false;
  }

  /**
   * Compare-and-set of a refresh's tokens. A store that fails keeps them for this process's next refresh of the
   * grant (`unsaved`) before the failure is answered (503 `store_unavailable`).
   */
  private async write(key: string, expected: string, next: string): Promise<boolean> {
    try {
      return await guard(() => this.store.replaceIfEquals(key, expected, next));
    } catch (error) {
      if (this.unsaved.size >= UNSAVED_LIMIT) this.unsaved.delete(this.unsaved.keys().next().value!);
      this.unsaved.set(key, { from: expected, to: next, at: this.now() });
      throw error;
    }
  }

  /**
   * Ends the link only if it still holds the tokens that could not be refreshed: the tokens are replaced by
   * the ENDED mark (compare-and-set), which the next sign-in's `save` writes over.
   */
  private async endIfUnchanged(provider: string, userId: string, sealed: string, reason: EndReason): Promise<boolean> {
    if (!(await guard(() => this.store.replaceIfEquals(OAuthTokenStore.key(provider, userId), sealed, ENDED)))) return false;
    await this.events.ended?.(provider, userId, reason);
    return true;
  }
}

/** The OAuth error code a provider answered (`invalid_client`), else the error's name: short, and never a token. */
function failureReason(error: unknown): string {
  const code =
    error instanceof oauth.WWWAuthenticateChallengeError
      ? error.cause[0]?.parameters.error
      : (error as { error?: unknown } | null)?.error;
  if (typeof code === 'string' && /^[a-z_]{1,64}$/.test(code)) return code;
  return error instanceof Error ? error.name : 'unknown';
}

/** A sealed value's SHA-256, for the backoff's comparisons (what it is tied to, not the value itself). */
function digestOf(sealed: string): string {
  return createHash('sha256').update(sealed, 'utf8').digest('base64url');
}

/**
 * How long (ms) the provider asked to wait, from the Retry-After of the response an error carries (oauth4webapi's
 * errors keep it as `response`, or as `cause` when the answer was no OAuth error), or null.
 */
function retryAfterOf(error: unknown, now: number): number | null {
  const { response, cause } = (error ?? {}) as { response?: unknown; cause?: unknown };
  const answer = response instanceof Response ? response : cause instanceof Response ? cause : null;
  const seconds = parseRetryAfter(answer?.headers.get('retry-after') ?? null, now);
  return seconds === null ? null : seconds * 1000;
}

/**
 * The refresh_token grant against an OpenID Connect issuer (discovered once), with oauth4webapi, the
 * library Auth.js itself uses. Plain-http issuers are accepted only on loopback (local development/tests).
 */
export function oidcRefresher(issuer: string, clientId: string, clientSecret: string, now: () => number = Date.now): TokenRefresher {
  const issuerUrl = new URL(issuer);
  const insecure = issuerUrl.protocol === 'http:' && ['localhost', '127.0.0.1', '[::1]'].includes(issuerUrl.hostname);
  const limited = cappedFetch(fetch);
  const options = {
    ...(insecure ? { [oauth.allowInsecureRequests]: true } : {}),
    signal: () => AbortSignal.timeout(REFRESH_TIMEOUT_MS),
    // An answer past 1 MB (discovery or token) is refused, not read whole.
    [oauth.customFetch]: (url: string, init: RequestInit) => limited(url, init),
  };
  let server: Promise<oauth.AuthorizationServer> | undefined;
  const client: oauth.Client = { client_id: clientId };
  const clientAuth = oauth.ClientSecretBasic(clientSecret);
  return async (refreshToken) => {
    server ??= oauth
      .discoveryRequest(issuerUrl, { ...options, algorithm: 'oidc' })
      .then((response) => oauth.processDiscoveryResponse(issuerUrl, response));
    let as: oauth.AuthorizationServer;
    try {
      as = await server;
    } catch (error) {
      server = undefined;
      throw error;
    }
    // The lifetime counts from when the provider issued the token: the time the request was sent, not answered.
    const sentAt = now();
    const response = await oauth.refreshTokenGrantRequest(as, client, clientAuth, refreshToken, options);
    let result: oauth.TokenEndpointResponse;
    try {
      result = await oauth.processRefreshTokenResponse(as, client, response);
    } catch (error) {
      // Only `invalid_grant` says this user's grant is over. `invalid_client` and `unauthorized_client` say the
      // app's own client registration is refused (a rotated or mistyped client secret): every user would lose
      // their link for the operator's mistake, so those stay ordinary failures (503, link kept) until it is fixed.
      if (error instanceof oauth.ResponseBodyError && error.error === 'invalid_grant') throw new OAuthGrantError(error.error);
      throw error;
    }
    return {
      accessToken: result.access_token,
      refreshToken: result.refresh_token ?? null,
      expiresAt: expiryOf(result.expires_in, sentAt),
    };
  };
}
