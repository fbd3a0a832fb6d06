import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { createFastLane } from '../../lib/node/fast-lane';
import { rawRequest } from '../fixtures/raw-http';
import { APP_ORIGIN, createHarness, expectNoSecrets, expectNoSecretsInLogs, type Harness } from './harness';

/**
 * An upstream's `Link` header (RFC 8288) through the core (lib/core/respond/links.ts): each link under the
 * upstream's baseUrl comes back on Keyward's proxy path, on the public origin; links elsewhere, and lines that hold
 * a key, are left out; the fast lane writes the same header as a route handler.
 */

let h: Harness;
let origin: string;
beforeAll(async () => {
  h = await createHarness({
    upstreams: (upstreamOrigin) => {
      const common = {
        baseUrl: `${upstreamOrigin}/v1/`,
        auth: { type: 'header' as const, name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
      };
      return [
        defineUpstream('quiet', { ...common, links: 'drop', routes: [{ method: 'GET', path: '/items/:id' }] }),
        defineUpstream('pages', { ...common, routes: [{ method: 'GET', path: '/items/:id', links: 'same-path' }] }),
      ];
    },
  });
  origin = h.upstream.origin;
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

/** The upstream answers every call with these `Link` lines, each written with the key it was sent. */
function linking(lines: (key: string) => string[]): void {
  h.upstream.handle((req, res) => {
    const key = String(req.headers['x-api-key'] ?? new URL(req.url ?? '/', origin).searchParams.get('api_key'));
    res.writeHead(200, { 'content-type': 'application/json', link: lines(key) });
    res.end('[]');
  });
}

const echoLines = (key: string) => [
  `<${origin}/v1/items/2?x=1>; rel="next", </v1/items/9>; rel="last", <https://elsewhere.example/v1/items/2>; rel="help"`,
  `<${origin}/v2/other>; rel="alternate"`,
  `<${origin}/v1/items/5?k=${key}>; rel="prev"`,
];
const echoLink = `<${APP_ORIGIN}/api/proxy/echo/items/2?x=1>; rel="next", <${APP_ORIGIN}/api/proxy/echo/items/9>; rel="last"`;

describe('Link', () => {
  it('rewrites links under baseUrl onto the proxy path; drops links elsewhere and a line that holds the key; the link can be followed', async () => {
    linking(echoLines);
    const result = await h.call(['items', '1']);
    expect(result.response.status).toBe(200);
    expect(result.response.headers.get('link')).toBe(echoLink);
    expectNoSecrets(h.secrets, result.response, result.text);

    h.upstream.reset();
    const next = new URL(echoLink.slice(1, echoLink.indexOf('>')));
    const [, , , upstream, ...path] = next.pathname.split('/');
    expect(upstream).toBe('echo');
    const followed = await h.call(path, { query: next.search });
    expect(followed.response.status).toBe(200);
    expect(h.upstream.requests.at(-1)!.url).toBe('/v1/items/2?x=1');
  });

  it("takes a query credential out of the link, so that it can be followed (Keyward refuses a client's api_key)", async () => {
    linking((key) => [`<${origin}/v1/items/1?api_key=${key}&page=2>; rel="next"`]);
    const result = await h.call(['items', '1'], { upstream: 'query' });
    expect(result.response.headers.get('link')).toBe(`<${APP_ORIGIN}/api/proxy/query/items/1?page=2>; rel="next"`);
    expectNoSecrets(h.secrets, result.response, result.text);
    h.upstream.reset();
    const followed = await h.call(['items', '1'], { upstream: 'query', query: '?page=2' });
    expect(followed.response.status).toBe(200);
  });

  it('links: "drop" passes none; a route\'s links: "same-path" writes page links on the path called', async () => {
    linking(() => [`<${origin}/v1/other/77?page=2>; rel="next", <${origin}/v1/items/1/history>; rel="related"`]);
    expect((await h.call(['items', '1'], { upstream: 'quiet' })).response.headers.get('link')).toBeNull();
    const pages = await h.call(['items', '1'], { upstream: 'pages' });
    expect(pages.response.headers.get('link')).toBe(`<${APP_ORIGIN}/api/proxy/pages/items/1?page=2>; rel="next"`);
  });

  it('the fast lane (node:http, as npm start serves it) writes the same header', async () => {
    linking(echoLines);
    const lane = createServer(
      createFastLane({
        deps: h.runtime,
        origin: () => 'http://localhost:3000',
        next: (_req, res) => res.writeHead(418).end(),
      }),
    );
    await new Promise<void>((resolve) => lane.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = lane.address() as AddressInfo;
      const headers = {
        cookie: h.cookie,
        'x-keyward-csrf': '1',
        host: new URL(APP_ORIGIN).host,
        'x-forwarded-proto': 'https',
      };
      const answer = await rawRequest(port, 'GET', '/api/proxy/echo/items/1', headers);
      expect(answer.status).toBe(200);
      expect(answer.headers.link).toBe(echoLink);
    } finally {
      await new Promise((resolve) => lane.close(resolve));
    }
  });
});
