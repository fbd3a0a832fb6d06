import 'server-only';
import { keyward } from '@/keyward';
import type { Owner } from '@/lib/core/users/owner';
import { utc } from '@/lib/core/time';

/** A user's own key for one upstream as the pages show it: never the key; the last 4 only to its owner. */
export interface OwnKeyView {
  readonly upstream: string;
  readonly fingerprint: string;
  readonly last4?: string;
  readonly createdAt: string;
  readonly lastUsedAt: string | null;
}

export type OwnKeyEntry = { readonly upstream: string; readonly key: OwnKeyView | null };

/**
 * The user's own key for each upstream that takes one, as GET /api/keys/<upstream> describes it, picked field by
 * field: only what that API shows reaches a page. `last4` for the owner's own page (My usage), not for admins. A
 * key a local user's name had under another password is "no key", as the calls take it (users/owner.ts).
 */
export async function loadOwnKeys(owner: Owner, { last4 }: { readonly last4: boolean }): Promise<OwnKeyEntry[]> {
  const userKeys = keyward.getRuntime().userKeys;
  const upstreams = keyward.upstreamSummaries().filter((u) => u.credential === 'own-key');
  if (!userKeys) return upstreams.map((u) => ({ upstream: u.id, key: null }));
  return Promise.all(
    upstreams.map(async ({ id }) => {
      const info = await userKeys.describe(id, owner);
      const key = info && { upstream: id, fingerprint: info.fingerprint, createdAt: info.createdAt, lastUsedAt: info.lastUsedAt, ...(last4 ? { last4: info.last4 } : {}) };
      return { upstream: id, key };
    }),
  );
}

/** The table of a user's own keys (My usage, the admin's user page). */
export function OwnKeyTable({ keys, testIdPrefix }: { keys: readonly OwnKeyEntry[]; testIdPrefix: string }) {
  return (
    <table>
      <tbody>
        {keys.map(({ upstream, key }) => (
          <tr key={upstream} data-testid={`${testIdPrefix}-${upstream}`}>
            <td>
              <code>{upstream}</code>
            </td>
            <td>
              {key ? (
                <span className="small">
                  {key.last4 !== undefined && <>Ends in …{key.last4} · </>}fingerprint <code>{key.fingerprint}</code> · added {utc(key.createdAt)} · last used{' '}
                  {key.lastUsedAt ? utc(key.lastUsedAt) : 'never'}
                </span>
              ) : (
                <span className="badge neutral">no key</span>
              )}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
