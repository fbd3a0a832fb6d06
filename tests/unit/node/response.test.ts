import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { writeResponse } from '@/lib/node/response';

/**
 * lib/node/response.ts over a real node:http server and a real client on loopback. The server's sockets are
 * wrapped to count how many times Node hands data to the OS (`_write` / `_writev`, one call per flush).
 */
let server: Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  server?.close();
  server = undefined;
});

async function serve(makeResponse: () => Response): Promise<{ url: string; flushes: () => number }> {
  let flushes = 0;
  server = createServer((req, res) => {
    void writeResponse(makeResponse(), res);
  });
  server.on('connection', (socket: Socket) => {
    const internal = socket as unknown as Record<'_write' | '_writev', (...args: unknown[]) => unknown>;
    for (const name of ['_write', '_writev'] as const) {
      const original = internal[name].bind(socket);
      internal[name] = (...args: unknown[]) => {
        flushes++;
        return original(...args);
      };
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, flushes: () => flushes };
}

/** A body whose end arrives a few ticks after its data, as the core's scrubbed stream's does. */
function smallBody(text: string): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(text));
      process.nextTick(() => queueMicrotask(() => process.nextTick(() => controller.close())));
    },
  });
}

describe('writeResponse', () => {
  it('writes a small streamed response (head, body, end of the chunked encoding) in one flush', async () => {
    const { url, flushes } = await serve(() => new Response(smallBody('{"ok":true}'), { headers: { 'content-type': 'application/json' } }));
    const response = await fetch(url);
    expect(await response.text()).toBe('{"ok":true}');
    expect(response.headers.get('content-type')).toBe('application/json');
    expect(flushes()).toBe(1);
  });

  it('streams a body larger than the socket buffer to its end, waiting for drain', async () => {
    const chunk = new Uint8Array(64 * 1024).fill(97);
    const { url } = await serve(() => {
      let sent = 0;
      return new Response(
        new ReadableStream<Uint8Array>({
          pull(controller) {
            if (sent++ < 32) controller.enqueue(chunk);
            else controller.close();
          },
        }),
      );
    });
    const body = new Uint8Array(await (await fetch(url)).arrayBuffer());
    expect(body.byteLength).toBe(32 * 64 * 1024);
    expect(body.every((byte) => byte === 97)).toBe(true);
  });

  it('does not hold a stream’s chunk back waiting for the next one (SSE)', async () => {
    let release!: () => void;
    const later = new Promise<void>((resolve) => (release = resolve));
    const { url } = await serve(
      () =>
        new Response(
          new ReadableStream<Uint8Array>({
            async start(controller) {
              controller.enqueue(new TextEncoder().encode('data: first\n\n'));
              await later; // the second event is sent only after the client has read the first
              controller.enqueue(new TextEncoder().encode('data: second\n\n'));
              controller.close();
            },
          }),
          { headers: { 'content-type': 'text/event-stream' } },
        ),
    );
    const response = await fetch(url);
    const reader = response.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toBe('data: first\n\n');
    release();
    let rest = '';
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) rest += new TextDecoder().decode(chunk.value);
    expect(rest).toBe('data: second\n\n');
  });

  // What the socket had flushed when the event loop reached its check phase (setImmediate) after the first chunk
  // was handed over: a message stream's chunk is written before then, other bodies wait for the end of the turn.
  async function flushedBeforeTurnEnds(contentType: string): Promise<{ flushed: number; body: string }> {
    let atTurnEnd = -1;
    let count = () => 0;
    const served = await serve(
      () =>
        new Response(
          new ReadableStream<Uint8Array>({
            start(controller) {
              controller.enqueue(new TextEncoder().encode('data: first\n\n'));
              // Scheduled before writeResponse reads the chunk, so it runs before any setImmediate of its own.
              setImmediate(() => {
                atTurnEnd = count();
                controller.close();
              });
            },
          }),
          { headers: { 'content-type': contentType } },
        ),
    );
    count = served.flushes;
    const body = await (await fetch(served.url)).text();
    // Each call starts a server of its own: close it here, afterEach only sees the last.
    server?.closeAllConnections();
    server?.close();
    server = undefined;
    return { flushed: atTurnEnd, body };
  }

  it('writes a message stream’s chunk (SSE, NDJSON) as soon as it is handed over, not at the end of the turn', async () => {
    for (const type of ['text/event-stream', 'text/event-stream; charset=utf-8', 'application/x-ndjson', 'Application/JSONL']) {
      expect(await flushedBeforeTurnEnds(type)).toEqual({ flushed: 1, body: 'data: first\n\n' });
    }
    // Any other body still waits, so a small one leaves with its end in one write.
    expect(await flushedBeforeTurnEnds('application/json')).toEqual({ flushed: 0, body: 'data: first\n\n' });
  });

  it('a client gone before the answer is written: the body is cancelled at once (its upstream let go, the call recorded)', async () => {
    let cancelled = false;
    const body = new ReadableStream<Uint8Array>({
      pull: () => new Promise(() => {}), // an upstream that has more to send, some day
      cancel: () => void (cancelled = true),
    });
    const written = new Promise<void>((resolve) => {
      server = createServer((req, res) => {
        // The client leaves while the core still prepares the answer (a compressed body's read-ahead, say).
        res.once('close', () => resolve(writeResponse(new Response(body), res)));
        req.socket.destroy();
      });
    });
    server!.listen(0, '127.0.0.1');
    await once(server!, 'listening');
    await fetch(`http://127.0.0.1:${(server!.address() as AddressInfo).port}/`).catch(() => null);
    await written; // before the fix: never, the body waiting for a read that nothing would make
    expect(cancelled).toBe(true);
  });

  it('writes each Set-Cookie as its own header line and a bodiless response at once', async () => {
    const headers = new Headers();
    headers.append('set-cookie', 'a=1; Path=/');
    headers.append('set-cookie', 'b=2; Path=/');
    const { url } = await serve(() => new Response(null, { status: 204, headers }));
    const response = await fetch(url);
    expect(response.status).toBe(204);
    expect(response.headers.getSetCookie()).toEqual(['a=1; Path=/', 'b=2; Path=/']);
  });
});
