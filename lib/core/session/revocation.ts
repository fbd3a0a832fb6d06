import { guard } from '../store/guard';
import type { RoundRead } from '../../store/redis';
import type { Store } from '../../store/types';
import type { Session } from './session';

type Revocable = Pick<Session, 'sessionId' | 'userId' | 'authTime'>;

/**
 * Server-side revocation, read from the shared store on every request: no cache, so a sign-out or an
 * admin's revocation is refused by every instance on its very next request.
 *  - `rev:sid:<sessionId>`: one sign-in (browser session, or a mobile token family), kept until it would expire;
 *  - `rev:user:<userId>`: every session of the user that signed in at or before this time ("sign out everywhere").
 */
export class SessionRevocations {
  constructor(
    readonly store: Store,
    private readonly maxSessionAgeMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  async revokeSession(sessionId: string, expiresAt: number): Promise<void> {
    const ttl = Math.max(expiresAt - this.now(), 0) + 60_000;
    await guard(() => this.store.set(`rev:sid:${sessionId}`, '1', ttl));
  }

  async revokeUser(userId: string): Promise<void> {
    // Sessions live at most maxSessionAgeMs (mobile refresh families included), so the mark can expire then.
    await guard(() => this.store.set(`rev:user:${userId}`, String(this.now()), this.maxSessionAgeMs + 60_000));
  }

  async isRevoked(session: Revocable): Promise<boolean> {
    return revokedBy(session, await guard(() => this.store.getMany(revocationKeys(session))));
  }
}

/** The keys that say whether this session was revoked: read together with a call's other keys. */
export function revocationKeys(session: Revocable): [string, string] {
  return [`rev:sid:${session.sessionId}`, `rev:user:${session.userId}`];
}

/** Whether the values read at `revocationKeys` (same order) revoke this session. */
export function revokedBy(session: Revocable, [bySession, byUser]: ReadonlyArray<string | null | undefined>): boolean {
  if (bySession !== null && bySession !== undefined) return true;
  return byUser !== null && byUser !== undefined && session.authTime <= Number(byUser);
}

/** The same rule as the stop conditions of a Redis round trip: nothing is counted for a revoked session. */
export function revocationReads(session: Revocable): [RoundRead, RoundRead] {
  const [bySession, byUser] = revocationKeys(session);
  return [
    { key: bySession, stopIfPresent: true },
    { key: byUser, stopIfAtLeast: session.authTime },
  ];
}
