import 'server-only';
import { headers } from 'next/headers';
import { AUTHORIZE_PATH, CONSENT_PAGE, describeConsent, type ConsentRequest } from '@/lib/core/api/mobile';
import { isLocalPath } from '@/lib/core/connect/connections';
import { rolesAllow } from '@/lib/core/policy/authorize';
import type { Session } from '@/lib/core/session/session';
import { readSessionCookie } from '@/lib/core/session/verify';
import type { RuntimeSource } from './proxy-route';

/** What a page may show about the caller: never a token, a key or the session id. */
export interface PageSession {
  readonly userId: string;
  readonly name: string | null;
  readonly roles: readonly string[];
  readonly expiresAt: number;
}

/**
 * `ended`: the browser still sent a session cookie, but it no longer makes a session (revoked, signed out
 * elsewhere, past its lifetime, its user gone): the sign-in page says the session ended rather than nothing.
 * A cookie the browser itself expired is not sent, and is not told apart from a first visit.
 */
export type PageSessionState =
  | { readonly state: 'signed-in'; readonly session: PageSession }
  | { readonly state: 'signed-out'; readonly ended: boolean }
  | { readonly state: 'unavailable' };

export type CredentialKind = 'service' | 'own-key' | 'oauth' | 'by-claim' | 'connection';

/** What pages may read about Keyward (lib/next/keyward.ts hands these out): never a token, a key or a URL. */
export interface PageHelpers {
  /**
   * The caller's session for a page, checked exactly as the API checks it (cookie, expiry, server-side
   * revocation). A store outage is its own state, so the page says so instead of pretending nobody is signed in.
   */
  pageSession(): Promise<PageSessionState>;
  /**
   * The upstreams as a page lists them: id and whose credential is used. Never a URL, a header name or a key.
   * With `roles`, only those with a route one of them may call (what a user's own pages show).
   */
  upstreamSummaries(roles?: readonly string[]): { id: string; credential: CredentialKind }[];
  /** The connected-account providers a user can connect (README "Connected accounts"): id and name only. */
  connectionProviders(): { id: string; name: string }[];
  /** The sign-in methods configured (what a sign-in page offers). */
  signInMethods(): { local: boolean; oidc: { name: string } | null };
  /** Whether the demo page (and the benchmark's naive route) are served: `npm run dev`, or KEYWARD_DEMO=true. */
  demoEnabled(): boolean;
  /**
   * The mobile sign-in the consent page asks about (README "Mobile apps"), checked as the authorize endpoint
   * checks it: the app and where it returns to, or why there is nothing to ask.
   */
  mobileConsent(query: URLSearchParams): Promise<ConsentRequest | { readonly state: 'unavailable' }>;
}

export function createPageHelpers(getRuntime: RuntimeSource): PageHelpers {
  const helpers: PageHelpers = {
    async pageSession() {
      const session = await cookieSession();
      if (session === 'unavailable') return { state: 'unavailable' };
      if (!session) {
        const cookie = (await headers()).get('cookie');
        return { state: 'signed-out', ended: cookie !== null && readSessionCookie(cookie) !== null };
      }
      return { state: 'signed-in', session: { userId: session.userId, name: session.name, roles: [...session.roles], expiresAt: session.expiresAt } };
    },
    upstreamSummaries(roles) {
      const kinds: Record<string, CredentialKind> = { static: 'service', 'user-key': 'own-key', oauth: 'oauth', claim: 'by-claim' };
      const { registry, connections } = getRuntime();
      // A decoy route ignores roles (anyone may fall into it): it is no route a role may call.
      const listed = [...registry.values()].filter(
        (upstream) => roles === undefined || upstream.routes.some((route) => !route.decoy && rolesAllow(route, roles)),
      );
      return listed.map((upstream) => {
        const plan = upstream.credential;
        const credential = plan.source === 'oauth' && connections?.has(plan.provider) ? 'connection' : (kinds[plan.source] ?? 'service');
        return { id: upstream.id, credential };
      });
    },
    connectionProviders() {
      return [...(getRuntime().connections?.providers.values() ?? [])].map((provider) => ({ id: provider.id, name: provider.name }));
    },
    signInMethods() {
      const { users, settings } = getRuntime();
      return { local: users !== null, oidc: settings.KEYWARD_OIDC_ISSUER ? { name: settings.KEYWARD_OIDC_NAME } : null };
    },
    demoEnabled() {
      return getRuntime().settings.KEYWARD_DEMO;
    },
    async mobileConsent(query) {
      const session = await cookieSession();
      if (session === 'unavailable') return { state: 'unavailable' };
      // The session id stays here, never in what the page gets: the consent cookie is checked against it.
      const user = session ? { name: session.name ?? session.userId, sessionId: session.sessionId } : null;
      // The cookie the authorize endpoint set when it sent the browser here, for this request only.
      return describeConsent(query, getRuntime(), user, (await headers()).get('cookie'));
    },
  };
  /** The page request's cookie session, checked exactly as the API checks it; null without one. */
  async function cookieSession(): Promise<Session | null | 'unavailable'> {
    const cookie = (await headers()).get('cookie');
    // verifySession reads only the Cookie (and Authorization) header; the URL is never looked at.
    const request = new Request('http://keyward.invalid/', { headers: cookie ? { cookie } : {} });
    try {
      const session = await getRuntime().verifySession(request);
      return session?.via === 'cookie' ? session : null;
    } catch {
      return 'unavailable';
    }
  }
  return helpers;
}

/**
 * A callback URL from the query, kept only when it is a path on this site (no open redirect). Auth.js hands its
 * `callbackUrl` on as an absolute URL (`GET /api/auth/signin?callbackUrl=/x` arrives here as `http://host/x`), so
 * of an absolute http(s) URL only the path and query are kept: whatever its host, it leads back to this site.
 */
export function safeCallbackPath(value: string | string[] | undefined): string {
  let path = Array.isArray(value) ? value[0] : value;
  if (path && /^https?:\/\//i.test(path)) {
    if (!URL.canParse(path)) return '/';
    const url = new URL(path);
    path = `${url.pathname}${url.search}`;
  }
  if (!path || !isLocalPath(path)) return '/';
  // As a URL parser (the browser's, Next's router) resolves it: dot segments removed (`/.//evil.example` becomes
  // `//evil.example`, another host), so it is checked again.
  const resolved = new URL(path, 'https://keyward.invalid');
  const normalised = `${resolved.pathname}${resolved.search}`;
  if (resolved.origin !== 'https://keyward.invalid' || !isLocalPath(normalised)) return '/';
  // Pages only, and the mobile sign-in the app started. The sign-in page goes there itself once the user signs in,
  // so the browser calls it same-origin: an API route that refuses another site's link by Sec-Fetch-Site (the
  // connect start) would take another site's callbackUrl as the user's own request.
  // Read as a router may match it, escapes decoded (`/%61pi/connect/…`); a path that cannot be decoded is no page.
  let decoded: string;
  try {
    decoded = decodeURIComponent(resolved.pathname);
  } catch {
    return '/';
  }
  const api = decoded === '/api' || decoded.startsWith('/api/');
  if (api && resolved.pathname !== AUTHORIZE_PATH) return '/';
  // Nor the mobile sign-in's consent page, with a request of another site's making: a signed-out user reaches it
  // through the authorization endpoint (the callbackUrl above), never straight from the sign-in page.
  return decoded === CONSENT_PAGE || decoded.startsWith(`${CONSENT_PAGE}/`) ? '/' : normalised;
}
