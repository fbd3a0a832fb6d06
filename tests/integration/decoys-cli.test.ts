import { spawn } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DecoySet, readDecoysFile } from '../../lib/core/detect/decoys';

/**
 * `npm run keyward -- decoys …` as a real process (tsx, react-server condition), in an empty directory of its own
 * (the CLI reads the `.env*` files of its working directory; a developer's own must not change these tests).
 */
const ROOT = resolve(import.meta.dirname, '../..');
const TSX = join(ROOT, 'node_modules/.bin/tsx');
const SCRIPT = join(ROOT, 'scripts/keyward.ts');

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function cli(args: readonly string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  const childEnv: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '',
    TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json'),
    ...env,
  };
  return new Promise((resolvePromise, reject) => {
    const child = spawn(TSX, ['--conditions=react-server', SCRIPT, ...args], {
      cwd,
      env: childEnv as NodeJS.ProcessEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', reject);
    child.on('close', (code) =>
      resolvePromise({
        code,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      }),
    );
  });
}

const emptyDir = () => mkdtempSync(join(tmpdir(), 'keyward-decoys-cli-'));

describe('npm run keyward -- decoys', () => {
  it('create prints the value once, on stdout, and adds the decoy to keyward.decoys.json by default', async () => {
    const dir = emptyDir();
    const run = await cli(['decoys', 'create', '--shape', 'github', '--note', 'README badge'], dir);
    expect(run.code).toBe(0);
    const value = run.stdout.trim();
    expect(value).toMatch(/^ghp_[A-Za-z0-9]{36}$/);
    const file = join(dir, 'keyward.decoys.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const [decoy] = readDecoysFile(file);
    expect(decoy).toMatchObject({ shape: 'github', value, note: 'README badge' });
    expect(run.stderr).toContain(`decoy ${decoy!.id} (github) added to keyward.decoys.json`);
    // Not watched yet: the server reads KEYWARD_DECOYS_FILE, which is not set here.
    expect(run.stderr).toContain('once KEYWARD_DECOYS_FILE names keyward.decoys.json');
    expect(run.stderr).not.toContain(value);
  });

  it('create --shape aws prints the access key id and the secret access key; KEYWARD_DECOYS_FILE names the file', async () => {
    const dir = emptyDir();
    const file = join(dir, 'planted.json');
    const run = await cli(['decoys', 'create', '--shape', 'aws'], dir, { KEYWARD_DECOYS_FILE: file });
    expect(run.code).toBe(0);
    const [id, secret] = run.stdout.trim().split('\n');
    expect(id).toMatch(/^AKIA[A-Z2-7]{16}$/);
    expect(secret).toMatch(/^[A-Za-z0-9/+]{40}$/);
    expect(run.stderr).not.toContain('once KEYWARD_DECOYS_FILE names');
    const decoys = new DecoySet(readDecoysFile(file));
    expect(decoys.find(secret!)).toBe(decoys.find(id!));
  });

  it('create --json prints the record; list shows every decoy without a value', async () => {
    const dir = emptyDir();
    const file = join(dir, 'd.json');
    const records = [];
    for (const shape of ['openai', 'stripe']) {
      const run = await cli(['decoys', 'create', '--shape', shape, '--file', file, '--json'], dir);
      expect(run.code).toBe(0);
      records.push(JSON.parse(run.stdout) as { id: string; shape: string; value: string; createdAt: string });
    }
    expect(readDecoysFile(file)).toEqual(records);
    const table = await cli(['decoys', 'list', '--file', file], dir);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^ID +SHAPE +CREATED \(UTC\) +NOTE\n/);
    const listed = await cli(['decoys', 'list', '--file', file, '--json'], dir);
    expect(JSON.parse(listed.stdout)).toEqual({
      decoys: records.map(({ id, shape, createdAt }) => ({ id, shape, note: null, createdAt })),
    });
    for (const { value } of records) expect(table.stdout + listed.stdout).not.toContain(value);
  });

  it('refuses an unknown shape (exit 2, with the usage) and an invalid file (exit 1, naming the field), writing nothing', async () => {
    const dir = emptyDir();
    const unknown = await cli(['decoys', 'create', '--shape', 'paypal'], dir);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--shape must be one of openai, anthropic, stripe, github, google, aws, generic');
    expect(unknown.stderr).toContain('usage: npm run keyward -- decoys');
    const file = join(dir, 'bad.json');
    writeFileSync(
      file,
      JSON.stringify({ decoys: [{ id: 'd1', shape: 'openai', value: 'short', createdAt: new Date().toISOString() }] }),
    );
    const invalid = await cli(['decoys', 'create', '--shape', 'openai', '--file', file], dir);
    expect(invalid.code).toBe(1);
    expect(invalid.stderr).toContain('decoys.0.value: must be at least 16 characters');
    expect(invalid.stdout).toBe('');
    expect(JSON.parse(readFileSync(file, 'utf8')).decoys).toHaveLength(1);
  });

  it('creates run at once all land in the file (each printed decoy is watched), through a symbolic link to it', async () => {
    const dir = emptyDir();
    const real = join(dir, 'planted.json');
    writeFileSync(real, '{"decoys": []}\n', { mode: 0o600 });
    symlinkSync(real, join(dir, 'keyward.decoys.json'));
    const runs = await Promise.all(Array.from({ length: 6 }, () => cli(['decoys', 'create', '--shape', 'openai', '--json'], dir)));
    expect(runs.map((run) => run.code)).toEqual([0, 0, 0, 0, 0, 0]);
    const printed = runs.map((run) => (JSON.parse(run.stdout) as { value: string }).value).sort();
    expect(lstatSync(join(dir, 'keyward.decoys.json')).isSymbolicLink()).toBe(true);
    expect(readDecoysFile(real).map((decoy) => decoy.value).sort()).toEqual(printed);
  }, 60_000);

  it('help decoys lists the decoys commands only', async () => {
    const run = await cli(['help', 'decoys'], emptyDir());
    expect(run.code).toBe(0);
    expect(run.stdout).toContain('decoys create --shape <shape>');
    expect(run.stdout).toContain('decoys list');
    expect(run.stdout).not.toContain('keys rotate');
  });
});
