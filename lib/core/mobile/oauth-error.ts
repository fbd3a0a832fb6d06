import { KeywardError } from '../errors';
import { StoreUnavailableError } from '../../store/types';

/**
 * The mobile authorize and token endpoints speak OAuth 2.0, so their errors take OAuth's form instead of
 * Keyward's `{"error":{"code",…}}`: unmodified OAuth clients (AppAuth, oauth4webapi) read `error` and
 * `error_description` and nothing else. Descriptions are fixed strings written in this folder, never text
 * taken from the request: a submitted code, token or secret cannot come back in one.
 *
 * Codes: RFC 6749 §4.1.2.1 (authorization endpoint) and §5.2 (token endpoint); RFC 9449 §5 and §8 (DPoP).
 */
export type OAuthErrorCode =
  | 'invalid_request'
  | 'invalid_client'
  | 'invalid_grant'
  | 'unauthorized_client'
  | 'unsupported_grant_type'
  | 'unsupported_response_type'
  | 'invalid_scope'
  | 'access_denied'
  | 'server_error'
  | 'temporarily_unavailable'
  | 'invalid_dpop_proof'
  | 'use_dpop_nonce';

/** RFC 6749 §5.2: 400 for everything except `invalid_client` (401); the server's own failures keep their 5xx. */
const OAUTH_STATUS: Record<OAuthErrorCode, number> = {
  invalid_request: 400,
  invalid_client: 401,
  invalid_grant: 400,
  unauthorized_client: 400,
  unsupported_grant_type: 400,
  unsupported_response_type: 400,
  invalid_scope: 400,
  access_denied: 403,
  server_error: 500,
  temporarily_unavailable: 503,
  invalid_dpop_proof: 400,
  use_dpop_nonce: 400,
};

export class OAuthError extends Error {
  override readonly name = 'OAuthError';
  readonly status: number;
  readonly headers: Record<string, string>;

  constructor(
    readonly error: OAuthErrorCode,
    description: string,
    options: { status?: number; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(description, { cause: options.cause });
    this.status = options.status ?? OAUTH_STATUS[error];
    this.headers = options.headers ?? {};
  }

  get description(): string {
    return this.message;
  }
}

/**
 * Anything thrown inside an OAuth endpoint, as an OAuth error. Keyward's own errors keep their fixed
 * message as the description: `invalid_grant` stays itself, other client errors become `invalid_request`
 * (405 keeps its status and `Allow`), the store being down is `temporarily_unavailable` (503), anything
 * else `server_error` (500, details in the log only).
 */
export function toOAuthError(error: unknown): OAuthError {
  if (error instanceof OAuthError) return error;
  if (error instanceof StoreUnavailableError) {
    const unavailable = new KeywardError('store_unavailable');
    return new OAuthError('temporarily_unavailable', unavailable.message, { cause: error, headers: unavailable.headers });
  }
  if (!(error instanceof KeywardError)) {
    return new OAuthError('server_error', new KeywardError('internal_error').message, { cause: error });
  }
  const options = { headers: error.headers, cause: error.cause ?? error };
  if (error.code === 'invalid_grant') return new OAuthError('invalid_grant', error.message, options);
  if (error.code === 'csrf_failed') return new OAuthError('access_denied', error.message, options);
  if (error.code === 'method_not_allowed')
    return new OAuthError('invalid_request', error.message, { ...options, status: 405 });
  if (error.status === 429 || error.status === 503) {
    return new OAuthError('temporarily_unavailable', error.message, { ...options, status: error.status });
  }
  if (error.status >= 500) return new OAuthError('server_error', error.message, { ...options, status: 500 });
  return new OAuthError('invalid_request', error.message, options);
}

/** The body of an OAuth error: `error` and `error_description`, nothing else. */
export function oauthErrorBody(error: OAuthError): { error: OAuthErrorCode; error_description: string } {
  return { error: error.error, error_description: error.description };
}

/**
 * A token endpoint error (RFC 6749 §5.2): JSON, `Cache-Control: no-store` and `Pragma: no-cache` as §5.1
 * asks of every token endpoint answer, and the request id in a header (the body has no room for it).
 */
export function oauthErrorResponse(error: OAuthError, requestId: string): Response {
  const headers = new Headers(error.headers);
  headers.set('content-type', 'application/json; charset=utf-8');
  headers.set('cache-control', 'no-store');
  headers.set('pragma', 'no-cache');
  headers.set('x-content-type-options', 'nosniff');
  headers.set('x-request-id', requestId);
  return new Response(JSON.stringify(oauthErrorBody(error)), { status: error.status, headers });
}
