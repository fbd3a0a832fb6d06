'use client';

import { useCallback, useEffect, useState } from 'react';
import { errorCode, errorText, formatDate } from './response-text';

interface KeyInfo {
  fingerprint: string;
  last4: string;
  createdAt: string;
  lastUsedAt: string | null;
}

type KeyState = { status: 'loading' } | { status: 'none' } | { status: 'stored'; info: KeyInfo } | { status: 'error'; message: string };

const CSRF = { 'x-keyward-csrf': '1' };

/** The caller's own key for one upstream: stored write-only (only fingerprint and last 4 come back), or deleted. */
function OwnKeyRow({ upstream }: { upstream: string }) {
  const [state, setState] = useState<KeyState>({ status: 'loading' });
  const [draft, setDraft] = useState('');
  const [message, setMessage] = useState<{ kind: 'ok' | 'error'; text: string } | null>(null);
  const url = `/api/keys/${encodeURIComponent(upstream)}`;

  const load = useCallback(async () => {
    const response = await fetch(url, { headers: CSRF, cache: 'no-store' });
    if (response.ok) setState({ status: 'stored', info: (await response.json()) as KeyInfo });
    // Only `credential_missing` means no key: another 403 (a CSRF refusal, say) is said as it is, not shown as
    // an empty slot that invites storing the key again.
    else if (response.status === 403 && (await errorCode(response.clone())) === 'credential_missing') setState({ status: 'none' });
    else setState({ status: 'error', message: await errorText(response) });
  }, [url]);

  useEffect(() => {
    void load(); // eslint-disable-line react-hooks/set-state-in-effect
  }, [load]);

  async function save() {
    const response = await fetch(url, { method: 'PUT', headers: { ...CSRF, 'content-type': 'application/json' }, body: JSON.stringify({ key: draft }) });
    setDraft('');
    setMessage(response.ok ? { kind: 'ok', text: 'Stored. Keyward will never show it again.' } : { kind: 'error', text: await errorText(response) });
    await load();
  }

  async function remove() {
    const response = await fetch(url, { method: 'DELETE', headers: CSRF });
    setMessage(response.ok ? { kind: 'ok', text: 'Deleted.' } : { kind: 'error', text: await errorText(response) });
    await load();
  }

  return (
    <div className="stack" data-testid={`own-key-${upstream}`}>
      <div className="row">
        <strong>{upstream}</strong>
        {state.status === 'stored' && <span className="badge ok">key stored</span>}
        {state.status === 'none' && <span className="badge neutral">no key</span>}
      </div>
      {state.status === 'loading' && <div className="skeleton" style={{ width: '60%' }} />}
      {state.status === 'error' && <div className="alert error">{state.message}</div>}
      {state.status === 'stored' && (
        <p className="small muted">
          Ends in …{state.info.last4} · fingerprint <code>{state.info.fingerprint}</code> · added {formatDate(state.info.createdAt)} · last used{' '}
          {state.info.lastUsedAt ? formatDate(state.info.lastUsedAt) : 'never'}
        </p>
      )}
      <div className="row">
        <input
          type="password"
          autoComplete="off"
          value={draft}
          onChange={(event) => setDraft(event.target.value)}
          placeholder={state.status === 'stored' ? 'Replace with a new key' : 'Paste your key'}
          aria-label={`Your key for ${upstream}`}
          style={{ flex: 1, minWidth: '12rem' }}
        />
        <button className="primary" disabled={!draft} onClick={save}>
          {state.status === 'stored' ? 'Replace' : 'Store'}
        </button>
        {state.status === 'stored' && (
          <button className="danger" onClick={remove}>
            Delete
          </button>
        )}
      </div>
      {message && <div className={`alert ${message.kind}`}>{message.text}</div>}
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
