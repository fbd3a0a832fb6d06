import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createFastLane } from '../../lib/node/fast-lane';
import { findLeak } from '../fixtures/claims-session';
import { rawRequest } from '../fixtures/raw-http';
import { startAttacker } from '../fixtures/upstream';
import { APP_ORIGIN, createHarness, expectKeywardError, expectNoSecrets, expectNoSecretsInLogs, type Harness } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

describe('response headers', () => {
  it('drops Set-Cookie, WWW-Authenticate, x-api-key and any header echoing the key; sets private, no-store', async () => {
    h.upstream.handle((req, res) => {
      const key = String(req.headers['x-api-key']);
      res.setHeader('content-type', 'application/json');
      res.setHeader('set-cookie', ['upstream_session=abc; Path=/', `k=${key}`]);
      res.setHeader('www-authenticate', 'Bearer realm="upstream"');
      res.setHeader('proxy-authenticate', 'Basic realm="upstream"');
      res.setHeader('x-api-key', key);
      res.setHeader('authorization', `Bearer ${key}`);
      // Allow-listed (default or by config) headers whose value carries the key, raw or encoded.
      res.setHeader('x-echo', `key=${key}`);
      res.setHeader('content-disposition', `attachment; filename="${encodeURIComponent(key)}.txt"`);
      res.setHeader('etag', `"${key}"`);
      res.setHeader('cache-control', 'public, max-age=86400');
      res.setHeader('x-upstream-note', 'kept');
      res.setHeader('x-powered-by', 'upstream');
      res.writeHead(200);
      res.end('{"ok":true}');
    });
    const result = await h.call(['headers']);
    expect(result.response.status).toBe(200);
    expect(result.text).toBe('{"ok":true}');
    const headers = result.response.headers;
    expect(headers.getSetCookie()).toEqual([]);
    expect(headers.get('set-cookie')).toBeNull();
    expect(headers.get('www-authenticate')).toBeNull();
    expect(headers.get('proxy-authenticate')).toBeNull();
    expect(headers.get('x-api-key')).toBeNull();
    expect(headers.get('authorization')).toBeNull();
    expect(headers.get('x-echo')).toBeNull();
    expect(headers.get('content-disposition')).toBeNull();
    expect(headers.get('etag')).toBeNull();
    expect(headers.get('x-powered-by')).toBeNull();
    expect(headers.get('cache-control')).toBe('private, no-store');
    // Allow-listed, harmless headers still pass (the filter is not just dropping everything).
    expect(headers.get('x-upstream-note')).toBe('kept');
    expect(headers.get('content-type')).toBe('application/json');
    expect(headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('drops an allow-listed header that carries the key base64- or base64url-encoded', async () => {
    for (const encode of [(k: string) => Buffer.from(k).toString('base64'), (k: string) => Buffer.from(k).toString('base64url')]) {
      h.upstream.handle((req, res) => {
        const key = String(req.headers['x-api-key']);
        res.writeHead(200, { 'content-type': 'text/plain', 'x-echo': `token=${encode(key)}` });
        res.end('ok');
      });
      const result = await h.call(['headers']);
      expect(result.response.status).toBe(200);
      expect(result.response.headers.get('x-echo')).toBeNull();
      expectNoSecrets(h.secrets, result.response, result.text);
    }
  });

  /**
   * Two lines of one name reach the client as one value joined by ", " (fetch's Headers, node:http's
   * IncomingMessage): "sk-abc, def123" for the key "sk-abcdef123", which the client joins back.
   */
  function splitKeyUpstream(): void {
    h.upstream.handle((req, res) => {
      const key = String(req.headers['x-api-key']);
      res.setHeader('content-type', 'text/plain');
      res.setHeader('x-echo', [key.slice(0, 6), key.slice(6)]);
      res.setHeader('x-upstream-note', ['kept', 'too']);
      res.writeHead(200);
      res.end('ok');
    });
  }

  it('drops an allow-listed header whose repeated lines each carry a piece of the key', async () => {
    splitKeyUpstream();
    const result = await h.call(['headers']);
    expect(result.response.status).toBe(200);
    expect(result.response.headers.get('x-echo')).toBeNull();
    expect(result.response.headers.get('x-upstream-note')).toBe('kept, too');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('the fast lane (node:http, as npm start serves it) drops that header too', async () => {
    splitKeyUpstream();
    const lane = createServer(createFastLane({ deps: h.runtime, origin: () => APP_ORIGIN, next: (_req, res) => res.writeHead(418).end() }));
    await new Promise<void>((resolve) => lane.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = lane.address() as AddressInfo;
      const answer = await rawRequest(port, 'GET', '/api/proxy/echo/headers', { cookie: h.cookie, 'x-keyward-csrf': '1' });
      expect(answer.status).toBe(200);
      expect(answer.headers['x-echo']).toBeUndefined();
      expect(answer.headers['x-upstream-note']).toBe('kept, too');
      const written = Object.entries(answer.headers).map(([name, value]) => `${name}: ${String(value)}`);
      expect(findLeak(`${written.join('\n').replaceAll(', ', '')}\n${answer.body}`, h.secrets)).toBeNull();
    } finally {
      await new Promise((resolve) => lane.close(resolve));
    }
  });

  it('passes allow-listed headers that do not carry the key', async () => {
    h.upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', etag: '"v1"', 'x-echo': 'harmless' });
      res.end('fine');
    });
    const result = await h.call(['headers']);
    expect(result.response.headers.get('etag')).toBe('"v1"');
    expect(result.response.headers.get('x-echo')).toBe('harmless');
    expect(result.response.headers.get('cache-control')).toBe('private, no-store');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('decodes a gzip body the upstream sends although identity was asked for; no content-encoding passed on', async () => {
    const payload = JSON.stringify({ message: 'hello from a compressed upstream', n: Array.from({ length: 200 }, (_, i) => i) });
    h.upstream.handle((req, res) => {
      const compressed = gzipSync(Buffer.from(payload));
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-encoding': 'gzip',
        'content-length': String(compressed.length),
        'x-asked-encoding': String(req.headers['accept-encoding']),
      });
      res.end(compressed);
    });
    const result = await h.call(['items', '1'], { headers: { 'accept-encoding': 'gzip' } });
    expect(result.response.status).toBe(200);
    expect(result.text).toBe(payload);
    expect(result.response.headers.get('content-encoding')).toBeNull();
    expect(result.response.headers.get('content-length')).toBeNull();
    expect(h.upstream.requests.at(-1)!.headers['accept-encoding']).toBe('identity');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('scrubs the key from a gzip body after decoding it', async () => {
    h.upstream.handle((req, res) => {
      const compressed = gzipSync(Buffer.from(`{"echo":"${String(req.headers['x-api-key'])}"}`));
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      res.end(compressed);
    });
    const result = await h.call(['items', '1']);
    expect(result.text).toBe('{"echo":"[REDACTED]"}');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('scrubs the key from a streamed body even when it is split across chunks', async () => {
    h.upstream.handle(async (req, res) => {
      const key = String(req.headers['x-api-key']);
      const half = Math.floor(key.length / 2);
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write(`before ${key.slice(0, half)}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
      res.end(`${key.slice(half)} after`);
    });
    const result = await h.call(['items', '1']);
    expect(result.text).toBe('before [REDACTED] after');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it("an answer is scrubbed of every secret Keyward holds, not only the called upstream's key", async () => {
    // An in-house API that dumps its environment: it holds other upstreams' keys and Keyward's own secret.
    const others = [h.keys.bearer, h.keys.query, h.env.AUTH_SECRET!, h.env.KEYWARD_SESSION_SECRET!];
    h.upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-echo': `token=${Buffer.from(h.keys.basic).toString('base64')}` });
      res.end(JSON.stringify({ env: others, encoded: encodeURIComponent(h.keys.query) }));
    });
    const result = await h.call(['items', '1']);
    expect(result.response.status).toBe(200);
    expect(result.json()).toEqual({ env: others.map(() => '[REDACTED]'), encoded: '[REDACTED]' });
    expect(result.response.headers.get('x-echo')).toBeNull();
    expectNoSecrets(h.secrets, result.response, result.text);
    // Counted as the leak it is: the call's record names the hits.
    expect(h.logs.at(-1)).toContain('"scrubberHits":5');
  });
});

describe('active content is never served as a page on the app origin', () => {
  // A stored upload returned as HTML (or S3's `response-content-type`) would otherwise run on the app's origin,
  // where a script can send X-Keyward-CSRF and call every route as the signed-in user.
  it('every proxied answer gets a sandboxing Content-Security-Policy, whatever its type', async () => {
    for (const type of ['application/json', 'text/html; charset=utf-8', 'image/png']) {
      h.upstream.handle((_req, res) => {
        res.writeHead(200, { 'content-type': type, 'content-security-policy': "script-src *" });
        res.end('x');
      });
      const result = await h.call(['headers']);
      expect(result.response.status).toBe(200);
      const policy = result.response.headers.get('content-security-policy') ?? '';
      expect(policy.split(';').map((part) => part.trim())).toEqual(
        expect.arrayContaining(['sandbox', "default-src 'none'", "frame-ancestors 'none'", "form-action 'none'", "base-uri 'none'"]),
      );
      expect(policy).not.toContain('script-src *');
    }
  });

  it('HTML, SVG, XML and untyped answers are attachments, not pages; the body is passed on unchanged', async () => {
    const active = ['text/html', 'TEXT/HTML; charset=utf-8', 'application/xhtml+xml', 'image/svg+xml', 'text/xml', 'application/xml', 'application/atom+xml', 'text/xsl', null];
    for (const type of active) {
      h.upstream.handle((_req, res) => {
        res.setHeader('content-disposition', 'inline');
        if (type !== null) res.setHeader('content-type', type);
        res.writeHead(200);
        res.end('<html><body><script>fetch("/api/proxy/x")</script></body></html>');
      });
      const result = await h.call(['headers']);
      expect(result.response.status, String(type)).toBe(200);
      expect(result.response.headers.get('content-disposition'), String(type)).toBe('attachment');
      expect(result.text).toBe('<html><body><script>fetch("/api/proxy/x")</script></body></html>');
    }
  });

  it('a Content-Type list or an invalid type is an attachment when a browser could render it as a page', async () => {
    // A browser reads a list as the Fetch standard's "extract a MIME type" does: the last valid type wins, and
    // with no valid type it sniffs the body. Two header lines arrive as one list.
    const active: Array<string | string[]> = [
      'text/plain, text/html',
      ['text/plain', 'text/html'],
      'application/json;x=1,text/html',
      'html',
      ',',
      'text/plain, image/svg+xml; charset=utf-8',
      // Types the MIME Sniffing standard reads as none.
      '*/*',
      'unknown/unknown',
      'application/unknown',
      'text/plain, unknown/unknown',
    ];
    for (const type of active) {
      h.upstream.handle((_req, res) => {
        res.setHeader('content-type', type);
        res.writeHead(200);
        res.end('<h1>hello</h1>');
      });
      const result = await h.call(['headers']);
      expect(result.response.status, String(type)).toBe(200);
      expect(result.response.headers.get('content-disposition'), String(type)).toBe('attachment');
    }
    // A comma inside a quoted parameter is not a list.
    h.upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain; note="a, text/html"' });
      res.end('x');
    });
    expect((await h.call(['headers'])).response.headers.get('content-disposition')).toBeNull();
  });

  it('other types keep the upstream\'s own Content-Disposition, or none', async () => {
    h.upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/pdf', 'content-disposition': 'inline; filename="r.pdf"' });
      res.end('%PDF-1.7');
    });
    const pdf = await h.call(['headers']);
    expect(pdf.response.status).toBe(200);
    expect(pdf.response.headers.get('content-disposition')).toBe('inline; filename="r.pdf"');
    h.upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    expect((await h.call(['headers'])).response.headers.get('content-disposition')).toBeNull();
  });
});

describe('byte ranges', () => {
  /** An upstream that honours Range (as a file server does) and answers with the key it was sent. */
  function rangeEchoing() {
    h.upstream.handle((req, res) => {
      const body = Buffer.from(JSON.stringify({ yourKey: String(req.headers['x-api-key']) }));
      const range = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ''));
      if (!range) {
        res.writeHead(200, { 'content-type': 'application/json', 'accept-ranges': 'bytes' });
        res.end(body);
        return;
      }
      const start = Number(range[1]);
      const end = Math.min(range[2] ? Number(range[2]) : body.length - 1, body.length - 1);
      res.writeHead(206, { 'content-type': 'application/json', 'accept-ranges': 'bytes', 'content-range': `bytes ${start}-${end}/${body.length}` });
      res.end(body.subarray(start, end + 1));
    });
  }

  it('a client cannot cut an echoed key in two with Range requests: Range is not forwarded, each answer is whole and scrubbed', async () => {
    rangeEchoing();
    // The key starts at byte 12 of {"yourKey":"…"}: each range would hold one half of it.
    const cut = 12 + Math.floor(h.keys.header.length / 2);
    const mark = h.upstream.requests.length;
    const first = await h.call(['items', '1'], { headers: { range: `bytes=0-${cut - 1}`, 'if-range': '"v1"' } });
    const second = await h.call(['items', '1'], { headers: { range: `bytes=${cut}-` } });
    for (const result of [first, second]) {
      expect(result.response.status).toBe(200);
      expect(result.text).toBe('{"yourKey":"[REDACTED]"}');
      expect(result.response.headers.get('content-range')).toBeNull();
      expect(result.response.headers.get('accept-ranges')).toBeNull();
      expectNoSecrets(h.secrets, result.response, result.text);
    }
    expect(h.upstream.requests.slice(mark).map((request) => [request.headers.range, request.headers['if-range']])).toEqual([
      [undefined, undefined],
      [undefined, undefined],
    ]);
    // Joined, the two answers still hold no part of the key.
    expect(first.text + second.text).not.toContain(h.keys.header.slice(0, 8));
  });
});

describe('redirects are never followed', () => {
  for (const status of [301, 302, 303, 307, 308]) {
    it(`upstream ${status} to another host: 502 upstream_redirect, the attacker receives nothing, no Location`, async () => {
      const attacker = await startAttacker();
      try {
        h.upstream.handle((_req, res) => {
          res.writeHead(status, { location: `${attacker.origin}/steal?from=keyward`, 'content-type': 'text/plain' });
          res.end(`moved to ${attacker.origin}`);
        });
        const before = h.upstream.requests.length;
        const result = await h.call(['redirect']);
        expectKeywardError(result, 502, 'upstream_redirect', h);
        expect(h.upstream.requests.length).toBe(before + 1);
        expect(result.response.headers.get('location')).toBeNull();
        expect(result.text).not.toContain(attacker.origin);
        expect(result.text).not.toContain('steal');
        expect(attacker.connections()).toBe(0);
        expect(attacker.requests()).toBe(0);
      } finally {
        await attacker.close();
      }
    });
  }
});
