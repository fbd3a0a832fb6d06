import type { Logger } from 'pino';
import { localUsername, type LocalUsers } from './file';

/**
 * Whose stored secrets (own keys, connected accounts) a call may use: the session's user and, for a local user,
 * the password version they signed in with (Session.passwordVersion; a Session is an Owner).
 */
export interface Owner {
  readonly userId: string;
  readonly passwordVersion?: string | null;
}

/**
 * Whether a record stored under the owner's user id is theirs:
 * - `own`: any user but a local one (an identity provider's subject stays one person), or a local user's record
 *   stamped with the owner's password version;
 * - `unstamped`: a local user's record stored before records were stamped; taken as the owner's, and stamped
 *   with their password version at its first use (the one window left: README "Known limits");
 * - `other`: a local user's record stamped with another password version. The name was given to someone else
 *   (or the password reset) while no server saw it removed: for this owner the record does not exist. It is
 *   never deleted for it (a rolling deploy or an admin's mistake must not destroy anything).
 */
export type Ownership = 'own' | 'unstamped' | 'other';

export function ownership(owner: Owner, stamp: unknown): Ownership {
  if (localUsername(owner.userId) === null) return 'own';
  if (stamp === undefined || stamp === null) return 'unstamped';
  return stamp === owner.passwordVersion ? 'own' : 'other';
}

/** What a record stored for `owner` is stamped with: a local user's password version; null for other users. */
export function ownerStamp(owner: Owner): string | null {
  return localUsername(owner.userId) === null ? null : (owner.passwordVersion ?? null);
}

/** A user as the users file has them now (an admin's view of someone else's records, where no session is at hand). */
export function fileOwner(userId: string, users: Pick<LocalUsers, 'find'> | null): Owner {
  const username = localUsername(userId);
  return { userId, passwordVersion: username === null ? null : (users?.find(username)?.passwordVersion ?? null) };
}

/** Records this process has warned of; past this many it starts over (bounded memory). */
const WARNED_MAX = 10_000;

/**
 * The warning that a call found a record stored under another password (`other`): once per user and upstream
 * (or provider) per process, naming them and never the secret.
 */
export class OtherOwnerWarnings {
  private readonly warned = new Set<string>();

  constructor(private readonly logger: Pick<Logger, 'warn'> | null) {}

  warn(userId: string, where: { readonly upstream: string } | { readonly provider: string }): void {
    const key = `${userId}\u0000${'upstream' in where ? `u:${where.upstream}` : `p:${where.provider}`}`;
    if (this.warned.has(key)) return;
    if (this.warned.size >= WARNED_MAX) this.warned.clear();
    this.warned.add(key);
    this.logger?.warn(
      { userId, ...where },
      'a stored secret of this user was stored under an earlier password (the name was given to someone else, or the password reset): treated as absent, kept in the store',
    );
  }
}
