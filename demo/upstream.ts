import { createServer, type Server } from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * The demo upstream that `npm run dev` starts: a stand-in for a third-party API. It refuses every call
 * without its key in `x-demo-key`, which only Keyward's server holds. `/v1/whoami` also accepts a user's own
 * key (any value starting with `demo-user-`, as stored through /api/keys/demo-own). `/v1/leaky` misbehaves
 * like real APIs do: it echoes the key in an error and a header (Keyward scrubs both). `/v1/slow` never answers
 * in time.
 */
const USER_KEY = /^demo-user-[\x21-\x7e]{8,}$/;
export function startDemoUpstream(key: string, port = 4010, host = '127.0.0.1'): Promise<Server> {
  const expected = Buffer.from(key);
  const server = createServer((req, res) => {
    const presented = String(req.headers['x-demo-key'] ?? '');
    const given = Buffer.from(presented);
    const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end(JSON.stringify(body));
    };
    const url = new URL(req.url ?? '/', 'http://demo');
    const fingerprint = createHash('sha256').update(presented).digest('hex').slice(0, 12);
    if (req.method === 'GET' && url.pathname === '/v1/whoami' && USER_KEY.test(presented)) {
      return json(200, { key: 'yours', fingerprint, message: 'Called with your own key, attached by Keyward.' });
    }
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      return json(401, { error: 'missing or wrong x-demo-key' });
    }
    if (req.method === 'GET' && url.pathname === '/v1/whoami') {
      return json(200, { key: 'service', fingerprint, message: "Called with the app's service key." });
    }
    if (req.method === 'GET' && url.pathname === '/v1/leaky') {
      return json(
        401,
        { error: { message: `Invalid API key provided: ${presented}. Check your key.`, key: presented } },
        { 'x-debug-key': presented, 'www-authenticate': `ApiKey realm="demo", key="${presented}"` },
      );
    }
    if (req.method === 'GET' && url.pathname === '/v1/slow') {
      const timer = setTimeout(() => json(200, { late: true }), 30_000);
      req.on('close', () => clearTimeout(timer));
      return;
    }
    const item = /^\/v1\/items\/([^/]+)$/.exec(url.pathname);
    if (req.method === 'GET' && url.pathname === '/v1/hello') {
      return json(200, { message: 'Hello from the demo upstream. Keyward attached the key; your browser never saw it.', at: new Date().toISOString() });
    }
    if (req.method === 'GET' && item) {
      return json(200, { id: decodeURIComponent(item[1]!), name: `Item ${decodeURIComponent(item[1]!)}`, price: 42 });
    }
    if (req.method === 'POST' && url.pathname === '/v1/echo') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => json(200, { received: Buffer.concat(chunks).toString('utf8') }));
      return;
    }
    if (req.method === 'GET' && url.pathname === '/v1/events') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      let n = 0;
      const timer = setInterval(() => {
        n += 1;
        res.write(`id: ${n}\nevent: tick\ndata: ${JSON.stringify({ n, at: new Date().toISOString() })}\n\n`);
        if (n === 5) {
          clearInterval(timer);
          res.end();
        }
      }, 300);
      req.on('close', () => clearInterval(timer));
      return;
    }
    json(404, { error: 'not found' });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}
