import { describe, expect, it } from 'vitest';
import { safeCallbackPath } from '../../../lib/next/pages';

describe('safeCallbackPath (the sign-in page’s callbackUrl)', () => {
  it('keeps a path on this site, with its query', () => {
    expect(safeCallbackPath('/admin/keys?upstream=openai')).toBe('/admin/keys?upstream=openai');
    expect(safeCallbackPath(['/usage', '/admin'])).toBe('/usage');
  });

  it('keeps a page whose name merely starts like the consent page', () => {
    expect(safeCallbackPath('/authorized-apps?x=1')).toBe('/authorized-apps?x=1');
  });

  it('keeps a path with dot segments as the URL parser resolves it, when that stays on this site', () => {
    expect(safeCallbackPath('/usage/./../admin?x=1')).toBe('/admin?x=1');
  });

  it('keeps only the path and query of an absolute URL, as Auth.js hands it on (so the mobile sign-in comes back)', () => {
    const back = '/api/session/mobile/authorize?redirect_uri=com.example.app%3A%2Fcb&state=s';
    expect(safeCallbackPath(`http://localhost:3000${back}`)).toBe(back);
    // Another site's URL still leads to this site: no open redirect.
    expect(safeCallbackPath('https://evil.example/phish?x=1')).toBe('/phish?x=1');
    expect(safeCallbackPath('HTTPS://evil.example')).toBe('/');
  });

  it.each([
    ['a protocol-relative URL', '//evil.example/x'],
    ['an absolute URL whose path is protocol-relative', 'https://keyward.test//evil.example/x'],
    ['a backslash', '/\\evil.example'],
    ['a control character', '/a\nb'],
    ['another scheme', 'javascript:alert(1)'],
    ['an unparsable absolute URL', 'http://[::1'],
    // Dot segments that a URL parser (the browser's, Next's router) removes, leaving `//evil.example`: another host.
    ['a dot segment before a protocol-relative path', '/.//evil.example/x'],
    ['a dot-dot segment before a protocol-relative path', '/a/..//evil.example'],
    ['an encoded dot segment', '/%2e//evil.example'],
    ['an absolute URL with a dot segment before a protocol-relative path', 'https://keyward.test/.//evil.example'],
    ['nothing', undefined],
    // Keyward's own API: a navigation the sign-in page makes after a sign-in is same-origin, which the endpoints
    // that refuse another site's link by Sec-Fetch-Site would take as the app's own (the mobile authorization
    // endpoint is let through: it checks the request is this browser's own, see mobile-tokens.test.ts).
    ['a connect start with scopes of its own', '/api/connect/github?scope=repo%20admin:org&returnTo=/'],
    ['a connect start, absolute', 'https://keyward.test/api/connect/github'],
    ['another API route', '/api/session/revoke-all'],
    ['an API route reached through a dot segment', '/x/../api/connect/github'],
    ['an API route written with escapes', '/%61pi/connect/github?scope=repo'],
    ['the authorization endpoint written with escapes', '/api/session/mobile/%61uthorize?state=s'],
    ['a path with a malformed escape', '/%E0%A4%A/x'],
    // The mobile sign-in's consent page with a request of another site's making (its own PKCE challenge): a
    // signed-out user reaches the page through the authorization endpoint, never straight from the sign-in.
    ['the consent page with a request', '/authorize?redirect_uri=http%3A%2F%2F127.0.0.1%3A4444%2Fcb&code_challenge=x&state=s'],
    ['the consent page, absolute', 'http://localhost:3000/authorize?redirect_uri=com.example.app%3A%2Fcb'],
    ['the consent page with a trailing slash', '/authorize/?state=s'],
    ['the consent page written with escapes', '/%61uthorize?state=s'],
    ['the consent page reached through a dot segment', '/x/../authorize?state=s'],
  ])('refuses %s (home instead)', (_name, value) => {
    expect(safeCallbackPath(value)).toBe('/');
  });
});
