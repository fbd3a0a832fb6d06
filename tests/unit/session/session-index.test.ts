import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { hashSessionId } from '../../../lib/core/audit/audit';
import { SessionRevocations } from '../../../lib/core/session/revocation';
import { SESSION_SLOTS, SessionIndex, type NewSession } from '../../../lib/core/session/session-index';
import { MemoryStore } from '../../../lib/store/memory';
import { StoreUnavailableError } from '../../../lib/store/types';
import { randomSecret } from '../../fixtures/secrets';
import { editableUsersFile, expectKeywardError, rejected } from '../support';

/**
 * The admin pages' session index (lib/core/session/session-index.ts) on the in-memory store with an injected
 * clock: what it keeps (hashes, never ids), its bound (the last SESSION_SLOTS sign-ins per user), its expiry,
 * and how the revocation marks show through.
 */
const HOUR = 3_600_000;
const MAX_AGE = 30 * 24 * HOUR;

function setup() {
  const clock = { now: Date.UTC(2027, 5, 15, 12, 0, 0) };
  const store = new MemoryStore(() => clock.now);
  const index = new SessionIndex(store, MAX_AGE, () => clock.now);
  const revocations = new SessionRevocations(store, MAX_AGE, () => clock.now);
  const session = (overrides: Partial<NewSession> = {}): NewSession => ({
    sessionId: randomUUID(),
    kind: 'browser',
    expiresAt: clock.now + 8 * HOUR,
    authTime: clock.now,
    roles: ['user'],
    ...overrides,
  });
  return { clock, store, index, revocations, session };
}

describe('SessionIndex', () => {
  it('lists a sign-in by the hash of its id (the audit records’), never the id itself', async () => {
    const { clock, store, index, session } = setup();
    const browser = session();
    await index.record('local:ada', browser);
    clock.now += 1_000;
    const mobile = session({ kind: 'mobile', expiresAt: clock.now + 30 * 24 * HOUR, roles: ['user', 'admin'] });
    await index.record('local:ada', mobile);

    const listed = await index.list('local:ada');
    expect(listed).toEqual([
      { sessionIdHash: hashSessionId(mobile.sessionId), kind: 'mobile', createdAt: clock.now, expiresAt: mobile.expiresAt, authTime: mobile.authTime, roles: ['user', 'admin'], revoked: false, expired: false },
      { sessionIdHash: hashSessionId(browser.sessionId), kind: 'browser', createdAt: clock.now - 1_000, expiresAt: browser.expiresAt, authTime: browser.authTime, roles: ['user'], revoked: false, expired: false },
    ]);
    const stored = await store.getMany(Array.from({ length: SESSION_SLOTS }, (_, slot) => `sidx:local:ada:${slot}`));
    const text = stored.filter(Boolean).join('\n');
    expect(text).toContain(hashSessionId(browser.sessionId));
    expect(text).not.toContain(browser.sessionId);
    expect(text).not.toContain(mobile.sessionId);
    expect(await index.list('local:bob')).toEqual([]);
  });

  it("with a users file, a local user's session the calls refuse is listed as revoked: another password, no version, or the user removed", async () => {
    const { users, edit } = editableUsersFile([
      { username: 'ada', roles: ['user'] },
      { username: 'bo', roles: ['user'] },
    ]);
    const { clock, store, session } = setup();
    const index = new SessionIndex(store, MAX_AGE, () => clock.now, users);
    await index.record('local:ada', session({ passwordVersion: users.find('ada')!.passwordVersion }));
    await index.record('local:ada', session()); // recorded before sessions carried a version
    await index.record('local:bo', session({ passwordVersion: users.find('bo')!.passwordVersion }));
    await index.record('oidc:cy', session());
    const revoked = async () =>
      Object.fromEntries(
        await Promise.all(['local:ada', 'local:bo', 'oidc:cy'].map(async (id) => [id, (await index.list(id)).map((v) => v.revoked)])),
      );
    expect(await revoked()).toEqual({ 'local:ada': [true, false], 'local:bo': [false], 'oidc:cy': [false] }); // newest first
    // The version itself is never in what the admin pages get.
    expect(JSON.stringify(await index.list('local:ada'))).not.toContain(users.find('ada')!.passwordVersion);

    edit([{ username: 'ada', roles: ['user'], password: randomSecret('new-password') }]);
    expect(await revoked()).toEqual({ 'local:ada': [true, true], 'local:bo': [true], 'oidc:cy': [false] });
  });

  it('keeps only the last SESSION_SLOTS sign-ins of a user, newest first', async () => {
    const { clock, index, session } = setup();
    const ids: string[] = [];
    for (let i = 0; i < SESSION_SLOTS + 5; i++) {
      clock.now += 1_000;
      const next = session();
      ids.push(next.sessionId);
      await index.record('local:ada', next);
    }
    const listed = await index.list('local:ada');
    expect(listed).toHaveLength(SESSION_SLOTS);
    expect(listed.map((entry) => entry.sessionIdHash)).toEqual(ids.slice(-SESSION_SLOTS).reverse().map(hashSessionId));
  });

  it('shows an expired session as expired for a minute, then forgets it', async () => {
    const { clock, index, session } = setup();
    await index.record('local:ada', session({ expiresAt: clock.now + HOUR }));
    clock.now += HOUR;
    expect((await index.list('local:ada')).map((entry) => entry.expired)).toEqual([true]);
    clock.now += 60_001;
    expect(await index.list('local:ada')).toEqual([]);
  });

  it('marks a signed-out session revoked (by its hash), and every session signed in before "sign out everywhere"', async () => {
    const { clock, index, revocations, session } = setup();
    const first = session();
    const second = session();
    await index.record('local:ada', first);
    await index.record('local:ada', second);
    await index.record('local:bob', session());

    await revocations.revokeSession(first.sessionId);
    let listed = await index.list('local:ada');
    expect(listed.find((entry) => entry.sessionIdHash === hashSessionId(first.sessionId))?.revoked).toBe(true);
    expect(listed.find((entry) => entry.sessionIdHash === hashSessionId(second.sessionId))?.revoked).toBe(false);

    clock.now += 1_000;
    await revocations.revokeUser('local:ada');
    clock.now += 1_000;
    const after = session();
    await index.record('local:ada', after);
    listed = await index.list('local:ada');
    expect(listed.map((entry) => [entry.sessionIdHash, entry.revoked])).toEqual([
      [hashSessionId(after.sessionId), false],
      [hashSessionId(second.sessionId), true],
      [hashSessionId(first.sessionId), true],
    ]);
    // Another user's sessions are untouched.
    expect((await index.list('local:bob')).map((entry) => entry.revoked)).toEqual([false]);
  });

  it('lists many users at once, each with their own sessions', async () => {
    const { index, session } = setup();
    await index.record('local:ada', session());
    await index.record('oidc:42', session({ kind: 'mobile' }));
    const all = await index.listMany(['local:ada', 'oidc:42', 'local:nobody']);
    expect([...all.keys()]).toEqual(['local:ada', 'oidc:42', 'local:nobody']);
    expect(all.get('local:ada')!.map((entry) => entry.kind)).toEqual(['browser']);
    expect(all.get('oidc:42')!.map((entry) => entry.kind)).toEqual(['mobile']);
    expect(all.get('local:nobody')).toEqual([]);
  });

  it('ignores a slot that holds something else, and fails closed (503) when the store is down', async () => {
    const { store, index, session } = setup();
    await store.set('sidx:local:ada:3', 'not json');
    await store.set('sidx:local:ada:4', JSON.stringify({ kind: 'desktop' }));
    expect(await index.list('local:ada')).toEqual([]);

    const down = new MemoryStore();
    down.getMany = async () => {
      throw new StoreUnavailableError('memory');
    };
    down.increment = down.getMany as never;
    const broken = new SessionIndex(down, MAX_AGE);
    expectKeywardError(await rejected(broken.list('local:ada')), 'store_unavailable');
    expectKeywardError(await rejected(broken.record('local:ada', session())), 'store_unavailable');
  });
});

/**
 * Two instances sharing one store, the one that handles "sign out everywhere" with its clock behind the one that
 * signed the user in: the mark must still reach every recorded sign-in (SessionRevocations.markTime).
 */
describe('"sign out everywhere" across instances whose clocks disagree', () => {
  function instances(aheadMs: number) {
    const real = { now: Date.UTC(2027, 5, 15, 12, 0, 0) };
    const store = new MemoryStore(() => real.now);
    const clockOf = (offset: number) => () => real.now + offset;
    const ahead = { index: new SessionIndex(store, MAX_AGE, clockOf(aheadMs)), now: clockOf(aheadMs) };
    const index = new SessionIndex(store, MAX_AGE, clockOf(0));
    const behind = new SessionRevocations(store, MAX_AGE, clockOf(0), (userId) => index.latestSignIn(userId));
    return { real, ahead, behind };
  }
  const signedIn = (authTime: number) => ({ sessionId: randomUUID(), userId: 'local:ada', authTime });

  it('revokes a session signed in a moment before on an instance whose clock is 3 s ahead', async () => {
    const { real, ahead, behind } = instances(3_000);
    const victim = signedIn(ahead.now());
    await ahead.index.record('local:ada', { sessionId: victim.sessionId, kind: 'browser', expiresAt: ahead.now() + 8 * HOUR, authTime: victim.authTime, roles: ['user'] });
    real.now += 1_000;
    await behind.revokeUser('local:ada');
    expect(await behind.isRevoked(victim)).toBe(true);
    // The detector's undoable revocation reaches as far.
    const plan = await behind.planUserRevocation('local:ada');
    expect(Number(plan[0]!.mark)).toBe(victim.authTime);
  });

  it('a sign-in time more than a minute ahead counts as a minute ahead: a wrong clock cannot lock the user out for a lifetime', async () => {
    const { real, ahead, behind } = instances(24 * HOUR);
    await ahead.index.record('local:ada', { sessionId: randomUUID(), kind: 'browser', expiresAt: ahead.now() + 8 * HOUR, authTime: ahead.now(), roles: ['user'] });
    await behind.revokeUser('local:ada');
    real.now += 61_000;
    expect(await behind.isRevoked(signedIn(real.now))).toBe(false);
  });

  it('with nothing recorded the mark is this instance\'s now', async () => {
    const { real, behind } = instances(0);
    await behind.revokeUser('local:bob');
    expect(await behind.isRevoked({ sessionId: randomUUID(), userId: 'local:bob', authTime: real.now })).toBe(true);
    real.now += 1;
    expect(await behind.isRevoked({ sessionId: randomUUID(), userId: 'local:bob', authTime: real.now })).toBe(false);
  });
});
