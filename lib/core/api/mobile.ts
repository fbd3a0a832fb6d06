import { createHmac, timingSafeEqual } from 'node:crypto';
import { DpopError, requestHtu } from '../dpop/proof';
import { endpointOff } from '../errors';
import {
  authorizeParams,
  readAuthorizeClient,
  readAuthorizeRequest,
  callbackLocation,
  type AuthorizeClient,
} from '../mobile/authorize-request';
import { OAuthError, oauthErrorBody, oauthErrorResponse, toOAuthError } from '../mobile/oauth-error';
import type { TokenResponse } from '../mobile/tokens';
import type { Runtime } from '../runtime';
import { derivedKey } from '../session/derived-key';
import type { Session } from '../session/session';
import { MAX_ACCESS_TOKEN_LENGTH } from '../session/verify';
import { bounceResponse } from './bounce';
import { apiHandler, cookieIn, readCappedText, readCookie, readJsonObject } from './guard';

/**
 * The native-app token exchange speaks OAuth 2.0 (RFC 6749 with PKCE, RFC 7636; discovery at
 * /.well-known/oauth-authorization-server, lib/core/api/oauth-metadata.ts), so an unmodified OAuth client
 * (AppAuth, oauth4webapi) can use it. Its errors are OAuth's (lib/core/mobile/oauth-error.ts); only "the
 * feature is off" keeps Keyward's JSON 404, as for any route that does not exist.
 */

/**
 * GET /api/session/mobile/authorize?redirect_uri&code_challenge&code_challenge_method=S256[&state][&client_id][&response_type=code]
 * Opened by the app in the system browser. Not signed in: off to the sign-in page and back here. Signed in, an
 * app whose redirect URI does not prove who it is (a private-use scheme or loopback http: any app can claim
 * those, RFC 8252 §8.6) goes to the consent page (CONSENT_PAGE), whose form posts back here:
 * POST /api/session/mobile/authorize, form-encoded, the same parameters and `decision=allow|deny`.
 */
export function handleMobileAuthorize(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (!runtime.mobile.enabled) throw endpointOff('The mobile token exchange', 'KEYWARD_MOBILE_REDIRECT_URIS');
    return authorize(request, runtime);
  });
}

async function authorize(request: Request, runtime: Runtime): Promise<Response> {
  const response = await answer(request, runtime);
  // A consent post that carried the page's cookie, taken or refused, ends it: one answer per page the endpoint sent
  // the browser to. Not any post: a page of another site posting here (refused) must not end the user's consent.
  if (request.method === 'POST' && readCookie(request, CONSENT_COOKIE) !== null) response.headers.append('set-cookie', CLEAR_CONSENT);
  return response;
}

async function answer(request: Request, runtime: Runtime): Promise<Response> {
  let client: AuthorizeClient | null = null;
  const issuer = runtime.allowedOrigins.publicOrigin(request);
  // 303 answers the consent form's POST, so the browser follows with a GET.
  const status = request.method === 'POST' ? 303 : 302;
  try {
    if (request.method !== 'GET' && request.method !== 'POST') {
      throw new OAuthError('invalid_request', 'The authorization endpoint answers GET and POST only.', {
        status: 405,
        headers: { allow: 'GET, POST' },
      });
    }
    // A page on another site must not be able to start this for the user (Fetch Metadata): refused, not
    // redirected, so it cannot even open the app.
    const site = request.headers.get('sec-fetch-site');
    if (site === 'cross-site' || site === 'same-site') {
      // Back from signing in at an identity provider (another site): the browser says cross-site and sends no
      // Strict session cookie. It started this very request (RESUME_COOKIE), so a page of this site takes it on.
      if (request.method === 'GET' && resumes(request, runtime)) return resumePage(request);
      throw notFromTheApp();
    }
    // A page of this site taking the request on: the sign-in page after a sign-in (its callbackUrl), or resumePage.
    // Only a request this browser started (RESUME_COOKIE): a link of another site to the sign-in page, with a
    // callbackUrl of this endpoint and parameters of its own, becomes a same-origin request once the user signs in.
    const resumed = request.method === 'GET' && site === 'same-origin';
    // A navigation only: a fetch (a page's script, a router's prefetch) would spend the start's cookie and a code
    // on an answer no browser follows to the app.
    if (resumed && (request.headers.get('sec-fetch-mode') !== 'navigate' || !resumes(request, runtime))) {
      throw notFromTheApp();
    }
    // Taken on: the start's cookie is done with (a sign-in in between sets it again).
    const done = resumed ? [CLEAR_RESUME] : [];
    // Read first, for the consent post's cookie (bound to the session); a store that cannot say is answered once the
    // client is known, so the error goes back to the app (below), and nothing is issued meanwhile.
    const read = await runtime.verifySession(request).then(
      (verified) => ({ session: verified?.via === 'cookie' ? verified : null, failure: null }),
      (failure: unknown) => ({ session: null, failure }),
    );
    const consent = request.method === 'POST' ? await readConsent(request, runtime, read.failure ? undefined : read.session) : null;
    const query = authorizeParams(consent?.params ?? new URL(request.url).searchParams);
    client = readAuthorizeClient(query, (uri) => runtime.mobile.isRegisteredRedirect(uri));
    const wanted = readAuthorizeRequest(query, client);
    if (read.failure) throw read.failure;
    const { session } = read;
    if (!session) {
      // The GET's own URL; after a consent POST (signed out since the page was shown), the request starts over there.
      const back = `${AUTHORIZE_PATH}?${query}`;
      const resume = `${RESUME_COOKIE}=${requestMac(runtime, 'resume', query, null)}; Path=/; Max-Age=${RESUME_SECONDS}; HttpOnly; Secure; SameSite=Lax`;
      return redirect(`/api/auth/signin?callbackUrl=${encodeURIComponent(back)}`, undefined, status, [resume]);
    }
    if (consent === null && needsConsent(client.redirectUri)) {
      // The page may ask only about this request, the one the app opened, in this session (CONSENT_COOKIE).
      return redirect(`${CONSENT_PAGE}?${query}`, undefined, 302, [...done, consentCookie(runtime, query, session.sessionId)]);
    }
    if (consent?.decision === 'deny') {
      const denied = new OAuthError('access_denied', 'The user did not let the app sign in.');
      return redirect(callbackLocation(client, oauthErrorBody(denied), issuer), undefined, status);
    }
    return redirect(await runtime.mobile.issueCode(session, wanted, issuer), undefined, status, done);
  } catch (error) {
    const oauthError = toOAuthError(error);
    const requestId = logFailure(oauthError, runtime);
    // RFC 6749 §4.1.2.1: once the redirect URI and client are known to be good, the error goes back to the app.
    if (client) return redirect(callbackLocation(client, oauthErrorBody(oauthError), issuer), requestId, status);
    return oauthErrorResponse(oauthError, requestId);
  }
}

/**
 * The request a signed-out browser was sent to sign in for (a hash of its parameters), set on that redirect. Lax,
 * so it comes back with the identity provider's redirect (a cross-site top-level GET), which the session cookie
 * (Strict) does not; and it is the browser's own: a page of another site can neither set it nor read it, so it
 * cannot start a request of its own this way, only send back the one this browser started.
 */
const RESUME_COOKIE = '__Host-keyward.mobile-resume';
/** As long as a sign-in may take (Auth.js's own state and PKCE cookies last 15 minutes). */
const RESUME_SECONDS = 900;

/**
 * What the resume and consent cookies hold: an HMAC (a key derived from KEYWARD_SESSION_SECRET) over what the cookie
 * is for, the session it was set in (the consent cookie; none for the resume cookie, set while signed out) and the
 * request's parameters. Each is good for that request only, and nobody but this deployment can make one: a page
 * that got a cookie into the browser some other way (a browser bug) could not have computed its value.
 */
function requestMac(runtime: Pick<Runtime, 'settings'>, purpose: 'resume' | 'consent', query: URLSearchParams, sessionId: string | null): string {
  return createHmac('sha256', derivedKey(runtime.settings.KEYWARD_SESSION_SECRET, 'keyward mobile authorize cookies v1'))
    .update(`${purpose}\n${sessionId ?? ''}\n${authorizeParams(query)}`, 'utf8')
    .digest('base64url');
}

/** Whether a resume or consent cookie's value names this very request (`query`, its parameters in the order sent). */
function cookieNames(cookie: string | null, expected: string): boolean {
  if (cookie === null) return false;
  const given = Buffer.from(cookie);
  const wanted = Buffer.from(expected);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

function resumes(request: Request, runtime: Pick<Runtime, 'settings'>): boolean {
  return cookieNames(readCookie(request, RESUME_COOKIE), requestMac(runtime, 'resume', new URL(request.url).searchParams, null));
}

/** A request a web page started, not the app: refused, not redirected, so it cannot even open the app. */
function notFromTheApp(): OAuthError {
  return new OAuthError('access_denied', 'The authorization request must come from the app opening the browser, not from a web page.');
}

/** Ends the start's cookie, once the request it started was taken on (the same-origin GET). */
const CLEAR_RESUME = `${RESUME_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax`;

/** The page that takes a request back from the identity provider on, same-origin: the cookie stays for that GET. */
function resumePage(request: Request): Response {
  return bounceResponse(`${AUTHORIZE_PATH}?${new URL(request.url).searchParams}`);
}

/** The page that asks the user before an app that cannot prove who it is gets a code (app/authorize/page.tsx). */
export const CONSENT_PAGE = '/authorize';

/**
 * The request this endpoint sent the browser to the consent page for, in this session (requestMac), set on that
 * redirect: the page offers Allow, and the consent post is taken, only for it. Anyone can link to the page, and
 * its form posts from this origin whoever sent the browser there (another site's link through the sign-in page's
 * callbackUrl, a sibling subdomain's link straight to it); only this endpoint, taking the app's own request, sets
 * this cookie, and no other page can set it (`__Host-`) or read it (HttpOnly). Strict: the page and its post are
 * same-site, as the redirect from this endpoint is. A sibling subdomain's link carries it too, which is why it
 * names the request: a request of anyone else's making never matches it.
 */
const CONSENT_COOKIE = '__Host-keyward.mobile-consent';
/** Long enough to read the page and answer; the app starts over after that. */
const CONSENT_SECONDS = 600;

function consentCookie(runtime: Pick<Runtime, 'settings'>, query: URLSearchParams, sessionId: string): string {
  return `${CONSENT_COOKIE}=${requestMac(runtime, 'consent', query, sessionId)}; Path=/; Max-Age=${CONSENT_SECONDS}; HttpOnly; Secure; SameSite=Strict`;
}

/** Ends the consent cookie: one post per page this endpoint sent the browser to (whatever the answer). */
const CLEAR_CONSENT = `${CONSENT_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict`;

/** Whether `cookies` (a request's Cookie header) hold the consent cookie for this request in this session. */
function consentCookieNames(runtime: Pick<Runtime, 'settings'>, cookies: string | null, query: URLSearchParams, sessionId: string): boolean {
  return cookieNames(cookieIn(cookies, CONSENT_COOKIE), requestMac(runtime, 'consent', query, sessionId));
}

/** The authorization endpoint, the one API route the sign-in page's `callbackUrl` may name (lib/next/pages.ts). */
export const AUTHORIZE_PATH = '/api/session/mobile/authorize';

/**
 * RFC 8252 §8.6: a private-use URI scheme or a loopback port can be claimed by any app on the device, so a
 * hostile app could open this endpoint with the real app's redirect URI and its own PKCE challenge, and with the
 * user already signed in here, get a code for the user without the user doing anything. Those ask first. An
 * `https` redirect URI is an app link the platform verified against the domain, which proves the app.
 */
export function needsConsent(redirectUri: string): boolean {
  return !redirectUri.startsWith('https:');
}

/** A consent page or post for a request this endpoint did not send the browser to the page with. */
function notAskedHere(): OAuthError {
  return new OAuthError('access_denied', 'The consent page answers only a sign-in that an app started in this browser.');
}

/**
 * The consent form's post: its own site only (the form is on this origin; a cross-site post could otherwise
 * choose the PKCE challenge and the redirect URI for a signed-in user), form-encoded, under 16 KiB. The
 * authorization parameters come from the body, never the query.
 */
async function readConsent(
  request: Request,
  runtime: Runtime,
  /** Null: signed out; undefined: unknown (the store could not say; the caller answers that before anything is issued). */
  session: Pick<Session, 'sessionId'> | null | undefined,
): Promise<{ params: URLSearchParams; decision: 'allow' | 'deny' }> {
  // This site's own origin only: the front ends KEYWARD_ALLOWED_ORIGINS lists may call APIs, not answer for the user.
  const origin = request.headers.get('origin');
  if (origin === null || origin === 'null' || origin !== runtime.allowedOrigins.publicOrigin(request)) {
    throw new OAuthError('access_denied', 'The consent form must be posted from this site.');
  }
  if (!/^application\/x-www-form-urlencoded\b/i.test(request.headers.get('content-type') ?? '')) {
    throw new OAuthError('invalid_request', 'Send the consent form form-encoded (application/x-www-form-urlencoded).');
  }
  const text = await readCappedText(
    request,
    16 * 1024,
    () => new OAuthError('invalid_request', 'The request body is too large.'),
  );
  const params = new URLSearchParams(text);
  const decision = params.getAll('decision');
  if (decision.length !== 1 || (decision[0] !== 'allow' && decision[0] !== 'deny')) {
    throw new OAuthError('invalid_request', 'decision must be allow or deny, once.');
  }
  params.delete('decision');
  // The request this endpoint sent the browser to the consent page for, in this session, and no other
  // (CONSENT_COOKIE): the page's form posts from this origin whoever linked the browser to the page. Refused, not
  // redirected, as above. Signed out (the session ended since the page was shown), nothing is issued: the post is
  // sent to sign in and start over at the endpoint, which asks again.
  if (session && !consentCookieNames(runtime, request.headers.get('cookie'), params, session.sessionId)) throw notAskedHere();
  return { params, decision: decision[0] };
}

/** What the consent page shows and posts back: see describeConsent. */
export type ConsentRequest =
  | {
      readonly state: 'ask';
      /**
       * The app as the operator registered it: its redirect URI's private-use scheme, or "A program on this device"
       * for a loopback URI. Never the request's `client_id`: whoever sends the user here chooses that text.
       */
      readonly app: string;
      readonly redirectUri: string;
      /** The signed-in user, as the page names them. */
      readonly user: string;
      /** The authorization parameters to post back as hidden fields, as the app sent them. */
      readonly fields: readonly (readonly [string, string])[];
    }
  /** Back to the authorize endpoint, which sends the user to sign in and then here again. */
  | { readonly state: 'signed-out'; readonly authorizeUrl: string }
  | { readonly state: 'invalid'; readonly message: string }
  | { readonly state: 'off' };

/**
 * For the consent page: the app asking, or why there is nothing to ask. Checked as the authorize endpoint checks
 * it, so the page never offers to allow a request the endpoint would refuse: among others, one it did not send
 * the browser here with in this session (CONSENT_COOKIE, read from `cookies`, the page request's Cookie header).
 * `user` is the signed-in user's display name and session, null when signed out (the page reads the session as
 * every page does).
 */
export function describeConsent(
  query: URLSearchParams,
  runtime: Runtime,
  user: { readonly name: string; readonly sessionId: string } | null,
  cookies: string | null,
): ConsentRequest {
  if (!runtime.mobile.enabled) return { state: 'off' };
  try {
    const client = readAuthorizeClient(query, (uri) => runtime.mobile.isRegisteredRedirect(uri));
    readAuthorizeRequest(query, client);
    const carried = authorizeParams(query);
    // Back to the endpoint, which refuses a request another page started (Sec-Fetch-Site and its resume cookie).
    if (user === null) return { state: 'signed-out', authorizeUrl: `${AUTHORIZE_PATH}?${carried}` };
    if (!consentCookieNames(runtime, cookies, carried, user.sessionId)) throw notAskedHere();
    const fields = [...carried];
    const scheme = new URL(client.redirectUri).protocol.slice(0, -1);
    const app = scheme === 'http' || scheme === 'https' ? 'A program on this device' : scheme;
    return { state: 'ask', app, redirectUri: client.redirectUri, user: user.name, fields };
  } catch (error) {
    if (error instanceof OAuthError) return { state: 'invalid', message: error.description };
    throw error;
  }
}

/**
 * POST /api/session/token, form-encoded (RFC 6749 §3.2) or JSON:
 *   grant_type=authorization_code&code&code_verifier&redirect_uri[&client_id]  → first tokens
 *   grant_type=refresh_token&refresh_token[&client_id]                          → rotated tokens
 * Answers {access_token, token_type: "Bearer", expires_in, refresh_token}, errors as RFC 6749 §5.2, both
 * with Cache-Control: no-store. With a `DPoP` proof header (RFC 9449 §5), both tokens are bound to the proof's
 * key and token_type is "DPoP"; KEYWARD_MOBILE_DPOP=required refuses a grant without one.
 */
export function handleMobileToken(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (!runtime.mobile.enabled) throw endpointOff('The mobile token exchange', 'KEYWARD_MOBILE_REDIRECT_URIS');
    try {
      const tokens = await token(request, runtime);
      // RFC 9449 §8.2: the next nonce comes with each answer to a DPoP client, saving it a refusal next time.
      return tokenResponse(tokens, tokens.token_type === 'DPoP' ? runtime.dpop.nonces.current() : null);
    } catch (error) {
      const oauthError = toOAuthError(error);
      return oauthErrorResponse(oauthError, logFailure(oauthError, runtime));
    }
  });
}

async function token(request: Request, runtime: Runtime): Promise<TokenResponse> {
  checkOAuthPost(request, 'token');
  const params = await readTokenParams(request, TOKEN_PARAMETERS);
  if (params.has('client_secret') || params.has('client_assertion')) {
    throw new OAuthError('invalid_client', CLIENTS_ARE_PUBLIC);
  }
  const clientId = params.get('client_id') ?? null;
  const required = (name: TokenParameter) => {
    const value = params.get(name);
    if (value === undefined) throw new OAuthError('invalid_request', `${name} is required.`);
    return value;
  };
  switch (params.get('grant_type')) {
    case undefined:
      throw new OAuthError('invalid_request', 'grant_type is required.');
    case 'authorization_code':
      return runtime.mobile.exchangeCode({
        code: required('code'),
        verifier: required('code_verifier'),
        redirectUri: required('redirect_uri'),
        clientId,
        proofKey: () => dpopKey(request, runtime),
      });
    case 'refresh_token':
      return runtime.mobile.refresh(required('refresh_token'), clientId, () => dpopKey(request, runtime));
    default:
      throw new OAuthError('unsupported_grant_type', 'grant_type must be authorization_code or refresh_token.');
  }
}

/**
 * POST /api/session/token/revoke, form-encoded (RFC 7009 §2.1): token[&token_type_hint][&client_id]. Ends the
 * sign-in the token (refresh or access) belongs to; answers 200 with an empty body whether or not the token
 * was known (§2.2), errors as RFC 6749 §5.2. No session, cookie or CSRF check: the token is the credential,
 * and revoking one is all anyone holding it can do here.
 */
export function handleMobileRevoke(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (!runtime.mobile.enabled) throw endpointOff('The mobile token exchange', 'KEYWARD_MOBILE_REDIRECT_URIS');
    try {
      checkOAuthPost(request, 'revocation');
      const params = await readTokenParams(request, REVOCATION_PARAMETERS);
      if (params.has('client_secret') || params.has('client_assertion')) {
        throw new OAuthError('invalid_client', CLIENTS_ARE_PUBLIC);
      }
      const token = params.get('token');
      if (token === undefined) throw new OAuthError('invalid_request', 'token is required.');
      // token_type_hint is only a hint (§2.1): both kinds are looked for, so any value is accepted.
      await runtime.mobile.revoke(token, params.get('client_id') ?? null);
      return new Response(null, { status: 200, headers: NO_STORE });
    } catch (error) {
      const oauthError = toOAuthError(error);
      return oauthErrorResponse(oauthError, logFailure(oauthError, runtime));
    }
  });
}

/**
 * RFC 9449 §5: the thumbprint of the key of the request's DPoP proof, which the tokens are then bound to; null
 * without a proof (KEYWARD_MOBILE_DPOP=optional). Checked by the grant once its code or refresh token is known to
 * be held (MobileTokens' ProofKey), before it is spent, so a refused proof spends neither. The proof must carry a nonce this server handed out (§8): without one (or
 * with an old one) the answer is `use_dpop_nonce` with a fresh nonce in `DPoP-Nonce`, and the client signs again.
 */
async function dpopKey(request: Request, runtime: Runtime): Promise<string | null> {
  const proof = request.headers.get('dpop');
  if (proof === null) {
    if (runtime.settings.KEYWARD_MOBILE_DPOP !== 'required') return null;
    throw new OAuthError('invalid_dpop_proof', 'This server binds tokens to a key: send a DPoP proof with the token request (RFC 9449).');
  }
  const { proofs, nonces } = runtime.dpop;
  try {
    const verified = await proofs.verify(proof, {
      method: request.method,
      url: requestHtu(request, runtime.allowedOrigins.publicOrigin(request)),
      nonces,
    });
    return verified.jkt;
  } catch (error) {
    if (!(error instanceof DpopError)) throw error;
    // A fresh nonce with every refusal (§8: at most one DPoP-Nonce header), so the client's next proof has one.
    throw new OAuthError(error.code, error.message, { headers: { 'dpop-nonce': nonces.current() }, cause: error });
  }
}

/** What the token and revocation endpoints take alike: POST, parameters in the body, no client authentication. */
function checkOAuthPost(request: Request, endpoint: 'token' | 'revocation'): void {
  if (request.method !== 'POST') {
    throw new OAuthError('invalid_request', `The ${endpoint} endpoint answers POST only.`, {
      status: 405,
      headers: { allow: 'POST' },
    });
  }
  if (new URL(request.url).search) {
    throw new OAuthError('invalid_request', 'Send parameters in the body, never in the query string.');
  }
  refuseClientAuthentication(request);
}

const CLIENTS_ARE_PUBLIC =
  'Apps are public clients here (token_endpoint_auth_methods_supported: none): send no client secret or Authorization header.';

/**
 * RFC 6749 §5.2: a client that authenticated with the Authorization header gets 401 and a WWW-Authenticate
 * challenge of the same scheme. Keyward has no client secrets to check, so any attempt is refused rather
 * than ignored (a client that believes it holds a secret is misconfigured).
 */
function refuseClientAuthentication(request: Request): void {
  const authorization = request.headers.get('authorization');
  if (authorization === null) return;
  const scheme = /^([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?:\s|$)/.exec(authorization)?.[1] ?? 'Basic';
  throw new OAuthError('invalid_client', CLIENTS_ARE_PUBLIC, {
    headers: { 'www-authenticate': `${scheme} realm="keyward"` },
  });
}

/** The parameters the token endpoint reads; any other is ignored (RFC 6749 §3.2: "MUST ignore unrecognized"). */
const TOKEN_PARAMETERS = [
  'grant_type',
  'code',
  'code_verifier',
  'redirect_uri',
  'refresh_token',
  'client_id',
  'client_secret',
  'client_assertion',
] as const;
type TokenParameter = (typeof TOKEN_PARAMETERS)[number];
/** The parameters the revocation endpoint reads (RFC 7009 §2.1, and the client's, refused as for the token endpoint). */
const REVOCATION_PARAMETERS = ['token', 'token_type_hint', 'client_id', 'client_secret', 'client_assertion'] as const;
/** An access token is the longest value a client sends back (to the revocation endpoint). */
const MAX_VALUE = MAX_ACCESS_TOKEN_LENGTH;

/**
 * Reads an OAuth request's body: form-encoded (the standard) or JSON (Keyward's first apps). Each of `names`
 * at most once, a string of at most MAX_VALUE characters; one sent empty counts as absent (§3.2).
 */
async function readTokenParams<Name extends string>(request: Request, names: readonly Name[]): Promise<Map<Name, string>> {
  const type = request.headers.get('content-type') ?? '';
  const values = new Map<Name, unknown[]>();
  if (/^application\/x-www-form-urlencoded\b/i.test(type)) {
    // Read under its cap as it streams (a chunked body declares no length): the endpoint needs no session.
    const text = await readCappedText(request, 16 * 1024, () => new OAuthError('invalid_request', 'The request body is too large.'));
    const form = new URLSearchParams(text);
    for (const name of names) values.set(name, form.getAll(name));
  } else if (/^application\/json\b/i.test(type)) {
    const body = await readJsonObject(request);
    for (const name of names) values.set(name, Object.hasOwn(body, name) ? [body[name]] : []);
  } else {
    throw new OAuthError('invalid_request', 'Send the parameters form-encoded (application/x-www-form-urlencoded).');
  }
  const params = new Map<Name, string>();
  for (const [name, list] of values) {
    if (list.length > 1) throw new OAuthError('invalid_request', `${name} must not be sent more than once.`);
    const value = list[0];
    if (value === undefined || value === '' || value === null) continue;
    if (typeof value !== 'string') throw new OAuthError('invalid_request', `${name} must be a string.`);
    if (value.length > MAX_VALUE) throw new OAuthError('invalid_request', `${name} is too long.`);
    params.set(name, value);
  }
  return params;
}

const NO_STORE = { 'cache-control': 'no-store', pragma: 'no-cache', 'x-content-type-options': 'nosniff' };

/** RFC 6749 §5.1: the token response must not be cached anywhere. */
function tokenResponse(body: TokenResponse, dpopNonce: string | null): Response {
  const headers = new Headers(NO_STORE);
  if (dpopNonce !== null) headers.set('dpop-nonce', dpopNonce);
  return Response.json(body, { headers });
}

/** A request id for the error; the server's own failures are logged with it (the client sees only the id). */
function logFailure(error: OAuthError, runtime: Pick<Runtime, 'logger'>): string {
  const requestId = crypto.randomUUID();
  if (error.status >= 500)
    runtime.logger.error({ err: error.cause ?? error, requestId }, 'mobile token exchange failed');
  return requestId;
}

function redirect(location: string, requestId?: string, status: 302 | 303 = 302, cookies: readonly string[] = []): Response {
  const headers = new Headers({ location, 'cache-control': 'no-store', 'referrer-policy': 'no-referrer' });
  if (requestId) headers.set('x-request-id', requestId);
  for (const cookie of cookies) headers.append('set-cookie', cookie);
  return new Response(null, { status, headers });
}
