import { mkdtempSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { ConfigError } from '../../../lib/core/config/load';
import { USERS_RECHECK_MS, loadUsersFile, passwordVersion } from '../../../lib/core/users/file';
import { passwordWorkDone } from '../../../lib/core/users/password';
import { SCRYPT_TIMEOUT, cheapPasswordHash, thrown } from '../support';

const randomPassword = () => randomBytes(12).toString('base64url');

function writeJson(content: unknown): string {
  const path = join(mkdtempSync(join(tmpdir(), 'keyward-users-unit-')), 'users.json');
  writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
  return path;
}

function loadError(path: string): string {
  const error = thrown(() => loadUsersFile(path));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as Error).message;
}

describe('loadUsersFile', () => {
  const alice = { username: 'alice', password: randomPassword(), roles: ['user', 'admin'] };
  const bob = { username: 'bob@example.com', password: randomPassword(), roles: ['user'] };
  const file = writeJson({
    users: [alice, bob].map((u) => ({ username: u.username, passwordHash: cheapPasswordHash(u.password), roles: u.roles })),
  });

  it("costs every attempt the file's strongest hash: a user with a weaker (hand-made) hash, an unknown username, right or wrong", async () => {
    const weak = { username: 'weak', password: randomPassword() };
    const strong = { username: 'strong', password: randomPassword() };
    const mixed = loadUsersFile(
      writeJson({
        users: [
          { username: weak.username, passwordHash: cheapPasswordHash(weak.password, 2 ** 14), roles: ['user'] },
          { username: strong.username, passwordHash: cheapPasswordHash(strong.password, 2 ** 16), roles: ['user'] },
        ],
      }),
    );
    // scrypt's work (N·r·p) each attempt did, which its time follows: counted, not timed.
    const work = async (username: string, password: string) => {
      const before = passwordWorkDone();
      const user = await mixed.authenticate(username, password);
      return { work: passwordWorkDone() - before, ok: user !== null };
    };
    const strongest = 2 ** 16 * 8;
    expect(await work('weak', weak.password)).toEqual({ work: strongest, ok: true });
    expect(await work('weak', randomPassword())).toEqual({ work: strongest, ok: false });
    expect(await work('strong', strong.password)).toEqual({ work: strongest, ok: true });
    expect(await work('nobody', randomPassword())).toEqual({ work: strongest, ok: false });
  });

  it("warns, naming the users (never a hash), when hashes differ from the strongest's parameters; at load and at a reload", () => {
    const hashes = {
      weak: cheapPasswordHash(randomPassword(), 2 ** 14),
      strong: cheapPasswordHash(randomPassword(), 2 ** 16),
      other: cheapPasswordHash(randomPassword(), 2 ** 16),
    };
    const path = writeJson({ users: Object.entries(hashes).map(([username, passwordHash]) => ({ username, passwordHash })) });
    const warnings: string[] = [];
    let at = 0;
    const users = loadUsersFile(path, { warn: (message) => warnings.push(message), now: () => at });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('1 user(s)');
    expect(warnings[0]).toContain(': weak.');
    expect(warnings[0]).toContain('N=65536, r=8, p=1');
    for (const hash of Object.values(hashes)) expect(warnings[0]).not.toContain(hash.split('$').at(-1));

    // Edited so that every hash has the same parameters: no warning. Edited back: the warning again.
    const rewrite = (entries: Record<string, string>, seconds: number) => {
      writeFileSync(path, JSON.stringify({ users: Object.entries(entries).map(([username, passwordHash]) => ({ username, passwordHash })) }));
      utimesSync(path, seconds, seconds);
      at += USERS_RECHECK_MS;
      users.list();
    };
    rewrite({ strong: hashes.strong, other: hashes.other }, 1_000);
    expect(warnings).toHaveLength(1);
    rewrite(hashes, 2_000);
    expect(warnings).toHaveLength(2);

    // A file whose hashes all have the same parameters gives none.
    const quiet: string[] = [];
    loadUsersFile(file, { warn: (message) => quiet.push(message) });
    expect(quiet).toEqual([]);
  });

  it('authenticates a user with the right password', async () => {
    const users = loadUsersFile(file);
    expect(await users.authenticate('alice', alice.password)).toMatchObject({
      username: 'alice',
      name: 'alice',
      roles: ['user', 'admin'],
    });
    expect(await users.authenticate('bob@example.com', bob.password)).toMatchObject({ username: 'bob@example.com' });
  });

  it('refuses a wrong password and another user’s password', async () => {
    const users = loadUsersFile(file);
    expect(await users.authenticate('alice', randomPassword())).toBeNull();
    expect(await users.authenticate('alice', bob.password)).toBeNull();
  });

  it(
    'refuses unknown users (checked against the decoy hash)',
    async () => {
      const users = loadUsersFile(file);
      expect(await users.authenticate('ALICE', alice.password)).toBeNull();
      expect(await users.authenticate('__proto__', alice.password)).toBeNull();
    },
    SCRYPT_TIMEOUT,
  );

  it('never returns the password hash', async () => {
    const users = loadUsersFile(file);
    const user = await users.authenticate('alice', alice.password);
    expect(JSON.stringify(user)).not.toContain('scrypt$');
  });

  it('find: the user as the file says now (for re-reading roles), without a hash; null for unknown names', () => {
    const users = loadUsersFile(file);
    expect(users.find('alice')).toEqual({
      username: 'alice',
      name: 'alice',
      roles: ['user', 'admin'],
      claims: {},
      passwordVersion: expect.stringMatching(/^[A-Za-z0-9_-]{22}$/),
    });
    expect(JSON.stringify(users.find('alice'))).not.toContain('scrypt$');
    expect(users.find('ALICE')).toBeNull();
    expect(users.find('__proto__')).toBeNull();
    expect(users.find('constructor')).toBeNull();
  });

  it("passwordVersion: the same for the same hash (every process, every read), another for a new password; no part of the hash", async () => {
    const users = loadUsersFile(file);
    const version = users.find('alice')!.passwordVersion;
    expect((await users.authenticate('alice', alice.password))!.passwordVersion).toBe(version);
    expect(loadUsersFile(file).find('alice')!.passwordVersion).toBe(version);
    expect(users.find(bob.username)!.passwordVersion).not.toBe(version);
    const hash = cheapPasswordHash(alice.password);
    expect(passwordVersion('alice', hash)).not.toBe(version); // same password, new salt: a new hash
    expect(passwordVersion('alice', hash)).toBe(passwordVersion('alice', hash));
    expect(passwordVersion('bob', hash)).not.toBe(passwordVersion('alice', hash));
    for (const part of hash.split('$')) if (part.length > 8) expect(passwordVersion('alice', hash)).not.toContain(part);
    expect(JSON.stringify(users.list())).not.toContain(version);
  });

  it('list: every user in the file’s order (for the admin dashboard), without a hash', () => {
    const users = loadUsersFile(file);
    expect(users.list().map((user) => [user.username, user.roles])).toEqual([
      ['alice', ['user', 'admin']],
      ['bob@example.com', ['user']],
    ]);
    expect(JSON.stringify(users.list())).not.toContain('scrypt$');
  });
});

describe('loadUsersFile errors', () => {
  const hashed = Promise.resolve(cheapPasswordHash(randomPassword()));

  it('says where a file that is not JSON broke, never quoting it', () => {
    const hash = cheapPasswordHash(randomPassword());
    const message = loadError(writeJson(`{"users": [{"username": "a", "passwordHash": "${hash}",}]}`));
    expect(message).toMatch(/is not valid JSON at line 1, column \d+$/);
    expect(message).not.toContain(hash);
  });

  it('names a malformed hash field without printing it', () => {
    const bogus = `scrypt$${randomBytes(16).toString('base64url')}`;
    const message = loadError(writeJson({ users: [{ username: 'alice', passwordHash: bogus }] }));
    expect(message).toContain('users.0.passwordHash');
    expect(message).not.toContain(bogus);
  });

  it('names an invalid username without printing the hash next to it', async () => {
    const hash = await hashed;
    const message = loadError(
      writeJson({ users: [{ username: 'ok', passwordHash: hash }, { username: 'bad name', passwordHash: hash }] }),
    );
    expect(message).toContain('users.1.username');
    expect(message).not.toContain(hash);
    expect(message).not.toContain(hash.split('$')[5]!);
  });

  it('refuses an unknown field (e.g. a plain-text password) without printing its value', async () => {
    const password = randomPassword();
    const message = loadError(writeJson({ users: [{ username: 'alice', passwordHash: await hashed, password }] }));
    expect(message).toContain('users.0');
    expect(message).toContain('password');
    expect(message).not.toContain(password);
  });

  it('refuses duplicate usernames', async () => {
    const hash = await hashed;
    const message = loadError(
      writeJson({ users: [{ username: 'alice', passwordHash: hash }, { username: 'alice', passwordHash: hash }] }),
    );
    expect(message).toContain('users');
    expect(message).toContain('unique');
    expect(message).not.toContain(hash);
  });

  it('names a missing users array', () => {
    expect(loadError(writeJson({ accounts: [] }))).toContain('users');
  });

  it('does not echo the content of a file that is not JSON', () => {
    const secret = randomPassword();
    const path = writeJson(`{"users":[{"username":"alice","passwordHash":"${secret}"`);
    const message = loadError(path);
    expect(message).toContain('not valid JSON');
    expect(message).toContain(path);
    expect(message).not.toContain(secret);
  });

  it('names an unreadable file and the reason', () => {
    const path = join(mkdtempSync(join(tmpdir(), 'keyward-users-unit-')), 'absent.json');
    const message = loadError(path);
    expect(message).toContain(path);
    expect(message).toContain('ENOENT');
  });
});

describe('loadUsersFile: edits are picked up without a restart', () => {
  const user = (username: string, roles = ['user']) => ({ username, passwordHash: cheapPasswordHash(randomPassword()), roles });
  function setup() {
    const clock = { now: 1_000_000 };
    const path = writeJson({ users: [user('ada')] });
    const logger = { info: vi.fn(), error: vi.fn() };
    const users = loadUsersFile(path, { logger, now: () => clock.now });
    // A new modification time whatever the file system's time resolution.
    const edit = (content: unknown) => {
      writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
      const later = new Date(Date.now() + 10_000 + Math.random() * 1000);
      utimesSync(path, later, later);
    };
    return { clock, users, logger, edit };
  }

  it(`an added user or a changed role is seen within ${USERS_RECHECK_MS / 1000} s, with one stat per check`, () => {
    const { clock, users, logger, edit } = setup();
    edit({ users: [user('ada', ['user', 'admin']), user('bo')] });
    expect(users.find('bo')).toBeNull(); // checked at most every USERS_RECHECK_MS
    clock.now += USERS_RECHECK_MS;
    expect(users.find('bo')).toMatchObject({ username: 'bo' });
    expect(users.find('ada')!.roles).toEqual(['user', 'admin']);
    expect(users.list().map((u) => u.username)).toEqual(['ada', 'bo']);
    expect(logger.info).toHaveBeenCalledTimes(1);
  });

  it('onRemoved hears the usernames a valid edit took out, once; not the first load, an invalid edit or an unchanged file', () => {
    const clock = { now: 1_000_000 };
    const path = writeJson({ users: [user('ada'), user('bo'), user('cy')] });
    const removed: string[][] = [];
    const users = loadUsersFile(path, { now: () => clock.now, onRemoved: (names) => removed.push([...names]) });
    const edit = (content: unknown) => {
      writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
      const later = new Date(Date.now() + 10_000 + Math.random() * 1000);
      utimesSync(path, later, later);
      clock.now += USERS_RECHECK_MS;
      users.find('ada');
    };
    expect(removed).toEqual([]);
    edit('{"users": [');
    expect(removed).toEqual([]);
    edit({ users: [user('ada'), user('cy', ['admin'])] });
    expect(removed).toEqual([['bo']]);
    clock.now += USERS_RECHECK_MS;
    users.find('ada');
    edit({ users: [user('bo')] });
    expect(removed).toEqual([['bo'], ['ada', 'cy']]);
  });

  it('an edit that leaves the file invalid keeps the users loaded before, logged once naming the field (no hash); the next valid edit is loaded', () => {
    const { clock, users, logger, edit } = setup();
    const hashed = user('cy');
    edit({ users: [{ ...hashed, passwordHash: 'not-a-hash' }] });
    clock.now += USERS_RECHECK_MS;
    expect(users.find('ada')).toMatchObject({ username: 'ada' });
    expect(users.find('cy')).toBeNull();
    clock.now += USERS_RECHECK_MS;
    users.find('ada');
    expect(logger.error).toHaveBeenCalledTimes(1);
    const logged = JSON.stringify(logger.error.mock.calls);
    expect(logged).toContain('passwordHash');
    expect(logged).not.toContain('not-a-hash');

    edit('{"users": [');
    clock.now += USERS_RECHECK_MS;
    expect(users.find('ada')).toMatchObject({ username: 'ada' });
    expect(logger.error).toHaveBeenCalledTimes(2);

    edit({ users: [hashed] });
    clock.now += USERS_RECHECK_MS;
    expect(users.find('cy')).toMatchObject({ username: 'cy' });
    expect(users.find('ada')).toBeNull();
  });
});
