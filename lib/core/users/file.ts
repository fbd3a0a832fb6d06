import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ConfigError } from '../config/load';
import { jsonErrorAt } from '../config/error';
import { formatIssues } from '../config/schema';
import { costOf, decoyHash, isPasswordHash, strongestHash, verifyPassword } from './password';
import { stringClaims } from '../session/session';

const usersFileSchema = z.strictObject({
  users: z
    .array(
      z.strictObject({
        username: z.string().regex(/^[A-Za-z0-9._@-]{1,64}$/, 'letters, digits and . _ @ - only (1 to 64)'),
        passwordHash: z.string().refine(isPasswordHash, 'must be a hash from `npm run keyward -- hash-password`'),
        roles: z.array(z.string().min(1).max(64)).default(['user']),
        claims: z
          .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/), z.string().max(128))
          .default({})
          .describe('Extra session claims, e.g. {"org": "acme"}.'),
        name: z.string().max(128).optional(),
      }),
    )
    .min(1, 'must list at least one user (an empty file would leave a sign-in form nobody can use)')
    .refine((users) => new Set(users.map((u) => u.username)).size === users.length, 'usernames must be unique'),
});

export interface LocalUser {
  readonly username: string;
  readonly name: string;
  readonly roles: readonly string[];
  readonly claims: Readonly<Record<string, string>>;
}

/**
 * A user as sessions are checked against: with the version of their password, a digest of the file's
 * `passwordHash`. Sessions and app tokens carry the version they signed in with; one that no longer matches (the
 * password was changed, or the name was removed and given back with another password) is no session at all, as
 * Django's session auth hash does. It is not a secret (a digest of a salted scrypt hash says nothing about the
 * password without the hash), but it only ever travels sealed: in the session cookie, an app token, the store.
 */
export interface CheckedUser extends LocalUser {
  readonly passwordVersion: string;
}

export interface LocalUsers {
  authenticate(username: string, password: string): Promise<CheckedUser | null>;
  /** The user as the file describes it now (no password check), or null: for re-reading roles. */
  find(username: string): CheckedUser | null;
  /** Every user in the file, in its order (no password hashes): for the admin dashboard's user list. */
  list(): LocalUser[];
}

/** How often, at most, the users file is checked for a change (one `stat`). */
export const USERS_RECHECK_MS = 2_000;

/** A local user's subject (the session's and the app tokens' `sub`) is `local:<username>` (lib/next/auth.ts). */
export const LOCAL_SUBJECT_PREFIX = 'local:';

/** The username in a local user's subject; null for any other subject (an identity provider's). */
export function localUsername(subject: string): string | null {
  return subject.startsWith(LOCAL_SUBJECT_PREFIX) ? subject.slice(LOCAL_SUBJECT_PREFIX.length) : null;
}

/** What of a session or token the users file decides for a local user. */
interface UserView {
  readonly userId: string;
  readonly name: string | null;
  readonly roles: readonly string[];
  readonly claims: Readonly<Record<string, string>>;
  /** The password version the user signed in with (CheckedUser); null or absent: none (an older session). */
  readonly passwordVersion?: string | null;
}

/**
 * A session (or token) as the users file describes its user now: a local user's name, roles and claims from the
 * file as this process last read it (at most USERS_RECHECK_MS ago), or null when the user is no longer in it or
 * their password is no longer the one they signed in with, so a role taken away, a password changed or a user
 * removed applies to sessions already signed in, not only at the next sign-in. A local session without a
 * password version (sealed before sessions carried one) is null too: it cannot show it is still the same person.
 * Any other user's (an identity provider's) is returned as it is: there is nothing to read again without them.
 */
export function currentLocalUser<T extends UserView>(view: T, users: Pick<LocalUsers, 'find'>): T | null {
  const username = localUsername(view.userId);
  if (username === null) return view;
  const user = users.find(username);
  if (!user || user.passwordVersion !== view.passwordVersion) return null;
  return { ...view, name: user.name, roles: [...user.roles], claims: stringClaims(user.claims) };
}

/**
 * Whether a session a stored record speaks for (a pending connect, the session index) is one the calls still take:
 * currentLocalUser on what the record keeps, its user and password version.
 */
export function localSessionHolds(userId: string, passwordVersion: string | null, users: Pick<LocalUsers, 'find'>): boolean {
  return currentLocalUser({ userId, name: null, roles: [], claims: {}, passwordVersion }, users) !== null;
}

/** A password's version: 128 bits of the SHA-256 of the username and the file's hash of the password. */
export function passwordVersion(username: string, passwordHash: string): string {
  return createHash('sha256').update(`keyward.password-version\0${username}\0${passwordHash}`).digest('base64url').slice(0, 22);
}

type FileUser = z.infer<typeof usersFileSchema>['users'][number] & { readonly passwordVersion: string };

/**
 * Loads KEYWARD_USERS_FILE. Invalid → ConfigError naming the field (hashes are never printed).
 *
 * An edit is picked up without a restart: at most every USERS_RECHECK_MS, a sign-in or a look-up checks the
 * file's modification time, size and inode, and reads it again when they changed. An edit that leaves the file
 * invalid (or unreadable, or half-written) keeps the users loaded before and is logged once, naming the field,
 * never a hash; the next valid edit is picked up. `onRemoved` hears the usernames a valid edit took out (the
 * runtime revokes their sessions, so a name put back later brings none of them back).
 */
export function loadUsersFile(
  path: string,
  options: {
    logger?: Pick<Logger, 'info' | 'error'>;
    now?: () => number;
    onRemoved?: (usernames: readonly string[]) => void;
    /** Hears `unevenCostWarning` at load and at each reload that gives one. */
    warn?: (message: string) => void;
  } = {},
): LocalUsers {
  // A monotonic clock by default: a wall clock stepped back would stop the checks until it caught up.
  const now = options.now ?? (() => performance.now());
  const read = () => {
    const byName = readUsersFile(path);
    const warning = unevenCostWarning(byName);
    if (warning) options.warn?.(warning);
    return byName;
  };
  let loaded = { stamp: stampOf(path), byName: read() };
  let checkedAt = now();
  const users = (): ReadonlyMap<string, FileUser> => {
    const at = now();
    if (at - checkedAt < USERS_RECHECK_MS) return loaded.byName;
    checkedAt = at;
    const stamp = stampOf(path);
    if (stamp === loaded.stamp) return loaded.byName;
    try {
      const before = loaded.byName;
      loaded = { stamp, byName: read() };
      const removed = [...before.keys()].filter((username) => !loaded.byName.has(username));
      options.logger?.info({ users: loaded.byName.size, removed: removed.length }, 'users file changed: reloaded');
      if (removed.length > 0) options.onRemoved?.(removed);
    } catch (error) {
      loaded = { ...loaded, stamp };
      const reason = error instanceof ConfigError ? error.message : 'cannot be read';
      options.logger?.error({ reason }, 'users file changed but is not valid: the users loaded before stay');
    }
    return loaded.byName;
  };
  return {
    async authenticate(username, password) {
      const user = users().get(username);
      // Every attempt costs what the file's strongest hash costs: known users, whatever their hash, and unknown
      // ones (the decoy), so the time taken says nothing about which usernames exist.
      const floor = strongestOf(users());
      const ok = await verifyPassword(password, user?.passwordHash ?? (await decoyHash(floor)), floor);
      if (!user || !ok) return null;
      return checkedUser(user);
    },
    find(username) {
      const user = users().get(username);
      return user ? checkedUser(user) : null;
    },
    list() {
      return [...users().values()].map(publicUser);
    },
  };
}

/** How many usernames a warning names before it says "and N more". */
const NAMED_IN_WARNING = 5;

/**
 * The warning for a users file whose hashes do not all have the strongest one's scrypt parameters (hand-made, or
 * from another tool), or null. Every sign-in does the strongest hash's work, but scrypt's time follows its memory
 * (N·r) too, so a user with a smaller N still signs in sooner than an unknown name: timing tells that they exist.
 * Names the users (never a hash) so that an operator knows whose password to hash again.
 */
export function unevenCostWarning(users: ReadonlyMap<string, { readonly passwordHash: string }>): string | null {
  const floor = costOf(strongestOf(users) ?? '');
  if (!floor) return null;
  const uneven = [...users.entries()]
    .filter(([, user]) => {
      const cost = costOf(user.passwordHash);
      return !cost || cost.n !== floor.n || cost.r !== floor.r || cost.p !== floor.p;
    })
    .map(([username]) => username);
  if (uneven.length === 0) return null;
  const named = uneven.slice(0, NAMED_IN_WARNING).join(', ') + (uneven.length > NAMED_IN_WARNING ? ` and ${uneven.length - NAMED_IN_WARNING} more` : '');
  return (
    `users file: ${uneven.length} user(s) have a password hash with other scrypt parameters than the file's ` +
    `strongest (N=${floor.n}, r=${floor.r}, p=${floor.p}): ${named}. How long a sign-in takes can tell that such ` +
    'a username exists: make their hashes with the hash-password command, which gives every hash the same parameters.'
  );
}

/** The strongest password hash of a loaded file (computed once per load: a reload makes a new map). */
const strongest = new WeakMap<ReadonlyMap<string, { readonly passwordHash: string }>, string | null>();
function strongestOf(users: ReadonlyMap<string, { readonly passwordHash: string }>): string | null {
  if (!strongest.has(users)) strongest.set(users, strongestHash([...users.values()].map((user) => user.passwordHash)));
  return strongest.get(users)!;
}

/** The file's modification time, size and inode (an editor that saves by rename changes the inode), or null. */
function stampOf(path: string): string | null {
  try {
    const stat = statSync(path);
    return `${stat.mtimeMs}:${stat.size}:${stat.ino}`;
  } catch {
    return null;
  }
}

function readUsersFile(path: string): Map<string, FileUser> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    const reason = error instanceof SyntaxError ? `is not valid JSON${jsonErrorAt(error)}` : `cannot be read (${(error as NodeJS.ErrnoException).code})`;
    throw new ConfigError(`KEYWARD_USERS_FILE: ${path} ${reason}`);
  }
  const result = usersFileSchema.safeParse(json);
  if (!result.success) {
    throw new ConfigError(`KEYWARD_USERS_FILE (${path}) is invalid:\n${formatIssues(result.error.issues, '')}`);
  }
  return new Map(result.data.users.map((user) => [user.username, { ...user, passwordVersion: passwordVersion(user.username, user.passwordHash) }]));
}

function publicUser(user: FileUser): LocalUser {
  return { username: user.username, name: user.name ?? user.username, roles: user.roles, claims: user.claims };
}

function checkedUser(user: FileUser): CheckedUser {
  return { ...publicUser(user), passwordVersion: user.passwordVersion };
}
