import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { ConfigError } from '../config/load';
import { formatIssues } from '../config/schema';
import { decoyHash, isPasswordHash, verifyPassword } from './password';

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

export interface LocalUsers {
  authenticate(username: string, password: string): Promise<LocalUser | null>;
  /** The user as the file describes it now (no password check), or null: for re-reading roles. */
  find(username: string): LocalUser | null;
  /** Every user in the file, in its order (no password hashes): for the admin dashboard's user list. */
  list(): LocalUser[];
}

/** Loads KEYWARD_USERS_FILE. Invalid → ConfigError naming the field (hashes are never printed). */
export function loadUsersFile(path: string): LocalUsers {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    const reason = error instanceof SyntaxError ? 'is not valid JSON' : `cannot be read (${(error as NodeJS.ErrnoException).code})`;
    throw new ConfigError(`KEYWARD_USERS_FILE: ${path} ${reason}`);
  }
  const result = usersFileSchema.safeParse(json);
  if (!result.success) {
    throw new ConfigError(`KEYWARD_USERS_FILE (${path}) is invalid:\n${formatIssues(result.error.issues, '')}`);
  }
  const byName = new Map(result.data.users.map((user) => [user.username, user]));
  return {
    async authenticate(username, password) {
      const user = byName.get(username);
      const ok = await verifyPassword(password, user?.passwordHash ?? (await decoyHash()));
      if (!user || !ok) return null;
      return publicUser(user);
    },
    find(username) {
      const user = byName.get(username);
      return user ? publicUser(user) : null;
    },
    list() {
      return [...byName.values()].map(publicUser);
    },
  };
}

function publicUser(user: z.infer<typeof usersFileSchema>['users'][number]): LocalUser {
  return { username: user.username, name: user.name ?? user.username, roles: user.roles, claims: user.claims };
}
