/**
 * `npm run bench` — side-by-side load test on loopback, in one run:
 *   upstream  the bench upstream called directly (the ceiling)
 *   naive     a Next route handler doing the tutorial fetch passthrough (app/api/bench/naive/[...path])
 *   keyward   Keyward's /api/proxy/<id>/... with a real Auth.js session cookie and `x-keyward-csrf: 1`
 * for three workloads: small JSON, a 1 MiB body, and SSE time to first event. Naive and Keyward run in the
 * same `next start` process (the production build in this folder), so they are compared fairly.
 *
 *   npm run bench                  full run (~2 min)
 *   npm run bench -- --quick       smoke run (~30 s)
 *   npm run bench -- --build       run `next build` first even if a build exists
 *   npm run bench -- --profile     afterwards, CPU-profile the Next server under small-JSON load (naive, then
 *                                  keyward) and print where the time goes (bench/results/profiles/);
 *                                  --profile=mib profiles the 1 MiB workload instead
 *   npm run bench -- --app-dir=DIR measure another checkout (e.g. a copy with an experimental change)
 *   npx tsx --conditions=react-server bench/micro.ts         per-request cost of the pipeline's pieces, in-process
 *
 * Results: a table on stdout and bench/results/latest.json. Every load loop is bounded in count and time,
 * and only loopback targets are accepted (see guard.ts).
 */
import autocannon, { type Result } from 'autocannon';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { cpSync, existsSync, realpathSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { signIn, startApp, type AppServer } from '../tests/fixtures/app-server';
import { randomSecret, testSessionSecrets } from '../tests/fixtures/secrets';
import { writeUsersFile } from '../tests/fixtures/users';
import { assertLoopback, MAX_SAMPLES } from './guard';
import { cpuMs, rssMiB } from './proc';
import { analyzeProfile, printProfile, type ProfileSummary } from './profile';
import { runSse } from './sse';
import { percentiles, round } from './stats';

const ROOT = resolve(import.meta.dirname, '..');
const RESULTS = join(ROOT, 'bench', 'results');

const args = new Set(process.argv.slice(2));
/** `--profile` profiles small JSON; `--profile=mib` the 1 MiB body. */
let profileWorkload: 'small' | 'mib' | null = null;
/** The app to build and measure: this checkout, or `--app-dir=<path>` (e.g. an experimental copy). */
let APP_SOURCE = ROOT;
for (const arg of args) {
  if (arg === '--profile' || arg === '--profile=small') profileWorkload = 'small';
  else if (arg === '--profile=mib') profileWorkload = 'mib';
  else if (arg.startsWith('--app-dir=')) APP_SOURCE = resolve(arg.slice('--app-dir='.length));
  else if (!['--quick', '--build'].includes(arg)) {
    console.error(`unknown option ${arg}; use --quick, --build, --profile[=small|mib], --app-dir=<path>`);
    process.exit(2);
  }
}
if (!existsSync(join(APP_SOURCE, 'next.config.ts')) || !existsSync(join(APP_SOURCE, 'node_modules', 'next'))) {
  console.error(`bench: ${APP_SOURCE} is not a Keyward checkout with node_modules`);
  process.exit(2);
}
const quick = args.has('--quick');

const settings = quick
  ? { connections: 16, warmupS: 1, durationS: 2, rounds: 2, sseTotal: 80, sseConcurrency: 4, sseWarmup: 10, profileS: 4 }
  : { connections: 32, warmupS: 2, durationS: 12, rounds: 4, sseTotal: 600, sseConcurrency: 8, sseWarmup: 40, profileS: 10 };
const SSE_EVENTS = 4;
const SSE_INTERVAL_MS = 10;
const MIB = 1024 * 1024;
/** Hard ceiling for the whole run: a stuck server must not keep loading the machine. */
const WATCHDOG_MS = (quick ? 150 : 420) * 1000 + (profileWorkload ? 120_000 : 0);

type TargetName = 'upstream' | 'naive' | 'keyward';
type WorkloadName = 'small' | 'mib' | 'sse';

interface Target {
  readonly name: TargetName;
  /** URL prefix; the workload's path (`small`, `mib`, `sse`) is appended. */
  readonly base: string;
  readonly headers: Record<string, string>;
}

interface Cell {
  workload: WorkloadName;
  target: TargetName;
  requests: number;
  durationS: number;
  reqPerSec: number;
  /** req/s of each slice, in round order (the spread shows how noisy the machine was). */
  sliceReqPerSec: number[];
  latencyMs: { p50: number; p99: number; mean: number; max: number };
  /** SSE only: request start to first complete `data:` line. */
  ttfeMs: { p50: number; p99: number; mean: number; max: number } | null;
  bytesPerResponse: number;
  errors: number;
  non2xx: number;
  firstError: string | null;
  nextRssMiB: number;
  /** Connections the upstream accepted during the measurement (keep-alive reuse: far fewer than requests). */
  upstreamConnections: number;
  nextCpuUsPerReq: number;
  upstreamCpuUsPerReq: number;
  /** req/s of this cell divided by req/s of the naive passthrough for the same workload. */
  reqPerSecVsNaive: number;
  /** SSE only: naive TTFE p50 divided by this cell's (> 1 means faster than naive). */
  ttfeP50VsNaive: number | null;
  valid: boolean;
}

const children: ChildProcess[] = [];
const tempDirs: string[] = [];
let app: AppServer | undefined;

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
  const upstream = await startUpstream(upstreamKey);
  const upstreamBase = `http://127.0.0.1:${upstream.port}/`;
  assertLoopback(upstreamBase);
  statsUrl = `${upstreamBase}stats`;
  statsKey = upstreamKey;

  const env = await appEnv(upstreamBase, upstreamKey);
  app = await startApp(env.vars, { cwd: appDir });
  const appBase = `http://127.0.0.1:${app.port}`;
  assertLoopback(appBase);
  const cookie = await signIn(app.url, env.username, env.password);

  const targets: Target[] = [
    { name: 'upstream', base: upstreamBase, headers: { 'x-api-key': upstreamKey } },
    { name: 'naive', base: `${appBase}/api/bench/naive/`, headers: {} },
    { name: 'keyward', base: `${appBase}/api/proxy/bench/`, headers: { cookie, 'x-keyward-csrf': '1' } },
  ];
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
  const pids = { next: app.pid, upstream: upstream.pid };
  for (const workload of ['small', 'mib', 'sse'] as const) {
    const measured = await measureWorkload(workload, targets, pids);
    cells.push(...measured);
    console.log(`  ${workload.padEnd(5)} ${measured.map((c) => `${c.target} ${Math.round(c.reqPerSec)} req/s`).join(', ')}`);
  }
  for (const cell of cells) {
    const naive = cells.find((c) => c.workload === cell.workload && c.target === 'naive')!;
    cell.reqPerSecVsNaive = round(cell.reqPerSec / naive.reqPerSec, 3);
    if (cell.ttfeMs && naive.ttfeMs) cell.ttfeP50VsNaive = round(naive.ttfeMs.p50 / cell.ttfeMs.p50, 3);
  }
  const peakRss = rssMiB(app.pid, 'VmHWM');
  await app.stop();
  app = undefined;

  let profiles: ProfileSummary[] | null = null;
  if (profileWorkload) profiles = await profileRun(profileWorkload, upstreamBase, upstreamKey, appDir);

  printTable(cells, peakRss);
  const small = cells.find((c) => c.workload === 'small' && c.target === 'keyward')!;
  const smallNaive = cells.find((c) => c.workload === 'small' && c.target === 'naive')!;
  const perRound = small.sliceReqPerSec.map((value, i) => (value / smallNaive.sliceReqPerSec[i]!).toFixed(2));
  console.log(
    `\nsmall JSON: keyward/naive req/s = ${small.reqPerSecVsNaive.toFixed(3)} (per round: ${perRound.join(', ')}); ` +
      `CPU per request ${small.nextCpuUsPerReq} vs ${smallNaive.nextCpuUsPerReq} µs ` +
      `(target >= 1.0: ${small.reqPerSecVsNaive >= 1 ? 'met' : 'NOT met'})`,
  );
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
    settings: { ...settings, pipelining: 1, sseEvents: SSE_EVENTS, sseIntervalMs: SSE_INTERVAL_MS },
    loadAverage: { before: loadBefore.map((l) => round(l, 2)), after: loadavg().map((l) => round(l, 2)) },
    nextPeakRssMiB: round(peakRss, 1),
    cells,
    profiles,
  };
  writeFileSync(join(RESULTS, 'latest.json'), `${JSON.stringify(output, null, 2)}\n`);
  console.log(`\nwrote ${join('bench', 'results', 'latest.json')}`);
  if (cells.some((c) => !c.valid)) {
    console.error('bench: some cells had errors or non-2xx answers (marked "!"); their numbers are not comparable');
    process.exitCode = 1;
  }
}

/**
 * Makes sure a production build with the naive route exists (building when there is none or on --build),
 * then copies it to a private folder and runs `next start` there: other work in this repository may run
 * `next build` while the bench is loading the server, which would otherwise swap or delete files under it.
 * Returns the folder to start the server in.
 */
async function prepareBuild(): Promise<string> {
  const buildId = join(APP_SOURCE, '.next', 'BUILD_ID');
  const naiveRoute = join(APP_SOURCE, '.next', 'server', 'app', 'api', 'bench', 'naive', '[...path]', 'route.js');
  if (!args.has('--build') && !existsSync(buildId) && existsSync(join(APP_SOURCE, '.next'))) {
    // Maybe a build is under way elsewhere: wait for it (bounded) rather than fight over .next.
    for (let waited = 0; waited < 120 && !existsSync(buildId); waited++) {
      if (waited === 0) console.log('bench: no .next/BUILD_ID yet; waiting up to 120 s for a build in progress ...');
      await new Promise((done) => setTimeout(done, 1000));
    }
  }
  if (args.has('--build') || !existsSync(buildId) || !existsSync(naiveRoute)) {
    console.log('bench: running next build ...');
    const result = spawnSync(process.execPath, [join(APP_SOURCE, 'node_modules', 'next', 'dist', 'bin', 'next'), 'build'], {
      cwd: APP_SOURCE,
      stdio: 'inherit',
      env: { ...process.env, NEXT_TELEMETRY_DISABLED: '1' },
      timeout: 300_000,
    });
    if (result.status !== 0) throw new Error('bench: next build failed');
  } else {
    const built = statSync(buildId).mtimeMs;
    const newer = ['app', 'lib', 'upstreams', 'next.config.ts', 'instrumentation.ts'].filter(
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
      cpSync(join(APP_SOURCE, '.next'), join(dir, '.next'), {
        recursive: true,
        verbatimSymlinks: true, // .next/node_modules links are relative (../../node_modules/...)
        filter: (source) => !/^[/\\](?:cache|dev|trace|diagnostics)(?:$|[/\\])/.test(source.slice(join(APP_SOURCE, '.next').length)),
      });
      for (const file of ['package.json', 'next.config.ts', 'tsconfig.json']) cpSync(join(APP_SOURCE, file), join(dir, file));
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

async function startUpstream(key: string): Promise<{ port: number; pid: number }> {
  const child = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', join(ROOT, 'bench', 'upstream.ts')], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      NODE_ENV: 'production',
      BENCH_UPSTREAM_KEY: key,
      BENCH_SSE_EVENTS: String(SSE_EVENTS),
      BENCH_SSE_INTERVAL_MS: String(SSE_INTERVAL_MS),
    },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  children.push(child);
  const lines = createInterface({ input: child.stdout! });
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  try {
    for await (const line of lines) {
      const { port } = JSON.parse(line) as { port: number };
      return { port, pid: child.pid! };
    }
  } finally {
    clearTimeout(timer);
  }
  throw new Error(`bench: the upstream exited (${child.exitCode}) before listening`);
}

async function appEnv(upstreamBase: string, upstreamKey: string) {
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-'));
  tempDirs.push(dir);
  const config = join(dir, 'keyward.json');
  const paths = ['/small', '/mib', '/sse'];
  writeFileSync(
    config,
    JSON.stringify({
      upstreams: {
        bench: {
          baseUrl: upstreamBase,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'KEYWARD_BENCH_UPSTREAM_KEY' } },
          routes: paths.map((path) => ({ method: 'GET', path, roles: ['user'] })),
          timeoutMs: 30_000,
        },
      },
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
    // The embedded store (revocations) in this run's temp folder, never in a checkout.
    KEYWARD_STORE: 'sqlite',
    KEYWARD_STORE_PATH: join(dir, 'keyward.db'),
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
    for (const workload of ['small', 'mib', 'sse'] as const) {
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
        const hint = target.name === 'naive' && response.status === 404 ? ' (is the naive route in the build? try --build)' : '';
        throw new Error(`bench: sanity check failed for ${target.name} /${workload}: ${problem}${hint}`);
      }
    }
  }
}

function autocannonRun(url: string, headers: Record<string, string>, durationS: number, onResponse?: (ms: number) => void) {
  assertLoopback(url);
  return new Promise<Result>((resolvePromise, reject) => {
    const instance = autocannon(
      { url, headers, connections: settings.connections, pipelining: 1, duration: durationS, timeout: 10 },
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
  nextCpuMs: number;
  upstreamCpuMs: number;
  nextRssMiB: number;
  upstreamConnections: number;
}

type Pids = { next: number; upstream: number };

let statsUrl = '';
let statsKey = '';

/** Connections the upstream has accepted so far (to see whether a proxy reuses them). */
async function upstreamConnections(): Promise<number> {
  const response = await fetch(statsUrl, { headers: { 'x-api-key': statsKey }, signal: AbortSignal.timeout(5_000) });
  return ((await response.json()) as { connections: number }).connections;
}

async function loadSlice(workload: 'small' | 'mib', target: Target, durationS: number, pids: Pids): Promise<Slice> {
  // autocannon's histogram has 1 ms resolution; keep the exact times (bounded) for the percentiles.
  const latencies: number[] = [];
  const connections0 = await upstreamConnections();
  const cpu0 = { next: cpuMs(pids.next), upstream: cpuMs(pids.upstream) };
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
    nextCpuMs: cpuMs(pids.next) - cpu0.next,
    upstreamCpuMs: cpuMs(pids.upstream) - cpu0.upstream,
    nextRssMiB: rssMiB(pids.next),
    upstreamConnections: (await upstreamConnections()) - connections0,
  };
}

async function sseSlice(target: Target, total: number, pids: Pids): Promise<Slice> {
  const connections0 = await upstreamConnections();
  const cpu0 = { next: cpuMs(pids.next), upstream: cpuMs(pids.upstream) };
  const result = await runSse({
    url: target.base + 'sse',
    headers: target.headers,
    concurrency: settings.sseConcurrency,
    requestTimeoutMs: 10_000,
    expectEvents: SSE_EVENTS,
    total,
    deadlineMs: quick ? 10_000 : 20_000,
  });
  return {
    requests: result.completed,
    durationS: result.elapsedMs / 1000,
    latencies: result.fullMs,
    ttfes: result.ttfeMs,
    bytes: 0,
    errors: result.errors,
    non2xx: 0,
    firstError: result.firstError,
    nextCpuMs: cpuMs(pids.next) - cpu0.next,
    upstreamCpuMs: cpuMs(pids.upstream) - cpu0.upstream,
    nextRssMiB: rssMiB(pids.next),
    upstreamConnections: (await upstreamConnections()) - connections0,
  };
}

/**
 * Measures one workload on every target: a warm-up per target, then `rounds` slices per target in rotating
 * order (A B C, B C A, C A B …), so background load on the machine and drift hit every target alike.
 */
async function measureWorkload(workload: WorkloadName, targets: readonly Target[], pids: Pids): Promise<Cell[]> {
  const slice = (target: Target, share: number) =>
    workload === 'sse'
      ? sseSlice(target, Math.max(1, Math.round(settings.sseTotal * share)), pids)
      : loadSlice(workload, target, Math.max(1, Math.round(settings.durationS * share)), pids);
  for (const target of targets) {
    if (workload === 'sse') await runSse({ url: target.base + 'sse', headers: target.headers, concurrency: settings.sseConcurrency, requestTimeoutMs: 10_000, expectEvents: SSE_EVENTS, total: settings.sseWarmup, deadlineMs: 10_000 });
    else await autocannonRun(target.base + workload, target.headers, settings.warmupS);
  }
  const slices = new Map<TargetName, Slice[]>(targets.map((t) => [t.name, []]));
  for (let round = 0; round < settings.rounds; round++) {
    for (let i = 0; i < targets.length; i++) {
      const target = targets[(i + round) % targets.length]!;
      slices.get(target.name)!.push(await slice(target, 1 / settings.rounds));
    }
  }
  return targets.map((target) => toCell(workload, target.name, slices.get(target.name)!));
}

function toCell(workload: WorkloadName, target: TargetName, slices: readonly Slice[]): Cell {
  const sum = (pick: (s: Slice) => number) => slices.reduce((total, s) => total + pick(s), 0);
  const requests = sum((s) => s.requests);
  const durationS = sum((s) => s.durationS);
  const errors = sum((s) => s.errors);
  const non2xx = sum((s) => s.non2xx);
  const bytes = sum((s) => s.bytes);
  const summary = (values: number[]) => {
    const [p50, p99] = percentiles(values, [50, 99]);
    let total = 0;
    let max = 0;
    for (const v of values) {
      total += v;
      if (v > max) max = v;
    }
    return { p50: round(p50!, 2), p99: round(p99!, 2), mean: round(total / Math.max(values.length, 1), 2), max: round(max, 2) };
  };
  return {
    workload,
    target,
    requests,
    durationS: round(durationS, 2),
    reqPerSec: round(requests / durationS, 1),
    sliceReqPerSec: slices.map((s) => round(s.requests / s.durationS, 1)),
    latencyMs: summary(slices.flatMap((s) => s.latencies)),
    ttfeMs: workload === 'sse' ? summary(slices.flatMap((s) => s.ttfes)) : null,
    bytesPerResponse: requests && bytes ? Math.round(bytes / requests) : 0,
    errors,
    non2xx,
    firstError: slices.find((s) => s.firstError)?.firstError ?? null,
    nextRssMiB: round(Math.max(...slices.map((s) => s.nextRssMiB)), 1),
    upstreamConnections: sum((s) => s.upstreamConnections),
    nextCpuUsPerReq: round((sum((s) => s.nextCpuMs) * 1000) / Math.max(requests, 1), 0),
    upstreamCpuUsPerReq: round((sum((s) => s.upstreamCpuMs) * 1000) / Math.max(requests, 1), 0),
    reqPerSecVsNaive: Number.NaN,
    ttfeP50VsNaive: null,
    valid: requests > 0 && errors === 0 && non2xx === 0 && (workload !== 'mib' || bytes >= requests * MIB),
  };
}

/**
 * CPU-profiles a fresh Next server per target under one workload's load (so each profile holds one kind
 * of request), and summarises where its time goes.
 */
async function profileRun(workload: 'small' | 'mib', upstreamBase: string, upstreamKey: string, appDir: string): Promise<ProfileSummary[]> {
  const dir = join(RESULTS, 'profiles');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const summaries: ProfileSummary[] = [];
  for (const name of ['naive', 'keyward'] as const) {
    const env = await appEnv(upstreamBase, upstreamKey);
    const sub = join(dir, name);
    mkdirSync(sub);
    const server = await startApp(
      { ...env.vars, NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${sub} --cpu-prof-interval=250` },
      { cwd: appDir },
    );
    app = server;
    let window: { startUs: number; endUs: number; requests: number; cpuMs: number } | null = null;
    try {
      const appBase = `http://127.0.0.1:${server.port}`;
      const target: Target =
        name === 'naive'
          ? { name, base: `${appBase}/api/bench/naive/`, headers: {} }
          : { name, base: `${appBase}/api/proxy/bench/`, headers: { cookie: await signIn(server.url, env.username, env.password), 'x-keyward-csrf': '1' } };
      console.log(`profile: ${name} ${workload}, ${settings.profileS} s`);
      await autocannonRun(target.base + workload, target.headers, settings.warmupS);
      const startUs = monotonicUs();
      const cpu0 = cpuMs(server.pid);
      const result = await autocannonRun(target.base + workload, target.headers, settings.profileS);
      window = { startUs, endUs: monotonicUs(), requests: result.requests.total, cpuMs: cpuMs(server.pid) - cpu0 };
      if (result.non2xx || result.errors) throw new Error(`bench: profile load for ${name} had errors`);
    } finally {
      await server.stop(); // SIGTERM: Next exits, Node writes the profile
      app = undefined;
    }
    const file = readdirSync(sub).find((f) => f.endsWith('.cpuprofile'));
    if (!file) throw new Error(`bench: no .cpuprofile written for ${name}`);
    summaries.push(await analyzeProfile(join(sub, file), `${name} ${workload}`, appDir, window));
  }
  return summaries;
}

function printTable(cells: readonly Cell[], peakRss: number) {
  const header = ['workload', 'target', 'req/s', 'slices min-max', 'x naive', 'p50 ms', 'p99 ms', 'TTFE p50', 'TTFE p99', 'RSS MiB', 'Next µs/req', 'up µs/req', 'up conns'];
  const rows = cells.map((c) => [
    c.workload,
    c.target + (c.valid ? '' : ' !'),
    c.reqPerSec.toFixed(0),
    `${Math.min(...c.sliceReqPerSec).toFixed(0)}-${Math.max(...c.sliceReqPerSec).toFixed(0)}`,
    c.reqPerSecVsNaive.toFixed(2),
    c.latencyMs.p50.toFixed(2),
    c.latencyMs.p99.toFixed(2),
    c.ttfeMs ? c.ttfeMs.p50.toFixed(2) : '',
    c.ttfeMs ? c.ttfeMs.p99.toFixed(2) : '',
    c.nextRssMiB.toFixed(0),
    c.target === 'upstream' ? '-' : String(c.nextCpuUsPerReq),
    String(c.upstreamCpuUsPerReq),
    String(c.upstreamConnections),
  ]);
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
      `${SSE_EVENTS} events ${SSE_INTERVAL_MS} ms apart (p50/p99 = whole stream, TTFE = first data: line).\n` +
      `x naive: req/s relative to the naive passthrough. RSS: the Next server after the cell (peak ${peakRss.toFixed(0)} MiB). ` +
      `µs/req: CPU time of the Next server / the upstream per request. up conns: connections the upstream accepted.`,
  );
  for (const cell of cells) if (cell.firstError) console.log(`  ${cell.workload}/${cell.target}: first error: ${cell.firstError}`);
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
