import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AdminRecord, AuditRecord, CallRecord } from '../../lib/core/audit/audit';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { capturingLogger } from '../fixtures/claims-session';
import { writeConfigFile } from '../fixtures/config';
import { randomSecret } from '../fixtures/secrets';
import { bearerToken } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { expectedForms } from '../unit/scrub-oracle';

/**
 * `npm run keyward -- keys … | audit …` as a real process (tsx, react-server condition, production env) on
 * the embedded SQLite store, against a real node:http upstream that answers the canary. A Keyward runtime in
 * this process shares the SQLite file, as a server on the same host would: it follows the CLI's rotations
 * and writes call records the CLI then reads.
 */
const ROOT = resolve(import.meta.dirname, '../..');
const TSX = join(ROOT, 'node_modules/.bin/tsx');
const ACTOR = `cli:${userInfo().username}`;
const fp = (secret: string) => createHash('sha256').update(secret, 'utf8').digest('hex').slice(0, 12);

const keys = {
  primary: randomSecret('cli'),
  accepted: randomSecret('accepted'),
  refused: randomSecret('refused'),
  skipped: randomSecret('skipped'),
  added: randomSecret('added'),
  unknownUpstream: randomSecret('nowhere'),
};
/** Keys the canary accepts (x-api-key on GET /v1/canary); anything else is 401. */
const canaryAccepts = new Set<string>();
let upstream: TestUpstream;
let env: Record<string, string>;
let runtime: Runtime;
/** Everything the CLI printed, for the final leak check. */
const printed: string[] = [];

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the CLI to completion with `stdin` as its input (closed at once when empty). */
function cli(args: readonly string[], stdin = ''): Promise<Run> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(TSX, ['--conditions=react-server', 'scripts/keyward.ts', ...args], {
      cwd: ROOT,
      env: env as NodeJS.ProcessEnv,
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

const canaryCount = () => upstream.requests.filter((r) => r.url === '/v1/canary').length;

/** A proxied call through the in-process runtime (same store): which key did the upstream get? */
async function serverCall(): Promise<{ key: unknown; record: CallRecord }> {
  const token = await bearerToken(env.KEYWARD_SESSION_SECRET!, { sub: 'local:ops', roles: ['user'] });
  const request = new Request('https://app.keyward.test/api/proxy/svc/items/1', {
    headers: { authorization: `Bearer ${token}` },
  });
  const response = await handleProxy(request, { upstream: 'svc', path: ['items', '1'] }, runtime);
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

beforeAll(async () => {
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
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? tmpdir(),
    ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}),
    NODE_ENV: 'production',
    AUTH_SECRET: randomSecret('auth'),
    KEYWARD_SESSION_SECRET: randomSecret('sess'),
    KEYWARD_VAULT_SECRET: randomSecret('vault'),
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
  it('keys list prints each version by fingerprint and status, never the key', async () => {
    const run = await cli(['keys', 'list']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toMatch(new RegExp(`^svc\\n  ${fp(keys.primary)}  serving +env:SVC_KEY +no expiry\\n$`));
    expect(run.stdout).not.toContain(keys.primary);
  });

  it('keys rotate <upstream> (key on stdin): the canary passes, exit 0, rotation JSON; the server switches on its next call', async () => {
    canaryAccepts.add(keys.accepted);
    const canaries = canaryCount();
    const run = await cli(['keys', 'rotate', 'svc'], `${keys.accepted}\n`);
    expect(run.code, run.stderr).toBe(0);
    const { rotation } = JSON.parse(run.stdout) as { rotation: Record<string, unknown> };
    expect(rotation).toMatchObject({
      id: `rot-${fp(keys.accepted)}`,
      upstream: 'svc',
      state: 'switched',
      from: [fp(keys.primary)],
      to: fp(keys.accepted),
      canaryStatus: 200,
      actor: ACTOR,
    });
    // The canary went out once, with the new key (the trailing line break of stdin is not part of it).
    expect(canaryCount()).toBe(canaries + 1);
    expect(upstream.requests.filter((r) => r.url === '/v1/canary').at(-1)!.headers['x-api-key']).toBe(keys.accepted);
    const call = await serverCall();
    expect(call.key).toBe(keys.accepted);
    expect(call.record.keyFingerprint).toBe(fp(keys.accepted));
  });

  it('keys rotate: the canary refuses, exit 1 canary_failed, and traffic stays on the current key', async () => {
    const run = await cli(['keys', 'rotate', 'svc'], keys.refused);
    expect(run.code).toBe(1);
    expect(run.stdout).toContain('canary_failed');
    expect((JSON.parse(run.stdout) as { rotation: Record<string, unknown> }).rotation).toMatchObject({
      state: 'canary_failed',
      canaryStatus: 401,
      to: fp(keys.refused),
    });
    expect((await serverCall()).key).toBe(keys.accepted);
  });

  it('keys rotate --id <id> --skip-canary switches without a canary request', async () => {
    const canaries = canaryCount();
    const run = await cli(['keys', 'rotate', 'svc', '--id', 'cli-skip', '--skip-canary'], keys.skipped);
    expect(run.code, run.stderr).toBe(0);
    expect((JSON.parse(run.stdout) as { rotation: Record<string, unknown> }).rotation).toMatchObject({
      id: 'cli-skip',
      state: 'switched',
      canaryStatus: null,
      from: [fp(keys.accepted)],
      to: fp(keys.skipped),
    });
    expect(canaryCount()).toBe(canaries);
    expect((await serverCall()).key).toBe(keys.skipped);
  });

  it('keys rollback <id> puts the replaced version back; an unknown id is exit 1 with a clear message', async () => {
    const run = await cli(['keys', 'rollback', 'cli-skip']);
    expect(run.code, run.stderr).toBe(0);
    expect((JSON.parse(run.stdout) as { rotation: Record<string, unknown> }).rotation).toMatchObject({
      id: 'cli-skip',
      state: 'rolled_back',
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
    expect(JSON.parse(run.stdout)).toEqual({
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
    expect((JSON.parse(run.stdout) as { version: Record<string, unknown> }).version).toMatchObject({
      fingerprint: fp(keys.added),
      state: 'next',
    });
    expect((await serverCall()).key).toBe(keys.accepted);

    const list = await cli(['keys', 'list']);
    expect(list.code, list.stderr).toBe(0);
    const status = (key: string) => new RegExp(`^  ${fp(key)}  (\\S+) `, 'm').exec(list.stdout)?.[1];
    expect(status(keys.accepted)).toBe('serving');
    expect(status(keys.primary)).toBe('fallback');
    expect(status(keys.refused)).toBe('revoked');
    expect(status(keys.skipped)).toBe('retired');
    expect(status(keys.added)).toBe('next');
  });

  it('failures name the problem and exit 1: unknown upstream, short key, nothing on stdin', async () => {
    const nowhere = await cli(['keys', 'rotate', 'nope'], keys.unknownUpstream);
    expect(nowhere.code).toBe(1);
    expect(nowhere.stderr).toBe('keyward: No upstream with this id is configured.\n');
    const short = await cli(['keys', 'add', 'svc'], 'short');
    expect(short.code).toBe(1);
    expect(short.stderr).toMatch(/^keyward: A key is 8–4096 characters/);
    const empty = await cli(['keys', 'rotate', 'svc', '--skip-canary']);
    expect(empty.code).toBe(1);
    expect(empty.stdout).toBe('');
  });
});

describe('keyward audit …', { timeout: 60_000 }, () => {
  it('audit export --type admin prints every admin action as a JSON line, oldest first, by fingerprint', async () => {
    const run = await cli(['audit', 'export', '--type', 'admin']);
    expect(run.code, run.stderr).toBe(0);
    const records = jsonLines(run.stdout) as AdminRecord[];
    expect(records.map((r) => [r.action, r.upstream, r.fingerprint, r.rotationId ?? null, r.outcome])).toEqual([
      ['key.rotate', 'svc', fp(keys.accepted), `rot-${fp(keys.accepted)}`, 'switched'],
      ['key.rotate', 'svc', fp(keys.refused), `rot-${fp(keys.refused)}`, 'canary_failed'],
      ['key.rotate', 'svc', fp(keys.skipped), 'cli-skip', 'switched'],
      ['key.rollback', 'svc', fp(keys.skipped), 'cli-skip', 'rolled_back'],
      ['key.revoke', 'svc', fp(keys.refused), null, 'revoked'],
      ['key.add', 'svc', fp(keys.added), null, 'next'],
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
    const bad = await cli(['audit', 'export', '--since', 'yesterday']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe('keyward: since must be an ISO 8601 time.\n');
  });

  it('audit tail -n 5 prints the latest five records as JSON lines, oldest first, admin actions included', async () => {
    const all = jsonLines((await cli(['audit', 'export'])).stdout);
    expect(all.length).toBe(11); // six admin actions, five calls
    const run = await cli(['audit', 'tail', '-n', '5']);
    expect(run.code, run.stderr).toBe(0);
    const records = jsonLines(run.stdout);
    expect(records).toEqual(all.slice(-5));
    expect(records.filter((r) => r.type === 'admin').map((r) => (r as AdminRecord).action)).toEqual(
      all
        .slice(-5)
        .filter((r) => r.type === 'admin')
        .map((r) => (r as AdminRecord).action),
    );
    expect(records.filter((r) => r.type === 'admin').map((r) => (r as AdminRecord).action)).toEqual([
      'key.rollback',
      'key.revoke',
      'key.add',
    ]);
    expect(records.at(-1)).toMatchObject({ type: 'call', keyFingerprint: fp(keys.accepted) });
    // More than there is prints everything; -n out of range is refused.
    expect(jsonLines((await cli(['audit', 'tail', '-n', '1000'])).stdout)).toEqual(all);
    const zero = await cli(['audit', 'tail', '-n', '0']);
    expect(zero.code).toBe(1);
    expect(zero.stderr).toBe('keyward: -n is 1 to 10000.\n');
  });
});

describe('keyward usage and leaks', { timeout: 120_000 }, () => {
  it('a bad command, subcommand or option is exit 2 with the usage', async () => {
    for (const args of [
      [],
      ['bogus'],
      ['keys'],
      ['keys', 'bogus'],
      ['keys', 'rotate'],
      ['keys', 'revoke'],
      ['keys', 'list', '--bogus'],
      ['keys', 'rotate', 'svc', '--id'],
      ['audit'],
      ['audit', 'bogus'],
      ['audit', 'tail', 'extra'],
      ['audit', 'export', '--format', 'csv'],
    ]) {
      const run = await cli(args);
      expect(run.code, `keyward ${args.join(' ')}: ${run.stderr}`).toBe(2);
      expect(run.stderr).toMatch(/usage: npm run keyward -- /);
      expect(run.stdout).toBe('');
    }
  });

  it('nothing the CLI printed holds a key or a secret from its environment, in any encoding', () => {
    expect(printed.length).toBeGreaterThan(40);
    const all = printed.join('\n');
    const secrets = [...Object.values(keys), env.AUTH_SECRET!, env.KEYWARD_SESSION_SECRET!, env.KEYWARD_VAULT_SECRET!];
    for (const secret of secrets) {
      for (const form of expectedForms(secret))
        expect(all.includes(form), `a form of ${secret.slice(0, 6)}… was printed`).toBe(false);
    }
  });
});
