import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { defineUpstream } from '../../lib/core/config/load';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import type { Session } from '../../lib/core/session/session';
import { OpenSockets } from '../../lib/core/ws/sockets';
import { WsTickets } from '../../lib/core/ws/tickets';
import { createUpgradeListener } from '../../lib/node/websocket';
import { MemoryStore } from '../../lib/store/memory';
import { capturingLogger, findLeak } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';

/**
 * The fast lane's upgrade listener on a real node:http server, against an upstream that answers its 101 a byte at
 * a time and never finishes (a stalled or broken upstream, a middlebox); and tickets shown on a path that is
 * `/api/proxy/…` only once normalised.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const TIMEOUT_MS = 300;
const secrets = testSessionSecrets();
const key = randomSecret('rt');
const logs = capturingLogger();

let trickling: NetServer;
/** The upstream's connections still open. */
const upstreamSockets = new Set<Socket>();
let keyward: Server;
let runtime: Runtime;
let sockets: OpenSockets;
let tickets: WsTickets;

async function listening(server: Server | NetServer): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

beforeAll(async () => {
  // Sends its answer one byte every TIMEOUT_MS / 3: the connection is never idle for TIMEOUT_MS, the 101 never ends.
  trickling = createNetServer((socket) => {
    upstreamSockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => upstreamSockets.delete(socket));
    const answer = `HTTP/1.1 101 Switching Protocols\r\nx-filler: ${'a'.repeat(10_000)}`;
    let sent = 0;
    const drip = setInterval(() => {
      if (socket.destroyed || sent >= answer.length) clearInterval(drip);
      else socket.write(answer[sent++]!);
    }, TIMEOUT_MS / 3);
    socket.resume();
  });
  const port = await listening(trickling);
  runtime = createRuntime({
    env: { ...secrets, RT_KEY: key, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN },
    upstreams: [
      defineUpstream('stalling', {
        baseUrl: `http://127.0.0.1:${port}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'RT_KEY' } },
        timeoutMs: TIMEOUT_MS,
        routes: [{ method: 'GET', path: '/realtime', websocket: true, roles: ['user'] }],
      }),
    ],
    store: new MemoryStore(),
    logger: logs.logger,
  });
  sockets = new OpenSockets(runtime);
  tickets = new WsTickets(runtime.store);
  keyward = createServer((_req, res) => res.writeHead(404).end());
  const origin = `http://127.0.0.1:${await listening(keyward)}`;
  keyward.on('upgrade', createUpgradeListener({ deps: runtime, origin: () => origin, tickets, sockets }));
});

afterAll(async () => {
  sockets.closeAll();
  keyward.close();
  for (const socket of upstreamSockets) socket.destroy();
  trickling.close();
  expect(findLeak(logs.lines.join('\n'), [key]), 'a key in a log line').toBeNull();
});

/** The status and error code an upgrade was answered with; 'none' when no answer came within `waitMs`. */
async function upgrade(path: string, headers: Record<string, string>, waitMs: number): Promise<{ status: number; code: string } | 'none'> {
  const port = (keyward.address() as AddressInfo).port;
  const client = new WebSocket(`ws://127.0.0.1:${port}${path}`, { headers });
  client.on('error', () => {});
  const answered = once(client, 'unexpected-response').then(async (args) => {
    const response = args[1] as IncomingMessage;
    const chunks: Buffer[] = [];
    for await (const chunk of response) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString();
    expect(findLeak(body, [key])).toBeNull();
    return { status: response.statusCode ?? 0, code: (JSON.parse(body) as { error: { code: string } }).error.code };
  });
  const none = new Promise<'none'>((resolve) => setTimeout(() => resolve('none'), waitMs).unref());
  const result = await Promise.race([answered, none]);
  client.terminate();
  return result;
}

describe('a WebSocket upgrade whose upstream stalls its handshake', () => {
  it('is answered 504 upstream_timeout once timeoutMs has passed, however the upstream trickles, and its upstream connection is closed', async () => {
    const cookie = await sessionCookie(secrets.AUTH_SECRET, { sub: 'local:alice', roles: ['user'] });
    // Far past timeoutMs: ws's own handshake timeout is an idle timer, which a byte now and then keeps from firing.
    expect(await upgrade('/api/proxy/stalling/realtime', { cookie, origin: APP_ORIGIN }, TIMEOUT_MS * 20)).toEqual({
      status: 504,
      code: 'upstream_timeout',
    });
    await expect.poll(() => upstreamSockets.size).toBe(0);
  });
});

describe('a ticket shown on a path that is /api/proxy/… only once normalised', () => {
  // A bearer client's session, as the ticket endpoint is given it.
  const expiresAt = Date.now() + 3_600_000;
  const session: Session = { userId: 'local:bob', name: 'Bob', roles: ['user'], expiresAt, sessionId: 'sid-stall', authTime: 0, claims: {}, via: 'bearer' };
  const target = { upstream: 'stalling', path: ['realtime'] };

  it.each(['/%61pi/proxy/stalling/realtime', '/x/../api/proxy/stalling/realtime', '/api\\proxy/stalling/realtime'])(
    'is refused 400 and used up all the same (%s)',
    async (path) => {
      const { ticket } = await tickets.issue(session, target);
      const port = (keyward.address() as AddressInfo).port;
      // Raw: a client library would normalise the path before sending it.
      const answer = await new Promise<string>((resolve) => {
        const socket = connect(port, '127.0.0.1');
        let text = '';
        socket.on('data', (chunk) => (text += chunk.toString('latin1')));
        socket.on('error', () => {});
        socket.on('close', () => resolve(text));
        socket.write(
          `GET ${path}?ticket=${ticket} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
            'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
        );
      });
      expect(answer.split('\r\n')[0]).toBe('HTTP/1.1 400 Bad Request');
      expect(await tickets.redeem(ticket, target)).toBeNull();
    },
  );
});
