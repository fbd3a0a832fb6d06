import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { defineUpstream } from '../../lib/core/config/load';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { OpenSockets } from '../../lib/core/ws/sockets';
import { WsTickets } from '../../lib/core/ws/tickets';
import { createUpgradeListener } from '../../lib/node/websocket';
import { MemoryStore } from '../../lib/store/memory';
import { capturingLogger, findLeak } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';

/**
 * A WebSocket upgrade counts as forwarded once its handshake, key and all, was sent upstream (README "WebSockets"):
 * an upstream that refuses the handshake (403) has seen the key, and the upgrade is charged to the quota; one that
 * could not be reached (connection refused) saw nothing, and what was reserved is given back. Through the fast
 * lane's upgrade listener on a real node:http server, a real upstream that answers every handshake 403, and a
 * port nothing listens on; the quota is one upgrade a day per user.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const secrets = testSessionSecrets();
const key = randomSecret('rt');
const logs = capturingLogger();

let upstream: Server;
let keyward: Server;
let runtime: Runtime;
let sockets: OpenSockets;
const handshakes: Array<string | undefined> = [];

async function listening(server: Server): Promise<number> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

beforeAll(async () => {
  upstream = createServer();
  upstream.on('upgrade', (req, socket) => {
    handshakes.push(req.headers['x-api-key'] as string | undefined);
    socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
  });
  const port = await listening(upstream);
  const closed = createServer();
  const nobody = await listening(closed);
  closed.close();
  const auth = { type: 'header', name: 'x-api-key', secret: { env: 'RT_KEY' } } as const;
  const quotas = [{ by: 'user', requests: 1, period: 'day' }] as const;
  const routes = [{ method: 'GET', path: '/realtime', websocket: true, roles: ['user'] }] as const;
  runtime = createRuntime({
    env: { ...secrets, RT_KEY: key, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN },
    upstreams: [
      defineUpstream('refusing', {
        baseUrl: `http://127.0.0.1:${port}/v1/`,
        auth,
        quotas: [...quotas],
        routes: [...routes],
      }),
      defineUpstream('gone', {
        baseUrl: `http://127.0.0.1:${nobody}/v1/`,
        auth,
        quotas: [...quotas],
        routes: [...routes],
      }),
    ],
    store: new MemoryStore(),
    logger: logs.logger,
  });
  sockets = new OpenSockets(runtime);
  keyward = createServer((_req, res) => res.writeHead(404).end());
  const origin = `http://127.0.0.1:${await listening(keyward)}`;
  keyward.on(
    'upgrade',
    createUpgradeListener({ deps: runtime, origin: () => origin, tickets: new WsTickets(runtime.store), sockets }),
  );
});

afterAll(async () => {
  sockets.closeAll();
  keyward.close();
  upstream.close();
  expect(findLeak(logs.lines.join('\n'), [key]), 'a key in a log line').toBeNull();
});

/** An upgrade as a browser on the app makes it; the status and error code it was refused with. */
async function upgrade(upstreamId: string, cookie: string): Promise<{ status: number; code: string }> {
  const port = (keyward.address() as AddressInfo).port;
  const client = new WebSocket(`ws://127.0.0.1:${port}/api/proxy/${upstreamId}/realtime`, {
    headers: { cookie, origin: APP_ORIGIN },
  });
  client.on('error', () => {});
  const [, response] = (await once(client, 'unexpected-response')) as [unknown, import('node:http').IncomingMessage];
  const chunks: Buffer[] = [];
  for await (const chunk of response) chunks.push(chunk as Buffer);
  const body = Buffer.concat(chunks).toString();
  expect(findLeak(body, [key])).toBeNull();
  return { status: response.statusCode ?? 0, code: (JSON.parse(body) as { error: { code: string } }).error.code };
}

describe('a WebSocket upgrade whose upstream handshake fails', () => {
  it('is charged when the upstream received the handshake and refused it', async () => {
    const cookie = await sessionCookie(secrets.AUTH_SECRET, { sub: 'local:alice', roles: ['user'] });
    expect(await upgrade('refusing', cookie)).toEqual({ status: 502, code: 'upstream_bad_response' });
    expect(handshakes).toEqual([key]);
    // The day's one upgrade was used: the next is refused before any handshake.
    expect(await upgrade('refusing', cookie)).toEqual({ status: 429, code: 'quota_exceeded' });
    expect(handshakes).toHaveLength(1);
  });

  it('gives back what it reserved when the upstream could not be reached', async () => {
    const cookie = await sessionCookie(secrets.AUTH_SECRET, { sub: 'local:bob', roles: ['user'] });
    expect(await upgrade('gone', cookie)).toEqual({ status: 502, code: 'upstream_unreachable' });
    expect(await upgrade('gone', cookie)).toEqual({ status: 502, code: 'upstream_unreachable' });
  });
});
