import type { KeywardErrorCode } from '../core/errors';

/**
 * The two ways a call can fail once Keyward has answered. Network failures are not wrapped: `fetch` rejects with a
 * `TypeError` (no answer at all) and an abort with the signal's reason (an `AbortError` DOMException by default),
 * exactly as without the client, so code that already handles `fetch` failures keeps working.
 */

/** Keyward refused or failed the call itself: `{"error":{"code","message","requestId"}}` (README "HTTP contract"). */
export class KeywardError extends Error {
  override readonly name = 'KeywardError';
  /** One of the codes in README's error table (a newer server may send one this client does not list). */
  readonly code: KeywardErrorCode | (string & {});
  readonly status: number;
  /** Keyward's id for the call (`X-Request-Id`): what its log and audit trail are searched by. */
  readonly requestId: string | null;
  /** Seconds to wait before trying again, from `Retry-After` (429 limits, 503 `sign_in_busy`); null without one. */
  readonly retryAfter: number | null;
  /** `connection_required` only: where the user connects (or reconnects) the account the upstream needs; else null. */
  readonly connectUrl: string | null;

  constructor(init: { code: string; message: string; status: number; requestId: string | null; retryAfter: number | null; connectUrl?: string | null }) {
    super(init.message);
    this.code = init.code;
    this.status = init.status;
    this.requestId = init.requestId;
    this.retryAfter = init.retryAfter;
    this.connectUrl = init.connectUrl ?? null;
  }
}

/**
 * Any other non-2xx answer: normally the upstream API's own error, passed on by Keyward (scrubbed); also
 * whatever answers in front of Keyward (a load balancer's 502 page). The message never quotes the body.
 */
export class UpstreamError extends Error {
  override readonly name = 'UpstreamError';
  readonly status: number;
  /** The body: parsed JSON when it is JSON, else its text ('' when empty). */
  readonly body: unknown;
  readonly headers: Headers;
  /** Keyward's id for the call, when Keyward answered. */
  readonly requestId: string | null;
  readonly retryAfter: number | null;

  constructor(init: { status: number; body: unknown; headers: Headers }) {
    super(`The upstream answered ${init.status}.`);
    this.status = init.status;
    this.body = init.body;
    this.headers = init.headers;
    this.requestId = init.headers.get('x-request-id');
    this.retryAfter = parseRetryAfter(init.headers.get('retry-after'));
  }
}

/**
 * `Retry-After` in seconds (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date turned into the seconds left
 * (never negative). Null when absent or unreadable.
 */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | null {
  if (value === null) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  // Every HTTP-date form names a month; Date.parse alone would read "-5" as a year.
  const date = /[A-Za-z]/.test(trimmed) ? Date.parse(trimmed) : Number.NaN;
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - now) / 1000));
}

const ERROR_FIELDS = ['code', 'message', 'requestId'];
/** `connection_required` adds one field (README "Connected accounts"), sorted in its place. */
const CONNECT_ERROR_FIELDS = ['code', 'connectUrl', 'message', 'requestId'];

/**
 * Keyward's own error, told apart from an upstream error that looks alike: exactly `{"error":{"code","message",
 * "requestId"}}` with the body's request id equal to the `X-Request-Id` header of the same answer (an upstream's
 * `{"error":{"code","message",…}}` has other fields, and no id of this call unless it echoes the one Keyward sent
 * it). Null for anything else.
 */
export async function readKeywardError(response: Response): Promise<KeywardError | null> {
  if (response.ok || !/^application\/json\b/i.test(response.headers.get('content-type') ?? '')) return null;
  let body: unknown;
  try {
    // A clone: when this is not Keyward's error the caller still has the body to read.
    body = await response.clone().json();
  } catch {
    return null;
  }
  if (!isRecord(body) || Object.keys(body).length !== 1 || !isRecord(body.error)) return null;
  const { error } = body;
  const keys = Object.keys(error).sort();
  const fields = error.code === 'connection_required' ? CONNECT_ERROR_FIELDS : ERROR_FIELDS;
  if (keys.length !== fields.length || keys.some((key, index) => key !== fields[index])) return null;
  const { code, message, requestId, connectUrl } = error;
  if (typeof code !== 'string' || !/^[a-z_]{1,64}$/.test(code) || typeof message !== 'string') return null;
  if (!(typeof requestId === 'string' || requestId === null) || requestId !== response.headers.get('x-request-id')) return null;
  // A path on Keyward's own site, never another origin.
  if (connectUrl !== undefined && (typeof connectUrl !== 'string' || !/^\/api\/connect\/[a-z0-9-]{1,32}$/.test(connectUrl))) return null;
  return new KeywardError({
    code,
    message,
    status: response.status,
    requestId,
    retryAfter: parseRetryAfter(response.headers.get('retry-after')),
    connectUrl: connectUrl ?? null,
  });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}
