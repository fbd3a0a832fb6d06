/**
 * The benchmark's upstream: a plain node:http server on 127.0.0.1 with keep-alive, run as its own process
 * (by `bench/run.ts`, with Node's built-in type stripping) so it never shares an event loop with the load
 * generator. It prints `{"port":N}` once listening and exits when its stdin closes (the bench ended).
 *
 *   GET /small  ~200 bytes of JSON
 *   GET /mib    1 MiB body, allocated once
 *   GET /sse    text/event-stream: one event at once, then BENCH_SSE_EVENTS - 1 more every BENCH_SSE_INTERVAL_MS
 *   GET /stats  {"connections","requests"} so far (keep-alive check: a proxy should not open one per request)
 *   GET /big?bytes=N   N bytes (at most 4 GiB), streamed from one 1 MiB buffer with backpressure (--big)
 *   POST /sink  reads the body (never kept) and answers {"bytes":N} (--big)
 *   GET /ws     WebSocket (ws package): echoes every message back
 *
 * Every request must carry `x-api-key: $BENCH_UPSTREAM_KEY` (else 401), so a proxy that forgot the key
 * shows up as errors instead of as fast answers.
 */
import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';

const key = process.env.BENCH_UPSTREAM_KEY ?? '';
if (key.length < 16) {
  console.error('BENCH_UPSTREAM_KEY must be set (>= 16 characters)');
  process.exit(2);
}
const sseEvents = Math.min(Math.max(Number(process.env.BENCH_SSE_EVENTS ?? 4), 1), 100);
const sseIntervalMs = Math.min(Math.max(Number(process.env.BENCH_SSE_INTERVAL_MS ?? 10), 0), 1000);

const small = Buffer.from(
  JSON.stringify({
    id: 'item_0001',
    name: 'Widget',
    price: { amount: 1999, currency: 'EUR' },
    tags: ['bench', 'small', 'json'],
    stock: 42,
    updatedAt: '2026-01-01T00:00:00.000Z',
    description: 'A small JSON document for the benchmark.',
  }),
);
// Printable filler (no byte sequence can look like a secret), allocated once.
const mib = Buffer.alloc(1024 * 1024, 'abcdefghijklmnopqrstuvwxyz0123456789\n');

let connections = 0;
let requests = 0;

const server = createServer((request, response) => {
  requests++;
  if (request.headers['x-api-key'] !== key) {
    response.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"unauthorized"}');
    return;
  }
  const [path, query] = (request.url ?? '/').split('?');
  if (request.method === 'POST' && path === '/sink') {
    let bytes = 0;
    request.on('data', (chunk: Buffer) => (bytes += chunk.length));
    request.on('end', () => response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ bytes })));
    request.on('error', () => response.destroy());
  } else if (request.method !== 'GET') {
    response.writeHead(405).end();
  } else if (path === '/big') {
    const total = Math.min(Math.max(Number(new URLSearchParams(query ?? '').get('bytes') ?? 0), 0), 4 * 1024 ** 3);
    response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
    let left = total;
    const pump = () => {
      while (left > 0) {
        const chunk = left >= mib.length ? mib : mib.subarray(0, left);
        left -= chunk.length;
        if (!response.write(chunk)) {
          response.once('drain', pump);
          return;
        }
      }
      response.end();
    };
    response.on('close', () => (left = 0));
    pump();
  } else if (path === '/stats') {
    requests--;
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ connections, requests }));
  } else if (path === '/small') {
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': small.length }).end(small);
  } else if (path === '/mib') {
    response.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': mib.length }).end(mib);
  } else if (path === '/sse') {
    response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    response.write(`id: 0\ndata: {"n":0}\n\n`);
    let sent = 1;
    const timer = setInterval(() => {
      if (sent >= sseEvents) {
        clearInterval(timer);
        response.end();
        return;
      }
      response.write(`id: ${sent}\ndata: {"n":${sent}}\n\n`);
      sent++;
    }, sseIntervalMs);
    response.on('close', () => clearInterval(timer));
    if (sseEvents === 1) {
      clearInterval(timer);
      response.end();
    }
  } else {
    response.writeHead(404).end();
  }
});
server.on('connection', () => connections++);
// WebSocket echo on /ws; the handshake must carry the key like every HTTP request.
const wss = new WebSocketServer({
  server,
  path: '/ws',
  maxPayload: 1024 * 1024,
  verifyClient: ({ req }: { req: import('node:http').IncomingMessage }) => req.headers['x-api-key'] === key,
});
wss.on('connection', (socket) => socket.on('message', (data, binary) => socket.send(data as Buffer, { binary })));
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as { port: number };
  process.stdout.write(`${JSON.stringify({ port })}\n`);
});
// The parent closes stdin when it is done (or dies): never outlive the bench.
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
