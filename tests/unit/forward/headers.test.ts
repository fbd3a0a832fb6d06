import { describe, expect, it } from 'vitest';
import { filterRequestHeaders, filterResponseHeaders, guardActiveContent, hasMethodOverride } from '../../../lib/core/forward/headers';
import { randomSecret } from '../../fixtures/secrets';
import { EVERY_FORM_SECRET, expectedNamedForms } from '../scrub-oracle';

const NONE: ReadonlySet<string> = new Set();

/** A header value as undici hands it over: the bytes the upstream sent (UTF-8), read as latin1. */
function asReceived(text: string): string {
  return Buffer.from(text, 'utf8').toString('latin1');
}

/** Percent-encodes every byte, the way an over-eager upstream might echo a value. */
function percentEncodeAll(text: string): string {
  return [...Buffer.from(text, 'utf8')].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('');
}

describe('filterRequestHeaders', () => {
  const DROPPED = [
    'authorization',
    'cookie',
    'x-api-key',
    'proxy-authorization',
    'host',
    'connection',
    'keep-alive',
    'te',
    'trailer',
    'upgrade',
    'transfer-encoding',
    'expect',
    'accept-encoding',
    'x-forwarded-for',
    'origin',
    'referer',
    'x-http-method-override',
    // A client choosing byte ranges could cut an echoed key into pieces the scrubber never sees whole.
    'range',
    'if-range',
  ];
  const KEPT = [
    'accept',
    'accept-language',
    'content-type',
    'content-language',
    'if-match',
    'if-none-match',
    'if-modified-since',
    'if-unmodified-since',
    'last-event-id',
    'idempotency-key',
  ];

  it.each(DROPPED)('drops %s', (name) => {
    const value = randomSecret('client');
    const incoming = new Headers();
    incoming.set(name, value);
    incoming.set('accept', 'application/json');
    const out = filterRequestHeaders(incoming, NONE);
    expect(Object.keys(out)).toEqual(['accept']);
    expect(Object.values(out).join('\n')).not.toContain(value);
  });

  it.each(KEPT)('keeps allow-listed %s with its value', (name) => {
    const value = `v-${randomSecret('hdr')}`;
    const out = filterRequestHeaders(new Headers({ [name]: value }), NONE);
    expect({ ...out }).toEqual({ [name]: value });
  });

  it('drops what the Connection header lists, allow-listed or extra, whatever the case and spacing', () => {
    const incoming = new Headers({ connection: 'close,  ACCEPT , x-extra', accept: 'text/plain', 'x-extra': '1', 'content-type': 'text/plain' });
    expect({ ...filterRequestHeaders(incoming, new Set(['x-extra'])) }).toEqual({ 'content-type': 'text/plain' });
  });

  it('matches names case-insensitively and emits lowercase names', () => {
    const out = filterRequestHeaders(new Headers({ 'Content-Type': 'text/plain', AUTHORIZATION: 'Bearer x' }), NONE);
    expect({ ...out }).toEqual({ 'content-type': 'text/plain' });
  });

  it('keeps the per-upstream extras and nothing else', () => {
    const incoming = new Headers({ 'x-tenant': 't1', 'x-other': 'o', cookie: 'a=b', accept: '*/*' });
    const out = filterRequestHeaders(incoming, new Set(['x-tenant']));
    expect({ ...out }).toEqual({ 'x-tenant': 't1', accept: '*/*' });
  });

  it('returns a prototype-less record', () => {
    expect(Object.getPrototypeOf(filterRequestHeaders(new Headers(), NONE))).toBeNull();
  });
});

describe('filterResponseHeaders', () => {
  const DROPPED = [
    'set-cookie',
    'www-authenticate',
    'proxy-authenticate',
    'authorization',
    'x-api-key',
    'location',
    'content-encoding',
    'content-length',
    'connection',
    'transfer-encoding',
    'access-control-allow-origin',
    'server',
    'content-range',
    'accept-ranges',
  ];

  it.each(DROPPED)('drops %s', (name) => {
    const out = filterResponseHeaders({ [name]: 'v', 'content-type': 'application/json' }, NONE, []);
    expect([...out.keys()]).toEqual(['content-type']);
  });

  it('keeps allow-listed headers (any case) and lowercases their names', () => {
    const out = filterResponseHeaders(
      { 'Content-Type': 'text/plain', ETag: '"abc"', 'Retry-After': '3', 'X-RateLimit-Remaining': '9' },
      NONE,
      [],
    );
    expect(Object.fromEntries(out)).toEqual({
      'content-type': 'text/plain',
      etag: '"abc"',
      'retry-after': '3',
      'x-ratelimit-remaining': '9',
    });
  });

  it("drops what the upstream's Connection header lists (undici gives names lowercased, a raw object may not)", () => {
    const out = filterResponseHeaders({ connection: 'keep-alive, ETag', etag: '"abc"', 'content-type': 'text/plain' }, NONE, []);
    expect(Object.fromEntries(out)).toEqual({ 'content-type': 'text/plain' });
    const raw = filterResponseHeaders({ Connection: 'x-trace', 'X-Trace': 't', ETag: '"abc"' }, new Set(['x-trace']), []);
    expect(Object.fromEntries(raw)).toEqual({ etag: '"abc"' });
  });

  it('keeps per-upstream extra response headers', () => {
    const out = filterResponseHeaders({ 'x-trace': 't', 'x-untold': 'u' }, new Set(['x-trace']), []);
    expect(Object.fromEntries(out)).toEqual({ 'x-trace': 't' });
  });

  it('keeps every value of a multi-valued header and skips undefined', () => {
    const out = filterResponseHeaders({ 'content-language': ['en', 'de'], etag: undefined }, NONE, []);
    expect(out.get('content-language')).toBe('en, de');
    expect(out.has('etag')).toBe(false);
  });

  it('drops a value that contains a secret, raw', () => {
    const secret = randomSecret();
    const out = filterResponseHeaders(
      { 'content-type': 'text/plain', 'content-disposition': `attachment; filename="${secret}.txt"` },
      NONE,
      [secret],
    );
    expect(Object.fromEntries(out)).toEqual({ 'content-type': 'text/plain' });
  });

  it('drops a value that contains a secret, percent-encoded', () => {
    const secret = `${randomSecret()}+/=`;
    const encoded = [
      encodeURIComponent(secret),
      percentEncodeAll(secret),
      percentEncodeAll(secret).toLowerCase(),
    ];
    for (const form of encoded) {
      const out = filterResponseHeaders({ etag: `"${form}"`, 'x-extra': `k=${form}` }, new Set(['x-extra']), [secret]);
      expect([...out.keys()]).toEqual([]);
    }
  });

  it('drops only the value holding the secret in a multi-valued header', () => {
    const secret = randomSecret();
    const out = filterResponseHeaders({ 'content-language': ['en', `x-${secret}`] }, NONE, [secret]);
    expect(out.get('content-language')).toBe('en');
  });

  it('drops a header whose lines each hold a piece of the secret: a client reads them joined', () => {
    const secret = randomSecret();
    const [a, b, c] = [secret.slice(0, 5), secret.slice(5, 12), secret.slice(12)];
    for (const lines of [[a, b + c], [a, b, c], [`note=${a}`, `${b + c}; v=1`]]) {
      const out = filterResponseHeaders({ 'x-echo': lines, etag: '"1"' }, new Set(['x-echo']), [secret]);
      expect(Object.fromEntries(out), JSON.stringify(lines)).toEqual({ etag: '"1"' });
    }
    // Split across list items of one line, or base64 split across lines: the same once the client joins them.
    const base64 = Buffer.from(secret).toString('base64');
    for (const raw of [`${a}, ${b + c}`, [base64.slice(0, 9), base64.slice(9)]]) {
      const out = filterResponseHeaders({ 'x-echo': raw }, new Set(['x-echo']), [secret]);
      expect(out.has('x-echo'), JSON.stringify(raw)).toBe(false);
    }
    // A raw object may carry one name in two cases: still one header to the client.
    const mixed = filterResponseHeaders({ 'X-Echo': a, 'x-echo': b + c }, new Set(['x-echo']), [secret]);
    expect(mixed.has('x-echo')).toBe(false);
  });

  it('checks every secret of the credential', () => {
    const [a, b] = [randomSecret(), randomSecret()];
    const out = filterResponseHeaders({ etag: a, 'retry-after': b, 'content-type': 'x/y' }, NONE, [a, b]);
    expect(Object.fromEntries(out)).toEqual({ 'content-type': 'x/y' });
  });

  // Regression test (fixed bug in lib/core/forward/headers.ts, containsSecret): a stray "%" anywhere in the value makes
  // decodeURIComponent throw, and the percent-encoded secret is then only compared raw, so it passes.
  it('drops a percent-encoded secret even when the value also holds a stray "%"', () => {
    const secret = randomSecret();
    const value = `100% done; key=${percentEncodeAll(secret)}`;
    const out = filterResponseHeaders({ 'content-disposition': value }, NONE, [secret]);
    expect(out.has('content-disposition')).toBe(false);
  });

  it("drops a secret escaped byte by byte next to an escape that is not UTF-8 (an ISO-8859-1 filename's %E9, a %FF)", () => {
    const secret = `${randomSecret()}+/=`;
    for (const value of [
      `attachment; filename*=ISO-8859-1''caf%E9${percentEncodeAll(secret)}.txt`,
      `attachment; filename*=UTF-8''${percentEncodeAll(secret).toLowerCase()}%FF`,
    ]) {
      const out = filterResponseHeaders({ 'content-disposition': value }, NONE, [secret]);
      expect(out.has('content-disposition'), value).toBe(false);
    }
  });
});

describe('filterResponseHeaders: Link', () => {
  const upstreamLink = '<https://api.example.com/v1/items?page=2>; rel="next"';
  const rewritten = (value: string) => value.replace('https://api.example.com/v1/', 'https://app.example.com/api/proxy/crm/');

  it('never passes Link as written: dropped without a rewriter, even when responseHeaders lists it', () => {
    expect(filterResponseHeaders({ link: upstreamLink }, NONE, []).has('link')).toBe(false);
    expect(filterResponseHeaders({ Link: upstreamLink }, new Set(['link']), []).has('link')).toBe(false);
  });

  it('passes each line as the rewriter writes it (it need not be listed), and leaves out a line it drops', () => {
    const out = filterResponseHeaders({ link: [upstreamLink, '<https://evil.example/>; rel="help"'] }, NONE, [], (value) => (value.includes('evil') ? null : rewritten(value)));
    expect(out.get('link')).toBe('<https://app.example.com/api/proxy/crm/items?page=2>; rel="next"');
  });

  it('checks the rewritten line for secrets, and a name the Connection header lists stays out', () => {
    const secret = randomSecret('lnk');
    const out = filterResponseHeaders({ link: [upstreamLink, `<https://api.example.com/v1/items?k=${encodeURIComponent(secret)}>; rel="last"`] }, NONE, [secret], rewritten);
    expect(out.get('link')).toBe(rewritten(upstreamLink));
    expect(filterResponseHeaders({ connection: 'link', link: upstreamLink }, NONE, [], rewritten).has('link')).toBe(false);
  });
});

describe('filterResponseHeaders: every form of the secret', () => {
  const KEY = randomSecret();

  it.each([
    ...expectedNamedForms(EVERY_FORM_SECRET).map(([name, form]) => [name, EVERY_FORM_SECRET, form]),
    ...expectedNamedForms(KEY).map(([name, form]) => [`${name}, random key`, KEY, form]),
  ])('drops a value that holds the form "%s"', (_name, secret, form) => {
    const value = asReceived(`W/"${form}"`);
    const out = filterResponseHeaders(
      { etag: value, 'x-echo': `k=${value}; v=1`, 'content-type': 'text/plain' },
      new Set(['x-echo']),
      [secret],
    );
    expect(Object.fromEntries(out)).toEqual({ 'content-type': 'text/plain' });
  });

  it.each([0, 1, 2])('drops an ETag that is base64 of data holding the key %i bytes past a 3-byte boundary', (offset) => {
    for (let after = 0; after <= 3; after++) {
      const data = Buffer.concat([Buffer.from('x'.repeat(3 + offset)), Buffer.from(KEY), Buffer.from('y'.repeat(after))]);
      for (const encoding of ['base64', 'base64url'] as const) {
        const out = filterResponseHeaders({ etag: `"${data.toString(encoding)}"` }, NONE, [KEY]);
        expect(out.has('etag')).toBe(false);
      }
    }
  });

  it('drops a header echoing the request headers as base64 JSON', () => {
    const echoed = Buffer.from(JSON.stringify({ 'x-api-key': KEY, accept: '*/*' })).toString('base64');
    const out = filterResponseHeaders({ 'x-echo': echoed, etag: '"1"' }, new Set(['x-echo']), [KEY]);
    expect(Object.fromEntries(out)).toEqual({ etag: '"1"' });
  });

  it('keeps values that encode something else', () => {
    const other = randomSecret();
    const values = { etag: `"${Buffer.from(`x${other}`).toString('base64')}"`, 'x-echo': Buffer.from(other).toString('hex') };
    const out = filterResponseHeaders(values, new Set(['x-echo']), [KEY]);
    expect(Object.fromEntries(out)).toEqual(values);
  });
});

describe('hasMethodOverride', () => {
  it.each(['x-http-method-override', 'X-HTTP-Method', 'x-method-override'])('detects the %s header', (name) => {
    expect(hasMethodOverride(new Headers({ [name]: 'DELETE' }), new URLSearchParams())).toBe(true);
  });

  it('detects the _method query parameter, even empty', () => {
    expect(hasMethodOverride(new Headers(), new URLSearchParams('_method=PUT'))).toBe(true);
    expect(hasMethodOverride(new Headers(), new URLSearchParams('a=1&_method'))).toBe(true);
  });

  it('is false for ordinary requests', () => {
    expect(hasMethodOverride(new Headers({ accept: '*/*' }), new URLSearchParams('method=PUT&x=_method'))).toBe(false);
  });
});

describe('guardActiveContent', () => {
  it('trims only HTTP whitespace around a type: one led by a vertical tab or a no-break space is no valid type (sniffed)', () => {
    for (const type of ['\vtext/plain', '\u00a0text/plain', 'text/plain\u00a0']) {
      const headers = new Headers({ 'content-type': type });
      guardActiveContent(headers);
      expect(headers.get('content-disposition'), JSON.stringify(type)).toBe('attachment');
    }
    const plain = new Headers({ 'content-type': ' text/plain\t' });
    guardActiveContent(plain);
    expect(plain.get('content-disposition')).toBeNull();
  });
});
