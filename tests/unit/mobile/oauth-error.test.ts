import { describe, expect, it } from 'vitest';
import { KeywardError } from '../../../lib/core/errors';
import { OAuthError, oauthErrorResponse, toOAuthError } from '../../../lib/core/mobile/oauth-error';
import { StoreUnavailableError } from '../../../lib/store/types';

describe('toOAuthError (anything thrown in the mobile endpoints, in RFC 6749 form)', () => {
  it.each([
    ['invalid_grant', new KeywardError('invalid_grant'), 'invalid_grant', 400],
    [
      'bad_request',
      new KeywardError('bad_request', { message: 'The body is not valid JSON.' }),
      'invalid_request',
      400,
    ],
    ['payload_too_large', new KeywardError('payload_too_large'), 'invalid_request', 400],
    ['csrf_failed', new KeywardError('csrf_failed'), 'access_denied', 403],
    [
      'method_not_allowed',
      new KeywardError('method_not_allowed', { headers: { allow: 'POST' } }),
      'invalid_request',
      405,
    ],
    ['store_unavailable', new KeywardError('store_unavailable'), 'temporarily_unavailable', 503],
    ['a raw StoreUnavailableError', new StoreUnavailableError('redis down'), 'temporarily_unavailable', 503],
    [
      'rate_limited',
      new KeywardError('rate_limited', { headers: { 'retry-after': '3' } }),
      'temporarily_unavailable',
      429,
    ],
    ['internal_error', new KeywardError('internal_error'), 'server_error', 500],
    ['a TypeError', new TypeError('Invalid URL: https://x.example/?token=abc'), 'server_error', 500],
  ])('%s → %s (%i)', (_name, thrown, error, status) => {
    const result = toOAuthError(thrown);
    expect(result.error).toBe(error);
    expect(result.status).toBe(status);
  });

  it("keeps Keyward's fixed message and headers, and never takes a thrown error's own text", () => {
    expect(toOAuthError(new KeywardError('method_not_allowed', { headers: { allow: 'POST' } })).headers).toEqual({
      allow: 'POST',
    });
    const unexpected = toOAuthError(new Error('connect ECONNREFUSED with secret kwr_abc'));
    expect(unexpected.description).toBe(new KeywardError('internal_error').message);
    expect(unexpected.description).not.toContain('kwr_abc');
  });

  it('a store outage says when to try again (Retry-After), raw or as Keyward\'s error', () => {
    expect(toOAuthError(new StoreUnavailableError('redis down')).headers).toEqual({ 'retry-after': '2' });
    expect(toOAuthError(new KeywardError('store_unavailable')).headers).toEqual({ 'retry-after': '2' });
  });

  it('passes an OAuthError through unchanged', () => {
    const error = new OAuthError('invalid_client', 'x', { headers: { 'www-authenticate': 'Basic realm="keyward"' } });
    expect(toOAuthError(error)).toBe(error);
    expect(error.status).toBe(401);
  });
});

describe('oauthErrorResponse', () => {
  it('is {"error","error_description"} only, no-store, with the request id in a header', async () => {
    const response = oauthErrorResponse(
      new OAuthError('unsupported_grant_type', 'grant_type must be authorization_code or refresh_token.'),
      'rid-1',
    );
    expect(response.status).toBe(400);
    expect(response.headers.get('content-type')).toBe('application/json; charset=utf-8');
    expect(response.headers.get('cache-control')).toBe('no-store');
    expect(response.headers.get('pragma')).toBe('no-cache');
    expect(response.headers.get('x-request-id')).toBe('rid-1');
    expect(await response.json()).toEqual({
      error: 'unsupported_grant_type',
      error_description: 'grant_type must be authorization_code or refresh_token.',
    });
  });
});
