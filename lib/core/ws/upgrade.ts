import { CSRF_FAILURES } from '../csrf/check';
import { KeywardError } from '../errors';
import type { OriginPolicy } from '../origin/public-origin';
import {
  authenticate,
  authorizeCall,
  buildTarget,
  checkRateLimits,
  holdCallSlot,
  findRoute,
  findUpstream,
  openCall,
  prepareContent,
  record,
  refuse,
  reserveBudget,
  resolveCallCredential,
  refusalOf,
  screen,
  screenDecoys,
  type Call,
  type ProxyDeps,
  type ProxyEvent,
  type ProxyTarget,
  wasNotSent,
} from '../pipeline';
import { injectCredential } from '../credential/inject';
import type { Session } from '../session/session';
import type { CompiledRoute, ResolvedCredential, Upstream, WebSocketRoute } from '../upstream/registry';
import type { EchoTally } from '../respond/echoes';
import type { CoreRequest } from '../request';

/** An upgrade that passed every step: where to open the upstream socket, with what, and the call to record. */
export interface UpgradeGrant {
  readonly call: Call;
  readonly upstream: Upstream;
  readonly route: CompiledRoute & { readonly websocket: WebSocketRoute };
  readonly session: Session;
  readonly credential: ResolvedCredential;
  /** `ws:`/`wss:` URL of the upstream handshake, the credential (if a query one) already in it. Never logged. */
  readonly url: URL;
  /** Request headers for the upstream handshake, the credential (if a header one) among them. Never logged. */
  readonly headers: Record<string, string>;
}

/**
 * A WebSocket upgrade on `/api/proxy/<upstream>/<path>` (fast lane only), authorized by the pipeline's own
 * steps in the pipeline's order (lib/core/pipeline.ts), so an upgrade is refused exactly where a call would be:
 * decoys in headers and query, upstream, route and segments (a decoy route is refused), session, policy,
 * upstream URL, credential, rate limits (the upgrade counts as one call), query contract, budget. Two
 * differences, both because a browser's WebSocket cannot send headers:
 * - the route must declare `websocket: true` (else 400: a WebSocket cannot reach an HTTP route by accident);
 * - cookie sessions pass `checkUpgradeOrigin` instead of the CSRF header check (see there).
 * Returns the grant, or the refusal as Keyward's JSON error, already recorded.
 */
export async function authorizeUpgrade(
  request: CoreRequest,
  target: ProxyTarget,
  deps: ProxyDeps,
): Promise<UpgradeGrant | Response> {
  const call = openCall(request.method, request.headers, target, deps);
  try {
    screenDecoys(call, request);
    const incoming = screen(call, request);
    const upstream = findUpstream(call);
    const { route, params } = findRoute(call, upstream, (matched) => {
      if (!matched.websocket) throw new KeywardError('bad_request', { message: 'This route does not accept WebSocket upgrades.' });
    });
    // As in handleProxy: the session's revocation is read with the key ring and the counters (one round trip).
    const session = await authenticate(call, request, 'with-round');
    checkUpgradeOrigin(request, session, deps.allowedOrigins);
    const parts = authorizeCall(route, params, session, incoming);
    const outgoing = buildTarget(call, request, upstream);
    const credential = await resolveCallCredential(call, upstream, session);
    const limited = await checkRateLimits(call, upstream, route, session, credential);
    await holdCallSlot(call, request, upstream, route, session);
    // A GET carries no body: this applies caps, identity fields and the checked query to the URL.
    await prepareContent(call, request, route, session, parts, outgoing);
    injectCredential(credential, outgoing.headers, outgoing.url);
    await reserveBudget(call, route, parts, limited, null);
    const url = outgoing.url;
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return {
      call,
      upstream,
      route: route as UpgradeGrant['route'],
      session,
      credential,
      url,
      headers: outgoing.headers,
    };
  } catch (error) {
    return refuse(call, await refusalOf(call, request, error, checkUpgradeOrigin));
  }
}

/**
 * The upstream handshake is on its way, the credential on it: from now on the upgrade counts as forwarded (README
 * "Quotas": every forwarded call counts), its quota and budget charged whatever the upstream answers (a refusal,
 * no answer in time), as an HTTP call's are once sent; only `refuseGranted` with an error that says nothing
 * was sent gives them back.
 */
export function handshakeSent(grant: UpgradeGrant): void {
  grant.call.forwarded = true;
}

/**
 * A granted upgrade refused before or by the upstream's handshake: answered (400, 502/504, 503) and recorded like a
 * failed call. `cause`, the upstream socket's error: one raised before a connection opened (refused, no such
 * host) means nothing was sent, and what was reserved is given back, as for an HTTP call (pipeline.ts `forward`).
 */
export function refuseGranted(grant: UpgradeGrant, error: KeywardError, cause?: unknown): Response {
  if (wasNotSent(cause)) grant.call.forwarded = false;
  return refuse(grant.call, error);
}

/** How a WebSocket ended, for its one record. */
export interface SocketOutcome {
  readonly outcome: ProxyEvent['outcome'];
  /** Why Keyward closed it (e.g. `payload_too_large`, `idle_timeout`, `session_revoked`); null for a normal close. */
  readonly errorCode: string | null;
  /** Bytes of messages from the client to the upstream. */
  readonly bytesIn: number;
  /** Bytes of messages from the upstream to the client (after scrubbing). */
  readonly bytesOut: number;
  /** How many times the credential was replaced in the upstream's messages and close reason (the key echoed). */
  readonly scrubberHits: number;
  /** Which secrets those were (the record names them); absent: none replaced. */
  readonly echoes?: EchoTally;
}

/**
 * The call's one record (pipeline step 15), written when the socket closes (after the upstream accepted the
 * handshake): status 101, bytes each way, duration from the upgrade request to the close, outcome. Quotas and
 * budgets settle with what was reserved at the upgrade (a socket reports no usage figure).
 */
export function recordSocket(grant: UpgradeGrant, { outcome, errorCode, bytesIn, bytesOut, scrubberHits, echoes }: SocketOutcome): void {
  grant.call.body = { iterable: NO_BYTES, bytes: () => bytesIn, exceeded: () => false };
  // Counted as an HTTP call's are: the metric, the Keys page's "echoed" mark and the detector's alert.
  grant.call.scrubber = { hits: scrubberHits };
  grant.call.echoes = echoes ?? null;
  // Sent (`handshakeSent`), and accepted or left by the client: the key was used, so a reservation is charged.
  grant.call.forwarded = true;
  record(grant.call, 101, outcome, bytesOut, errorCode);
}

const NO_BYTES: AsyncIterable<Uint8Array> = { [Symbol.asyncIterator]: async function* () {} };

/**
 * Cross-site WebSocket hijacking: a browser sends the session cookie on a WebSocket handshake from any site,
 * and the WebSocket API cannot send the X-Keyward-CSRF header, so for a cookie session the `Origin` header
 * (which browsers always send on a WebSocket handshake and scripts cannot change) must name an allowed origin:
 * the public origin or KEYWARD_ALLOWED_ORIGINS, the same policy as state-changing calls (lib/core/csrf/check.ts).
 * No Origin at all is refused too (fail closed). Fetch Metadata, where sent, must not say cross-site or
 * same-site. Bearer sessions (a ticket, lib/core/ws/tickets.ts) are not sent by a browser on its own.
 * OWASP WebSocket Security Cheat Sheet, "Cross-Site WebSocket Hijacking".
 */
export function checkUpgradeOrigin(request: CoreRequest, session: Session, origins: OriginPolicy): void {
  if (session.via !== 'cookie') return;
  const fetchSite = request.headers.get('sec-fetch-site');
  if (fetchSite === 'cross-site' || fetchSite === 'same-site') refuseOrigin('fetchSite');
  const origin = request.headers.get('origin');
  if (origin === null || origin === 'null') refuseOrigin('originMissing');
  if (!origins.allows(origin, request)) refuseOrigin('originRefused');
}

function refuseOrigin(reason: 'fetchSite' | 'originMissing' | 'originRefused'): never {
  const detail =
    reason === 'originMissing' ? 'WebSocket upgrades need an Origin header naming this site.' : CSRF_FAILURES[reason];
  throw new KeywardError('csrf_failed', {
    message: `The request failed the cross-site request forgery check: ${detail}`,
  });
}
