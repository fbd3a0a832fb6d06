import { describe, expect, it } from 'vitest';
import { pick, type KeyVersion } from '../../../lib/core/keys/rings';

/**
 * `pick`: which version of a service key serves a call. Versions are plain records here (no store, no
 * values): the newest usable active version wins; a retired one in its grace window only when no active
 * version is usable; expired, not-yet-valid and revoked versions never.
 */
const NOW = Date.parse('2030-06-01T12:00:00Z');
const HOUR = 3_600_000;

let counter = 0;
function version(overrides: Partial<KeyVersion> = {}): KeyVersion {
  counter += 1;
  const id = overrides.id ?? `v${counter}`;
  return {
    id,
    fingerprint: counter.toString(16).padStart(12, '0'),
    source: 'managed',
    created: NOW - 100 * HOUR,
    notBefore: null,
    expiresAt: null,
    state: 'active',
    activatedAt: NOW - 10 * HOUR,
    retiredAt: null,
    graceUntil: null,
    revokedAt: null,
    ...overrides,
  };
}

const retired = (overrides: Partial<KeyVersion> = {}) =>
  version({ state: 'retired', retiredAt: NOW - HOUR, graceUntil: NOW + HOUR, ...overrides });

const idOf = (versions: readonly KeyVersion[], now = NOW) => pick(versions, now)?.id ?? null;

describe('pick', () => {
  it('nothing at all → null', () => {
    expect(pick([], NOW)).toBeNull();
  });

  it('the newest usable active version wins, whatever the order', () => {
    const older = version({ id: 'older', activatedAt: NOW - 5 * HOUR });
    const newer = version({ id: 'newer', activatedAt: NOW - HOUR });
    const oldest = version({ id: 'oldest', activatedAt: 0 });
    expect(idOf([older, newer, oldest])).toBe('newer');
    expect(idOf([newer, oldest, older])).toBe('newer');
    expect(idOf([oldest, older])).toBe('older');
  });

  it('returns the version record itself', () => {
    const only = version();
    expect(pick([only], NOW)).toBe(only);
  });

  it('an active version whose notBefore is in the future is not used; it takes over at notBefore exactly', () => {
    const current = version({ id: 'current', activatedAt: 0 });
    const future = version({ id: 'future', notBefore: NOW + HOUR, activatedAt: NOW + HOUR });
    expect(idOf([current, future])).toBe('current');
    expect(idOf([current, future], NOW + HOUR - 1)).toBe('current');
    expect(idOf([current, future], NOW + HOUR)).toBe('future');
    // Alone, a not-yet-valid version serves nothing.
    expect(idOf([future])).toBeNull();
  });

  it('an expired version is never used, active or in a grace window; expiry is exclusive of the instant', () => {
    const expiring = version({ id: 'expiring', activatedAt: NOW - HOUR, expiresAt: NOW + HOUR });
    const older = version({ id: 'older', activatedAt: NOW - 5 * HOUR });
    expect(idOf([expiring, older])).toBe('expiring');
    expect(idOf([expiring, older], NOW + HOUR - 1)).toBe('expiring');
    expect(idOf([expiring, older], NOW + HOUR)).toBe('older');
    expect(idOf([expiring], NOW + HOUR)).toBeNull();
    // Expired while still inside its grace window: not a fallback either.
    const expiredFallback = retired({ id: 'expired-fallback', expiresAt: NOW - 1 });
    expect(idOf([expiredFallback])).toBeNull();
  });

  it('a revoked version is never used, even the newest or one whose grace window is open', () => {
    const revoked = version({ id: 'revoked', state: 'revoked', activatedAt: NOW, revokedAt: NOW });
    const other = version({ id: 'other', activatedAt: NOW - 5 * HOUR });
    expect(idOf([revoked, other])).toBe('other');
    expect(idOf([revoked])).toBeNull();
    const revokedInGrace = version({ id: 'revoked-grace', state: 'revoked', retiredAt: NOW - HOUR, graceUntil: NOW + HOUR, revokedAt: NOW });
    expect(idOf([revokedInGrace])).toBeNull();
  });

  it('a retired version in its grace window is used only when no active version is usable', () => {
    const fallback = retired({ id: 'fallback', activatedAt: NOW - 20 * HOUR });
    const active = version({ id: 'active', activatedAt: NOW - 30 * HOUR });
    // An active version wins even when it is older than the retired one.
    expect(idOf([fallback, active])).toBe('active');
    expect(idOf([fallback])).toBe('fallback');
    // The active version becomes unusable (revoked, expired, not yet valid): the fallback serves.
    expect(idOf([fallback, { ...active, state: 'revoked' }])).toBe('fallback');
    expect(idOf([fallback, { ...active, expiresAt: NOW }])).toBe('fallback');
    expect(idOf([fallback, { ...active, notBefore: NOW + 1 }])).toBe('fallback');
  });

  it('a grace window is exclusive of its end; a retired version without one never serves', () => {
    const fallback = retired({ id: 'fallback', graceUntil: NOW + HOUR });
    expect(idOf([fallback], NOW + HOUR - 1)).toBe('fallback');
    expect(idOf([fallback], NOW + HOUR)).toBeNull();
    expect(idOf([retired({ graceUntil: null })])).toBeNull();
    // Retired "at once" (a failed canary): graceUntil equals the retirement time.
    expect(idOf([retired({ retiredAt: NOW, graceUntil: NOW })])).toBeNull();
  });

  it('among fallbacks, the most recently retired one serves', () => {
    const earlier = retired({ id: 'earlier', retiredAt: NOW - 3 * HOUR, graceUntil: NOW + 5 * HOUR });
    const later = retired({ id: 'later', retiredAt: NOW - HOUR, graceUntil: NOW + HOUR });
    expect(idOf([earlier, later])).toBe('later');
    expect(idOf([later, earlier])).toBe('later');
    expect(idOf([earlier, later], NOW + HOUR)).toBe('earlier');
  });

  it('a version in state next never serves, not even alone', () => {
    const next = version({ id: 'next', state: 'next', activatedAt: null });
    expect(idOf([next])).toBeNull();
    const active = version({ id: 'active' });
    expect(idOf([next, active])).toBe('active');
  });

  it('nothing usable at all → null', () => {
    expect(
      pick(
        [
          version({ state: 'revoked' }),
          version({ expiresAt: NOW - 1 }),
          version({ notBefore: NOW + 1 }),
          retired({ graceUntil: NOW - 1 }),
          version({ state: 'next' }),
        ],
        NOW,
      ),
    ).toBeNull();
  });
});
