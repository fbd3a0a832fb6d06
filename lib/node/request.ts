import type { IncomingMessage } from 'node:http';
import { ReadableStream } from 'node:stream/web';
import { KeywardError } from '@/lib/core/errors';
import { refuseCall, type ProxyDeps } from '@/lib/core/pipeline';
import type { CoreRequest } from '@/lib/core/request';

/** Methods whose request never carries content the core would read (it forwards none for them). */
const NO_BODY = new Set(['GET', 'HEAD']);

/**
 * The client's request as the core reads it (lib/core/request.ts), without copying it: the headers as received
 * (`rawHeaders`, repeated ones kept), the body as a stream over the socket (read only when the core forwards
 * it, under its byte cap), and `signal`, which the caller aborts when the client goes away. Not a WHATWG
 * `Request`: building one validated and copied the headers a second time and followed the signal, the largest
 * cost of this translation. Node's parser already accepts only well-formed methods and request targets, and the
 * headers are checked as fetch checks them (`Headers.append`).
 *
 * `url`'s origin is the internal `http://localhost:<port>` that Next also gives route handlers: the core never takes
 * the public origin from `request.url` (AUTH_URL, or the trusted Host headers; lib/core/origin/public-origin.ts),
 * so both doors hand it the same thing. As Next does, `X-Forwarded-For` is set to the socket's address when the
 * client sent none, so KEYWARD_TRUSTED_PROXY_HOPS means the same behind either door.
 *
 * Throws (a TypeError) on a header value fetch refuses; the message may carry the value, never render it.
 */
export function toRequest(req: IncomingMessage, url: string, signal: AbortSignal): CoreRequest {
  const headers = readHeaders(req);
  const method = req.method ?? 'GET';
  const body = hasContent(req) && !NO_BODY.has(method.toUpperCase()) ? bodyStream(req) : null;
  return { method, url, headers, body, signal };
}

/**
 * The request body as a web stream that reads the socket only when the core pulls (highWaterMark 0: nothing read
 * ahead beyond Node's own socket buffer) and hands on Node's chunks as they are. `Readable.toWeb` copied every
 * chunk into a new Uint8Array (to detach it from Node's buffer pool, which socket reads do not use): a second
 * allocation per 64 KiB that only the next GC frees (bench --big upload). Cancelling (the byte cap, the core
 * giving up) destroys `req`, as toWeb did.
 */
function bodyStream(req: IncomingMessage): CoreRequest['body'] {
  return ReadableStream.from(req as AsyncIterable<Uint8Array>) as CoreRequest['body'];
}

/**
 * The names Node keeps once, discarding repeats (IncomingMessage.headers, documented): Next builds its Request
 * from those, so a repeated `Content-Type` or `Authorization` reads the same behind both doors.
 */
const FIRST_ONLY = new Set([
  'age',
  'authorization',
  'content-length',
  'content-type',
  'etag',
  'expires',
  'from',
  'host',
  'if-modified-since',
  'if-unmodified-since',
  'last-modified',
  'location',
  'max-forwards',
  'proxy-authorization',
  'referer',
  'retry-after',
  'server',
  'user-agent',
]);

/**
 * The headers as received, in order, repeated names joined as Node joins them for `req.headers` (and so as
 * Next's route handlers see them): the first kept for FIRST_ONLY names, cookies joined with `; `, others with
 * `, `. `X-Forwarded-For` is filled in from the socket when absent (see toRequest). Throws as toRequest does.
 */
export function readHeaders(req: IncomingMessage): Headers {
  const headers = new Headers();
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    const seen = headers.get(name);
    if (seen === null) headers.append(name, value);
    else {
      const lower = name.toLowerCase();
      if (lower === 'cookie') headers.set(name, `${seen}; ${value}`);
      else if (!FIRST_ONLY.has(lower)) headers.append(name, value);
    }
  }
  const fallback = forwardedForFallback(req);
  if (fallback) headers.set('x-forwarded-for', fallback);
  return headers;
}

/**
 * The `X-Forwarded-For` a request gets when it has none: the socket's address, Next's own rule (`??=`), so the
 * core behind the fast lane and Next's process behind it see the same value. Undefined when the client sent one.
 */
export function forwardedForFallback(req: IncomingMessage): string | undefined {
  return req.headers['x-forwarded-for'] === undefined ? req.socket.remoteAddress : undefined;
}

/** A request has content when it says so: Content-Length above 0, or a Transfer-Encoding (RFC 9112 §6.3). */
export function hasContent(req: IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  const length = req.headers['content-length'];
  return length !== undefined && length !== '0';
}

/** The client's headers for a refusal's record (its address); none when fetch refuses one of them. */
export function headersOrNone(req: IncomingMessage): Headers {
  try {
    return readHeaders(req);
  } catch {
    return new Headers();
  }
}

/**
 * The answer to a path that is `/api/proxy/…` only once normalised (isDisguisedProxyPath): 400 `bad_path`,
 * recorded, the same on the HTTP door and for a WebSocket upgrade, never handed to Next's process.
 */
export function disguisedPathRefusal(req: IncomingMessage, deps: ProxyDeps): Response {
  return refuseCall(req.method ?? 'GET', headersOrNone(req), { upstream: '', path: [] }, deps, new KeywardError('bad_path'));
}
