import type { Metadata } from 'next';
import { redirect } from 'next/navigation';
import { SignInForm } from './sign-in-form';
import { SIGN_IN_EXPIRED, SIGN_IN_UNREACHABLE, safeCallbackPath } from 'keyward/next';
import { keyward } from '@/keyward';

export const dynamic = 'force-dynamic';

export const metadata: Metadata = { title: 'Sign in' };

/** Messages for Auth.js's `?error=` codes (https://authjs.dev/reference/core/errors); anything else is generic. */
const ERRORS: Record<string, string> = {
  CredentialsSignin: 'Wrong username or password.',
  AccessDenied: 'The identity provider did not let you in, or the account it names cannot be used here (ask your administrator).',
  OAuthCallbackError: 'The identity provider sent you back with an error. Try again.',
  Configuration: 'Sign-in is not configured correctly on the server.',
  [SIGN_IN_EXPIRED]: 'The sign-in took too long, or was started on another address of this site. Start again.',
  [SIGN_IN_UNREACHABLE]: 'The sign-in provider cannot be reached right now. Try again later.',
  MissingCSRF:
    'Your browser did not send the sign-in cookie back. Keyward’s cookies are secure: open the site over HTTPS (or on localhost), with cookies allowed, and try again.',
};

export default async function SignInPage({ searchParams }: { searchParams: Promise<Record<string, string | string[] | undefined>> }) {
  const params = await searchParams;
  const callbackUrl = safeCallbackPath(params.callbackUrl);
  const state = await keyward.pageSession();
  if (state.state === 'signed-in') redirect(callbackUrl);
  const methods = keyward.signInMethods();
  const errorCode = typeof params.error === 'string' ? params.error : null;
  // Object.hasOwn: `?error=constructor` must not find Object.prototype's (a function the page cannot render).
  const error = errorCode ? (Object.hasOwn(ERRORS, errorCode) ? ERRORS[errorCode]! : 'Sign-in failed. Try again.') : state.state === 'unavailable' ? 'Keyward cannot reach its session store right now.' : null;
  return (
    <main className="page-narrow">
      <div className="card">
        <h1>Sign in</h1>
        <p className="muted">to call this app&apos;s APIs through Keyward.</p>
        {/* The browser still sent a session cookie that no longer makes a session: revoked, ended elsewhere, or past its lifetime. */}
        {!error && state.state === 'signed-out' && state.ended && (
          <div className="alert info" role="status" data-testid="session-ended">
            Your session ended. Sign in again to continue.
          </div>
        )}
        <SignInForm local={methods.local} oidc={methods.oidc} callbackUrl={callbackUrl} initialError={error} />
      </div>
    </main>
  );
}
