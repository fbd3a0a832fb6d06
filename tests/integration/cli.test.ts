import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleAlertUndo } from '../../lib/core/api/alerts';
import type { AdminRecord, AuditRecord, CallRecord } from '../../lib/core/audit/audit';
import type { Alert } from '../../lib/core/detect/alerts';
import { throttleKey } from '../../lib/core/detect/marks';
import { keyFingerprints } from '../../lib/core/keys/fingerprint';
import { configJsonSchema } from '../../lib/core/presets';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { capturingLogger } from '../fixtures/claims-session';
import { writeConfigFile } from '../fixtures/config';
import { randomSecret } from '../fixtures/secrets';
import { bearerToken } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';
import { expectedForms } from '../unit/scrub-oracle';

/**
 * `npm run keyward -- keys … | audit …` as a real process (tsx, react-server condition, production env) on
 * the embedded SQLite store, against a real node:http upstream that answers the canary. A Keyward runtime in
 * this process shares the SQLite file, as a server on the same host would: it follows the CLI's rotations
 * and writes call records the CLI then reads. The CLI runs in an empty directory of its own (it reads the
 * `.env*` files of its working directory, and a developer's own files must not change these tests).
 */
const ROOT = resolve(import.meta.dirname, '../..');
const TSX = join(ROOT, 'node_modules/.bin/tsx');
const SCRIPT = join(ROOT, 'scripts/keyward.ts');
const ACTOR = `cli:${userInfo().username}`;
/** Fingerprints as the CLI and the server compute them: keyed by KEYWARD_SESSION_SECRET. */
const fp = (secret: string) => keyFingerprints(env.KEYWARD_SESSION_SECRET!).of(secret);

const keys = {
  primary: randomSecret('cli'),
  accepted: randomSecret('accepted'),
  refused: randomSecret('refused'),
  skipped: randomSecret('skipped'),
  added: randomSecret('added'),
  unknownUpstream: randomSecret('nowhere'),
  fromEnvironment: randomSecret('fromenv'),
  development: randomSecret('devkey'),
  aaaPrimary: randomSecret('aaa'),
  aaaQ4: randomSecret('aaaq4'),
  bbbPrimary: randomSecret('bbb'),
  bbbQ4: randomSecret('bbbq4'),
};
/** Keys the canary accepts (x-api-key on GET /v1/canary); anything else is 401. */
const canaryAccepts = new Set<string>();
let upstream: TestUpstream;
let env: Record<string, string>;
let runtime: Runtime;
/** The CLI's working directory: empty, no .env files. */
let workDir: string;
/** Everything the CLI printed, for the final leak check. */
const printed: string[] = [];

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the CLI to completion with `stdin` as its input (closed at once when empty). */
function cli(args: readonly string[], stdin = '', where: { cwd?: string; env?: Record<string, string> } = {}): Promise<Run> {
  // tsx would look for tsconfig.json in the working directory.
  const childEnv: Record<string, string> = { ...(where.env ?? env), TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json') };
  return new Promise((resolvePromise, reject) => {
    const child = spawn(TSX, ['--conditions=react-server', SCRIPT, ...args], {
      cwd: where.cwd ?? workDir,
      env: childEnv as NodeJS.ProcessEnv,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', reject);
    child.on('close', (code) => {
      const run = { code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
      printed.push(run.stdout, run.stderr);
      resolvePromise(run);
    });
    child.stdin.end(stdin);
  });
}

/** A table the CLI printed: its header and rows, cells split on the runs of 2+ spaces between columns. */
function table(text: string): { header: string[]; rows: string[][] } {
  const [header, ...rows] = text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => line.split(/ {2,}/));
  return { header: header ?? [], rows };
}

/** `keys list`: the versions table, then (after a blank line) the rotations table, if any. */
function keyList(stdout: string) {
  expect(stdout.endsWith('\n')).toBe(true);
  const [versions = '', rotations = ''] = stdout.split('\n\n');
  const v = table(versions);
  const r = table(rotations);
  expect(v.header).toEqual(['UPSTREAM', 'FINGERPRINT', 'STATUS', 'VERSION', 'EXPIRES', 'NOTE']);
  if (r.rows.length > 0) expect(r.header).toEqual(['ROTATION', 'UPSTREAM', 'STATE', 'FROM', 'TO', 'CANARY', 'WHEN']);
  return {
    version: (key: string) => v.rows.find((row) => row[1] === fp(key)),
    versions: v.rows,
    rotation: (id: string) => r.rows.find((row) => row[0] === id),
  };
}

const MINUTE = /^\d{4}-\d\d-\d\d \d\d:\d\d UTC$/;
const canaryCount = () => upstream.requests.filter((r) => r.url === '/v1/canary').length;

/** A bearer session of a user of the users file, for the in-process runtime. */
function tokenOf(username: string): Promise<string> {
  const user = runtime.users!.find(username)!;
  return bearerToken(env.KEYWARD_SESSION_SECRET!, { sub: `local:${username}`, roles: [...user.roles], passwordVersion: user.passwordVersion });
}

/** A proxied call through the in-process runtime (same store), as `username`. */
async function proxyCall(username: string): Promise<Response> {
  const request = new Request('https://app.keyward.test/api/proxy/svc/items/1', {
    headers: { authorization: `Bearer ${await tokenOf(username)}` },
  });
  return handleProxy(request, { upstream: 'svc', path: ['items', '1'] }, runtime);
}

/** A proxied call through the in-process runtime (same store): which key did the upstream get? */
async function serverCall(): Promise<{ key: unknown; record: CallRecord }> {
  const response = await proxyCall('ops');
  const text = await response.text();
  expect(response.status, text).toBe(200);
  const requestId = response.headers.get('x-request-id');
  // Call records are queued and written in batches; a query flushes the queue first.
  const { records } = await runtime.audit.query({ type: 'call' }, { limit: 10 });
  const record = records.find((r): r is CallRecord => r.type === 'call' && r.requestId === requestId);
  expect(record).toBeDefined();
  return { key: upstream.requests.at(-1)!.headers['x-api-key'], record: record! };
}

function jsonLines(text: string): AuditRecord[] {
  expect(text === '' || text.endsWith('\n')).toBe(true);
  return text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as AuditRecord);
}

/** The lines of a `.env` file. */
const dotenv = (values: Record<string, string>) =>
  Object.entries(values)
    .map(([name, value]) => `${name}=${value}\n`)
    .join('');

/** The environment of a shell with none of Keyward's settings. */
const bareEnv = (): Record<string, string> => ({
  PATH: process.env.PATH ?? '',
  HOME: process.env.HOME ?? tmpdir(),
  ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}),
});

beforeAll(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'keyward-cli-cwd-'));
  upstream = await startUpstream(async (req, res, record) => {
    await record.bodyDone;
    if (req.url === '/v1/canary') {
      const key = req.headers['x-api-key'];
      res.writeHead(typeof key === 'string' && canaryAccepts.has(key) ? 200 : 401, {
        'content-type': 'application/json',
      });
      res.end('{}');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true }));
  });
  const config = writeConfigFile({
    upstreams: {
      svc: {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
        keys: { canary: { method: 'GET', path: '/canary' }, graceSeconds: 3600 },
      },
    },
  });
  env = {
    ...bareEnv(),
    NODE_ENV: 'production',
    AUTH_SECRET: randomSecret('auth'),
    AUTH_URL: 'https://app.keyward.test',
    KEYWARD_SESSION_SECRET: randomSecret('sess'),
    KEYWARD_VAULT_SECRET: randomSecret('vault'),
    KEYWARD_USERS_FILE: await writeUsersFile([
      { username: 'ops', password: randomSecret('pw'), roles: ['user'] },
      // The deployment's single admin: the API refuses them an undo of an alert about themselves; the CLI does not.
      { username: 'root', password: randomSecret('rootpw'), roles: ['admin'] },
    ]),
    KEYWARD_STORE: 'sqlite',
    KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-cli-')), 'keyward.db'),
    KEYWARD_CONFIG: config,
    SVC_KEY: keys.primary,
  };
  // The in-process server logs into memory (not the test output).
  runtime = createRuntime({ env, logger: capturingLogger().logger });
});

afterAll(async () => {
  await upstream?.close();
  await (runtime?.dispatcher as { close?: () => Promise<void> } | undefined)?.close?.().catch(() => {});
  await runtime?.store.close();
});

describe('keyward keys …', { timeout: 60_000 }, () => {
  it('keys list prints a table of versions by fingerprint and status, never the key; --json the admin API shape', async () => {
    const run = await cli(['keys', 'list']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toBe('');
    const list = keyList(run.stdout);
    expect(list.versions).toEqual([['svc', fp(keys.primary), 'serving', 'env:SVC_KEY', 'never']]);
    // Aligned: every line's fingerprint starts in the same column.
    const lines = run.stdout.trimEnd().split('\n');
    expect(new Set(lines.map((line) => line.search(/FINGERPRINT|[0-9a-f]{12}/))).size).toBe(1);
    expect(run.stdout).not.toContain(keys.primary);

    const json = await cli(['keys', 'list', '--json']);
    expect(json.code, json.stderr).toBe(0);
    const parsed = JSON.parse(json.stdout) as { upstreams: Array<{ upstream: string; versions: Array<Record<string, unknown>>; rotations: unknown[] }> };
    expect(parsed.upstreams).toHaveLength(1);
    expect(parsed.upstreams[0]).toMatchObject({ upstream: 'svc', rotations: [] });
    expect(parsed.upstreams[0]!.versions).toEqual([
      expect.objectContaining({ id: 'env:SVC_KEY', fingerprint: fp(keys.primary), source: 'env', state: 'active', status: 'serving', expiresAt: null, warning: null }),
    ]);
    expect(json.stdout).not.toContain(keys.primary);
  });

  it('keys rotate <upstream> (key on stdin): the canary passes, exit 0, a sentence; --json repeats it as the rotation JSON', async () => {
    canaryAccepts.add(keys.accepted);
    const canaries = canaryCount();
    const run = await cli(['keys', 'rotate', 'svc'], `${keys.accepted}\n`);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(
      `svc: switched to key ${fp(keys.accepted)} after the canary call answered 200. Key ${fp(keys.primary)} stays usable ` +
        `as a fallback for the grace window. Undo with: npm run keyward -- keys rollback rot-${fp(keys.accepted)}\n`,
    );
    // The canary went out once, with the new key (the trailing line break of stdin is not part of it).
    expect(canaryCount()).toBe(canaries + 1);
    expect(upstream.requests.filter((r) => r.url === '/v1/canary').at(-1)!.headers['x-api-key']).toBe(keys.accepted);

    // The same rotation again (same default id) changes nothing and sends no canary; --json prints it as before.
    const again = await cli(['keys', 'rotate', 'svc', '--json'], `${keys.accepted}\n`);
    expect(again.code, again.stderr).toBe(0);
    const { rotation } = JSON.parse(again.stdout) as { rotation: Record<string, unknown> };
    expect(rotation).toMatchObject({
      id: `rot-${fp(keys.accepted)}`,
      upstream: 'svc',
      state: 'switched',
      from: [fp(keys.primary)],
      to: fp(keys.accepted),
      canaryStatus: 200,
      actor: ACTOR,
    });
    expect(canaryCount()).toBe(canaries + 1);

    const call = await serverCall();
    expect(call.key).toBe(keys.accepted);
    expect(call.record.keyFingerprint).toBe(fp(keys.accepted));
  });

  it('keys rotate: the canary refuses, exit 1 naming the answer, traffic stays on the current key; keys list says "canary failed"', async () => {
    const canaries = canaryCount();
    const run = await cli(['keys', 'rotate', 'svc'], keys.refused);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toBe(
      `keyward: canary call failed: upstream answered 401; the old key ${fp(keys.accepted)} keeps serving ` +
        `(svc, rotation rot-${fp(keys.refused)}; the new key ${fp(keys.refused)} never served).\n`,
    );
    expect(canaryCount()).toBe(canaries + 1);
    expect((await serverCall()).key).toBe(keys.accepted);

    // Never served: not "retired" with an expiry, but "canary failed", and the rotation says what it answered.
    const list = keyList((await cli(['keys', 'list'])).stdout);
    const [, , status, version, expires, note] = list.version(keys.refused)!;
    expect([status, version, expires]).toEqual(['canary failed', `managed:${fp(keys.refused)}`, '-']);
    expect(note).toMatch(/^the canary answered 401 \(\d{4}-\d\d-\d\d \d\d:\d\d UTC\); never served$/);
    const rotation = list.rotation(`rot-${fp(keys.refused)}`)!;
    expect(rotation.slice(0, 6)).toEqual([`rot-${fp(keys.refused)}`, 'svc', 'canary failed', fp(keys.accepted), fp(keys.refused), '401']);
    expect(rotation[6]).toMatch(MINUTE);
    expect(list.rotation(`rot-${fp(keys.accepted)}`)!.slice(0, 6)).toEqual([`rot-${fp(keys.accepted)}`, 'svc', 'switched', fp(keys.primary), fp(keys.accepted), '200']);

    // A failed rotation may be tried again: the canary goes out again; --json prints the rotation, exit 1.
    const json = await cli(['keys', 'rotate', 'svc', '--json'], keys.refused);
    expect(json.code).toBe(1);
    expect(json.stderr).toBe('');
    expect((JSON.parse(json.stdout) as { rotation: Record<string, unknown> }).rotation).toMatchObject({
      state: 'canary_failed',
      canaryStatus: 401,
      to: fp(keys.refused),
    });
    expect(canaryCount()).toBe(canaries + 2);
  });

  it('keys rotate --id <id> --skip-canary switches without a canary request', async () => {
    const canaries = canaryCount();
    const run = await cli(['keys', 'rotate', 'svc', '--id', 'cli-skip', '--skip-canary'], keys.skipped);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(
      `svc: switched to key ${fp(keys.skipped)} without a canary call (--skip-canary). Key ${fp(keys.accepted)} stays usable ` +
        'as a fallback for the grace window. Undo with: npm run keyward -- keys rollback cli-skip\n',
    );
    expect(canaryCount()).toBe(canaries);
    expect((await serverCall()).key).toBe(keys.skipped);
  });

  it('keys rollback <id> puts the replaced version back; an unknown id is exit 1 with a clear message', async () => {
    const run = await cli(['keys', 'rollback', 'cli-skip']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(
      `svc: rotation cli-skip is rolled back; key ${fp(keys.skipped)} no longer serves, key ${fp(keys.accepted)} serves again unless revoked or expired.\n`,
    );
    const json = await cli(['keys', 'rollback', 'cli-skip', '--json']);
    expect(json.code, json.stderr).toBe(0);
    expect((JSON.parse(json.stdout) as { rotation: Record<string, unknown> }).rotation).toMatchObject({
      id: 'cli-skip',
      state: 'rolled_back',
      canaryStatus: null,
      from: [fp(keys.accepted)],
      to: fp(keys.skipped),
    });
    expect((await serverCall()).key).toBe(keys.accepted);

    const unknown = await cli(['keys', 'rollback', 'never-rotated']);
    expect(unknown.code).toBe(1);
    expect(unknown.stdout).toBe('');
    expect(unknown.stderr).toBe('keyward: No rotation with this id.\n');
  });

  it('keys revoke <fingerprint>; an unknown fingerprint is exit 1 with a clear message', async () => {
    const run = await cli(['keys', 'revoke', fp(keys.refused)]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(
      `revoked key ${fp(keys.refused)} (svc: managed:${fp(keys.refused)}); every instance stops using it on its next request.\n`,
    );
    const json = await cli(['keys', 'revoke', fp(keys.refused), '--json']);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({
      fingerprint: fp(keys.refused),
      revoked: [{ upstream: 'svc', version: `managed:${fp(keys.refused)}` }],
    });

    const unknown = await cli(['keys', 'revoke', 'abcdefabcdef']);
    expect(unknown.code).toBe(1);
    expect(unknown.stdout).toBe('');
    expect(unknown.stderr).toBe('keyward: No key version has this fingerprint.\n');

    const malformed = await cli(['keys', 'revoke', 'not-a-fingerprint']);
    expect(malformed.code).toBe(1);
    expect(malformed.stderr).toBe('keyward: A fingerprint is 12 hexadecimal digits.\n');
  });

  it('keys add <upstream> adds a version that does not serve yet; keys list shows every state', async () => {
    const run = await cli(['keys', 'add', 'svc'], keys.added);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(
      new RegExp(
        `^svc: added key ${fp(keys.added)} \\(version managed:${fp(keys.added)}, expires \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d UTC\\); ` +
          'it serves only once a rotation switches to it \\(keys rotate svc with the same key\\)\\.\\n$',
      ),
    );
    const json = await cli(['keys', 'add', 'svc', '--json'], keys.added);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout) as { upstream: string; version: Record<string, unknown> }).toMatchObject({
      upstream: 'svc',
      version: { fingerprint: fp(keys.added), state: 'next' },
    });
    expect((await serverCall()).key).toBe(keys.accepted);

    const list = await cli(['keys', 'list']);
    expect(list.code, list.stderr).toBe(0);
    const { version } = keyList(list.stdout);
    expect(version(keys.accepted)!.slice(2, 5)).toEqual(['serving', `managed:${fp(keys.accepted)}`, expect.stringMatching(/ UTC \(\d+ days\)$/)]);
    expect(version(keys.primary)!.slice(2, 5)).toEqual(['fallback', 'env:SVC_KEY', 'never']);
    expect(version(keys.primary)![5]).toMatch(/^replaced; usable until \d{4}-\d\d-\d\d \d\d:\d\d UTC if no active key is$/);
    expect(version(keys.refused)!.slice(2, 5)).toEqual(['revoked', `managed:${fp(keys.refused)}`, '-']);
    expect(version(keys.refused)![5]).toMatch(/^revoked \d{4}-/);
    expect(version(keys.skipped)!.slice(2, 5)).toEqual(['retired', `managed:${fp(keys.skipped)}`, '-']);
    expect(version(keys.added)!.slice(2, 6)).toEqual([
      'next',
      `managed:${fp(keys.added)}`,
      expect.stringMatching(/ UTC \(\d+ days\)$/),
      'added; serves once a rotation switches to it',
    ]);
    for (const key of Object.values(keys)) expect(list.stdout).not.toContain(key);
  });

  it("keys list shows a version that is one of Keyward's own secrets as refused, one whose seal does not open as unreadable, not as serving", async () => {
    // The serving key is also the metrics token here: never sent, its calls answer 503.
    const own = await cli(['keys', 'list'], '', { env: { ...env, KEYWARD_METRICS_TOKEN: keys.accepted } });
    expect(own.code, own.stderr).toBe(0);
    const owned = keyList(own.stdout);
    expect(owned.version(keys.accepted)!.slice(2, 4)).toEqual(['refused', `managed:${fp(keys.accepted)}`]);
    expect(owned.version(keys.accepted)![5]).toBe(
      "its value is one of Keyward's own secrets: never sent (calls answer 503 credential_unavailable); revoke it and add a key of the upstream's own",
    );
    expect(owned.version(keys.added)![2]).toBe('next');
    // The server's warning about it goes to stderr (stdout is the table, or the JSON scripts parse).
    expect(own.stderr).toContain("managed key version is one of Keyward's own secrets");
    const ownJson = await cli(['keys', 'list', '--json'], '', { env: { ...env, KEYWARD_METRICS_TOKEN: keys.accepted } });
    const versions = (JSON.parse(ownJson.stdout) as { upstreams: Array<{ versions: Array<{ fingerprint: string; status: string }> }> }).upstreams[0]!.versions;
    expect(versions.find((v) => v.fingerprint === fp(keys.accepted))?.status).toBe('refused');
    // Another KEYWARD_VAULT_SECRET: no managed version opens; those that could serve are unreadable.
    const other = await cli(['keys', 'list'], '', { env: { ...env, KEYWARD_VAULT_SECRET: randomSecret('othervault') } });
    expect(other.code, other.stderr).toBe(0);
    const sealed = keyList(other.stdout);
    expect([keys.accepted, keys.added, keys.primary, keys.skipped, keys.refused].map((key) => sealed.version(key)![2])).toEqual([
      'unreadable',
      'unreadable',
      'fallback',
      'retired',
      'revoked',
    ]);
    expect(sealed.version(keys.accepted)![5]).toBe(
      'its sealed value does not open with this KEYWARD_VAULT_SECRET (or its seal is gone): never sent (calls answer 503 credential_unavailable)',
    );
    for (const key of Object.values(keys)) expect(own.stdout + other.stdout).not.toContain(key);
  });

  it('key and audit commands serve nobody: they run in production without a public origin or sign-in method; check-config does not', async () => {
    const toolEnv = { ...env };
    delete toolEnv.AUTH_URL;
    delete toolEnv.KEYWARD_USERS_FILE;
    const list = await cli(['keys', 'list', '--json'], '', { env: toolEnv });
    expect(list.code, list.stderr).toBe(0);
    const check = await cli(['check-config'], '', { env: toolEnv });
    expect(check.code).toBe(1);
    expect(check.stderr).toContain('AUTH_URL: must be set in production');
    expect(check.stderr).toContain('KEYWARD_USERS_FILE or KEYWARD_OIDC_ISSUER: no sign-in method is configured');
    // One field a line, as start-up prints them (not `\u000a` escapes).
    expect(check.stderr).toMatch(/\n {2}- AUTH_URL: must be set in production/);
    expect(check.stderr).not.toContain('\\u000a');
  });

  it("check-config in production refuses what npm start refuses: a memory store, which the fast lane cannot share with Next", async () => {
    const check = await cli(['check-config'], '', { env: { ...env, KEYWARD_STORE: 'memory' } });
    expect(check.code).toBe(1);
    expect(check.stdout).toBe('');
    expect(check.stderr).toContain('keyward: npm start would refuse this configuration:\n  - KEYWARD_STORE: "memory" cannot be shared');
    const valid = await cli(['check-config'], '', { env });
    expect(valid.code, valid.stderr).toBe(0);
    expect(valid.stdout).toMatch(/^keyward: configuration is valid for production \(NODE_ENV=production; /);
  });

  it('failures name the problem and exit 1: unknown upstream, short key, nothing on stdin', async () => {
    const nowhere = await cli(['keys', 'rotate', 'nope'], keys.unknownUpstream);
    expect(nowhere.code).toBe(1);
    // It says where it looked (the JSON config, this checkout's upstreams/index.ts) and what an app that installed
    // the package does about upstreams declared in its own TypeScript, which the command line never loads.
    const lines = nowhere.stderr.trimEnd().split('\n');
    expect(lines[0]).toBe('keyward: No upstream with this id is configured.');
    expect(lines[1]).toBe(`keyward: this command line knows the upstreams of KEYWARD_CONFIG (${env.KEYWARD_CONFIG}): svc; and of this Keyward checkout's upstreams/index.ts: none.`);
    expect(lines.every((line) => line.startsWith('keyward: '))).toBe(true);
    expect(lines.slice(2).join(' ')).toMatch(/upstreams an app declares in its own TypeScript .*are not loaded here.*\/api\/admin\/keys\/<upstream>\/rotate/);
    const { KEYWARD_CONFIG: file, ...rest } = env;
    const json = await cli(['keys', 'rotate', 'nope'], keys.unknownUpstream, { env: { ...rest, KEYWARD_CONFIG_JSON: readFileSync(file!, 'utf8') } });
    expect(json.stderr).toContain('keyward: this command line knows the upstreams of KEYWARD_CONFIG_JSON: svc;');
    const short = await cli(['keys', 'add', 'svc'], 'short');
    expect(short.code).toBe(1);
    expect(short.stderr).toMatch(/^keyward: A key is 8–4096 characters/);
    const empty = await cli(['keys', 'rotate', 'svc', '--skip-canary']);
    expect(empty.code).toBe(1);
    expect(empty.stdout).toBe('');
  });
});

describe('keyward keys rollback with one rotation id on two upstreams', { timeout: 120_000 }, () => {
  it('without --upstream it is refused (exit 2, naming both); with --upstream only that ring rolls back', async () => {
    const service = (key: string) => ({
      baseUrl: `${upstream.origin}/v1/`,
      auth: { type: 'header', name: 'x-api-key', secret: { env: key } },
      routes: [{ method: 'GET', path: '/items/:id' }],
    });
    const twoEnv = {
      ...env,
      KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-cli-')), 'keyward.db'),
      KEYWARD_CONFIG: writeConfigFile({ upstreams: { aaa: service('AAA_KEY'), bbb: service('BBB_KEY') } }),
      AAA_KEY: keys.aaaPrimary,
      BBB_KEY: keys.bbbPrimary,
    };
    const two = { env: twoEnv };
    for (const [id, key] of [['aaa', keys.aaaQ4], ['bbb', keys.bbbQ4]] as const) {
      const rotated = await cli(['keys', 'rotate', id, '--id', 'q4', '--skip-canary'], key, two);
      expect(rotated.code, rotated.stderr).toBe(0);
    }
    const states = async () => {
      const list = await cli(['keys', 'list', '--json'], '', two);
      expect(list.code, list.stderr).toBe(0);
      const { upstreams } = JSON.parse(list.stdout) as { upstreams: Array<{ upstream: string; rotations: Array<{ id: string; state: string }> }> };
      return Object.fromEntries(upstreams.map((ring) => [ring.upstream, ring.rotations.find((r) => r.id === 'q4')?.state]));
    };

    // Meant for bbb's q4, it would have rolled back aaa's (listed first) and said it had succeeded.
    const ambiguous = await cli(['keys', 'rollback', 'q4'], '', two);
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.stdout).toBe('');
    expect(ambiguous.stderr).toBe('keyward: rotation q4 is on more than one upstream (aaa, bbb): name one with --upstream <upstream>.\n');
    expect(await states()).toEqual({ aaa: 'switched', bbb: 'switched' });

    const run = await cli(['keys', 'rollback', 'q4', '--upstream', 'bbb'], '', two);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(
      `bbb: rotation q4 is rolled back; key ${fp(keys.bbbQ4)} no longer serves, key ${fp(keys.bbbPrimary)} serves again unless revoked or expired.\n`,
    );
    expect(await states()).toEqual({ aaa: 'switched', bbb: 'rolled_back' });

    // An upstream without that rotation: not found, nothing rolled back.
    const elsewhere = await cli(['keys', 'rollback', 'q4', '--upstream', 'svc'], '', two);
    expect(elsewhere.code).toBe(1);
    expect(elsewhere.stderr).toBe('keyward: No rotation with this id.\n');
    // --upstream belongs to rollback only (the other commands name the upstream as their argument).
    expect((await cli(['keys', 'rotate', 'aaa', '--upstream', 'bbb'], keys.aaaQ4, two)).code).toBe(2);
    expect(await states()).toEqual({ aaa: 'switched', bbb: 'rolled_back' });
  });
});

describe('keyward audit …', { timeout: 60_000 }, () => {
  it('audit export --type admin prints every admin action as a JSON line, oldest first, by fingerprint', async () => {
    const run = await cli(['audit', 'export', '--type', 'admin']);
    expect(run.code, run.stderr).toBe(0);
    const records = jsonLines(run.stdout) as AdminRecord[];
    // Each action was done once for people and once with --json (a repeat that changes nothing is recorded too).
    expect(records.map((r) => [r.action, r.upstream, r.fingerprint, r.rotationId ?? null, r.outcome])).toEqual([
      ['key.rotate', 'svc', fp(keys.accepted), `rot-${fp(keys.accepted)}`, 'switched'],
      ['key.rotate', 'svc', fp(keys.accepted), `rot-${fp(keys.accepted)}`, 'unchanged'], // the same rotation again
      ['key.rotate', 'svc', fp(keys.refused), `rot-${fp(keys.refused)}`, 'canary_failed'],
      ['key.rotate', 'svc', fp(keys.refused), `rot-${fp(keys.refused)}`, 'canary_failed'],
      ['key.rotate', 'svc', fp(keys.skipped), 'cli-skip', 'switched'],
      ['key.rollback', 'svc', fp(keys.skipped), 'cli-skip', 'rolled_back'],
      ['key.rollback', 'svc', fp(keys.skipped), 'cli-skip', 'rolled_back'],
      ['key.revoke', 'svc', fp(keys.refused), null, 'revoked'],
      ['key.revoke', 'svc', fp(keys.refused), null, 'revoked'],
      ['key.add', 'svc', fp(keys.added), null, 'next'],
      ['key.add', 'svc', fp(keys.added), null, 'unchanged'], // the same key again
    ]);
    for (const record of records) {
      expect(record).toMatchObject({ type: 'admin', actor: ACTOR });
      expect(new Date(record.at).toISOString()).toBe(record.at);
    }
    const ids = records.map((r) => Number(r.id));
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
  });

  it('audit export filters by type and upstream, and reads the call records the server wrote', async () => {
    const calls = await cli(['audit', 'export', '--type', 'call', '--upstream', 'svc']);
    expect(calls.code, calls.stderr).toBe(0);
    const records = jsonLines(calls.stdout) as CallRecord[];
    // serverCall() ran five times above: after the switch, the refused canary, the skip, the rollback, the add.
    for (const record of records)
      expect(record).toMatchObject({
        type: 'call',
        upstream: 'svc',
        userId: 'local:ops',
        status: 200,
        outcome: 'complete',
      });
    expect(records.map((r) => r.keyFingerprint)).toEqual([
      fp(keys.accepted),
      fp(keys.accepted),
      fp(keys.skipped),
      fp(keys.accepted),
      fp(keys.accepted),
    ]);
    const none = await cli(['audit', 'export', '--upstream', 'other']);
    expect(none.code, none.stderr).toBe(0);
    expect(none.stdout).toBe('');
    // --json is accepted (export is JSON Lines either way).
    const json = await cli(['audit', 'export', '--type', 'call', '--upstream', 'svc', '--json']);
    expect(json.stdout).toBe(calls.stdout);
    const bad = await cli(['audit', 'export', '--since', 'yesterday']);
    // A bad option value: exit 2, the problem, then the usage (README "Exit codes").
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^keyward: audit export: since must be an ISO 8601 time \(e\.g\. 2026-11-23T20:00:00Z\)\.\nusage: npm run keyward -- audit /);
  });

  it('audit tail -n 5 --json prints the latest five records as JSON lines, oldest first, admin actions included', async () => {
    const all = jsonLines((await cli(['audit', 'export'])).stdout);
    expect(all.length).toBe(16); // eleven admin actions, five calls
    const run = await cli(['audit', 'tail', '-n', '5', '--json']);
    expect(run.code, run.stderr).toBe(0);
    const records = jsonLines(run.stdout);
    expect(records).toEqual(all.slice(-5));
    expect(records.filter((r) => r.type === 'admin').map((r) => (r as AdminRecord).action)).toEqual([
      'key.revoke',
      'key.revoke',
      'key.add',
      'key.add',
    ]);
    expect(records.at(-1)).toMatchObject({ type: 'call', keyFingerprint: fp(keys.accepted) });
    // More than there is prints everything; -n out of range is refused.
    expect(jsonLines((await cli(['audit', 'tail', '-n', '1000', '--json'])).stdout)).toEqual(all);
    const zero = await cli(['audit', 'tail', '-n', '0']);
    expect(zero.code).toBe(2);
    expect(zero.stderr).toMatch(/^keyward: -n is 1 to 10000\nusage: npm run keyward -- audit /);
  });

  it('audit tail prints an aligned table, oldest first: time, type, who, upstream, what, result, key', async () => {
    const all = jsonLines((await cli(['audit', 'export'])).stdout);
    const run = await cli(['audit', 'tail', '-n', '3']);
    expect(run.code, run.stderr).toBe(0);
    const { header, rows } = table(run.stdout);
    expect(header).toEqual(['TIME (UTC)', 'TYPE', 'WHO', 'UPSTREAM', 'WHAT', 'RESULT', 'KEY']);
    const time = (record: AuditRecord) => record.at.slice(0, 19).replace('T', ' ');
    const [add1, add2, call] = all.slice(-3) as [AdminRecord, AdminRecord, CallRecord];
    expect(rows).toEqual([
      [time(add1), 'admin', ACTOR, 'svc', 'key.add', 'next', fp(keys.added)],
      [time(add2), 'admin', ACTOR, 'svc', 'key.add', 'unchanged', fp(keys.added)],
      [time(call), 'call', 'local:ops', 'svc', 'GET /items/:id', `200 complete (${Math.round(call.durationMs)} ms)`, fp(keys.accepted)],
    ]);
    const lines = run.stdout.trimEnd().split('\n');
    expect(new Set(lines.map((line) => line.search(/KEY|[0-9a-f]{12}$/))).size).toBe(1);

    const rotations = await cli(['audit', 'tail', '-n', '16']);
    expect(table(rotations.stdout).rows.find((row) => row[4] === `key.rotate rot-${fp(keys.refused)}`)).toEqual([
      expect.any(String),
      'admin',
      ACTOR,
      'svc',
      `key.rotate rot-${fp(keys.refused)}`,
      'canary_failed',
      fp(keys.refused),
    ]);
  });

  it('audit tail shows control characters and bidi overrides in stored text as escapes, never sends them to the terminal', async () => {
    runtime.audit.recordCall({
      requestId: 'cli-escapes',
      userId: 'oidc:\x1b[2Jevil\u202etxt',
      sessionId: null,
      upstream: 'svc',
      route: '/items/:id',
      target: null,
      method: 'GET',
      status: 200,
      keyFingerprint: null,
      bytesIn: 0,
      bytesOut: 0,
      durationMs: 1,
      outcome: 'complete',
      errorCode: null,
      clientIp: null,
      units: 0,
      scrubberHits: 0,
    });
    await runtime.audit.flush();
    const run = await cli(['audit', 'tail', '-n', '1']);
    expect(run.code, run.stderr).toBe(0);
    expect(table(run.stdout).rows[0]![2]).toBe('oidc:\\u001b[2Jevil\\u202etxt');
    expect(run.stdout).not.toMatch(/[\x1b\u202e]/);
    // --json keeps the record as stored (JSON escapes the control character itself).
    expect(jsonLines((await cli(['audit', 'tail', '-n', '1', '--json'])).stdout)[0]).toMatchObject({ userId: 'oidc:\x1b[2Jevil\u202etxt' });
  });
});

/**
 * The detector's alerts, written by the in-process runtime's Alerts (as the detector writes them) into the SQLite
 * store the CLI opens. The alert is about `root`, the only admin: the admin API refuses them its undo (403), the CLI
 * undoes it through the same path, as `cli:<OS user>`.
 */
describe('keyward alerts …', { timeout: 60_000 }, () => {
  const THROTTLE = { limit: 1, windowSeconds: 60, forMinutes: 15 };
  let throttle: Alert;
  let reauth: Alert;
  let scrubberHit: Alert;
  const detectorUndos = async () =>
    (await runtime.audit.query({ type: 'admin' }, { limit: 100 })).records.filter(
      (r): r is AdminRecord => r.type === 'admin' && r.action === 'detector.undo' && r.alertId === throttle.id,
    );

  beforeAll(async () => {
    throttle = await runtime.alerts.apply(
      { rule: 'calls', action: 'throttle', reason: 'local:root made 90 calls a minute (baseline 3).', subject: { userId: 'local:root', upstream: 'svc' }, evidence: { perMinute: 90 } },
      THROTTLE,
    );
    // A session id is kept in the alert's undo record only: never listed.
    reauth = await runtime.alerts.apply(
      { rule: 'ips_per_session', action: 'reauth', reason: 'one session from 5 networks.', subject: { userId: 'local:nobody' }, evidence: { distinctIps: 5 }, sessionIds: ['sid-never-printed-0123456789'] },
      THROTTLE,
    );
    scrubberHit = await runtime.alerts.apply(
      { rule: 'scrubber_hits', action: 'alert', reason: 'svc echoed a key.', subject: { upstream: 'svc', fingerprint: fp(keys.accepted) }, evidence: { hits: 1 } },
      THROTTLE,
    );
  });

  it('alerts list prints the alerts newest first (id, time, rule, step, user, upstream, key, state); --limit; --json the API shape', async () => {
    const run = await cli(['alerts', 'list']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toBe('');
    const { header, rows } = table(run.stdout);
    expect(header).toEqual(['ID', 'TIME (UTC)', 'RULE', 'STEP', 'USER', 'UPSTREAM', 'KEY', 'STATE']);
    const until = `active until ${new Date(Date.parse(throttle.expiresAt!)).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
    expect(rows.map((row) => [row[0], row.slice(2)])).toEqual([
      [scrubberHit.id, ['scrubber_hits', 'alert', '-', 'svc', fp(keys.accepted), 'open']],
      [reauth.id, ['ips_per_session', 'reauth', 'local:nobody', '-', '-', 'active until undone']],
      [throttle.id, ['calls', 'throttle', 'local:root', 'svc', '-', until]],
    ]);
    for (const row of rows) expect(row[1]).toMatch(MINUTE);
    expect(run.stdout).not.toContain('sid-never-printed');

    const newest = await cli(['alerts', 'list', '--limit', '1']);
    expect(newest.code, newest.stderr).toBe(0);
    expect(table(newest.stdout).rows.map((row) => row[0])).toEqual([scrubberHit.id]);
    expect(newest.stderr).toBe('keyward: the newest 1 alert; older ones with a larger --limit, or on the Alerts page\n');

    const json = await cli(['alerts', 'list', '--json']);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({ alerts: (await runtime.alerts.list({ limit: 20 })).alerts });
    expect(json.stdout).not.toContain('sid-never-printed');

    for (const limit of ['0', '201', 'abc', '1.5']) {
      const bad = await cli(['alerts', 'list', '--limit', limit]);
      expect(bad.code, limit).toBe(2);
      expect(bad.stderr).toMatch(/^keyward: --limit is 1 to 200\nusage: npm run keyward -- alerts /);
    }
  });

  it("alerts undo <id> lifts an alert about the single admin, which the API refuses them: the same undo, audited as the CLI's other actions; idempotent", async () => {
    // The throttle holds: one call a minute.
    expect((await proxyCall('root')).status).toBe(200);
    expect((await proxyCall('root')).status).toBe(429);
    expect(await runtime.store.get(throttleKey('local:root'))).not.toBeNull();
    // The admin cannot lift the detector's answer to their own account.
    const viaApi = await handleAlertUndo(
      new Request(`https://app.keyward.test/api/admin/alerts/${throttle.id}/undo`, { method: 'POST', headers: { authorization: `Bearer ${await tokenOf('root')}` } }),
      throttle.id,
      runtime,
    );
    expect(viaApi.status).toBe(403);
    expect(await runtime.store.get(throttleKey('local:root'))).not.toBeNull();

    const run = await cli(['alerts', 'undo', throttle.id]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(`alert ${throttle.id} (calls, throttle) is undone: the throttle on local:root is lifted; the detector starts over for local:root, on every instance.\n`);
    // Lifted: the mark is gone and root's calls pass again; every instance's detector is told (through the store).
    expect(await runtime.store.get(throttleKey('local:root'))).toBeNull();
    expect((await proxyCall('root')).status).toBe(200);
    expect(await runtime.alerts.forgivenAt('local:root')).not.toBeNull();
    const listed = (await runtime.alerts.list({ limit: 20 })).alerts.find((alert) => alert.id === throttle.id);
    expect(listed).toMatchObject({ state: 'undone', undoneBy: ACTOR });
    expect((await detectorUndos()).map((r) => [r.actor, r.targetUser, r.outcome])).toEqual([[ACTOR, 'local:root', 'throttle']]);

    // Again: nothing changes, and the repeat is on the trail as `unchanged` (as the API's retry).
    const again = await cli(['alerts', 'undo', throttle.id, '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toEqual({ alert: listed });
    const said = await cli(['alerts', 'undo', throttle.id]);
    expect(said.stdout).toMatch(new RegExp(`^alert ${throttle.id} was undone already \\(by ${ACTOR} \\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d UTC\\); nothing changed`));
    expect((await detectorUndos()).map((r) => r.outcome)).toEqual(['unchanged', 'unchanged', 'throttle']);
    expect(table((await cli(['alerts', 'list'])).stdout).rows.find((row) => row[0] === throttle.id)?.at(-1)).toBe(`undone by ${ACTOR}`);
  });

  it('alerts undo of an unknown or malformed id is exit 1 with a clear message; a missing or extra id is exit 2 with the usage', async () => {
    for (const id of ['al_00000000-0000-0000-0000-000000000000', 'not-an-alert']) {
      const unknown = await cli(['alerts', 'undo', id]);
      expect([unknown.code, unknown.stdout, unknown.stderr]).toEqual([1, '', 'keyward: No alert with this id.\n']);
    }
    for (const args of [['alerts', 'undo'], ['alerts', 'undo', reauth.id, scrubberHit.id], ['alerts', 'undo', reauth.id, '--limit', '5']]) {
      const bad = await cli(args);
      expect(bad.code, args.join(' ')).toBe(2);
      expect(bad.stderr).toMatch(/usage: npm run keyward -- alerts /);
    }
    expect((await runtime.alerts.list({ limit: 20 })).alerts.find((alert) => alert.id === reauth.id)?.state).toBe('active');
  });
});

describe('keyward settings from .env files (as next dev / next start read them)', { timeout: 60_000 }, () => {
  it('production: the settings in .env.local are used; the environment wins over them; without them it fails', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-cli-env-'));
    const settings = { ...env } as Record<string, string>;
    for (const name of ['PATH', 'HOME', 'TMPDIR', 'NODE_ENV']) delete settings[name];
    writeFileSync(join(dir, '.env.local'), dotenv(settings), { mode: 0o600 });
    const bare = { ...bareEnv(), NODE_ENV: 'production' };

    const run = await cli(['keys', 'list', '--json'], '', { cwd: dir, env: bare });
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toBe('keyward: settings also from .env.local\n');
    const [ring] = (JSON.parse(run.stdout) as { upstreams: Array<{ upstream: string; versions: Array<{ id: string; fingerprint: string }> }> }).upstreams;
    expect(ring!.upstream).toBe('svc');
    expect(ring!.versions.find((v) => v.id === 'env:SVC_KEY')!.fingerprint).toBe(fp(keys.primary));

    const overridden = await cli(['keys', 'list', '--json'], '', { cwd: dir, env: { ...bare, SVC_KEY: keys.fromEnvironment } });
    expect(overridden.code, overridden.stderr).toBe(0);
    const [ring2] = (JSON.parse(overridden.stdout) as { upstreams: Array<{ versions: Array<{ id: string; fingerprint: string }> }> }).upstreams;
    expect(ring2!.versions.find((v) => v.id === 'env:SVC_KEY')!.fingerprint).toBe(fp(keys.fromEnvironment));

    const without = await cli(['keys', 'list'], '', { cwd: workDir, env: bare });
    expect(without.code).toBe(1);
    expect(without.stdout).toBe('');
    expect(without.stderr).toMatch(/^keyward: Keyward settings are invalid:/);
  });

  it('NODE_ENV=production reads .env.production, not .env.development; any other NODE_ENV the reverse', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-cli-mode-'));
    const common = { ...env } as Record<string, string>;
    for (const name of ['PATH', 'HOME', 'TMPDIR', 'NODE_ENV', 'KEYWARD_CONFIG']) delete common[name];
    const devConfig = writeConfigFile({
      upstreams: {
        devsvc: {
          baseUrl: `${upstream.origin}/v1/`,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'DEV_KEY' } },
          routes: [{ method: 'GET', path: '/items/:id' }],
        },
      },
    });
    writeFileSync(join(dir, '.env.local'), dotenv(common), { mode: 0o600 });
    writeFileSync(join(dir, '.env.production'), dotenv({ KEYWARD_CONFIG: env.KEYWARD_CONFIG! }));
    writeFileSync(join(dir, '.env.development'), dotenv({ KEYWARD_CONFIG: devConfig, DEV_KEY: keys.development }));

    const upstreamsIn = (run: Run) => (JSON.parse(run.stdout) as { upstreams: Array<{ upstream: string }> }).upstreams.map((u) => u.upstream);
    const production = await cli(['keys', 'list', '--json'], '', { cwd: dir, env: { ...bareEnv(), NODE_ENV: 'production' } });
    expect(production.code, production.stderr).toBe(0);
    expect(production.stderr).toBe('keyward: settings also from .env.local, .env.production\n');
    expect(upstreamsIn(production)).toEqual(['svc']);

    for (const mode of [{}, { NODE_ENV: 'development' }] as Array<Record<string, string>>) {
      const development = await cli(['keys', 'list', '--json'], '', { cwd: dir, env: { ...bareEnv(), ...mode } });
      expect(development.code, development.stderr).toBe(0);
      expect(development.stderr).toBe('keyward: settings also from .env.local, .env.development\n');
      expect(upstreamsIn(development)).toEqual(['devsvc']);
    }
  });
});

describe('keyward help, usage and leaks', { timeout: 120_000 }, () => {
  it('--help, -h and help list every command, one line each, and exit 0; help keys / keys --help only the keys commands', async () => {
    const commands = [
      'hash-password',
      'check-config',
      'schema',
      'keys list',
      'keys add <upstream>',
      'keys rotate <upstream>',
      'keys rollback <rotation id>',
      'keys revoke <fingerprint>',
      'alerts list',
      'alerts undo <alert id>',
      'audit tail',
      'audit export',
    ];
    const outputs = new Set<string>();
    for (const args of [['--help'], ['-h'], ['help']]) {
      const run = await cli(args);
      expect(run.code, run.stderr).toBe(0);
      expect(run.stderr).toBe('');
      expect(run.stdout).toMatch(/^usage: npm run keyward -- <command> \[options\]\n/);
      for (const command of commands) expect(run.stdout).toMatch(new RegExp(`^  ${command.replace(/[<>]/g, '.')} {2,}\\S.*$`, 'm'));
      for (const option of ['--json', '--id <rotation id>', '--skip-canary', '--limit <count>', '-n <count>', '-f, --follow', '-h, --help'])
        expect(run.stdout).toContain(`  ${option}  `);
      expect(run.stdout).toContain('.env.local');
      outputs.add(run.stdout);
    }
    expect(outputs.size).toBe(1);

    for (const args of [['help', 'keys'], ['keys', '--help'], ['keys', 'rotate', 'svc', '-h']]) {
      const run = await cli(args);
      expect(run.code, run.stderr).toBe(0);
      expect(run.stdout).toMatch(/^usage: npm run keyward -- keys <command> \[options\]\n/);
      expect(run.stdout).toContain('  keys rotate <upstream>  ');
      expect(run.stdout).not.toMatch(/^ {2}audit /m);
      expect(run.stdout).not.toContain('hash-password');
    }
  });

  it('a bad command, subcommand or option is exit 2 with the usage', async () => {
    for (const args of [
      [],
      ['bogus'],
      ['help', 'bogus'],
      ['keys'],
      ['keys', 'bogus'],
      ['keys', 'rotate'],
      ['keys', 'revoke'],
      ['keys', 'list', '--bogus'],
      ['keys', 'rotate', 'svc', '--id'],
      ['alerts'],
      ['alerts', 'bogus'],
      ['alerts', 'list', 'extra'],
      ['alerts', 'list', '--bogus'],
      ['audit'],
      ['audit', 'bogus'],
      ['audit', 'tail', 'extra'],
      ['audit', 'export', '--format', 'csv'],
      ['audit', 'tail', '-n', 'abc'],
      ['audit', 'export', '--since', 'yesterday'],
      ['audit', 'export', '--until', '2026-13-40'],
      ['audit', 'export', '--type', 'foo'],
      ['hash-password', '--bogus'],
      ['check-config', '--bogus'],
      ['schema', 'extra'],
    ]) {
      const run = await cli(args);
      expect(run.code, `keyward ${args.join(' ')}: ${run.stderr}`).toBe(2);
      expect(run.stderr).toMatch(/usage: npm run keyward -- /);
      expect(run.stderr).toContain('npm run keyward -- --help');
      expect(run.stdout).toBe('');
    }
  });

  it('types refuses a config start-up refuses, with check-config\'s message, and needs no secret for it', async () => {
    const config = writeConfigFile({
      upstreams: {
        inv: {
          baseUrl: 'http://127.0.0.1:9/v1/',
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'INV_KEY' } },
          routes: [{ method: 'GET', path: '/items', query: { properties: { f: { type: 'object', properties: {} } } } }],
        },
      },
    });
    const problem = 'upstreams.inv.routes.0.query.properties.f: query parameters cannot be objects';
    const check = await cli(['check-config'], '', { env: { ...env, KEYWARD_CONFIG: config, INV_KEY: randomSecret('inv') } });
    expect(check.code).toBe(1);
    expect(check.stderr).toContain(problem);
    // INV_KEY is not set: types reads no secret.
    const types = await cli(['types', '--config', config]);
    expect([types.code, types.stdout]).toEqual([1, '']);
    expect(types.stderr).toContain(problem);
  });

  it('output through a pipe to a slow reader is whole: schema (over 64 KiB, a pipe buffer) parses', async () => {
    // As `npm run -s keyward -- schema | jq`: the reader starts late, so the output waits in the pipe's buffer.
    const command = `"${TSX}" --conditions=react-server "${SCRIPT}" schema | (sleep 1; cat)`;
    const shellEnv: Record<string, string> = { ...env, TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json') };
    const stdout = await new Promise<string>((resolvePromise, reject) => {
      const child = spawn('sh', ['-c', command], { cwd: workDir, env: shellEnv as NodeJS.ProcessEnv });
      const out: Buffer[] = [];
      child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
      child.on('error', reject);
      child.on('close', () => resolvePromise(Buffer.concat(out).toString('utf8')));
    });
    expect(stdout.length).toBeGreaterThan(64 * 1024);
    expect(JSON.parse(stdout)).toEqual(configJsonSchema());
  });

  it('hash-password refuses what a sign-in form could never send: over 1024 characters, or a line break', async () => {
    const long = await cli(['hash-password'], 'x'.repeat(2000));
    expect([long.code, long.stdout]).toEqual([1, '']);
    expect(long.stderr).toContain('passwords must be 8 to 1024 characters');
    // Piped input loses one final line break; a second one would be part of the password.
    const blankLine = await cli(['hash-password'], 'longenough\n\n');
    expect([blankLine.code, blankLine.stdout]).toEqual([1, '']);
    expect(blankLine.stderr).toContain('line break or another control character');
    const good = await cli(['hash-password'], 'longenough\n');
    expect(good.code, good.stderr).toBe(0);
    expect(good.stdout).toMatch(/^scrypt\$131072\$8\$1\$[\w-]{22}\$[\w-]{43}\n$/);
  });

  it('an unexpected failure says what kind it is (code, system call), and a broken development file is named', async () => {
    const out = await cli(['types', '--out', '/nonexistent/dir/x.d.ts', '--config', join(ROOT, 'config/demo.json')]);
    expect([out.code, out.stderr.trim().split('\n').at(-1)]).toEqual([1, 'keyward: unexpected error (ENOENT open)']);
    // Development (no AUTH_SECRET): the generated secrets file, cut short, is named with what to do, not "unexpected error".
    const dir = mkdtempSync(join(tmpdir(), 'keyward-cli-dev-'));
    mkdirSync(join(dir, '.keyward'));
    writeFileSync(join(dir, '.keyward', 'dev-secrets.json'), '{"AUTH_SECRET": "abc');
    const development = { PATH: process.env.PATH ?? '', NODE_ENV: 'development', HOME: dir };
    const broken = await cli(['keys', 'list'], '', { cwd: dir, env: development });
    expect(broken.code).toBe(1);
    expect(broken.stderr).toContain('dev-secrets.json is not valid JSON');
    expect(broken.stderr).toContain('fix or delete it');
    writeFileSync(join(dir, '.keyward', 'dev-secrets.json'), 'null');
    const wrongShape = await cli(['keys', 'list'], '', { cwd: dir, env: development });
    expect(wrongShape.code).toBe(1);
    expect(wrongShape.stderr).toContain('dev-secrets.json is not what Keyward wrote there');
  });

  it('nothing the CLI printed holds a key or a secret from its environment, in any encoding', () => {
    expect(printed.length).toBeGreaterThan(80);
    const all = printed.join('\n');
    const secrets = [...Object.values(keys), env.AUTH_SECRET!, env.KEYWARD_SESSION_SECRET!, env.KEYWARD_VAULT_SECRET!];
    for (const secret of secrets) {
      for (const form of expectedForms(secret))
        expect(all.includes(form), `a form of ${secret.slice(0, 6)}… was printed`).toBe(false);
    }
  });
});
