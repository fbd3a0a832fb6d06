import { once } from 'node:events';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, get, request, type IncomingMessage, type Server } from 'node:http';
import { text } from 'node:stream/consumers';
import { connect, type AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NextExitedError, startNextProcess, type NextProcess } from '../../lib/node/next-process';
import { rawRequest } from '../fixtures/raw-http';

/**
 * `npm start` runs Next.js in a child process and forwards everything outside /api/proxy to it over a private Unix
 * socket (lib/node/next-process.ts). Here the child is tests/fixtures/next-child.mjs, a real process with the
 * same contract that shows what it received, so the forwarding can be checked header by header; real Next
 * behind the real fast lane is tests/integration/fast-lane.test.ts.
 */
const CHILD = join(process.cwd(), 'tests', 'fixtures', 'next-child.mjs');

let next: NextProcess;
let front: Server;
let port: number;

interface Seen {
  method: string;
  url: string;
  headers: Record<string, string>;
  remoteAddress: string | null;
  body: string;
  pid: number;
}

beforeAll(async () => {
  next = await startNextProcess({ entry: CHILD, port: 3000, hostname: undefined });
  front = createServer((req, res) => next.web(req, res));
  front.on('upgrade', (req, socket, head) => next.upgrade(req, socket, head));
  front.listen(0, '127.0.0.1');
  await once(front, 'listening');
  port = (front.address() as AddressInfo).port;
});

afterAll(async () => {
  front?.close();
  await next?.stop();
});

describe('requests outside /api/proxy reach Next as sent', () => {
  it('method, path, query and Host unchanged; X-Forwarded-For set to the client when absent, kept when sent', async () => {
    const response = await rawRequest(port, 'GET', '/page/a%20b?x=1&y=%2F', { host: 'app.example.com' });
    expect(response.status).toBe(200);
    const seen = JSON.parse(response.body) as Seen;
    expect(seen).toMatchObject({ method: 'GET', url: '/page/a%20b?x=1&y=%2F', remoteAddress: null });
    expect(seen.headers.host).toBe('app.example.com');
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');

    const sent = JSON.parse((await rawRequest(port, 'GET', '/', { 'x-forwarded-for': '203.0.113.9' })).body) as Seen;
    expect(sent.headers['x-forwarded-for']).toBe('203.0.113.9');
  });

  it('a request body arrives whole', async () => {
    const body = 'x'.repeat(3 * 1024 * 1024);
    const seen = JSON.parse((await rawRequest(port, 'POST', '/api/auth/callback/credentials', { 'content-type': 'text/plain' }, body)).body) as Seen;
    expect(seen.method).toBe('POST');
    expect(seen.body.length).toBe(body.length);
  });

  it.each(['DELETE', 'OPTIONS'])('a %s with a chunked body keeps it: its bytes never become a request of their own on the way to Next', async (method) => {
    const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
    // Sent chunked (no Content-Length), as node:http sends a body it was not told the length of.
    const sent = request({ host: '127.0.0.1', port, method, path: '/page', headers: { 'transfer-encoding': 'chunked' } });
    sent.end(smuggled);
    const [answer] = (await once(sent, 'response')) as [IncomingMessage];
    const seen = JSON.parse(await text(answer)) as Seen;
    expect(seen).toMatchObject({ method, url: '/page', body: smuggled });
    // The next request on Next's kept-alive connection is the next client's, not the smuggled one.
    const after = JSON.parse((await rawRequest(port, 'GET', '/after', {})).body) as Seen;
    expect(after.url).toBe('/after');
  });

  it("the answer keeps every Set-Cookie; Next's connection headers are dropped and this server's own go out", async () => {
    const response = await rawRequest(port, 'GET', '/', {});
    expect(response.headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2; Path=/']);
    expect(response.headers['x-hop']).toBeUndefined();
    expect(response.headers['keep-alive']).toBe('timeout=5');
    expect(response.headers.connection).toBe('keep-alive');
  });

  it('the answer is streamed: the first chunk arrives before Next has written the second', async () => {
    const response = await new Promise<import('node:http').IncomingMessage>((resolve) => get({ host: '127.0.0.1', port, path: '/stream' }, resolve));
    const [first] = (await once(response, 'data')) as [Buffer];
    expect(first.toString('utf8')).toBe('first\n');
    const rest: Buffer[] = [];
    for await (const chunk of response) rest.push(chunk as Buffer);
    expect(Buffer.concat(rest).toString('utf8')).toBe('second\n');
  });

  it('an upgrade Next leaves unanswered is let go after 10 s, the client gone or not: no socket kept here', async () => {
    const openInNext = async () => (JSON.parse((await rawRequest(port, 'GET', '/silent-upgrades', {})).body) as { open: number }).open;
    const clients = await Promise.all(
      Array.from({ length: 5 }, async () => {
        const socket = connect(port, '127.0.0.1');
        await once(socket, 'connect');
        socket.write('GET /silent HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
        return socket;
      }),
    );
    await expect.poll(openInNext).toBe(5);
    // Two hang up (their end is not read while the handshake waits), three stay: all are let go at the deadline.
    // (Next's own side is closed by next-server.ts, tested with real Next in fast-lane.test.ts; this stand-in
    // leaves it to us.)
    for (const socket of clients.slice(0, 2)) socket.end();
    await Promise.all(clients.map((socket) => once(socket, 'close')));
    await expect.poll(() => new Promise<number>((resolve) => front.getConnections((_error, count) => resolve(count)))).toBe(0);
  }, 30_000);

  it('a handshake with a body is refused (400): it never reaches Next, whose connection would wait for the bytes', async () => {
    for (const framing of ['Content-Length: 5', 'Transfer-Encoding: chunked']) {
      const socket = connect(port, '127.0.0.1');
      await once(socket, 'connect');
      socket.write(`GET /_next/socket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n${framing}\r\n\r\n`);
      let received = '';
      socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
      await once(socket, 'close');
      expect(received, framing).toMatch(/^HTTP\/1\.1 400 /);
    }
  });

  it('a WebSocket upgrade is handed to Next, with X-Forwarded-For, and the socket piped both ways', async () => {
    const socket = connect(port, '127.0.0.1');
    await once(socket, 'connect');
    socket.write('GET /_next/socket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
    let received = '';
    socket.on('data', (chunk: Buffer) => (received += chunk.toString('utf8')));
    await until(() => received.includes('upgraded'));
    expect(received).toMatch(/^HTTP\/1\.1 101 /);
    expect(received).toContain('upgraded /_next/socket for 127.0.0.1\n');
    socket.write('ping\n');
    await until(() => received.endsWith('ping\n'));
    socket.destroy();
  });
});

describe('the Next process', () => {
  it("answers with its metrics over the IPC channel (merged into the fast lane's /api/metrics)", async () => {
    const [first, second] = await Promise.all([next.metrics(), next.metrics()]);
    expect(first).toEqual([expect.objectContaining({ name: 'keyward_child_total', values: [{ value: 7, labels: {} }] })]);
    expect(second).toEqual(first);
  });

  it('exits when told to stop; a request after that gets 502 and no detail', async () => {
    const own = await startNextProcess({ entry: CHILD, port: 3000, hostname: undefined });
    const server = createServer((req, res) => own.web(req, res)).listen(0, '127.0.0.1');
    await once(server, 'listening');
    const ownPort = (server.address() as AddressInfo).port;
    const seen = JSON.parse((await rawRequest(ownPort, 'GET', '/', {})).body) as Seen;
    expect(() => process.kill(seen.pid, 0)).not.toThrow();

    await own.stop();
    expect(await own.exited).toBe(0);
    expect(() => process.kill(seen.pid, 0)).toThrow();
    await expect(own.metrics()).rejects.toThrow();
    const after = await rawRequest(ownPort, 'GET', '/', {});
    expect(after.status).toBe(502);
    expect(after.body).toBe('Bad gateway: the Next.js process did not answer.\n');
    server.close();
  });

  it('a Next that exits before it is ready rejects with its exit code', async () => {
    const previous = process.env.NEXT_CHILD_MODE;
    process.env.NEXT_CHILD_MODE = 'exit';
    try {
      const error = await startNextProcess({ entry: CHILD, port: 3000, hostname: undefined }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(NextExitedError);
      expect((error as NextExitedError).code).toBe(3);
    } finally {
      if (previous === undefined) delete process.env.NEXT_CHILD_MODE;
      else process.env.NEXT_CHILD_MODE = previous;
    }
  });

  it('its socket lives in a folder only this user can enter', async () => {
    const seen = JSON.parse((await rawRequest(port, 'GET', '/', {})).body) as Seen;
    const socketPath = socketOf(seen.pid);
    expect(existsSync(socketPath)).toBe(true);
    expect(statSync(dirname(socketPath)).mode & 0o777).toBe(0o700);
  });
});

/** The child's KEYWARD_NEXT_SOCKET, read from its environment (Linux /proc). */
function socketOf(pid: number): string {
  const entry = readFileSync(`/proc/${pid}/environ`, 'utf8')
    .split('\0')
    .find((line) => line.startsWith('KEYWARD_NEXT_SOCKET='));
  return entry!.slice('KEYWARD_NEXT_SOCKET='.length);
}

async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !done(); i++) await new Promise((resolve) => setTimeout(resolve, 20));
  expect(done()).toBe(true);
}
