import { KeywardError } from '../errors';
import {
  connectPath,
  parseExtraScopes,
  isLocalPath,
  safeReturnTo,
  PENDING_TTL_MS,
  type ConnectOutcome,
  type Connections,
} from '../connect/connections';
import type { Runtime } from '../runtime';
import { USER_ID } from '../session/provider-sessions';
import { fileOwner } from '../users/owner';
import { StoreUnavailableError } from '../../store/types';
import { requireAdmin } from './admin';
import { bounceResponse } from './bounce';
import { apiHandler, json, readCookie, requireRead, requireSession } from './guard';

/**
 * Connected accounts over HTTP (README "Connected accounts"):
 *   GET    /api/connect/<provider>[?returnTo=/path&scope=extra]  starts the authorization code flow (a navigation)
 *   GET    /api/connect/<provider>/callback                      the provider sends the browser back here
 *   GET    /api/connections                                      the caller's connections (never a token)
 *   GET    /api/connections/<provider>, DELETE                   one connection; disconnect (revoke, then delete)
 *   GET    /api/admin/users/<userId>/connections                 role admin: a user's connections and their status
 */

/**
 * The browser binding of a pending connect. The session cookie is SameSite=Strict, so the browser does not send it
 * on the provider's redirect back (a cross-site navigation); this cookie is Lax (sent on that top-level GET, as
 * Auth.js's own state and PKCE cookies are), lives 10 minutes, and proves the callback comes to the browser that
 * started the flow: the pending authorization holds its hash, with the session that started it.
 */
function bindingCookie(provider: string): string {
  return `__Host-keyward.connect-${provider}`;
}

/** The Set-Cookie that ends a pending connect's binding cookie (the attributes it was set with, Max-Age=0). */
function clearBinding(provider: string): string {
  return `${bindingCookie(provider)}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax`;
}

/**
 * A sign-in or sign-out answer (lib/core/api/sign-in.ts changesSignIn, Keyward's logout), with the binding
 * cookies of every configured provider cleared: a pending connect started by the user signed in before ends
 * there (its callback finds no binding: `expired`). Without this, a connect user A started would still complete
 * for A after user B signed in over A's session in the same browser: the callback arrives by a cross-site
 * redirect, which never carries the SameSite=Strict session cookie, so it cannot see that B is now the one
 * signed in. Returns the response itself when no provider is configured.
 */
export function endPendingConnects(response: Response, runtime: Pick<Runtime, 'connections'>): Response {
  const providers = [...(runtime.connections?.providers.keys() ?? [])];
  if (providers.length === 0) return response;
  const headers = new Headers(response.headers);
  for (const provider of providers) headers.append('set-cookie', clearBinding(provider));
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

const NO_STORE = { 'cache-control': 'private, no-store', 'referrer-policy': 'no-referrer' } as const;

function connectionsOf(runtime: Runtime): Connections {
  if (!runtime.connections)
    throw new KeywardError('route_not_found', { message: 'No connection provider is configured.' });
  return runtime.connections;
}

/**
 * GET /api/connect/<provider>: a signed-in user's browser navigates here (a link, so no CSRF header: what stops
 * another site is the SameSite=Strict session cookie, which a cross-site navigation does not carry, and fetch
 * metadata). Answers 303 to the provider's authorization endpoint and sets the binding cookie.
 */
export function handleConnectStart(request: Request, providerId: string, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (request.method !== 'GET') throw new KeywardError('method_not_allowed', { headers: { allow: 'GET' } });
    const connections = connectionsOf(runtime);
    connections.provider(providerId);
    const session = await runtime.verifySession(request);
    if (!session) throw new KeywardError('unauthenticated');
    if (session.via !== 'cookie')
      throw new KeywardError('forbidden', {
        message: 'Connect an account from the browser, signed in with a cookie session.',
      });
    const site = request.headers.get('sec-fetch-site');
    if (site === 'cross-site' || site === 'same-site') {
      throw new KeywardError('csrf_failed', {
        message: 'The request failed the cross-site request forgery check: Sec-Fetch-Site says another site.',
      });
    }
    const url = new URL(request.url);
    const origin = runtime.allowedOrigins.publicOrigin(request);
    if (!origin) throw new KeywardError('service_unavailable');
    const { url: authorizationUrl, binding } = await connections.begin(providerId, session, {
      returnTo: safeReturnTo(url.searchParams.get('returnTo')),
      extraScopes: parseExtraScopes(url.searchParams.get('scope')),
      redirectUri: `${origin}${connectPath(providerId)}/callback`,
    });
    const headers = new Headers({ location: authorizationUrl, ...NO_STORE });
    headers.append(
      'set-cookie',
      `${bindingCookie(providerId)}=${binding}; Path=/; Max-Age=${PENDING_TTL_MS / 1000}; HttpOnly; Secure; SameSite=Lax`,
    );
    return new Response(null, { status: 303, headers });
  });
}

/**
 * GET /api/connect/<provider>/callback: completes the connect and sends the browser back to its `returnTo` with
 * `?connected=<provider>`, or `?connect_error=<code>&connect_provider=<provider>` (codes: access_denied,
 * provider_error, expired, session_ended, unavailable). Never the provider's own text.
 *
 * Back through a page of this site, not a redirect: this request arrived by the provider's cross-site redirect,
 * and a redirect from here would still be part of that navigation, so the browser would withhold the
 * SameSite=Strict session cookie from the page it lands on (which would then show the user signed out). A
 * navigation the page itself starts (meta refresh) is same-site, and carries it.
 */
export function handleConnectCallback(request: Request, providerId: string, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (request.method !== 'GET') throw new KeywardError('method_not_allowed', { headers: { allow: 'GET' } });
    const connections = connectionsOf(runtime);
    connections.provider(providerId);
    const params = new URL(request.url).searchParams;
    let outcome: ConnectOutcome;
    try {
      const session = await runtime.verifySession(request);
      outcome = await connections.complete(providerId, {
        params,
        binding: readCookie(request, bindingCookie(providerId)),
        session: session?.via === 'cookie' ? session : null,
      });
    } catch (error) {
      if (
        !(error instanceof StoreUnavailableError) &&
        !(error instanceof KeywardError && error.code === 'store_unavailable')
      )
        throw error;
      runtime.logger.error({ err: error, provider: providerId }, 'connect callback: store unavailable');
      outcome = { ok: false, error: 'unavailable', returnTo: '/' };
    }
    // The stored path is never parsed as a URL again (a parser could read `//…` in it as a host): the outcome's
    // parameters are appended to it as they are.
    const returnTo = isLocalPath(outcome.returnTo) ? outcome.returnTo : '/';
    const [beforeHash, hash = ''] = returnTo.split(/#(.*)/s, 2) as [string, string?];
    const result = new URLSearchParams(outcome.ok ? { connected: providerId } : { connect_error: outcome.error, connect_provider: providerId });
    const target = `${beforeHash}${beforeHash.includes('?') ? '&' : '?'}${result}${hash ? `#${hash}` : ''}`;
    const headers = new Headers();
    if (outcome.ok || !outcome.untouched) {
      headers.set('set-cookie', clearBinding(providerId));
    }
    return bounceResponse(target, headers);
  });
}

/** GET /api/connections: the caller's connections, and every provider they can connect to. */
export function handleConnections(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    requireRead(request);
    const session = await requireSession(request, runtime);
    const connections = runtime.connections;
    if (!connections) return json({ connections: [], providers: [] });
    return json({
      connections: await connections.list(session),
      providers: [...connections.providers.values()].map((provider) => ({
        provider: provider.id,
        name: provider.name,
        connectUrl: connectPath(provider.id),
      })),
    });
  });
}

/** GET /api/connections/<provider> (404 when not connected) and DELETE (disconnect: revoke at the provider, delete). */
export function handleConnection(request: Request, providerId: string, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    const connections = connectionsOf(runtime);
    const session = await requireSession(request, runtime);
    connections.provider(providerId);
    switch (request.method) {
      case 'GET':
      case 'HEAD': {
        const view = (await connections.list(session)).find((connection) => connection.provider === providerId);
        if (!view) throw new KeywardError('not_found', { message: 'You have no connection to this provider.' });
        return json(view);
      }
      case 'DELETE': {
        const { revoked, shared } = await connections.disconnect(providerId, session.userId);
        return json({ provider: providerId, disconnected: true, revokedAtProvider: revoked, sharedAccount: shared });
      }
      default:
        throw new KeywardError('method_not_allowed', { headers: { allow: 'GET, HEAD, DELETE' } });
    }
  });
}

/** GET /api/admin/users/<userId>/connections: role admin; a user's connections with their status (never a token). */
export function handleAdminUserConnections(request: Request, userId: string, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    requireRead(request);
    await requireAdmin(request, runtime);
    if (!USER_ID.test(userId))
      throw new KeywardError('bad_request', { message: 'Not a user id.' });
    return json({ userId, connections: runtime.connections ? await runtime.connections.list(fileOwner(userId, runtime.users)) : [] });
  });
}
