import { describe, expect, it } from 'vitest';
import { SessionRevocations } from '../../../lib/core/session/revocation';
import { authTimeClaims, sessionFromClaims } from '../../../lib/core/session/session';
import { MemoryStore } from '../../../lib/store/memory';

describe('SessionRevocations with millisecond sign-in times', () => {
  const session = (authMs: number, sid = 'sid-1') =>
    sessionFromClaims({ sub: 'local:ada', sid, exp: 4_000_000_000, roles: [], ...authTimeClaims(authMs) }, 'cookie')!;

  it('refuses sessions signed in before "sign out everywhere" but not one signed in the same second after it', async () => {
    let now = 1_700_000_000_500;
    const revocations = new SessionRevocations(new MemoryStore(() => now), 3_600_000, () => now);
    const before = session(1_700_000_000_100);
    await revocations.revokeUser('local:ada');
    now += 200;
    const after = session(now, 'sid-2');
    expect(Math.floor(before.authTime / 1000)).toBe(Math.floor(after.authTime / 1000));
    expect(await revocations.isRevoked(before)).toBe(true);
    expect(await revocations.isRevoked(after)).toBe(false);
  });

  it('revokes one session by id without touching the user’s others', async () => {
    const revocations = new SessionRevocations(new MemoryStore(), 3_600_000);
    await revocations.revokeSession('sid-1');
    expect(await revocations.isRevoked(session(Date.now(), 'sid-1'))).toBe(true);
    expect(await revocations.isRevoked(session(Date.now(), 'sid-2'))).toBe(false);
  });
});

describe('createSessionVerifier: the cache of verified tokens', () => {
  it('never outlives the session’s expiry, never caches failures, and never skips the revocation check', async () => {
    const { encode } = await import('@auth/core/jwt');
    const { createSessionVerifier } = await import('../../../lib/core/session/verify');
    const { SESSION_COOKIE } = await import('../../../lib/core/session/session');
    const authSecret = 'a'.repeat(40);
    let now = Date.now();
    const store = new MemoryStore(() => now);
    const revocations = new SessionRevocations(store, 3_600_000, () => now);
    const verify = createSessionVerifier({ authSecret, sessionSecret: 'b'.repeat(40) }, { revocations, now: () => now });
    const expiresAt = Math.floor(now / 1000) + 30;
    const token = await encode({
      token: { sub: 'local:ada', sid: 'sid-c', roles: ['user'], exp: expiresAt, ...authTimeClaims(now) },
      secret: authSecret,
      salt: SESSION_COOKIE,
      maxAge: 30,
    });
    const request = () => new Request('http://keyward.test/x', { headers: { cookie: `${SESSION_COOKIE}=${token}` } });
    expect((await verify(request()))?.userId).toBe('local:ada');
    expect((await verify(request()))?.userId).toBe('local:ada'); // from the cache
    await revocations.revokeSession('sid-c');
    expect(await verify(request())).toBeNull(); // cached, but revoked: refused at once
    await store.delete('rev:sid:sid-c');
    expect((await verify(request()))?.userId).toBe('local:ada');
    now = expiresAt * 1000 + 1; // past the session's expiry, although within the cache's 60 s
    expect(await verify(request())).toBeNull();
    const tampered = new Request('http://keyward.test/x', { headers: { cookie: `${SESSION_COOKIE}=${token.slice(0, -2)}xx` } });
    expect(await verify(tampered)).toBeNull();
  });
});

describe('userIdFromSegment (a user id from an admin page path)', () => {
  it('decodes a segment that is still encoded, never one already decoded, whose sub may hold a "%" of its own', async () => {
    const { userIdFromSegment, USER_ID } = await import('../../../lib/core/session/provider-sessions');
    const sub = 'oidc:https://idp.example/a%20b';
    expect(userIdFromSegment(encodeURIComponent(sub))).toBe(sub);
    expect(userIdFromSegment(sub)).toBe(sub);
    expect(userIdFromSegment('local%3Aada')).toBe('local:ada');
    expect(userIdFromSegment('local:ada')).toBe('local:ada');
    expect(userIdFromSegment('%zz')).toBe('%zz');
    expect(USER_ID.test(sub)).toBe(true);
  });
});

describe('isAcceptedAccountId (which OIDC subs sign in)', () => {
  it("takes OIDC Core's sub: printable ASCII of at most 255 characters, a URL with spaces included", async () => {
    const { isAcceptedAccountId, USER_ID } = await import('../../../lib/core/session/provider-sessions');
    expect(isAcceptedAccountId('oidc', 'https://idp.example/users/a b+c=')).toBe(true);
    expect(isAcceptedAccountId('oidc', 's'.repeat(255))).toBe(true);
    // 256 to 295 characters still make a user id the admin API takes (300 at most), but no OIDC provider may send one.
    expect(USER_ID.test(`oidc:${'s'.repeat(256)}`)).toBe(true);
    expect(isAcceptedAccountId('oidc', 's'.repeat(256))).toBe(false);
    expect(isAcceptedAccountId('oidc', 'jöran')).toBe(false);
    expect(isAcceptedAccountId('oidc', 'tab\there')).toBe(false);
    expect(isAcceptedAccountId('oidc', '')).toBe(false);
  });
});
