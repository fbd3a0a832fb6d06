'use client';

import { useRouter } from 'next/navigation';
import { useState } from 'react';

/**
 * Said when the sign-out did not go through (the network, or a refusal such as a store outage): the session is
 * still valid, and someone leaving a shared computer must not walk away believing otherwise.
 */
const NOT_SIGNED_OUT = 'Sign-out failed: you are still signed in. Check your connection and try again.';

/**
 * Signs out through Auth.js (which also revokes the session on the server), then renders the page again (signed
 * out), or, given `onSignedOut`, calls it instead (the demo page, which holds the session in client state).
 */
export function SignOutButton({ onSignedOut }: { onSignedOut?: () => void } = {}) {
  const [busy, setBusy] = useState(false);
  const [failed, setFailed] = useState(false);
  const router = useRouter();
  async function signOut() {
    setBusy(true);
    setFailed(false);
    try {
      const csrf = await fetch('/api/auth/csrf', { cache: 'no-store' });
      if (!csrf.ok) throw new Error(`csrf: ${csrf.status}`);
      const { csrfToken } = (await csrf.json()) as { csrfToken: string };
      await fetch('/api/auth/signout', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ csrfToken, callbackUrl: '/' }),
        redirect: 'manual',
      });
      // Auth.js answers with a redirect whether or not it signed out (a refused CSRF token redirects too), and a
      // 503 when the revocation could not be stored: only the session endpoint's 401 says the session is over.
      const session = await fetch('/api/session', { cache: 'no-store' });
      if (session.status !== 401) throw new Error(`session: ${session.status}`);
      if (onSignedOut) onSignedOut();
      else router.refresh();
    } catch {
      setFailed(true);
      setBusy(false);
    }
  }
  return (
    <div className="stack" style={{ alignItems: 'flex-end', maxWidth: '24rem' }}>
      <button onClick={signOut} disabled={busy} data-testid="sign-out">
        {busy ? 'Signing out…' : 'Sign out'}
      </button>
      {failed && (
        <div className="alert error" role="alert" data-testid="sign-out-error" style={{ marginBottom: 0 }}>
          {NOT_SIGNED_OUT}
        </div>
      )}
    </div>
  );
}
