import { describe, expect, it } from 'vitest';
import { knownUsers, type Known } from '../../../app/admin/users/known-users';

/** Which users the admin Users list shows (app/admin/users/known-users.ts), from the top lists it read. */
const local: Known[] = [{ userId: 'local:ada', name: 'Ada', local: true, roles: ['admin'] }];
const rows = (...users: Array<string | null>) => users.map((user) => ({ user }));

describe('knownUsers', () => {
  it("the users file's users, then the last 24 hours' callers, then the window's; each once, with no row without a user", () => {
    const { known, truncated } = knownUsers(local, rows('oidc:new', 'local:ada', null), rows('oidc:old', 'oidc:new'), 10);
    expect(known.map((user) => user.userId)).toEqual(['local:ada', 'oidc:new', 'oidc:old']);
    expect(known[0]).toBe(local[0]);
    expect(known[1]).toEqual({ userId: 'oidc:new', name: null, local: false, roles: null });
    expect(truncated).toBe(false);
  });

  it("a caller of the last 24 hours is listed even when the window's top list is full of others", () => {
    const window = rows(...Array.from({ length: 3 }, (_, i) => `oidc:busy-last-month-${i}`));
    const { known, truncated } = knownUsers([], rows('oidc:busiest-today'), window, 3);
    expect(known.map((user) => user.userId)).toContain('oidc:busiest-today');
    // The window's list came back full: there may be more users than it returned.
    expect(truncated).toBe(true);
  });

  it('says it is truncated when either top list came back full, or there are more users than the page shows', () => {
    expect(knownUsers([], rows('oidc:a', 'oidc:b'), [], 2).truncated).toBe(true);
    expect(knownUsers([], [], rows('oidc:a', 'oidc:b'), 2).truncated).toBe(true);
    expect(knownUsers(local, rows('oidc:a'), rows('oidc:b'), 2).truncated).toBe(true);
    expect(knownUsers(local, rows('oidc:a'), [], 2).truncated).toBe(false);
  });
});
