import { describe, expect, it } from 'vitest';
import { rewriteLinks, type LinkContext } from '../../../lib/core/respond/links';

const API = 'https://api.example.com';
const APP = 'https://app.example.com';

const context: LinkContext = {
  mode: 'rewrite',
  upstream: { id: 'crm', origin: API, basePath: '/v1/' },
  calledUrl: `${API}/v1/contacts`,
  calledPath: ['contacts'],
  publicOrigin: APP,
  credentialQuery: null,
};

const rewrite = (value: string, overrides: Partial<LinkContext> = {}) =>
  rewriteLinks(value, { ...context, ...overrides });

describe('rewriteLinks: rewrite (the default)', () => {
  it('writes a link under baseUrl onto the proxy path, on the public origin, with its query and parameters', () => {
    expect(rewrite(`<${API}/v1/contacts?cursor=abc&limit=2>; rel="next"`)).toBe(
      `<${APP}/api/proxy/crm/contacts?cursor=abc&limit=2>; rel="next"`,
    );
    expect(rewrite(`<${API}/v1/contacts/7/notes>; rel=related; title="Notes, all"`)).toBe(
      `<${APP}/api/proxy/crm/contacts/7/notes>; rel="related"; title="Notes, all"`,
    );
  });

  it('resolves a relative link against the URL that was called (RFC 8288 §3.1)', () => {
    expect(rewrite('</v1/contacts?page=2>; rel="next", <?page=9>; rel="last", <contacts/3>; rel="item"')).toBe(
      `<${APP}/api/proxy/crm/contacts?page=2>; rel="next", <${APP}/api/proxy/crm/contacts?page=9>; rel="last", <${APP}/api/proxy/crm/contacts/3>; rel="item"`,
    );
  });

  it('drops links to another host, scheme or port, and links outside the base path', () => {
    for (const target of [
      'https://evil.example/v1/contacts',
      'http://api.example.com/v1/contacts',
      'https://api.example.com:8443/v1/contacts',
      'https://api.example.com.evil.example/v1/contacts',
      '//evil.example/v1/contacts',
      `${API}/v10/contacts`,
      `${API}/v1`,
      `${API}/admin`,
      '/v2/contacts',
      '../admin',
      'javascript:alert(1)',
      'data:text/html,<b>x</b>',
    ]) {
      expect(rewrite(`<${target}>; rel="next"`), target).toBeNull();
    }
    expect(rewrite(`<https://evil.example/x>; rel="help", <${API}/v1/contacts?page=2>; rel="next"`)).toBe(
      `<${APP}/api/proxy/crm/contacts?page=2>; rel="next"`,
    );
  });

  it("never keeps the upstream's host: user info is dropped, a path that only looks like a URL stays a path", () => {
    expect(rewrite(`<https://user:pass@api.example.com/v1/contacts>; rel="next"`)).toBe(
      `<${APP}/api/proxy/crm/contacts>; rel="next"`,
    );
    expect(rewrite(`<${API}/v1/https://evil.example/x>; rel="next"`)).toBe(
      `<${APP}/api/proxy/crm/https://evil.example/x>; rel="next"`,
    );
  });

  it('without a public origin, writes a path-absolute link (resolved by the client against its request URL)', () => {
    expect(rewrite(`<${API}/v1/contacts?page=2>; rel="next"`, { publicOrigin: null })).toBe(
      '</api/proxy/crm/contacts?page=2>; rel="next"',
    );
  });

  it("encodes the upstream's id", () => {
    expect(rewrite(`<${API}/v1/x>; rel="next"`, { upstream: { ...context.upstream, id: 'crm eu' } })).toBe(
      `<${APP}/api/proxy/crm%20eu/x>; rel="next"`,
    );
  });

  it("takes the credential's query parameter out, in any spelling, and leaves the other pairs as written", () => {
    const value = `<${API}/v1/contacts?key=SECRET&page=2&KEY%00=x&key[]=y&q=a%20b+c>; rel="next"`;
    expect(rewrite(value, { credentialQuery: 'key' })).toBe(
      `<${APP}/api/proxy/crm/contacts?page=2&q=a%20b+c>; rel="next"`,
    );
    expect(rewrite(`<${API}/v1/contacts?key=SECRET>; rel="next"`, { credentialQuery: 'key' })).toBe(
      `<${APP}/api/proxy/crm/contacts>; rel="next"`,
    );
  });

  it('drops a link with an anchor (another context, named by a URL as the upstream wrote it)', () => {
    expect(rewrite(`<${API}/v1/contacts/2>; rel="next"; anchor="${API}/v1/other"`)).toBeNull();
  });

  it('reads commas and semicolons inside the URL and inside quoted strings', () => {
    expect(
      rewrite(
        `<${API}/v1/contacts?tags=a,b;c>; rel="next"; title="x, <y>; rel=\\"z\\"", <${API}/v1/contacts?page=3>; rel="last"`,
      ),
    ).toBe(
      `<${APP}/api/proxy/crm/contacts?tags=a,b;c>; rel="next", <${APP}/api/proxy/crm/contacts?page=3>; rel="last"`,
    );
  });

  it('writes parameters anew: quoted (rel="next", as Octokit reads it), a value holding < or > left out', () => {
    expect(rewrite(`<${API}/v1/a>;rel=next;title="say \\"hi\\"";hreflang=en;title*=UTF-8'de'n%c3%a4chste`)).toBe(
      `<${APP}/api/proxy/crm/a>; rel="next"; title="say \\"hi\\""; hreflang="en"; title*=UTF-8'de'n%c3%a4chste`,
    );
    expect(rewrite(`<${API}/v1/a>; rel="next"; title="<https://evil.example/>; rel=next"`)).toBe(
      `<${APP}/api/proxy/crm/a>; rel="next"`,
    );
  });

  it('drops a link-value that is not well formed, and keeps reading after it', () => {
    for (const bad of [
      `${API}/v1/a; rel="next"`,
      `<${API}/v1/a; rel="next"`,
      `<${API}/v1/a> rel="next"`,
      `<${API}/v1/a>; rel="next`,
      `<${API}/v1/a>; =x`,
    ]) {
      expect(rewrite(bad), bad).toBeNull();
    }
    expect(rewrite(`<${API}/v1/a>; title=<https://evil.example/>, <${API}/v1/b>; rel="next"`)).toBe(
      `<${APP}/api/proxy/crm/b>; rel="next"`,
    );
    expect(rewrite(`, <${API}/v1/a>; rel="next",, `)).toBe(`<${APP}/api/proxy/crm/a>; rel="next"`);
  });

  it('never writes a character that would end the target or split the header', () => {
    expect(rewrite(`<${API}/v1/a b"c\`{}\t?q="x y'>; rel="next"`)).toBe(
      `<${APP}/api/proxy/crm/a%20b%22c%60%7B%7D?q=%22x%20y%27>; rel="next"`,
    );
    expect(rewrite(`<${API}/v1/a?q=<x>>; rel="next"`)).toBeNull();
  });
});

describe('rewriteLinks: same-path', () => {
  const samePath: Partial<LinkContext> = {
    mode: 'same-path',
    upstream: { id: 'github', origin: API, basePath: '/' },
    calledUrl: `${API}/repos/acme/widgets/issues`,
    calledPath: ['repos', 'acme', 'widgets', 'issues'],
  };

  it('writes each page link on the path the client called, with the link’s query', () => {
    const value = `<${API}/repositories/1296269/issues?state=open&page=2>; rel="next", <${API}/repositories/1296269/issues?state=open&page=5>; rel="last"`;
    expect(rewrite(value, samePath)).toBe(
      `<${APP}/api/proxy/github/repos/acme/widgets/issues?state=open&page=2>; rel="next", <${APP}/api/proxy/github/repos/acme/widgets/issues?state=open&page=5>; rel="last"`,
    );
  });

  it('keeps page links only (next, prev, previous, first, last, in any case, among other relations), under baseUrl only', () => {
    expect(rewrite(`<${API}/repositories/1/issues?page=2>; rel="Previous"`, samePath)).toBe(
      `<${APP}/api/proxy/github/repos/acme/widgets/issues?page=2>; rel="Previous"`,
    );
    expect(rewrite(`<${API}/x?page=2>; rel="alternate next"`, samePath)).toBe(
      `<${APP}/api/proxy/github/repos/acme/widgets/issues?page=2>; rel="alternate next"`,
    );
    expect(rewrite(`<${API}/repositories/1>; rel="related"`, samePath)).toBeNull();
    expect(rewrite(`<${API}/x?page=2>`, samePath)).toBeNull();
    expect(rewrite(`<https://evil.example/x?page=2>; rel="next"`, samePath)).toBeNull();
  });

  it('encodes each called segment', () => {
    expect(rewrite(`<${API}/x?page=2>; rel="next"`, { ...samePath, calledPath: ['contents', 'a b', 'c?d'] })).toBe(
      `<${APP}/api/proxy/github/contents/a%20b/c%3Fd?page=2>; rel="next"`,
    );
  });
});
