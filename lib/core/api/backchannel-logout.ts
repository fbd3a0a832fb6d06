import { MAX_CLOCK_SKEW_S } from '../dpop/proof';
import { KeywardError, endpointOff, errorResponse } from '../errors';
import type { Runtime } from '../runtime';
import { InvalidLogoutToken, LogoutProviderUnavailable, MAX_AGE_SECONDS, SKEW_SECONDS, type LogoutClaims } from '../session/logout-token';
import { oidcUserId } from '../session/provider-sessions';
import { readCappedText } from './guard';
import { StoreUnavailableError } from '../../store/types';

/**
 * POST /api/auth/backchannel-logout: OpenID Connect Back-Channel Logout 1.0. The sign-in provider
 * (KEYWARD_OIDC_*) posts a logout token here, server to server, when a user's session there ends; Keyward
 * verifies it (lib/core/session/logout-token.ts) and revokes the matching sessions and mobile token families
 * on every instance (lib/core/session/provider-sessions.ts).
 *
 * The one Keyward endpoint with neither a session nor CSRF checks: the token is the only credential, so
 * everything else is strict. POST only, `application/x-www-form-urlencoded` only, a small body, one
 * `logout_token` field, nothing in the query string. Answers (§2.8), always with Cache-Control: no-store:
 *  - 200, empty: logged out (also when the token names no session Keyward still has);
 *  - 400 {"error":"invalid_request"}: anything wrong with the request or the token, a replayed `jti`
 *    included, never saying what (the reason is logged, the token never);
 *  - 405 / 413 with the same body: another method, or a body over MAX_BODY_BYTES;
 *  - 503 {"error":"temporarily_unavailable"}: the store or the provider's keys could not be reached (the
 *    provider may retry: the `jti` is not kept for a logout that did not happen);
 *  - Keyward's 404 `route_not_found` when no OIDC sign-in is configured.
 */

/** A logout token is well under 2 KiB; the form adds `logout_token=`. */
const MAX_BODY_BYTES = 16 * 1024;
const FORM_TYPE = /^application\/x-www-form-urlencoded\s*(;\s*charset="?utf-8"?\s*)?$/i;
/**
 * A `jti` is kept until no token carrying it could pass the `iat` check any more, on any instance: each checks
 * `iat` on its own clock, so one whose clock is behind the instance that took the token (by up to
 * MAX_CLOCK_SKEW_S, as for DPoP proofs) still accepts it that much later.
 */
const JTI_TTL_MS = (MAX_AGE_SECONDS + 2 * SKEW_SECONDS + MAX_CLOCK_SKEW_S) * 1000;

/** §2.8: "Cache-Control: no-cache, no-store" and "Pragma: no-cache", so no intermediary keeps a token. */
const NO_STORE = { 'cache-control': 'no-cache, no-store', pragma: 'no-cache', 'x-content-type-options': 'nosniff' };

type Refusal = 'invalid_request' | 'temporarily_unavailable' | 'server_error';

class Refused extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(reason);
  }
}

export async function handleBackchannelLogout(request: Request, runtime: Runtime): Promise<Response> {
  const requestId = crypto.randomUUID();
  const { logoutTokens, providerSessions } = runtime;
  if (!logoutTokens) return errorResponse(endpointOff('Back-channel logout', 'an OIDC sign-in (KEYWARD_OIDC_ISSUER)'), requestId);
  let claims: LogoutClaims | null = null;
  let claimed = false;
  try {
    const token = await readLogoutToken(request);
    claims = await logoutTokens.verify(token);
    // §2.6 step 8, across instances: the first to record this jti carries it out, any other copy is refused.
    claimed = await providerSessions.firstUse(claims, JTI_TTL_MS);
    if (!claimed) throw new InvalidLogoutToken('jti already used');
    const outcome = await providerSessions.end(claims);
    await runtime.audit.recordAdmin({
      action: 'sessions.revoke',
      actor: `backchannel:${claims.issuer}`,
      ...(claims.sub !== null ? { targetUser: oidcUserId(claims.sub) } : {}),
      outcome: `backchannel_logout: ${outcome.sessions} sessions, ${outcome.users} users everywhere`,
    });
    runtime.logger.info({ requestId, ...outcome, bySid: claims.sid !== null, bySub: claims.sub !== null }, 'back-channel logout');
    return new Response(null, { status: 200, headers: { ...NO_STORE, 'x-request-id': requestId } });
  } catch (error) {
    // The jti was taken but the logout did not happen: let the provider's retry through.
    if (claimed && claims) await providerSessions.forget(claims).catch(() => {});
    return refusal(error, runtime, requestId);
  }
}

async function readLogoutToken(request: Request): Promise<string> {
  if (request.method !== 'POST') throw new Refused(405, 'method not POST', { allow: 'POST' });
  if (new URL(request.url).search) throw new Refused(400, 'query string present');
  if (!FORM_TYPE.test(request.headers.get('content-type') ?? '')) throw new Refused(400, 'not a form body');
  const declared = Number(request.headers.get('content-length') ?? NaN);
  if (declared > MAX_BODY_BYTES) throw new Refused(413, 'body too large');
  const form = new URLSearchParams(await readCappedText(request, MAX_BODY_BYTES, () => new Refused(413, 'body too large'), () => new Refused(400, 'body broke off')));
  const tokens = form.getAll('logout_token');
  if (tokens.length !== 1 || !tokens[0]) throw new Refused(400, 'not exactly one logout_token');
  return tokens[0];
}


/** The OAuth-style error (§2.8 allows RFC 6749 §5.2's `error`), with no description: the cause is logged only. */
function refusal(error: unknown, runtime: Pick<Runtime, 'logger'>, requestId: string): Response {
  let status: number;
  let code: Refusal;
  let headers: Record<string, string> = {};
  if (error instanceof Refused) {
    ({ status, headers } = error);
    code = 'invalid_request';
    runtime.logger.info({ requestId, reason: error.reason }, 'back-channel logout refused');
  } else if (error instanceof InvalidLogoutToken) {
    status = 400;
    code = 'invalid_request';
    runtime.logger.warn({ requestId, reason: error.reason }, 'back-channel logout refused: invalid logout token');
  } else if (
    error instanceof LogoutProviderUnavailable ||
    error instanceof StoreUnavailableError ||
    (error instanceof KeywardError && error.code === 'store_unavailable')
  ) {
    status = 503;
    code = 'temporarily_unavailable';
    runtime.logger.error({ requestId, err: (error as Error).cause ?? error }, 'back-channel logout failed: store or provider unavailable');
  } else {
    status = 500;
    code = 'server_error';
    runtime.logger.error({ requestId, err: error }, 'back-channel logout failed');
  }
  return Response.json({ error: code }, { status, headers: { ...NO_STORE, ...headers, 'x-request-id': requestId } });
}
