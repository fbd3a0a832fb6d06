import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, type IncomingMessage, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline, type Duplex } from 'node:stream';
import { createProxyServer } from 'http-proxy-3';
import { systemErrorDetail } from '@/lib/core/errors';
import { connectionOptions } from '@/lib/core/forward/headers';
import { getLogger } from '@/lib/core/log/logger';
import { originFormTarget } from './proxy-path';
import { forwardedForFallback, hasContent } from './request';

export interface NextProcessOptions {
  /** The bundled child (`<distDir>/keyward-next.mjs`, from next-server.ts). */
  readonly entry: string;
  /** The public port and hostname, as `next start -p -H` would be given them (Next builds URLs from them). */
  readonly port: number;
  readonly hostname: string | undefined;
}

export interface NextProcess {
  /** Hands a request outside /api/proxy to Next, as received. */
  web(req: IncomingMessage, res: ServerResponse): void;
  /** Hands an upgrade outside /api/proxy to Next's own upgrade handling. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** What Next's process counted (prom-client JSON), for /api/metrics; rejects when it does not answer within 2 s. */
  metrics(): Promise<unknown[]>;
  /** Settles with the child's exit code when it exits, for whatever reason. */
  readonly exited: Promise<number | null>;
  /** Asks the child to stop (SIGTERM) and waits for it, at most `ms`. */
  stop(ms?: number): Promise<void>;
}

/**
 * Starts Next.js in a child process on a Unix socket in a fresh private folder (0700: no other user can connect
 * to it) and resolves once it listens. `npm start` forwards every request outside /api/proxy there, with
 * http-proxy-3 (Vite's dev-server proxy: headers, bodies and upgrades streamed both ways, hop-by-hop headers
 * dropped), so Next answers exactly as under `next start`:
 * - `Host` is passed on, so Next and Auth.js build the same URLs;
 * - `X-Forwarded-For` is set to the client's address when absent (the fast lane's rule, which is also Next's
 *   own: `??=` the socket address), because Next cannot see the client's socket through the Unix socket.
 * Rejects, with the child's exit code, when Next exits before it listens (it prints why).
 */
export async function startNextProcess(options: NextProcessOptions): Promise<NextProcess> {
  let dir: string;
  try {
    dir = mkdtempSync(join(tmpdir(), 'keyward-next-'));
  } catch (error) {
    throw new NextSocketFolderError(error);
  }
  const socketPath = join(dir, 'next.sock');
  const child: ChildProcess = fork(options.entry, [], {
    env: {
      ...process.env,
      KEYWARD_NEXT_SOCKET: socketPath,
      KEYWARD_NEXT_PORT: String(options.port),
      ...(options.hostname ? { KEYWARD_NEXT_HOSTNAME: options.hostname } : {}),
    },
    stdio: 'inherit',
    // Node's own flags (fork's default, said here because it matters): Next's process runs with the fast lane's,
    // so `npm start`'s young-generation cap (package.json, README "Memory") holds for both processes.
    execArgv: process.execArgv,
  });
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      rmSync(dir, { recursive: true, force: true });
      resolve(code);
    }),
  );
  await new Promise<void>((resolve, reject) => {
    const onMessage = (message: unknown) => {
      if ((message as { ready?: boolean } | null)?.ready !== true) return;
      child.off('message', onMessage);
      resolve();
    };
    child.on('message', onMessage);
    void exited.then((code) => reject(new NextExitedError(code)));
  });

  const proxy = createProxyServer({
    // host and port are required by the type and unused: http.request connects to socketPath.
    target: { socketPath, host: 'localhost', port: 0 },
    ws: true,
    xfwd: false,
    // Kept-alive connections to Next (without an agent, http-proxy-3 sends `Connection: close` every time).
    agent: new Agent({ keepAlive: true }),
    // The response's head is written here (below), so this server's own Connection and Keep-Alive go out.
    selfHandleResponse: true,
  });
  // An upgrade Next leaves unanswered (it neither answers nor closes one for a path no WebSocket handler serves)
  // held the client's socket and the one to Next here, and one in Next, for good, even after the client hung up
  // (a pending handshake's socket is not read, so its end is never seen): any client could use up the process's
  // file descriptors. Both are let go when Next has not answered in time, or at once when the client's socket
  // fails or is reset.
  const released = new WeakSet<object>();
  proxy.on('proxyReqWs', (proxyReq, _req, socket) => {
    const release = () => {
      released.add(socket);
      proxyReq.destroy();
      socket.destroy();
    };
    const timer = setTimeout(release, UPGRADE_ANSWER_MS).unref();
    socket.once('close', release);
    const answered = () => {
      clearTimeout(timer);
      socket.off('close', release);
    };
    proxyReq.once('upgrade', answered);
    proxyReq.once('response', answered);
  });
  // http-proxy-3's `deleteLength` pass sets `content-length: 0` on a DELETE or OPTIONS without one and drops its
  // `transfer-encoding`, then pipes the body anyway: a chunked body became a request of its own on the kept-alive
  // connection to Next (or the start of the next client's), request smuggling past the fast lane. Without the
  // pass the request goes on as it came, chunked body and all.
  const passes = (proxy as unknown as { webPasses: Array<{ name: string }> }).webPasses;
  const deleteLength = passes.findIndex((pass) => pass.name === 'deleteLength');
  if (deleteLength !== -1) passes.splice(deleteLength, 1);
  proxy.on('proxyRes', (proxyRes, _req, res) => {
    res.statusCode = proxyRes.statusCode ?? 502;
    if (proxyRes.statusMessage) res.statusMessage = proxyRes.statusMessage;
    const listed = connectionOptions(proxyRes.headers.connection) ?? new Set<string>();
    for (const [name, value] of Object.entries(proxyRes.headers)) {
      if (value !== undefined && !HOP_BY_HOP.has(name) && !listed.has(name)) res.setHeader(name, value);
    }
    pipeline(proxyRes, res, () => {});
  });
  proxy.on('error', (error, _req, target) => {
    if (target && released.has(target)) return; // an unanswered upgrade let go on purpose (above)
    const code = (error as NodeJS.ErrnoException).code;
    if (!isResponse(target) && code === 'ECONNRESET') {
      // Next closes a handshake on a path no WebSocket handler serves (a page) without an answer: what the client
      // asked for, not an outage, and anyone may ask it as often as they like. Closed here too, as `next start` does.
      getLogger().debug({ code }, 'Next.js closed a WebSocket handshake it does not serve');
      target?.destroy();
      return;
    }
    getLogger().error({ err: error.name, code }, 'Next.js process unreachable');
    if (isResponse(target) && !target.headersSent) {
      target.writeHead(502, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' });
      target.end('Bad gateway: the Next.js process did not answer.\n');
    } else {
      target?.destroy();
    }
  });
  const forwardedFor = (req: IncomingMessage) => {
    const fallback = forwardedForFallback(req);
    if (fallback) req.headers['x-forwarded-for'] = fallback;
  };
  let asked = 0;
  const metrics = () =>
    new Promise<unknown[]>((resolve, reject) => {
      const id = ++asked;
      const timer = setTimeout(() => done(new Error('no answer')), 2_000);
      const onMessage = (message: { type?: string; id?: number; metrics?: unknown[] | null } | null) => {
        if (message?.type === 'metrics' && message.id === id) done(message.metrics ?? null);
      };
      const done = (result: unknown[] | null | Error) => {
        clearTimeout(timer);
        child.off('message', onMessage);
        if (Array.isArray(result)) resolve(result);
        else reject(result instanceof Error ? result : new Error('no metrics'));
      };
      child.on('message', onMessage);
      if (!child.connected) done(new Error('not connected'));
      else child.send({ type: 'metrics', id }, (error) => error && done(error));
    });
  return {
    metrics,
    web(req, res) {
      const target = originFormTarget(req.url ?? '/');
      if (target === null) return badTarget(res);
      req.url = target;
      forwardedFor(req);
      try {
        proxy.web(req, res);
      } catch {
        // A target http-proxy cannot read: this request's failure, never the process's.
        badTarget(res);
      }
    },
    upgrade(req, socket, head) {
      const target = originFormTarget(req.url ?? '/');
      if (target === null) return badUpgrade(socket);
      // A handshake is a GET with no body (RFC 6455 §4.1). One with a body would leave its connection to Next
      // waiting for bytes that belong to the next request sent on it.
      if (hasContent(req)) return badUpgrade(socket);
      req.url = target;
      forwardedFor(req);
      try {
        // Its own connection to Next, never a kept-alive one another client's request goes on next.
        proxy.ws(req, socket, head, { agent: false });
      } catch {
        badUpgrade(socket);
      }
    },
    exited,
    async stop(ms = 5_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), ms);
      await exited;
      clearTimeout(timer);
    },
  };
}

export class NextExitedError extends Error {
  constructor(readonly code: number | null) {
    super(`the Next.js process exited (${code ?? 'signal'}) before it was ready`);
    this.name = 'NextExitedError';
  }
}

/** The private folder for Next's socket could not be made under the temporary directory (read-only, full). */
export class NextSocketFolderError extends Error {
  constructor(cause: unknown) {
    const detail = systemErrorDetail(cause);
    super(`the Next.js process's socket needs a writable temporary directory (TMPDIR, now ${tmpdir()})${detail ? `: ${detail}` : ''}`, { cause });
    this.name = 'NextSocketFolderError';
  }
}

/** How long Next may take to answer a WebSocket handshake before both sockets are let go. */
const UPGRADE_ANSWER_MS = 10_000;

/** RFC 9110 §7.6.1: the connection's own headers, which Next's answer does not pass on (this server sets its own). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade']);

function isResponse(target: unknown): target is ServerResponse {
  return typeof (target as ServerResponse | undefined)?.writeHead === 'function';
}

/** A request target Next is not handed (neither origin form nor a valid absolute form): 400, the connection closed. */
function badTarget(res: ServerResponse): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(400, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store', connection: 'close' });
  res.end('Bad request: the request target is not a path.\n');
}

function badUpgrade(socket: Duplex): void {
  socket.on('error', () => {});
  socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
}
