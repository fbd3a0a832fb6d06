import { describe, expect, it } from 'vitest';
import { isDisguisedProxyPath, originFormTarget, parseProxyPath } from '../../../lib/node/proxy-path';

describe('parseProxyPath (the fast lane reads the raw request target)', () => {
  it('splits before decoding: %2F stays inside its segment, `..` is not resolved', () => {
    expect(parseProxyPath('/api/proxy/echo/a%2Fb/../c?x=1&y=%2F')).toEqual({
      target: { upstream: 'echo', path: ['a/b', '..', 'c'] },
      path: '/api/proxy/echo/a%2Fb/../c',
      search: '?x=1&y=%2F',
    });
    expect(parseProxyPath('/api/proxy/crm%2fevil.com/x')?.target).toEqual({ upstream: 'crm/evil.com', path: ['x'] });
  });

  it('keeps undecodable segments as written (they contain `%`, which the route step refuses)', () => {
    for (const segment of ['%', 'a%', '%zz', '%c0%ae', '%ed%a0%80', '%e0%80%ae']) {
      expect(parseProxyPath(`/api/proxy/echo/${segment}`)?.target.path).toEqual([segment]);
    }
  });

  it('keeps dot, empty and trailing segments for the core to judge', () => {
    expect(parseProxyPath('/api/proxy/echo/files/.')?.target.path).toEqual(['files', '.']);
    expect(parseProxyPath('/api/proxy/echo/files/%2e%2E')?.target.path).toEqual(['files', '..']);
    expect(parseProxyPath('/api/proxy/echo/items/')?.target.path).toEqual(['items', '']);
    expect(parseProxyPath('/api/proxy/echo')?.target).toEqual({ upstream: 'echo', path: [] });
    expect(parseProxyPath('/api/proxy')?.target).toEqual({ upstream: '', path: [] });
  });

  it('claims /api/proxy as written only (escapes in its own two segments are disguised, below), and an absolute-form target', () => {
    expect(parseProxyPath('/api/%70roxy/echo/x')).toBeNull();
    expect(parseProxyPath('/%61pi/proxy/echo/x')).toBeNull();
    expect(parseProxyPath('http://example.test:3000/api/proxy/echo/x?q')).toMatchObject({ target: { upstream: 'echo', path: ['x'] }, path: '/api/proxy/echo/x', search: '?q' });
  });

  it('reads ":" written literally or as %3A/%3a as the same segment (as Next\'s catch-all params do)', () => {
    const expected = ['v1beta', 'models', 'gemini-2.0-flash:generateContent'];
    for (const colon of [':', '%3A', '%3a']) {
      expect(parseProxyPath(`/api/proxy/gemini/v1beta/models/gemini-2.0-flash${colon}generateContent`)?.target.path).toEqual(expected);
    }
    expect(parseProxyPath('/api/proxy/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse')?.target.path).toEqual([
      'model',
      'anthropic.claude-3-5-sonnet-20240620-v1:0',
      'converse',
    ]);
    // Decoded once: %253A stays %3A (refused by the route step), a fullwidth colon stays itself (refused too).
    expect(parseProxyPath('/api/proxy/g/a%253Ab')?.target.path).toEqual(['a%3Ab']);
    expect(parseProxyPath('/api/proxy/g/a%EF%BC%9Ab')?.target.path).toEqual(['a\uFF1Ab']);
  });

  it('leaves everything else to Next', () => {
    for (const target of ['/', '/signin', '/api/session', '/api/proxyx/echo', '/api//proxy/echo', '/API/proxy/echo', '/_next/static/x.js', '*', '/api/auth/csrf', '/.well-known/oauth-authorization-server', '/api/session/token', '/api/session/mobile/authorize?x=1']) {
      expect(parseProxyPath(target), target).toBeNull();
    }
  });
});

describe('originFormTarget (what Next is handed)', () => {
  it('keeps an origin-form target as it is, nothing normalised', () => {
    for (const target of ['/', '/signin?x=1', '/a/../b', '/a/%2e%2e/b', '//evil.example/x', '/%zz']) expect(originFormTarget(target)).toBe(target);
  });

  it('takes the scheme and authority off an absolute-form target, as text, whether or not the authority is valid', () => {
    expect(originFormTarget('http://app.example/signin?x=1')).toBe('/signin?x=1');
    expect(originFormTarget('https://app.example')).toBe('/');
    expect(originFormTarget('http://app.example?x=1')).toBe('/?x=1');
    // A port out of range or a bad host: `new URL` throws on these, the path is still the path.
    expect(originFormTarget('http://a:99999/x')).toBe('/x');
    expect(originFormTarget('http://[zz]/a/%2e%2e/b')).toBe('/a/%2e%2e/b');
  });

  it('refuses (null) a target in neither form', () => {
    for (const target of ['*', 'a:b', 'x', '', 'http:/x']) expect(originFormTarget(target), target).toBeNull();
  });
});


describe('isDisguisedProxyPath: /api/proxy only once normalised (as http-proxy and Next would read it)', () => {
  it('finds dot segments and backslashes that lead into /api/proxy, in any form', () => {
    for (const target of [
      '/x/../api/proxy/echo/items/1',
      '/api/./proxy/echo/items/1',
      '/api/%2e/proxy/echo',
      '/api/%2E%2E/api/proxy/echo?x=1',
      '/api\\proxy/echo/items/1',
      '/api/proxy\\echo/items/1',
      'http://host/x/../api/proxy/echo',
      // The prefix in escapes: a front proxy's or WAF's rule on `/api/proxy/<upstream>/` would not see it.
      '/%61pi/proxy/echo/items/1',
      '/api/prox%79/echo/items/1',
      '/%61%70%69/%70%72%6F%78%79/echo',
      'http://host/api/%70roxy/echo',
      '/x/../%61pi/proxy/echo',
    ]) {
      expect(parseProxyPath(target), target).toBeNull();
      expect(isDisguisedProxyPath(target), target).toBe(true);
    }
  });

  it('leaves every other path to Next, dots elsewhere included', () => {
    for (const target of ['/_next/static/chunks/app.js', '/.well-known/openid-configuration', '/api/session', '/docs/../about', '/a/%2e%2e/b', '/api/proxy/echo/items/1', '*']) {
      expect(isDisguisedProxyPath(target), target).toBe(false);
    }
  });
});
