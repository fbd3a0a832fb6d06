import 'server-only';
import { parseCookie } from 'cookie';
import { NextRequest } from 'next/server';
import { handleBackchannelLogout } from '@/lib/core/api/backchannel-logout';
import { handleAudit, handleKeyAction, handleKeyList, handleKeyRevoke } from '@/lib/core/api/admin';
import { handleAlerts, handleAlertUndo } from '@/lib/core/api/alerts';
import { endPendingConnects, handleAdminUserConnections, handleConnectCallback, handleConnection, handleConnections, handleConnectStart } from '@/lib/core/api/connect';
import { handleUserKey } from '@/lib/core/api/keys';
import { handleMetrics } from '@/lib/core/api/metrics';
import { handleUsage, handleUsageTop } from '@/lib/core/api/usage';
import { handleMobileAuthorize, handleMobileRevoke, handleMobileToken } from '@/lib/core/api/mobile';
import { handleOAuthMetadata } from '@/lib/core/api/oauth-metadata';
import { handleAdminRevoke, handleLogout, handleRevokeAll } from '@/lib/core/api/revoke';
import { changesSignIn, handleSignInPost } from '@/lib/core/api/sign-in';
import { handleWsTicket } from '@/lib/core/api/ws-ticket';
import { errorResponse } from '@/lib/core/errors';
import type { Runtime } from '@/lib/core/runtime';
import { CALLBACK_URL_COOKIE, SIGN_IN_EXPIRED, SIGN_IN_UNREACHABLE, createAuthHandlers, type AuthHandlers, type AuthPages } from './auth';
import { trackAuthRequest } from './auth-store';
import { runtimeOrUnavailable, type RouteHandler, type RuntimeSource } from './proxy-route';

/** Keyward's own API, one route handler per endpoint (README "HTTP contract"); lib/next/keyward.ts hands them out. */
export interface ApiRoutes {
  /** /api/auth/[...nextauth]: Auth.js, behind Keyward's sign-in rules. */
  readonly authGetRoute: (request: Request) => Promise<Response>;
  readonly authPostRoute: (request: Request) => Promise<Response>;
  /** POST /api/auth/backchannel-logout: OIDC Back-Channel Logout 1.0, posted by the sign-in provider. */
  readonly backchannelLogoutRoute: RouteHandler;
  readonly userKeyRoute: RouteHandler<{ upstream: string }>;
  readonly adminRevokeRoute: RouteHandler<{ userId: string }>;
  readonly adminKeysRoute: RouteHandler;
  readonly adminKeyActionRoute: RouteHandler<{ upstream: string; action: string }>;
  readonly adminKeyRevokeRoute: RouteHandler;
  readonly adminAuditRoute: RouteHandler;
  /** GET /api/admin/alerts and POST /api/admin/alerts/<id>/undo: the anomaly detector's actions. */
  readonly adminAlertsRoute: RouteHandler;
  readonly adminAlertUndoRoute: RouteHandler<{ alertId: string }>;
  /** GET /api/admin/usage and /api/admin/usage/top: usage aggregates. */
  readonly adminUsageRoute: RouteHandler;
  readonly adminUsageTopRoute: RouteHandler;
  readonly revokeAllRoute: RouteHandler;
  readonly logoutRoute: RouteHandler;
  readonly mobileAuthorizeRoute: RouteHandler;
  readonly mobileTokenRoute: RouteHandler;
  /** POST /api/session/token/revoke: token revocation (RFC 7009) for the mobile token exchange. */
  readonly mobileRevokeRoute: RouteHandler;
  /** GET /.well-known/oauth-authorization-server: RFC 8414 metadata for the mobile token exchange. */
  readonly oauthMetadataRoute: RouteHandler;
  readonly wsTicketRoute: RouteHandler;
  /** GET /api/metrics: Prometheus, behind KEYWARD_METRICS_TOKEN (404 without it). */
  readonly metricsRoute: RouteHandler;
  /** Connected accounts: GET /api/connect/<provider> and its /callback, GET /api/connections, GET/DELETE /api/connections/<provider>. */
  readonly connectStartRoute: RouteHandler<{ provider: string }>;
  readonly connectCallbackRoute: RouteHandler<{ provider: string }>;
  readonly connectionsRoute: RouteHandler;
  readonly connectionRoute: RouteHandler<{ provider: string }>;
  /** GET /api/admin/users/<userId>/connections: role admin. */
  readonly adminUserConnectionsRoute: RouteHandler<{ userId: string }>;
}

/** Route handlers for Keyward's own API: each translates params, then hands over to lib/core/api. */
export function createApiRoutes(getRuntime: RuntimeSource, pages: AuthPages): ApiRoutes {
  function withRuntime<P>(handle: (request: Request, params: P, runtime: Runtime) => Promise<Response>): RouteHandler<P> {
    return async (request, context) => {
      const runtime = runtimeOrUnavailable(getRuntime);
      if (runtime instanceof Response) return runtime;
      return handle(request, await context.params, runtime);
    };
  }
  const auth = authRoutes(getRuntime, createAuthHandlers(getRuntime, pages), Boolean(pages?.error));
  return {
    ...auth,
    userKeyRoute: withRuntime<{ upstream: string }>((request, { upstream }, runtime) => handleUserKey(request, upstream, runtime)),
    adminRevokeRoute: withRuntime<{ userId: string }>((request, { userId }, runtime) => handleAdminRevoke(request, userId, runtime)),
    adminKeysRoute: withRuntime<object>((request, _, runtime) => handleKeyList(request, runtime)),
    adminKeyActionRoute: withRuntime<{ upstream: string; action: string }>((request, { upstream, action }, runtime) =>
      handleKeyAction(request, upstream, action, runtime),
    ),
    adminKeyRevokeRoute: withRuntime<object>((request, _, runtime) => handleKeyRevoke(request, runtime)),
    adminAuditRoute: withRuntime<object>((request, _, runtime) => handleAudit(request, runtime)),
    adminAlertsRoute: withRuntime<object>((request, _, runtime) => handleAlerts(request, runtime)),
    adminAlertUndoRoute: withRuntime<{ alertId: string }>((request, { alertId }, runtime) => handleAlertUndo(request, alertId, runtime)),
    adminUsageRoute: withRuntime<object>((request, _, runtime) => handleUsage(request, runtime)),
    adminUsageTopRoute: withRuntime<object>((request, _, runtime) => handleUsageTop(request, runtime)),
    revokeAllRoute: withRuntime<object>((request, _, runtime) => handleRevokeAll(request, runtime)),
    logoutRoute: withRuntime<object>((request, _, runtime) => handleLogout(request, runtime)),
    backchannelLogoutRoute: withRuntime<object>((request, _, runtime) => handleBackchannelLogout(request, runtime)),
    mobileAuthorizeRoute: withRuntime<object>((request, _, runtime) => handleMobileAuthorize(request, runtime)),
    mobileTokenRoute: withRuntime<object>((request, _, runtime) => handleMobileToken(request, runtime)),
    mobileRevokeRoute: withRuntime<object>((request, _, runtime) => handleMobileRevoke(request, runtime)),
    oauthMetadataRoute: withRuntime<object>((request, _, runtime) => handleOAuthMetadata(request, runtime)),
    wsTicketRoute: withRuntime<object>((request, _, runtime) => handleWsTicket(request, runtime)),
    metricsRoute: withRuntime<object>((request, _, runtime) => handleMetrics(request, runtime)),
    connectStartRoute: withRuntime<{ provider: string }>((request, { provider }, runtime) => handleConnectStart(request, provider, runtime)),
    connectCallbackRoute: withRuntime<{ provider: string }>((request, { provider }, runtime) => handleConnectCallback(request, provider, runtime)),
    connectionsRoute: withRuntime<object>((request, _, runtime) => handleConnections(request, runtime)),
    connectionRoute: withRuntime<{ provider: string }>((request, { provider }, runtime) => handleConnection(request, provider, runtime)),
    adminUserConnectionsRoute: withRuntime<{ userId: string }>((request, { userId }, runtime) => handleAdminUserConnections(request, userId, runtime)),
  };
}

type AuthHandler = (request: Request) => Promise<Response>;

/**
 * Every Auth.js response, whatever the page: `Cache-Control: private, no-store` (its pages set the CSRF
 * cookie and carry the CSRF token; a shared cache must never keep one), and 503 `store_unavailable` when
 * a callback could not reach the store (lib/next/auth-store.ts), instead of what Auth.js made of it.
 * `ownErrorPage`: the app has an error page of its own (`pages.error`), which is told SIGN_IN_EXPIRED rather
 * than `Configuration` when the sign-in callback lacked its flow's cookies, and SIGN_IN_UNREACHABLE when the
 * identity provider could not be reached (Auth.js's built-in page knows only its own codes).
 */
function authRoute(getRuntime: RuntimeSource, handle: (request: Request, runtime: Runtime) => Promise<Response>, ownErrorPage: boolean): AuthHandler {
  return async (request) => {
    const runtime = runtimeOrUnavailable(getRuntime);
    if (runtime instanceof Response) return runtime;
    const { response, failure, invalidCheck, providerUnreachable } = await trackAuthRequest(() => handle(request, runtime));
    if (failure) {
      const requestId = crypto.randomUUID();
      runtime.logger.error({ err: failure.cause ?? failure, requestId }, 'auth failed: store unavailable');
      return errorResponse(failure, requestId);
    }
    // A sign-in (credentials or OIDC callback) or sign-out ends the connects the browser had pending.
    const answer = changesSignIn(request, response) ? endPendingConnects(response, runtime) : response;
    const headers = new Headers(answer.headers);
    headers.set('cache-control', 'private, no-store');
    const errorCode = invalidCheck ? SIGN_IN_EXPIRED : providerUnreachable ? SIGN_IN_UNREACHABLE : null;
    if (errorCode && ownErrorPage) renameConfigurationError(headers, errorCode);
    return new Response(answer.body, { status: answer.status, statusText: answer.statusText, headers });
  };
}

/**
 * Auth.js answers a sign-in callback without its state, PKCE or nonce cookie with a redirect to the error page's
 * `?error=Configuration` ("not configured correctly on the server"), since InvalidCheck is not one of the codes
 * it shows clients. The server is fine: the sign-in took longer than the cookies' 15 minutes, the browser dropped
 * them, or it started on another host name than the callback's. The page is told so (SIGN_IN_EXPIRED). Nor is it
 * when the identity provider is down or unreachable from the server (SIGN_IN_UNREACHABLE): nothing to fix here.
 */
function renameConfigurationError(headers: Headers, code: string): void {
  const location = headers.get('location');
  if (location === null) return;
  let url: URL;
  try {
    url = new URL(location);
  } catch {
    return;
  }
  if (url.searchParams.get('error') !== 'Configuration') return;
  url.searchParams.set('error', code);
  headers.set('location', url.href);
}

/**
 * Auth.js's handlers take a NextRequest (they read `nextUrl` when AUTH_URL is set). Next's own request is
 * one; the sign-in form rebuilt by lib/core/api/sign-in.ts is not, and is rebuilt from its URL, headers and
 * (small, already checked) body: wrapping a Request object of another realm throws inside Next's bundle.
 *
 * Auth.js builds every URL it answers with (its callback and sign-in URLs, the redirect after sign-in, OIDC's
 * `redirect_uri`) on the request's URL, which inside Next is the internal `http://localhost:<port>` whatever the
 * Host. next-auth moves it to AUTH_URL's origin when that is set, and does nothing under AUTH_TRUST_HOST: a
 * deployment trusting the host then sent browsers and the identity provider to localhost. So the request is
 * given the public origin first, the one Keyward's CSRF check uses: AUTH_URL's, or, where the host is trusted,
 * the one the forwarded/Host headers name.
 */
async function toNextRequest(request: Request, publicOrigin: string | null): Promise<NextRequest> {
  const url = new URL(request.url);
  const search = withoutBadCallbackUrl(url.searchParams) ?? url.search;
  const cookie = withoutBadCallbackCookie(request.headers.get('cookie'));
  const publicUrl =
    (publicOrigin !== null && publicOrigin !== url.origin) || search !== url.search ? `${publicOrigin ?? url.origin}${url.pathname}${search}` : null;
  if (request instanceof NextRequest && cookie === null) return publicUrl === null ? request : new NextRequest(publicUrl, request);
  const headers = new Headers(request.headers);
  if (cookie !== null) headers.set('cookie', cookie);
  const body = request.method === 'POST' ? await request.text() : undefined;
  return new NextRequest(publicUrl ?? request.url, { method: request.method, headers: [...headers], body, signal: request.signal });
}

/**
 * A `callbackUrl` Auth.js would refuse (neither a path nor an http(s) URL: `foo`, `javascript:…`) fails its
 * config check: every Auth.js endpoint then answers 500 "problem with the server configuration" (or sends the
 * browser to the sign-in page's "not configured correctly"), logged as an error with the client's text, which
 * anyone could cause without signing in. Such a value is dropped, as if not sent: Auth.js and the sign-in page
 * then go home after sign-in. The same test as Auth.js's (@auth/core lib/utils/assert.js `isValidHttpUrl`).
 */
function isAcceptedCallbackUrl(value: string): boolean {
  try {
    return /^https?:$/.test(new URL(value, value.startsWith('/') ? 'http://callback.invalid' : undefined).protocol);
  } catch {
    return false;
  }
}

/** The query without a `callbackUrl` Auth.js would refuse, or null when there is none to drop. */
function withoutBadCallbackUrl(query: URLSearchParams): string | null {
  const values = query.getAll('callbackUrl');
  if (values.every(isAcceptedCallbackUrl)) return null;
  const kept = new URLSearchParams(query);
  kept.delete('callbackUrl');
  const search = kept.toString();
  return search ? `?${search}` : '';
}

/** The Cookie header without a callback-URL cookie Auth.js would refuse, or null when there is none to drop. */
function withoutBadCallbackCookie(header: string | null): string | null {
  if (header === null || !header.includes(CALLBACK_URL_COOKIE)) return null;
  // Read as Auth.js reads it (the `cookie` package: the first of that name, unquoted, percent-decoded where it can).
  const value = parseCookie(header)[CALLBACK_URL_COOKIE];
  if (value === undefined || isAcceptedCallbackUrl(value)) return null;
  return header
    .split(';')
    .filter((pair) => pair.split('=', 1)[0]!.trim() !== CALLBACK_URL_COOKIE)
    .join(';');
}

function authRoutes(getRuntime: RuntimeSource, handlers: AuthHandlers, ownErrorPage: boolean): Pick<ApiRoutes, 'authGetRoute' | 'authPostRoute'> {
  const onPublicOrigin = (request: Request, runtime: Runtime) => toNextRequest(request, runtime.allowedOrigins.publicOrigin(request));
  return {
    authGetRoute: authRoute(getRuntime, async (request, runtime) => handlers.GET(await onPublicOrigin(request, runtime)), ownErrorPage),
    // Auth.js's POST handler behind the sign-in rules: one form body, the attempt limits, a password slot.
    authPostRoute: authRoute(
      getRuntime,
      (request, runtime) => handleSignInPost(request, runtime, async (form) => handlers.POST(await onPublicOrigin(form, runtime))),
      ownErrorPage,
    ),
  };
}
