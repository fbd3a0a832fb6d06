import { describe, expect, it } from 'vitest';
import { defineUpstream } from '../../../lib/core/config/load';
import { createRuntime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import type { SessionRevocations } from '../../../lib/core/session/revocation';
import type { Session } from '../../../lib/core/session/session';
import type { Upstream } from '../../../lib/core/upstream/registry';
import { OpenSockets, type CloseCause } from '../../../lib/core/ws/sockets';
import { editableUsersFile } from '../support';
import { randomSecret } from '../../fixtures/secrets';

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

const upstream = { id: 'rt', credential: { source: 'user-key' }, fingerprints: { of: (key: string) => `fp(${key})` } } as unknown as Upstream;
const linked = { id: 'linked', credential: { source: 'oauth', provider: 'acme' } } as unknown as Upstream;

function revocations(revoked: Set<string>, calls: string[], fail = false): SessionRevocations {
  return {
    isRevoked: async (s: Pick<Session, 'sessionId'>) => {
      calls.push(s.sessionId);
      if (fail) throw new Error('store down');
      return revoked.has(s.sessionId);
    },
  } as unknown as SessionRevocations;
}

function track(
  sockets: OpenSockets,
  s: Session,
  fingerprint = 'f',
  on = upstream,
): { closed: CloseCause[]; remove: () => void } {
  const closed: CloseCause[] = [];
  const remove = sockets.add({ session: s, upstream: on, fingerprint, close: (cause) => closed.push(cause) });
  return { closed, remove };
}

/** Users' stored keys by `upstream/user`, read as UserKeys.currentFingerprint reads them. */
function userKeys(keys: Map<string, string>, reads: string[], fail = { now: false }) {
  return {
    currentFingerprint: async (upstreamId: string, { userId }: { userId: string }, fingerprints: { of(key: string): string }) => {
      reads.push(`${upstreamId}/${userId}`);
      if (fail.now) throw new Error('store down');
      const key = keys.get(`${upstreamId}/${userId}`);
      return key === undefined ? null : fingerprints.of(key);
    },
  };
}

/** Users' OAuth grants by `provider/user`, read as OAuthTokenStore.hasGrant reads them. */
function grants(held: Set<string>, reads: string[], fail = { now: false }) {
  return {
    hasGrant: async (provider: string, userId: string) => {
      reads.push(`${provider}/${userId}`);
      if (fail.now) throw new Error('store down');
      return held.has(`${provider}/${userId}`);
    },
  };
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

  it("closes a local user's sockets when the users file removes the user or changes their password (session ended), or changes their roles or claims (session changed)", async () => {
    const { users, edit } = editableUsersFile([
      { username: 'ada', roles: ['user', 'admin'], claims: { org: 'acme' } },
      { username: 'bo', roles: ['user'] },
      { username: 'cy', roles: ['user'] },
    ]);
    const sockets = new OpenSockets({ revocations: revocations(new Set(), []), users });
    // As signed in: with the password version the file gave at the time.
    const local = (sessionId: string, username: string, roles: string[], claims: Record<string, string> = {}): Session => ({
      ...session(sessionId),
      userId: `local:${username}`,
      roles,
      claims,
      passwordVersion: users.find(username)!.passwordVersion,
    });
    const ada = track(sockets, local('ada-1', 'ada', ['user', 'admin'], { org: 'acme' }));
    const bo = track(sockets, local('bo-1', 'bo', ['user']));
    const cy = track(sockets, local('cy-1', 'cy', ['user']));
    const oidc = track(sockets, { ...session('oidc-1'), userId: 'oidc:ada', roles: ['admin'] });
    await sockets.check();
    expect([ada.closed, bo.closed, cy.closed, oidc.closed]).toEqual([[], [], [], []]);

    edit([
      { username: 'ada', roles: ['user', 'admin'], claims: { org: 'acme' } },
      { username: 'bo', roles: ['user'] },
      { username: 'cy', roles: ['user'], password: randomSecret('new-password') },
    ]);
    await sockets.check();
    expect([ada.closed, bo.closed, cy.closed, oidc.closed]).toEqual([[], [], ['sessionEnded'], []]);

    edit([
      { username: 'ada', roles: ['admin', 'user'], claims: { org: 'acme' }, name: 'Ada L.' }, // a new name and order only
      { username: 'bo', roles: ['user'], claims: { org: 'globex' } },
    ]);
    await sockets.check();
    expect([ada.closed, bo.closed, oidc.closed]).toEqual([[], ['sessionChanged'], []]);

    edit([{ username: 'bo', roles: ['user'] }]);
    await sockets.check();
    expect([ada.closed, oidc.closed]).toEqual([['sessionEnded'], []]);
    for (const s of [ada, bo, cy, oidc]) s.remove();
  });

  it('each socket of a session ends with the cookie or token it was opened with (an app refreshes its token: same session, later expiry)', async () => {
    const calls: string[] = [];
    const sockets = new OpenSockets({ revocations: revocations(new Set(), calls) });
    // The older token's socket opened first, then the newer's; and the other way round in a second session.
    const older = track(sockets, session('app', Date.now() - 1));
    const newer = track(sockets, session('app'));
    const newerFirst = track(sockets, session('app-2'));
    const olderSecond = track(sockets, session('app-2', Date.now() - 1));
    await sockets.check();
    expect([older.closed, newer.closed, newerFirst.closed, olderSecond.closed]).toEqual([['sessionEnded'], [], [], ['sessionEnded']]);
    expect(calls.sort()).toEqual(['app', 'app-2']);
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

  it("closes a socket whose owner deleted or replaced their own key, once per user and upstream", async () => {
    const keys = new Map([['rt/user-a', 'key-1'], ['rt/user-b', 'key-2']]);
    const reads: string[] = [];
    const fail = { now: false };
    const sockets = new OpenSockets({ revocations: revocations(new Set(), []), userKeys: userKeys(keys, reads, fail) });
    const a1 = track(sockets, session('a'), 'fp(key-1)');
    const a2 = track(sockets, session('a'), 'fp(key-1)');
    const b = track(sockets, session('b'), 'fp(key-2)');
    await sockets.check();
    expect(reads.sort()).toEqual(['rt/user-a', 'rt/user-b']);
    expect([a1.closed, a2.closed, b.closed]).toEqual([[], [], []]);

    keys.set('rt/user-a', 'key-3'); // replaced
    await sockets.check();
    expect([a1.closed, a2.closed, b.closed]).toEqual([['keyRevoked'], ['keyRevoked'], []]);
    a1.remove();
    a2.remove();

    keys.delete('rt/user-b'); // deleted
    await sockets.check();
    expect(b.closed).toEqual(['keyRevoked']);
    b.remove();

    const c = track(sockets, session('c'), 'fp(key-c)');
    fail.now = true;
    await sockets.check();
    expect(c.closed).toEqual(['storeUnavailable']);
    c.remove();
  });

  it('closes the sockets on an OAuth grant once it is disconnected or ended, once per user and upstream', async () => {
    const held = new Set(['acme/user-a', 'acme/user-b']);
    const reads: string[] = [];
    const fail = { now: false };
    const sockets = new OpenSockets({ revocations: revocations(new Set(), []), oauthTokens: grants(held, reads, fail) });
    const a1 = track(sockets, session('a'), 'fp(token-1)', linked);
    const a2 = track(sockets, session('a'), 'fp(token-2)', linked);
    const b = track(sockets, session('b'), 'fp(token-3)', linked);
    const keyed = track(sockets, session('k'), 'fp(key)'); // an own key's socket: not a grant's
    await sockets.check();
    expect(reads.sort()).toEqual(['acme/user-a', 'acme/user-b']);
    expect([a1.closed, a2.closed, b.closed]).toEqual([[], [], []]);

    held.delete('acme/user-a');
    await sockets.check();
    expect([a1.closed, a2.closed, b.closed, keyed.closed]).toEqual([['keyRevoked'], ['keyRevoked'], [], []]);
    a1.remove();
    a2.remove();

    fail.now = true;
    await sockets.check();
    expect(b.closed).toEqual(['storeUnavailable']);
  });
});

describe('a stop (closeAll)', () => {
  it('closes every open socket, aborts `closing` with a 503 answer, and closes a socket registered afterwards', async () => {
    const sockets = new OpenSockets({ revocations: revocations(new Set(), []) });
    const before = track(sockets, session('a'));
    expect(sockets.closing.aborted).toBe(false);
    sockets.closeAll();
    expect(before.closed).toEqual(['shutdown']);
    expect(sockets.closing.aborted).toBe(true);
    expect(sockets.closing.reason).toMatchObject({ code: 'service_unavailable', status: 503 });
    // A handshake that completed during the stop: closed once add has returned, never left open.
    const after = track(sockets, session('b'));
    expect(after.closed).toEqual([]);
    await Promise.resolve();
    expect(after.closed).toEqual(['shutdown']);
    before.remove();
    after.remove();
    expect(sockets.size).toBe(0);
  });
});

describe('open WebSockets on a service key', () => {
  it('close when the key-ring version they use is revoked, also one added under an earlier KEYWARD_SESSION_SECRET (another fingerprint)', async () => {
    // Two runtimes on one store: the version is added under one session secret and used after it was rotated.
    const store = new MemoryStore();
    const shared = { AUTH_SECRET: randomSecret('auth'), KEYWARD_VAULT_SECRET: randomSecret('vault-secret-of-32-characters-or-more'), SVC_KEY: randomSecret('env') };
    const runtime = (sessionSecret: string) =>
      createRuntime({
        env: { ...shared, KEYWARD_SESSION_SECRET: sessionSecret, KEYWARD_STORE: 'memory' },
        store,
        upstreams: [
          defineUpstream('svc', {
            baseUrl: 'http://127.0.0.1:9/v1/',
            auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
            routes: [{ method: 'GET', path: '/realtime', websocket: true }],
          }),
        ],
      });
    const before = runtime(randomSecret('sess'));
    const managed = randomSecret('managed');
    expect((await before.keyRings!.rotate('svc', managed, { skipCanary: true, actor: 'local:root' })).state).toBe('switched');
    const after = runtime(randomSecret('sess'));
    const svc = after.registry.get('svc')!;
    const used = await after.keyRings!.credential(svc);
    // The ring lists the version under the fingerprint it was added with, the socket holds today's.
    const listed = (await after.keyRings!.list())[0]!.versions.find((v) => v.id.startsWith('managed:'))!;
    expect(listed.fingerprint).not.toBe(used.fingerprint);

    const sockets = new OpenSockets({ revocations: after.revocations, keyRings: after.keyRings });
    const closed: CloseCause[] = [];
    sockets.add({ session: session('s-svc'), upstream: svc, fingerprint: used.fingerprint, close: (cause) => closed.push(cause) });
    await sockets.check();
    expect(closed).toEqual([]);
    await after.keyRings!.revoke(listed.fingerprint);
    await sockets.check();
    expect(closed).toEqual(['keyRevoked']);
  });
});

