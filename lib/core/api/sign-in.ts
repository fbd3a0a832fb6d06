import { clientIp } from '../client/ip';
import { KeywardError, errorResponse, toKeywardError } from '../errors';
import { DEVICE_COOKIE } from '../limits/device-cookie';
import type { Runtime } from '../runtime';
import { SESSION_COOKIE } from '../session/session';
import { withPasswordSlot } from '../users/password';
import { readCappedText, readCookie } from './guard';

/** The largest sign-in form accepted (a username, a password ≤ 1024, a CSRF token and a callback URL). */
const MAX_FORM_BYTES = 8 * 1024;

/**
 * The only body accepted for a credentials sign-in: what an HTML form sends, optionally labelled UTF-8.
 * Auth.js also parses JSON, and matches content types by substring (`text/plain; x=application/json` is
 * JSON to it): anything but this exact media type is refused before Auth.js sees it.
 */
const FORM_TYPE = /^application\/x-www-form-urlencoded\s*(;\s*charset="?utf-8"?\s*)?$/i;

/** A credentials sign-in, read once: the username the limits count, and the request Auth.js will parse. */
export interface SignInForm {
  readonly username: string | null;
  /** A fresh request carrying exactly the bytes that were checked, labelled so Auth.js parses them as a form. */
  readonly request: Request;
}

/**
 * A POST to the credentials callback, read as Auth.js reads the action (parseActionAndProviderId: the path split
 * on "/", empty parts dropped), so `/callback/credentials/` and `/callback//credentials`, which it also signs in
 * with, get the sign-in rules too (an app with `trailingSlash` or `skipTrailingSlashRedirect` lets them reach it).
 */
export function isCredentialsSignIn(request: Request): boolean {
  if (request.method !== 'POST') return false;
  return callbackOf(request) === 'credentials';
}

/** The provider of an Auth.js callback request (`…/callback/<provider>`, read as Auth.js reads it), or null. */
function callbackOf(request: Request): string | null {
  const parts = new URL(request.url).pathname.split('/').filter(Boolean);
  return parts.at(-2) === 'callback' ? (parts.at(-1) ?? null) : null;
}

/**
 * Whether Auth.js's answer changes who the browser is signed in as: a callback (the credentials form, or an OIDC
 * provider's redirect back) that signs in, or an answer that clears the session cookie and sets none (sign-out, a
 * session no longer valid). Not the renewal Auth.js sets on every session read: that is the same user.
 */
export function changesSignIn(request: Request, response: Response): boolean {
  if (signsIn(response)) return callbackOf(request) !== null;
  const cookies = sessionCookiesSet(response);
  return cookies.length > 0 && cookies.every(({ value }) => value === '');
}

/** The session cookie (or its chunks) as the answer sets them: names and values, `''` for a cookie being cleared. */
function sessionCookiesSet(response: Response): { name: string; value: string }[] {
  return response.headers.getSetCookie().flatMap((line) => {
    const pair = line.split(';', 1)[0]!;
    const index = pair.indexOf('=');
    const name = pair.slice(0, index).trim();
    const chunk = name.startsWith(`${SESSION_COOKIE}.`) && /^\d+$/.test(name.slice(SESSION_COOKIE.length + 1));
    return name === SESSION_COOKIE || chunk ? [{ name, value: pair.slice(index + 1).trim() }] : [];
  });
}

/**
 * Reads a credentials sign-in body the one way Keyward and Auth.js will both see it. Auth.js keeps the last
 * of repeated form fields and accepts JSON; the limiter must count the very username Auth.js checks, so
 * anything ambiguous is refused (400): a body that is not `application/x-www-form-urlencoded` (JSON,
 * multipart, text, another charset) and any field sent twice. The body is read here once; Auth.js then
 * parses a new request built from the same bytes, so the two can never read different values.
 */
export async function readSignInForm(request: Request): Promise<SignInForm> {
  const type = request.headers.get('content-type') ?? '';
  if (!FORM_TYPE.test(type)) {
    throw new KeywardError('bad_request', { message: 'Sign in with a form body (Content-Type: application/x-www-form-urlencoded).' });
  }
  const text = await readBounded(request, MAX_FORM_BYTES);
  const fields = new URLSearchParams(text);
  const seen = new Set<string>();
  for (const name of fields.keys()) {
    if (seen.has(name)) throw new KeywardError('bad_request', { message: 'Each sign-in field may be sent only once.' });
    seen.add(name);
  }
  const value = fields.get('username');
  return {
    username: value !== null && value.length > 0 && value.length <= 64 ? value : null,
    request: withBody(request, text, 'application/x-www-form-urlencoded'),
  };
}

/** The body as text, refused (413) past `maxBytes`: at once when it declares more, else as soon as it passes it. */
async function readBounded(request: Request, maxBytes: number): Promise<string> {
  const declared = Number(request.headers.get('content-length') ?? NaN);
  if (declared > maxBytes) throw new KeywardError('payload_too_large');
  return readCappedText(request, maxBytes, () => new KeywardError('payload_too_large'));
}

/** The same request with the body already read (and checked): what Auth.js is handed, so it parses those bytes. */
function withBody(request: Request, text: string, contentType?: string): Request {
  const headers = new Headers(request.headers);
  if (contentType) headers.set('content-type', contentType);
  headers.delete('content-length');
  headers.delete('transfer-encoding');
  return new Request(request.url, { method: request.method, headers, body: text, signal: request.signal });
}


/** Sign-out, a session update, an OIDC `form_post` callback: a few hundred bytes, a few KiB at most. */
const MAX_AUTH_POST_BYTES = 16 * 1024;

/**
 * An Auth.js POST other than the credentials callback, its body read under MAX_AUTH_POST_BYTES (413 past it,
 * chunked or not): Auth.js reads a body whole, whatever its size, before it checks its CSRF token, so without
 * this anyone could make the server hold a body of any size, several times over, without signing in.
 */
async function boundedAuthRequest(request: Request): Promise<Request> {
  if (!request.body) return request;
  return withBody(request, await readBounded(request, MAX_AUTH_POST_BYTES));
}

/**
 * Limits local sign-in attempts (OWASP ASVS 2.2.1) before Auth.js checks the password: per client IP, and
 * per username so that spreading guesses over many addresses does not help, or per device instead of per
 * username for a browser that holds a device cookie for that username (`device`, see deviceOf). Throws 429
 * `rate_limited` (or 503 `store_unavailable` if the store is down: fail closed).
 */
export async function limitSignIn(
  request: Request,
  username: string | null,
  runtime: Pick<Runtime, 'limits' | 'settings'>,
  device: string | null = null,
): Promise<void> {
  const { settings } = runtime;
  await runtime.limits.checkSignIn(
    clientIp(request.headers, settings.KEYWARD_TRUSTED_PROXY_HOPS),
    username,
    settings.KEYWARD_SIGNIN_MAX_ATTEMPTS,
    settings.KEYWARD_SIGNIN_WINDOW_SECONDS,
    device,
  );
}

/**
 * The id of the device cookie the request carries, when it is a valid one for the username tried; else null
 * (no cookie, or one that is malformed, forged, expired or another username's: never an error).
 */
function deviceOf(request: Request, username: string | null, runtime: Pick<Runtime, 'deviceCookies'>): string | null {
  return username === null ? null : runtime.deviceCookies.deviceOf(readCookie(request, DEVICE_COOKIE), username);
}

/**
 * Whether Auth.js's answer signs the browser in: it sets the session cookie to a value, whole or as its first
 * chunk (`.0`, when Auth.js splits a large one). A refused password is a redirect to the error page without it;
 * a cookie being cleared (`name=;`) is no sign-in.
 */
function signsIn(response: Response): boolean {
  return sessionCookiesSet(response).some(
    ({ name, value }) => (name === SESSION_COOKIE || name === `${SESSION_COOKIE}.0`) && value !== '',
  );
}

/**
 * Auth.js's answer to a successful sign-in, with a new device cookie for the username (a fresh nonce each time),
 * unless the user left the users file meanwhile.
 */
function withDeviceCookie(response: Response, username: string, runtime: Pick<Runtime, 'deviceCookies'>): Response {
  const cookie = runtime.deviceCookies.issue(username);
  if (cookie === null) return response;
  const headers = new Headers(response.headers);
  headers.append('set-cookie', cookie);
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

/**
 * Auth.js's POST handler with Keyward's sign-in rules in front of the credentials callback: one unambiguous
 * form body (readSignInForm), the attempt limits (per device for a browser with a device cookie for the
 * username), then a password slot held for the whole Auth.js request (lib/core/users/password.ts), so a flood
 * gets 503 `sign_in_busy` with Retry-After instead of taking the thread pool; a sign-in that succeeds also
 * sets a new device cookie. Other Auth.js POSTs (sign-out, session update, OIDC callbacks) go through with
 * their body read under a cap first (boundedAuthRequest).
 */
export async function handleSignInPost(
  request: Request,
  runtime: Pick<Runtime, 'limits' | 'settings' | 'logger' | 'deviceCookies'>,
  authPost: (request: Request) => Promise<Response>,
): Promise<Response> {
  if (!isCredentialsSignIn(request)) {
    let bounded: Request;
    try {
      bounded = await boundedAuthRequest(request);
    } catch (error) {
      return errorResponse(toKeywardError(error), crypto.randomUUID());
    }
    return authPost(bounded);
  }
  try {
    const { username, request: forAuth } = await readSignInForm(request);
    await limitSignIn(request, username, runtime, deviceOf(request, username, runtime));
    const response = await withPasswordSlot(() => authPost(forAuth), request.signal);
    return username !== null && signsIn(response) ? withDeviceCookie(response, username, runtime) : response;
  } catch (error) {
    const keywardError = toKeywardError(error);
    const requestId = crypto.randomUUID();
    // A full queue is the bound working as intended; it is not logged once per refused attempt.
    if (keywardError.status >= 500 && keywardError.code !== 'sign_in_busy' && !request.signal.aborted) {
      runtime.logger.error({ err: keywardError.cause ?? keywardError, requestId }, 'sign-in failed');
    }
    return errorResponse(keywardError, requestId);
  }
}
