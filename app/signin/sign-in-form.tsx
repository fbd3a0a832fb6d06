'use client';

import { useRouter } from 'next/navigation';
import { useEffect, useState, useSyncExternalStore, type FormEvent } from 'react';

interface Props {
  local: boolean;
  oidc: { name: string } | null;
  callbackUrl: string;
  initialError: string | null;
}

/**
 * Keyward's cookies are Secure (`__Host-`): over plain HTTP on any name but localhost the browser does not keep
 * them, so a sign-in cannot work there whatever the password. Said up front, rather than as a wrong password,
 * and the sign-in buttons are disabled (the password would travel in the clear for nothing).
 */
const INSECURE_PAGE =
  'This page is served over plain HTTP, so your browser will not keep the secure sign-in cookies: signing in cannot work here. Open the site over HTTPS (or on localhost in development).';

/** For useSyncExternalStore: a value that never changes needs no subscription. */
function noSubscription(): () => void {
  return () => {};
}

/** Auth.js's CSRF token (its endpoint also sets the matching cookie); posted with every sign-in form. */
async function csrfToken(): Promise<string> {
  const response = await fetch('/api/auth/csrf', { cache: 'no-store' });
  return ((await response.json()) as { csrfToken: string }).csrfToken;
}

/**
 * Local accounts post to Auth.js's credentials callback with fetch (so a 429 from the sign-in limits or a 503
 * shows here, in words, instead of a JSON page); single sign-on is a plain form post that Auth.js redirects
 * to the identity provider.
 */
export function SignInForm({ local, oidc, callbackUrl, initialError }: Props) {
  const [error, setError] = useState<string | null>(initialError);
  const [busy, setBusy] = useState(false);
  const [token, setToken] = useState('');
  const router = useRouter();

  // Known in the browser only (the server renders as if secure); it never changes while the page is open.
  const secure = useSyncExternalStore(
    noSubscription,
    () => window.isSecureContext,
    () => true,
  );

  useEffect(() => {
    if (oidc && window.isSecureContext)
      void csrfToken().then(setToken, () => setError('Keyward is not reachable. Try again.'));
  }, [oidc]);

  async function signInLocal(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    const form = new FormData(event.currentTarget);
    try {
      const response = await fetch('/api/auth/callback/credentials', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({
          username: String(form.get('username') ?? ''),
          password: String(form.get('password') ?? ''),
          csrfToken: await csrfToken(),
          callbackUrl,
        }),
        // Auth.js answers with a redirect either way; its cookies are kept, the redirect is not followed.
        redirect: 'manual',
      });
      if (response.type === 'opaqueredirect' || response.ok) {
        const session = await fetch('/api/session', { cache: 'no-store' });
        if (session.ok) {
          // A route of Keyward's API (the mobile sign-in an app started) is a document navigation, not the router's
          // fetch: that fetch would be the authorization request, and one redirecting to the app's https link is
          // one a fetch cannot follow, so the router would send it a second time as a navigation.
          if (callbackUrl.startsWith('/api/')) {
            window.location.assign(callbackUrl);
            return;
          }
          router.replace(callbackUrl);
          router.refresh();
          return;
        }
        setError('Wrong username or password.');
      } else {
        setError(await refusal(response));
      }
    } catch {
      setError('Keyward is not reachable. Try again.');
    }
    setBusy(false);
  }

  if (!local && !oidc) {
    return <div className="alert error">No sign-in method is configured on this server.</div>;
  }
  return (
    <>
      {!secure && (
        <div className="alert error" role="alert" data-testid="sign-in-insecure">
          {INSECURE_PAGE}
        </div>
      )}
      {error && (
        <div className="alert error" role="alert" data-testid="sign-in-error">
          {error}
        </div>
      )}
      {local && (
        <form onSubmit={signInLocal} data-testid="local-sign-in">
          <div className="field">
            <label htmlFor="username">Username</label>
            <input id="username" name="username" type="text" autoComplete="username" required maxLength={64} autoFocus />
          </div>
          <div className="field">
            <label htmlFor="password">Password</label>
            <input id="password" name="password" type="password" autoComplete="current-password" required maxLength={1024} />
          </div>
          {/* Over plain HTTP the password is not even sent: the sign-in could not work, and it would travel in the clear. */}
          <button className="primary block" type="submit" disabled={busy || !secure}>
            {busy ? 'Signing in…' : 'Sign in'}
          </button>
        </form>
      )}
      {local && oidc && <div className="divider">or</div>}
      {oidc && (
        <form method="post" action="/api/auth/signin/oidc">
          <input type="hidden" name="csrfToken" value={token} />
          <input type="hidden" name="callbackUrl" value={callbackUrl} />
          <button className={local ? 'block' : 'primary block'} type="submit" disabled={!token || !secure}>
            Sign in with {oidc.name}
          </button>
        </form>
      )}
    </>
  );
}

async function refusal(response: Response): Promise<string> {
  const retryAfter = Number(response.headers.get('retry-after'));
  if (response.status === 429) {
    return Number.isFinite(retryAfter) && retryAfter > 0
      ? `Too many sign-in attempts. Try again in ${formatWait(retryAfter)}.`
      : 'Too many sign-in attempts. Try again later.';
  }
  if (response.status === 503) return 'Sign-in is busy or unavailable right now. Try again in a moment.';
  return 'Sign-in failed. Try again.';
}

function formatWait(seconds: number): string {
  return seconds < 90 ? `${Math.ceil(seconds)} seconds` : `${Math.ceil(seconds / 60)} minutes`;
}
