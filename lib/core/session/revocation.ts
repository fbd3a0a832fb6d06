import { hashSessionId } from '../audit/audit';
import { guard } from '../store/guard';
import type { RoundRead } from '../../store/redis';
import type { Store } from '../../store/types';
import type { Session } from './session';

type Revocable = Pick<Session, 'sessionId' | 'userId' | 'authTime'>;

/**
 * Marks an undoable revocation set: each key, the value it set, and the value it replaced (null: none). On undo a
 * mark still holding that value gets the one it replaced back (or goes, when there was none): undoing a later
 * revocation leaves an earlier one in force.
 */
export type RevocationUndo = ReadonlyArray<{ readonly key: string; readonly mark: string; readonly previous?: string | null }>;

/**
 * Server-side revocation, read from the shared store on every request: no cache, so a sign-out or an
 * admin's revocation is refused by every instance on its very next request.
 *  - `rev:sid:<sessionId>`: one sign-in (browser session, or a mobile token family), kept until no copy could live;
 *  - `rev:user:<userId>`: every session of the user that signed in at or before this time ("sign out everywhere");
 *  - `rev:det:<userId>`: the same, set by the anomaly detector (lib/core/detect) in a key of its own, so that
 *    undoing it never touches a revocation made by the user or an admin.
 */
export class SessionRevocations {
  constructor(
    readonly store: Store,
    private readonly maxSessionAgeMs: number,
    private readonly now: () => number = Date.now,
    /**
     * The latest sign-in time (epoch ms) among the user's recorded sessions (SessionIndex.latestSignIn), or null:
     * "sign out everywhere" reaches at least that far, whatever this instance's clock says.
     */
    private readonly latestSignIn: (userId: string) => Promise<number | null> = () => Promise.resolve(null),
  ) {}

  /**
   * The time a "revoke every session of the user" mark holds: now, or the latest sign-in the session index
   * recorded when that is later. A sign-in time comes from the clock of the instance that signed the user in:
   * when that clock is ahead of this one, `now` alone would leave a session signed in a moment ago (the caller's
   * own, or a thief's) in force. A recorded time further ahead than MAX_CLOCK_SKEW_MS counts as that much
   * ahead, so a wildly wrong clock cannot lock the user out for a whole session lifetime.
   */
  private async markTime(userId: string): Promise<number> {
    const now = Math.floor(this.now()); // whole ms, as Date.now() (a test's clock may not be)
    const latest = await this.latestSignIn(userId);
    return latest === null ? now : Math.max(now, Math.min(Math.floor(latest), now + MAX_CLOCK_SKEW_MS));
  }

  /**
   * Kept for the longest any copy of the session could still live, not until the copy presented expires: Auth.js
   * renews a cookie (a later `exp`) on every session read, so another copy of the same session may expire later
   * than the one signed out with, and a mark gone before it would let that copy back in (and renew it for good).
   * No copy is renewed once the mark is set, so none outlives maxSessionAgeMs from now (a mobile family's refresh
   * token included).
   */
  async revokeSession(sessionId: string): Promise<void> {
    const ttl = this.maxSessionAgeMs + 60_000;
    // The same mark under the id's hash, for the admin session list (session-index.ts), which never holds ids.
    await guard(() =>
      Promise.all([this.store.set(`rev:sid:${sessionId}`, '1', ttl), this.store.set(hashedRevocationKey(hashSessionId(sessionId)), '1', ttl)]),
    );
  }

  async revokeUser(userId: string): Promise<void> {
    const at = await this.markTime(userId);
    // Sessions live at most maxSessionAgeMs (mobile refresh families included), so the mark can expire then. Only
    // ever raised: an instance whose clock is behind must not bring back the sessions a later mark revoked.
    await guard(() => this.store.raise(userRevocationKey(userId), at, this.maxSessionAgeMs + 60_000));
  }

  /**
   * Revocations that can be undone (the anomaly detector's, lib/core/detect), in two steps so that the detector
   * can store its alert, with the undo, before any mark is set: a `plan` names each mark to set and what it
   * replaces, then `revokeAsPlanned` sets them. `restore` removes a mark only while it is still the one planned,
   * so an undo never brings back a session revoked by anyone else (a sign-out already there is kept as it is:
   * setIfAbsent), nor one revoked again since, and an entry whose mark was never set (already revoked, or the
   * store failed first) changes nothing.
   */
  planSessionsRevocation(sessionIds: readonly string[], mark: string): RevocationUndo {
    return sessionIds.flatMap((id) => [`rev:sid:${id}`, hashedRevocationKey(hashSessionId(id))]).map((key) => ({ key, mark, previous: null }));
  }

  async planUserRevocation(userId: string): Promise<RevocationUndo> {
    const key = detectorRevocationKey(userId);
    const at = await this.markTime(userId);
    return [{ key, mark: String(at), previous: await guard(() => this.store.get(key)) }];
  }

  async revokeAsPlanned(plan: RevocationUndo): Promise<void> {
    const ttl = this.maxSessionAgeMs + 60_000;
    await Promise.all(
      plan.map(({ key, mark }) =>
        // A later mark already there (an instance whose clock is ahead) stays: the detector's are only ever raised.
        key.startsWith(detectorRevocationKey('')) ? guard(() => this.store.raise(key, Number(mark), ttl)) : guard(() => this.store.setIfAbsent(key, mark, ttl)),
      ),
    );
  }

  /** Takes back the marks an undoable revocation set, each only if it still holds the value it set. */
  async restore(undo: RevocationUndo): Promise<void> {
    for (const { key, mark, previous } of undo) await guard(() => putBack(this.store, key, mark, previous ?? null));
  }

  async isRevoked(session: Revocable): Promise<boolean> {
    return revokedBy(session, await guard(() => this.store.getMany(revocationKeys(session))));
  }
}

/** How far ahead of this instance's clock another instance's recorded sign-in time is believed (markTime). */
export const MAX_CLOCK_SKEW_MS = 60_000;

/**
 * Undoes one mark: `key` gets back the value `mark` replaced (null: it had none, and goes), only while it still
 * holds `mark`, so a mark set again since (by anyone) stays.
 */
export function putBack(store: Store, key: string, mark: string, previous: string | null): Promise<boolean> {
  return previous === null ? store.deleteIfEquals(key, mark) : store.replaceIfEquals(key, mark, previous);
}

/** The keys that say whether this session was revoked: read together with a call's other keys. */
export function revocationKeys(session: Revocable): [string, string, string] {
  return [`rev:sid:${session.sessionId}`, userRevocationKey(session.userId), detectorRevocationKey(session.userId)];
}

/** The anomaly detector's "revoke every session" for a user (epoch ms), apart from the user's and admins'. */
export function detectorRevocationKey(userId: string): string {
  return `rev:det:${userId}`;
}

/** "Sign out everywhere" for a user: the time (epoch ms) before which every sign-in of theirs is revoked. */
export function userRevocationKey(userId: string): string {
  return `rev:user:${userId}`;
}

/**
 * The copy of a session's `rev:sid` mark under its id's hash (audit's `hashSessionId`). Only the admin session
 * list reads it (it knows sessions by hash); a call is always checked against `rev:sid:<id>` itself.
 */
export function hashedRevocationKey(sessionIdHash: string): string {
  return `rev:sidh:${sessionIdHash}`;
}

/** Whether the values read at `revocationKeys` (same order) revoke this session. */
export function revokedBy(session: Revocable, [bySession, byUser, byDetector]: ReadonlyArray<string | null | undefined>): boolean {
  if (bySession !== null && bySession !== undefined) return true;
  return signedInBefore(session, byUser) || signedInBefore(session, byDetector);
}

function signedInBefore(session: Revocable, mark: string | null | undefined): boolean {
  return mark !== null && mark !== undefined && session.authTime <= Number(mark);
}

/** The same rule as the stop conditions of a Redis round trip: nothing is counted for a revoked session. */
export function revocationReads(session: Revocable): [RoundRead, RoundRead, RoundRead] {
  const [bySession, byUser, byDetector] = revocationKeys(session);
  return [
    { key: bySession, stopIfPresent: true },
    { key: byUser, stopIfAtLeast: session.authTime },
    { key: byDetector, stopIfAtLeast: session.authTime },
  ];
}
