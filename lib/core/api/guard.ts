import { parseCookie } from 'cookie';
import { checkCsrf } from '../csrf/check';
import { KeywardError, errorResponse, toKeywardError } from '../errors';
import type { Runtime } from '../runtime';
import type { Session } from '../session/session';
import { StoreUnavailableError } from '../../store/types';

/** The caller's session for Keyward's own API routes: same checks as the proxy (session, then CSRF). */
export async function requireSession(request: Request, runtime: Pick<Runtime, 'verifySession' | 'allowedOrigins'>): Promise<Session> {
  const session = await runtime.verifySession(request);
  if (!session) throw new KeywardError('unauthenticated');
  checkCsrf(request, session, runtime.allowedOrigins);
  return session;
}

/**
 * Runs an API handler; any thrown error becomes the documented JSON error (logged when unexpected). A store
 * failure that reached here without guard() is still 503 `store_unavailable` (fail closed), never a 500.
 */
export async function apiHandler(runtime: Pick<Runtime, 'logger'>, handle: () => Promise<Response>): Promise<Response> {
  try {
    return await handle();
  } catch (error) {
    let keywardError =
      error instanceof StoreUnavailableError ? new KeywardError('store_unavailable', { cause: error }) : toKeywardError(error);
    // The default 405 text speaks of an upstream's routes: Keyward's own endpoints say it of themselves.
    if (keywardError.code === 'method_not_allowed') keywardError = endpointMethodRefusal(keywardError.headers.allow ?? '');
    const requestId = crypto.randomUUID();
    if (keywardError.status >= 500) runtime.logger.error({ err: keywardError.cause ?? keywardError, requestId }, 'api failed');
    return errorResponse(keywardError, requestId);
  }
}

/** 405 from one of Keyward's own endpoints (not a proxied route), with the methods it takes. */
export function endpointMethodRefusal(allow: string): KeywardError {
  return new KeywardError('method_not_allowed', { message: 'This endpoint does not take this method.', headers: { allow } });
}

export function json(body: unknown, status = 200): Response {
  return Response.json(body, { status, headers: { 'cache-control': 'private, no-store', 'x-content-type-options': 'nosniff' } });
}

/** Reads a small JSON object body (refuses other content types and anything over `maxBytes`). */
export async function readJsonObject(request: Request, maxBytes = 16 * 1024): Promise<Record<string, unknown>> {
  const type = request.headers.get('content-type') ?? '';
  if (!/^application\/json\b/i.test(type)) throw new KeywardError('bad_request', { message: 'Send a JSON body (content-type: application/json).' });
  const declared = Number(request.headers.get('content-length') ?? NaN);
  if (declared > maxBytes) throw new KeywardError('payload_too_large');
  // Capped as it streams: a chunked body declares no length, and some callers need no session (the token endpoint).
  const text = await readCappedText(request, maxBytes, () => new KeywardError('payload_too_large'));
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new KeywardError('bad_request', { message: 'The body is not valid JSON.' });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new KeywardError('bad_request', { message: 'The body must be a JSON object.' });
  }
  return value as Record<string, unknown>;
}

/**
 * The body as UTF-8 text, refused with `tooLarge()` as soon as it passes `maxBytes`, chunked or not (a declared
 * Content-Length is not trusted): for the small form posts Keyward reads itself (sign-in, back-channel logout).
 * A body that breaks off (the client hung up mid-upload) is `broken()`: the client's doing, a 400, never
 * "unexpected failure" (a 500 and an error-level log line anyone could cause without signing in).
 */
export async function readCappedText(
  request: Request,
  maxBytes: number,
  tooLarge: () => Error,
  broken: (cause: unknown) => Error = (cause) => new KeywardError('bad_request', { message: 'The request body broke off before its end.', cause }),
): Promise<string> {
  if (!request.body) return '';
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for await (const chunk of request.body as unknown as AsyncIterable<Uint8Array>) {
      size += chunk.byteLength;
      if (size > maxBytes) break;
      chunks.push(chunk);
    }
  } catch (error) {
    throw broken(error);
  }
  if (size > maxBytes) throw tooLarge();
  return Buffer.concat(chunks).toString('utf8');
}

/** One cookie's value from the Cookie header (the first of that name), or null. */
export function readCookie(request: Request, name: string): string | null {
  return cookieIn(request.headers.get('cookie'), name);
}

/**
 * readCookie on a Cookie header as it is (a server component's `headers()`), parsed as the session cookie is (the
 * `cookie` package: only spaces and tabs around a name). `String.trim()` would also strip U+00A0 and U+FEFF, so
 * `\u00a0__Host-x`, a cookie any sibling subdomain may set (to the browser it is no `__Host-` cookie), would be
 * read as `__Host-x`.
 */
export function cookieIn(header: string | null, name: string): string | null {
  const value = header === null ? undefined : parseCookie(header)[name];
  return value === undefined || value === '' ? null : value;
}

/**
 * A read-only endpoint's methods: GET, and HEAD, which Next answers by running a route's GET and sending no body
 * (and the fast lane the same way). Anything else is 405 with `Allow: GET, HEAD`.
 */
export function requireRead(request: Request): void {
  if (request.method !== 'GET' && request.method !== 'HEAD') throw new KeywardError('method_not_allowed', { headers: { allow: 'GET, HEAD' } });
}
