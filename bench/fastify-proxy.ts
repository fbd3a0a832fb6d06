/**
 * The `fastify` bench target: `@fastify/http-proxy` (on `fastify`), the reference Node proxy, run as its own
 * process (by `bench/run.ts`, with Node's built-in type stripping). It proxies every path to the bench upstream
 * (BENCH_UPSTREAM_BASE, loopback only), adds the upstream key (BENCH_UPSTREAM_KEY) to each request and to the
 * WebSocket handshake, logs nothing, and prints `{"port":N}` once listening on 127.0.0.1.
 *
 * Both packages are optional devDependencies: when either is not installed it prints `{"skip":"<why>"}` and exits
 * 0, and the bench leaves the `fastify` column out with a one-line note. Exits when its stdin closes.
 */
export {};

const base = process.env.BENCH_UPSTREAM_BASE ?? '';
const key = process.env.BENCH_UPSTREAM_KEY ?? '';

function say(value: object): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

const upstream = new URL(base);
if (upstream.protocol !== 'http:' || upstream.hostname !== '127.0.0.1' || key.length < 16) {
  console.error('BENCH_UPSTREAM_BASE must be http://127.0.0.1:<port>/ and BENCH_UPSTREAM_KEY set');
  process.exit(2);
}

interface FastifyApp {
  register(plugin: unknown, options: object): unknown;
  listen(options: { port: number; host: string }): Promise<string>;
  server: { address(): { port: number } | string | null };
}

// Variables, not literals: the type checker must not need the packages (they may be absent).
const fastifyName = 'fastify';
const proxyName = '@fastify/http-proxy';
let createApp: (options: object) => FastifyApp;
let proxy: unknown;
try {
  const fastifyModule = (await import(fastifyName)) as { default: (options: object) => FastifyApp };
  const proxyModule = (await import(proxyName)) as { default: unknown };
  createApp = fastifyModule.default;
  proxy = proxyModule.default;
} catch (error) {
  const code = (error as { code?: string }).code;
  say({ skip: code === 'ERR_MODULE_NOT_FOUND' ? `${fastifyName} and ${proxyName} are not installed (devDependencies)` : String(error) });
  process.exit(0);
}

const app = createApp({ logger: false });
app.register(proxy, {
  upstream: upstream.origin,
  http2: false,
  // Keep-alive to the upstream is reply-from's default (undici pool).
  replyOptions: {
    rewriteRequestHeaders: (_request: unknown, headers: Record<string, string>) => ({ ...headers, 'x-api-key': key }),
  },
  websocket: true,
  wsClientOptions: { headers: { 'x-api-key': key } },
});
await app.listen({ port: 0, host: '127.0.0.1' });
const address = app.server.address();
say({ port: typeof address === 'object' && address ? address.port : 0 });
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
