'use client';

import Link from 'next/link';
import { useCallback, useEffect, useState } from 'react';
import { OwnKeyRow } from './components/own-keys';
import { SignOutButton } from './components/sign-out-button';

interface SessionInfo {
  user: { id: string; name: string | null };
  roles: string[];
  expiresAt: string;
}

interface Received {
  label: string;
  status: number;
  headers: [string, string][];
  body: string;
}

const CSRF = { 'x-keyward-csrf': '1' };

/**
 * A decoy key (honeytoken; README "Decoy keys"), planted in this page's client bundle when NEXT_PUBLIC_KEYWARD_DECOY
 * is set at build time to a value from `npm run keyward -- decoys create`: where a careless app would leave its
 * real key, for whoever scrapes bundles for keys. Nothing here uses it, and whoever does is caught. Unset (the
 * usual build), this is `undefined` and the branch below is dropped from the bundle.
 */
const PLANTED_DECOY = process.env.NEXT_PUBLIC_KEYWARD_DECOY;
if (PLANTED_DECOY && typeof window !== 'undefined') Object.assign(window, { __demoConfig: { openaiApiKey: PLANTED_DECOY } });

export function Demo({ showDemoPassword }: { showDemoPassword: boolean }) {
  const [session, setSession] = useState<SessionInfo | null | undefined>(undefined);
  const [received, setReceived] = useState<Received | null>(null);
  const [events, setEvents] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);

  const loadSession = useCallback(async () => {
    const response = await fetch('/api/session', { cache: 'no-store' });
    setSession(response.ok ? ((await response.json()) as SessionInfo) : null);
  }, []);

  useEffect(() => {
    // Reads the session once on mount; state is set after the fetch resolves.
    void loadSession(); // eslint-disable-line react-hooks/set-state-in-effect
  }, [loadSession]);

  async function call(label: string, path: string, init: RequestInit = {}, upstream = 'demo') {
    setBusy(true);
    try {
      const response = await fetch(`/api/proxy/${upstream}/${path}`, { ...init, headers: { ...CSRF, ...init.headers } });
      setReceived({ label, status: response.status, headers: [...response.headers.entries()], body: await response.text() });
    } finally {
      setBusy(false);
    }
  }

  async function stream() {
    setBusy(true);
    setEvents([]);
    try {
      const response = await fetch('/api/proxy/demo/events', { headers: { ...CSRF, accept: 'text/event-stream' } });
      if (!response.body) return;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const parts = buffer.split('\n\n');
        buffer = parts.pop() ?? '';
        const arrived = parts.filter(Boolean).map((event) => `${new Date().toLocaleTimeString()}  ${event.replace(/\n/g, ' | ')}`);
        setEvents((previous) => [...previous, ...arrived]);
      }
    } finally {
      setBusy(false);
    }
  }

  // Signed out (SignOutButton saw /api/session answer 401): back to the signed-out view, with nothing of the session's calls left.
  function signedOut() {
    setReceived(null);
    setEvents([]);
    setSession(null);
  }

  if (session === undefined) {
    return (
      <section className="card" aria-busy="true">
        <div className="skeleton" style={{ width: '40%', marginBottom: 12 }} />
        <div className="skeleton" style={{ width: '70%' }} />
      </section>
    );
  }
  if (session === null) {
    return (
      <section className="card">
        <p>You are not signed in.</p>
        <Link className="button primary" href="/signin" prefetch={false} data-testid="sign-in">
          Sign in
        </Link>
        {showDemoPassword && (
          <p className="muted small" style={{ marginTop: 12 }}>
            With <code>npm run dev</code>, the demo user is <code>demo</code> with password <code>keyward-demo</code>; for the admin dashboard, sign in
            as <code>admin</code> with <code>keyward-admin</code>.
          </p>
        )}
      </section>
    );
  }
  return (
    <>
      <section className="card">
        <div className="card-title">
          <p data-testid="signed-in" style={{ margin: 0 }}>
            Signed in as <strong>{session.user.name ?? session.user.id}</strong> (roles: {session.roles.join(', ') || 'none'}).
          </p>
          <SignOutButton onSignedOut={signedOut} />
        </div>
        <div className="row">
          <button disabled={busy} onClick={() => call('GET /hello', 'hello')} data-testid="call-hello">
            GET /hello
          </button>
          <button disabled={busy} onClick={() => call('GET /items/7', 'items/7')} data-testid="call-item">
            GET /items/7
          </button>
          <button
            disabled={busy}
            onClick={() =>
              call('POST /echo', 'echo', {
                method: 'POST',
                headers: { 'content-type': 'application/json' },
                body: JSON.stringify({ note: 'hello upstream' }),
              })
            }
            data-testid="call-echo"
          >
            POST /echo
          </button>
          <button disabled={busy} onClick={stream} data-testid="call-events">
            Stream GET /events (SSE)
          </button>
          <button disabled={busy} onClick={() => call('GET /leaky', 'leaky')} data-testid="call-leaky">
            GET /leaky (echoes its key)
          </button>
          <button disabled={busy} onClick={() => call('GET /slow', 'slow')} data-testid="call-slow">
            GET /slow (times out)
          </button>
        </div>
      </section>
      <section className="card">
        <h2>Your own key</h2>
        <p className="muted small">
          Upstream <code>demo-own</code> takes each user&apos;s own key. Store one (the demo upstream accepts any value starting with{' '}
          <code>demo-user-</code>): it is sealed on the server and never shown again, only its fingerprint.
        </p>
        <OwnKeyRow upstream="demo-own" />
        <div className="row" style={{ marginTop: 12 }}>
          <button disabled={busy} onClick={() => call('GET /whoami with my key', 'whoami', {}, 'demo-own')} data-testid="call-own">
            GET /whoami with my key
          </button>
        </div>
      </section>
      {received && (
        <section className="card">
          <h2>
            {received.label} → <span data-testid="status">{received.status}</span>
          </h2>
          <h3>Headers your browser received</h3>
          <pre data-testid="headers">{received.headers.map(([name, value]) => `${name}: ${value}`).join('\n')}</pre>
          <h3>Body</h3>
          <pre data-testid="body">{received.body}</pre>
        </section>
      )}
      {events.length > 0 && (
        <section className="card">
          <h2>Events, as they arrived</h2>
          <pre data-testid="events">{events.join('\n')}</pre>
        </section>
      )}
    </>
  );
}
