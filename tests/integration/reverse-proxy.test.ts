import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { WsTickets } from '../../lib/core/ws/tickets';
import { createFastLane } from '../../lib/node/fast-lane';
import { createUpgradeListener } from '../../lib/node/websocket';
import { OpenSockets } from '../../lib/core/ws/sockets';
import { freePort } from '../fixtures/app-server';
import { capturingLogger } from '../fixtures/log-capture';
import { rawRequest, readRaw, type RawResponse } from '../fixtures/raw-http';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { passwordVersionIn, writeUsersFile } from '../fixtures/users';

/**
 * Keyward in production behind a reverse proxy that terminates TLS, with AUTH_TRUST_HOST=true: the fast lane (as
 * `npm start` serves /api/proxy) on a real node:http server, called with exactly the headers a proxy forwards.
 * A proxy that forgets X-Forwarded-Proto, or the Host, makes every state-changing call fail with 403
 * `csrf_failed`; the log must say why, without letting a client fill it. Then README's nginx snippet, run in
 * front of it with a real nginx (skipped, saying so, where none is installed).
 */

const PUBLIC_HOST = 'app.example.test';
const PUBLIC_ORIGIN = `https://${PUBLIC_HOST}`;

let upstream: TestUpstream;
let runtime: Runtime;
let server: Server;
let port: number;
let cookie: string;
const { logger, lines: logs } = capturingLogger();

beforeAll(async () => {
  upstream = await startUpstream();
  const users = await writeUsersFile([{ username: 'alice', password: randomSecret('pw'), roles: ['user'] }]);
  const env = {
    ...testSessionSecrets(),
    NODE_ENV: 'production',
    AUTH_TRUST_HOST: 'true',
    KEYWARD_USERS_FILE: users,
    KEYWARD_STORE: 'memory',
    ECHO_KEY: randomSecret('echo'),
  };
  runtime = createRuntime({
    env,
    upstreams: [
      defineUpstream('echo', {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
        routes: [
          { method: 'POST', path: '/items' },
          { method: 'GET', path: '/events' },
          { method: 'GET', path: '/socket', websocket: true },
        ],
      }),
    ],
    logger,
  });
  cookie = await sessionCookie(env.AUTH_SECRET, {
    sub: 'local:alice',
    passwordVersion: passwordVersionIn(users, 'alice'),
  });
  port = await freePort();
  // As server.ts gives the core its requests: on http://localhost:<port>, whatever the Host.
  const origin = () => `http://localhost:${port}`;
  server = createServer(
    createFastLane({
      deps: runtime,
      origin,
      next: (_req, res) => {
        res.writeHead(404).end();
      },
    }),
  );
  server.on(
    'upgrade',
    createUpgradeListener({
      deps: runtime,
      origin,
      tickets: new WsTickets(runtime.store),
      sockets: new OpenSockets(runtime),
    }),
  );
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
});

afterAll(async () => {
  server?.closeAllConnections();
  server?.close();
  await upstream?.close();
  const dispatcher = runtime?.dispatcher as { close?: () => Promise<void> } | undefined;
  await dispatcher?.close?.().catch(() => {});
});

/** A signed-in page's `fetch('/api/proxy/echo/items', { method: 'POST' })`, as the proxy passes it on. */
function post(headers: Record<string, string>): Promise<RawResponse> {
  return rawRequest(
    port,
    'POST',
    '/api/proxy/echo/items',
    {
      cookie,
      'x-keyward-csrf': '1',
      origin: PUBLIC_ORIGIN,
      'sec-fetch-site': 'same-origin',
      'content-type': 'application/json',
      ...headers,
    },
    '{}',
  );
}

interface Line {
  level: number;
  msg: string;
  origin?: string;
  publicOrigin?: string;
}
const warned = (): Line[] => logs.map((line) => JSON.parse(line) as Line).filter((line) => line.level === 40);
const refusals = () => warned().filter((line) => line.msg.startsWith('CSRF check refused Origin'));
const plainHttp = () => warned().filter((line) => line.msg.includes('(plain HTTP) under AUTH_TRUST_HOST'));
/** The public-origin warnings (the echo upstream's echoed key makes the detector warn too). */
const warnings = () => [...refusals(), ...plainHttp()];

describe('AUTH_TRUST_HOST behind a proxy that sends Host but not X-Forwarded-Proto', () => {
  it('refuses the call (403 csrf_failed) and warns once, naming both origins and the header to set', async () => {
    for (let i = 0; i < 3; i++) {
      const refused = await post({ host: PUBLIC_HOST });
      expect(refused.status).toBe(403);
      expect(JSON.parse(refused.body).error.code).toBe('csrf_failed');
    }
    expect(refusals()).toHaveLength(1);
    const [line] = refusals();
    expect(line).toMatchObject({ origin: PUBLIC_ORIGIN, publicOrigin: `http://${PUBLIC_HOST}` });
    expect(line!.msg).toContain('X-Forwarded-Proto');
    // In production, the plain-HTTP origin on a public name is worth its own warning, once.
    expect(plainHttp()).toHaveLength(1);
    expect(plainHttp()[0]).toMatchObject({ publicOrigin: `http://${PUBLIC_HOST}` });
  });

  it('a WebSocket handshake through the same proxy is refused for the same reason, and says so', async () => {
    // Another port in Host: another pair of origins, so not the warning above again.
    const host = `${PUBLIC_HOST}:8443`;
    const refused = await rawRequest(port, 'GET', '/api/proxy/echo/socket', {
      cookie,
      host,
      origin: `https://${host}`,
      connection: 'Upgrade',
      upgrade: 'websocket',
      'sec-websocket-version': '13',
      'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
    });
    expect(refused.status).toBe(403);
    expect(refusals().at(-1)).toMatchObject({ origin: `https://${host}`, publicOrigin: `http://${host}` });
  });

  it('with X-Forwarded-Proto: https the call goes through, and nothing more is logged', async () => {
    const before = warnings().length;
    const passed = await post({ host: PUBLIC_HOST, 'x-forwarded-proto': 'https' });
    expect(passed.status).toBe(200);
    expect(warnings()).toHaveLength(before);
  });

  it("a proxy passing its own Host (nginx's default, the proxy_pass address): the warning says to pass Host", async () => {
    const refused = await post({ host: `127.0.0.1:${port}` });
    expect(refused.status).toBe(403);
    const line = refusals().at(-1)!;
    expect(line).toMatchObject({ origin: PUBLIC_ORIGIN, publicOrigin: `http://127.0.0.1:${port}` });
    expect(line.msg).toContain('pass the Host header');
  });

  it("another site's Origin is what the check is for: refused without a warning", async () => {
    const before = warnings().length;
    const refused = await post({ host: PUBLIC_HOST, 'x-forwarded-proto': 'https', origin: 'https://evil.example' });
    expect(refused.status).toBe(403);
    expect(warnings()).toHaveLength(before);
  });

  it('a client choosing Host and Origin cannot fill the log: at most 20 warnings in 10 minutes, each line short', async () => {
    for (let i = 0; i < 60; i++) {
      const host = `h${i}.${'x'.repeat(i === 0 ? 3000 : 10)}.test`;
      expect((await post({ host, origin: `https://${host}` })).status).toBe(403);
    }
    expect(warnings().length).toBeLessThanOrEqual(20);
    expect(Math.max(...logs.map((line) => line.length))).toBeLessThan(2000);
  });
});

/**
 * README "Behind a reverse proxy": its nginx `location` block, verbatim, in a server on loopback over TLS (a
 * throw-away self-signed certificate) in front of the fast lane above.
 */
const nginx = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/bin/nginx'].find((path) => existsSync(path));
const openssl = ['/usr/bin/openssl', '/usr/local/bin/openssl'].find((path) => existsSync(path));
if (!nginx || !openssl)
  console.warn('reverse-proxy.test.ts: no nginx (or openssl) on this machine: the README nginx snippet is not run');

describe.skipIf(!nginx || !openssl)("README's nginx snippet in front of Keyward (AUTH_TRUST_HOST)", () => {
  let child: ChildProcess;
  let tlsPort: number;
  /** The same server without the snippet's `proxy_buffering off` line: nginx's default buffering. */
  let bufferingPort: number;

  beforeAll(async () => {
    const readme = readFileSync(join(__dirname, '../../README.md'), 'utf8');
    const snippet = /\*\*Behind a reverse proxy\.\*\*[\s\S]*?```nginx\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(snippet, 'README has the nginx snippet').toBeDefined();
    const map = /^map .*$/m.exec(snippet!)![0];
    const location = /^ {2}location \/ \{[\s\S]*?^ {2}\}/m
      .exec(snippet!)![0]
      .replace('http://127.0.0.1:3000', `http://127.0.0.1:${port}`);
    const buffering = location.replace(/^ *proxy_buffering off;.*\n/m, '');
    expect(buffering, "the snippet's location turns buffering off").not.toBe(location);
    const dir = mkdtempSync(join(tmpdir(), 'keyward-nginx-'));
    mkdirSync(join(dir, 'logs'));
    execFileSync(
      openssl!,
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '1',
        '-subj',
        `/CN=${PUBLIC_HOST}`,
        '-keyout',
        join(dir, 'tls.key'),
        '-out',
        join(dir, 'tls.crt'),
      ],
      { stdio: 'ignore' },
    );
    tlsPort = await freePort();
    bufferingPort = await freePort();
    const server = (listen: number, block: string) => `  server {
    listen 127.0.0.1:${listen} ssl;
    server_name ${PUBLIC_HOST};
    ssl_certificate ${join(dir, 'tls.crt')};
    ssl_certificate_key ${join(dir, 'tls.key')};
${block}
  }`;
    const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']
      .map((name) => `${name}_temp_path ${join(dir, name)};`)
      .join('\n  ');
    writeFileSync(
      join(dir, 'nginx.conf'),
      `daemon off;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'logs/error.log')};
events { worker_connections 64; }
http {
  access_log off;
  ${temp}
  ${map}
${server(tlsPort, location)}
${server(bufferingPort, buffering)}
}
`,
    );
    child = spawn(nginx!, ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    // Listening once a TLS handshake completes (nginx answers 404 or Keyward's own answer).
    for (;;) {
      if (child.exitCode !== null) throw new Error(`nginx exited: ${stderr}`);
      const answered = await viaNginx('GET', '/', {}).then(
        () => true,
        () => false,
      );
      if (answered) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }, 30_000);

  afterAll(async () => {
    if (child && child.exitCode === null) {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  });

  /** Through nginx on https://app.example.test:<tlsPort>, as the browser calls it. */
  function viaNginx(
    method: string,
    path: string,
    headers: Record<string, string>,
    body?: string,
    onResponse?: (res: IncomingMessage) => void,
    via = tlsPort,
  ): Promise<RawResponse> {
    return new Promise((resolve, reject) => {
      const req = httpsRequest(
        {
          host: '127.0.0.1',
          port: via,
          servername: PUBLIC_HOST,
          rejectUnauthorized: false,
          method,
          path,
          headers: { host: `${PUBLIC_HOST}:${via}`, ...headers },
        },
        (res) => {
          onResponse?.(res);
          readRaw(res).then(resolve, reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  it('a state-changing call from the page passes the CSRF check (X-Forwarded-Proto and the port reach Keyward)', async () => {
    const origin = `${PUBLIC_ORIGIN}:${tlsPort}`;
    const before = refusals().length;
    const answer = await viaNginx(
      'POST',
      '/api/proxy/echo/items',
      { cookie, 'x-keyward-csrf': '1', origin, 'sec-fetch-site': 'same-origin', 'content-type': 'application/json' },
      '{}',
    );
    expect(answer.status).toBe(200);
    const seen = upstream.requests.at(-1)!;
    expect(seen.headers['x-forwarded-proto']).toBeUndefined();
    expect(refusals()).toHaveLength(before);
  });

  /**
   * An SSE call through nginx on `via`, its upstream holding the stream open until the browser has the first event:
   * whether that event came before the stream ended. A buffering nginx holds it back, so after 5 s the stream ends
   * anyway and the test fails on what it saw, rather than hang.
   */
  async function firstEventStreamed(via: number): Promise<boolean> {
    let release!: (firstBeforeEnd: boolean) => void;
    const released = new Promise<boolean>((resolve) => (release = resolve));
    upstream.handle(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: first\n\n');
      const fallback = setTimeout(() => release(false), 5_000);
      await released;
      clearTimeout(fallback);
      res.end('data: last\n\n');
    });
    try {
      const answer = await viaNginx(
        'GET',
        '/api/proxy/echo/events',
        { cookie, 'x-keyward-csrf': '1', 'sec-fetch-site': 'same-origin' },
        undefined,
        (res) => {
          res.once('data', () => release(true));
        },
        via,
      );
      expect(answer.status).toBe(200);
      expect(answer.body).toBe('data: first\n\ndata: last\n\n');
      return await released;
    } finally {
      upstream.reset();
    }
  }

  it('SSE: the first event reaches the browser while the upstream still holds the stream open (buffering off)', async () => {
    expect(await firstEventStreamed(tlsPort), 'the first event came before the stream ended').toBe(true);
  });

  it("SSE behind nginx's default buffering (proxy_buffering off left out): X-Accel-Buffering: no still streams it", async () => {
    expect(await firstEventStreamed(bufferingPort), 'the first event came before the stream ended').toBe(true);
  });

  it('a WebSocket handshake reaches Keyward as an upgrade, and its Origin passes the check', async () => {
    let upgrades = 0;
    const count = () => (upgrades += 1);
    server.prependListener('upgrade', count);
    try {
      const answer = await viaNginx('GET', '/api/proxy/echo/socket', {
        cookie,
        origin: `${PUBLIC_ORIGIN}:${tlsPort}`,
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
      });
      expect(upgrades).toBe(1);
      // The test upstream speaks no WebSocket: Keyward got past the session and Origin checks, and answers
      // that the upstream's handshake failed, not 403.
      expect(answer.status).not.toBe(403);
    } finally {
      server.removeListener('upgrade', count);
    }
  });
});
