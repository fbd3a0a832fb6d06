import { describe, expect, it } from 'vitest';
import { changesSignIn } from '../../../lib/core/api/sign-in';

/**
 * Which Auth.js answers end a browser's pending connects (lib/core/api/connect.ts endPendingConnects): those that
 * change who is signed in. The credentials sign-in, sign-out and logout run end to end in
 * tests/integration/sign-in-ends-connects.test.ts; the OIDC callback (a GET back from the identity provider) needs
 * a whole sign-in at an OpenID provider, so its answer is described here as Auth.js writes it.
 */
const SESSION = '__Host-keyward.session';
const answer = (...cookies: string[]) => {
  const headers = new Headers({ location: '/' });
  for (const cookie of cookies) headers.append('set-cookie', cookie);
  return new Response(null, { status: 302, headers });
};
const at = (path: string, method = 'GET') => new Request(`http://localhost:3000${path}`, { method });

describe('changesSignIn', () => {
  it('an OIDC callback that signs in (GET, or form_post), whole or chunked, and a credentials sign-in', () => {
    const signedIn = answer(`${SESSION}=eyJhbGciOi; Path=/; HttpOnly; Secure; SameSite=Strict`, '__Host-keyward.state=; Max-Age=0');
    expect(changesSignIn(at('/api/auth/callback/oidc'), signedIn)).toBe(true);
    expect(changesSignIn(at('/api/auth/callback/oidc', 'POST'), signedIn)).toBe(true);
    expect(changesSignIn(at('/api/auth/callback/oidc'), answer(`${SESSION}.0=part; Path=/`, `${SESSION}.1=rest; Path=/`))).toBe(true);
    expect(changesSignIn(at('/api/auth/callback/credentials', 'POST'), signedIn)).toBe(true);
  });

  it('a sign-out, or a session cleared: every session cookie emptied, none set', () => {
    expect(changesSignIn(at('/api/auth/signout', 'POST'), answer(`${SESSION}=; Path=/; Max-Age=0`))).toBe(true);
    expect(changesSignIn(at('/api/auth/session'), answer(`${SESSION}.0=; Max-Age=0`, `${SESSION}.1=; Max-Age=0`))).toBe(true);
  });

  it('not a session read renewing the cookie (even when it joins former chunks), nor a refused sign-in', () => {
    expect(changesSignIn(at('/api/auth/session'), answer(`${SESSION}=renewed; Path=/`))).toBe(false);
    expect(changesSignIn(at('/api/auth/session'), answer(`${SESSION}=renewed; Path=/`, `${SESSION}.0=; Max-Age=0`))).toBe(false);
    expect(changesSignIn(at('/api/auth/callback/credentials', 'POST'), answer())).toBe(false);
    expect(changesSignIn(at('/api/auth/csrf'), answer('__Host-keyward.csrf-token=abc; Path=/'))).toBe(false);
  });
});
