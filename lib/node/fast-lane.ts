import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { handleMetrics, type MetricsRuntime } from '@/lib/core/api/metrics';
import { ERROR_STATUS, KeywardError, errorResponse } from '@/lib/core/errors';
import { isRefusedMethod, proxyCall, refusedMethod, refuseCall, type ProxyDeps } from '@/lib/core/pipeline';
import { getLogger } from '@/lib/core/log/logger';
import type { CoreRequest } from '@/lib/core/request';
import type { ServingCalls } from '@/lib/core/shutdown';
import { isDisguisedProxyPath, originFormTarget, parseProxyPath, type ProxyPath } from './proxy-path';
import { disguisedPathRefusal, headersOrNone, readHeaders, toRequest } from './request';
import { endSocketWith, writeResponse } from './response';

export interface FastLaneOptions {
  /** The same runtime the route handlers build (lib/node/runtime.ts). */
  readonly deps: ProxyDeps;
  /** The origin given to the core's Request (`http://localhost:<port>`, as Next gives route handlers). */
  readonly origin: () => string;
  /** Where every request outside /api/proxy goes (server.ts: Next's process, `NextProcess.web`). */
  readonly next: (req: IncomingMessage, res: ServerResponse) => unknown;
  /** Headers next.config.ts adds to every response (its `source: '/:path*'` rules), so both doors send them. */
  readonly siteHeaders?: readonly (readonly [string, string])[];
  /** What it adds to `/api/proxy/*` answers (the site's, then its `/api/proxy/:path*` rule's); `siteHeaders` when absent. */
  readonly proxyHeaders?: readonly (readonly [string, string])[];
  /**
   * When given, `/api/metrics` is answered here from this runtime rather than by Next: with Next in a process of
   * its own (server.ts), this process is the one that counts the proxied calls.
   */
  readonly metrics?: MetricsRuntime;
  /** Counts the proxied calls (and the requests handed to Next) being served, so a shutdown can wait for them. */
  readonly serving?: ServingCalls;
}

/**
 * The fast lane (DESIGN.md "Two entry points, one core"): `/api/proxy/*` goes to the core (`proxyCall`) directly, every
 * other request to Next. A translation layer in the manner of tRPC's node-http adapter, with no step of its
 * own: authentication, CSRF, policy, limits, credentials, errors and the audit record all happen in the core.
 */
export function createFastLane(options: FastLaneOptions): RequestListener {
  const { deps, next } = options;
  const siteHeaders = options.siteHeaders ?? [];
  const proxyHeaders = options.proxyHeaders ?? siteHeaders;
  return (req, res) => {
    const url = req.url ?? '/';
    const proxyPath = parseProxyPath(url);
    if (proxyPath !== null) {
      const call = serveProxy(req, res, proxyPath, deps, options.origin(), proxyHeaders).catch((error: unknown) => failed(error, res));
      options.serving?.track(call);
    } else if (isDisguisedProxyPath(url)) {
      writeResponse(disguisedPathRefusal(req, deps), res, siteHeaders).catch((error: unknown) => failed(error, res));
    } else if (options.metrics && isMetricsTarget(url)) {
      serveMetrics(req, res, options.metrics, options.origin(), siteHeaders).catch((error: unknown) => failed(error, res));
    } else if (isUndecodableApiPath(url)) {
      // Next would fail to decode the segment for the route's params and answer a plain-text 500, before the
      // route's handler (and its JSON errors) ever ran: anyone, signed in or not, could make 5xx errors so.
      writeResponse(errorResponse(new KeywardError('bad_path'), crypto.randomUUID()), res, siteHeaders).catch((error: unknown) => failed(error, res));
    } else {
      // Counted as a proxied call is, so a stop lets what Next is serving (a sign-in, a page) end too before it
      // cuts the connections: `next start` lets its open responses end.
      options.serving?.track(new Promise<void>((resolve) => res.once('close', resolve)));
      try {
        next(req, res);
      } catch (error) {
        // Whatever the hand-off to Next throws fails this request, never the process.
        failed(error, res);
      }
    }
  };
}

/**
 * Whether the target (origin or absolute form: Next is handed the latter as its path) is under `/api/` and its
 * path is not well-formed percent-encoded UTF-8.
 */
function isUndecodableApiPath(url: string): boolean {
  const target = originFormTarget(url);
  if (target === null || !target.startsWith('/api/')) return false;
  const query = target.indexOf('?');
  try {
    decodeURIComponent(query === -1 ? target : target.slice(0, query));
    return false;
  } catch {
    return true;
  }
}

/** Only a bug in this file gets here (the core answers every failure itself): no detail to the client. */
function failed(error: unknown, res: ServerResponse): void {
  getLogger().error({ err: error instanceof Error ? error.name : 'unknown' }, 'fast lane failed');
  if (!res.headersSent) {
    res.writeHead(500, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'private, no-store' });
    res.end(JSON.stringify({ error: { code: 'internal_error', message: 'Keyward failed to handle the request.', requestId: null } }));
  } else {
    res.destroy();
  }
}

const METRICS_PATH = '/api/metrics';

/**
 * Whether the target is `/api/metrics` (with or without a query), in origin or absolute form: Next routes both
 * (it is handed the latter as its path), so an absolute-form scrape left to Next would be answered there with
 * Next's process's counts alone, without the calls this process served.
 */
function isMetricsTarget(url: string): boolean {
  const target = originFormTarget(url);
  return target === METRICS_PATH || target?.startsWith(`${METRICS_PATH}?`) === true;
}

/** GET /api/metrics through the same handler as app/api/metrics/route.ts (token, 404 without the setting, 405). */
async function serveMetrics(
  req: IncomingMessage,
  res: ServerResponse,
  runtime: MetricsRuntime,
  origin: string,
  siteHeaders: readonly (readonly [string, string])[],
): Promise<void> {
  let headers: Headers;
  try {
    headers = readHeaders(req);
  } catch {
    headers = new Headers();
  }
  // HEAD is answered as GET without the body, as Next answers it for a route that exports GET. Any other method
  // is 405 from the handler, which reads no body: it is handed POST, a method every Request accepts.
  const head = req.method === 'HEAD';
  const request = new Request(origin + (originFormTarget(req.url ?? METRICS_PATH) ?? METRICS_PATH), { method: head || req.method === 'GET' ? req.method : 'POST', headers });
  const response = await handleMetrics(request, runtime);
  await writeResponse(head ? new Response(null, response) : response, res, siteHeaders);
}

async function serveProxy(
  req: IncomingMessage,
  res: ServerResponse,
  { target, path, search }: ProxyPath,
  deps: ProxyDeps,
  origin: string,
  siteHeaders: readonly (readonly [string, string])[],
): Promise<void> {
  const method = req.method ?? 'GET';
  if (isRefusedMethod(method)) {
    await writeResponse(refuseCall(method, headersOrNone(req), target, deps, refusedMethod(target, deps)), res, siteHeaders);
    return;
  }
  // The client going away before its response is complete aborts the upstream call (and the body read).
  const controller = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) controller.abort();
  });
  let request: CoreRequest;
  try {
    request = toRequest(req, origin + path + search, controller.signal);
  } catch {
    // A header value fetch refuses (Node's parser let it through). The error's message may carry the value.
    const refusal = new KeywardError('bad_request', { message: 'The request carries a header value that is not allowed.' });
    await writeResponse(refuseCall(method, new Headers(), target, deps, refusal), res, siteHeaders);
    return;
  }
  await writeResponse(await proxyCall(request, target, deps), res, siteHeaders);
}

/**
 * CONNECT never reaches a 'request' listener (Node hands it over as a tunnel) and fetch's Request cannot carry
 * it: on /api/proxy it is refused like TRACE, written to the socket by hand; elsewhere the connection is closed,
 * as under `next start`.
 */
export function createConnectRefusal(deps: ProxyDeps, siteHeaders: readonly (readonly [string, string])[] = []) {
  return (req: IncomingMessage, socket: Duplex): void => {
    socket.on('error', () => {});
    const proxyPath = parseProxyPath(req.url ?? '/');
    if (proxyPath === null) {
      socket.destroy();
      return;
    }
    const response = refuseCall(req.method ?? 'CONNECT', headersOrNone(req), proxyPath.target, deps, refusedMethod(proxyPath.target, deps));
    void endSocketWith(socket, response, siteHeaders);
  };
}

/**
 * Node's own 'clientError': a request its HTTP parser refused before any listener saw it (both Content-Length and
 * Transfer-Encoding, a Content-Length that is no number, `TRACK` and other methods it does not know, a request
 * target of `*`, headers past its 16 KiB, a request that took too long to arrive). Node would answer with a bare
 * status line; this answers with Keyward's JSON error (400 `bad_request`, 431 `headers_too_large`, 408
 * `request_timeout`) and logs it. Nothing was read past the head, nothing was forwarded, no session was looked at.
 */
export function createClientErrorAnswer(siteHeaders: readonly (readonly [string, string])[] = []) {
  return (error: Error & { code?: string }, socket: Duplex): void => {
    socket.on('error', () => {});
    // A response already under way on this connection (a pipelined request after it failed), or a socket the
    // client has closed: nothing can be answered.
    const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (error.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
      socket.destroy();
      return;
    }
    const code = error.code === 'HPE_HEADER_OVERFLOW' ? 'headers_too_large' : error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'request_timeout' : 'bad_request';
    const requestId = crypto.randomUUID();
    getLogger().info({ requestId, status: ERROR_STATUS[code], errorCode: code, parserError: error.code ?? 'unknown' }, 'request refused by the HTTP parser');
    void endSocketWith(socket, errorResponse(new KeywardError(code), requestId), siteHeaders);
  };
}
