'use client';

import { useCallback, useEffect, useState } from 'react';

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

export function Demo() {
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

  async function call(label: string, path: string, init: RequestInit = {}) {
    setBusy(true);
    try {
      const response = await fetch(`/api/proxy/demo/${path}`, { ...init, headers: { ...CSRF, ...init.headers } });
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

  async function signOut() {
    const { csrfToken } = (await (await fetch('/api/auth/csrf')).json()) as { csrfToken: string };
    await fetch('/api/auth/signout', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ csrfToken, callbackUrl: '/' }),
    });
    setReceived(null);
    setEvents([]);
    await loadSession();
  }

  if (session === undefined) return <p className="muted">Checking your session…</p>;
  if (session === null) {
    return (
      <section>
        <p>You are not signed in.</p>
        {/* A route handler (Auth.js's sign-in page), not a Next page: a full navigation is intended. */}
        {/* eslint-disable-next-line @next/next/no-html-link-for-pages */}
        <a className="button" href="/api/auth/signin?callbackUrl=%2F" data-testid="sign-in">
          Sign in
        </a>
        <p className="muted">
          With <code>npm run dev</code>, the demo user is <code>demo</code> with password <code>keyward-demo</code>.
        </p>
      </section>
    );
  }
  return (
    <section>
      <p data-testid="signed-in">
        Signed in as <strong>{session.user.name ?? session.user.id}</strong> (roles: {session.roles.join(', ') || 'none'}).
      </p>
      <div>
        <button disabled={busy} onClick={() => call('GET /hello', 'hello')} data-testid="call-hello">
          Call GET /hello
        </button>
        <button disabled={busy} onClick={() => call('GET /items/7', 'items/7')} data-testid="call-item">
          Call GET /items/7
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
          Call POST /echo
        </button>
        <button disabled={busy} onClick={stream} data-testid="call-events">
          Stream GET /events (SSE)
        </button>
        <button onClick={signOut} data-testid="sign-out">
          Sign out
        </button>
      </div>
      {received && (
        <>
          <h2>
            {received.label} → <span data-testid="status">{received.status}</span>
          </h2>
          <h3>Headers your browser received</h3>
          <pre data-testid="headers">{received.headers.map(([name, value]) => `${name}: ${value}`).join('\n')}</pre>
          <h3>Body</h3>
          <pre data-testid="body">{received.body}</pre>
        </>
      )}
      {events.length > 0 && (
        <>
          <h2>Events, as they arrived</h2>
          <pre data-testid="events">{events.join('\n')}</pre>
        </>
      )}
    </section>
  );
}
