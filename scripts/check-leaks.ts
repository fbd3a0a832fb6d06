/**
 * `npm run check:leaks`: builds the app with random canary values in every secret variable and scans all of
 * the build output (static chunks, server-rendered HTML and RSC payloads, source maps, server bundles, traces)
 * for them in raw and encoded forms. Exits 1 on any hit, naming the file and the variable, never the value.
 * Decoy keys (KEYWARD_DECOYS_FILE, else keyward.decoys.json if present) are meant to be found: one planted in
 * the build (a NEXT_PUBLIC_ variable) is listed as "decoy (expected)" and does not fail the scan.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readDecoysFile } from '../lib/core/detect/decoys';
import { upstreams } from '../upstreams';
import { scanBuild, secretVariables } from './leak-scan';

const cwd = process.cwd();
const distDir = '.next-leakcheck';
const canary = (name: string) => `canary_${name.toLowerCase()}_${randomBytes(18).toString('base64url')}`;

// The variables to fill with canaries, from the settings `next build` reads (.env files included) and the config
// it gets: your own (KEYWARD_CONFIG, KEYWARD_CONFIG_JSON, TypeScript adapters), else the demo's.
const { names, configPath } = secretVariables(cwd, upstreams);
const secrets: Record<string, string> = Object.fromEntries([...names].map((name) => [name, canary(name)]));
// REDIS_URL must stay a URL for the settings to parse: its password is the canary scanned for. The build uses
// SQLite (a store nobody has to reach).
const redisPassword = canary('REDIS_URL');
secrets['REDIS_URL password'] = redisPassword;
const canaryEnv = Object.fromEntries(Object.entries(secrets).filter(([name]) => names.has(name)));
// Decoy values by decoy id (an AWS decoy's secret access key too); the default file may not exist.
const decoysFile = process.env.KEYWARD_DECOYS_FILE ?? join(cwd, 'keyward.decoys.json');
const decoys = Object.fromEntries(
  readDecoysFile(decoysFile, process.env.KEYWARD_DECOYS_FILE ? 'error' : 'empty').flatMap((decoy) => [
    [decoy.id, decoy.value],
    ...(decoy.secret === undefined ? [] : [[`${decoy.id} (secret)`, decoy.secret]]),
  ]),
);

const usersDir = mkdtempSync(join(tmpdir(), 'keyward-leakcheck-'));
writeFileSync(join(usersDir, 'users.json'), JSON.stringify({ users: [] }));

console.log(`check:leaks: building into ${distDir} with canaries in ${names.size + 1} secret variables…`);
rmSync(join(cwd, distDir), { recursive: true, force: true });
const build = spawnSync(process.execPath, [join(cwd, 'node_modules', 'next', 'dist', 'bin', 'next'), 'build'], {
  cwd,
  env: {
    ...process.env,
    ...canaryEnv,
    REDIS_URL: `redis://default:${redisPassword}@redis.invalid:6379`,
    KEYWARD_STORE: 'sqlite',
    KEYWARD_STORE_PATH: join(usersDir, 'keyward.db'),
    KEYWARD_DIST_DIR: distDir,
    ...(configPath ? { KEYWARD_CONFIG: configPath } : {}),
    KEYWARD_USERS_FILE: join(usersDir, 'users.json'),
    KEYWARD_OIDC_ISSUER: 'https://issuer.invalid/',
    KEYWARD_OIDC_CLIENT_ID: 'leakcheck',
    NEXT_TELEMETRY_DISABLED: '1',
  },
  stdio: ['ignore', 'pipe', 'pipe'],
  encoding: 'utf8',
});
if (build.status !== 0) {
  // The build output cannot hold the canaries' values in a useful way, but scrub them anyway.
  let output = `${build.stdout}\n${build.stderr}`;
  for (const value of Object.values(secrets)) output = output.split(value).join('[canary]');
  console.error(output);
  console.error('check:leaks: the build failed');
  process.exit(1);
}

const { leaks: hits, decoys: planted } = scanBuild(join(cwd, distDir), secrets, decoys);
rmSync(usersDir, { recursive: true, force: true });
if (planted.length > 0) {
  console.log(`check:leaks: ${planted.length} decoy hit(s), planted on purpose:`);
  for (const hit of planted) console.log(`  - ${hit.file}: ${hit.name}: decoy (expected) (${hit.form})`);
}
if (hits.length > 0) {
  console.error(`check:leaks: FAILED, ${hits.length} hit(s):`);
  for (const hit of hits) console.error(`  - ${hit.file}: ${hit.name} (${hit.form})`);
  process.exit(1);
}
rmSync(join(cwd, distDir), { recursive: true, force: true });
console.log(`check:leaks: no secret found in the build output (${names.size + 1} variables, raw and encoded forms)`);
