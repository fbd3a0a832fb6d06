import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { checkCsrf } from './csrf/check';
import type { OriginPolicy } from './origin/public-origin';
import { injectCredential } from './credential/inject';
import { signRequest } from './credential/sign';
import type { CredentialSources } from './credential/resolve';
import { KeywardError, errorResponse, failureOutcome, toKeywardError, type FailureOutcome } from './errors';
import { BODYLESS_METHODS, capRequestBody, clientClosed, isClientClosed, type CappedBody } from './forward/body';
import { QUEUE_TIMEOUT } from './forward/queue-deadline';
import { clientIp } from './client/ip';
import type { RateLimiterRes } from 'rate-limiter-flexible';
import type { Limits, LimitGrant, LimitSubject } from './limits/limits';
import { UsageReader, numberAt, pricedUsage, ratesFor, sumAt, toUnits, type TokenPrice, type UsageRead } from './limits/usage';
import { authorize } from './policy/authorize';
import { readContractBody } from './policy/body';
import { applyCaps, applyIdentity, parseQuery, readTarget, refuseQueryTwins, serializeQuery, type RequestParts } from './policy/contract';
import { filterRequestHeaders, filterResponseHeaders, guardActiveContent, hasMethodOverride } from './forward/headers';
import { hasQueryParam } from './forward/query';
import { buildUpstreamUrl } from './forward/url';
import { decodeBody, discardBody, ProxiedBody, type StreamOutcome } from './respond/body';
import { EventStreamBoundaries } from './respond/event-stream';
import { EchoTally, type EchoedSecret } from './respond/echoes';
import { rewriteLinks, type LinkContext } from './respond/links';
import { StreamScrubber } from './respond/scrub-stream';
import { scrubError } from './log/scrub';
import { matchRoute, type RouteMatch } from './route/match';
import { assertSafeSegments } from './route/segments';
import type { SessionRevocations } from './session/revocation';
import type { Session } from './session/session';
import type { SessionVerifier } from './session/verify';
import { storeRound, type RoundOutcome } from './store/round';
import { withSecrets, type CompiledRoute, type ResolvedCredential, type Upstream } from './upstream/registry';
import type { RateRule, RouteLimits } from './limits/rules';
import { throttleKey, throttleRule } from './detect/marks';
import type { Store } from '../store/types';
import type { CostConfig } from './config/policy';
import { findDecoyInRequest, raiseDecoyHit, type DecoySet } from './detect/decoys';
import type { SecuritySignals } from './detect/signals';
import type { CoreRequest } from './request';
import type { Span } from '@opentelemetry/api';
import { genAiUsageReader, traceGenAiRequest, type GenAiUsage } from './observe/gen-ai';
import { UNKNOWN_UPSTREAM, type ProxyMetrics } from './observe/metrics';
import { endCallSpan, setGenAiUsage, startCallSpan } from './observe/trace';
import type { HeldSecrets } from './respond/held-secrets';

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
  /** Prometheus metrics, counted from each call's record (lib/core/observe/metrics.ts); absent: none. */
  readonly metrics?: ProxyMetrics;
  /** Decoy credentials to recognise in requests (KEYWARD_DECOYS_FILE, lib/core/detect/decoys.ts); absent: nothing is scanned. */
  readonly decoys?: DecoySet;
  /** Where security signals (a decoy presented) go: the anomaly detector (lib/core/detect/signals.ts); absent: logged only. */
  readonly signals?: SecuritySignals;
  /** Where the anomaly detector's throttle marks are (lib/core/detect/marks.ts), read with step 8; absent: none. */
  readonly throttleStore?: Store;
  /**
   * Every secret Keyward holds (its own, each upstream's keys, client and webhook secrets, each managed key
   * version once this process added or opened it): each answer is scrubbed of them all, besides the call's own
   * credential (`withHeldSecrets`, read as they are when the call gets its credential); absent: of that
   * credential only.
   */
  readonly heldSecrets?: HeldSecrets;
  /**
   * The clock (epoch ms) that times a call's store round trip (step 8) against its forwarding, which checks the
   * session and the credential again past RECHECK_AFTER_MS (`recheckBeforeForward`); default Date.now.
   */
  readonly now?: () => number;
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
  readonly outcome: FailureOutcome | StreamOutcome;
  readonly errorCode: string | null;
  readonly clientIp: string | null;
  /** Budget units charged for this call (the reported usage, or the reservation); 0 without budgets. */
  readonly units: number;
  /** How many times the leak scrubber replaced a secret in this call's response (the upstream echoed its key). */
  readonly scrubberHits: number;
  /**
   * With scrubber hits, which secrets they were (never a value): the call's own credential, another key Keyward
   * holds (by upstream and fingerprint) or a Keyward setting (by name), with each one's hits. Absent without hits.
   */
  readonly echoed?: readonly EchoedSecret[];
}

const NO_USER_SECRETS: CredentialSources = { userKeys: null, oauthTokens: null };
const REFUSED_METHODS = new Set(['TRACE', 'TRACK', 'CONNECT']);
/** Answers a client reads as they come (SSE, newline-delimited JSON, AWS's event stream), by their media type. */
const STREAMED_TYPES = ['text/event-stream', 'application/x-ndjson', 'application/jsonl', 'application/vnd.amazon.eventstream'];

/**
 * The request's path through Keyward (DESIGN.md "The request's path"), on standard Request/Response so it
 * runs the same in a Next route handler, the fast lane's Node server (lib/node) and tests.
 *
 * The steps are numbered in the order they run; DESIGN.md's number for each is in brackets. The order differs
 * from DESIGN.md's list where one step needs another's result, or where running it earlier costs less:
 * - decoy keys (README "Decoy keys") are looked for first, with step 1's screening, so that no step refuses a
 *   call that presents one for another reason first; the body is watched for them as step 10 reads it;
 * - the upstream URL is built and proven (7) before a credential exists (8), so a key only ever goes where its
 *   upstream's fixed base allows;
 * - the credential is resolved (8) before rate limits (9), because limits may count per key (its fingerprint);
 * - rate limits are taken (9) before the body is read (10): a caller over its rate is refused at its headers,
 *   so a flood of large uploads costs neither bandwidth nor parsing, and a call later refused by the contract
 *   still counts as an attempt;
 * - quotas and budgets are reserved (12) only after the body was read and checked (10): the reservation can be
 *   computed from a body field (`max_tokens` × price), and a refused call never holds units.
 * - a request signature (13, `aws-sigv4`, `hmac`) is computed last, just before forwarding: over exactly what is
 *   sent, and a call refused by its budget has not had its streamed body read whole to be signed.
 * The audit record (15) is written once per call: when the response body ends or is aborted, or at once for a
 * refusal, off the request's path (queued, written in batches).
 *
 * The store is asked once per call (issue 12): the session's revocation (4), the credential's state (8: a
 * service key's ring state, or a user's own key or OAuth token with what refuses it) and the rate counters (9)
 * go out together at step 8, as one Redis script, and no counter moves for a revoked session. Steps 5–7 read nothing and change nothing, so running them before the session's revocation is known
 * changes no outcome: a call they refuse first learns whether its session was revoked (then it is 401, as
 * before; `revokedFirst`). Quotas and budgets (12) need the body, so a route with them takes a second round trip.
 * A call sent upstream more than RECHECK_AFTER_MS after step 8's round trip (a slow body, a wait for a slot) reads
 * the session's revocation and its credential again just before (13, `recheckBeforeForward`).
 */
export async function handleProxy(request: CoreRequest, target: ProxyTarget, deps: ProxyDeps): Promise<Response> {
  return toWebResponse(await proxyCall(request, target, deps));
}

/**
 * What a proxied call answers, before it becomes a `Response`: its status, headers and the body still to be
 * read (step 14). A refusal is a `Response` already (Keyward's JSON error).
 */
export interface ProxiedResponse {
  readonly status: number;
  readonly headers: Headers;
  readonly body: ProxiedBody | null;
}

/** A call's answer as a `Response` (route handlers). */
export function toWebResponse(answer: Response | ProxiedResponse): Response {
  if (answer instanceof Response) return answer;
  return new Response(answer.body?.stream() ?? null, { status: answer.status, headers: answer.headers });
}

/**
 * handleProxy's steps, answering a proxied call as its parts: the fast lane (lib/node) writes them to the client
 * directly, without a `Response` and its web stream; handleProxy wraps them in one.
 */
export async function proxyCall(request: CoreRequest, target: ProxyTarget, deps: ProxyDeps): Promise<Response | ProxiedResponse> {
  const call = openCall(request.method, request.headers, target, deps);
  try {
    screenDecoys(call, request); // 1 [2]
    const incoming = screen(call, request); // 1 [2]
    const upstream = findUpstream(call); // 2 [1]
    const { route, params } = findRoute(call, upstream); // 3 [2]
    const session = await authenticate(call, request, 'with-round'); // 4 [3]
    checkCsrf(request, session, deps.allowedOrigins); // 5 [4]
    const parts = authorizeCall(route, params, session, incoming); // 6 [5]
    const outgoing = buildTarget(call, request, upstream); // 7 [8]
    const credential = await resolveCallCredential(call, upstream, session); // 8 [7]
    const limited = await checkRateLimits(call, upstream, route, session, credential); // 9 [6]
    await holdCallSlot(call, request, upstream, route, session); // 9 [6]
    const content = await prepareContent(call, request, route, session, parts, outgoing); // 10 [5]
    if (route.genAi) traceGenAiRequest(call.span, route.genAi, params, parts); // span attributes only
    injectCredential(credential, outgoing.headers, outgoing.url); // 11 [7]
    await reserveBudget(call, route, parts, limited, content); // 12 [6]
    const body = await signCall(call, request, credential, outgoing, content); // 13 [7]
    await recheckBeforeForward(call, upstream, session, credential); // 13 [3, 7]
    const response = await forward(call, request, upstream, route, outgoing, body); // 13 [8]
    const answer = await respond(call, request, upstream, route, credential, response); // 14 [9], then 15 [10] when the body ends
    if (answer.status === 401) checkRefusedToken(call, upstream, session, credential);
    return answer;
  } catch (error) {
    call.release?.();
    return refuse(call, await refusalOf(call, request, error), request.signal?.aborted === true); // 15 [10]
  }
}

/** Whether step 1 refuses this method outright. fetch's Request cannot even carry these (TRACE, TRACK, CONNECT). */
export function isRefusedMethod(method: string): boolean {
  return REFUSED_METHODS.has(method.toUpperCase());
}

/**
 * For a call an adapter cannot express as a Request: a refused method (see `isRefusedMethod`), or header values
 * fetch refuses. Answered and recorded as handleProxy answers a refusal. Route handlers never see such calls
 * (Next answers them itself); the fast lane (lib/node) does.
 */
export function refuseCall(method: string, headers: Headers, target: ProxyTarget, deps: ProxyDeps, error: KeywardError): Response {
  return refuse(openCall(method, headers, target, deps), error);
}

/**
 * 405 for a method refused outright (TRACE, TRACK, CONNECT), with the `Allow` every 405 carries (RFC 9110
 * §15.5.6): the methods the upstream's routes declare for this path, or, where none does, every method a route
 * can declare.
 */
export function refusedMethod(target: ProxyTarget, deps: Pick<ProxyDeps, 'registry'>): KeywardError {
  let allow = 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS';
  const upstream = deps.registry.get(target.upstream);
  if (upstream) {
    try {
      matchRoute(upstream, 'TRACE', target.path); // no route declares TRACE: 405 with the path's methods, or not found
    } catch (error) {
      if (error instanceof KeywardError && error.code === 'method_not_allowed' && error.headers.allow) allow = error.headers.allow;
    }
  }
  return new KeywardError('method_not_allowed', { headers: { allow } });
}

/** One call's state, filled in as the steps run, so that its record says how far it got, whichever step ended it. */
export interface Call {
  readonly target: ProxyTarget;
  readonly deps: ProxyDeps;
  readonly requestId: string;
  readonly started: number;
  /** As the client sent it (the record's `method`); the steps use its upper-case form. */
  readonly requestMethod: string;
  readonly method: string;
  readonly ip: string | null;
  routeTemplate: string | null;
  session: Session | null;
  targetUrl: string | null;
  credential: ResolvedCredential | null;
  body: CappedBody | null;
  grant: LimitGrant | null;
  /** Lets go of a body still being read (multipart) when a later step refuses the call (set by step 10). */
  release: (() => void) | null;
  /** Gives back the call's slot among its user's calls in progress to the upstream (taken by step 9, given back by 15). */
  inFlight: (() => void) | null;
  /** How step 14 reads the usage the upstream reports (set with the reservation, step 12); null: not read. */
  usage: UsageRead | null;
  forwarded: boolean;
  /** The matched route (step 3). */
  route: CompiledRoute | null;
  /** Set by step 4 while the session's revocation is still to be read (with step 8's round trip). */
  revocations: SessionRevocations | null;
  /** When (deps.now) step 8's round trip read the session's revocation and the credential; null: not yet. */
  roundAt: number | null;
  /** Step 9's rules, and their counters when step 8's round trip took them. */
  rate: { readonly rules: readonly RateRule[]; readonly taken: Extract<RoundOutcome, { revoked: false }>['taken'] } | null;
  /** The anomaly detector's throttle on this user, as step 8 read it (counted in step 9); null: none. */
  throttle: RateRule | null;
  /** The call's span, ended by step 15 (non-recording, and free, without a tracer provider: lib/core/observe/trace.ts). */
  readonly span: Span;
  /** Step 14's leak scrubber (or a WebSocket's messages' scrubbers, summed), whose replacements the metrics count. */
  scrubber: { readonly hits: number } | null;
  /** Which secrets that scrubber replaced (step 14, or a WebSocket's messages'), named in the record (15). */
  echoes: EchoTally | null;
  /** Reads the tokens a GenAI route's response reports, for a recorded span (step 14). */
  genAi: { readonly reader: UsageReader; readonly usage: GenAiUsage } | null;
  /** A decoy this call presented (steps 1, 3, 10): it is refused as unauthenticated and the hit raised once. */
  decoy: CallDecoy | null;
}

/** A decoy found in a call: what, where (DecoyHit's fields), and whether its hit was raised yet. */
export interface CallDecoy {
  readonly kind: 'credential' | 'route';
  readonly decoyId: string | null;
  readonly where: string;
  raised: boolean;
}

/** What step 7 builds: the upstream URL (query and credential are added later) and the forwarded headers. */
export interface Outgoing {
  readonly url: URL;
  readonly headers: Record<string, string>;
}

/** What step 9 passes to step 12: who the limits count, and the rate rules already taken. */
export interface RateTaken {
  readonly who: LimitSubject;
  readonly rate: Array<readonly [RateRule, RateLimiterRes]>;
}

export function openCall(method: string, headers: Headers, target: ProxyTarget, deps: ProxyDeps): Call {
  return {
    target,
    deps,
    requestId: crypto.randomUUID(),
    started: performance.now(),
    requestMethod: method,
    method: method.toUpperCase(),
    ip: clientIp(headers, deps.trustedProxyHops ?? 1),
    routeTemplate: null,
    session: null,
    targetUrl: null,
    credential: null,
    body: null,
    grant: null,
    usage: null,
    release: null,
    inFlight: null,
    forwarded: false,
    route: null,
    revocations: null,
    roundAt: null,
    rate: null,
    throttle: null,
    span: startCallSpan(),
    scrubber: null,
    echoes: null,
    genAi: null,
    decoy: null,
  };
}

/**
 * 1. What is refused before anything is looked up: TRACE/TRACK/CONNECT, method overrides (header or `_method`),
 * and tokens in the query string. Returns the incoming URL (its query is the contract's input).
 */
export function screen(call: Call, request: CoreRequest): URL {
  if (REFUSED_METHODS.has(call.method)) throw refusedMethod(call.target, call.deps);
  const incoming = new URL(request.url);
  const { searchParams } = incoming;
  if (hasMethodOverride(request.headers, searchParams) || hasQueryParam(searchParams, '_method')) {
    throw new KeywardError('method_override_refused');
  }
  // Tokens in URLs end up in logs, histories and Referer headers (RFC 6750 §5.3): refuse them outright.
  if (hasQueryParam(searchParams, 'access_token')) {
    throw new KeywardError('bad_request', { message: 'Tokens are not accepted in the query string.' });
  }
  return incoming;
}

/**
 * 1. Decoy credentials (honeytokens, README "Decoy keys") in the headers (Authorization, x-api-key, cookies …),
 * query or path, in any form the leak scrubber knows. First of all: a decoy is a security event whatever else
 * is wrong with the call, and later steps would refuse many such calls for another reason without a word (a
 * decoy as `?access_token=` is refused by `screen`, a decoy bearer as a bad session by step 4). The hit is
 * raised once the session the call carried, if any, is known (`refusalOf`). Without decoys nothing is scanned.
 */
export function screenDecoys(call: Call, request: CoreRequest): void {
  const { decoys } = call.deps;
  if (!decoys) return;
  // The upstream segment too: `/api/proxy/<decoy>/…` is the path as much as the segments after it.
  const found = findDecoyInRequest(decoys, request.headers, new URL(request.url), [call.target.upstream, ...call.target.path]);
  // Noted, not refused yet: steps 1 to 3 answer it as they answer any value (an unknown upstream 404, a method
  // override 400 …), so the answer does not tell a decoy from another key; step 3 refuses it once routed.
  if (found) call.decoy ??= { kind: 'credential', ...found, raised: false };
}

/** 2. The upstream: a Map lookup, so `__proto__` or `constructor` find nothing. */
export function findUpstream(call: Call): Upstream {
  const upstream = call.deps.registry.get(call.target.upstream);
  if (!upstream) throw new KeywardError('upstream_not_found');
  return upstream;
}

/** 3. The route: every decoded segment validated, then a declared route matched (404, or 405 for another method). */
export function findRoute(call: Call, upstream: Upstream, accepts?: (route: RouteMatch['route']) => void): RouteMatch {
  assertSafeSegments(call.target.path);
  const match = matchRoute(upstream, call.method, call.target.path);
  call.routeTemplate = match.route.template;
  // What the caller refuses of a matched route (a WebSocket upgrade: a route without `websocket: true`) is refused
  // as steps 1 to 3 refuse, before any decoy is: the answer a call with a decoy in it gets, as with any other value.
  accepts?.(match.route);
  call.route = match.route;
  // A decoy route (`"decoy": true`) is never forwarded and needs no session, role or credential: whoever calls
  // it found it where only an attacker looks. Refused as unauthenticated, so the caller learns nothing.
  if (match.route.decoy) throw presentDecoy(call, { kind: 'route', decoyId: null, where: 'route' });
  // A decoy in the headers, query or path (screenDecoys): refused now, as unauthenticated.
  if (call.decoy) throw presentDecoy(call, call.decoy);
  return match;
}

/**
 * 4. The session, checked here on every request (never in proxy.ts/middleware). With `with-round` (a caller
 * that answers refusals through `revokedFirst`), it is decoded here and whether it was revoked is read with
 * the call's other store reads in step 8, when the verifier allows it; otherwise revocation is checked here.
 */
export async function authenticate(call: Call, request: CoreRequest, revocation: 'here' | 'with-round' = 'here'): Promise<Session> {
  const { verifySession } = call.deps;
  const deferred = revocation === 'with-round' ? verifySession.deferred : undefined;
  const session = deferred ? await deferred.decode(request) : await verifySession(request);
  if (!session) throw new KeywardError('unauthenticated');
  call.session = session;
  call.revocations = deferred?.revocations ?? null;
  return session;
}

/** A revoked session's call is refused as step 4 refuses it: 401, recorded without its user or target. */
function revoked(call: Call): KeywardError {
  call.session = null;
  call.targetUrl = null;
  return new KeywardError('unauthenticated');
}

/**
 * For a call refused before step 8 read its session's revocation: 401 if the session was revoked (503 if the
 * store cannot say, as step 4 answers), else the refusal as it was. Outcomes keep the steps' order: 4 before 5–7.
 */
export async function revokedFirst(call: Call, error: unknown): Promise<unknown> {
  const { session, revocations } = call;
  if (!session || !revocations) return error;
  call.revocations = null;
  try {
    return (await revocations.isRevoked(session)) ? revoked(call) : error;
  } catch (storeError) {
    return storeError;
  }
}

/**
 * A call that presented a decoy (steps 1, 3, 10): remembered on the call, and refused as unauthenticated, the
 * answer a wrong key gets, so the caller cannot tell a decoy from a key that stopped working. Once step 4 has
 * verified the session (a decoy in the body), the hit is raised here and now: the body may be read while the
 * response is already streaming, past any catch. Before that, `refusalOf` raises it with the session.
 */
function presentDecoy(call: Call, finding: Omit<CallDecoy, 'raised'>): KeywardError {
  call.decoy ??= { ...finding, raised: false };
  if (call.session) raiseCallDecoy(call, call.decoy, call.session);
  return decoyRefusal();
}

/**
 * What a call that failed at some step is refused with (step 15 renders it): for a call that presented a decoy,
 * with the hit raised, what the same request with any other value there gets from steps 1 to 5 (a refusal before
 * a route matched, no session, a session that failed the CSRF check, a store that cannot say), else 401
 * `unauthenticated` whatever the step's own error was (a decoy in a streamed body fails the upstream call or the
 * body's parser); otherwise `revokedFirst`.
 */
export async function refusalOf(
  call: Call,
  request: CoreRequest,
  error: unknown,
  forgeryCheck: (request: CoreRequest, session: Session, origins: OriginPolicy) => void = checkCsrf,
): Promise<unknown> {
  const { decoy } = call;
  if (!decoy) return revokedFirst(call, error);
  let refusal: unknown = null;
  if (!decoy.raised) {
    const carried = await sessionCarried(call, request, forgeryCheck);
    call.session ??= carried.session;
    raiseCallDecoy(call, decoy, call.session, carried.unverified);
    refusal = carried.refusal;
  }
  // Refused before a route was matched (steps 1 to 3): what the same request with any other value gets.
  if (call.route === null && error instanceof KeywardError && error.recordedAs !== 'decoy_presented') return error;
  // Refused by step 4 or 5: as any other value there is, so a decoy is not told from it by the answer.
  return refusal ?? decoyRefusal();
}

/**
 * Decoys' refusals: answered 401 `unauthenticated`, as a call without a session is, word for word, but recorded
 * as `decoy_presented` (`refuse`), so the detector does not count them among the caller's failed calls: content
 * an attacker got into an honest user's requests must not escalate against them (README "Decoy keys").
 */
function decoyRefusal(): KeywardError {
  return new KeywardError('unauthenticated', { recordedAs: 'decoy_presented' });
}

/** What steps 4 and 5 make of a call that presented a decoy before step 4 ran. */
interface CarriedSession {
  /** The session the hit names: verified, and past the CSRF check. */
  readonly session: Session | null;
  /** A valid cookie session that failed the CSRF check: named in the hit as evidence only. */
  readonly unverified: Session | null;
  /** What step 4 or 5 refused the call with (a DPoP refusal, the store, `csrf_failed`); null: nothing. */
  readonly refusal: unknown;
}

/**
 * The session a call carried, for a decoy hit found before step 4: verified as step 4 does, revocation
 * included, from the cookie or a bearer token (a decoy in Authorization is no session; a cookie beside it is).
 *
 * A cookie session counts only if the call also passes the CSRF check (step 5; an upgrade's Origin check for a
 * WebSocket). Decoy values are public by design (planted in bundles), so otherwise any site could send a
 * victim's browser to a link carrying one, or to a decoy route, and have the victim's sessions revoked and keys
 * suspended: such a hit names the user as evidence only (`unverified`), and only alerts. The call is answered
 * as step 5 answers it (403 `csrf_failed`), as the same request with any other value in the decoy's place is.
 */
async function sessionCarried(
  call: Call,
  request: CoreRequest,
  forgeryCheck: (request: CoreRequest, session: Session, origins: OriginPolicy) => void,
): Promise<CarriedSession> {
  let session: Session | null;
  try {
    session = await call.deps.verifySession(request);
  } catch (error) {
    return { session: null, unverified: null, refusal: error };
  }
  if (!session) return { session: null, unverified: null, refusal: null };
  try {
    forgeryCheck(request, session, call.deps.allowedOrigins);
  } catch (error) {
    return { session: null, unverified: session, refusal: error };
  }
  return { session, unverified: null, refusal: null };
}

/** Raises the call's decoy hit once: who (the session, if any), from where, on which upstream and route. */
function raiseCallDecoy(call: Call, decoy: CallDecoy, session: Session | null, unverified: Session | null = null): void {
  if (decoy.raised) return;
  decoy.raised = true;
  const upstream = call.deps.registry.get(call.target.upstream);
  // A hit found before step 3 is still named by the route it was sent to, when it names one.
  if (upstream && call.routeTemplate === null) call.routeTemplate = routeTemplateOf(call, upstream);
  raiseDecoyHit(call.deps, {
    kind: decoy.kind,
    decoyId: decoy.decoyId,
    where: decoy.where,
    userId: session?.userId ?? null,
    sessionId: session?.sessionId ?? null,
    ...(unverified ? { unverifiedUserId: unverified.userId } : {}),
    ip: call.ip,
    // The upstream id in the path is the client's text until the registry knows it.
    upstream: upstream ? upstream.id : UNKNOWN_UPSTREAM,
    route: call.routeTemplate,
    requestId: call.requestId,
  });
}

/** The template of the declared route the call's path matches, or null (any step-3 refusal). */
function routeTemplateOf(call: Call, upstream: Upstream): string | null {
  try {
    assertSafeSegments(call.target.path);
    return matchRoute(upstream, call.method, call.target.path).route.template;
  } catch {
    return null;
  }
}

/** 6. Policy: who may call this route, and the query it accepts (read before any counter moves). */
export function authorizeCall(route: CompiledRoute, params: RouteMatch['params'], session: Session, incoming: URL): RequestParts {
  const { contract } = route;
  authorize(route, params, session);
  // A WebSocket ticket (lib/core/ws/tickets.ts) is redeemed on an upgrade, which takes it out of the query. On a
  // plain call it would be passed on, live, to the upstream: refused instead, as tokens in the query are (1).
  if (route.websocket && hasQueryParam(incoming.searchParams, 'ticket')) {
    throw new KeywardError('bad_request', { message: 'A WebSocket ticket is accepted on an upgrade only; it is never passed on.' });
  }
  return {
    query: contract.query ? parseQuery(contract.query, incoming.searchParams) : new URLSearchParams(incoming.search),
    body: undefined,
  };
}

/** 7. The upstream URL, proven to stay under the upstream's base, the allow-listed request headers, the upstream's fixed and default ones. */
export function buildTarget(call: Call, request: CoreRequest, upstream: Upstream): Outgoing {
  const url = buildUpstreamUrl(upstream, call.target.path, call.route?.segments);
  call.targetUrl = `${url.origin}${url.pathname}`;
  const headers = filterRequestHeaders(request.headers, upstream.requestHeaders);
  for (const [name, value] of upstream.fixedHeaders) headers[name] = value;
  for (const [name, value] of upstream.defaultHeaders) headers[name] ??= value;
  headers['accept-encoding'] = 'identity';
  // Keyward's own unless the config names one (a fixed or default header, or the client's passed through): some
  // APIs want a contact in it (SEC EDGAR, Nominatim).
  if (!headers['user-agent']?.trim()) headers['user-agent'] = 'keyward';
  headers['x-request-id'] = call.requestId;
  return { url, headers };
}

/**
 * 8. The credential for this user and route; the client can neither supply nor override it. Read in the call's
 * one store round trip (lib/core/store/round.ts) with the session's revocation (4) and the rate counters (9).
 */
export async function resolveCallCredential(call: Call, upstream: Upstream, session: Session): Promise<ResolvedCredential> {
  const { limits } = call.deps;
  const { revocations, route } = call;
  call.revocations = null;
  const rules = limits && route ? limits.rateRules(callRateLimits(call, route), session.roles) : [];
  // Taken before the reads go out: what they return is at least as recent as this.
  call.roundAt = (call.deps.now ?? Date.now)();
  const outcome = await storeRound({
    upstream,
    session,
    revocations,
    sources: call.deps.credentials ?? NO_USER_SECRETS,
    limits: limits ?? null,
    rules,
    who: { upstream: upstream.id, userId: session.userId, roles: session.roles, ip: call.ip },
    throttle: call.deps.throttleStore ? { store: call.deps.throttleStore, key: throttleKey(session.userId) } : null,
  });
  if (outcome.revoked) throw revoked(call);
  const credential = withHeldSecrets(outcome.credential, call.deps.heldSecrets?.current());
  call.credential = credential;
  call.rate = { rules, taken: outcome.taken };
  call.throttle = throttleRule(outcome.throttle);
  return credential;
}

/** How long after step 8's round trip a call is forwarded without reading its session and credential again. */
export const RECHECK_AFTER_MS = 1_000;

/**
 * 13. Before forwarding, a call whose step 8 round trip is more than RECHECK_AFTER_MS old (it waited for a slot,
 * or its body was still arriving: step 10 has an idle deadline per chunk, none in all) checks again that its
 * session and its credential may still be used, reading only (nothing is refreshed, nothing counted), as an open
 * WebSocket is checked each second (lib/core/ws/sockets.ts): a session signed out or revoked meanwhile is 401; a
 * credential that may no longer serve is 503 `credential_unavailable`: a service key's version revoked or expired,
 * a user's own key deleted or replaced, an OAuth grant disconnected or ended. A key that still serves is used,
 * though a new call would now get another (a rotation switched, a token was refreshed). Refused here, the call was
 * never sent, so what it reserved is given back (15). A call forwarded within RECHECK_AFTER_MS reads nothing more.
 */
export async function recheckBeforeForward(call: Call, upstream: Upstream, session: Session, credential: ResolvedCredential): Promise<void> {
  const now = call.deps.now ?? Date.now;
  if (call.roundAt === null || now() - call.roundAt <= RECHECK_AFTER_MS) return;
  const revocations = call.deps.verifySession.deferred?.revocations ?? null;
  const [sessionRevoked, serves] = await Promise.all([
    revocations ? revocations.isRevoked(session) : false,
    credentialServes(upstream, session, credential, call.deps.credentials),
  ]);
  if (sessionRevoked) throw revoked(call);
  if (!serves) {
    throw new KeywardError('credential_unavailable', { message: "This call's credential was revoked, removed or replaced while the request was arriving." });
  }
}

/** Whether a call's credential may still serve (recheckBeforeForward): the checks an open WebSocket's key gets. */
async function credentialServes(upstream: Upstream, session: Session, credential: ResolvedCredential, sources: CredentialSources | undefined): Promise<boolean> {
  const plan = upstream.credential;
  if (plan.source === 'static') return !(await sources?.keyRings?.isRetired(upstream, credential.fingerprint));
  if (plan.source === 'user-key' && sources?.userKeys) {
    return (await sources.userKeys.currentFingerprint(upstream.id, session, upstream.fingerprints)) === credential.fingerprint;
  }
  if (plan.source === 'oauth' && sources?.oauthTokens) return sources.oauthTokens.hasGrant(plan.provider, session.userId);
  return true;
}

/**
 * By held list, then by credential: a service key's credential is one object for the process's life, and the held
 * list one array until a secret is added to it (HeldSecrets.current), when the old list's entries go with it.
 */
const withHeld = new WeakMap<readonly string[], WeakMap<ResolvedCredential, ResolvedCredential>>();

/**
 * The credential with every secret Keyward holds added to its `secrets`, after its own (which stay first: hits
 * and key-ring versions read them). An upstream that echoes what it should not know (an in-house API that dumps
 * its environment, with another upstream's key in it) is scrubbed as if it had echoed its own key.
 */
function withHeldSecrets(credential: ResolvedCredential, held: readonly string[] | undefined): ResolvedCredential {
  if (!held || held.length === 0) return credential;
  let byCredential = withHeld.get(held);
  if (!byCredential) withHeld.set(held, (byCredential = new WeakMap()));
  let result = byCredential.get(credential);
  if (!result) byCredential.set(credential, (result = withSecrets(credential, held)));
  return result;
}

/**
 * 9. Rate limits, before a body is read: counted in step 8's round trip, or here. A call without a usable
 * client address cannot be attributed to one: per-IP rules skip it (one shared bucket would let one client use
 * it up for all); the others apply.
 */
export async function checkRateLimits(call: Call, upstream: Upstream, route: CompiledRoute, session: Session, credential: ResolvedCredential): Promise<RateTaken> {
  const { limits } = call.deps;
  const who: LimitSubject = { upstream: upstream.id, userId: session.userId, roles: session.roles, fingerprint: credential.fingerprint, ip: call.ip };
  if (!limits) return { who, rate: [] };
  const taken = call.rate?.taken;
  if (!taken) return { who, rate: await limits.checkRate(callRateLimits(call, route), who, call.throttle) };
  const rate = limits.rateTaken(call.rate!.rules, taken);
  if (call.throttle) {
    // The round trip took the configured rules' points as it read the throttle mark: a call the throttle refuses
    // gives them back, so that a throttled user who keeps calling does not use up limits others share.
    try {
      rate.push(...(await limits.checkRate(NO_RATE_RULES, who, call.throttle)));
    } catch (error) {
      await limits.giveBack(call.rate!.rules, who);
      throw error;
    }
  }
  return { who, rate };
}

/** No configured rule: the detector's throttle checked on its own. */
const NO_RATE_RULES: RouteLimits = { rate: [], meters: [], cost: { reserve: 1 } };

/**
 * 9. One of the user's `maxCallsInFlightPerUser` slots for this upstream, held until the call's record (15): a
 * call past them waits for one of the user's own to end, so one user cannot hold the upstream's whole
 * connection pool (lib/core/limits/in-flight.ts). After the rate limits, so a call they refuse never waits.
 */
export async function holdCallSlot(call: Call, request: CoreRequest, upstream: Upstream, route: CompiledRoute, session: Session): Promise<void> {
  const { limits } = call.deps;
  if (!limits) return;
  call.inFlight = await limits.inFlight.hold(upstream.id, session.userId, upstream.maxCallsInFlightPerUser, route.timeoutMs, request.signal ?? null);
}

/** The route's limits as they apply to this call: without per-IP rules when it has no usable client address. */
function callRateLimits(call: Call, route: CompiledRoute): RouteLimits {
  return call.ip === null ? { ...route.limits, rate: route.limits.rate.filter((rule) => rule.by !== 'ip') } : route.limits;
}

/**
 * 10. The content: the body streamed under its byte cap (or, for a body contract, read in its format, checked
 * and re-serialised: the client's bytes are never forwarded; lib/core/policy/body.ts), then per-role caps and
 * identity fields applied to body and query, and the final query written to the URL. Returns the body to forward.
 */
export async function prepareContent(
  call: Call,
  request: CoreRequest,
  route: CompiledRoute,
  session: Session,
  parts: RequestParts,
  outgoing: Outgoing,
): Promise<AsyncIterable<Uint8Array> | Buffer | null> {
  const { contract } = route;
  let forwardBody: AsyncIterable<Uint8Array> | Buffer | null = null;
  if (request.body && !BODYLESS_METHODS.has(call.method)) {
    const declared = Number(request.headers.get('content-length') ?? NaN);
    if (declared > route.maxRequestBytes) throw new KeywardError('payload_too_large');
    call.body = watchBodyForDecoys(call, capRequestBody(request.body, route.maxRequestBytes, call.deps.requestBodyIdleMs ?? route.timeoutMs));
    forwardBody = call.body.iterable;
  }
  const checked = contract.body ? await readContractBody(contract, request.headers.get('content-type'), call.body) : null;
  if (checked) {
    parts.body = checked.value;
    call.release = checked.release ?? null;
    refuseQueryTwins(contract, parts.body);
  }
  applyCaps(contract, session, parts);
  applyIdentity(contract, session, parts);
  if (checked) {
    const serialized = checked.serialize(parts.body);
    // Re-encoding can grow a body (`1e20` is written out in 21 digits, `~` in a form as `%7E`): the cap bounds
    // what is forwarded too, or a body under it could reach the upstream at four times its size.
    if (Buffer.isBuffer(serialized.body) && serialized.body.length > route.maxRequestBytes) {
      throw new KeywardError('payload_too_large', { message: "The request body is larger than this route accepts once written out for the upstream." });
    }
    forwardBody = serialized.body;
    outgoing.headers['content-type'] = serialized.contentType;
  }
  const query = parts.query instanceof URLSearchParams ? parts.query : serializeQuery(parts.query);
  // Built apart and set once: each append to a URL's own searchParams re-serialises its whole query.
  const out = new URLSearchParams();
  for (const name of contract.writtenQuery) for (const value of query.getAll(name)) out.append(name, value);
  for (const [name, value] of query) if (!contract.writtenQuery.has(name)) out.append(name, value);
  outgoing.url.search = out.size === 0 ? '' : out.toString();
  return forwardBody;
}

/**
 * 10. Decoys in the body: watched as it streams, whether a contract reads it (JSON, form, multipart) or it is
 * forwarded as sent, with the leak scrubber's streaming matcher (a decoy split across chunks is found; the end
 * of a chunk that could begin one is held back, so a whole decoy never reaches the upstream). Found after
 * forwarding started, the error thrown here aborts the upstream call. Without decoys the body is not touched.
 */
function watchBodyForDecoys(call: Call, body: CappedBody): CappedBody {
  const { decoys } = call.deps;
  if (!decoys) return body;
  const watch = decoys.watch();
  const found = () => presentDecoy(call, { kind: 'credential', decoyId: watch.found ?? null, where: 'body' });
  async function* watched(): AsyncGenerator<Uint8Array> {
    for await (const chunk of body.iterable) {
      const passed = watch.push(chunk);
      if (watch.found !== undefined) throw found();
      if (passed.length > 0) yield passed;
    }
    const rest = watch.flush();
    if (watch.found !== undefined) throw found();
    if (rest.length > 0) yield rest;
  }
  return { iterable: watched(), bytes: body.bytes, exceeded: body.exceeded };
}

/** 12. Quotas and budgets: the worst case is reserved atomically; settled when the response ends (15). */
export async function reserveBudget(
  call: Call,
  route: CompiledRoute,
  parts: RequestParts,
  { who, rate }: RateTaken,
  content: AsyncIterable<Uint8Array> | Buffer | null,
): Promise<void> {
  if (!call.deps.limits) return;
  const { cost } = route.limits;
  let units: number;
  if (cost.price) {
    // Input tokens are bounded by the body's size (a token is at least a byte of text), output by the capped field.
    const inputBound = Buffer.isBuffer(content) ? content.length : content ? route.maxRequestBytes : 0;
    const price = priceFor(cost.price, parts);
    const outputBound = cost.price.outputTokens ? boundOf(cost, parts) : 0;
    // Every input token may be one reported apart at a higher share (Anthropic's 1-hour cache writes: 2×), and a
    // body with more bytes than the long-context threshold may hold that many tokens: the dearer of both prices.
    const inputShare = Math.max(1, ...cost.price.extraInputTokens.map(({ times }) => times));
    const long = ratesFor(price, inputBound);
    const rates = { input: Math.max(price.input, long.input), output: Math.max(price.output, long.output) };
    units = toUnits(inputBound * inputShare * rates.input + outputBound * rates.output) ?? Number.MAX_SAFE_INTEGER;
    units = Math.min(units + (cost.reserveFrom?.plus ?? 0), Number.MAX_SAFE_INTEGER);
    call.usage = pricedUsage(cost.price, price, inputBound);
  } else {
    units = reservation(cost, parts);
    if (cost.usage && 'json' in cost.usage) call.usage = numberAt(cost.usage.json);
    else if (cost.usage && 'sum' in cost.usage) call.usage = sumAt(cost.usage.sum);
  }
  // A call charged what the upstream reports reserves at least 1 unit: reserved at 0 (`reserve: 0`, a bound of 0
  // such as `max_tokens: 0`), it would pass a spent budget and never be settled, its real usage never charged.
  if ((call.usage || cost.usage) && units < 1) units = 1;
  call.grant = await call.deps.limits.reserve(route.limits, who, units, rate);
}

/**
 * The model's price from the route's table ("*" for any other model); a model it does not price is refused, and
 * so is one sent in a form that is not one string as Keyward reads it (`?model=a&model=b`, `?MODEL=b`, a number
 * in a body without a contract): the upstream may read a model from it that "*" does not price.
 */
function priceFor(price: NonNullable<CostConfig['price']>, parts: RequestParts): TokenPrice {
  const model = readTarget(parts, price.model);
  if (model !== undefined && model !== null && typeof model !== 'string') {
    throw new KeywardError('contract_violation', { message: `The request does not match this route's contract: ${price.model}: must be one string.` });
  }
  const entry = typeof model === 'string' && Object.hasOwn(price.table, model) ? price.table[model] : price.table['*'];
  if (!entry) {
    throw new KeywardError('contract_violation', { message: `The request does not match this route's contract: ${price.model}: no price for this model.` });
  }
  return entry;
}

/**
 * A priced route's output bound: `cost.reserveFrom`'s field × `times`. A call without one (a role that lifts the
 * cap, a route that names no field) has no worst case to reserve, so it is refused rather than reserved at 0.
 */
function boundOf(cost: CostConfig, parts: RequestParts): number {
  const value = cost.reserveFrom ? readTarget(parts, cost.reserveFrom.field) : undefined;
  if (typeof value === 'number' && Number.isFinite(value) && value >= 0) return value * cost.reserveFrom!.times;
  const field = cost.reserveFrom?.field ?? 'an output bound';
  throw new KeywardError('contract_violation', { message: `The request does not match this route's contract: ${field}: required on a priced route.` });
}

/**
 * 13. Sign (for `aws-sigv4` and `hmac` upstreams): the signature covers the method, the final path and query, the
 * final headers and the final body, so it is made after every other step has had its say. Returns the body to
 * forward: a streamed body whose hash is signed has been read whole, under the route's byte cap.
 */
export async function signCall(
  call: Call,
  request: CoreRequest,
  credential: ResolvedCredential,
  outgoing: Outgoing,
  body: AsyncIterable<Uint8Array> | Buffer | null,
): Promise<AsyncIterable<Uint8Array> | Buffer | null> {
  if (!credential.signer) return body;
  const { url, headers } = outgoing;
  // The client's length describes the client's bytes: only a body forwarded as sent (no contract) still has it.
  const declaredLength = call.route?.contract.body ? null : request.headers.get('content-length');
  return signRequest(credential.signer, { method: call.method, url, headers, body, declaredLength });
}

/** 13. Forward: to the proven URL, no redirects followed, with the route's deadlines; the client's abort cancels it. */
async function forward(
  call: Call,
  request: CoreRequest,
  upstream: Upstream,
  route: CompiledRoute,
  outgoing: Outgoing,
  body: AsyncIterable<Uint8Array> | Buffer | null,
): Promise<Dispatcher.ResponseData> {
  call.forwarded = true;
  try {
    return await call.deps.dispatcher.request({
      origin: upstream.origin,
      path: outgoing.url.pathname + outgoing.url.search,
      method: call.method as Dispatcher.HttpMethod,
      headers: outgoing.headers,
      body,
      signal: request.signal,
      headersTimeout: route.timeoutMs,
      bodyTimeout: route.timeoutMs,
      maxRedirections: 0,
    } as Dispatcher.RequestOptions);
  } catch (error) {
    // A connection that never opened carried nothing: what was reserved is returned.
    if (wasNotSent(error)) call.forwarded = false;
    throw upstreamFailure(error, call.body);
  }
}

/**
 * 14. Respond: status checked, headers allow-listed, the body decoded and streamed through the leak scrubber.
 * The record (15) is written when the body ends or the client goes away. A compressed body is read up to its
 * first decoded bytes before the status goes out: data that is not what its `Content-Encoding` says is then a
 * 502, not a 200 cut before its first byte (`ProxiedBody.readAhead`).
 */
function respond(
  call: Call,
  request: CoreRequest,
  upstream: Upstream,
  route: CompiledRoute,
  credential: ResolvedCredential,
  response: Dispatcher.ResponseData,
): ProxiedResponse | Promise<ProxiedResponse> {
  const { statusCode } = response;
  const { requestId, grant } = call;
  // A Response carries 200–599 only (undici consumes 1xx itself); 600–999 mean nothing to pass on.
  if (statusCode < 200 || statusCode > 599) {
    discardBody(response.body);
    throw new KeywardError('upstream_bad_response');
  }
  if (statusCode >= 300 && statusCode < 400 && statusCode !== 304) {
    discardBody(response.body);
    throw new KeywardError('upstream_redirect');
  }
  // A transfer coding other than chunked (`gzip, chunked`, which Keyward never asks for: it sends no TE) is left
  // on the bytes by undici: passed on as content, it would carry an echoed key past the scrubber, compressed.
  const transfer = response.headers['transfer-encoding'];
  const codings = (Array.isArray(transfer) ? transfer.join(',') : (transfer ?? '')).split(',').map((coding) => coding.trim().toLowerCase());
  if (codings.some((coding) => coding !== '' && coding !== 'chunked')) {
    discardBody(response.body);
    throw new KeywardError('upstream_bad_response');
  }
  const secrets = credential.secrets;
  const outHeaders = filterResponseHeaders(response.headers, upstream.responseHeaders, secrets, linkRewriter(call, request, upstream, route, credential));
  outHeaders.set('cache-control', route.cacheControl);
  outHeaders.set('x-content-type-options', 'nosniff');
  guardActiveContent(outHeaders);
  outHeaders.set('x-request-id', requestId);
  for (const [name, value] of grant?.headers ?? []) outHeaders.set(name, value);
  // Read once, lowercased, for every use below: the nginx header, the event-stream framing, and the usage readers.
  const contentType = (firstHeader(response.headers['content-type']) ?? '').toLowerCase();
  // nginx buffers a proxied answer by default (`proxy_buffering on`): a stream behind it would reach the browser
  // only when the buffer fills or the stream ends. This header turns that off for this answer alone, for a
  // reverse proxy set up without README's `proxy_buffering off`.
  if (STREAMED_TYPES.some((type) => contentType.startsWith(type))) outHeaders.set('x-accel-buffering', 'no');

  const usageSource = route.limits.cost.usage;
  const headerUsage = usageSource && 'header' in usageSource ? toUnits(firstHeader(response.headers[usageSource.header])) : null;
  // 205 Reset Content must not carry content (RFC 9110 §15.3.6): passed on as 205, its body dropped.
  if (call.method === 'HEAD' || statusCode === 204 || statusCode === 205 || statusCode === 304) {
    discardBody(response.body);
    record(call, statusCode, 'complete', 0, null, headerUsage);
    return { status: statusCode, headers: outHeaders, body: null };
  }
  const usageReader =
    grant && grant.reserved > 0 && call.usage ? new UsageReader(call.usage, contentType) : null;
  const encoding = response.headers['content-encoding'];
  const decoded = decodeBody(response.body, Array.isArray(encoding) ? encoding.join(',') : encoding, route.maxDecodedResponseBytes);
  const framed = contentType.startsWith('application/vnd.amazon.eventstream') ? new EventStreamBoundaries() : null;
  const echoes = new EchoTally(secrets);
  const scrubber = new StreamScrubber(secrets, echoes.form);
  call.scrubber = scrubber;
  call.echoes = echoes;
  call.genAi = route.genAi && call.span.isRecording() ? genAiUsageReader(route.genAi, contentType) : null;
  const body = new ProxiedBody(
    decoded,
    scrubber,
    // A body cut short (client gone, upstream broke) has not reported its usage yet, even if an early event
    // carried a partial figure: the reservation stays charged (README "Budgets reserve, then settle").
    (outcome, bytes, error) => {
      if (error) call.deps.logger.warn({ requestId, code: error.code }, error.message);
      if (body.stalled) call.deps.logger.warn({ requestId }, 'the client left the response unread for timeoutMs: the call was cut and the upstream let go');
      record(call, statusCode, outcome, bytes, error?.code ?? null, usageReader ? (outcome === 'complete' ? usageReader.result() : null) : headerUsage);
    },
    call.genAi ? bothTaps(usageReader, call.genAi.reader) : usageReader,
    framed,
    route.timeoutMs,
  );
  const answer = { status: statusCode, headers: outHeaders, body };
  return decoded === response.body ? answer : body.readAhead().then(() => answer);
}

/**
 * An upstream's 401 to a call that carried a connected account's token: the connection has the provider check the
 * token, off the call's path (README "Connected accounts", step 5). The answer goes to the client as it is.
 */
function checkRefusedToken(call: Call, upstream: Upstream, session: Session, credential: ResolvedCredential): void {
  const plan = upstream.credential;
  const connections = call.deps.credentials?.connections;
  const token = credential.secrets[0];
  if (plan.source !== 'oauth' || !connections?.has(plan.provider) || token === undefined) return;
  connections.upstreamRefused(plan.provider, session.userId, token).catch((error: unknown) => {
    call.deps.logger.warn({ provider: plan.provider, userId: session.userId, err: error instanceof Error ? error.name : 'unknown' }, 'checking a token an upstream refused failed');
  });
}

/**
 * How step 14 writes the upstream's `Link` header (lib/core/respond/links.ts): onto this call's upstream, on the
 * public origin (a client such as Octokit prefixes its base URL to a link that is not absolute); undefined: dropped.
 */
function linkRewriter(
  call: Call,
  request: CoreRequest,
  upstream: Upstream,
  route: CompiledRoute,
  credential: ResolvedCredential,
): ((value: string) => string | null) | undefined {
  const { links: mode } = route;
  const calledUrl = call.targetUrl;
  if (mode === 'drop' || calledUrl === null) return undefined;
  // Read when an answer has a Link, not on every call.
  const context = (): LinkContext => ({
    mode,
    upstream,
    calledUrl,
    calledPath: call.target.path,
    publicOrigin: call.deps.allowedOrigins.publicOrigin(request),
    credentialQuery: credential.queryName ?? null,
  });
  return (value) => rewriteLinks(value, context());
}

/**
 * Any step's refusal or failure, rendered as Keyward's JSON error and recorded (15). `clientGone`: the client
 * went away before its answer (the request's signal aborted): what failed because of it (the body's read, the
 * upstream call) is recorded as `aborted`, not as an upstream's or Keyward's failure; a refusal stays one.
 */
export function refuse(call: Call, error: unknown, clientGone = false): Response {
  const closed = isClientClosed(error) || (clientGone && !(error instanceof KeywardError && error.status < 500));
  const keywardError = closed ? (isClientClosed(error) ? error : clientClosed(error)) : toKeywardError(error);
  if (closed) {
    record(call, keywardError.status, 'aborted', 0, keywardError.code);
    return errorResponse(keywardError, call.requestId);
  }
  if (keywardError.code === 'internal_error') {
    // The cause may be a Headers/URL/undici error carrying values. The logger scrubs every service secret;
    // this call's per-user secret (own key, OAuth token) is scrubbed here.
    call.deps.logger.error({ err: scrubError(keywardError.cause, call.credential?.secrets ?? []), requestId: call.requestId }, 'proxy failed');
  }
  const errorCode = keywardError.recordedAs === 'decoy_presented' ? 'decoy_presented' : keywardError.code;
  record(call, keywardError.status, failureOutcome(keywardError), 0, errorCode);
  return errorResponse(keywardError, call.requestId);
}

/** 15. Record: settles the limits and writes the call's one log line and audit event. */
export function record(call: Call, status: number, outcome: ProxyEvent['outcome'], bytesOut: number, errorCode: string | null, usage: number | null = null): void {
  const { grant, forwarded } = call;
  // A call that failed the CSRF check may have been sent by another page (a sibling subdomain is same-site, so the
  // cookie goes along): it is recorded without the user, so a forged flood neither counts in their usage nor takes
  // their share of refused-call records (lib/core/audit/audit.ts), as a call without a session.
  const session = errorCode === 'csrf_failed' ? null : call.session;
  const units = grant && grant.reserved > 0 ? (forwarded ? (usage ?? grant.reserved) : 0) : 0;
  grant?.settle({ forwarded, usage }).catch(() => {});
  call.inFlight?.();
  // An upstream the registry does not hold is the client's text, of any length: recorded as "(unknown)", so
  // a caller cannot write names of its choosing into the log, the audit trail and the usage aggregates.
  const upstreamId = call.deps.registry.has(call.target.upstream) ? call.target.upstream : UNKNOWN_UPSTREAM;
  const event: ProxyEvent = {
    requestId: call.requestId,
    userId: session?.userId ?? null,
    sessionId: session?.sessionId ?? null,
    upstream: upstreamId,
    route: call.routeTemplate,
    target: call.targetUrl,
    method: call.requestMethod,
    status,
    keyFingerprint: call.credential?.fingerprint ?? null,
    bytesIn: call.body?.bytes() ?? 0,
    bytesOut,
    durationMs: Math.round((performance.now() - call.started) * 100) / 100,
    outcome,
    errorCode,
    clientIp: call.ip,
    units,
    scrubberHits: call.scrubber?.hits ?? 0,
    echoed: call.scrubber && call.scrubber.hits > 0 ? echoedIn(call, upstreamId) : undefined,
  };
  recordLogger(call.deps.logger).info({ proxy: event }, 'proxy');
  call.deps.onComplete?.(event);
  observe(call, event);
}

/** Which secrets the call's scrubber hits were, by what each is (a call with hits but no tally: its own credential's). */
function echoedIn(call: Call, upstream: string): readonly EchoedSecret[] {
  const hits = call.scrubber?.hits ?? 0;
  const echoed = call.echoes?.echoed(call.deps.heldSecrets, { upstream, fingerprint: call.credential?.fingerprint ?? null }) ?? [];
  return echoed.length > 0 ? echoed : [{ kind: 'credential', hits }];
}

/** Metrics and the call's span (lib/core/observe), from its record. */
function observe(call: Call, event: ProxyEvent): void {
  const known = event.upstream !== UNKNOWN_UPSTREAM;
  call.deps.metrics?.observe(event, known, event.scrubberHits);
  const { span, genAi } = call;
  if (!span.isRecording()) return;
  if (genAi && event.outcome === 'complete' && genAi.reader.result() !== null) setGenAiUsage(span, genAi.usage);
  endCallSpan(span, { ...event, upstream: known ? event.upstream : null });
}

/** Two readers of the response body (budget usage, GenAI tokens) as one tap. */
function bothTaps(first: UsageReader | null, second: UsageReader): { push(chunk: Uint8Array): void } {
  return first
    ? {
        push(chunk) {
          first.push(chunk);
          second.push(chunk);
        },
      }
    : second;
}

const recordLoggers = new WeakMap<Logger, Logger>();

/**
 * The logger for the call record's line: a child without pino's path redaction. The record's fields are
 * Keyward's own (ProxyEvent: no header, body or credential field, nothing a redaction path names), and the
 * redaction pass copied the object, more than half the line's cost. The exact-value scrubber still reads the
 * finished line (lib/core/log/logger.ts), as every line.
 */
function recordLogger(logger: Logger): Logger {
  let child = recordLoggers.get(logger);
  if (!child) {
    child = logger.child({}, { redact: [] });
    recordLoggers.set(logger, child);
  }
  return child;
}

/** undici errors raised before a request could be written: nothing reached the upstream. */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT', QUEUE_TIMEOUT]);

/** Whether a failed upstream request (undici's, or a WebSocket handshake's socket error) never reached the upstream. */
export function wasNotSent(error: unknown): boolean {
  return NOT_SENT.has((error as { code?: string } | null)?.code ?? '');
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
    // Present but not one number Keyward can read (a repeated query parameter, `+5000`, `"5000"`, `-1`): the
    // upstream may still read a large bound from it, so it is refused rather than reserved at `cost.reserve`.
    // Absent or null, the upstream applies its own default, which `cost.reserve` stands for.
    if (value !== undefined && value !== null) {
      throw new KeywardError('contract_violation', {
        message: `The request does not match this route's contract: ${cost.reserveFrom.field}: must be one number, 0 or more.`,
      });
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
  if (code === QUEUE_TIMEOUT) {
    return new KeywardError('upstream_timeout', { message: 'Every connection to the upstream stayed busy: try again shortly.', cause: error });
  }
  // The upstream answered, but not with a response that can be passed on: an unasked-for 100 or 101, a status
  // outside 100–999, a malformed head (undici's socket and parser errors say so).
  // A head past undici's size limit, too.
  if (name === 'HTTPParserError' || code === 'UND_ERR_HEADERS_OVERFLOW' || (code === 'UND_ERR_SOCKET' && BAD_HEAD.has((error as Error).message))) {
    return new KeywardError('upstream_bad_response', { cause: error });
  }
  if (name === 'AbortError' || code === 'UND_ERR_ABORTED') return clientClosed(error);
  if (body && (error as { cause?: unknown })?.cause instanceof KeywardError) {
    return (error as { cause: KeywardError }).cause;
  }
  return new KeywardError('upstream_unreachable', { cause: error });
}
