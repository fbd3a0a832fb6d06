import { describe, expect, it } from 'vitest';
import { ERROR_STATUS, KeywardError, errorResponse, failureOutcome, toKeywardError, type KeywardErrorCode } from '../../lib/core/errors';
import { randomSecret } from '../fixtures/secrets';

const CODES = Object.keys(ERROR_STATUS) as KeywardErrorCode[];

/** Statuses the design and HTTP semantics fix for these codes (DESIGN.md, "The request's path"). */
const REQUIRED_STATUS: Partial<Record<KeywardErrorCode, number>> = {
  bad_request: 400,
  bad_path: 400,
  method_override_refused: 400,
  unauthenticated: 401,
  csrf_failed: 403,
  forbidden: 403,
  upstream_not_found: 404,
  route_not_found: 404,
  method_not_allowed: 405,
  payload_too_large: 413,
  internal_error: 500,
  upstream_unreachable: 502,
  upstream_redirect: 502,
  upstream_timeout: 504,
  service_unavailable: 503,
};

describe('error codes', () => {
  it('includes every code the design relies on', () => {
    for (const code of Object.keys(REQUIRED_STATUS)) expect(CODES).toContain(code);
  });

  it.each(CODES)('%s maps to an HTTP error status used by KeywardError', (code) => {
    const status = ERROR_STATUS[code];
    expect(Number.isInteger(status)).toBe(true);
    expect(status).toBeGreaterThanOrEqual(400);
    expect(status).toBeLessThan(600);
    if (REQUIRED_STATUS[code] !== undefined) expect(status).toBe(REQUIRED_STATUS[code]);
    const error = new KeywardError(code);
    expect(error.status).toBe(status);
    expect(error.code).toBe(code);
    expect(error.message.length).toBeGreaterThan(0);
  });
});

describe('failureOutcome: whose failure a call answered with an error was', () => {
  /** The upstream's: unreachable, too slow, or an answer Keyward does not pass on. Every other 5xx is Keyward's own. */
  const UPSTREAM: KeywardErrorCode[] = ['upstream_unreachable', 'upstream_redirect', 'upstream_bad_response', 'upstream_timeout'];

  it.each(CODES)('%s', (code) => {
    const expected = ERROR_STATUS[code] < 500 ? 'refused' : UPSTREAM.includes(code) ? 'upstream_error' : 'unavailable';
    expect(failureOutcome(new KeywardError(code))).toBe(expected);
  });

  it("records Keyward's store, credential and internal failures as unavailable, not as the upstream's", () => {
    for (const code of ['store_unavailable', 'credential_unavailable', 'internal_error', 'service_unavailable'] as const) {
      expect(failureOutcome(new KeywardError(code))).toBe('unavailable');
    }
    expect(failureOutcome(toKeywardError(new Error('unexpected')))).toBe('unavailable');
    expect(failureOutcome(new KeywardError('upstream_not_found'))).toBe('refused');
  });
});

describe('errorResponse', () => {
  it.each(CODES)('renders %s as exactly {"error":{"code","message","requestId"}}', async (code) => {
    const requestId = crypto.randomUUID();
    const error = new KeywardError(code);
    const response = errorResponse(error, requestId);
    expect(response.status).toBe(ERROR_STATUS[code]);
    expect(response.headers.get('cache-control')).toBe('private, no-store');
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
    const body = await response.json();
    expect(body).toStrictEqual({ error: { code, message: error.message, requestId } });
    expect(Object.keys(body)).toEqual(['error']);
    expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'requestId']);
  });

  it('keeps headers the error carries (e.g. Allow) but never lets them override cache-control', () => {
    const error = new KeywardError('method_not_allowed', {
      headers: { allow: 'GET, POST', 'cache-control': 'public, max-age=3600' },
    });
    const response = errorResponse(error, 'r1');
    expect(response.headers.get('allow')).toBe('GET, POST');
    expect(response.headers.get('cache-control')).toBe('private, no-store');
  });

  it('carries no stack and no cause', async () => {
    const secret = randomSecret();
    const error = new KeywardError('upstream_unreachable', {
      cause: new Error(`connect ECONNREFUSED https://api.example.com/v1?key=${secret}`),
    });
    const text = await errorResponse(error, 'r2').text();
    expect(text).not.toContain(secret);
    expect(text).not.toContain('ECONNREFUSED');
    expect(text).not.toMatch(/\n\s+at /);
  });
});

describe('toKeywardError', () => {
  it('passes a KeywardError through unchanged', () => {
    const error = new KeywardError('forbidden');
    expect(toKeywardError(error)).toBe(error);
  });

  it.each([
    ['an Error with a secret', () => new Error(`boom ${randomSecret()}`)],
    ['a string', () => `failed: ${randomSecret()}`],
    ['null', () => null],
    ['an object', () => ({ message: randomSecret() })],
  ])('turns %s into internal_error without its message', async (_label, make) => {
    const thrown = make();
    const error = toKeywardError(thrown);
    expect(error.code).toBe('internal_error');
    expect(error.status).toBe(500);
    expect(error.cause).toBe(thrown);
    const text = await errorResponse(error, 'r3').text();
    const leaked = typeof thrown === 'string' ? thrown : (thrown as { message?: string } | null)?.message;
    if (leaked) expect(text).not.toContain(leaked.split(' ').pop()!);
  });
});
