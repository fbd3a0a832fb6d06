import { guard } from '../store/guard';
import type { Store } from '../../store/types';
import type { Session } from './session';

/**
 * Server-side revocation, read from the shared store on every request: no cache, so a sign-out or an
 * admin's revocation is refused by every instance on its very next request.
 *  - `rev:sid:<sessionId>`: one sign-in (browser session, or a mobile token family), kept until it would expire;
 *  - `rev:user:<userId>`: every session of the user that signed in at or before this time ("sign out everywhere").
 */
export class SessionRevocations {
  constructor(
    private readonly store: Store,
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

  async isRevoked(session: Pick<Session, 'sessionId' | 'userId' | 'authTime'>): Promise<boolean> {
    const [bySession, byUser] = await guard(() =>
      this.store.getMany([`rev:sid:${session.sessionId}`, `rev:user:${session.userId}`]),
    );
    if (bySession !== null && bySession !== undefined) return true;
    return byUser !== null && byUser !== undefined && session.authTime <= Number(byUser);
  }
}
