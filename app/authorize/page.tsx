import type { Metadata } from 'next';
import { redirect } from 'next/navigation';
import { keyward } from '@/keyward';

export const dynamic = 'force-dynamic';

export const metadata: Metadata = {
  title: 'Sign in to an app',
  // The site's Referrer-Policy is no-referrer, under which a browser sends a form's POST with `Origin: null`; the
  // authorize endpoint needs this site's Origin on the consent post, so this page relaxes it to same-origin.
  referrer: 'same-origin',
};

type SearchParams = Promise<Record<string, string | string[] | undefined>>;

/**
 * The mobile sign-in's consent step (README "Mobile apps"): an app whose redirect URI any app could claim (a
 * private-use scheme, loopback http) gets a code only after the user says so here, and only for the request the
 * authorize endpoint sent the browser here with (its consent cookie; anyone can link here with a request of their
 * own). The form posts back to the endpoint, which checks the origin, that cookie and the session again; this page
 * only shows what is asked.
 */
export default async function AuthorizePage({ searchParams }: { searchParams: SearchParams }) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(await searchParams)) {
    for (const item of Array.isArray(value) ? value : value === undefined ? [] : [value]) query.append(name, item);
  }
  const request = await keyward.mobileConsent(query);
  if (request.state === 'signed-out') redirect(request.authorizeUrl);

  return (
    <main className="page-narrow">
      <div className="card">
        {request.state === 'ask' ? (
          <>
            <h1>Sign in to an app?</h1>
            <p className="muted">
              <strong className="consent-app">{request.app}</strong> asks to call this site&apos;s APIs as you (
              <strong>{request.user}</strong>).
            </p>
            <div className="alert info small">
              Allow only if you just started signing in from that app. An app you did not open yourself may be trying to
              use your account.
            </div>
            <p className="small muted">
              The answer goes to <code className="consent-target">{request.redirectUri}</code>.
            </p>
            <form method="post" action="/api/session/mobile/authorize" className="row consent-buttons">
              {request.fields.map(([name, value]) => (
                <input key={name} type="hidden" name={name} value={value} />
              ))}
              <button type="submit" name="decision" value="deny">
                Deny
              </button>
              <button type="submit" name="decision" value="allow" className="primary">
                Allow
              </button>
            </form>
          </>
        ) : (
          <>
            <h1>Nothing to allow</h1>
            <div className="alert error" role="alert">
              {request.state === 'invalid'
                ? `This sign-in request cannot be used: ${request.message}`
                : request.state === 'off'
                  ? 'Sign-in for apps is not enabled on this server.'
                  : 'Keyward cannot reach its session store right now. Try again in a moment.'}
            </div>
            <p className="small muted">Start signing in again from the app.</p>
          </>
        )}
      </div>
    </main>
  );
}
