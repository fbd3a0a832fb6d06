import { randomBytes, scryptSync } from 'node:crypto';
import { mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineUpstream } from '../../lib/core/config/load';
import type { UpstreamInput } from '../../lib/core/config/schema';
import { KeywardError, type KeywardErrorCode } from '../../lib/core/errors';
import { buildRegistry, type Upstream } from '../../lib/core/upstream/registry';
import { USERS_RECHECK_MS, loadUsersFile, type LocalUsers } from '../../lib/core/users/file';
import { randomSecret } from '../fixtures/secrets';

export const SECRET_ENV = 'KW_UNIT_SECRET';

/** Builds one upstream through the real schema + registry, with a fresh random secret. */
export function makeUpstream(
  input: Partial<UpstreamInput> = {},
  id = 'echo',
): { upstream: Upstream; secret: string } {
  const secret = randomSecret();
  const definition = defineUpstream(id, {
    baseUrl: 'http://127.0.0.1:4010/v1/',
    auth: { type: 'header', name: 'x-api-key', secret: { env: SECRET_ENV } },
    routes: [{ method: 'GET', path: '/' }],
    ...input,
  });
  const upstream = buildRegistry([definition], { [SECRET_ENV]: secret }).get(id);
  if (!upstream) throw new Error('registry lost the upstream');
  return { upstream, secret };
}

/** Runs `fn` and returns what it threw (fails the test if it did not throw). */
export function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected the call to throw');
}

export async function rejected(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected the promise to reject');
}

export function expectKeywardError(error: unknown, code: KeywardErrorCode): KeywardError {
  if (!(error instanceof KeywardError)) throw new Error(`expected a KeywardError(${code}), got ${String(error)}`);
  if (error.code !== code) throw new Error(`expected KeywardError code ${code}, got ${error.code}`);
  return error;
}

/**
 * A password hash in Keyward's documented format (`scrypt$N$r$p$salt$key`, base64url), computed here with
 * the smallest N Keyward accepts, so tests that only need *a* valid hash do not pay for N=2^17.
 */
export function cheapPasswordHash(password: string, n = 2 ** 14, r = 8, p = 1): string {
  const salt = randomBytes(16);
  const key = scryptSync(password, salt, 32, { N: n, r, p, maxmem: 256 * n * r });
  return `scrypt$${n}$${r}$${p}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

/** Real-parameter scrypt takes seconds on a loaded CI machine: tests that run it get this timeout. */
export const SCRYPT_TIMEOUT = 120_000;

export interface FileUserInput {
  readonly username: string;
  readonly roles: string[];
  readonly claims?: Record<string, string>;
  readonly name?: string;
  /** A new password for this user (else the one they had, or a random one for a new name). */
  readonly password?: string;
}

/**
 * A real KEYWARD_USERS_FILE in a fresh temp folder and its real loader, whose clock the test holds: `edit`
 * rewrites the file (cheap hashes of random passwords; a user keeps their hash unless `password` gives a new
 * one) and moves the clock past USERS_RECHECK_MS, so the next look-up reads it again.
 */
export function editableUsersFile(initial: readonly FileUserInput[]): { users: LocalUsers; edit: (users: readonly FileUserInput[]) => void } {
  const clock = { now: 1_000_000 };
  const path = join(mkdtempSync(join(tmpdir(), 'keyward-unit-users-')), 'users.json');
  const hashes = new Map<string, string>();
  const hashOf = ({ username, password }: FileUserInput) => {
    const known = hashes.get(username);
    if (known !== undefined && password === undefined) return known;
    const hash = cheapPasswordHash(password ?? randomSecret('pw'));
    hashes.set(username, hash);
    return hash;
  };
  const edit = (users: readonly FileUserInput[]) => {
    writeFileSync(path, JSON.stringify({ users: users.map(({ password: _, ...user }) => ({ ...user, passwordHash: hashOf({ ...user, password: _ }) })) }));
    const later = new Date(Date.now() + 10_000 + Math.random() * 1000); // a new mtime whatever the file system's resolution
    utimesSync(path, later, later);
    clock.now += USERS_RECHECK_MS;
  };
  edit(initial);
  return { users: loadUsersFile(path, { now: () => clock.now }), edit };
}
