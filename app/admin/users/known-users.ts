/**
 * Which users the admin Users list shows, from what it read: the users file's, then those with calls in the last
 * 24 hours (`recent`, busiest first), then the busiest of the longer window (`window`). Recent callers come before
 * the window's, so the busiest now are never left out for the busiest of a month, and `truncated` says whether
 * users were left out: more than `max` in all, or a top list that came back full (it was cut at `max`).
 * Plain data in, plain data out (tests/unit/admin/known-users.test.ts).
 */
export interface Known {
  readonly userId: string;
  readonly name: string | null;
  readonly local: boolean;
  readonly roles: readonly string[] | null;
}

export function knownUsers(
  local: readonly Known[],
  recent: readonly { readonly user?: string | null }[],
  window: readonly { readonly user?: string | null }[],
  max: number,
): { known: Known[]; truncated: boolean } {
  const byId = new Map(local.map((user) => [user.userId, user]));
  for (const row of [...recent, ...window]) {
    // Calls refused before a session was known have no user.
    if (row.user && !byId.has(row.user)) byId.set(row.user, { userId: row.user, name: null, local: false, roles: null });
  }
  return { known: [...byId.values()], truncated: byId.size > max || recent.length >= max || window.length >= max };
}
