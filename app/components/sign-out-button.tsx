'use client';

import { useRouter } from 'next/navigation';
import { useState } from 'react';

/** Signs out through Auth.js (which also revokes the session on the server), then renders the page again (signed out). */
export function SignOutButton() {
  const [busy, setBusy] = useState(false);
  const router = useRouter();
  async function signOut() {
    setBusy(true);
    try {
      const { csrfToken } = (await (await fetch('/api/auth/csrf', { cache: 'no-store' })).json()) as { csrfToken: string };
      await fetch('/api/auth/signout', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ csrfToken, callbackUrl: '/' }),
        redirect: 'manual',
      });
    } finally {
      router.refresh();
    }
  }
  return (
    <button onClick={signOut} disabled={busy} data-testid="sign-out">
      {busy ? 'Signing out…' : 'Sign out'}
    </button>
  );
}
