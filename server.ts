/**
 * `npm start`: the fast lane (DESIGN.md "Two entry points, one core"). One Node `http` server: `/api/proxy/*` goes
 * to the core's pipeline directly (`proxyCall`: handleProxy's steps, answered without a `Response`), every other
 * request (pages, Auth.js, /api/session …) to Next's request handler (Next's documented custom-server API). Proxied calls skip Next's per-request cost; the pipeline, config,
 * sessions, errors, logs, audit and limits are the same code as behind the route handlers, which `next start`
 * (`npm run start:next`) and Vercel keep using.
 *
 * `npm run build` bundles this file into `<distDir>/keyward-server.mjs` (scripts/build-server.mjs) and
 * `npm start` runs it (scripts/start.mjs), so production needs neither tsx nor TypeScript.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import nextEnv from '@next/env';
import type { Runtime } from 'keyward/core';
import {
  checkStartup,
  createConnectRefusal,
  createFastLane,
  createFastLaneRuntime,
  createUpgradeListener,
  OpenSockets,
  readServeOptions,
  UsageError,
  WsTickets,
  type ServeOptions,
} from 'keyward/node';
import nextConfig from './next.config';
import { upstreams } from './upstreams';

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

  // The same start-up check as instrumentation.ts (which Next also runs in app.prepare() below), on the same
  // upstreams as keyward.ts gives the route handlers: a bad configuration exits 1 naming the field, before
  // anything listens.
  let loaded: Runtime | undefined;
  checkStartup(() => (loaded = createFastLaneRuntime(upstreams)));
  if (!loaded) process.exit(1);
  const runtime = loaded;
  if (runtime.store.kind === 'memory') {
    // Next's handlers (sign-out, keys, mobile tokens) hold their own runtime: with a memory store, a session
    // revoked there would still be accepted here. Fail closed.
    console.error('\nKeyward cannot start.\n  - KEYWARD_STORE: "memory" cannot be shared between the fast lane and Next\'s handlers; use sqlite (the default) or redis, or `npm run start:next`\n');
    process.exit(1);
  }

  const { default: next } = await import('next');
  // Next's request handler attaches its own 'upgrade' listener (its router's: rewrites to other hosts, else the
  // socket is ended) to the server its first request came through, or to `httpServer`. On the fast lane's server
  // it would also end every upgrade on /api/proxy. So Next gets a server that never listens, and the fast lane's
  // upgrade listener passes on to it the upgrades outside /api/proxy: Next answers those exactly as before.
  // (`app.getUpgradeHandler()` is not that listener: in production it does nothing and would leave the socket open.)
  const nextUpgrades = createServer();
  const app = next({ dev: false, dir, hostname: options.hostname, port: options.port, httpServer: nextUpgrades });
  await app.prepare();
  const siteHeaders = await siteWideHeaders();
  let origin = `http://localhost:${options.port}`;
  const server = createServer(createFastLane({ deps: runtime, origin: () => origin, next: app.getRequestHandler(), siteHeaders }));
  server.on('connect', createConnectRefusal(runtime, siteHeaders));
  // WebSockets: upgrades on /api/proxy/* to routes that declare `websocket: true`, authorized by the core;
  // every other upgrade to Next's own upgrade handler.
  const sockets = new OpenSockets(runtime);
  // Before Next's first request it has no listener yet: the socket is closed, as Node does with no listener.
  const toNext = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (!nextUpgrades.emit('upgrade', req, socket, head)) socket.destroy();
  };
  server.on(
    'upgrade',
    createUpgradeListener({ deps: runtime, origin: () => origin, tickets: new WsTickets(runtime.store), sockets, next: toNext, siteHeaders }),
  );
  if (options.keepAliveTimeout !== undefined) server.keepAliveTimeout = options.keepAliveTimeout;
  server.listen(options.port, options.hostname);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  origin = `http://localhost:${port}`;
  console.log(`Keyward (fast lane) on http://${displayHost(options.hostname)}:${port}: /api/proxy/* by Keyward's core, everything else by Next.js`);

  const stop = () => {
    server.close();
    sockets.closeAll();
    server.closeIdleConnections();
    // Calls already answered are on record before the process goes.
    void runtime.audit
      .flush()
      .catch(() => {})
      .finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 5_000).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

/** next.config.ts's headers for every path (`source: '/:path*'`): Next adds them to route handlers' responses too. */
async function siteWideHeaders(): Promise<Array<readonly [string, string]>> {
  const rules = (await nextConfig.headers?.()) ?? [];
  return rules
    .filter((rule) => rule.source === '/:path*' && !rule.has && !rule.missing)
    .flatMap((rule) => rule.headers.map(({ key, value }) => [key.toLowerCase(), value] as const));
}

function displayHost(hostname: string | undefined): string {
  if (!hostname || hostname === '0.0.0.0' || hostname === '::') return 'localhost';
  return hostname.includes(':') ? `[${hostname}]` : hostname;
}

await main();
