import { describe, expect, it } from 'vitest';
import { CSRF_FAILURES, CSRF_HEADER, checkCsrf } from '../../../lib/core/csrf/check';
import { createOriginPolicy, type OriginPolicy } from '../../../lib/core/origin/public-origin';
import type { Session } from '../../../lib/core/session/session';
import { expectKeywardError, thrown } from '../support';

const APP = 'https://app.example.com';

function session(via: Session['via']): Session {
  return {
    userId: 'u',
    name: null,
    roles: ['user'],
    expiresAt: Number.MAX_SAFE_INTEGER,
    sessionId: 's',
    authTime: 0,
    claims: Object.create(null),
    via,
  };
}

function request(method: string, headers: Record<string, string>): Request {
  return new Request(`${APP}/api/proxy/echo/items`, { method, headers });
}

type Verdict = 'pass' | 'csrf_failed';

/** Development's rule (and AUTH_TRUST_HOST's): the public origin is the one the request's Host names. */
const TRUST_HOST = createOriginPolicy({ trustHost: true });

function verdict(req: Request, via: Session['via'], origins: OriginPolicy = TRUST_HOST): Verdict {
  try {
    checkCsrf(req, session(via), origins);
    return 'pass';
  } catch (error) {
    const e = expectKeywardError(error, 'csrf_failed');
    expect(e.status).toBe(403);
    return 'csrf_failed';
  }
}

const ok = { [CSRF_HEADER]: '1' };

describe('checkCsrf decision table (cookie sessions)', () => {
  it('uses the documented header name', () => {
    expect(CSRF_HEADER).toBe('x-keyward-csrf');
  });

  const SAFE = ['GET', 'HEAD', 'OPTIONS'];
  const UNSAFE = ['POST', 'PUT', 'PATCH', 'DELETE'];

  const table: Array<[string, string, Record<string, string>, Verdict]> = [
    // method, description, headers, verdict
    ...SAFE.map((m): [string, string, Record<string, string>, Verdict] => [m, 'no CSRF header', {}, 'csrf_failed']),
    ...SAFE.map((m): [string, string, Record<string, string>, Verdict] => [m, 'CSRF header, no Origin', ok, 'pass']),
    ...SAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, Sec-Fetch-Site cross-site',
      { ...ok, 'sec-fetch-site': 'cross-site' },
      'csrf_failed',
    ]),
    ...SAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, Sec-Fetch-Site same-site',
      { ...ok, 'sec-fetch-site': 'same-site' },
      'csrf_failed',
    ]),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header and own Origin',
      { ...ok, origin: APP },
      'pass',
    ]),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, own Origin, Sec-Fetch-Site same-origin',
      { ...ok, origin: APP, 'sec-fetch-site': 'same-origin' },
      'pass',
    ]),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, own Origin, Sec-Fetch-Site none',
      { ...ok, origin: APP, 'sec-fetch-site': 'none' },
      'pass',
    ]),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [m, 'no CSRF header', { origin: APP }, 'csrf_failed']),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [m, 'CSRF header, no Origin', ok, 'csrf_failed']),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, Origin null',
      { ...ok, origin: 'null' },
      'csrf_failed',
    ]),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, foreign Origin',
      { ...ok, origin: 'https://evil.example' },
      'csrf_failed',
    ]),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, sibling-subdomain Origin',
      { ...ok, origin: 'https://evil.app.example.com' },
      'csrf_failed',
    ]),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, own host over http',
      { ...ok, origin: 'http://app.example.com' },
      'csrf_failed',
    ]),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, Origin with a trailing slash',
      { ...ok, origin: `${APP}/` },
      'csrf_failed',
    ]),
    ...UNSAFE.map((m): [string, string, Record<string, string>, Verdict] => [
      m,
      'CSRF header, own Origin, Sec-Fetch-Site cross-site',
      { ...ok, origin: APP, 'sec-fetch-site': 'cross-site' },
      'csrf_failed',
    ]),
    ['POST', 'CSRF header value "true"', { [CSRF_HEADER]: 'true', origin: APP }, 'csrf_failed'],
    ['POST', 'CSRF header value "0"', { [CSRF_HEADER]: '0', origin: APP }, 'csrf_failed'],
    ['GET', 'CSRF header empty', { [CSRF_HEADER]: '' }, 'csrf_failed'],
  ];

  it.each(table)('%s with %s → %s', (method, _description, headers, expected) => {
    expect(verdict(request(method, headers), 'cookie')).toBe(expected);
  });
});

describe('checkCsrf with the public origin behind a real host name', () => {
  /** What a route handler sees under `next start`: request.url is the internal localhost, Host is the real one. */
  function behindNext(method: string, headers: Record<string, string>): Request {
    return new Request('http://localhost:3000/api/proxy/echo/items', { method, headers: { ...ok, ...headers } });
  }

  it('trusting the host: the Host header names the origin; the internal localhost is refused', () => {
    expect(verdict(behindNext('POST', { host: 'app.example.com', 'x-forwarded-proto': 'https', origin: APP }), 'cookie')).toBe('pass');
    expect(verdict(behindNext('POST', { host: 'app.example.com', origin: 'http://app.example.com' }), 'cookie')).toBe('pass');
    expect(verdict(behindNext('POST', { host: 'app.example.com', origin: 'http://localhost:3000' }), 'cookie')).toBe('csrf_failed');
    expect(verdict(behindNext('POST', { host: 'app.example.com', origin: 'https://evil.example' }), 'cookie')).toBe('csrf_failed');
  });

  it('trusting the host: X-Forwarded-Host and -Proto (first value) win over Host', () => {
    const headers = { host: 'internal:8080', 'x-forwarded-host': 'app.example.com, proxy.internal', 'x-forwarded-proto': 'https, http' };
    expect(verdict(behindNext('PUT', { ...headers, origin: APP }), 'cookie')).toBe('pass');
    expect(verdict(behindNext('PUT', { ...headers, origin: 'http://internal:8080' }), 'cookie')).toBe('csrf_failed');
  });

  it('trusting the host: a Host that is not a plain host[:port] refuses every origin (fail closed)', () => {
    for (const host of ['app.example.com/evil', 'user@app.example.com', 'app example.com']) {
      expect(verdict(behindNext('POST', { host, origin: APP }), 'cookie')).toBe('csrf_failed');
    }
    expect(verdict(behindNext('POST', { host: 'app.example.com', 'x-forwarded-proto': 'ftp', origin: APP }), 'cookie')).toBe('csrf_failed');
  });

  it('AUTH_URL fixes the origin: the Host header cannot change it', () => {
    const fixed = createOriginPolicy({ authUrl: `${APP}/`, trustHost: true });
    expect(verdict(behindNext('POST', { host: 'evil.example', origin: APP }), 'cookie', fixed)).toBe('pass');
    expect(verdict(behindNext('POST', { host: 'evil.example', origin: 'http://evil.example' }), 'cookie', fixed)).toBe('csrf_failed');
    expect(verdict(behindNext('POST', { host: 'localhost:3000', origin: 'http://localhost:3000' }), 'cookie', fixed)).toBe('csrf_failed');
  });

  it('neither AUTH_URL nor a trusted host (production start-up refuses this): every origin is refused', () => {
    const none = createOriginPolicy({ trustHost: false });
    expect(none.publicOrigin(behindNext('POST', { host: 'app.example.com' }))).toBeNull();
    expect(verdict(behindNext('POST', { host: 'app.example.com', origin: 'https://app.example.com' }), 'cookie', none)).toBe('csrf_failed');
  });

  it('KEYWARD_ALLOWED_ORIGINS adds origins next to the public one', () => {
    const listed = createOriginPolicy({ authUrl: APP, trustHost: false, extraOrigins: ['https://spa.example.net'] });
    expect(verdict(behindNext('POST', { origin: 'https://spa.example.net' }), 'cookie', listed)).toBe('pass');
    expect(verdict(behindNext('POST', { origin: APP }), 'cookie', listed)).toBe('pass');
    expect(verdict(behindNext('DELETE', { origin: 'https://evil.example' }), 'cookie', listed)).toBe('csrf_failed');
  });
});

describe('checkCsrf says which check failed, in fixed text', () => {
  const message = (req: Request) => expectKeywardError(thrown(() => checkCsrf(req, session('cookie'), TRUST_HOST)), 'csrf_failed').message;

  it.each([
    ['header', request('POST', { origin: APP })],
    ['fetchSite', request('GET', { ...ok, 'sec-fetch-site': 'cross-site' })],
    ['originMissing', request('POST', ok)],
    ['originRefused', request('POST', { ...ok, origin: 'https://evil.example' })],
  ] as const)('%s', (reason, req) => {
    expect(message(req)).toContain(CSRF_FAILURES[reason]);
    expect(message(req)).not.toContain('evil');
  });
});

describe('checkCsrf for bearer sessions', () => {
  it.each([
    ['GET', {}],
    ['POST', {}],
    ['POST', { origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' }],
  ])('%s %j passes: a bearer token is never sent by the browser on its own', (method, headers) => {
    expect(verdict(request(method, headers), 'bearer')).toBe('pass');
  });

  it('does not throw for a bearer session whatever the headers', () => {
    expect(thrown(() => checkCsrf(request('POST', {}), session('cookie'), TRUST_HOST))).toBeTruthy();
    expect(() => checkCsrf(request('POST', {}), session('bearer'), TRUST_HOST)).not.toThrow();
  });
});
