import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { nodeVersionProblem, requiredNodeRange, satisfies } from '../../../scripts/require-node.mjs';

/**
 * scripts/require-node.mjs runs before `npm run dev`, `build`, `start` and `keyward`: on a Node older than
 * package.json's engines.node it prints one line naming the required version and exits 1, instead of
 * Keyward crashing later (`No such built-in module: node:sqlite` on Node 20).
 */
const ROOT = resolve(import.meta.dirname, '../../..');
const SCRIPT = join(ROOT, 'scripts/require-node.mjs');
const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  engines: { node: string };
  scripts: Record<string, string>;
};
/** The machine's own Node, older than Keyward's minimum on these machines. */
const OLD_NODE = '/usr/bin/node';
const oldNodeVersion = existsSync(OLD_NODE) ? spawnSync(OLD_NODE, ['-p', 'process.versions.node'], { encoding: 'utf8' }).stdout.trim() : null;
const oldNodeIsOld = oldNodeVersion !== null && !satisfies(oldNodeVersion, manifest.engines.node);
const oldNpm = join(dirname(OLD_NODE), 'npm');

const expectedLine = (version: string, executable: string) =>
  `keyward: Node.js ${manifest.engines.node} is required (package.json "engines"); this is Node.js ${version} at ${executable}.\n`;

describe('satisfies(version, ">=x.y.z")', () => {
  it.each([
    ['22.13.0', true],
    ['v22.13.0', true],
    ['22.13.1', true],
    ['22.14.0', true],
    ['23.0.0', true],
    ['24.22.3', true],
    ['100.0.0', true],
    ['22.12.9', false],
    ['22.9.0', false],
    ['21.99.99', false],
    ['20.20.2', false],
    ['18.20.4', false],
    ['2.13.0', false],
    ['not a version', false],
  ])('%s → %s', (version, expected) => {
    expect(satisfies(version, '>=22.13.0')).toBe(expected);
  });

  it('refuses a range it does not understand instead of letting any Node through', () => {
    for (const range of ['^22.13.0', '22.x', '>=22.13.0 <25', '>=22', '>22.13.0', '']) {
      expect(() => satisfies('24.0.0', range), range).toThrow(/understands engines.node ">=x.y.z" only/);
    }
  });

  it("reads package.json's engines.node, a range it understands", () => {
    expect(requiredNodeRange()).toBe(manifest.engines.node);
    expect(() => satisfies(process.versions.node, requiredNodeRange())).not.toThrow();
  });
});

describe('nodeVersionProblem', () => {
  it('is one line naming the required range, the running version and the executable; null when it satisfies', () => {
    expect(nodeVersionProblem('20.20.2', '>=22.13.0', '/usr/bin/node')).toBe(
      'keyward: Node.js >=22.13.0 is required (package.json "engines"); this is Node.js 20.20.2 at /usr/bin/node.',
    );
    expect(nodeVersionProblem('18.19.1', manifest.engines.node, '/opt/node18/bin/node')).toBe(expectedLine('18.19.1', '/opt/node18/bin/node').trimEnd());
    expect(nodeVersionProblem('22.13.0', '>=22.13.0', '/x/node')).toBeNull();
  });
});

describe('node scripts/require-node.mjs', { timeout: 60_000 }, () => {
  it('exits 0 without a word under the Node running these tests', () => {
    const run = spawnSync(process.execPath, [SCRIPT], { cwd: ROOT, encoding: 'utf8' });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toBe('');
    expect(run.stderr).toBe('');
  });

  it.skipIf(!oldNodeIsOld)(`under ${OLD_NODE} (${oldNodeVersion ?? 'absent'}): exit 1 with one line naming the required version`, () => {
    // From another directory too: the script finds package.json next to itself.
    for (const cwd of [ROOT, dirname(ROOT)]) {
      const run = spawnSync(OLD_NODE, [SCRIPT], { cwd, encoding: 'utf8' });
      expect(run.status).toBe(1);
      expect(run.stdout).toBe('');
      expect(run.stderr).toBe(expectedLine(oldNodeVersion!, OLD_NODE));
    }
  });

  it('runs first in the npm scripts that start Keyward, and arguments after `--` still reach the program', () => {
    for (const name of ['dev', 'build', 'start', 'keyward'])
      expect(manifest.scripts[name], name).toMatch(/^node scripts\/require-node\.mjs && \S/);
    const npm = (args: string[]) =>
      spawnSync('npm', ['--silent', ...args], {
        cwd: ROOT,
        encoding: 'utf8',
        env: { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`, NEXT_TELEMETRY_DISABLED: '1' },
      });
    // `npm start -- --help` (the fast lane, scripts/start.mjs) answers without a build: the option reached it, not the check.
    const start = npm(['start', '--', '--help']);
    expect(start.status, start.stderr).toBe(0);
    expect(start.stdout).toMatch(/Usage: npm start/);
    expect(start.stdout).toMatch(/-p, --port <port>/);
    const keyward = npm(['run', 'keyward', '--', 'keys', '--help']);
    expect(keyward.status, keyward.stderr).toBe(0);
    expect(keyward.stdout).toMatch(/^usage: npm run keyward -- keys <command>/);
  });

  it.skipIf(!oldNodeIsOld || !existsSync(oldNpm))('npm start | run build | run keyward on the old Node: exit 1 with the one line', () => {
    // `--help` everywhere: were the check not run first, each would answer 0 (or crash) instead of
    // starting a server or a build. `npm run dev` has the same prefix (checked above).
    for (const script of [['start', '--', '--help'], ['run', 'build', '--', '--help'], ['run', 'keyward', '--', '--help']]) {
      const run = spawnSync(oldNpm, ['--silent', ...script], {
        cwd: ROOT,
        encoding: 'utf8',
        // The old Node first on PATH, as on a machine that has only it; npm starts scripts with that `node`.
        env: { ...process.env, PATH: `${dirname(OLD_NODE)}:/bin` },
      });
      expect(run.status, script.join(' ')).toBe(1);
      expect(run.stdout).toBe('');
      expect(run.stderr).toBe(expectedLine(oldNodeVersion!, OLD_NODE));
    }
  });
});
