import { once } from 'node:events';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { readHeaders, toRequest } from '@/lib/node/request';

/** lib/node/request.ts's body stream over a real node:http server and a real client on loopback. */
let server: Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  server?.close();
  server = undefined;
});

/** Starts a server that hands each request to `onRequest`, and returns its URL. */
async function serve(onRequest: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  server = createServer(onRequest);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
}

/** POSTs `size` bytes (a repeating pattern) with Content-Length; returns what was sent. */
function post(url: string, size: number): { body: Buffer } {
  const body = Buffer.alloc(size, 'keyward-body-0123456789\n');
  const req = request(url, { method: 'POST', headers: { 'content-length': String(size) } });
  req.on('error', () => {});
  req.end(body);
  return { body };
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  const reader = stream.getReader();
  for (let read = await reader.read(); !read.done; read = await reader.read()) chunks.push(read.value);
  return Buffer.concat(chunks);
}

/** A promise and its resolvers (Promise.withResolvers is not in this project's ES2023 lib). */
function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (error: unknown) => void } {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((ok, fail) => ((resolve = ok), (reject = fail)));
  return { promise, resolve, reject };
}

describe('toRequest body', () => {
  it('reads nothing from the socket until the core pulls, then hands on the body byte for byte', async () => {
    const got = deferred<{ flowingBefore: boolean | null; bytes: Buffer }>();
    const url = await serve((req) => {
      const { body } = toRequest(req, 'http://localhost/x', new AbortController().signal);
      // Readable.toWeb attached a 'data' listener here (flowing, reading ahead); this stream waits for a pull.
      const flowingBefore = req.readableFlowing;
      readAll(body!).then((bytes) => got.resolve({ flowingBefore, bytes }), got.reject);
    });
    const { body } = post(url, 3 * 1024 * 1024 + 17);
    const { flowingBefore, bytes } = await got.promise;
    expect(flowingBefore).toBeNull();
    expect(bytes.equals(body)).toBe(true);
  });

  it('cancelling the body (a byte cap, the core giving up) destroys the request, as Readable.toWeb did', async () => {
    const cancelled = deferred<IncomingMessage>();
    const url = await serve((req) => {
      const { body } = toRequest(req, 'http://localhost/x', new AbortController().signal);
      const reader = body!.getReader();
      void reader.read().then(() => reader.cancel()).then(() => cancelled.resolve(req));
    });
    post(url, 8 * 1024 * 1024);
    expect((await cancelled.promise).destroyed).toBe(true);
  });

  it('has no body for GET or without content', async () => {
    const bodies = deferred<(ReadableStream | null)[]>();
    const found: (ReadableStream | null)[] = [];
    const url = await serve((req, res) => {
      found.push(toRequest(req, 'http://localhost/x', new AbortController().signal).body);
      res.end();
      if (found.length === 2) bodies.resolve(found);
    });
    for (const options of [{ method: 'GET' }, { method: 'POST', headers: { 'content-length': '0' } }]) {
      const [res] = (await once(request(url, options).end(), 'response')) as [IncomingMessage];
      res.resume();
    }
    expect(await bodies.promise).toEqual([null, null]);
  });
});

describe('readHeaders: repeated request headers, as Node (and so Next behind the route handlers) reads them', () => {
  it('keeps the first of a name Node keeps once (Content-Type, Authorization …), joins cookies with "; " and others with ", "', async () => {
    const seen = deferred<Headers>();
    const url = await serve((req, res) => {
      seen.resolve(readHeaders(req));
      res.end();
    });
    const { port } = new URL(url);
    const client = connect(Number(port), '127.0.0.1');
    client.on('error', () => {});
    client.end(
      [
        'GET / HTTP/1.1',
        `Host: 127.0.0.1:${port}`,
        'Content-Type: application/json',
        'Content-Type: text/html',
        'Authorization: Bearer first',
        'Authorization: Bearer second',
        'User-Agent: one',
        'user-agent: two',
        'Cookie: a=1',
        'Cookie: b=2',
        'Accept: text/plain',
        'Accept: application/json',
        'Connection: close',
        '',
        '',
      ].join('\r\n'),
    );
    const headers = await seen.promise;
    expect(headers.get('content-type')).toBe('application/json');
    expect(headers.get('authorization')).toBe('Bearer first');
    expect(headers.get('user-agent')).toBe('one');
    expect(headers.get('cookie')).toBe('a=1; b=2');
    expect(headers.get('accept')).toBe('text/plain, application/json');
  });
});
