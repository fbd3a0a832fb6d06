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
    await revocations.revokeSession('sid-1', Date.now() + 60_000);
    expect(await revocations.isRevoked(session(Date.now(), 'sid-1'))).toBe(true);
    expect(await revocations.isRevoked(session(Date.now(), 'sid-2'))).toBe(false);
  });
});
