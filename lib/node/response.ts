import { STATUS_CODES, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ProxiedResponse } from '@/lib/core/pipeline';
import { ProxiedBody } from '@/lib/core/respond/body';

/**
 * Writes the core's answer to the client as it streams: status and headers (each `Set-Cookie` as its own
 * line), then every chunk as soon as the core hands it over (SSE events are not held back), waiting for
 * 'drain' whenever the socket's buffer is full, so a slow client slows the upstream read instead of filling
 * memory. When the client goes away, the body is cancelled, which the core records as `aborted` and which
 * closes the upstream response. A body that fails mid-way destroys the connection, so the client sees a
 * truncated response, never a complete-looking one; so does a client that leaves what was written unread for
 * the route's `timeoutMs` (`ProxiedBody.stalled`).
 *
 * A proxied response (`ProxiedResponse`) is read chunk by chunk from the core (`ProxiedBody.read`); a refusal
 * is a `Response` (Keyward's JSON error), read through its stream.
 */
export async function writeResponse(
  response: Response | ProxiedResponse,
  res: ServerResponse,
  extraHeaders: readonly (readonly [string, string])[] = [],
): Promise<void> {
  const headers: OutgoingHttpHeaders = {};
  for (const [name, value] of extraHeaders) headers[name] = value;
  for (const [name, value] of response.headers) {
    if (name !== 'set-cookie') headers[name] = value;
  }
  const cookies = response.headers.getSetCookie();
  if (cookies.length > 0) headers['set-cookie'] = cookies;
  res.writeHead(response.status, headers);

  const body = response.body;
  if (body === null) {
    res.end();
    return;
  }
  const source = body instanceof ProxiedBody ? body : readerOf(body);
  // A client that stops reading for the route's timeoutMs: the core cut the call; the connection is closed too.
  if (body instanceof ProxiedBody) body.onCut(() => res.destroy());
  const cancel = () => {
    if (!res.writableFinished) source.cancel();
  };
  res.once('close', cancel);
  // Gone before this began (while the core read a compressed body ahead, say): 'close' has been, and nothing will
  // read the body, so it is cancelled now, not when the route's timeoutMs runs out.
  if (res.destroyed) {
    res.off('close', cancel);
    cancel();
    return;
  }
  const batch = new WriteBatch(res, isMessageStream(response.headers.get('content-type')));
  try {
    for (;;) {
      const parts = await source.read();
      if (parts === null) break;
      if (res.destroyed) return;
      batch.hold();
      let full = false;
      for (const part of parts) full = !res.write(part) || full;
      if (batch.immediate) batch.release();
      if (full) {
        batch.release();
        await drained(res);
      }
    }
    if (!res.destroyed) res.end();
  } catch {
    res.destroy();
  } finally {
    batch.release();
    res.off('close', cancel);
  }
}

/** A web stream read as a ProxiedBody is: one chunk at a time, null at the end. */
function readerOf(stream: ReadableStream<Uint8Array>): Pick<ProxiedBody, 'read' | 'cancel'> {
  const reader = stream.getReader();
  return {
    async read() {
      const { done, value } = await reader.read();
      return done ? null : [value];
    },
    cancel() {
      reader.cancel().catch(() => {});
    },
  };
}

/**
 * Media types whose chunks are messages the client acts on one by one as they arrive (an LLM's tokens as SSE
 * events, NDJSON lines, Bedrock's event stream): each read from the core goes out at once.
 */
const MESSAGE_STREAMS = new Set([
  'text/event-stream',
  'application/x-ndjson',
  'application/jsonl',
  'application/json-seq',
  'application/vnd.amazon.eventstream',
]);

function isMessageStream(contentType: string | null): boolean {
  return contentType !== null && MESSAGE_STREAMS.has(contentType.split(';', 1)[0]!.trim().toLowerCase());
}

/**
 * Holds the socket's writes until the current turn of the event loop is over (setImmediate), so what the core
 * hands over together goes out in one write: a small response's head, body and the chunked encoding's final
 * `0\r\n\r\n` (whose end only arrives a few ticks after the data) in one syscall instead of two. On loopback,
 * each write costs the sender the receiver's wake-up too (the second write was 6–9 % of a small proxied call's
 * CPU in a profile).
 * A message stream (`immediate`: SSE and the like, see `isMessageStream`) is not held to the end of the turn:
 * that waits for everything else the event loop has to do first (0.1–0.3 ms per event, median, with 8 streams
 * open in `npm run bench`), and a stream's end comes long after its data anyway. Its parts of one read still go
 * out in one write (head and first event together).
 * Node's own batching (ServerResponse corks until the next tick) stops short of the end for a streamed body.
 *
 * The socket is corked, not the response: `res.cork()` keeps chunks in the response's own buffer and never
 * emits 'drain' for a write that filled it, which would stall a large body at its first chunk.
 */
class WriteBatch {
  private socket: ServerResponse['socket'] = null;

  constructor(
    private readonly res: ServerResponse,
    /** Released by the caller after each read's writes, not at the end of the turn. */
    readonly immediate: boolean,
  ) {}

  hold(): void {
    if (this.socket || !this.res.socket) return;
    this.socket = this.res.socket;
    this.socket.cork();
    if (!this.immediate) setImmediate(() => this.release());
  }

  release(): void {
    const socket = this.socket;
    if (!socket) return;
    this.socket = null;
    socket.uncork();
  }
}

function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/**
 * Writes a whole (small, JSON) response to a socket no ServerResponse owns (a refused CONNECT or WebSocket
 * upgrade, a request Node's parser refused) as HTTP/1.1, then closes it.
 */
export async function endSocketWith(socket: Duplex, response: Response, siteHeaders: readonly (readonly [string, string])[]): Promise<void> {
  const body = await response.text();
  if (socket.destroyed) return;
  // The response's own headers win over the site's, each written once (as writeResponse does).
  const headers = new Map<string, string>();
  for (const [name, value] of siteHeaders) headers.set(name.toLowerCase(), value);
  for (const [name, value] of response.headers) headers.set(name, value);
  headers.set('content-length', String(Buffer.byteLength(body)));
  headers.set('connection', 'close');
  const lines = [`HTTP/1.1 ${response.status} ${STATUS_CODES[response.status] ?? ''}`];
  for (const [name, value] of headers) lines.push(`${name}: ${value}`);
  // Destroyed once written, as Node's own answer to a parser error is: only ended, the socket would stay open
  // (Node's HTTP sockets allow half-open ones) for as long as the client kept its side open.
  socket.end(`${lines.join('\r\n')}\r\n\r\n${body}`, () => socket.destroy());
}
