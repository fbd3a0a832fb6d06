/**
 * `npm start`'s second process: Next.js, serving everything outside /api/proxy (pages, Auth.js, /api/session …)
 * on a Unix socket that only the fast lane (server.ts) forwards to. server.ts starts it with `fork` and passes
 * the socket's path, the public port and hostname in the environment; it answers `ready` over the IPC channel
 * once Next is prepared and listening, and exits when that channel closes (the fast lane is gone).
 *
 * Why a process of its own: once Next had rendered a page in the fast lane's process, every proxied call after it
 * cost markedly more CPU (measured: README "Benchmark"); both shared one V8 isolate, its heap and its compiled
 * code. Bundled by `npm run build` into `<distDir>/keyward-next.mjs` (scripts/build-server.mjs).
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { Socket } from 'node:net';
import { processMetrics } from '@/lib/core/observe/metrics';
import { shutdownTracing } from '@/lib/core/observe/trace';

/** As lib/node/next-process.ts waits for an answer to a WebSocket handshake before letting go of its side. */
const UPGRADE_ANSWER_MS = 10_000;

async function main(): Promise<void> {
  const socketPath = process.env.KEYWARD_NEXT_SOCKET;
  if (!socketPath || !process.send) {
    console.error('keyward-next.mjs is started by `npm start` (the fast lane), not on its own.');
    process.exit(1);
  }
  const port = Number(process.env.KEYWARD_NEXT_PORT) || undefined;
  const hostname = process.env.KEYWARD_NEXT_HOSTNAME || undefined;
  const { default: next } = await import('next');
  // Next attaches its own 'upgrade' listener to `httpServer` (rewrites to other hosts), as under `next start`. An
  // upgrade it does not serve it neither answers nor ends, and a pending upgrade's socket is not read, so not even
  // the fast lane closing its side is seen: each would hold a socket here for good. One still unanswered after
  // UPGRADE_ANSWER_MS is closed; one Next answered (it wrote its 101) keeps no timeout.
  const server = createServer();
  server.prependListener('upgrade', (_req, duplex) => {
    // A net.Socket (typed Duplex): this server listens on a Unix socket, never over TLS.
    const socket = duplex as Socket;
    socket.setTimeout(UPGRADE_ANSWER_MS, () => {
      if (socket.bytesWritten === 0) socket.destroy();
      else socket.setTimeout(0);
    });
  });
  const app = next({ dev: false, dir: process.cwd(), hostname, port, httpServer: server });
  await app.prepare();
  server.on('request', app.getRequestHandler());
  server.listen(socketPath);
  await once(server, 'listening');
  process.send({ ready: true });
  // The fast lane answers /api/metrics and merges in what this process counted (lib/core/observe/metrics.ts
  // mergeFrom): the same set Next's bundles count into (processMetrics is one per process).
  process.on('message', (message: { type?: string; id?: number } | null) => {
    if (message?.type !== 'metrics' || typeof message.id !== 'number') return;
    const { id } = message;
    void Promise.resolve()
      .then(() => processMetrics().snapshot())
      .then((metrics) => process.send?.({ type: 'metrics', id, metrics }))
      .catch(() => process.send?.({ type: 'metrics', id, metrics: null }));
  });

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    server.close();
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 5_000).unref();
    // The spans of what it served last are exported before it goes (instrumentation.ts registered the provider).
    void Promise.all([once(server, 'close'), shutdownTracing().catch(() => {})]).finally(() => process.exit(0));
  };
  // The fast lane is gone (or asks it to stop): no request can reach this socket any more.
  // `on`, not `once`: the signals stay handled here, so keyward.register()'s listener (lib/core/shutdown.ts), which
  // restores a signal's default where nothing else handles it, never takes this process down before it is done.
  process.once('disconnect', stop);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((error: unknown) => {
  console.error(`Next.js could not start: ${error instanceof Error ? error.message : 'unknown error'}`);
  process.exit(1);
});
