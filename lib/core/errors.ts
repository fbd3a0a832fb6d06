/**
 * One error type for the whole pipeline (the tRPC habit): code → HTTP status in one table, one renderer.
 * Messages are fixed strings written here, never text taken from an upstream, a URL or a thrown error,
 * so an error response cannot carry a secret, an upstream URL with its query, or a stack.
 */
export const ERROR_STATUS = {
  bad_request: 400,
  bad_path: 400,
  method_override_refused: 400,
  invalid_grant: 400,
  contract_violation: 400,
  unauthenticated: 401,
  reauth_required: 401,
  csrf_failed: 403,
  forbidden: 403,
  insufficient_scope: 403,
  not_owner: 403,
  credential_missing: 403,
  key_suspended: 403,
  connection_required: 403,
  upstream_not_found: 404,
  not_found: 404,
  route_not_found: 404,
  method_not_allowed: 405,
  request_timeout: 408,
  payload_too_large: 413,
  unsupported_media_type: 415,
  headers_too_large: 431,
  rate_limited: 429,
  throttled: 429,
  quota_exceeded: 429,
  budget_exceeded: 429,
  internal_error: 500,
  upstream_unreachable: 502,
  upstream_redirect: 502,
  upstream_bad_response: 502,
  credential_unavailable: 503,
  service_unavailable: 503,
  store_unavailable: 503,
  sign_in_busy: 503,
  upstream_timeout: 504,
} as const;

export type KeywardErrorCode = keyof typeof ERROR_STATUS;

/**
 * The 5xx codes that name the upstream's failure: it could not be reached, did not answer in time, or answered what
 * Keyward does not pass on (a redirect, a malformed head, a refused WebSocket handshake). Every other 5xx is
 * Keyward's own: its store, a credential it cannot use (no usable key version, an OAuth refresh that fails), an
 * internal error, a server stopping.
 */
const UPSTREAM_FAILURES: ReadonlySet<KeywardErrorCode> = new Set<KeywardErrorCode>([
  'upstream_unreachable',
  'upstream_redirect',
  'upstream_bad_response',
  'upstream_timeout',
]);

/** How a call Keyward answered with its own error is recorded (README "Audit trail"). */
export type FailureOutcome = 'refused' | 'upstream_error' | 'unavailable';

/**
 * `refused` for a 4xx; `upstream_error` when the upstream failed; `unavailable` when Keyward itself could not serve
 * the call, so that an operator chasing an outage in the audit trail, metrics or traces looks at the right party.
 */
export function failureOutcome(error: KeywardError): FailureOutcome {
  if (error.status < 500) return 'refused';
  return UPSTREAM_FAILURES.has(error.code) ? 'upstream_error' : 'unavailable';
}

const DEFAULT_MESSAGE: Record<KeywardErrorCode, string> = {
  bad_request: 'The request is not valid for this route.',
  bad_path: 'The request path contains a segment that is not allowed.',
  method_override_refused: 'Method-override headers and parameters are not accepted.',
  invalid_grant: 'The code or refresh token is invalid, expired, or already used.',
  contract_violation: "The request does not match this route's contract.",
  unauthenticated: 'Sign in first: no valid session was found.',
  reauth_required: 'Your link with the identity provider has ended; sign in again to renew it.',
  csrf_failed: 'The request failed the cross-site request forgery check.',
  forbidden: 'Your session does not allow this call.',
  insufficient_scope: 'Your session lacks a scope this route requires.',
  not_owner: 'This route only serves your own resources.',
  credential_missing: 'You have no credential for this upstream (add your key, link your account, or ask for access).',
  key_suspended: 'Your own keys are suspended after unusual activity on this account; an admin can lift the suspension.',
  connection_required: "Connect your account at this upstream's provider first (connectUrl).",
  upstream_not_found: 'No upstream with this id is configured.',
  not_found: 'Nothing with this id exists.',
  route_not_found: 'This upstream declares no route for this path.',
  method_not_allowed: 'This upstream does not declare this method for this path.',
  request_timeout: 'The request did not arrive in time.',
  payload_too_large: 'The request body is larger than this route allows.',
  unsupported_media_type: 'This route accepts only a JSON body (Content-Type: application/json).',
  headers_too_large: 'The request headers are larger than this server accepts.',
  rate_limited: 'Too many requests; try again after the time in Retry-After.',
  throttled: 'Unusual activity on this account: its calls are slowed down for a while; try again after the time in Retry-After.',
  quota_exceeded: 'The request quota for this period is used up; it renews at the time in Retry-After.',
  budget_exceeded: 'The cost budget for this period is used up; it renews at the time in Retry-After.',
  internal_error: 'Keyward failed to handle the request.',
  upstream_unreachable: 'The upstream could not be reached.',
  upstream_redirect: 'The upstream answered with a redirect, which Keyward does not follow.',
  upstream_bad_response: 'The upstream answered with a response Keyward cannot pass on.',
  credential_unavailable: 'No usable credential is configured for this upstream.',
  service_unavailable: 'Keyward is not able to serve this request right now.',
  store_unavailable: 'Keyward cannot reach its session store; try again shortly.',
  sign_in_busy: 'Too many sign-ins are being checked right now; try again after the time in Retry-After.',
  upstream_timeout: 'The upstream did not answer in time.',
};

/**
 * Headers an error carries unless whoever threw it set its own. A store outage is transient (the Redis client
 * reconnects at least every 2 s; a write lock another process holds on the SQLite file, past Keyward's short wait
 * for it, is someone's transaction or VACUUM that ends by itself), so the client is told when to try again
 * (RFC 9110 §10.2.3).
 */
const DEFAULT_HEADERS: Partial<Record<KeywardErrorCode, Readonly<Record<string, string>>>> = {
  store_unavailable: { 'retry-after': '2' },
};

export type RecordedAs = 'client_closed' | 'decoy_presented';

export class KeywardError extends Error {
  override readonly name = 'KeywardError';
  readonly code: KeywardErrorCode;
  readonly status: number;
  readonly headers: Record<string, string>;
  /** `connection_required` only: the same-origin path where the user (re)connects (README "Connected accounts"). */
  readonly connectUrl?: string;
  /**
   * A refusal recorded as something other than its code says, though answered as its code: `client_closed`, the
   * client went away before its answer (recorded `aborted`); `decoy_presented`, a decoy's refusal (answered 401
   * `unauthenticated` word for word, recorded so that the detector does not count it). lib/core/pipeline.ts.
   */
  readonly recordedAs?: RecordedAs;

  constructor(
    code: KeywardErrorCode,
    options: { message?: string; cause?: unknown; headers?: Record<string, string>; connectUrl?: string; recordedAs?: RecordedAs } = {},
  ) {
    super(options.message ?? DEFAULT_MESSAGE[code], { cause: options.cause });
    this.code = code;
    this.status = ERROR_STATUS[code];
    this.headers = options.headers ?? { ...DEFAULT_HEADERS[code] };
    if (options.connectUrl !== undefined) this.connectUrl = options.connectUrl;
    if (options.recordedAs !== undefined) this.recordedAs = options.recordedAs;
  }
}

/**
 * 404 `route_not_found` for one of Keyward's own endpoints that a setting turns on and this deployment has not set:
 * the answer names the setting (the README documents each), so whoever set the deployment up sees what is missing.
 */
export function endpointOff(what: string, setting: string): KeywardError {
  return new KeywardError('route_not_found', { message: `${what} is off on this deployment: it needs ${setting}.` });
}

/**
 * What may be said of an unexpected error where its message may not (it can quote a value): its code and system
 * call (`EROFS mkdir`), from it or the first error of its cause chain that has them, or '' when none does.
 */
export function systemErrorDetail(error: unknown): string {
  for (let depth = 0, at = error; depth < 4 && at !== null && typeof at === 'object'; depth++, at = (at as { cause?: unknown }).cause) {
    const { code, syscall } = at as { code?: unknown; syscall?: unknown };
    const detail = [code, syscall].filter((part) => typeof part === 'string' && /^[\w.-]{1,40}$/.test(part)).join(' ');
    if (detail) return detail;
  }
  return '';
}

/** Anything thrown is normalised here before it is rendered; unknown errors become `internal_error`. */
export function toKeywardError(error: unknown): KeywardError {
  if (error instanceof KeywardError) return error;
  return new KeywardError('internal_error', { cause: error });
}

export function errorResponse(error: KeywardError, requestId: string): Response {
  const connect = error.connectUrl === undefined ? {} : { connectUrl: error.connectUrl };
  const body = JSON.stringify({ error: { code: error.code, message: error.message, requestId, ...connect } });
  const headers = new Headers(error.headers);
  headers.set('content-type', 'application/json; charset=utf-8');
  headers.set('cache-control', 'private, no-store');
  headers.set('x-content-type-options', 'nosniff');
  headers.set('x-request-id', requestId);
  return new Response(body, { status: error.status, headers });
}
