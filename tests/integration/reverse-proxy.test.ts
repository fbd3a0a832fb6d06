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

/** Through a TLS proxy listening on 127.0.0.1:`via` as https://app.example.test:<via>, as the browser calls it. */
function viaProxy(
  via: number,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string,
  onResponse?: (res: IncomingMessage) => void,
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

/** Until the proxy on `via` answers a TLS request (with its own 404 or Keyward's answer); throws once `exited` says so. */
async function answering(via: number, exited: () => string | null): Promise<void> {
  for (;;) {
    const reason = exited();
    if (reason !== null) throw new Error(reason);
    const answered = await viaProxy(via, 'GET', '/', {}).then(
      () => true,
      () => false,
    );
    if (answered) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A throw-away self-signed certificate for app.example.test in `dir` (tls.crt, tls.key). */
function selfSigned(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'tls.crt');
  const key = join(dir, 'tls.key');
  execFileSync(
    openssl!,
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', `/CN=${PUBLIC_HOST}`, '-keyout', key, '-out', cert],
    { stdio: 'ignore' },
  );
  return { cert, key };
}

/** A page's POST as the browser sends it to the proxy on `via` (its Origin is the proxy's public origin). */
function postVia(via: number, headers: Record<string, string> = {}): Promise<RawResponse> {
  return viaProxy(
    via,
    'POST',
    '/api/proxy/echo/items',
    {
      cookie,
      'x-keyward-csrf': '1',
      origin: `${PUBLIC_ORIGIN}:${via}`,
      'sec-fetch-site': 'same-origin',
      'content-type': 'application/json',
      ...headers,
    },
    '{}',
  );
}

/**
 * A streamed call (`contentType`) through the proxy on `via`, its upstream holding the stream open until the
 * browser has the first part: whether that part came before the stream ended. A buffering proxy holds it back, so
 * after 5 s the stream ends anyway and the test fails on what it saw, rather than hang.
 */
async function firstPartStreamed(via: number, contentType = 'text/event-stream'): Promise<boolean> {
  const [first, last] = contentType === 'text/event-stream' ? ['data: first\n\n', 'data: last\n\n'] : ['{"n":1}\n', '{"n":2}\n'];
  let release!: (firstBeforeEnd: boolean) => void;
  const released = new Promise<boolean>((resolve) => (release = resolve));
  upstream.handle(async (_req, res) => {
    res.writeHead(200, { 'content-type': contentType });
    res.write(first);
    const fallback = setTimeout(() => release(false), 5_000);
    await released;
    clearTimeout(fallback);
    res.end(last);
  });
  try {
    const answer = await viaProxy(
      via,
      'GET',
      '/api/proxy/echo/events',
      { cookie, 'x-keyward-csrf': '1', 'sec-fetch-site': 'same-origin' },
      undefined,
      (res) => {
        res.once('data', () => release(true));
      },
    );
    expect(answer.status).toBe(200);
    expect(answer.body).toBe(first + last);
    return await released;
  } finally {
    upstream.reset();
  }
}

/** A WebSocket handshake through the proxy on `via`: whether it reached Keyward as an upgrade, and its answer. */
async function upgradeVia(via: number): Promise<{ upgrades: number; status: number }> {
  let upgrades = 0;
  const count = () => (upgrades += 1);
  server.prependListener('upgrade', count);
  try {
    const answer = await viaProxy(via, 'GET', '/api/proxy/echo/socket', {
      cookie,
      origin: `${PUBLIC_ORIGIN}:${via}`,
      connection: 'Upgrade',
      upgrade: 'websocket',
      'sec-websocket-version': '13',
      'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
    });
    return { upgrades, status: answer.status };
  } finally {
    server.removeListener('upgrade', count);
  }
}

/** README's fenced block of `language` in "Behind a reverse proxy". */
function readmeSnippet(language: string): string {
  const readme = readFileSync(join(__dirname, '../../README.md'), 'utf8');
  const snippet = new RegExp(`\\*\\*Behind a reverse proxy\\.\\*\\*[\\s\\S]*?\`\`\`${language}\\n([\\s\\S]*?)\`\`\``).exec(readme)?.[1];
  expect(snippet, `README has the ${language} snippet`).toBeDefined();
  return snippet!;
}

/** Reverse proxies the suites below started, stopped when the file's tests are done. */
const proxies: ChildProcess[] = [];
afterAll(async () => {
  for (const child of proxies.filter((running) => running.exitCode === null)) {
    child.kill('SIGTERM');
    await once(child, 'exit');
  }
});

/** Starts a reverse proxy (`name`: its log's name), resolved once it answers TLS on `via`. */
async function startProxy(name: string, command: string, args: string[], via: number, env?: NodeJS.ProcessEnv): Promise<void> {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'], env: env ?? process.env });
  proxies.push(child);
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  await answering(via, () => (child.exitCode === null ? null : `${name} exited: ${stderr.slice(-2000)}`));
}

/**
 * README "Behind a reverse proxy": its nginx `location` block, verbatim, in a server on loopback over TLS (a
 * throw-away self-signed certificate) in front of the fast lane above.
 */
const nginx = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/bin/nginx'].find((path) => existsSync(path));
const openssl = ['/usr/bin/openssl', '/usr/local/bin/openssl'].find((path) => existsSync(path));
if (!nginx || !openssl)
  console.warn('reverse-proxy.test.ts: no nginx (or openssl) on this machine: the README nginx snippet is not run');

describe.skipIf(!nginx || !openssl)("README's nginx snippet in front of Keyward (AUTH_TRUST_HOST)", () => {
  let tlsPort: number;
  /** The same server without the snippet's `proxy_buffering off` line: nginx's default buffering. */
  let bufferingPort: number;

  beforeAll(async () => {
    const snippet = readmeSnippet('nginx');
    const map = /^map .*$/m.exec(snippet)![0];
    const location = /^ {2}location \/ \{[\s\S]*?^ {2}\}/m
      .exec(snippet)![0]
      .replace('http://127.0.0.1:3000', `http://127.0.0.1:${port}`);
    const buffering = location.replace(/^ *proxy_buffering off;.*\n/m, '');
    expect(buffering, "the snippet's location turns buffering off").not.toBe(location);
    const dir = mkdtempSync(join(tmpdir(), 'keyward-nginx-'));
    mkdirSync(join(dir, 'logs'));
    const tls = selfSigned(dir);
    tlsPort = await freePort();
    bufferingPort = await freePort();
    const server = (listen: number, block: string) => `  server {
    listen 127.0.0.1:${listen} ssl;
    server_name ${PUBLIC_HOST};
    ssl_certificate ${tls.cert};
    ssl_certificate_key ${tls.key};
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
    await startProxy('nginx', nginx!, ['-p', dir, '-c', join(dir, 'nginx.conf')], tlsPort);
  }, 30_000);

  it('a state-changing call from the page passes the CSRF check (X-Forwarded-Proto and the port reach Keyward)', async () => {
    const before = refusals().length;
    const answer = await postVia(tlsPort);
    expect(answer.status).toBe(200);
    const seen = upstream.requests.at(-1)!;
    expect(seen.headers['x-forwarded-proto']).toBeUndefined();
    expect(refusals()).toHaveLength(before);
  });

  it('SSE: the first event reaches the browser while the upstream still holds the stream open (buffering off)', async () => {
    expect(await firstPartStreamed(tlsPort), 'the first event came before the stream ended').toBe(true);
  });

  it("SSE behind nginx's default buffering (proxy_buffering off left out): X-Accel-Buffering: no still streams it", async () => {
    expect(await firstPartStreamed(bufferingPort), 'the first event came before the stream ended').toBe(true);
  });

  it('a WebSocket handshake reaches Keyward as an upgrade, and its Origin passes the check', async () => {
    const { upgrades, status } = await upgradeVia(tlsPort);
    expect(upgrades).toBe(1);
    // The test upstream speaks no WebSocket: Keyward got past the session and Origin checks, and answers
    // that the upstream's handshake failed, not 403.
    expect(status).not.toBe(403);
  });
});

/**
 * README "Behind a reverse proxy": its Caddyfile site block, with the site address and the `reverse_proxy`
 * address on loopback, a `tls` line for a throw-away self-signed certificate (a real deployment gets one from
 * Let's Encrypt, which cannot be reached here) and `bind 127.0.0.1`; plus the same block without its
 * `flush_interval -1` line, for what README says Caddy streams on its own. Caddy runs with its admin endpoint off
 * and its data in a temp folder.
 */
const caddy = ['/usr/bin/caddy', '/usr/local/bin/caddy'].find((path) => existsSync(path));
if (!caddy || !openssl)
  console.warn('reverse-proxy.test.ts: no caddy (or openssl) on this machine: the README Caddyfile snippet is not run');

describe.skipIf(!caddy || !openssl)("README's Caddyfile snippet in front of Keyward (AUTH_TRUST_HOST)", () => {
  let tlsPort: number;
  /** The same site without the snippet's `flush_interval -1` line. */
  let defaultFlushPort: number;

  beforeAll(async () => {
    const snippet = readmeSnippet('caddyfile');
    expect(snippet, 'the snippet proxies to 127.0.0.1:3000').toContain('reverse_proxy 127.0.0.1:3000');
    const dir = mkdtempSync(join(tmpdir(), 'keyward-caddy-'));
    const tls = selfSigned(dir);
    tlsPort = await freePort();
    defaultFlushPort = await freePort();
    const site = (listen: number, block: string) =>
      block
        .replace(/^app\.example\.com \{$/m, `https://${PUBLIC_HOST}:${listen} {\n  bind 127.0.0.1\n  tls ${tls.cert} ${tls.key}`)
        .replace('127.0.0.1:3000', `127.0.0.1:${port}`);
    const withoutFlush = snippet.replace(/^ *flush_interval -1\n/m, '');
    expect(withoutFlush, 'the snippet sets flush_interval -1').not.toBe(snippet);
    expect(site(tlsPort, snippet), 'the snippet names app.example.com').toContain(`https://${PUBLIC_HOST}:${tlsPort} {`);
    writeFileSync(
      join(dir, 'Caddyfile'),
      `{
  admin off
  auto_https disable_redirects
  skip_install_trust
}
${site(tlsPort, snippet)}
${site(defaultFlushPort, withoutFlush)}
`,
    );
    const home = join(dir, 'home');
    await startProxy('caddy', caddy!, ['run', '--config', join(dir, 'Caddyfile'), '--adapter', 'caddyfile'], tlsPort, {
      ...process.env,
      HOME: home,
      XDG_DATA_HOME: join(home, 'data'),
      XDG_CONFIG_HOME: join(home, 'config'),
    });
  }, 30_000);

  it('a state-changing call from the page passes the CSRF check: Caddy sends X-Forwarded-Proto and keeps Host', async () => {
    const before = refusals().length;
    expect((await postVia(tlsPort)).status).toBe(200);
    expect(refusals()).toHaveLength(before);
  });

  it('X-Forwarded-Proto and X-Forwarded-Host a client sent are replaced by Caddy, not passed on', async () => {
    // Were they passed on, Keyward would compute http://evil.example as the public origin and refuse the call.
    const answer = await postVia(tlsPort, { 'x-forwarded-proto': 'http', 'x-forwarded-host': 'evil.example' });
    expect(answer.status).toBe(200);
  });

  it('SSE: the first event reaches the browser while the upstream still holds the stream open', async () => {
    expect(await firstPartStreamed(tlsPort), 'the first event came before the stream ended').toBe(true);
  });

  it('SSE without flush_interval -1: Caddy still streams text/event-stream as it comes', async () => {
    expect(await firstPartStreamed(defaultFlushPort), 'the first event came before the stream ended').toBe(true);
  });

  it('NDJSON streams too, with and without flush_interval -1 (Keyward sends a stream without a Content-Length)', async () => {
    expect(await firstPartStreamed(tlsPort, 'application/x-ndjson'), 'the first line came before the stream ended').toBe(true);
    expect(await firstPartStreamed(defaultFlushPort, 'application/x-ndjson'), 'the same without flush_interval -1').toBe(true);
  });

  it('a WebSocket handshake reaches Keyward as an upgrade, and its Origin passes the check', async () => {
    const { upgrades, status } = await upgradeVia(tlsPort);
    expect(upgrades).toBe(1);
    expect(status).not.toBe(403);
  });
});
