import { createServer, type Server } from 'node:http';
import { timingSafeEqual } from 'node:crypto';

/**
 * The demo upstream that `npm run dev` starts: a stand-in for a third-party API. It refuses every call
 * without its key in `x-demo-key`, which only Keyward's server holds.
 */
export function startDemoUpstream(key: string, port = 4010, host = '127.0.0.1'): Promise<Server> {
  const expected = Buffer.from(key);
  const server = createServer((req, res) => {
    const given = Buffer.from(String(req.headers['x-demo-key'] ?? ''));
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      return json(401, { error: 'missing or wrong x-demo-key' });
    }
    const url = new URL(req.url ?? '/', 'http://demo');
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
