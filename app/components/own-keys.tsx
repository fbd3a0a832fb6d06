'use client';

import { useCallback, useEffect, useState } from 'react';
import { utc } from '@/lib/core/time';
import { errorCode, errorText } from './response-text';

interface KeyInfo {
  fingerprint: string;
  last4: string;
  createdAt: string;
  lastUsedAt: string | null;
}

type KeyState = { status: 'loading' } | { status: 'none' } | { status: 'stored'; info: KeyInfo } | { status: 'error'; message: string };

const CSRF = { 'x-keyward-csrf': '1' };

/** A request that never got an answer (the network, or Keyward down): said as such, with what to do. */
const UNREACHABLE = {
  load: 'Keyward could not be reached to read your key. Check your connection and try again.',
  save: 'Your key was not stored: Keyward could not be reached. It is still in the field; check your connection and try again.',
  remove: 'Your key was not deleted: Keyward could not be reached. Check your connection and try again.',
};

/**
 * The caller's own key for one upstream: stored write-only (only fingerprint and last 4 come back), or deleted.
 * Store/Replace is offered only once the page knows whether a key is stored; a failed read says so, with a retry.
 * Used by the home page (one per own-key upstream) and by the demo page (for `demo-own`).
 */
export function OwnKeyRow({ upstream }: { upstream: string }) {
  const [state, setState] = useState<KeyState>({ status: 'loading' });
  const [draft, setDraft] = useState('');
  const [message, setMessage] = useState<{ kind: 'ok' | 'error'; text: string } | null>(null);
  const url = `/api/keys/${encodeURIComponent(upstream)}`;

  const load = useCallback(async () => {
    try {
      const response = await fetch(url, { headers: CSRF, cache: 'no-store' });
      if (response.ok) setState({ status: 'stored', info: (await response.json()) as KeyInfo });
      // Only `credential_missing` means no key: another 403 (a CSRF refusal, say) is said as it is, not shown as
      // an empty slot that invites storing the key again.
      else if (response.status === 403 && (await errorCode(response.clone())) === 'credential_missing') setState({ status: 'none' });
      else setState({ status: 'error', message: await errorText(response) });
    } catch {
      setState({ status: 'error', message: UNREACHABLE.load });
    }
  }, [url]);

  useEffect(() => {
    void load(); // eslint-disable-line react-hooks/set-state-in-effect
  }, [load]);

  function retry() {
    setState({ status: 'loading' });
    void load();
  }

  async function save() {
    setMessage(null);
    try {
      const response = await fetch(url, { method: 'PUT', headers: { ...CSRF, 'content-type': 'application/json' }, body: JSON.stringify({ key: draft }) });
      // Kept in the field when refused, so it can be corrected or sent again; gone from the page once stored.
      if (response.ok) setDraft('');
      setMessage(response.ok ? { kind: 'ok', text: 'Stored. Keyward will never show it again.' } : { kind: 'error', text: await errorText(response) });
    } catch {
      setMessage({ kind: 'error', text: UNREACHABLE.save });
    }
    // Read again either way: a request lost on the way back may still have stored the key.
    await load();
  }

  async function remove() {
    setMessage(null);
    try {
      const response = await fetch(url, { method: 'DELETE', headers: CSRF });
      setMessage(response.ok ? { kind: 'ok', text: 'Deleted.' } : { kind: 'error', text: await errorText(response) });
    } catch {
      setMessage({ kind: 'error', text: UNREACHABLE.remove });
    }
    await load();
  }

  return (
    <div className="stack" data-testid={`own-key-${upstream}`}>
      <div className="row">
        <strong>{upstream}</strong>
        {state.status === 'stored' && <span className="badge ok">key stored</span>}
        {state.status === 'none' && <span className="badge neutral">no key</span>}
      </div>
      {state.status === 'loading' && (
        <>
          <div className="skeleton" style={{ width: '60%' }} />
          <div className="skeleton" style={{ height: '2.4rem' }} />
        </>
      )}
      {state.status === 'error' && (
        <div className="alert error row" style={{ justifyContent: 'space-between', marginBottom: 0 }}>
          <span data-testid="own-key-load-error">{state.message}</span>
          <button type="button" onClick={retry}>
            Try again
          </button>
        </div>
      )}
      {state.status === 'stored' && (
        <p className="small muted" data-testid="own-key-info">
          Ends in …{state.info.last4} · fingerprint <code>{state.info.fingerprint}</code> · added {utc(state.info.createdAt)} · last used{' '}
          {state.info.lastUsedAt ? utc(state.info.lastUsedAt) : 'never'}
        </p>
      )}
      {(state.status === 'stored' || state.status === 'none') && (
        <div className="row">
          <input
            type="password"
            autoComplete="off"
            value={draft}
            onChange={(event) => setDraft(event.target.value)}
            placeholder={state.status === 'stored' ? 'Replace with a new key' : 'Paste your key'}
            aria-label={`Your key for ${upstream}`}
            data-testid="own-key-input"
            style={{ flex: 1, minWidth: '12rem' }}
          />
          <button className="primary" disabled={!draft} onClick={save} data-testid="own-key-save">
            {state.status === 'stored' ? 'Replace' : 'Store'}
          </button>
          {state.status === 'stored' && (
            <button className="danger" onClick={remove} data-testid="own-key-delete">
              Delete
            </button>
          )}
        </div>
      )}
      {message && (
        <div className={`alert ${message.kind}`} data-testid="own-key-message">
          {message.text}
        </div>
      )}
    </div>
  );
}

export function OwnKeys({ upstreams }: { upstreams: string[] }) {
  return (
    <div className="stack">
      {upstreams.map((upstream) => (
        <OwnKeyRow key={upstream} upstream={upstream} />
      ))}
    </div>
  );
}
