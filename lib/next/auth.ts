import 'server-only';
import { randomUUID } from 'node:crypto';
import type { NextRequest } from 'next/server';
import NextAuth, { type NextAuthConfig } from 'next-auth';
import Credentials from 'next-auth/providers/credentials';
import type { Provider } from 'next-auth/providers';
import { SESSION_COOKIE, authTimeClaims, sessionFromClaims, signInLifetimeEnd } from '@/lib/core/session/session';
import { noteInvalidCheck, noteProviderUnreachable, storeFailed } from './auth-store';
import type { Runtime } from '@/lib/core/runtime';
import { trustsHost } from '@/lib/core/settings';
import { LOCAL_SUBJECT_PREFIX, currentLocalUser } from '@/lib/core/users/file';
import { MAX_PASSWORD_LENGTH } from '@/lib/core/users/password';
import { emailDomainRefusal } from '@/lib/core/session/email-domain';
import { isAcceptedAccountId } from '@/lib/core/session/provider-sessions';

/**
 * Cookie settings per DESIGN.md: the session cookie is `__Host-`, Secure, HttpOnly, SameSite=Strict,
 * Path=/, no Domain, and encrypted (Auth.js JWE). Auth.js's short-lived sign-in cookies (PKCE, state, nonce,
 * callback URL) must survive the identity provider's cross-site redirect back, so they are SameSite=Lax.
 * Browsers treat http://localhost as a secure context, so Secure cookies work in development too.
 */
const strict = { httpOnly: true, sameSite: 'strict', path: '/', secure: true } as const;
const lax = { httpOnly: true, sameSite: 'lax', path: '/', secure: true } as const;
export const CALLBACK_URL_COOKIE = '__Host-keyward.callback-url';
const cookies: NextAuthConfig['cookies'] = {
  sessionToken: { name: SESSION_COOKIE, options: strict },
  callbackUrl: { name: CALLBACK_URL_COOKIE, options: lax },
  csrfToken: { name: '__Host-keyward.csrf-token', options: lax },
  pkceCodeVerifier: { name: '__Host-keyward.pkce', options: { ...lax, maxAge: 900 } },
  state: { name: '__Host-keyward.state', options: { ...lax, maxAge: 900 } },
  nonce: { name: '__Host-keyward.nonce', options: { ...lax, maxAge: 900 } },
};

/**
 * Auth.js's own messages as Keyward's JSON log lines, through its redaction and secret scrubber, instead of
 * Auth.js's default (console text, with a cause's stack and its details as JSON). The details are left out: an
 * OAuth error's may hold what a provider answered. A wrong password is the user's doing, not the server's: info.
 */
function authLogger(logger: Runtime['logger']): NonNullable<NextAuthConfig['logger']> {
  return {
    error(error) {
      const type = (error as { type?: unknown }).type;
      const name = typeof type === 'string' ? type : error.name;
      if (name === 'CredentialsSignin') {
        logger.info({ authError: name }, 'auth.js: credentials sign-in refused');
        return;
      }
      if (name === 'InvalidCheck') {
        noteInvalidCheck();
        logger.warn({ authError: name, check: clip(error.message) }, INVALID_CHECK_MESSAGE);
        return;
      }
      // What a client's request caused (no CSRF token, a cookie that does not decode, an unknown action): a warning
      // without its stack, not an error anyone could write into the log without signing in.
      const cause = (error.cause as { err?: unknown } | undefined)?.err;
      if (CLIENT_CAUSED.has(name) && (name !== 'JWTSessionError' || isUndecodableCookie(cause))) {
        logger.warn({ authError: name }, `auth.js: ${name}`);
        return;
      }
      if (isNetworkFailure(error)) {
        noteProviderUnreachable();
        logger.error({ authError: name, err: cause instanceof Error ? cause : error }, PROVIDER_UNREACHABLE_MESSAGE);
        return;
      }
      logger.error({ authError: name, err: cause instanceof Error ? cause : error }, `auth.js: ${name}`);
    },
    warn(code) {
      logger.warn({ authWarning: code }, `auth.js warning: ${code}`);
    },
  };
}

/**
 * The sign-in page's `?error=` code (instead of Auth.js's `Configuration`) for a sign-in callback that came back
 * without the cookies its flow set: lib/next/api-routes.ts puts it there; app/signin/page.tsx says what to do.
 */
export const SIGN_IN_EXPIRED = 'SignInExpired';

/**
 * The sign-in page's `?error=` code (instead of Auth.js's `Configuration`) when the identity provider could not be
 * reached (its discovery, token or userinfo request failed on the network): lib/next/api-routes.ts puts it there.
 */
export const SIGN_IN_UNREACHABLE = 'ProviderUnreachable';

const PROVIDER_UNREACHABLE_MESSAGE =
  'auth.js: the identity provider could not be reached (refused, unresolved or timed out): it is down, or KEYWARD_OIDC_ISSUER names a wrong host or port, or this server has no route to it (a firewall, a missing egress proxy); the user is told to try again later';

/**
 * Node's codes for a connection that could not be made (and undici's timeouts), and a timeout's name: what a
 * provider that is down, unresolvable or unreachable from the server looks like to fetch. A connection reset or
 * closed mid-exchange (ECONNRESET, EPIPE, undici's UND_ERR_SOCKET) is left out: it is also what `http://` to a
 * TLS port looks like, a misconfiguration that "try again later" would hide.
 */
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

/**
 * Whether an error Auth.js logged was a request that got no answer: fetch's TypeError with a network cause, found
 * down the causes (`cause`, Auth.js's `cause.err`) and an AggregateError's `errors` (one per address tried).
 */
export function isNetworkFailure(error: unknown, depth = 0): boolean {
  if (depth > 6 || typeof error !== 'object' || error === null) return false;
  const { code, name, cause, errors } = error as { code?: unknown; name?: unknown; cause?: unknown; errors?: unknown };
  if ((typeof code === 'string' && NETWORK_CODES.has(code)) || name === 'TimeoutError') return true;
  const next = [cause, (cause as { err?: unknown } | undefined)?.err, ...(Array.isArray(errors) ? errors : [])];
  return next.some((inner) => inner !== error && isNetworkFailure(inner, depth + 1));
}

/**
 * An `InvalidCheck`, with what most likely caused it: anyone can send a callback without cookies, but a user who
 * lands here did nothing wrong, and an operator reading "InvalidCheck" alone would not know where to look.
 */
const INVALID_CHECK_MESSAGE =
  "auth.js: InvalidCheck: a sign-in callback failed its flow's checks (its state, PKCE and nonce cookies, kept 15 minutes, and its state parameter): most likely the user took longer at the identity provider, the browser dropped the cookies, or the sign-in was started on another host name than the callback's (with AUTH_URL set, SSO completes on AUTH_URL's host only: a name in KEYWARD_ALLOWED_ORIGINS cannot start it); the user is asked to start again";

/** Auth.js's own message, cut short (its check messages are fixed text; a cause's could be longer). */
function clip(message: string): string {
  const firstLine = message.split('\n', 1)[0]!;
  return firstLine.length > 200 ? `${firstLine.slice(0, 200)}…` : firstLine;
}

/**
 * Auth.js error types a client's request causes, whatever the server's configuration. `JWTSessionError` only when
 * the cookie itself did not decode (isUndecodableCookie): Auth.js raises it too for anything Keyward's own `jwt` and
 * `session` callbacks throw, a fault of the server's that stays an error with its cause. `InvalidCheck`: a sign-in
 * callback without the flow's state, PKCE or nonce cookie (anyone can GET one); `OAuthCallbackError`: the provider
 * sent the user back with an error (a user who denied consent).
 */
const CLIENT_CAUSED = new Set(['MissingCSRF', 'JWTSessionError', 'UnknownAction', 'InvalidCallbackUrl', 'InvalidCheck', 'OAuthCallbackError']);

/** A session cookie that is not one of ours: jose's JWE/JWT errors (`ERR_JWE_…`, `ERR_JWT_…`), or Auth.js's decode refusing it. */
function isUndecodableCookie(cause: unknown): boolean {
  if (!(cause instanceof Error)) return false;
  const code = (cause as { code?: unknown }).code;
  return (typeof code === 'string' && /^ERR_J(WE|WT|WS|OSE)_/.test(code)) || cause.message === 'Invalid JWT' || cause.message === 'no matching decryption secret';
}

/** Auth.js's pages (sign-in, error …); unset ones are Auth.js's own, served under /api/auth. */
export type AuthPages = NextAuthConfig['pages'];

function buildConfig(runtime: Runtime, pages: AuthPages): NextAuthConfig {
  const { settings, users } = runtime;
  const providers: Provider[] = [];
  if (users) {
    providers.push(
      Credentials({
        id: 'credentials',
        name: 'Local account',
        credentials: { username: { label: 'Username' }, password: { label: 'Password', type: 'password' } },
        async authorize(credentials) {
          const { username, password } = credentials ?? {};
          if (typeof username !== 'string' || typeof password !== 'string') return null;
          if (username.length > 64 || password.length > MAX_PASSWORD_LENGTH) return null;
          const user = await users.authenticate(username, password);
          if (!user) return null;
          return {
            id: `${LOCAL_SUBJECT_PREFIX}${user.username}`,
            name: user.name,
            roles: [...user.roles],
            claims: { ...user.claims },
            passwordVersion: user.passwordVersion,
          };
        },
      }),
    );
  }
  if (settings.KEYWARD_OIDC_ISSUER && settings.KEYWARD_OIDC_CLIENT_ID && settings.KEYWARD_OIDC_CLIENT_SECRET) {
    providers.push({
      id: 'oidc',
      name: settings.KEYWARD_OIDC_NAME,
      type: 'oidc',
      issuer: settings.KEYWARD_OIDC_ISSUER,
      clientId: settings.KEYWARD_OIDC_CLIENT_ID,
      clientSecret: settings.KEYWARD_OIDC_CLIENT_SECRET,
      // Authorization code flow with PKCE, state and nonce (OAuth 2.0 Security BCP, RFC 9700 §2.1.1).
      checks: ['pkce', 'state', 'nonce'],
      authorization: { params: { scope: 'openid profile email' } },
    });
  }

  return {
    secret: settings.AUTH_SECRET,
    providers,
    cookies,
    // The same rule as Keyward's public origin (lib/core/origin): AUTH_URL, or a trusted Host. Production
    // refuses to start with neither, so Auth.js never answers UntrustedHost.
    trustHost: Boolean(settings.AUTH_URL) || trustsHost(settings),
    // The app's own pages (this repository's: /signin, in the app's style), else Auth.js's built-in ones.
    // Never undefined: Auth.js spreads the config over its defaults, and `pages: undefined` would replace its `{}`.
    pages: pages ?? {},
    logger: authLogger(runtime.logger),
    session: { strategy: 'jwt', maxAge: settings.KEYWARD_SESSION_MAX_AGE },
    events: {
      // Sign-out ends the session on the server too: a copy of the cookie is refused by every instance.
      async signOut(message) {
        const token = 'token' in message ? message.token : null;
        if (token && typeof token.sid === 'string') {
          await runtime.revocations.revokeSession(token.sid).catch(storeFailed);
        }
      },
    },
    callbacks: {
      // A provider's account id becomes the user id `<provider>:<sub>`, by which admins revoke sessions and read
      // usage (USER_ID). One outside OIDC Core's rule (a sub that is not ASCII, or longer than 255 characters) is
      // refused here rather than signed in for good as a user no admin could act on: the sign-in page says
      // AccessDenied.
      // With KEYWARD_OIDC_EMAIL_DOMAINS, so is an account without a verified email at one of those domains.
      signIn({ account, profile }) {
        if (!account || account.provider === 'credentials') return true;
        if (!isAcceptedAccountId(account.provider, account.providerAccountId)) {
          runtime.logger.warn({ provider: account.provider }, "sign-in refused: the provider's account id (sub) is not printable ASCII of at most 255 characters");
          return false;
        }
        const refusal = account.provider === 'oidc' ? emailDomainRefusal(profile, settings.KEYWARD_OIDC_EMAIL_DOMAINS) : null;
        if (refusal) {
          runtime.logger.warn({ provider: account.provider, reason: refusal }, 'sign-in refused by KEYWARD_OIDC_EMAIL_DOMAINS');
          return false;
        }
        return true;
      },
      // Runs at sign-in (user/account set) and on every session read. Tokens from the provider are not
      // copied into the JWT: the cookie only says who the user is.
      async jwt({ token, user, account, profile }) {
        if (user && account) {
          const claimRoles = profile?.[settings.KEYWARD_OIDC_ROLES_CLAIM];
          const roles =
            account.provider === 'credentials'
              ? ((user as { roles?: string[] }).roles ?? settings.KEYWARD_DEFAULT_ROLES)
              : Array.isArray(claimRoles) && claimRoles.every((r) => typeof r === 'string')
                ? claimRoles
                : settings.KEYWARD_DEFAULT_ROLES;
          const subject = account.provider === 'credentials' ? user.id! : `${account.provider}:${account.providerAccountId}`;
          const claims: Record<string, string> =
            account.provider === 'credentials'
              ? ((user as { claims?: Record<string, string> }).claims ?? {})
              : Object.fromEntries(
                  settings.KEYWARD_OIDC_CLAIMS.flatMap((name) => (typeof profile?.[name] === 'string' ? [[name, profile[name] as string]] : [])),
                );
          // The provider's tokens stay on the server, sealed in the store, for upstreams that use them.
          if (runtime.oauthTokens && runtime.oauthProviders.has(account.provider) && account.access_token) {
            await runtime.oauthTokens
              .save(account.provider, { userId: subject }, {
                accessToken: account.access_token,
                refreshToken: account.refresh_token ?? null,
                expiresAt: typeof account.expires_at === 'number' ? account.expires_at * 1000 : 0,
              })
              .catch(storeFailed);
          }
          const sid = randomUUID();
          const signedInAt = Date.now();
          // A local user's password version: a new password (or the name given to someone else) ends the session.
          const pwv = account.provider === 'credentials' ? (user as { passwordVersion?: string }).passwordVersion : undefined;
          // Listed for the admin pages (by the id's hash); the session itself stays a sealed cookie.
          await runtime.sessionIndex
            .record(subject, {
              sessionId: sid,
              kind: 'browser',
              expiresAt: signedInAt + settings.KEYWARD_SESSION_MAX_AGE * 1000,
              authTime: signedInAt,
              roles,
              passwordVersion: pwv ?? null,
            })
            .catch(storeFailed);
          // The provider's session id (`sid` in the ID token): its back-channel logout ends this session (and the
          // app tokens minted from it) without a store read on any call (lib/core/session/provider-sessions.ts).
          if (account.provider === 'oidc' && typeof profile?.sid === 'string' && typeof profile.iss === 'string') {
            await runtime.providerSessions.recordSignIn(profile.iss, profile.sid, { sessionId: sid, userId: subject }).catch(storeFailed);
          }
          return {
            sub: subject,
            name: user.name ?? profile?.name ?? null,
            roles,
            claims,
            sid,
            ...authTimeClaims(signedInAt),
            ...(pwv === undefined ? {} : { pwv }),
          };
        }
        // Every later read (including /api/auth/session) checks server-side revocation, and a local user's
        // entry in the users file: a revoked session, or a user removed from the file, is ended here too, and a
        // changed role or name is written into the cookie, so the browser's view matches what the proxy enforces.
        // A renewal never takes a session past KEYWARD_SESSION_MAX_AGE from its sign-in (Auth.js would slide it).
        if (typeof token.sid === 'string' && typeof token.sub === 'string') {
          const session = sessionFromClaims({ ...token, exp: Number.MAX_SAFE_INTEGER }, 'cookie');
          if (session && signInLifetimeEnd(session, settings.KEYWARD_SESSION_MAX_AGE * 1000) <= Date.now()) return null;
          if (session && (await runtime.revocations.isRevoked(session).catch(storeFailed))) return null;
          // A cookie from before sign-in times were kept (not revoked, as checked above: one without a time counts
          // as the oldest) gets one now, so that its lifetime ends too.
          const renewed = session && session.authTime <= 0 ? { ...token, ...authTimeClaims(Date.now()) } : token;
          if (session && users) {
            const current = currentLocalUser(session, users);
            if (!current) return null;
            if (current !== session) return { ...renewed, name: current.name, roles: [...current.roles], claims: { ...current.claims } };
          }
          return renewed;
        }
        return token;
      },
      // What /api/auth/session returns to the browser: a name, roles and expiry, never a token.
      async session({ session, token }) {
        const signedIn = sessionFromClaims({ ...token, exp: Number.MAX_SAFE_INTEGER }, 'cookie');
        const end = signedIn ? signInLifetimeEnd(signedIn, settings.KEYWARD_SESSION_MAX_AGE * 1000) : Infinity;
        return {
          // When the session ends: Auth.js's renewed expiry, or the sign-in's lifetime if that comes first.
          expires: new Date(Math.min(new Date(session.expires as unknown as string).getTime(), end)).toISOString(),
          user: { name: typeof token.name === 'string' ? token.name : null },
          roles: Array.isArray(token.roles) ? token.roles : [],
        } as unknown as typeof session;
      },
    },
  };
}

/** Auth.js's route handlers for /api/auth/[...nextauth]; they take Next's own request (a NextRequest). */
export interface AuthHandlers {
  GET(request: NextRequest): Promise<Response>;
  POST(request: NextRequest): Promise<Response>;
}

/**
 * Auth.js for one `createKeyward`: its config is built per request from the runtime (so a configuration error
 * surfaces as the runtime's, not at import), with the app's pages.
 */
export function createAuthHandlers(getRuntime: () => Runtime, pages: AuthPages): AuthHandlers {
  const { handlers } = NextAuth(() => buildConfig(getRuntime(), pages));
  return { GET: (request) => handlers.GET(request), POST: (request) => handlers.POST(request) };
}
