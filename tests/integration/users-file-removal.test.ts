import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleUserKey } from '../../lib/core/api/keys';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { USERS_RECHECK_MS, passwordVersion } from '../../lib/core/users/file';
import { hashPassword } from '../../lib/core/users/password';
import { capturingLogger, claimsSessionCookie, findLeak, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * A local user taken out of the users file loses their own keys and connected accounts, not only their
 * sessions: the name may be given to someone else later, who must not call with the first owner's key or token.
 * A real runtime reading a real users file, a real node:http upstream that records what it received, and the
 * same server standing in for a GitHub Enterprise host (its grant-deletion API), all on loopback. The GitHub
 * token is put in the store directly (the connect flow itself is tested in connections.test.ts).
 */

const APP_ORIGIN = 'https://app.keyward.test';
const CLIENT_ID = 'Iv1.removal0000001';

let upstream: TestUpstream;
let runtime: Runtime;
let dir: string;
let usersFile: string;
const secrets = testSessionSecrets();
const { logger, lines } = capturingLogger();
const firstAdaKey = randomSecret('sk_first_ada');
const firstAdaToken = randomSecret('gho_first_ada');
const bobKey = randomSecret('sk_bob');
const clientSecret = randomSecret('gh_client');
let bobHash: string;
/** How far the runtime's clock is ahead of the wall clock: moved on to make a disconnect stop waiting for a lock. */
let skew = 0;

function writeUsers(users: ReadonlyArray<{ username: string; passwordHash: string }>): void {
  writeFileSync(usersFile, JSON.stringify({ users: users.map((user) => ({ ...user, roles: ['user'] })) }), { mode: 0o600 });
}

async function proxy(cookie: string, upstreamId: string, path: string): Promise<{ status: number; body: string }> {
  const request = new Request(`${APP_ORIGIN}/api/proxy/${upstreamId}/${path}`, { headers: { cookie, 'x-keyward-csrf': '1' } });
  return responseText(await handleProxy(request, { upstream: upstreamId, path: [path] }, runtime));
}

/** /api/keys/llm as a browser calls it: `key` given, PUT; else GET. */
async function ownKey(cookie: string, key?: string): Promise<{ status: number; body: string }> {
  const headers: Record<string, string> = { cookie, 'x-keyward-csrf': '1' };
  const init: RequestInit =
    key === undefined
      ? { headers }
      : { method: 'PUT', headers: { ...headers, origin: APP_ORIGIN, 'content-type': 'application/json' }, body: JSON.stringify({ key }) };
  return responseText(await handleUserKey(new Request(`${APP_ORIGIN}/api/keys/llm`, init), 'llm', runtime));
}

/** Writes the users file (bob, and `others`) and waits until this process has read it. */
async function usersNow(others: ReadonlyArray<{ username: string; passwordHash: string }>): Promise<void> {
  writeUsers([{ username: 'bob', passwordHash: bobHash }, ...others]);
  await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 200));
}

const cookieFor = (username: string, passwordHash: string) =>
  claimsSessionCookie(secrets.AUTH_SECRET, { sub: `local:${username}`, passwordVersion: passwordVersion(username, passwordHash) });

beforeAll(async () => {
  upstream = await startUpstream(async (req, res, record) => {
    await record.bodyDone;
    // GitHub's grant deletion answers 204; the proxied calls get a small JSON body.
    if (req.method === 'DELETE') res.writeHead(204).end();
    else res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
  });
  dir = mkdtempSync(join(tmpdir(), 'keyward-removal-'));
  usersFile = join(dir, 'users.json');
  const adaHash = await hashPassword(randomSecret('ada-pw'));
  bobHash = await hashPassword(randomSecret('bob-pw'));
  writeUsers([
    { username: 'ada', passwordHash: adaHash },
    { username: 'bob', passwordHash: bobHash },
  ]);
  runtime = createRuntime({
    env: {
      ...secrets,
      KEYWARD_USERS_FILE: usersFile,
      KEYWARD_STORE: 'memory',
      KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
      KEYWARD_VAULT_SECRET: randomSecret('vault'),
      GH_ID: CLIENT_ID,
      GH_SECRET: clientSecret,
    },
    logger,
    now: () => Date.now() + skew,
    connections: {
      github: {
        preset: 'github',
        clientId: { env: 'GH_ID' },
        clientSecret: { env: 'GH_SECRET' },
        // A GitHub Enterprise Server on loopback: grants are deleted through <host>/api/v3.
        authorizationUrl: `${upstream.origin}/login/oauth/authorize`,
        tokenUrl: `${upstream.origin}/login/oauth/access_token`,
      },
    },
    upstreams: [
      defineUpstream('gh', { baseUrl: `${upstream.origin}/gh/`, auth: { type: 'bearer', secret: { oauth: 'github' } }, routes: [{ method: 'GET', path: '/user' }] }),
      defineUpstream('llm', { baseUrl: `${upstream.origin}/llm/`, auth: { type: 'header', name: 'x-api-key', secret: { user: 'key' } }, routes: [{ method: 'GET', path: '/models' }] }),
    ],
  });
  await runtime.userKeys!.put('llm', { userId: 'local:ada' }, firstAdaKey);
  await runtime.userKeys!.put('llm', { userId: 'local:bob' }, bobKey);
  await runtime.connections!.tokens.save('github', { userId: 'local:ada' }, { accessToken: firstAdaToken, refreshToken: null, expiresAt: 0 });
});

afterAll(async () => {
  expect(findLeak(lines.join(''), [firstAdaKey, firstAdaToken, bobKey, clientSecret])).toBeNull();
  await upstream.close();
  await runtime.store.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('a user taken out of the users file', () => {
  it("loses their own keys and connected accounts: a new user given the name later calls with neither", async () => {
    const adaBefore = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:ada', passwordVersion: runtime.users!.find('ada')!.passwordVersion });
    expect((await proxy(adaBefore, 'llm', 'models')).status).toBe(200);
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(firstAdaKey);

    writeUsers([{ username: 'bob', passwordHash: bobHash }]);
    // Each process checks the file at most every USERS_RECHECK_MS, at a look-up.
    await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 200));
    expect(runtime.users!.find('ada')).toBeNull();
    // The deletions run in the background of that look-up: wait for them (bounded).
    const held = async () =>
      (await runtime.userKeys!.describe('llm', { userId: 'local:ada' })) !== null || (await runtime.connections!.tokens.load('github', 'local:ada')) !== null;
    for (let i = 0; i < 250 && (await held()); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(await runtime.userKeys!.describe('llm', { userId: 'local:ada' })).toBeNull();
    expect(await runtime.connections!.tokens.load('github', 'local:ada')).toBeNull();
    // The grant was deleted at the host that issued it (never at api.github.com), with the app's credentials.
    const deletion = upstream.requests.find((r) => r.method === 'DELETE')!;
    expect(deletion.url).toBe(`/api/v3/applications/${CLIENT_ID}/grant`);
    expect(deletion.headers.authorization).toBe(`Basic ${Buffer.from(`${CLIENT_ID}:${clientSecret}`).toString('base64')}`);
    // Both deletions are on the audit trail, with the users file as the actor.
    const { records } = await runtime.audit.query({ type: 'admin', userId: 'local:ada' }, { limit: 50 });
    const byUsersFile = records.filter((record) => record.type === 'admin' && record.actor === 'users-file');
    expect(byUsersFile.map((record) => record.type === 'admin' && [record.action, record.upstream ?? null, record.targetUser])).toEqual(
      expect.arrayContaining([
        ['user_key.delete', 'llm', 'local:ada'],
        ['connection.disconnect', null, 'local:ada'],
      ]),
    );
    // Bob, still in the file, keeps his key.
    expect(await runtime.userKeys!.describe('llm', { userId: 'local:bob' })).not.toBeNull();

    // The name is given to someone else, with a password of their own.
    const newAdaHash = await hashPassword(randomSecret('new-ada-pw'));
    writeUsers([
      { username: 'bob', passwordHash: bobHash },
      { username: 'ada', passwordHash: newAdaHash },
    ]);
    await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 200));
    const newAda = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:ada', passwordVersion: passwordVersion('ada', newAdaHash) });
    const before = upstream.requests.length;
    const own = await proxy(newAda, 'llm', 'models');
    expect(own.status).toBe(403);
    expect(JSON.parse(own.body).error.code).toBe('credential_missing');
    const connected = await proxy(newAda, 'gh', 'user');
    expect(connected.status).toBe(403);
    expect(JSON.parse(connected.body).error.code).toBe('connection_required');
    expect(upstream.requests.length).toBe(before);
  });

  it('a deletion that could not be made (a refresh holding the connection past 15 s) is tried again until it is', async () => {
    const cyToken = randomSecret('gho_cy');
    writeUsers([
      { username: 'bob', passwordHash: bobHash },
      { username: 'cy', passwordHash: bobHash },
    ]);
    await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 200));
    expect(runtime.users!.find('cy')).not.toBeNull();
    await runtime.connections!.tokens.save('github', { userId: 'local:cy' }, { accessToken: cyToken, refreshToken: null, expiresAt: 0 });
    // Another instance's refresh of cy's connection holds its lock, and its provider does not answer.
    const lock = 'lock:oauth:github:local:cy';
    expect(await runtime.store.setIfAbsent(lock, 'another instance', 45_000)).toBe(true);
    const errorsBefore = lines.filter((line) => line.includes('could not all be deleted')).length;

    writeUsers([{ username: 'bob', passwordHash: bobHash }]);
    await new Promise((resolve) => setTimeout(resolve, USERS_RECHECK_MS + 200));
    expect(runtime.users!.find('cy')).toBeNull();
    await new Promise((resolve) => setTimeout(resolve, 200)); // the disconnect is waiting for the lock
    skew += 16_000; // past its 15 s: it gives up (503), and the removal's error is logged
    for (let i = 0; i < 100 && lines.filter((line) => line.includes('could not all be deleted')).length === errorsBefore; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(lines.filter((line) => line.includes('could not all be deleted')).length).toBe(errorsBefore + 1);
    expect(await runtime.connections!.tokens.load('github', 'local:cy')).not.toBeNull();

    // The other instance's refresh ends; the removal is tried again, and this time the connection goes.
    await runtime.store.delete(lock);
    for (let i = 0; i < 250 && (await runtime.connections!.tokens.load('github', 'local:cy')) !== null; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(await runtime.connections!.tokens.load('github', 'local:cy')).toBeNull();
    const { records } = await runtime.audit.query({ type: 'admin', userId: 'local:cy' }, { limit: 50 });
    expect(records.map((record) => record.type === 'admin' && [record.action, record.actor])).toEqual([['connection.disconnect', 'users-file']]);
    expect(findLeak(lines.join(''), [cyToken])).toBeNull();
  });
});

describe('a name given a new passwordHash, never seen removed (a restart with the edited file, or a password reset)', () => {
  it("the next owner's calls never carry the last owner's own key, which stays stored, until they store their own", async () => {
    const firstHash = await hashPassword(randomSecret('dee-pw'));
    const nextHash = await hashPassword(randomSecret('dee-next-pw'));
    const firstKey = randomSecret('sk_first_dee');
    const nextKey = randomSecret('sk_next_dee');
    await usersNow([{ username: 'dee', passwordHash: firstHash }]);
    const firstDee = await cookieFor('dee', firstHash);
    expect((await ownKey(firstDee, firstKey)).status).toBe(201);
    expect((await proxy(firstDee, 'llm', 'models')).status).toBe(200);
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(firstKey);

    await usersNow([{ username: 'dee', passwordHash: nextHash }]);
    const nextDee = await cookieFor('dee', nextHash);
    const before = upstream.requests.length;
    const refused = await proxy(nextDee, 'llm', 'models');
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.body).error.code).toBe('credential_missing');
    expect(upstream.requests.length).toBe(before);
    const shown = await ownKey(nextDee);
    expect(shown.status).toBe(403);
    expect(JSON.parse(shown.body).error.code).toBe('credential_missing');
    // Kept: nothing is deleted for them (an admin's mistake put right restores it).
    expect(await runtime.store.get('ukey:llm:local:dee')).not.toBeNull();
    expect(lines.filter((line) => line.includes('stored under an earlier password') && line.includes('"userId":"local:dee"'))).toHaveLength(1);

    expect((await ownKey(nextDee, nextKey)).status).toBe(201);
    expect((await proxy(nextDee, 'llm', 'models')).status).toBe(200);
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(nextKey);
    expect(upstream.requests.filter((request) => request.headers['x-api-key'] === firstKey)).toHaveLength(1);
    expect(findLeak(lines.join(''), [firstKey, nextKey])).toBeNull();
  });

  it('a key stored before keys were stamped is the first signed-in owner\'s: used, stamped, and no key for the next password', async () => {
    const firstHash = await hashPassword(randomSecret('eve-pw'));
    const nextHash = await hashPassword(randomSecret('eve-next-pw'));
    const legacyKey = randomSecret('sk_legacy_eve');
    await usersNow([{ username: 'eve', passwordHash: firstHash }]);
    // Stored without a password version, as every key was before this change.
    await runtime.userKeys!.put('llm', { userId: 'local:eve' }, legacyKey);
    const firstEve = await cookieFor('eve', firstHash);
    expect((await proxy(firstEve, 'llm', 'models')).status).toBe(200);
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(legacyKey);
    for (let i = 0; i < 100 && !(await runtime.store.get('ukey:llm:local:eve'))!.includes('passwordVersion'); i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(JSON.parse((await runtime.store.get('ukey:llm:local:eve'))!)).toMatchObject({ passwordVersion: passwordVersion('eve', firstHash) });

    await usersNow([{ username: 'eve', passwordHash: nextHash }]);
    const before = upstream.requests.length;
    const refused = await proxy(await cookieFor('eve', nextHash), 'llm', 'models');
    expect(JSON.parse(refused.body).error.code).toBe('credential_missing');
    expect(upstream.requests.length).toBe(before);
    expect(findLeak(lines.join(''), [legacyKey])).toBeNull();
  });
});
