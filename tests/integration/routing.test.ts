import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { cookieFor, createHarness, expectKeywardError, expectNoSecrets, expectNoSecretsInLogs, type Harness } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

/**
 * Decoded segments as Next hands them to the route handler (it decodes %2F, %5C, %3F, %23, %00 …). Each is
 * placed where the `/items/:id` route would otherwise accept it, so only segment validation stands between
 * it and the upstream; the `/files/*` route accepts any number of segments.
 */
const BAD_SEGMENTS: Array<[string, string[]]> = [
  ['..', ['items', '..']],
  ['.', ['items', '.']],
  ['... (IIS strips trailing dots)', ['items', '...']],
  ['..; (decoded ..%3b, Tomcat drops path parameters)', ['files', '..;', 'admin']],
  ['../x (decoded ..%2f)', ['items', '../x']],
  ['../../admin (decoded ..%2f..%2f)', ['files', '../../admin']],
  ['a\\b (decoded %5c)', ['items', 'a\\b']],
  ['..\\x (decoded ..%5c)', ['items', '..\\x']],
  ['//host (decoded %2f%2f)', ['items', '//evil.example']],
  ['empty segments (//host as segments)', ['files', '', 'evil.example']],
  ['https://host (decoded https:%2f%2f)', ['items', 'https://evil.example/x']],
  ['scheme-relative host:port', ['items', 'evil.example:443']],
  ['a?b (decoded %3f)', ['items', 'a?b']],
  ['a#b (decoded %23)', ['items', 'a#b']],
  ['a\\u0000b (decoded %00)', ['items', 'a\u0000b']],
  ['CR/LF (decoded %0d%0a)', ['items', 'a\r\nx-injected: 1']],
  ['@host (decoded %40)', ['items', '@evil.example']],
  ['user@host', ['items', 'user@evil.example']],
  ['percent sign (double encoding %252e)', ['items', '%2e%2e']],
  ['fullwidth dots \\uff0e\\uff0e', ['items', '\uff0e\uff0e']],
  ['fullwidth solidus', ['files', 'a\uff0fb']],
  ['non-ASCII letter', ['items', 'caf\u00e9']],
  ['non-ASCII homoglyph', ['items', '\u0430dmin']],
  ['space', ['items', 'a b']],
  ['tab', ['items', 'a\tb']],
];

describe('traversal and URL-confusion segments: 400 and no upstream call', () => {
  for (const [label, path] of BAD_SEGMENTS) {
    it(label, async () => {
      const before = h.upstream.requests.length;
      const result = await h.call(path);
      expectKeywardError(result, 400, 'bad_path', h);
      expect(h.upstream.requests.length).toBe(before);
    });
  }

  it('the same routes accept a plain segment (control)', async () => {
    const before = h.upstream.requests.length;
    const plain = "a-b_c.d~e!$&'()*+,;=";
    const items = await h.call(['items', plain]);
    expect(items.response.status).toBe(200);
    const files = await h.call(['files', 'a', 'b', 'c.txt']);
    expect(files.response.status).toBe(200);
    expect(h.upstream.requests.length).toBe(before + 2);
    expect(h.upstream.requests.at(-2)!.url).toBe(`/v1/items/${encodeURIComponent(plain)}`);
    expect(h.upstream.requests.at(-1)!.url).toBe('/v1/files/a/b/c.txt');
    expectNoSecrets(h.secrets, files.response, files.text);
  });

  it('too many segments: 400', async () => {
    const before = h.upstream.requests.length;
    const result = await h.call(['files', ...Array.from({ length: 100 }, () => 'a')]);
    expectKeywardError(result, 400, 'bad_path', h);
    expect(h.upstream.requests.length).toBe(before);
  });
});

describe('upstream ids that are not registered: 404 and no upstream call', () => {
  for (const id of ['__proto__', 'constructor', 'prototype', 'hasOwnProperty', 'toString', 'crm/evil.com', 'ECHO', 'echo/', '', 'nope']) {
    it(JSON.stringify(id), async () => {
      const before = h.upstream.requests.length;
      const result = await h.call(['items', '1'], { upstream: id });
      expectKeywardError(result, 404, 'upstream_not_found', h);
      expect(h.upstream.requests.length).toBe(before);
    });
  }
});

describe('declared routes only', () => {
  it('an undeclared path: 404 route_not_found', async () => {
    const before = h.upstream.requests.length;
    const result = await h.call(['secret', 'admin']);
    expectKeywardError(result, 404, 'route_not_found', h);
    const deeper = await h.call(['items', '1', 'extra']);
    expectKeywardError(deeper, 404, 'route_not_found', h);
    const prefix = await h.call(['items']);
    expect(prefix.response.status).toBe(405); // GET /items is not declared, POST /items is
    expect(h.upstream.requests.length).toBe(before);
  });

  it('a declared path with another method: 405 with Allow', async () => {
    const before = h.upstream.requests.length;
    const result = await h.call(['items', '1'], { method: 'DELETE' });
    expectKeywardError(result, 405, 'method_not_allowed', h);
    const allow = result.response.headers.get('allow')!.split(',').map((m) => m.trim()).sort();
    expect(allow).toEqual(['GET', 'PUT']);
    const post = await h.call(['items'], { method: 'GET' });
    expect(post.response.status).toBe(405);
    expect(post.response.headers.get('allow')).toBe('POST');
    expect(h.upstream.requests.length).toBe(before);
  });

  it('a route whose role the session lacks: 403 forbidden', async () => {
    const before = h.upstream.requests.length;
    const result = await h.call(['admin', 'stats']);
    expectKeywardError(result, 403, 'forbidden', h);
    const noRoles = await h.call(['items', '1'], { cookie: await cookieFor(h, { roles: [] }) });
    expectKeywardError(noRoles, 403, 'forbidden', h);
    expect(h.upstream.requests.length).toBe(before);
  });

  it('the same route with the role: forwarded (control)', async () => {
    const before = h.upstream.requests.length;
    const result = await h.call(['admin', 'stats'], { cookie: await cookieFor(h, { roles: ['user', 'admin'] }) });
    expect(result.response.status).toBe(200);
    expect(h.upstream.requests.length).toBe(before + 1);
    expect(h.upstream.requests.at(-1)!.url).toBe('/v1/admin/stats');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('a route without roles needs only a session', async () => {
    const result = await h.call(['files', 'x'], { cookie: await cookieFor(h, { roles: [] }) });
    expect(result.response.status).toBe(200);
  });
});
