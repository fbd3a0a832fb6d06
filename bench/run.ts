/**
 * `npm run bench` — side-by-side load test on loopback, in one run (issue 12 part 5):
 *   upstream  the bench upstream called directly (the ceiling)
 *   floor     an empty Next route handler answering from memory (app/api/bench/floor): Next's own ceiling
 *   naive     a Next route handler doing the tutorial fetch passthrough (app/api/bench/naive)
 *   keyward   Keyward's route handler (`next start`): /api/proxy/<id>/... with a real Auth.js session cookie
 *   fastlane  Keyward's fast lane (`npm start`, server.ts): the same pipeline behind a plain Node server
 *   fastify   @fastify/http-proxy, the reference Node proxy (optional devDependency: skipped with a note when absent)
 * for four workloads: small JSON, 1 MiB, SSE time to first event, WebSocket round trip; keyward and fastlane
 * once with the embedded store (SQLite) and once with Redis (a private redis-server on a free loopback port).
 *
 *   npm run bench                  full run (~6 min)
 *   npm run bench -- --quick       smoke run (~1.5 min)
 *   npm run bench -- --soak        then 10 min at 80 % of the fast lane's small-JSON maximum (--quick: 40 s)
 *   npm run bench -- --big         then 1 GiB up and 1 GiB down through both lanes (--quick: 128 MiB)
 *   npm run bench -- --big-only    only that (no workloads): each lane's RSS growth from a fresh server
 *   npm run bench -- --build       `npm run build` first even if a build exists
 *   npm run bench -- --profile     afterwards, CPU-profile each lane under small-JSON load (naive and keyward on
 *                                  `next start`, then the fast lane);
 *                                  --profile=mib profiles the 1 MiB workload instead, --profile=sse the SSE streams
 *   npm run bench -- --app-dir=DIR measure another checkout (e.g. a copy with an experimental change)
 *   npm run bench -- --targets=fastlane,fastify --workloads=small
 *                                  only those targets (the upstream always runs) and workloads: a quicker loop
 *                                  while working on one lane; ratios to a target left out are null
 *   npm run bench -- --sse-concurrency=N
 *                                  SSE streams open at a time (1-64; default 8, --quick 4): 1 measures the
 *                                  latency a proxy adds with no load behind it
 *   npm run bench -- --ab=FILE     adds `fastlane-ab`: another build of the fast lane (a copy of an earlier
 *                                  .next/keyward-server.mjs) with SQLite and with Redis, in the same rotating
 *                                  rounds: an A/B of a change on a machine too noisy to compare two runs
 *
 * Results: a table on stdout and bench/results/latest.json (bench/README.md explains every field). Every load
 * loop is bounded in count and time, only loopback targets are accepted (see guard.ts), and a watchdog ends the run.
 */
import autocannon, { type Result } from 'autocannon';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { cpSync, existsSync, realpathSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { Redis } from 'ioredis';
import { signIn, startApp, type AppServer } from '../tests/fixtures/app-server';
import { batchScriptOf, monitorRedis, startRedisServer, type RedisServer } from '../tests/fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../tests/fixtures/secrets';
import { writeUsersFile } from '../tests/fixtures/users';
import { transfer, type BigResult } from './big';
import { assertLoopback, MAX_SAMPLES } from './guard';
import { cpuMs, rssMiB } from './proc';
import { analyzeProfile, printProfile, type ProfileSummary } from './profile';
import { startServer, type BenchServer } from './servers';
import { runSse } from './sse';
import { percentiles, round } from './stats';
import { runWs } from './ws';

const ROOT = resolve(import.meta.dirname, '..');
const RESULTS = join(ROOT, 'bench', 'results');

const args = new Set(process.argv.slice(2));
/** `--profile` profiles small JSON; `--profile=mib` the 1 MiB body; `--profile=sse` SSE streams. */
let profileWorkload: 'small' | 'mib' | 'sse' | null = null;
/** The app to build and measure: this checkout, or `--app-dir=<path>` (e.g. an experimental copy). */
let APP_SOURCE = ROOT;
/** `--targets=a,b` and `--workloads=a,b`: only those (null: all). */
let onlyTargets: Set<string> | null = null;
let onlyWorkloads: Set<string> | null = null;
/** `--ab=<file>`: a fast lane bundle to run beside this build's (target `fastlane-ab`). */
let abBundle: string | null = null;
/** `--sse-concurrency=N`: SSE streams at a time (null: the run's default). */
let sseConcurrency: number | null = null;
for (const arg of args) {
  if (arg.startsWith('--ab=')) abBundle = resolve(arg.slice('--ab='.length));
  else if (arg.startsWith('--sse-concurrency=')) {
    sseConcurrency = Number(arg.slice('--sse-concurrency='.length));
    if (!Number.isInteger(sseConcurrency) || sseConcurrency < 1 || sseConcurrency > 64) {
      console.error('bench: --sse-concurrency takes a whole number from 1 to 64');
      process.exit(2);
    }
  }
  else if (arg.startsWith('--targets=')) onlyTargets = new Set(['upstream', ...arg.slice('--targets='.length).split(',')]);
  else if (arg.startsWith('--workloads=')) onlyWorkloads = new Set(arg.slice('--workloads='.length).split(','));
  else if (arg === '--profile' || arg === '--profile=small') profileWorkload = 'small';
  else if (arg === '--profile=mib') profileWorkload = 'mib';
  else if (arg === '--profile=sse') profileWorkload = 'sse';
  else if (arg.startsWith('--app-dir=')) APP_SOURCE = resolve(arg.slice('--app-dir='.length));
  else if (!['--quick', '--build', '--soak', '--big', '--big-only'].includes(arg)) {
    console.error(`unknown option ${arg}; use --quick, --soak, --big, --big-only, --build, --profile[=small|mib|sse], --app-dir=<path>, --targets=<a,b>, --workloads=<a,b>, --sse-concurrency=<n>, --ab=<file>`);
    process.exit(2);
  }
}
if (!existsSync(join(APP_SOURCE, 'next.config.ts')) || !existsSync(join(APP_SOURCE, 'node_modules', 'next'))) {
  console.error(`bench: ${APP_SOURCE} is not a Keyward checkout with node_modules`);
  process.exit(2);
}
if (abBundle && !existsSync(abBundle)) {
  console.error(`bench: --ab: ${abBundle} does not exist (a copy of an earlier .next/keyward-server.mjs)`);
  process.exit(2);
}
const quick = args.has('--quick');
const soak = args.has('--soak');
/** `--big-only`: the --big transfers without the workloads before them (servers as fresh as after start-up). */
const bigOnly = args.has('--big-only');
const big = args.has('--big') || bigOnly;

const defaults = quick
  ? { connections: 16, warmupS: 1, durationS: 2, rounds: 2, sseTotal: 80, sseConcurrency: 4, sseWarmup: 10, wsConnections: 8, profileS: 4, soakS: 40, bigBytes: 128 * 1024 ** 2 }
  : { connections: 32, warmupS: 2, durationS: 8, rounds: 4, sseTotal: 400, sseConcurrency: 8, sseWarmup: 40, wsConnections: 16, profileS: 10, soakS: 600, bigBytes: 1024 ** 3 };
const settings = { ...defaults, sseConcurrency: sseConcurrency ?? defaults.sseConcurrency };
const SSE_EVENTS = 4;
const SSE_INTERVAL_MS = 10;
const MIB = 1024 * 1024;
/** Soak: the share of the fast lane's measured maximum it runs at, and how many windows its time is cut into. */
const SOAK_SHARE = 0.8;
const SOAK_WINDOWS = 10;
/** Hard ceiling for the whole run: a stuck server must not keep loading the machine. */
const WATCHDOG_MS =
  ((quick ? 300 : 720) + (soak ? settings.soakS + 120 : 0) + (big ? (quick ? 120 : 900) : 0) + (profileWorkload ? 120 : 0)) * 1000;

type TargetName = 'upstream' | 'floor' | 'naive' | 'keyward' | 'fastlane' | 'fastlane-ab' | 'fastify';
type StoreName = 'sqlite' | 'redis' | 'none';
type WorkloadName = 'small' | 'mib' | 'sse' | 'ws';
const WORKLOADS: readonly WorkloadName[] = (['small', 'mib', 'sse', 'ws'] as const).filter((w) => onlyWorkloads === null || onlyWorkloads.has(w));
const TARGET_NAMES: readonly TargetName[] = ['upstream', 'floor', 'naive', 'keyward', 'fastlane', 'fastlane-ab', 'fastify'];
for (const name of [...(onlyTargets ?? []), ...(onlyWorkloads ?? [])]) {
  if (!TARGET_NAMES.includes(name as TargetName) && !['small', 'mib', 'sse', 'ws'].includes(name)) {
    console.error(`bench: unknown target or workload ${JSON.stringify(name)}`);
    process.exit(2);
  }
}
/** Whether this run measures a target (`--targets`). */
const wants = (name: TargetName) => onlyTargets === null || onlyTargets.has(name);

/** Which workloads each target serves; the rest are n/a (a Next route handler cannot hold a WebSocket). */
const SERVES: Record<TargetName, readonly WorkloadName[]> = {
  upstream: ['small', 'mib', 'sse', 'ws'],
  floor: ['small', 'mib'],
  naive: ['small', 'mib', 'sse'],
  keyward: ['small', 'mib', 'sse'],
  fastlane: ['small', 'mib', 'sse', 'ws'],
  'fastlane-ab': ['small', 'mib', 'sse', 'ws'],
  fastify: ['small', 'mib', 'sse', 'ws'],
};

interface Target {
  readonly name: TargetName;
  readonly store: StoreName;
  /** URL prefix; the workload's path (`small`, `mib`, `sse`, `ws`) is appended. */
  readonly base: string;
  readonly headers: Record<string, string>;
  /** The WebSocket handshake's URL prefix and headers (Origin for a cookie session). */
  readonly wsBase: string;
  readonly wsHeaders: Record<string, string>;
  /** The process that serves it (CPU and RSS are read from /proc/<pid>). */
  readonly pid: number;
  /** Which server process that is (several targets can share one: floor, naive and keyward/sqlite). */
  readonly process: string;
}

const label = (t: { store: StoreName; name?: string; target?: string }) => {
  const name = t.name ?? t.target ?? '?';
  return t.store === 'none' ? name : `${name}/${t.store}`;
};

/** One object per workload and target in latest.json; n/a cells carry nulls. */
interface Cell {
  workload: WorkloadName;
  target: TargetName;
  store: StoreName;
  status: 'ok' | 'errors' | 'n/a';
  process: string | null;
  /** Requests (or WebSocket round trips, or SSE streams) per second over the cell's slices. */
  req_s: number | null;
  /** CPU time (user + system) of the serving process per request, in µs. */
  cpu_us_per_req: number | null;
  /** Latency: whole response (small, mib), whole stream (sse), send-to-echo (ws). */
  p50_ms: number | null;
  p99_ms: number | null;
  /** SSE only: request start to the first complete `data:` line, p50 and p99. */
  ttfe_ms: number | null;
  ttfe_p99_ms: number | null;
  /** Highest RSS of the serving process sampled (every 200 ms) during the cell. */
  rss_peak_mib: number | null;
  requests: number;
  duration_s: number;
  /** req/s of each slice, in round order (the spread shows how noisy the machine was). */
  slices_req_s: number[];
  errors: number;
  non2xx: number;
  first_error: string | null;
  upstream_cpu_us_per_req: number | null;
  /** Connections the upstream accepted during the cell (keep-alive reuse: far fewer than requests). */
  upstream_connections: number | null;
  /** Redis only: commands the private redis-server executed per request (INFO commandstats), and which. */
  redis_cmds_per_req: number | null;
  redis_cmds: Record<string, number> | null;
  /** req/s ÷ the same workload's naive / fastify / floor req/s (null when that target did not run it). */
  vs_naive: number | null;
  vs_fastify: number | null;
  vs_floor: number | null;
}

const children: ChildProcess[] = [];
const tempDirs: string[] = [];
const servers: BenchServer[] = [];
let app: AppServer | undefined;
let redis: RedisServer | undefined;
let redisClient: Redis | undefined;

async function main() {
  const watchdog = setTimeout(() => {
    console.error(`\nbench: exceeded ${WATCHDOG_MS / 1000} s, aborting`);
    void cleanup().finally(() => process.exit(3));
  }, WATCHDOG_MS);
  try {
    await run();
  } finally {
    clearTimeout(watchdog);
    await cleanup();
  }
}

async function run() {
  const appDir = await prepareBuild();
  const upstreamKey = randomSecret('benchkey');
  const upstream = await startChild('upstream.ts', {
    BENCH_UPSTREAM_KEY: upstreamKey,
    BENCH_SSE_EVENTS: String(SSE_EVENTS),
    BENCH_SSE_INTERVAL_MS: String(SSE_INTERVAL_MS),
  });
  upstreamPid = upstream.pid;
  if (!upstream.port) throw new Error('bench: the upstream did not start');
  const upstreamBase = `http://127.0.0.1:${upstream.port}/`;
  assertLoopback(upstreamBase);
  statsUrl = `${upstreamBase}stats`;
  statsKey = upstreamKey;

  redis = await startRedisServer();
  assertLoopback(redis.url.replace(/^redis:/, 'http:'));
  redisClient = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redisClient.connect();

  const fastify = wants('fastify')
    ? await startChild('fastify-proxy.ts', { BENCH_UPSTREAM_BASE: upstreamBase, BENCH_UPSTREAM_KEY: upstreamKey })
    : { pid: 0, port: 0, skip: 'not in --targets' };
  if (fastify.skip) console.log(`bench: fastify target skipped: ${fastify.skip}`);

  const sqliteEnv = await appEnv(upstreamBase, upstreamKey, 'sqlite');
  const redisEnv = await appEnv(upstreamBase, upstreamKey, 'redis');
  // floor and naive get their own `next start`, so each lane's CPU and RSS are its own.
  const start = async (wanted: boolean, kind: 'next' | 'fastlane', vars: Record<string, string>) => {
    if (!wanted) return null;
    const server = await startServer(kind, vars, appDir);
    servers.push(server);
    return server;
  };
  const nextBaseline = await start(wants('floor') || wants('naive'), 'next', sqliteEnv.vars);
  const next = await start(wants('keyward'), 'next', sqliteEnv.vars);
  const nextRedis = await start(wants('keyward'), 'next', redisEnv.vars);
  const lane = await start(wants('fastlane'), 'fastlane', sqliteEnv.vars);
  // Its own SQLite file (two processes on one file would measure each other's locks) and its own Redis prefix.
  const abEnv = abBundle ? await appEnv(upstreamBase, upstreamKey, 'sqlite') : null;
  const abRedisEnv = abBundle ? await appEnv(upstreamBase, upstreamKey, 'redis') : null;
  let laneAb: BenchServer | null = null;
  let laneAbRedis: BenchServer | null = null;
  if (abBundle && abEnv && abRedisEnv) {
    cpSync(abBundle, join(appDir, '.next', 'keyward-server-ab.mjs'));
    laneAb = await startServer('fastlane', abEnv.vars, appDir, 'keyward-server-ab.mjs');
    servers.push(laneAb);
    laneAbRedis = await startServer('fastlane', abRedisEnv.vars, appDir, 'keyward-server-ab.mjs');
    servers.push(laneAbRedis);
  }
  const laneRedis = await start(wants('fastlane'), 'fastlane', redisEnv.vars);

  const targets: Target[] = [
    { name: 'upstream', store: 'none', base: upstreamBase, headers: { 'x-api-key': upstreamKey }, wsBase: upstreamBase, wsHeaders: { 'x-api-key': upstreamKey }, pid: upstream.pid, process: 'upstream' },
  ];
  for (const name of ['floor', 'naive'] as const) {
    if (!nextBaseline || !wants(name)) continue;
    targets.push({ name, store: 'none', base: `http://127.0.0.1:${nextBaseline.port}/api/bench/${name}/`, headers: {}, wsBase: '', wsHeaders: {}, pid: nextBaseline.pid, process: 'next/baseline' });
  }
  for (const [name, store, server, env] of [
    ['keyward', 'sqlite', next, sqliteEnv],
    ['keyward', 'redis', nextRedis, redisEnv],
    ['fastlane', 'sqlite', lane, sqliteEnv],
    ['fastlane', 'redis', laneRedis, redisEnv],
    ['fastlane-ab', 'sqlite', laneAb, abEnv],
    ['fastlane-ab', 'redis', laneAbRedis, abRedisEnv],
  ] as const) {
    if (!server || !env) continue;
    const cookie = await signIn(server.url, env.username, env.password);
    targets.push({
      name,
      store,
      base: `http://127.0.0.1:${server.port}/api/proxy/bench/`,
      headers: { cookie, 'x-keyward-csrf': '1' },
      // The handshake goes to the server's own origin (localhost), which a cookie session's Origin must match.
      wsBase: `${server.url}/api/proxy/bench/`,
      wsHeaders: { cookie, origin: server.url },
      pid: server.pid,
      process: `${name === 'keyward' ? 'next' : name}/${store}`,
    });
  }
  if (fastify.port) {
    const base = `http://127.0.0.1:${fastify.port}/`;
    targets.push({ name: 'fastify', store: 'none', base, headers: {}, wsBase: base, wsHeaders: {}, pid: fastify.pid, process: 'fastify' });
  }
  await sanityCheck(targets, upstreamKey);

  console.log(
    `bench: ${quick ? 'quick' : 'full'} run; node ${process.version}; ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}); ` +
      `autocannon ${settings.connections} connections, pipelining 1, ${settings.warmupS} s warm-up + ${settings.durationS} s per cell ` +
      `in ${settings.rounds} rotating rounds; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`,
  );
  const loadBefore = loadavg();
  if (loadBefore[0]! > cpus().length / 2) {
    console.warn(`bench: WARNING: the machine is busy (load average ${loadBefore[0]!.toFixed(2)}); absolute numbers will be low and noisy`);
  }
  const cells: Cell[] = [];
  for (const workload of bigOnly ? [] : WORKLOADS) {
    const measured = await measureWorkload(workload, targets.filter((t) => SERVES[t.name].includes(workload)));
    cells.push(...measured);
    console.log(`  ${workload.padEnd(5)} ${measured.map((c) => `${label(c)} ${Math.round(c.req_s ?? 0)}/s`).join(', ')}`);
  }
  // n/a cells, so every workload lists every target (and store) that exists in this run.
  const all: Cell[] = [];
  for (const workload of WORKLOADS) {
    for (const target of targets) {
      const cell = cells.find((c) => c.workload === workload && c.target === target.name && c.store === target.store);
      all.push(cell ?? naCell(workload, target));
    }
  }
  for (const cell of all) {
    const ratio = (name: TargetName) => {
      const other = all.find((c) => c.workload === cell.workload && c.target === name);
      return cell.req_s !== null && other?.req_s ? round(cell.req_s / other.req_s, 3) : null;
    };
    cell.vs_naive = ratio('naive');
    cell.vs_fastify = ratio('fastify');
    cell.vs_floor = ratio('floor');
  }
  const roundTrips: RoundTrips[] = [];
  for (const target of targets.filter((t) => t.store === 'redis' && !bigOnly)) roundTrips.push(await redisRoundTrips(target, quick ? 200 : 500));
  // Two figures per server: VmHWM (each process's own high-water mark, its children's added: exact for one
  // process, an upper bound for the fast lane and its Next.js process, whose peaks need not coincide), and the
  // highest RSS sampled in the cells (every 200 ms, the process and its children together), which the target reads.
  const processes = Object.fromEntries(
    [...new Map(targets.map((t) => [t.process, t.pid]))].map(([name, pid]) => {
      const sampled = all.filter((cell) => cell.process === name && cell.rss_peak_mib !== null).map((cell) => cell.rss_peak_mib!);
      return [name, { peak_rss_mib: round(rssMiB(pid, 'VmHWM'), 1), sampled_peak_rss_mib: sampled.length ? round(Math.max(...sampled), 1) : null }];
    }),
  );

  // The table now, so it is on screen even if a long --soak or --big is interrupted.
  if (!bigOnly) printTable(all, processes, fastify.skip);

  let soakResult: SoakResult | null = null;
  if (soak && lane) {
    const laneTarget = targets.find((t) => t.name === 'fastlane' && t.store === 'sqlite')!;
    const max = all.find((c) => c.workload === 'small' && c.target === 'fastlane' && c.store === 'sqlite')!.req_s ?? 0;
    soakResult = await runSoak(laneTarget, Math.max(1, Math.round(max * SOAK_SHARE)));
  }
  let bigResults: (BigResult & { lane: string })[] | null = null;
  if (big) {
    bigResults = [];
    for (const [laneName, server, env] of [
      ['keyward', next, sqliteEnv],
      ['fastlane', lane, sqliteEnv],
    ] as const) {
      if (!server) continue;
      const cookie = await signIn(server.url, env.username, env.password);
      const headers = { cookie, 'x-keyward-csrf': '1', origin: server.url };
      for (const direction of ['upload', 'download'] as const) {
        const url = `${server.url}/api/proxy/bench/${direction === 'upload' ? 'sink' : `big?bytes=${settings.bigBytes}`}`;
        console.log(`big: ${laneName} ${direction} ${settings.bigBytes / MIB} MiB ...`);
        const result = await transfer({ direction, url, headers, bytes: settings.bigBytes, pid: server.pid, timeoutMs: quick ? 60_000 : 420_000 });
        bigResults.push({ lane: laneName, ...result });
        console.log(`big: ${laneName} ${direction}: ${result.ok ? 'ok' : `FAILED (${result.error})`}, ${result.mibPerS} MiB/s, RSS ${result.rssBeforeMiB} -> peak ${result.rssPeakMiB} MiB (+${result.rssGrowthMiB})`);
      }
    }
  }
  for (const server of servers.splice(0)) await server.stop();

  let profiles: ProfileSummary[] | null = null;
  if (profileWorkload) profiles = await profileRun(profileWorkload, upstreamBase, upstreamKey, appDir);

  const checks = targetChecks(all, processes, roundTrips, soakResult, bigResults, fastify.skip);
  console.log('\nTargets (issue 12):');
  for (const check of checks) console.log(`  ${check.line}`);
  if (soakResult) printSoak(soakResult);
  if (profiles) for (const profile of profiles) printProfile(profile);

  mkdirSync(RESULTS, { recursive: true });
  const output = {
    date: new Date().toISOString(),
    mode: quick ? 'quick' : 'full',
    appSource: APP_SOURCE,
    commit: gitCommit(),
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? null,
    settings: { ...settings, pipelining: 1, sseEvents: SSE_EVENTS, sseIntervalMs: SSE_INTERVAL_MS, soakShare: SOAK_SHARE },
    loadAverage: { before: loadBefore.map((l) => round(l, 2)), after: loadavg().map((l) => round(l, 2)) },
    fastify: fastify.skip ? { skipped: fastify.skip } : { skipped: null },
    processes,
    cells: all,
    redisRoundTrips: roundTrips,
    targets: checks,
    soak: soakResult,
    big: bigResults,
    profiles,
  };
  writeFileSync(join(RESULTS, 'latest.json'), `${JSON.stringify(output, null, 2)}\n`);
  console.log(`\nwrote ${join('bench', 'results', 'latest.json')}`);
  if (all.some((c) => c.status === 'errors') || soakResult?.errors || bigResults?.some((b) => !b.ok)) {
    console.error('bench: some cells had errors or non-2xx answers (marked "!"); their numbers are not comparable');
    process.exitCode = 1;
  }
}

function naCell(workload: WorkloadName, target: Target): Cell {
  return {
    workload, target: target.name, store: target.store, status: 'n/a', process: null, req_s: null, cpu_us_per_req: null,
    p50_ms: null, p99_ms: null, ttfe_ms: null, ttfe_p99_ms: null, rss_peak_mib: null, requests: 0, duration_s: 0,
    slices_req_s: [], errors: 0, non2xx: 0, first_error: null, upstream_cpu_us_per_req: null, upstream_connections: null,
    redis_cmds_per_req: null, redis_cmds: null, vs_naive: null, vs_fastify: null, vs_floor: null,
  };
}

/**
 * Makes sure a production build with the bench routes and the fast lane exists (running `npm run build` when
 * there is none or on --build), then copies it to a private folder and runs the servers there: other work in
 * this repository may run `next build` while the bench is loading the server, which would otherwise swap or
 * delete files under it. Returns the folder to start the servers in.
 */
async function prepareBuild(): Promise<string> {
  const next = join(APP_SOURCE, '.next');
  const buildId = join(next, 'BUILD_ID');
  const needed = [
    join(next, 'server', 'app', 'api', 'bench', 'naive', '[...path]', 'route.js'),
    join(next, 'server', 'app', 'api', 'bench', 'floor', '[...path]', 'route.js'),
    join(next, 'keyward-server.mjs'),
    join(next, 'keyward-next.mjs'),
  ];
  if (!args.has('--build') && !existsSync(buildId) && existsSync(next)) {
    // Maybe a build is under way elsewhere: wait for it (bounded) rather than fight over .next.
    for (let waited = 0; waited < 120 && !existsSync(buildId); waited++) {
      if (waited === 0) console.log('bench: no .next/BUILD_ID yet; waiting up to 120 s for a build in progress ...');
      await new Promise((done) => setTimeout(done, 1000));
    }
  }
  if (args.has('--build') || !existsSync(buildId) || needed.some((file) => !existsSync(file))) {
    console.log('bench: running npm run build ...');
    const result = spawnSync('npm', ['run', 'build'], {
      cwd: APP_SOURCE,
      stdio: 'inherit',
      env: { ...process.env, NEXT_TELEMETRY_DISABLED: '1' },
      timeout: 400_000,
    });
    if (result.status !== 0) throw new Error('bench: npm run build failed');
  } else {
    const built = statSync(buildId).mtimeMs;
    const newer = ['app', 'lib', 'upstreams', 'keyward.ts', 'server.ts', 'next.config.ts', 'instrumentation.ts'].filter(
      (entry) => newestMtime(join(APP_SOURCE, entry)) > built,
    );
    if (newer.length > 0) {
      console.warn(`bench: WARNING: ${newer.join(', ')} changed after the last build; measuring that build (use --build)`);
    }
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    const before = existsSync(buildId) ? `${readFileSync(buildId, 'utf8')}@${statSync(buildId).mtimeMs}` : null;
    const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-app-'));
    tempDirs.push(dir);
    try {
      cpSync(next, join(dir, '.next'), {
        recursive: true,
        verbatimSymlinks: true, // .next/node_modules links are relative (../../node_modules/...)
        filter: (source) => !/^[/\\](?:cache|dev|trace|diagnostics)(?:$|[/\\])/.test(source.slice(next.length)),
      });
      for (const file of ['package.json', 'next.config.ts', 'tsconfig.json']) cpSync(join(APP_SOURCE, file), join(dir, file));
      cpSync(join(APP_SOURCE, 'scripts'), join(dir, 'scripts'), { recursive: true }); // npm start: scripts/start.mjs
      symlinkSync(realpathSync(join(APP_SOURCE, 'node_modules')), join(dir, 'node_modules'), 'dir');
    } catch {
      continue; // a build replaced files while we copied: try again
    }
    const after = existsSync(buildId) ? `${readFileSync(buildId, 'utf8')}@${statSync(buildId).mtimeMs}` : null;
    if (before !== null && before === after && existsSync(join(dir, '.next', 'BUILD_ID'))) {
      console.log(`bench: measuring build ${before.split('@')[0]} (copied to ${dir})`);
      return dir;
    }
    await new Promise((done) => setTimeout(done, 2000));
  }
  throw new Error('bench: the build kept changing while it was copied (another next build running?); try again');
}

function newestMtime(path: string, depth = 0): number {
  if (!existsSync(path) || depth > 8) return 0;
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  let newest = stat.mtimeMs;
  for (const entry of readdirSync(path)) newest = Math.max(newest, newestMtime(join(path, entry), depth + 1));
  return newest;
}

/**
 * Runs bench/<file> as its own process (Node's type stripping) and reads its first stdout line:
 * `{"port":N}` once listening, or `{"skip":"why"}` (the fastify target without its packages).
 */
async function startChild(file: string, env: Record<string, string>): Promise<{ port: number; pid: number; skip: string | null }> {
  const child = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', join(ROOT, 'bench', file)], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', NODE_ENV: 'production', ...env },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  children.push(child);
  const lines = createInterface({ input: child.stdout! });
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  try {
    for await (const line of lines) {
      const { port, skip } = JSON.parse(line) as { port?: number; skip?: string };
      return { port: port ?? 0, pid: child.pid!, skip: skip ?? null };
    }
  } finally {
    clearTimeout(timer);
  }
  throw new Error(`bench: ${file} exited (${child.exitCode}) before listening`);
}

async function appEnv(upstreamBase: string, upstreamKey: string, store: 'sqlite' | 'redis') {
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-'));
  tempDirs.push(dir);
  const config = join(dir, 'keyward.json');
  const long = { timeoutMs: 600_000 };
  writeFileSync(
    config,
    JSON.stringify({
      upstreams: {
        bench: {
          baseUrl: upstreamBase,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'KEYWARD_BENCH_UPSTREAM_KEY' } },
          // The whole pipeline, limits included: a per-user rate limit no bench run reaches.
          rateLimits: [{ by: 'user', limit: 1_000_000_000, windowSeconds: 60 }],
          routes: [
            ...['/small', '/mib', '/sse'].map((path) => ({ method: 'GET', path, roles: ['user'] })),
            { method: 'GET', path: '/ws', roles: ['user'], websocket: true },
            // --big: 1 GiB each way, streamed.
            { method: 'GET', path: '/big', roles: ['user'], maxDecodedResponseBytes: 4 * 1024 ** 3, ...long },
            { method: 'POST', path: '/sink', roles: ['user'], maxRequestBytes: 1024 ** 3, ...long },
          ],
          timeoutMs: 30_000,
        },
      },
      // The detector runs on every call (its cost is measured), but the bench's one user making thousands of
      // calls a second is a load test, not a burst to throttle: the floor is set out of reach, as a rate limit is.
      detector: { calls: { minPerMinute: 1_000_000_000 }, errors: { minPerMinute: 1_000_000_000 } },
    }),
  );
  const username = 'bench';
  const password = randomSecret('benchpw');
  const usersFile = await writeUsersFile([{ username, password, roles: ['user'] }]);
  tempDirs.push(dirname(usersFile));
  const vars: Record<string, string> = {
    ...testSessionSecrets(),
    KEYWARD_CONFIG: config,
    KEYWARD_USERS_FILE: usersFile,
    // The embedded store in this run's temp folder, never in a checkout; or the run's private redis-server.
    ...(store === 'sqlite'
      ? { KEYWARD_STORE: 'sqlite', KEYWARD_STORE_PATH: join(dir, 'keyward.db') }
      : { KEYWARD_STORE: 'redis', REDIS_URL: redis!.url, KEYWARD_REDIS_PREFIX: `keyward-bench-${randomSecret('p').slice(-8)}:` }),
    KEYWARD_BENCH_UPSTREAM_KEY: upstreamKey,
    KEYWARD_DEMO: 'true',
    KEYWARD_BENCH_NAIVE_BASE: upstreamBase,
    KEYWARD_BENCH_NAIVE_KEY: upstreamKey,
  };
  return { vars, username, password };
}

/** One request per target and workload before any load: a wrong answer must fail the run, not look fast. */
async function sanityCheck(targets: readonly Target[], upstreamKey: string) {
  for (const target of targets) {
    for (const workload of SERVES[target.name]) {
      if (workload === 'ws') {
        const result = await runWs({ url: target.wsBase + 'ws', headers: target.wsHeaders, connections: 1, durationMs: 2_000, maxMessages: 3 });
        if (result.errors || result.messages !== 3) throw new Error(`bench: sanity check failed for ${label(target)} /ws: ${result.firstError ?? `${result.messages} echoes`}`);
        continue;
      }
      const url = assertLoopback(target.base + workload);
      const response = await fetch(url, { headers: target.headers, signal: AbortSignal.timeout(10_000) });
      const body = Buffer.from(await response.arrayBuffer());
      const problem =
        response.status !== 200
          ? `status ${response.status}`
          : workload === 'mib' && body.length !== MIB
            ? `body of ${body.length} bytes`
            : workload === 'sse' && (body.toString().match(/^data:/gm)?.length ?? 0) !== SSE_EVENTS
              ? 'wrong number of events'
              : body.includes(upstreamKey)
                ? 'the key is in the body'
                : null;
      if (problem) {
        const hint = ['naive', 'floor'].includes(target.name) && response.status === 404 ? ' (is the route in the build? try --build)' : '';
        throw new Error(`bench: sanity check failed for ${label(target)} /${workload}: ${problem}${hint}`);
      }
    }
  }
}

function autocannonRun(url: string, headers: Record<string, string>, durationS: number, onResponse?: (ms: number) => void, overallRate?: number) {
  assertLoopback(url);
  return new Promise<Result>((resolvePromise, reject) => {
    const instance = autocannon(
      { url, headers, connections: settings.connections, pipelining: 1, duration: durationS, timeout: 10, ...(overallRate ? { overallRate } : {}) },
      (error, result) => (error ? reject(error) : resolvePromise(result)),
    );
    if (onResponse) instance.on('response', (_client, status, _bytes, ms) => status < 300 && onResponse(ms));
  });
}

/** What one slice of load against one target produced; slices of the same cell are added up. */
interface Slice {
  requests: number;
  durationS: number;
  latencies: number[];
  ttfes: number[];
  bytes: number;
  errors: number;
  non2xx: number;
  firstError: string | null;
  cpuMs: number;
  upstreamCpuMs: number;
  rssPeakMiB: number;
  upstreamConnections: number;
  redisCmds: Record<string, number> | null;
}

let statsUrl = '';
let statsKey = '';
let upstreamPid = 0;

/** Connections the upstream has accepted so far (to see whether a proxy reuses them). */
async function upstreamConnections(): Promise<number> {
  const response = await fetch(statsUrl, { headers: { 'x-api-key': statsKey }, signal: AbortSignal.timeout(5_000) });
  return ((await response.json()) as { connections: number }).connections;
}

/** Calls per command so far on the private redis-server (INFO commandstats), without INFO itself. */
async function redisCommandCalls(): Promise<Record<string, number>> {
  const info = await redisClient!.info('commandstats');
  const calls: Record<string, number> = {};
  for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) if (match[1] !== 'info') calls[match[1]!] = Number(match[2]);
  return calls;
}

/** Runs `load` while reading the target's CPU, RSS (sampled every 200 ms), upstream connections and Redis commands. */
async function measured(target: Target, load: () => Promise<Omit<Slice, 'cpuMs' | 'upstreamCpuMs' | 'rssPeakMiB' | 'upstreamConnections' | 'redisCmds'>>): Promise<Slice> {
  const connections0 = await upstreamConnections();
  const redis0 = target.store === 'redis' ? await redisCommandCalls() : null;
  const cpu0 = { target: cpuMs(target.pid), upstream: cpuMs(upstreamPid) };
  let rssPeakMiB = rssMiB(target.pid);
  const sampler = setInterval(() => (rssPeakMiB = Math.max(rssPeakMiB, rssMiB(target.pid))), 200);
  try {
    const result = await load();
    const cpuMsUsed = cpuMs(target.pid) - cpu0.target;
    const upstreamCpuMs = cpuMs(upstreamPid) - cpu0.upstream;
    rssPeakMiB = Math.max(rssPeakMiB, rssMiB(target.pid));
    let redisCmds: Record<string, number> | null = null;
    if (redis0) {
      const redis1 = await redisCommandCalls();
      redisCmds = {};
      for (const [name, calls] of Object.entries(redis1)) if (calls - (redis0[name] ?? 0) > 0) redisCmds[name] = calls - (redis0[name] ?? 0);
    }
    return { ...result, cpuMs: cpuMsUsed, upstreamCpuMs, rssPeakMiB, upstreamConnections: (await upstreamConnections()) - connections0, redisCmds };
  } finally {
    clearInterval(sampler);
  }
}

async function loadSlice(workload: 'small' | 'mib', target: Target, durationS: number): Promise<Slice> {
  return measured(target, async () => {
    // autocannon's histogram has 1 ms resolution; keep the exact times (bounded) for the percentiles.
    const latencies: number[] = [];
    const result = await autocannonRun(target.base + workload, target.headers, durationS, (ms) => {
      if (latencies.length < MAX_SAMPLES) latencies.push(ms);
    });
    return {
      requests: result.requests.total,
      durationS: result.duration,
      latencies,
      ttfes: [],
      bytes: result.throughput.total,
      errors: result.errors + result.timeouts,
      non2xx: result.non2xx,
      firstError: null,
    };
  });
}

function sseOptions(target: Target, total: number) {
  return {
    url: target.base + 'sse',
    headers: target.headers,
    concurrency: settings.sseConcurrency,
    requestTimeoutMs: 10_000,
    expectEvents: SSE_EVENTS,
    total,
    deadlineMs: quick ? 10_000 : 20_000,
  };
}

async function sseSlice(target: Target, total: number): Promise<Slice> {
  return measured(target, async () => {
    const result = await runSse(sseOptions(target, total));
    return {
      requests: result.completed,
      durationS: result.elapsedMs / 1000,
      latencies: result.fullMs,
      ttfes: result.ttfeMs,
      bytes: 0,
      errors: result.errors,
      non2xx: 0,
      firstError: result.firstError,
    };
  });
}

const wsOptions = (target: Target, durationS: number) => ({
  url: target.wsBase + 'ws',
  headers: target.wsHeaders,
  connections: settings.wsConnections,
  durationMs: durationS * 1000,
  maxMessages: 10_000_000,
});

async function wsSlice(target: Target, durationS: number): Promise<Slice> {
  return measured(target, async () => {
    const result = await runWs(wsOptions(target, durationS));
    return {
      requests: result.messages,
      durationS: result.elapsedMs / 1000,
      latencies: result.rttMs,
      ttfes: [],
      bytes: 0,
      errors: result.errors,
      non2xx: 0,
      firstError: result.firstError,
    };
  });
}

/**
 * Measures one workload on every target that serves it: a warm-up per target, then `rounds` slices per target in
 * rotating order (A B C, B C A, C A B …), so background load on the machine and drift hit every target alike.
 */
async function measureWorkload(workload: WorkloadName, targets: readonly Target[]): Promise<Cell[]> {
  const share = 1 / settings.rounds;
  const sliceS = Math.max(1, Math.round(settings.durationS * share));
  const slice = (target: Target) =>
    workload === 'sse'
      ? sseSlice(target, Math.max(1, Math.round(settings.sseTotal * share)))
      : workload === 'ws'
        ? wsSlice(target, sliceS)
        : loadSlice(workload, target, sliceS);
  for (const target of targets) {
    if (workload === 'sse') await runSse(sseOptions(target, settings.sseWarmup));
    else if (workload === 'ws') await runWs(wsOptions(target, settings.warmupS));
    else await autocannonRun(target.base + workload, target.headers, settings.warmupS);
  }
  const slices = new Map<string, Slice[]>(targets.map((t) => [label(t), []]));
  for (let round = 0; round < settings.rounds; round++) {
    for (let i = 0; i < targets.length; i++) {
      const target = targets[(i + round) % targets.length]!;
      slices.get(label(target))!.push(await slice(target));
    }
  }
  return targets.map((target) => toCell(workload, target, slices.get(label(target))!));
}

function toCell(workload: WorkloadName, target: Target, slices: readonly Slice[]): Cell {
  const sum = (pick: (s: Slice) => number) => slices.reduce((total, s) => total + pick(s), 0);
  const requests = sum((s) => s.requests);
  const durationS = sum((s) => s.durationS);
  const errors = sum((s) => s.errors);
  const non2xx = sum((s) => s.non2xx);
  const bytes = sum((s) => s.bytes);
  const [p50, p99] = percentiles(slices.flatMap((s) => s.latencies), [50, 99]);
  const [t50, t99] = workload === 'sse' ? percentiles(slices.flatMap((s) => s.ttfes), [50, 99]) : [null, null];
  let redisCmds: Record<string, number> | null = null;
  if (target.store === 'redis') {
    redisCmds = {};
    for (const s of slices) for (const [name, calls] of Object.entries(s.redisCmds ?? {})) redisCmds[name] = (redisCmds[name] ?? 0) + calls;
  }
  const valid = requests > 0 && errors === 0 && non2xx === 0 && (workload !== 'mib' || bytes >= requests * MIB);
  return {
    workload,
    target: target.name,
    store: target.store,
    status: valid ? 'ok' : 'errors',
    process: target.process,
    req_s: round(requests / durationS, 1),
    cpu_us_per_req: round((sum((s) => s.cpuMs) * 1000) / Math.max(requests, 1), 0),
    p50_ms: round(p50!, 2),
    p99_ms: round(p99!, 2),
    ttfe_ms: t50 === null ? null : round(t50!, 2),
    ttfe_p99_ms: t99 === null ? null : round(t99!, 2),
    rss_peak_mib: round(Math.max(...slices.map((s) => s.rssPeakMiB)), 1),
    requests,
    duration_s: round(durationS, 2),
    slices_req_s: slices.map((s) => round(s.requests / s.durationS, 1)),
    errors,
    non2xx,
    first_error: slices.find((s) => s.firstError)?.firstError ?? null,
    upstream_cpu_us_per_req: target.name === 'upstream' ? null : round((sum((s) => s.upstreamCpuMs) * 1000) / Math.max(requests, 1), 0),
    upstream_connections: sum((s) => s.upstreamConnections),
    redis_cmds_per_req: redisCmds ? round(Object.values(redisCmds).reduce((a, b) => a + b, 0) / Math.max(requests, 1), 3) : null,
    redis_cmds: redisCmds,
    vs_naive: null,
    vs_fastify: null,
    vs_floor: null,
  };
}

interface RoundTrips {
  target: string;
  calls: number;
  /** Commands sent by clients (MONITOR lines not from a script) per call, without the batched writer's. */
  hot_path_per_call: number;
  /** Commands per call of the batched writer, after the response: the audit records and usage aggregates (a script each per batch). */
  audit_per_call: number;
  by_command: Record<string, number>;
}

/**
 * Written after the response by the batched audit writer (lib/core/audit/audit.ts), never per call: the records
 * and their usage aggregates (lib/core/aggregates), one script each per batch (lib/store/redis.ts, `batchScriptOf`).
 * Builds before those scripts (an `--ab` bundle) sent an XADD per record and an HINCRBY per field instead.
 */
function isAfterCall(argv: readonly string[]): boolean {
  const name = argv[0]!.toLowerCase();
  if (name === 'xadd' || name === 'hincrby' || name === 'pexpireat') return true;
  return batchScriptOf(name, argv[3]) !== null;
}

/**
 * Round trips to Redis per proxied call: `calls` sequential small-JSON calls while MONITOR is on, counting the
 * commands clients sent (a script's own commands show as "lua" and are left out; one EVALSHA is one round trip).
 * Run after the load, on an otherwise idle server, since MONITOR slows Redis down.
 */
async function redisRoundTrips(target: Target, calls: number): Promise<RoundTrips> {
  const byCommand: Record<string, number> = {};
  let audit = 0;
  const monitor = await monitorRedis(redis!.url, ({ source, argv }) => {
    if (source === 'lua' || !argv[0]) return;
    const name = argv[0].toLowerCase();
    byCommand[name] = (byCommand[name] ?? 0) + 1;
    if (isAfterCall(argv)) audit++;
  });
  await new Promise((done) => setTimeout(done, 200));
  for (const key of Object.keys(byCommand)) delete byCommand[key]; // whatever ran before the first call
  audit = 0;
  const url = assertLoopback(target.base + 'small');
  for (let i = 0; i < calls; i++) {
    const response = await fetch(url, { headers: target.headers, signal: AbortSignal.timeout(10_000) });
    await response.arrayBuffer();
    if (response.status !== 200) throw new Error(`bench: round-trip probe for ${label(target)}: status ${response.status}`);
  }
  await new Promise((done) => setTimeout(done, 500)); // the audit appends after the response
  monitor.stop();
  const total = Object.values(byCommand).reduce((a, b) => a + b, 0);
  return {
    target: label(target),
    calls,
    hot_path_per_call: round((total - audit) / calls, 3),
    audit_per_call: round(audit / calls, 3),
    by_command: byCommand,
  };
}

interface SoakWindow {
  /** Seconds since the soak started, at the window's start. */
  fromS: number;
  requests: number;
  p50_ms: number;
  p99_ms: number;
  rss_mib: number;
}

interface SoakResult {
  target: string;
  rate_req_s: number;
  duration_s: number;
  requests: number;
  achieved_req_s: number;
  errors: number;
  windows: SoakWindow[];
  /** (last window − first window) ÷ first window, in % (signed: negative is faster or smaller; the target checks growth). */
  p99_drift_pct: number;
  rss_drift_pct: number;
}

/** --soak: the fast lane (SQLite) at a fixed rate for settings.soakS, cut into SOAK_WINDOWS windows. */
async function runSoak(target: Target, rate: number): Promise<SoakResult> {
  const windowS = settings.soakS / SOAK_WINDOWS;
  console.log(`soak: ${label(target)} small JSON at ${rate} req/s (${SOAK_SHARE * 100} % of its maximum) for ${settings.soakS} s ...`);
  const perWindow = Math.ceil(MAX_SAMPLES / SOAK_WINDOWS);
  const latencies: number[][] = Array.from({ length: SOAK_WINDOWS }, () => []);
  const rss: number[][] = Array.from({ length: SOAK_WINDOWS }, () => []);
  const begin = performance.now();
  const windowOf = () => Math.min(SOAK_WINDOWS - 1, Math.floor((performance.now() - begin) / 1000 / windowS));
  const sampler = setInterval(() => rss[windowOf()]!.push(rssMiB(target.pid)), 1000);
  let result: Result;
  try {
    result = await autocannonRun(target.base + 'small', target.headers, settings.soakS, (ms) => {
      const bucket = latencies[windowOf()]!;
      if (bucket.length < perWindow) bucket.push(ms);
    }, rate);
  } finally {
    clearInterval(sampler);
  }
  const windows = latencies.map((values, i): SoakWindow => {
    const [p50, p99] = percentiles(values, [50, 99]);
    const rssValues = rss[i]!;
    return {
      fromS: round(i * windowS, 1),
      requests: values.length,
      p50_ms: round(p50!, 2),
      p99_ms: round(p99!, 2),
      rss_mib: round(rssValues.reduce((a, b) => a + b, 0) / Math.max(rssValues.length, 1), 1),
    };
  });
  const first = windows[0]!;
  const last = windows.at(-1)!;
  return {
    target: label(target),
    rate_req_s: rate,
    duration_s: result.duration,
    requests: result.requests.total,
    achieved_req_s: round(result.requests.total / result.duration, 1),
    errors: result.errors + result.timeouts + result.non2xx,
    windows,
    p99_drift_pct: round(((last.p99_ms - first.p99_ms) / first.p99_ms) * 100, 1),
    rss_drift_pct: round(((last.rss_mib - first.rss_mib) / first.rss_mib) * 100, 1),
  };
}

function printSoak(result: SoakResult) {
  console.log(
    `\nsoak: ${result.target} at ${result.rate_req_s} req/s for ${result.duration_s} s: ${result.requests} requests ` +
      `(${result.achieved_req_s} req/s), ${result.errors} errors; p99 ${result.windows[0]!.p99_ms} -> ${result.windows.at(-1)!.p99_ms} ms ` +
      `(${result.p99_drift_pct} %), RSS ${result.windows[0]!.rss_mib} -> ${result.windows.at(-1)!.rss_mib} MiB (${result.rss_drift_pct} %)`,
  );
  console.log(`  per window: ${result.windows.map((w) => `${w.fromS}s p99 ${w.p99_ms} ms RSS ${w.rss_mib}`).join('; ')}`);
}

interface Check {
  target: string;
  value: string;
  met: boolean | null;
  line: string;
}

/** The issue's targets, each as met / NOT met / not measured, from this run's cells. */
function targetChecks(
  cells: readonly Cell[],
  processes: Record<string, { peak_rss_mib: number; sampled_peak_rss_mib: number | null }>,
  roundTrips: readonly RoundTrips[],
  soakResult: SoakResult | null,
  bigResults: readonly (BigResult & { lane: string })[] | null,
  fastifySkip: string | null,
): Check[] {
  const checks: Check[] = [];
  const add = (target: string, met: boolean | null, value: string) =>
    checks.push({ target, value, met, line: `${target}: ${met === null ? 'not measured' : met ? 'met' : 'NOT met'} (${value})` });
  const cell = (workload: WorkloadName, target: TargetName, store: StoreName = 'none') =>
    cells.find((c) => c.workload === workload && c.target === target && c.store === store && c.status !== 'n/a');
  const x = (value: number | null | undefined) => (value === null || value === undefined ? 'n/a' : `${value.toFixed(2)}x`);
  for (const store of ['sqlite', 'redis'] as const) {
    const small = cell('small', 'fastlane', store);
    add(`fast lane (${store}) small JSON >= 5x naive`, small?.vs_naive != null ? small.vs_naive >= 5 : null, x(small?.vs_naive));
    add(
      `fast lane (${store}) small JSON >= 0.8x fastify`,
      small?.vs_fastify != null ? small.vs_fastify >= 0.8 : null,
      small?.vs_fastify != null ? x(small.vs_fastify) : fastifySkip ? 'fastify not installed' : 'n/a',
    );
    const mib = cell('mib', 'fastlane', store);
    add(`fast lane (${store}) 1 MiB >= 3x naive`, mib?.vs_naive != null ? mib.vs_naive >= 3 : null, x(mib?.vs_naive));
    const sse = cell('sse', 'fastlane', store);
    const up = cell('sse', 'upstream');
    add(
      `fast lane (${store}) SSE first event p50 <= upstream + 1 ms`,
      sse?.ttfe_ms != null && up?.ttfe_ms != null ? sse.ttfe_ms <= up.ttfe_ms + 1 : null,
      `${sse?.ttfe_ms ?? 'n/a'} ms vs upstream ${up?.ttfe_ms ?? 'n/a'} ms`,
    );
  }
  for (const store of ['sqlite', 'redis'] as const) {
    const keyward = cell('small', 'keyward', store);
    const naive = cell('small', 'naive');
    const floor = cell('small', 'floor');
    if (keyward?.req_s != null && naive?.req_s != null && floor?.req_s != null) {
      const bar = Math.min(1.25 * naive.req_s, 0.9 * floor.req_s);
      add(
        `route handler (${store}) small JSON >= min(1.25x naive, 0.9x floor)`,
        keyward.req_s >= bar,
        `${Math.round(keyward.req_s)} req/s vs bar ${Math.round(bar)} (${x(keyward.vs_naive)} naive, ${x(keyward.vs_floor)} floor)`,
      );
    } else add(`route handler (${store}) small JSON >= min(1.25x naive, 0.9x floor)`, null, 'n/a');
  }
  for (const probe of roundTrips) {
    add(
      `Redis: 1 round trip per proxied call (${probe.target}, small JSON)`,
      probe.hot_path_per_call <= 1.01,
      `${probe.hot_path_per_call} on the call's path, ${probe.audit_per_call} batched writes (audit record, usage aggregates) after it; by command ${JSON.stringify(probe.by_command)} in ${probe.calls} calls`,
    );
  }
  for (const [name, { peak_rss_mib, sampled_peak_rss_mib }] of Object.entries(processes)) {
    if (name === 'upstream' || name === 'next/baseline') continue;
    if (sampled_peak_rss_mib === null) add(`peak RSS <= 450 MiB (${name})`, null, 'no cell ran');
    else add(`peak RSS <= 450 MiB (${name})`, sampled_peak_rss_mib <= 450, `${sampled_peak_rss_mib} MiB sampled in the cells (VmHWM ${peak_rss_mib} MiB)`);
  }
  if (soakResult) {
    add('soak: 0 errors', soakResult.errors === 0, `${soakResult.errors} errors in ${soakResult.requests} requests`);
    add('soak: p99 drift <= 10 %', soakResult.p99_drift_pct <= 10, `${soakResult.p99_drift_pct} %`);
    add('soak: RSS drift <= 10 %', soakResult.rss_drift_pct <= 10, `${soakResult.rss_drift_pct} %`);
    const soakPeak = Math.max(...soakResult.windows.map((w) => w.rss_mib));
    add(`peak RSS <= 450 MiB (${soakResult.target}, during the soak)`, soakPeak <= 450, `${soakPeak} MiB, highest window mean`);
  } else add('soak (0 errors, p99 and RSS drift <= 10 %)', null, 'run with --soak');
  if (bigResults) {
    const mib = settings.bigBytes / MIB;
    for (const result of bigResults) {
      add(
        `${mib} MiB ${result.direction} through ${result.lane}: RSS growth <= 64 MiB`,
        result.ok ? result.rssGrowthMiB <= 64 : false,
        result.ok ? `+${result.rssGrowthMiB} MiB, ${result.mibPerS} MiB/s` : `failed: ${result.error}`,
      );
    }
  } else add('1 GiB each way: RSS growth <= 64 MiB', null, 'run with --big');
  return checks;
}

/**
 * CPU-profiles a fresh Next server per target under one workload's load (so each profile holds one kind
 * of request), and summarises where its time goes.
 */
async function profileRun(workload: 'small' | 'mib' | 'sse', upstreamBase: string, upstreamKey: string, appDir: string): Promise<ProfileSummary[]> {
  const dir = join(RESULTS, 'profiles');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const summaries: ProfileSummary[] = [];
  for (const name of (['naive', 'keyward', 'fastlane'] as const).filter(wants)) {
    const env = await appEnv(upstreamBase, upstreamKey, 'sqlite');
    const sub = join(dir, name);
    mkdirSync(sub);
    const profileVars = { ...env.vars, NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${sub} --cpu-prof-interval=250` };
    // The fast lane exits through process.exit on SIGTERM (server.ts), so Node writes its profile too.
    const server = name === 'fastlane' ? await startServer('fastlane', profileVars, appDir) : await startApp(profileVars, { cwd: appDir });
    if ('output' in server) app = server;
    let window: { startUs: number; endUs: number; requests: number; cpuMs: number } | null = null;
    try {
      const appBase = `http://127.0.0.1:${server.port}`;
      const target: { base: string; headers: Record<string, string> } =
        name === 'naive'
          ? { base: `${appBase}/api/bench/naive/`, headers: {} }
          : { base: `${appBase}/api/proxy/bench/`, headers: { cookie: await signIn(server.url, env.username, env.password), 'x-keyward-csrf': '1' } };
      console.log(`profile: ${name} ${workload}, ${settings.profileS} s`);
      const load = (seconds: number) => (workload === 'sse' ? profileSse(target, seconds) : profileLoad(target.base + workload, target.headers, seconds));
      await load(settings.warmupS);
      const startUs = monotonicUs();
      const cpu0 = cpuMs(server.pid);
      const requests = await load(settings.profileS);
      window = { startUs, endUs: monotonicUs(), requests, cpuMs: cpuMs(server.pid) - cpu0 };
    } finally {
      await server.stop(); // SIGTERM: Next exits, Node writes the profile
      app = undefined;
    }
    // The serving process's own profile: the fast lane's Next.js process (which inherits NODE_OPTIONS) writes one too.
    const file = readdirSync(sub).find((f) => f.endsWith('.cpuprofile') && f.includes(`.${server.pid}.`));
    if (!file) throw new Error(`bench: no .cpuprofile written for ${name}`);
    summaries.push(await analyzeProfile(join(sub, file), `${name} ${workload}`, appDir, window));
  }
  return summaries;
}

/** Small or 1 MiB load for a profile: requests served; errors fail the run. */
async function profileLoad(url: string, headers: Record<string, string>, seconds: number): Promise<number> {
  const result = await autocannonRun(url, headers, seconds);
  if (result.non2xx || result.errors) throw new Error(`bench: profile load on ${url} had errors`);
  return result.requests.total;
}

/** SSE streams for a profile, as the sse workload opens them, for `seconds` (bounded in count too). */
async function profileSse(target: { base: string; headers: Record<string, string> }, seconds: number): Promise<number> {
  const result = await runSse({
    url: target.base + 'sse',
    headers: target.headers,
    total: MAX_SAMPLES,
    concurrency: settings.sseConcurrency,
    deadlineMs: seconds * 1000,
    requestTimeoutMs: 10_000,
    expectEvents: SSE_EVENTS,
  });
  if (result.errors) throw new Error(`bench: profile SSE load had errors: ${result.firstError}`);
  return result.completed;
}

function printTable(cells: readonly Cell[], processes: Record<string, { peak_rss_mib: number; sampled_peak_rss_mib: number | null }>, fastifySkip: string | null) {
  const header = ['workload', 'target', 'req/s', 'slices min-max', 'x naive', 'x fastify', 'p50 ms', 'p99 ms', 'TTFE p50', 'TTFE p99', 'CPU µs/req', 'RSS peak', 'redis cmds/req', 'up conns'];
  const f = (value: number | null, digits: number) => (value === null || Number.isNaN(value) ? '' : value.toFixed(digits));
  const rows = cells.map((c) =>
    c.status === 'n/a'
      ? [c.workload, label(c), 'n/a', '', '', '', '', '', '', '', '', '', '', '']
      : [
          c.workload,
          label(c) + (c.status === 'ok' ? '' : ' !'),
          f(c.req_s, 0),
          `${Math.min(...c.slices_req_s).toFixed(0)}-${Math.max(...c.slices_req_s).toFixed(0)}`,
          f(c.vs_naive, 2),
          f(c.vs_fastify, 2),
          f(c.p50_ms, 2),
          f(c.p99_ms, 2),
          f(c.ttfe_ms, 2),
          f(c.ttfe_p99_ms, 2),
          f(c.cpu_us_per_req, 0),
          f(c.rss_peak_mib, 0),
          f(c.redis_cmds_per_req, 2),
          String(c.upstream_connections ?? ''),
        ],
  );
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cols: string[]) => cols.map((col, i) => (i < 2 ? col.padEnd(widths[i]!) : col.padStart(widths[i]!))).join('  ');
  console.log(`\n${line(header)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  let previous = '';
  for (const [i, row] of rows.entries()) {
    if (previous && cells[i]!.workload !== previous) console.log('');
    previous = cells[i]!.workload;
    console.log(line(row));
  }
  console.log(
    `\nsmall: GET ~200 B JSON; mib: GET 1 MiB; sse: ${settings.sseTotal} streams, ${settings.sseConcurrency} at a time, ` +
      `${SSE_EVENTS} events ${SSE_INTERVAL_MS} ms apart (p50/p99 = whole stream, TTFE = first data: line); ` +
      `ws: ${settings.wsConnections} sockets, one ~90 B text message echoed at a time (req/s = round trips/s, p50/p99 = round trip).\n` +
      `x naive / x fastify: req/s relative to that target in the same workload. CPU µs/req and RSS peak: the process serving the target and its children (the fast lane's Next.js process) ` +
      `(floor and naive share one next start, next/baseline; every other target has its own process). redis cmds/req: commands the run's redis-server executed per call, those run inside a script included (round trips: see Targets).\n` +
      `Peak RSS, sampled in the cells / VmHWM (children's added): ${Object.entries(processes).map(([name, p]) => `${name} ${p.sampled_peak_rss_mib?.toFixed(0) ?? 'n/a'} / ${p.peak_rss_mib.toFixed(0)} MiB`).join(', ')}.`,
  );
  if (fastifySkip) console.log(`fastify: skipped (${fastifySkip}).`);
  for (const cell of cells) if (cell.first_error) console.log(`  ${cell.workload}/${label(cell)}: first error: ${cell.first_error}`);
}

/** The monotonic clock in µs: the clock V8 stamps .cpuprofile samples with. */
function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

function gitCommit(): string | null {
  const result = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' });
  return result.status === 0 ? result.stdout.trim() : null;
}

async function cleanup() {
  if (app) await app.stop().catch(() => {});
  app = undefined;
  for (const server of servers.splice(0)) await server.stop().catch(() => {});
  redisClient?.disconnect();
  redisClient = undefined;
  if (redis) await redis.stop().catch(() => {});
  redis = undefined;
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  for (const child of children.splice(0)) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    child.stdin?.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 2_000);
    await once(child, 'exit').catch(() => {});
    clearTimeout(timer);
  }
}

process.on('SIGINT', () => void cleanup().finally(() => process.exit(130)));

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exitCode = 1;
});
