import { describe, expect, it } from 'vitest';
import { CSRF_HEADER, checkCsrf } from '../../../lib/core/csrf/check';
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

function verdict(req: Request, via: Session['via'], allowed: ReadonlySet<string> | null = null): Verdict {
  try {
    checkCsrf(req, session(via), allowed);
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

describe('checkCsrf with configured allowed origins', () => {
  const allowed = new Set(['https://spa.example.net']);

  it('accepts a listed origin for a state-changing call', () => {
    expect(verdict(request('POST', { ...ok, origin: 'https://spa.example.net' }), 'cookie', allowed)).toBe('pass');
  });

  it("refuses the request's own origin when it is not listed", () => {
    expect(verdict(request('POST', { ...ok, origin: APP }), 'cookie', allowed)).toBe('csrf_failed');
  });

  it('refuses an unlisted origin', () => {
    expect(verdict(request('DELETE', { ...ok, origin: 'https://evil.example' }), 'cookie', allowed)).toBe('csrf_failed');
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
    expect(thrown(() => checkCsrf(request('POST', {}), session('cookie'), null))).toBeTruthy();
    expect(() => checkCsrf(request('POST', {}), session('bearer'), null)).not.toThrow();
  });
});
