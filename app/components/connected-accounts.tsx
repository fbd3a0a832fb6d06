'use client';

import { useCallback, useEffect, useState } from 'react';
import { utc } from '@/lib/core/time';
import { errorText } from './response-text';

/** A connection as GET /api/connections describes it: never a token. */
interface Connection {
  provider: string;
  name: string;
  status: 'connected' | 'needs_reconnect';
  scopes: string[];
  connectedAt: string;
  lastRefreshAt: string | null;
  needsReconnectSince: string | null;
  connectUrl: string;
}

type ListState =
  { status: 'loading' } | { status: 'loaded'; connections: Connection[] } | { status: 'error'; message: string };

const CSRF = { 'x-keyward-csrf': '1' };

/** What the callback's `?connect_error=` codes mean, in words (the provider's own text is never shown). */
const CONNECT_ERRORS: Record<string, (name: string) => string> = {
  access_denied: (name) => `You did not allow access at ${name}. Nothing was changed.`,
  provider_error: (name) =>
    `${name} refused the connection. Try again; if it keeps failing, an administrator should check the provider's settings.`,
  expired: () => 'The connection attempt expired, or was started in another browser. Start it again from here.',
  session_ended: () => 'Your session ended before the connection was completed. Sign in again, then connect.',
  unavailable: (name) => `${name} or Keyward's store could not be reached. Try again in a moment.`,
};

/**
 * "Connected accounts": the OAuth providers this deployment offers (README "Connected accounts"), the user's
 * connection to each (status, scopes, dates), and Connect / Reconnect / Disconnect. Connecting is a navigation to
 * /api/connect/<provider>, which comes back here with `?connected=` or `?connect_error=`; the tokens stay on the server.
 */
export function ConnectedAccounts({ providers }: { providers: { id: string; name: string }[] }) {
  const [state, setState] = useState<ListState>({ status: 'loading' });
  const [notice, setNotice] = useState<{ kind: 'ok' | 'error'; text: string } | null>(null);

  const load = useCallback(async () => {
    try {
      const response = await fetch('/api/connections', { headers: CSRF, cache: 'no-store' });
      if (!response.ok) return setState({ status: 'error', message: await errorText(response) });
      const body = (await response.json()) as { connections: Connection[] };
      setState({ status: 'loaded', connections: body.connections });
    } catch {
      setState({
        status: 'error',
        message: 'Your connections could not be loaded. Check your network and reload the page.',
      });
    }
  }, []);

  useEffect(() => {
    void load(); // eslint-disable-line react-hooks/set-state-in-effect
  }, [load]);

  // The outcome of a connect, from the callback's redirect; then the query is taken off the address bar.
  useEffect(() => {
    const outcome = connectOutcome(new URL(window.location.href), providers);
    if (!outcome) return;
    setNotice(outcome.notice); // eslint-disable-line react-hooks/set-state-in-effect
    window.history.replaceState(null, '', outcome.cleanPath);
  }, [providers]);

  async function disconnect(provider: { id: string; name: string }) {
    const response = await fetch(`/api/connections/${encodeURIComponent(provider.id)}`, {
      method: 'DELETE',
      headers: CSRF,
    });
    if (response.ok) {
      const body = (await response.json()) as { revokedAtProvider: boolean; sharedAccount?: boolean };
      setNotice({ kind: 'ok', text: disconnectedText(provider.name, body.revokedAtProvider, body.sharedAccount === true) });
    } else setNotice({ kind: 'error', text: await errorText(response) });
    await load();
  }

  const connections = state.status === 'loaded' ? state.connections : [];
  return (
    <div className="stack connected-accounts" data-testid="connected-accounts">
      {notice && (
        <div className={`alert ${notice.kind}`} role="status" data-testid="connect-notice">
          {notice.text}
        </div>
      )}
      {state.status === 'error' && (
        <div className="alert error" data-testid="connections-error">
          {state.message}
        </div>
      )}
      {state.status === 'loaded' && connections.length === 0 && (
        <p className="small muted" data-testid="no-connections">
          You have not connected an account yet.
        </p>
      )}
      {/* Without the list, a row could offer Connect for an account that is connected: none are shown. */}
      {state.status !== 'error' && (
        <ul className="connection-list">
          {providers.map((provider) => (
            <ConnectionRow
              key={provider.id}
              provider={provider}
              loading={state.status === 'loading'}
              connection={connections.find((connection) => connection.provider === provider.id) ?? null}
              onDisconnect={() => disconnect(provider)}
            />
          ))}
        </ul>
      )}
    </div>
  );
}

function ConnectionRow(props: {
  provider: { id: string; name: string };
  loading: boolean;
  connection: Connection | null;
  onDisconnect: () => Promise<void>;
}) {
  const { provider, loading, connection } = props;
  const [confirming, setConfirming] = useState(false);
  const [busy, setBusy] = useState(false);
  const connectHref = `/api/connect/${encodeURIComponent(provider.id)}?returnTo=${encodeURIComponent('/')}`;

  async function disconnect() {
    setBusy(true);
    await props.onDisconnect();
    setBusy(false);
    setConfirming(false);
  }

  return (
    <li className="connection-row" data-testid={`connection-${provider.id}`}>
      <span className="provider-mark" aria-hidden="true">
        {provider.name.slice(0, 1).toUpperCase()}
      </span>
      <div className="connection-main">
        <div className="row">
          <strong>{provider.name}</strong>
          {loading ? null : !connection ? (
            <span className="badge neutral">not connected</span>
          ) : connection.status === 'connected' ? (
            <span className="badge ok" data-testid="connection-status">
              connected
            </span>
          ) : (
            <span className="badge warn" data-testid="connection-status">
              needs reconnecting
            </span>
          )}
        </div>
        {loading && <div className="skeleton" style={{ width: '55%', marginTop: 6 }} />}
        {connection && (
          <p className="small muted connection-details">
            {connection.scopes.length > 0 && (
              <>
                Access:{' '}
                {connection.scopes.map((scope) => (
                  <code key={scope} className="scope">
                    {scope}
                  </code>
                ))}{' '}
                ·{' '}
              </>
            )}
            connected {utc(connection.connectedAt)}
            {connection.lastRefreshAt && <> · renewed {utc(connection.lastRefreshAt)}</>}
          </p>
        )}
        {connection?.status === 'needs_reconnect' && (
          <p className="small text-danger" data-testid="reconnect-hint">
            {provider.name} stopped accepting the app&apos;s access
            {connection.needsReconnectSince ? ` on ${utc(connection.needsReconnectSince)}` : ''}. Reconnect to
            keep using it.
          </p>
        )}
        {confirming && (
          <div className="row confirm-inline">
            <span className="small">
              Disconnect {provider.name}? The app loses access, and Keyward asks {provider.name} to revoke it.
            </span>
            <button
              className="danger small-button"
              disabled={busy}
              onClick={disconnect}
              data-testid="confirm-disconnect"
            >
              {busy ? 'Disconnecting…' : 'Disconnect'}
            </button>
            <button className="small-button" disabled={busy} onClick={() => setConfirming(false)}>
              Cancel
            </button>
          </div>
        )}
      </div>
      {!loading && !confirming && (
        <div className="row connection-actions">
          {!connection && (
            <a className="button primary small-button" href={connectHref} data-testid="connect">
              Connect
            </a>
          )}
          {connection && (
            <a
              className={`button small-button${connection.status === 'needs_reconnect' ? ' primary' : ''}`}
              href={connectHref}
              data-testid="reconnect"
            >
              Reconnect
            </a>
          )}
          {connection && (
            <button className="danger small-button" onClick={() => setConfirming(true)} data-testid="disconnect">
              Disconnect
            </button>
          )}
        </div>
      )}
    </li>
  );
}

/** The notice for the callback's `?connected=` or `?connect_error=`, and the address without them; null if neither. */
function connectOutcome(
  url: URL,
  providers: { id: string; name: string }[],
): { notice: { kind: 'ok' | 'error'; text: string }; cleanPath: string } | null {
  const connected = url.searchParams.get('connected');
  const error = url.searchParams.get('connect_error');
  if (!connected && !error) return null;
  // Only a configured provider's name is shown, never text from the address.
  const nameOf = (id: string | null) => providers.find((provider) => provider.id === id)?.name ?? 'The provider';
  const notice = connected
    ? {
        kind: 'ok' as const,
        text: `${nameOf(connected)} is connected. Its tokens stay on the server; this page never sees them.`,
      }
    : {
        kind: 'error' as const,
        // Own keys only: `?connect_error=hasOwnProperty` must not find Object.prototype's.
        text: (error !== null && Object.hasOwn(CONNECT_ERRORS, error) ? CONNECT_ERRORS[error]! : CONNECT_ERRORS.provider_error!)(
          nameOf(url.searchParams.get('connect_provider')),
        ),
      };
  for (const name of ['connected', 'connect_error', 'connect_provider']) url.searchParams.delete(name);
  return { notice, cleanPath: `${url.pathname}${url.search}${url.hash}` };
}

/** What a disconnect did, in words (the answer's revokedAtProvider and sharedAccount). */
function disconnectedText(name: string, revoked: boolean, shared: boolean): string {
  if (shared)
    return revoked
      ? `${name} is disconnected, and its token was revoked at ${name}. Another account on this site is connected to the same ${name} account and keeps its access.`
      : `${name} is disconnected here. Another account on this site is connected to the same ${name} account, so the access at ${name} was left in place.`;
  return revoked
    ? `${name} is disconnected, and its access was revoked at ${name}.`
    : `${name} is disconnected. ${name} could not be asked to revoke the access: remove the app in your ${name} account settings too.`;
}
