/**
 * Which users the admin Users list shows, from what it read: the users file's, those with calls in the last 24
 * hours (`recent`, busiest first) and the busiest of the longer window (`window`); listed busiest in the last 24
 * hours first (then by id), at most `max`. So the busiest now are never left out for the busiest of a month, or for
 * the users file's order. `truncated` says whether users were left out: more than `max` in all, or a top list that
 * came back full (it was cut at `max`). Plain data in, plain data out (tests/unit/admin/known-users.test.ts).
 */
export interface Known {
  readonly userId: string;
  readonly name: string | null;
  readonly local: boolean;
  readonly roles: readonly string[] | null;
}

export function knownUsers(
  local: readonly Known[],
  recent: readonly { readonly user?: string | null; readonly calls: number }[],
  window: readonly { readonly user?: string | null }[],
  max: number,
): { listed: Known[]; truncated: boolean } {
  const byId = new Map(local.map((user) => [user.userId, user]));
  for (const row of [...recent, ...window]) {
    // Calls refused before a session was known have no user.
    if (row.user && !byId.has(row.user)) byId.set(row.user, { userId: row.user, name: null, local: false, roles: null });
  }
  const calls = new Map(recent.flatMap((row) => (row.user ? [[row.user, row.calls] as const] : [])));
  const listed = [...byId.values()]
    .sort((a, b) => (calls.get(b.userId) ?? 0) - (calls.get(a.userId) ?? 0) || a.userId.localeCompare(b.userId))
    .slice(0, max);
  return { listed, truncated: byId.size > max || recent.length >= max || window.length >= max };
}
