import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { checkCsrf } from './csrf/check';
import type { OriginPolicy } from './origin/public-origin';
import { injectCredential } from './credential/inject';
import { resolveCredential, type CredentialSources } from './credential/resolve';
import { KeywardError, errorResponse, toKeywardError } from './errors';
import { capRequestBody, readCappedBody, type CappedBody } from './forward/body';
import { clientIp } from './client/ip';
import type { Limits, LimitGrant, LimitSubject } from './limits/limits';
import { UsageReader, toUnits } from './limits/usage';
import { authorize } from './policy/authorize';
import { applyCaps, applyIdentity, parseBody, parseQuery, readTarget, serializeQuery, type RequestParts } from './policy/contract';
import { filterRequestHeaders, filterResponseHeaders, hasMethodOverride } from './forward/headers';
import { hasQueryParam } from './forward/query';
import { buildUpstreamUrl } from './forward/url';
import { decodeBody, discardBody, toResponseStream, type StreamOutcome } from './respond/body';
import { StreamScrubber } from './respond/scrub-stream';
import { scrubError } from './log/scrub';
import { matchRoute } from './route/match';
import { assertSafeSegments } from './route/segments';
import type { Session } from './session/session';
import type { SessionVerifier } from './session/verify';
import type { ResolvedCredential, Upstream } from './upstream/registry';
import type { RouteLimits } from './limits/rules';

export interface ProxyDeps {
  readonly registry: ReadonlyMap<string, Upstream>;
  readonly verifySession: SessionVerifier;
  /** Origins allowed to make state-changing calls with a cookie session (the public origin and listed ones). */
  readonly allowedOrigins: OriginPolicy;
  readonly dispatcher: Dispatcher;
  readonly logger: Logger;
  /** Called once per request, after the response body ended or was aborted. */
  readonly onComplete?: (event: ProxyEvent) => void;
  /** Per-user secret sources (BYOK keys, OAuth tokens); absent: only service keys can be used. */
  readonly credentials?: CredentialSources;
  /** Idle deadline for a client's request body. */
  readonly requestBodyIdleMs?: number;
  /** Rate limits, quotas and budgets; absent: none are enforced (tests of other steps). */
  readonly limits?: Limits;
  /** Trusted proxies appending to X-Forwarded-For (for the client IP); default 1. */
  readonly trustedProxyHops?: number;
}

export interface ProxyTarget {
  readonly upstream: string;
  readonly path: readonly string[];
}

export interface ProxyEvent {
  readonly requestId: string;
  readonly userId: string | null;
  readonly sessionId: string | null;
  readonly upstream: string;
  readonly route: string | null;
  /** Upstream origin and path actually called, never the query (it may carry a credential). */
  readonly target: string | null;
  readonly method: string;
  readonly status: number;
  readonly keyFingerprint: string | null;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly durationMs: number;
  readonly outcome: 'refused' | 'upstream_error' | StreamOutcome;
  readonly errorCode: string | null;
  readonly clientIp: string | null;
  /** Budget units charged for this call (the reported usage, or the reservation); 0 without budgets. */
  readonly units: number;
}

const NO_USER_SECRETS: CredentialSources = { userKeys: null, oauthTokens: null };
const REFUSED_METHODS = new Set(['TRACE', 'TRACK', 'CONNECT']);
const BODYLESS_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'DELETE']);

/**
 * The request's path through Keyward (DESIGN.md "The request's path"), on standard Request/Response so it
 * runs the same in a Next route handler, a plain Node server and tests.
 */
export async function handleProxy(request: Request, target: ProxyTarget, deps: ProxyDeps): Promise<Response> {
  const requestId = crypto.randomUUID();
  const started = performance.now();
  let session: Session | null = null;
  let upstream: Upstream | undefined;
  let credential: ResolvedCredential | null = null;
  let routeTemplate: string | null = null;
  let targetUrl: string | null = null;
  let body: CappedBody | null = null;
  let grant: LimitGrant | null = null;
  let forwarded = false;
  const ip = clientIp(request.headers, deps.trustedProxyHops ?? 1);

  const record = (status: number, outcome: ProxyEvent['outcome'], bytesOut: number, errorCode: string | null, usage: number | null = null) => {
    const units = grant && grant.reserved > 0 ? (forwarded ? (usage ?? grant.reserved) : 0) : 0;
    grant?.settle({ forwarded, usage }).catch(() => {});
    const event: ProxyEvent = {
      requestId,
      userId: session?.userId ?? null,
      sessionId: session?.sessionId ?? null,
      upstream: target.upstream,
      route: routeTemplate,
      target: targetUrl,
      method: request.method,
      status,
      keyFingerprint: credential?.fingerprint ?? null,
      bytesIn: body?.bytes() ?? 0,
      bytesOut,
      durationMs: Math.round((performance.now() - started) * 100) / 100,
      outcome,
      errorCode,
      clientIp: ip,
      units,
    };
    deps.logger.info({ proxy: event }, 'proxy');
    deps.onComplete?.(event);
  };

  try {
    const method = request.method.toUpperCase();
    if (REFUSED_METHODS.has(method)) throw new KeywardError('method_not_allowed');
    const incomingUrl = new URL(request.url);
    const { searchParams } = incomingUrl;
    if (hasMethodOverride(request.headers, searchParams) || hasQueryParam(searchParams, '_method')) {
      throw new KeywardError('method_override_refused');
    }
    // Tokens in URLs end up in logs, histories and Referer headers (RFC 6750 §5.3): refuse them outright.
    if (hasQueryParam(searchParams, 'access_token')) {
      throw new KeywardError('bad_request', { message: 'Tokens are not accepted in the query string.' });
    }

    // 1. Upstream: a Map lookup, so `__proto__` or `constructor` find nothing.
    upstream = deps.registry.get(target.upstream);
    if (!upstream) throw new KeywardError('upstream_not_found');

    // 2. Route: validate every decoded segment, then match a declared route.
    assertSafeSegments(target.path);
    const { route, params } = matchRoute(upstream, method, target.path);
    routeTemplate = route.template;

    // 3. Session, checked here on every request (never in proxy.ts/middleware).
    session = await deps.verifySession(request);
    if (!session) throw new KeywardError('unauthenticated');

    // 4. CSRF for cookie sessions.
    checkCsrf(request, session, deps.allowedOrigins);

    // 5. Policy: who may call this route, and the query it accepts (read before any counter moves).
    const { contract } = route;
    authorize(route, params, session);
    const parts: RequestParts = {
      query: contract.query ? parseQuery(contract.query, incomingUrl.search, incomingUrl.searchParams) : new URLSearchParams(incomingUrl.search),
      body: undefined,
    };

    // 8 (URL first, so the credential goes only where the URL was proven to go).
    const url = buildUpstreamUrl(upstream, target.path);
    targetUrl = `${url.origin}${url.pathname}`;
    const headers = filterRequestHeaders(request.headers, upstream.requestHeaders);
    headers['accept-encoding'] = 'identity';
    headers['user-agent'] = 'keyward';
    headers['x-request-id'] = requestId;

    // 7. Credential: for this user and route; the client can neither supply nor override it.
    credential = await resolveCredential(upstream, session, deps.credentials ?? NO_USER_SECRETS);

    // 6a. Rate limits, before a body is read. A call without a usable client address cannot be attributed to
    // one: per-IP rules skip it (one shared bucket would let one client use it up for all); the others apply.
    const who: LimitSubject = { upstream: upstream.id, userId: session.userId, roles: session.roles, fingerprint: credential.fingerprint, ip };
    const rateLimits = ip === null ? { ...route.limits, rate: route.limits.rate.filter((rule) => rule.by !== 'ip') } : route.limits;
    const rate = deps.limits ? await deps.limits.checkRate(rateLimits, who) : [];

    let forwardBody: AsyncIterable<Uint8Array> | Buffer | null = null;
    if (request.body && !BODYLESS_METHODS.has(method)) {
      const declared = Number(request.headers.get('content-length') ?? NaN);
      if (declared > route.maxRequestBytes) throw new KeywardError('payload_too_large');
      body = capRequestBody(request.body, route.maxRequestBytes, deps.requestBodyIdleMs ?? route.timeoutMs);
      forwardBody = body.iterable;
    }
    if (contract.body) {
      // 5b. The JSON contract: parsed, checked, and re-serialised; the client's bytes are never forwarded.
      if (!isJson(request.headers.get('content-type'))) throw new KeywardError('unsupported_media_type');
      parts.body = parseBody(contract.body, body ? (await readCappedBody(body)).toString('utf8') : '');
    }
    applyCaps(contract, session, parts);
    applyIdentity(contract, session, parts);
    if (contract.body) {
      forwardBody = Buffer.from(JSON.stringify(parts.body), 'utf8');
      headers['content-type'] = 'application/json';
    }
    const query = parts.query instanceof URLSearchParams ? parts.query : serializeQuery(parts.query);
    for (const [name, value] of query) url.searchParams.append(name, value);
    injectCredential(credential, headers, url);

    // 6b. Quotas and budgets: the worst case is reserved atomically; settled when the response ends.
    if (deps.limits) grant = await deps.limits.reserve(route.limits, who, reservation(route.limits.cost, parts), rate);

    let response: Dispatcher.ResponseData;
    forwarded = true;
    try {
      response = await deps.dispatcher.request({
        origin: upstream.origin,
        path: url.pathname + url.search,
        method: method as Dispatcher.HttpMethod,
        headers,
        body: forwardBody,
        signal: request.signal,
        headersTimeout: route.timeoutMs,
        bodyTimeout: route.timeoutMs,
        maxRedirections: 0,
      } as Dispatcher.RequestOptions);
    } catch (error) {
      // A connection that never opened carried nothing: what was reserved is returned.
      if (NOT_SENT.has((error as { code?: string } | null)?.code ?? '')) forwarded = false;
      throw upstreamFailure(error, body);
    }

    // 9. Respond.
    const { statusCode } = response;
    // A Response carries 200–599 only (undici consumes 1xx itself); 600–999 mean nothing to pass on.
    if (statusCode < 200 || statusCode > 599) {
      discardBody(response.body);
      throw new KeywardError('upstream_bad_response');
    }
    if (statusCode >= 300 && statusCode < 400 && statusCode !== 304) {
      discardBody(response.body);
      throw new KeywardError('upstream_redirect');
    }
    const secrets = credential.secrets;
    const outHeaders = filterResponseHeaders(response.headers, upstream.responseHeaders, secrets);
    outHeaders.set('cache-control', route.cacheControl);
    outHeaders.set('x-content-type-options', 'nosniff');
    outHeaders.set('x-request-id', requestId);
    for (const [name, value] of grant?.headers ?? []) outHeaders.set(name, value);

    const usageSource = route.limits.cost.usage;
    const headerUsage = usageSource && 'header' in usageSource ? toUnits(firstHeader(response.headers[usageSource.header])) : null;
    // 205 Reset Content must not carry content (RFC 9110 §15.3.6): passed on as 205, its body dropped.
    if (method === 'HEAD' || statusCode === 204 || statusCode === 205 || statusCode === 304) {
      discardBody(response.body);
      record(statusCode, 'complete', 0, null, headerUsage);
      return new Response(null, { status: statusCode, headers: outHeaders });
    }
    const usageReader =
      grant && grant.reserved > 0 && usageSource && 'json' in usageSource
        ? new UsageReader(usageSource, firstHeader(response.headers['content-type']) ?? '')
        : null;
    const encoding = response.headers['content-encoding'];
    const decoded = decodeBody(response.body, Array.isArray(encoding) ? encoding.join(',') : encoding, route.maxDecodedResponseBytes);
    const stream = toResponseStream(
      decoded,
      new StreamScrubber(secrets),
      // A body cut short (client gone, upstream broke) has not reported its usage yet, even if an early event
      // carried a partial figure: the reservation stays charged (README "Budgets reserve, then settle").
      (outcome, bytes, error) => {
        if (error) deps.logger.warn({ requestId, code: error.code }, error.message);
        record(statusCode, outcome, bytes, error?.code ?? null, usageReader ? (outcome === 'complete' ? usageReader.result() : null) : headerUsage);
      },
      usageReader,
    );
    return new Response(stream, { status: statusCode, headers: outHeaders });
  } catch (error) {
    const keywardError = toKeywardError(error);
    if (keywardError.code === 'internal_error') {
      // The cause may be a Headers/URL/undici error carrying values. The logger scrubs every service secret;
      // this call's per-user secret (own key, OAuth token) is scrubbed here.
      deps.logger.error({ err: scrubError(keywardError.cause, credential?.secrets ?? []), requestId }, 'proxy failed');
    }
    record(keywardError.status, keywardError.status >= 500 ? 'upstream_error' : 'refused', 0, keywardError.code);
    return errorResponse(keywardError, requestId);
  }
}

/** undici errors raised before a request could be written: nothing reached the upstream. */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

function isJson(contentType: string | null): boolean {
  const type = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  return type === 'application/json' || (type.startsWith('application/') && type.endsWith('+json'));
}

function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** Worst-case units for budgets: a bounding request field (e.g. max_tokens × price) when present, else `reserve`. */
function reservation(cost: RouteLimits['cost'], parts: RequestParts): number {
  if (cost.reserveFrom) {
    const value = readTarget(parts, cost.reserveFrom.field);
    if (typeof value === 'number' && Number.isFinite(value) && value >= 0) {
      return Math.min(Math.ceil(value * cost.reserveFrom.times) + cost.reserveFrom.plus, Number.MAX_SAFE_INTEGER);
    }
  }
  return cost.reserve;
}

const BAD_HEAD = new Set(['bad response', 'bad upgrade']);

/** Maps undici failures to Keyward errors. The original error (with URL and headers) is never rendered. */
function upstreamFailure(error: unknown, body: CappedBody | null): KeywardError {
  if (body?.exceeded()) return new KeywardError('payload_too_large');
  if (error instanceof KeywardError) return error;
  const code = (error as { code?: string } | null)?.code;
  const name = (error as { name?: string } | null)?.name;
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new KeywardError('upstream_timeout', { cause: error });
  }
  // The upstream answered, but not with a response that can be passed on: an unasked-for 100 or 101, a status
  // outside 100–999, a malformed head (undici's socket and parser errors say so).
  if (name === 'HTTPParserError' || (code === 'UND_ERR_SOCKET' && BAD_HEAD.has((error as Error).message))) {
    return new KeywardError('upstream_bad_response', { cause: error });
  }
  if (name === 'AbortError' || code === 'UND_ERR_ABORTED') {
    return new KeywardError('bad_request', { message: 'The client closed the request.', cause: error });
  }
  if (body && (error as { cause?: unknown })?.cause instanceof KeywardError) {
    return (error as { cause: KeywardError }).cause;
  }
  return new KeywardError('upstream_unreachable', { cause: error });
}
