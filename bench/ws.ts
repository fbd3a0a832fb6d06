import { WebSocket } from 'ws';
import { assertLoopback, MAX_SAMPLES } from './guard';

export interface WsOptions {
  /** http(s) URL of the WebSocket endpoint (checked as loopback, then switched to ws:). */
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  /** Sockets open at once; each does one round trip at a time. */
  readonly connections: number;
  readonly durationMs: number;
  /** Round trips in total (bounded in count as well as in time). */
  readonly maxMessages: number;
}

export interface WsResult {
  readonly messages: number;
  readonly elapsedMs: number;
  readonly errors: number;
  readonly firstError: string | null;
  /** Send to echo received, per message (ms). */
  readonly rttMs: number[];
}

const PAYLOAD = JSON.stringify({ type: 'bench.ping', text: 'a small WebSocket message for the benchmark', n: 0 });

function openSocket(url: string, headers: Readonly<Record<string, string>>): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers: { ...headers }, handshakeTimeout: 10_000 });
    socket.once('open', () => resolve(socket));
    socket.once('unexpected-response', (_request, response) => reject(new Error(`upgrade refused: ${response.statusCode}`)));
    socket.once('error', reject);
  });
}

/** Opens `connections` sockets, then sends a message and awaits its echo on each, over and over, until time or count runs out. */
export async function runWs(options: WsOptions): Promise<WsResult> {
  const url = assertLoopback(options.url).href.replace(/^http/, 'ws');
  const rttMs: number[] = [];
  let errors = 0;
  let firstError: string | null = null;
  let sent = 0;
  const sockets: WebSocket[] = [];
  try {
    for (let i = 0; i < options.connections; i++) sockets.push(await openSocket(url, options.headers));
  } catch (error) {
    for (const socket of sockets) socket.terminate();
    return { messages: 0, elapsedMs: 0, errors: 1, firstError: (error as Error).message, rttMs };
  }
  const begin = performance.now();
  const deadline = begin + options.durationMs;
  const worker = (socket: WebSocket) =>
    new Promise<void>((done) => {
      let start = 0;
      const next = () => {
        if (performance.now() >= deadline || sent >= options.maxMessages || socket.readyState !== WebSocket.OPEN) {
          done();
          return;
        }
        sent++;
        start = performance.now();
        socket.send(PAYLOAD);
      };
      socket.on('message', (data: Buffer) => {
        if (data.length !== PAYLOAD.length) {
          errors++;
          firstError ??= `echo of ${data.length} bytes`;
        } else if (rttMs.length < MAX_SAMPLES) rttMs.push(performance.now() - start);
        next();
      });
      socket.once('close', (code) => {
        if (performance.now() < deadline && sent < options.maxMessages) {
          errors++;
          firstError ??= `closed early (${code})`;
        }
        done();
      });
      socket.once('error', (error) => {
        errors++;
        firstError ??= error.message;
      });
      next();
    });
  await Promise.all(sockets.map(worker));
  const elapsedMs = performance.now() - begin;
  await Promise.all(
    sockets.map(
      (socket) =>
        new Promise<void>((done) => {
          if (socket.readyState === WebSocket.CLOSED) return done();
          const timer = setTimeout(() => {
            socket.terminate();
            done();
          }, 2_000);
          socket.once('close', () => {
            clearTimeout(timer);
            done();
          });
          socket.close(1000);
        }),
    ),
  );
  return { messages: rttMs.length, elapsedMs, errors, firstError, rttMs };
}
