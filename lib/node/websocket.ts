import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { shownName } from '@/lib/core/config/error';
import { HTTP_TOKEN } from '@/lib/core/config/schema';
import { KeywardError } from '@/lib/core/errors';
import { clientClosed } from '@/lib/core/forward/body';
import { queryParamKey } from '@/lib/core/forward/query';
import { getLogger } from '@/lib/core/log/logger';
import { isRefusedMethod, refusedMethod, refuseCall, type ProxyDeps, type ProxyTarget } from '@/lib/core/pipeline';
import { namedSecretForms } from '@/lib/core/log/scrub';
import { EchoTally } from '@/lib/core/respond/echoes';
import { redactKeyLikeRuns, StreamScrubber } from '@/lib/core/respond/scrub-stream';
import type { SessionRevocations } from '@/lib/core/session/revocation';
import {
  authorizeUpgrade,
  handshakeSent,
  recordSocket,
  refuseGranted,
  type SocketOutcome,
  type UpgradeGrant,
} from '@/lib/core/ws/upgrade';
import { CLOSE, STOPPING, type CloseCause, type OpenSockets } from '@/lib/core/ws/sockets';
import { currentLocalUser, type LocalUsers } from '@/lib/core/users/file';
import type { WsTickets } from '@/lib/core/ws/tickets';
import type { ServingCalls } from '@/lib/core/shutdown';
import { isDisguisedProxyPath, parseProxyPath } from './proxy-path';
import { disguisedPathRefusal, hasContent, readHeaders } from './request';
import { endSocketWith } from './response';

export interface UpgradeOptions {
  readonly deps: ProxyDeps & {
    readonly revocations: SessionRevocations;
    readonly users?: Pick<LocalUsers, 'find'> | null;
  };
  /** The origin given to the core's Request (`http://localhost:<port>`), as for HTTP calls. */
  readonly origin: () => string;
  readonly tickets: WsTickets;
  readonly sockets: OpenSockets;
  /** Where upgrades outside /api/proxy go (server.ts: Next's process, `NextProcess.upgrade`); absent: they are closed. */
  readonly next?: (req: IncomingMessage, socket: Duplex, head: Buffer) => unknown;
  readonly siteHeaders?: readonly (readonly [string, string])[];
  /**
   * Counts upgrades under way (authorized, then the upstream's handshake) with the proxied calls, so a stop waits
   * for their answer and record (server.ts); an open socket is closed by `sockets.closeAll()` instead.
   */
  readonly serving?: Pick<ServingCalls, 'track'>;
}

/** The record's errorCode for each close Keyward initiates. */
const CLOSE_ERRORS: Record<CloseCause, string | null> = {
  sessionEnded: 'session_ended',
  sessionChanged: 'session_changed',
  keyRevoked: 'credential_revoked',
  idle: 'idle_timeout',
  storeUnavailable: 'store_unavailable',
  shutdown: null,
};

type Frame = { data: Buffer; binary: boolean };

/** RFC 6455 §4.1: the client's handshake key is 16 random bytes, base64. */
const HANDSHAKE_KEY = /^[+/0-9A-Za-z]{22}==$/;
/** Codes a close frame may carry (RFC 6455 §7.4); anything else (1005, 1006, 1015 …) is passed on as 1011 or 1000. */
const SENDABLE = (code: number) =>
  (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
const MAX_REASON_BYTES = 123;

/**
 * The fast lane's `upgrade` listener (issue 12, "WebSockets"): an upgrade on `/api/proxy/*` is authorized by
 * the core's steps (lib/core/ws/upgrade.ts), then Keyward opens the upstream socket with the credential on its
 * handshake, and only when the upstream accepted does it complete the client's handshake and relay messages
 * both ways: upstream messages through the leak scrubber, each way under the route's message cap and idle
 * timeout. The credential never travels on the client's side. Every other upgrade goes to Next (or is closed).
 */
export function createUpgradeListener(options: UpgradeOptions) {
  const siteHeaders = options.siteHeaders ?? [];
  return (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const url = req.url ?? '/';
    const proxyPath = parseProxyPath(url);
    if (proxyPath === null && isDisguisedProxyPath(url)) {
      // A path that is /api/proxy/… only once normalised: 400 bad_path, as the HTTP door answers it, never Next's.
      // A ticket shown with it is used up, as with any refused upgrade (README "WebSockets").
      socket.on('error', () => {});
      const queryAt = url.indexOf('?');
      const shown = queryAt === -1 ? [] : ticketsShown(new URLSearchParams(url.slice(queryAt)));
      options.tickets
        .burn(shown)
        .catch(() => {})
        .then(() => endSocketWith(socket, disguisedPathRefusal(req, options.deps), siteHeaders))
        .catch(() => socket.destroy());
      return;
    }
    if (proxyPath === null) {
      // Called inside the promise, so a synchronous throw closes this socket rather than ending the process.
      const next = options.next;
      if (next) void Promise.resolve().then(() => next(req, socket, head)).catch(() => socket.destroy());
      else socket.destroy();
      return;
    }
    socket.on('error', () => {});
    const upgrade = serveUpgrade(req, socket, head, proxyPath.target, proxyPath.path, proxyPath.search, options, siteHeaders).catch(
      (error: unknown) => {
        getLogger().error({ err: error instanceof Error ? error.name : 'unknown' }, 'fast lane upgrade failed');
        socket.destroy();
      },
    );
    options.serving?.track(upgrade);
  };
}

async function serveUpgrade(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  target: ProxyTarget,
  path: string,
  search: string,
  options: UpgradeOptions,
  siteHeaders: readonly (readonly [string, string])[],
): Promise<void> {
  const { deps } = options;
  // `?ticket=` authenticates (lib/core/ws/tickets.ts) and is never passed on: it is taken out of the query first.
  const query = new URLSearchParams(search);
  const tickets = query.getAll('ticket');
  query.delete('ticket');
  // A ticket under a name a lenient server reads as `ticket` (`Ticket`, `ticket[]`): never redeemed (the policy
  // step refuses the upgrade for it, as it refuses one on a plain call), but used up with the refusal.
  const lookalikes = ticketsShown(query);
  const rest = query.toString();
  // A ticket shown with an upgrade that is refused is used up all the same (README "WebSockets"); `unredeemed`:
  // the exact `ticket`s too (they were not shown to the session step, which uses them up itself).
  const refuseWith = async (refusal: Response, unredeemed: boolean) => {
    await options.tickets.burn(unredeemed ? [...tickets, ...lookalikes] : lookalikes).catch(() => {});
    return endSocketWith(socket, refusal, siteHeaders);
  };
  const refuseEarly = (refusal: Response) => refuseWith(refusal, true);
  let headers: Headers;
  try {
    headers = readHeaders(req);
  } catch {
    return refuseEarly(refuseCall(req.method ?? 'GET', new Headers(), target, deps, new KeywardError('bad_request')));
  }
  // As the fast lane's HTTP door does: a Request cannot even carry these methods (TRACE, TRACK, CONNECT).
  if (isRefusedMethod(req.method ?? '')) {
    return refuseEarly(refuseCall(req.method ?? '', headers, target, deps, refusedMethod(target, deps)));
  }
  if (!isWebSocketHandshake(req)) {
    // RFC 6455 §4.4: a refusal names the version this server speaks (a client offering another may retry with it).
    const refusal = new KeywardError('bad_request', { message: 'Not a valid WebSocket upgrade.', headers: { 'sec-websocket-version': '13' } });
    return refuseEarly(refuseCall(req.method ?? 'GET', headers, target, deps, refusal));
  }
  // A client that goes away while its upgrade waits (for a call slot, lib/core/limits/in-flight.ts) gives its
  // place back, as an HTTP call's does. Leaving is its FIN ('end': the upgrade socket is half-open) or a reset.
  const gone = new AbortController();
  const leave = () => gone.abort();
  socket.once('end', leave);
  socket.once('close', leave);
  const request = new Request(options.origin() + path + (rest ? `?${rest}` : ''), {
    method: req.method ?? 'GET',
    headers,
    // The server stopping ends a wait for a slot too, answered 503 (STOPPING).
    signal: AbortSignal.any([gone.signal, options.sockets.closing]),
  });
  let callDeps: ProxyDeps = deps;
  let redeemed = tickets.length === 0;
  if (tickets.length > 0) {
    callDeps = {
      ...deps,
      verifySession: async () => {
        redeemed = true;
        // Shown more than once: refused, and every ticket shown is used up all the same.
        if (tickets.length > 1) {
          await options.tickets.burn(tickets).catch(() => {});
          return null;
        }
        const issued = await options.tickets.redeem(tickets[0]!, target);
        // The session as it was when the ticket was issued (up to 30 s ago): a local user as the users file says now.
        const session = issued && deps.users ? currentLocalUser(issued, deps.users) : issued;
        return session && !(await deps.revocations.isRevoked(session)) ? session : null;
      },
    };
  }
  const grant = await authorizeUpgrade(request, target, callDeps);
  socket.off('end', leave);
  socket.off('close', leave);
  if (grant instanceof Response) {
    // Refused, before the session step (an unknown upstream or route, an HTTP route, a refused query) or at or
    // after it: a ticket shown at the wrong path is used up all the same, whichever step refused the upgrade.
    return refuseWith(grant, !redeemed);
  }
  await relay(req, socket, head, grant, options, siteHeaders);
}

/** Opens the upstream socket, then completes the client's handshake and relays until either side closes. */
async function relay(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  grant: UpgradeGrant,
  options: UpgradeOptions,
  siteHeaders: readonly (readonly [string, string])[],
): Promise<void> {
  const { maxMessageBytes, idleTimeoutMs, subprotocols } = grant.route.websocket;
  // Gone while the upgrade was authorized (or waited for a slot): no upstream socket is opened with the key, and
  // the call is recorded as not sent, its slot and any reservation given back.
  if (socket.destroyed || socket.readableEnded) {
    refuseGranted(grant, clientClosed());
    socket.destroy();
    return;
  }
  if (options.sockets.closing.aborted) return endSocketWith(socket, refuseGranted(grant, STOPPING()), siteHeaders);
  const offered = req.headers['sec-websocket-protocol'];
  // RFC 6455 §4.1: each offered subprotocol is an HTTP token, listed once. Refused here by ws's own rule (its
  // parser, not exported, throws on an empty entry, `a,` or `a,,b`, and on a header with no entry at all), since
  // ws answers the client 400 only after the upstream handshake, key and all, has been made for nothing.
  const protocols = offered === undefined ? [] : offered.split(',').map((p) => p.replace(/^[ \t]+|[ \t]+$/g, ''));
  if (protocols.some((p) => !HTTP_TOKEN.test(p)) || new Set(protocols).size !== protocols.length) {
    return endSocketWith(
      socket,
      refuseGranted(grant, new KeywardError('bad_request', { message: 'Not a valid WebSocket upgrade.' })),
      siteHeaders,
    );
  }
  // The route's allow-list: a subprotocol can carry a credential or select an account (OpenAI's
  // `openai-insecure-api-key.<key>`, `openai-organization.<org>`), which the client must not supply beside the key.
  // A long name may be a key itself: it is not shown (shownName).
  const unlisted = protocols.find((p) => !subprotocols.has(p));
  if (unlisted !== undefined) {
    const message = `This route does not accept the WebSocket subprotocol "${shownName(unlisted)}".`;
    return endSocketWith(socket, refuseGranted(grant, new KeywardError('bad_request', { message })), siteHeaders);
  }
  // A client that closes or half-closes (FIN) during the upstream handshake is let go at once: nothing more will
  // come from it, and an upgraded socket has no HTTP timeout to end it later.
  let clientGone = false;
  let leave = () => {};
  const onEarlyClose = () => {
    clientGone = true;
    leave();
  };
  socket.once('close', onEarlyClose);
  socket.once('end', onEarlyClose);
  const upstream = new WebSocket(grant.url, protocols, {
    headers: grant.headers,
    maxPayload: maxMessageBytes,
    handshakeTimeout: grant.route.timeoutMs,
    followRedirects: false,
    perMessageDeflate: false,
  });
  handshakeSent(grant);
  // Its errors are handled where they matter (below, and in pipeSockets); none may go unheard and stop the process.
  upstream.on('error', () => {});
  const handshaking = new AbortController();
  let failure: unknown;
  let deadline: ReturnType<typeof setTimeout> | undefined;
  const opened = await new Promise<KeywardError | null>((resolve) => {
    leave = () => resolve(null); // clientGone says why
    upstream.once('open', () => {
      // ws emits the messages that came in the same read as the 101 at once, before anyone listens (an upstream
      // that speaks first: OpenAI Realtime's `session.created`). Nothing is read until pipeSockets listens.
      upstream.pause();
      resolve(null);
    });
    upstream.once('unexpected-response', (_request, response) => {
      response.resume();
      const status = response.statusCode ?? 0;
      resolve(new KeywardError(status >= 300 && status < 400 ? 'upstream_redirect' : 'upstream_bad_response'));
    });
    // The error's message may carry the URL (and a query credential): only the fact is kept.
    upstream.once('error', (error: Error & { code?: string }) => {
      failure = error; // its code only tells whether anything was sent (refuseGranted)
      resolve(new KeywardError(/timed out/i.test(error.message) ? 'upstream_timeout' : 'upstream_unreachable'));
    });
    // The server stopping does not wait for the upstream's handshake (up to the route's timeoutMs).
    options.sockets.closing.addEventListener('abort', () => resolve(STOPPING()), { once: true, signal: handshaking.signal });
    // ws's handshakeTimeout is an idle timer on the connection: an upstream that sends its answer a byte now and
    // then would hold the upgrade (and its user's call slot) for good. The whole handshake gets timeoutMs.
    deadline = setTimeout(() => resolve(new KeywardError('upstream_timeout')), grant.route.timeoutMs);
  });
  clearTimeout(deadline);
  handshaking.abort();
  socket.off('close', onEarlyClose);
  socket.off('end', onEarlyClose);
  if (opened) {
    upstream.terminate();
    return endSocketWith(socket, refuseGranted(grant, opened, failure), siteHeaders);
  }
  if (clientGone || socket.destroyed || socket.readableEnded) {
    upstream.terminate();
    recordSocket(grant, { outcome: 'aborted', errorCode: null, bytesIn: 0, bytesOut: 0, scrubberHits: 0 });
    socket.destroy();
    return;
  }
  const server = new WebSocketServer({
    noServer: true,
    maxPayload: maxMessageBytes,
    perMessageDeflate: false,
    // The client gets the subprotocol the upstream chose (it was one the client offered), or none.
    handleProtocols: () => (upstream.protocol ? upstream.protocol : false),
  });
  server.once('headers', (lines) => lines.push(`x-request-id: ${grant.call.requestId}`));
  // ws answers a handshake it cannot complete with 400 itself and never calls back: the upstream is closed then.
  let accepted = false;
  socket.once('close', () => {
    if (accepted) return;
    upstream.terminate();
    recordSocket(grant, { outcome: 'aborted', errorCode: 'bad_request', bytesIn: 0, bytesOut: 0, scrubberHits: 0 });
  });
  server.handleUpgrade(req, socket, head, (client) => {
    accepted = true;
    pipeSockets(client, upstream, grant, options.sockets, idleTimeoutMs);
  });
}

function pipeSockets(
  client: WebSocket,
  upstream: WebSocket,
  grant: UpgradeGrant,
  sockets: OpenSockets,
  idleTimeoutMs: number,
): void {
  const secrets = grant.credential.secrets;
  let bytesIn = 0;
  let bytesOut = 0;
  const scrubbed: Scrubbed = { hits: 0, echoes: new EchoTally(secrets) };
  let ended = false;
  let idle: ReturnType<typeof setTimeout> | null = null;
  const touch = () => {
    if (idle) idle.refresh();
    else idle = setTimeout(() => end('idle', 'aborted', CLOSE_ERRORS.idle), idleTimeoutMs);
  };
  touch();

  const end = (
    cause: CloseCause | { code: number; reason: string } | null,
    outcome: SocketOutcome['outcome'],
    errorCode: string | null,
  ) => {
    if (ended) return;
    ended = true;
    if (idle) clearTimeout(idle);
    unregister();
    const close = cause === null ? { code: 1000, reason: '' } : typeof cause === 'string' ? CLOSE[cause] : cause;
    closeSocket(client, close.code, close.reason);
    closeSocket(
      upstream,
      cause === null || typeof cause !== 'string' ? close.code : 1001,
      typeof cause === 'string' ? '' : close.reason,
    );
    recordSocket(grant, { outcome, errorCode, bytesIn, bytesOut, scrubberHits: scrubbed.hits, echoes: scrubbed.echoes });
  };
  const unregister = sockets.add({
    session: grant.session,
    upstream: grant.upstream,
    fingerprint: grant.credential.fingerprint,
    close: (cause) => end(cause, cause === 'shutdown' ? 'complete' : 'aborted', CLOSE_ERRORS[cause]),
  });

  const forward = (from: WebSocket, to: WebSocket, transform: (frame: Frame) => Frame) => {
    from.on('message', (data: RawData, binary: boolean) => {
      if (ended) return;
      touch();
      const frame = transform({ data: toBuffer(data), binary });
      if (from === client) bytesIn += frame.data.length;
      else bytesOut += frame.data.length;
      // Backpressure: a slow reader pauses the other side instead of filling memory.
      if (to.bufferedAmount > 4 * grant.route.websocket.maxMessageBytes) from.pause();
      to.send(frame.data, { binary: frame.binary }, () => {
        if (from.isPaused && to.bufferedAmount <= grant.route.websocket.maxMessageBytes) from.resume();
      });
    });
  };
  forward(client, upstream, (frame) => frame);
  // Every message from the upstream, text or binary, is scrubbed whole: each form of the credential → [REDACTED].
  forward(upstream, client, (frame) => ({ data: scrub(frame.data, secrets, scrubbed), binary: frame.binary }));

  // A close from one side is passed on to the other with its code (its reason scrubbed). A 1009 here is the
  // peer's own limit (Keyward's maxPayload is reported as an error first, below), passed on like any close.
  const onClose = (from: WebSocket) => (code: number, reason: Buffer) => {
    const passed = {
      code: SENDABLE(code) ? code : code === 1005 ? 1000 : 1011,
      reason: from === upstream ? closeReason(reason, secrets, scrubbed) : closeReason(reason, [], scrubbed),
    };
    end(
      passed.code === 1000 && !passed.reason ? null : passed,
      code === 1000 || code === 1001 || code === 1005 ? 'complete' : 'error',
      null,
    );
  };
  client.on('close', onClose(client));
  upstream.on('close', onClose(upstream));
  // ws reports a message over maxPayload as an error before it closes with 1009: both sides are closed at once.
  // Any other error (a broken frame, a reset) ends the socket as 1011; its message is never logged or sent.
  const onError = (error: Error & { code?: string }) =>
    error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH'
      ? end({ code: 1009, reason: 'message too big' }, 'aborted', 'payload_too_large')
      : end({ code: 1011, reason: '' }, 'error', null);
  client.on('error', onError);
  upstream.on('error', onError);
  // Everything listens: what the upstream sent since its handshake is read now (in order, scrubbed). One that
  // went away in the meantime (a reset while the client's handshake completed) ends the socket.
  if (upstream.readyState !== WebSocket.OPEN) end({ code: 1011, reason: '' }, 'error', null);
  else upstream.resume();
}

function closeSocket(socket: WebSocket, code: number, reason: string): void {
  if (socket.readyState === WebSocket.CLOSED || socket.readyState === WebSocket.CLOSING) return;
  try {
    socket.close(code, reason);
  } catch {
    socket.terminate();
  }
  // A peer that never answers the close frame is cut off.
  setTimeout(() => socket.terminate(), 5_000).unref();
}

/** A socket's scrubber hits so far, and which secrets they were (its record counts and names them). */
interface Scrubbed {
  hits: number;
  readonly echoes: EchoTally;
}

/** One message scrubbed whole; its replacements are added to `scrubbed` (the socket's record counts them). */
function scrub(data: Buffer, secrets: readonly string[], scrubbed: Scrubbed): Buffer {
  const scrubber = new StreamScrubber(secrets, scrubbed.echoes.form);
  if (!scrubber.active) return data;
  const head = scrubber.push(data);
  const tail = scrubber.flush();
  scrubbed.hits += scrubber.hits;
  return tail.length === 0 ? head : Buffer.concat([head, tail]);
}

/**
 * A close reason passed on: scrubbed, then cut to what a close frame holds on a UTF-8 boundary. A reason holds at
 * most 123 bytes, so an upstream that echoes a long key in one must cut it short, and what it kept is no whole form
 * the scrubber knows: from the upstream, any run of KEY_LIKE_RUN characters or more that a form of a key could
 * hold (letters, digits, `-_+/=%.~\` and the like) is redacted, whether or not it is part of the key. Redacting
 * only runs that are would answer a client's guesses: its text echoed in a reason would come back redacted
 * exactly when it continues the key (a service key's public prefix, then one character more at a time).
 */
function closeReason(reason: Buffer, secrets: readonly string[], scrubbed: Scrubbed): string {
  // A run that holds KEY_LIKE_RUN characters of a form of a key counts as a scrubber hit, as a whole form does: the
  // socket's record, the metric and the detector's alert see a key cut short in a reason too. The count stays on
  // the server; what the client gets does not depend on it.
  const countCut = (run: Buffer) => {
    const secret = secretPartlyIn(run.toString('utf8'), secrets);
    if (secret === -1) return;
    scrubbed.hits++;
    scrubbed.echoes.secret(secret);
  };
  let text = redactKeyLikeRuns(scrub(reason, secrets, scrubbed), secrets, KEY_LIKE_RUN, countCut).data.toString('utf8');
  while (Buffer.byteLength(text) > MAX_REASON_BYTES) text = text.slice(0, -1);
  return text;
}

/** Characters in a row that a close reason from the upstream may not show (16: 96 bits of a base64 key). */
const KEY_LIKE_RUN = 16;

/** The first secret (its index) of which `text` holds KEY_LIKE_RUN characters in a row of some form, or -1. */
function secretPartlyIn(text: string, secrets: readonly string[]): number {
  const forms = secrets.flatMap((secret, index) => [...namedSecretForms(secret).keys()].filter((form) => form.length >= KEY_LIKE_RUN).map((form) => ({ form, index })));
  for (let i = 0; i + KEY_LIKE_RUN <= text.length; i++) {
    const window = text.slice(i, i + KEY_LIKE_RUN);
    const found = forms.find(({ form }) => form.includes(window));
    if (found) return found.index;
  }
  return -1;
}

/** The values a query shows under `ticket` or a name a lenient server reads as it (`Ticket`, `ticket[]`, `tick%2565t`). */
function ticketsShown(query: URLSearchParams): string[] {
  return [...query].filter(([name]) => queryParamKey(name) === 'ticket').map(([, value]) => value);
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * A handshake (RFC 6455 §4.1): a GET's upgrade with the version this server speaks and no body. One with a body
 * would have it read as the client's first frames, relayed before the client saw the 101.
 */
function isWebSocketHandshake(req: IncomingMessage): boolean {
  return (
    !hasContent(req) &&
    (req.headers.upgrade ?? '').toLowerCase() === 'websocket' &&
    HANDSHAKE_KEY.test(req.headers['sec-websocket-key'] ?? '') &&
    req.headers['sec-websocket-version'] === '13'
  );
}
