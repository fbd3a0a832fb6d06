import { mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../lib/core/config/error';
import { loadUsersFile } from '../../../lib/core/users/file';
import { hashPassword } from '../../../lib/core/users/password';
import { DEMO_ADMIN, DEMO_USER, GENERATED_SECRETS, devPort, prepareDevEnvironment } from '../../../scripts/dev-setup';

const freshDir = () => mkdtempSync(join(tmpdir(), 'keyward-dev-'));

describe('prepareDevEnvironment (npm run dev)', () => {
  it('generates each missing secret once into a 0600 file and reuses it on the next start', async () => {
    const cwd = freshDir();
    const first = await prepareDevEnvironment(cwd, { NODE_ENV: 'development' });
    const file = join(cwd, '.keyward', 'dev-secrets.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const stored = JSON.parse(readFileSync(file, 'utf8')) as Record<string, string>;
    for (const name of GENERATED_SECRETS) {
      expect(first[name]).toBe(stored[name]);
      expect(first[name]!.length).toBeGreaterThanOrEqual(32);
    }
    expect(new Set(GENERATED_SECRETS.map((name) => first[name])).size).toBe(GENERATED_SECRETS.length);

    const second = await prepareDevEnvironment(cwd, { NODE_ENV: 'development' });
    for (const name of GENERATED_SECRETS) expect(second[name]).toBe(first[name]);
  });

  it('a secrets file made beforehand readable by others (0644) is written 0600, whole (no temporary file left)', async () => {
    const cwd = freshDir();
    mkdirSync(join(cwd, '.keyward'));
    const file = join(cwd, '.keyward', 'dev-secrets.json');
    writeFileSync(file, '{}', { mode: 0o644 });
    await prepareDevEnvironment(cwd, { NODE_ENV: 'development' });
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(Object.keys(JSON.parse(readFileSync(file, 'utf8')) as object).sort()).toEqual([...GENERATED_SECRETS].sort());
    expect(readdirSync(join(cwd, '.keyward')).sort()).toEqual(['dev-secrets.json', 'users.json']);
  });

  it('a secrets or users file of another shape (null, an object without users) is named, as a ConfigError', async () => {
    const cwd = freshDir();
    mkdirSync(join(cwd, '.keyward'));
    writeFileSync(join(cwd, '.keyward', 'dev-secrets.json'), 'null');
    const secrets = (await prepareDevEnvironment(cwd, { NODE_ENV: 'development' }).catch((thrown: unknown) => thrown)) as Error;
    expect(secrets).toBeInstanceOf(ConfigError);
    expect(secrets.message).toContain('dev-secrets.json is not what Keyward wrote there');
    writeFileSync(join(cwd, '.keyward', 'dev-secrets.json'), '{}');
    writeFileSync(join(cwd, '.keyward', 'users.json'), '{"foo": 1}');
    const users = (await prepareDevEnvironment(cwd, { NODE_ENV: 'development' }).catch((thrown: unknown) => thrown)) as Error;
    expect(users).toBeInstanceOf(ConfigError);
    expect(users.message).toContain('users.json is not what Keyward wrote there');
  });

  it('a hand-edited secrets or users file that is not JSON stops it naming the file, never quoting what is in it', async () => {
    const cwd = freshDir();
    mkdirSync(join(cwd, '.keyward'));
    const secret = 'Zq8sk3JdP0' + 'x'.repeat(30);
    writeFileSync(join(cwd, '.keyward', 'dev-secrets.json'), `{"AUTH_SECRET": ${secret}}`);
    const error = (await prepareDevEnvironment(cwd, { NODE_ENV: 'development' }).catch((thrown: unknown) => thrown)) as Error;
    expect(error.message).toContain('dev-secrets.json is not valid JSON');
    expect(error.message).not.toContain(secret.slice(0, 6));

    writeFileSync(join(cwd, '.keyward', 'dev-secrets.json'), '{}');
    const hash = '$scrypt$N=16384,r=8,p=1$' + 'h'.repeat(20);
    writeFileSync(join(cwd, '.keyward', 'users.json'), `{"users": [{"username": "demo", "passwordHash": ${hash}}]}`);
    const users = (await prepareDevEnvironment(cwd, { NODE_ENV: 'development' }).catch((thrown: unknown) => thrown)) as Error;
    expect(users.message).toContain('users.json is not valid JSON');
    expect(users.message).not.toContain('hhhhhh');
  });

  it('keeps secrets the environment already sets and does not write them to the file', async () => {
    const cwd = freshDir();
    const own = 'x'.repeat(40);
    const env = await prepareDevEnvironment(cwd, { NODE_ENV: 'development', AUTH_SECRET: own });
    expect(env.AUTH_SECRET).toBe(own);
    expect(readFileSync(join(cwd, '.keyward', 'dev-secrets.json'), 'utf8')).not.toContain(own);
  });

  it("with your own upstreams (KEYWARD_CONFIG or KEYWARD_CONFIG_JSON), leaves out the demo's config and page", async () => {
    const demo = await prepareDevEnvironment(freshDir(), { NODE_ENV: 'development' });
    expect(demo.KEYWARD_DEMO).toBe('true');
    for (const own of [{ KEYWARD_CONFIG: '/srv/app/keyward.json' }, { KEYWARD_CONFIG_JSON: '{"upstreams":{}}' }]) {
      const env = await prepareDevEnvironment(freshDir(), { NODE_ENV: 'development', ...own });
      expect(env.KEYWARD_CONFIG).toBe(own.KEYWARD_CONFIG);
      expect(env.KEYWARD_CONFIG_JSON).toBe(own.KEYWARD_CONFIG_JSON);
      expect(env.KEYWARD_DEMO).toBeUndefined();
    }
    // Asked for explicitly, the demo page stays.
    expect((await prepareDevEnvironment(freshDir(), { NODE_ENV: 'development', KEYWARD_CONFIG: '/srv/k.json', KEYWARD_DEMO: 'true' })).KEYWARD_DEMO).toBe('true');
  });

  it('writes a demo user that can sign in with the documented password', async () => {
    const cwd = freshDir();
    const env = await prepareDevEnvironment(cwd, { NODE_ENV: 'development' });
    expect(env.KEYWARD_CONFIG).toBe(join(cwd, 'config', 'demo.json'));
    const users = loadUsersFile(env.KEYWARD_USERS_FILE!);
    expect(await users.authenticate(DEMO_USER.username, DEMO_USER.password)).toMatchObject({ username: 'demo', roles: ['user'] });
    expect(await users.authenticate(DEMO_USER.username, 'wrong-password')).toBeNull();
    // The dashboard needs the admin role: the demo has an admin of its own, and the demo user stays a plain user.
    expect(await users.authenticate(DEMO_ADMIN.username, DEMO_ADMIN.password)).toMatchObject({ username: 'admin', roles: ['user', 'admin'] });
  });

  it('adds the demo admin to a users file written before it existed, keeping the users already there', async () => {
    const cwd = freshDir();
    mkdirSync(join(cwd, '.keyward'));
    const usersFile = join(cwd, '.keyward', 'users.json');
    const before = { users: [{ username: 'demo', name: 'Demo User', passwordHash: await hashPassword('changed-by-me'), roles: ['user'] }] };
    writeFileSync(usersFile, JSON.stringify(before));
    const env = await prepareDevEnvironment(cwd, { NODE_ENV: 'development' });
    const users = loadUsersFile(env.KEYWARD_USERS_FILE!);
    expect(users.list().map((user) => user.username)).toEqual(['demo', 'admin']);
    expect(await users.authenticate('demo', 'changed-by-me')).not.toBeNull();
    expect(await users.authenticate(DEMO_ADMIN.username, DEMO_ADMIN.password)).not.toBeNull();
    expect(statSync(usersFile).mode & 0o777).toBe(0o600);

    // Nothing missing: the file is left as it is.
    const written = readFileSync(usersFile, 'utf8');
    await prepareDevEnvironment(cwd, { NODE_ENV: 'development' });
    expect(readFileSync(usersFile, 'utf8')).toBe(written);
  });

  it("your own KEYWARD_USERS_FILE is left as it is, even kept at .keyward/users.json: no demo user (published password) is added", async () => {
    const cwd = freshDir();
    mkdirSync(join(cwd, '.keyward'));
    const usersFile = join(cwd, '.keyward', 'users.json');
    const own = { users: [{ username: 'ada', name: 'Ada', passwordHash: await hashPassword('adas-own-password'), roles: ['user', 'admin'] }] };
    writeFileSync(usersFile, JSON.stringify(own), { mode: 0o640 });
    const written = readFileSync(usersFile, 'utf8');
    const env = await prepareDevEnvironment(cwd, { NODE_ENV: 'development', KEYWARD_USERS_FILE: usersFile });
    expect(env.KEYWARD_USERS_FILE).toBe(usersFile);
    expect(readFileSync(usersFile, 'utf8')).toBe(written);
    expect(statSync(usersFile).mode & 0o777).toBe(0o640);
    expect(await loadUsersFile(usersFile).authenticate(DEMO_ADMIN.username, DEMO_ADMIN.password)).toBeNull();
  });

  it('never generates secrets in production', async () => {
    const cwd = freshDir();
    await expect(prepareDevEnvironment(cwd, { NODE_ENV: 'production' })).rejects.toThrow(/development only/);
    expect(() => statSync(join(cwd, '.keyward'))).toThrow();
  });
});

describe('devPort (the URL npm run dev prints)', () => {
  it("is next dev's: -p/--port passed through (the last one), else PORT, else 3000", () => {
    expect(devPort([], {})).toBe('3000');
    expect(devPort([], { PORT: '4000' })).toBe('4000');
    expect(devPort(['-p', '3001'], { PORT: '4000' })).toBe('3001');
    expect(devPort(['--port', '3002', '--turbopack'], {})).toBe('3002');
    expect(devPort(['--port=3003'], {})).toBe('3003');
    expect(devPort(['-p', '3001', '-H', '0.0.0.0', '-p', '3004'], {})).toBe('3004');
    expect(devPort(['-H', '127.0.0.1'], {})).toBe('3000');
  });
});
