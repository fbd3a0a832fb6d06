import { describe, expect, it } from 'vitest';
import type { SessionRevocations } from '../../../lib/core/session/revocation';
import type { Session } from '../../../lib/core/session/session';
import type { Upstream } from '../../../lib/core/upstream/registry';
import { OpenSockets, type CloseCause } from '../../../lib/core/ws/sockets';

function session(sessionId: string, expiresAt = Date.now() + 3_600_000): Session {
  return {
    userId: `user-${sessionId}`,
    name: null,
    roles: [],
    expiresAt,
    sessionId,
    authTime: 0,
    claims: {},
    via: 'cookie',
  };
}

const upstream = { id: 'rt', credential: { source: 'user-key' } } as unknown as Upstream;

function revocations(revoked: Set<string>, calls: string[], fail = false): SessionRevocations {
  return {
    isRevoked: async (s: Pick<Session, 'sessionId'>) => {
      calls.push(s.sessionId);
      if (fail) throw new Error('store down');
      return revoked.has(s.sessionId);
    },
  } as unknown as SessionRevocations;
}

function track(sockets: OpenSockets, s: Session): { closed: CloseCause[]; remove: () => void } {
  const closed: CloseCause[] = [];
  const remove = sockets.add({ session: s, upstream, fingerprint: 'f', close: (cause) => closed.push(cause) });
  return { closed, remove };
}

describe('open WebSockets are re-checked', () => {
  it('once per distinct session, closing every socket of a revoked one', async () => {
    const revoked = new Set<string>();
    const calls: string[] = [];
    const sockets = new OpenSockets({ revocations: revocations(revoked, calls) });
    const a1 = track(sockets, session('a'));
    const a2 = track(sockets, session('a'));
    const b = track(sockets, session('b'));
    await sockets.check();
    expect(calls.sort()).toEqual(['a', 'b']);
    expect([a1.closed, a2.closed, b.closed]).toEqual([[], [], []]);
    revoked.add('a');
    await sockets.check();
    expect([a1.closed, a2.closed, b.closed]).toEqual([['sessionEnded'], ['sessionEnded'], []]);
    for (const s of [a1, a2, b]) s.remove();
    expect(sockets.size).toBe(0);
  });

  it('closes an expired session without asking the store, and fails closed when the store cannot answer', async () => {
    const calls: string[] = [];
    const expired = new OpenSockets({ revocations: revocations(new Set(), calls) });
    const old = track(expired, session('old', Date.now() - 1));
    await expired.check();
    expect(old.closed).toEqual(['sessionEnded']);
    expect(calls).toEqual([]);
    old.remove();

    const broken = new OpenSockets({ revocations: revocations(new Set(), [], true) });
    const s = track(broken, session('s'));
    await broken.check();
    expect(s.closed).toEqual(['storeUnavailable']);
    s.remove();
  });
});
