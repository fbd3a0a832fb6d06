import { describe, expect, it } from 'vitest';
import { knownUsers, type Known } from '../../../app/admin/users/known-users';

/** Which users the admin Users list shows (app/admin/users/known-users.ts), from the top lists it read. */
const local: Known[] = [{ userId: 'local:ada', name: 'Ada', local: true, roles: ['admin'] }];
const recent = (...rows: Array<[string | null, number]>) => rows.map(([user, calls]) => ({ user, calls }));
const window = (...users: Array<string | null>) => users.map((user) => ({ user }));
const ids = (listed: readonly Known[]) => listed.map((user) => user.userId);

describe('knownUsers', () => {
  it("the users file's users and every caller, each once, busiest in the last 24 hours first, then by id; no row without a user", () => {
    const { listed, truncated } = knownUsers(local, recent(['oidc:new', 5], ['local:ada', 9], [null, 50]), window('oidc:old', 'oidc:new', 'oidc:b'), 10);
    expect(ids(listed)).toEqual(['local:ada', 'oidc:new', 'oidc:b', 'oidc:old']);
    expect(listed[0]).toBe(local[0]);
    expect(listed[1]).toEqual({ userId: 'oidc:new', name: null, local: false, roles: null });
    expect(truncated).toBe(false);
  });

  it("the busiest of the last 24 hours are listed, whoever else the users file or the month's top list holds", () => {
    const many: Known[] = Array.from({ length: 3 }, (_, i) => ({ userId: `local:a${i}`, name: null, local: true, roles: [] }));
    const { listed, truncated } = knownUsers(many, recent(['oidc:z-busiest-today', 40]), window('oidc:a-last-month', 'oidc:b-last-month'), 3);
    expect(ids(listed)).toEqual(['oidc:z-busiest-today', 'local:a0', 'local:a1']);
    expect(truncated).toBe(true);
  });

  it('says it is truncated when either top list came back full, or there are more users than the page shows', () => {
    expect(knownUsers([], recent(['oidc:a', 1], ['oidc:b', 1]), [], 2).truncated).toBe(true);
    expect(knownUsers([], [], window('oidc:a', 'oidc:b'), 2).truncated).toBe(true);
    expect(knownUsers(local, recent(['oidc:a', 1]), window('oidc:b'), 2).truncated).toBe(true);
    expect(knownUsers(local, recent(['oidc:a', 1]), [], 2).truncated).toBe(false);
  });
});
