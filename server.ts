/**
 * `npm start`: the fast lane (DESIGN.md "Two entry points, one core"). One Node `http` server: `/api/proxy/*` goes
 * to the core's pipeline directly (`proxyCall`: handleProxy's steps, answered without a `Response`), every other
 * request (pages, Auth.js, /api/session …) to Next.js, which runs in a child process (next-server.ts, Next's
 * documented custom-server API) behind a private Unix socket. Proxied calls skip Next's per-request cost; the
 * pipeline, config, sessions, errors, logs, audit and limits are the same code as behind the route handlers, which
 * `next start` (`npm run start:next`) and Vercel keep using.
 *
 * `npm run build` bundles this file into `<distDir>/keyward-server.mjs` (scripts/build-server.mjs) and
 * `npm start` runs it (scripts/start.mjs), so production needs neither tsx nor TypeScript.
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import nextEnv from '@next/env';
import { PROXIED_PATHS_SOURCE, type Runtime } from 'keyward/core';
import {
  checkStartup,
  checkStartupImport,
  createClientErrorAnswer,
  createConnectRefusal,
  createFastLane,
  createFastLaneRuntime,
  createUpgradeListener,
  drainThenCut,
  fastLaneProblems,
  NextExitedError,
  NextSocketFolderError,
  OpenSockets,
  printUncaughtErrorsScrubbed,
  readServeOptions,
  registerTracingFromEnv,
  scrubConsole,
  ServingCalls,
  SHUTDOWN_DRAIN_MS,
  shutdownTracing,
  startNextProcess,
  UsageError,
  WsTickets,
  type NextProcess,
  type ServeOptions,
} from 'keyward/node';
import nextConfig from './next.config';

async function main(): Promise<void> {
  let options: ServeOptions;
  try {
    options = readServeOptions(process.argv.slice(2), process.env);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`${error.message}\nThe options are listed by \`npm start -- --help\`.`);
    process.exit(1);
  }
  // As `next start`: production unless NODE_ENV says otherwise, and the .env files loaded before anything reads
  // the environment.
  const env = process.env as Record<string, string | undefined>;
  env.NODE_ENV ||= 'production';
  const dir = process.cwd();
  nextEnv.loadEnvConfig(dir, false);

  // Traces, as instrumentation.ts registers them in Next's process: this process makes the proxied calls' spans.
  await registerTracingFromEnv(process.env);
  // The same start-up check as instrumentation.ts (which Next's process runs too), on the same upstreams as
  // keyward.ts gives the route handlers: a bad configuration exits 1 naming the field, before Next starts and
  // before anything listens. The upstreams are imported here, not at the top: a TypeScript upstream with a bad
  // setting throws while its module loads, and it reads the environment with the .env files loaded, as under
  // `next start`.
  const { upstreams } = await checkStartupImport(() => import('@/upstreams'));
  let loaded: Runtime | undefined;
  checkStartup(() => (loaded = createFastLaneRuntime(upstreams)));
  if (!loaded) process.exit(1);
  const runtime = loaded;
  // As keyward.register() does in Next's process: what anything prints with `console` passes the log scrubber,
  // an uncaught exception too (Node would print it itself).
  scrubConsole();
  printUncaughtErrorsScrubbed();
  const problems = fastLaneProblems(runtime);
  if (problems.length > 0) {
    console.error(`\nKeyward cannot start.\n${problems.join('\n')}\n`);
    process.exit(1);
  }

  // Next.js runs in a process of its own (next-server.ts): sharing this one, the pages it rendered made every
  // proxied call after them markedly more expensive in CPU (measured: README "Benchmark"). It gets every request
  // and upgrade outside /api/proxy (and /api/metrics, answered below), forwarded over a private Unix socket.
  let nextProcess: NextProcess;
  try {
    nextProcess = await startNextProcess({ entry: fileURLToPath(new URL('./keyward-next.mjs', import.meta.url)), port: options.port, hostname: options.hostname });
  } catch (error) {
    if (!(error instanceof NextExitedError || error instanceof NextSocketFolderError)) throw error;
    console.error(`\nKeyward cannot start: ${error.message}.\n`);
    process.exit(1);
  }
  // What Next's process counts (its handlers: a decoy key submitted to /api/keys, for one) is merged into the
  // /api/metrics this process answers.
  runtime.metrics.mergeFrom(() =>
    nextProcess.metrics().catch((error: unknown) => {
      runtime.logger.warn({ err: error instanceof Error ? error.message : 'unknown' }, 'metrics: the Next.js process did not answer; scraped without its counts');
      throw error;
    }),
  );
  const siteHeaders = await configuredHeaders(['/:path*']);
  const proxyHeaders = await configuredHeaders(['/:path*', PROXIED_PATHS_SOURCE]);
  let origin = `http://localhost:${options.port}`;
  // /api/metrics too: this process counts the proxied calls (lib/core/observe/metrics.ts processMetrics).
  const serving = new ServingCalls();
  const server = createServer(createFastLane({ deps: runtime, origin: () => origin, next: nextProcess.web, siteHeaders, proxyHeaders, metrics: runtime, serving }));
  server.on('connect', createConnectRefusal(runtime, siteHeaders));
  server.on('clientError', createClientErrorAnswer(siteHeaders));
  // WebSockets: upgrades on /api/proxy/* to routes that declare `websocket: true`, authorized by the core;
  // every other upgrade to Next's own upgrade handling.
  const sockets = new OpenSockets(runtime);
  server.on(
    'upgrade',
    createUpgradeListener({ deps: runtime, origin: () => origin, tickets: new WsTickets(runtime.store), sockets, next: nextProcess.upgrade, siteHeaders, serving }),
  );
  if (options.keepAliveTimeout !== undefined) server.keepAliveTimeout = options.keepAliveTimeout;
  server.listen(options.port, options.hostname);
  try {
    await once(server, 'listening');
  } catch (error) {
    // A port in use (another server, a second `npm start`), a privileged one, an address this machine lacks: said
    // in a line, as the other start-up failures are, and Next's process (already started) stopped with this one.
    console.error(`\nKeyward cannot start: ${listenProblem(error, options)}.\n`);
    await nextProcess.stop();
    process.exit(1);
  }
  const { port } = server.address() as AddressInfo;
  origin = `http://localhost:${port}`;
  console.log(`Keyward (fast lane) on ${listeningOn(options.hostname, port)}: /api/proxy/* by Keyward's core, everything else by Next.js`);

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.close();
    sockets.closeAll();
    server.closeIdleConnections();
    const nextStopped = nextProcess.stop();
    // Proxied calls in progress (long streams) get SHUTDOWN_DRAIN_MS to end; the rest are cut then, which records
    // them as aborted. Then every call is on record (and its span exported) before the process goes, and Next has
    // stopped too.
    void drainThenCut(serving, () => server.closeAllConnections(), SHUTDOWN_DRAIN_MS)
      .then(() => Promise.all([runtime.audit.flush().catch(() => {}), shutdownTracing().catch(() => {}), nextStopped]))
      .finally(() => process.exit(0));
    setTimeout(() => process.exit(0), SHUTDOWN_DRAIN_MS + 5_000).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  // Without Next, pages and sign-in would fail while proxied calls went on: stop, so a supervisor restarts both.
  void nextProcess.exited.then((code) => {
    if (stopping) return;
    console.error(`\nKeyward is stopping: the Next.js process exited (${code ?? 'signal'}).\n`);
    process.exit(1);
  });
}

/**
 * next.config.ts's headers for the rules with these sources, in their order (a later rule's header replaces an
 * earlier one's, as in Next): Next adds them to route handlers' responses too.
 */
async function configuredHeaders(sources: readonly string[]): Promise<Array<readonly [string, string]>> {
  const rules = (await nextConfig.headers?.()) ?? [];
  return rules
    .filter((rule) => sources.includes(rule.source) && !rule.has && !rule.missing)
    .flatMap((rule) => rule.headers.map(({ key, value }) => [key.toLowerCase(), value] as const));
}

/** Why listening failed, in words, naming the address (Node's message names the system call). */
function listenProblem(error: unknown, options: ServeOptions): string {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  const host = options.hostname;
  const address = host ? `${host.includes(':') ? `[${host}]` : host}:${options.port}` : `port ${options.port}`;
  if (code === 'EADDRINUSE') return `${address} is already in use (EADDRINUSE): stop what listens there, or choose another port with -p`;
  if (code === 'EACCES') return `listening on ${address} is not permitted (EACCES): ports below 1024 need privileges; choose another port with -p`;
  if (code === 'EADDRNOTAVAIL') return `${host} is not an address of this machine (EADDRNOTAVAIL): choose another with -H`;
  return `it cannot listen on ${address} (${code ?? (error instanceof Error ? error.message : 'unknown error')})`;
}

/** Where the server listens, said plainly: bound to every interface, it is reachable from the network, not only here. */
function listeningOn(hostname: string | undefined, port: number): string {
  if (!hostname || hostname === '0.0.0.0' || hostname === '::') {
    return `http://localhost:${port} and port ${port} of every network interface (-H 127.0.0.1 keeps it on this machine)`;
  }
  return `http://${hostname.includes(':') ? `[${hostname}]` : hostname}:${port}`;
}

await main();
