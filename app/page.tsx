import type { Metadata } from 'next';
import Link from 'next/link';
import { ConnectedAccounts } from './components/connected-accounts';
import { OwnKeys } from './components/own-keys';
import { SignOutButton } from './components/sign-out-button';
import { utc } from '@/lib/core/time';
import { Demo } from './demo';
import type { CredentialKind } from 'keyward/next';
import { keyward } from '@/keyward';

// Read per request: the session, and the configuration only the running server has (never at build time).
export const dynamic = 'force-dynamic';

/** Whole: the layout's title template applies to the pages below it, not to this one beside it. */
export function generateMetadata(): Metadata {
  return { title: { absolute: `${keyward.demoEnabled() ? 'Demo' : 'Home'} · Keyward` } };
}

const CREDENTIAL_LABEL: Record<CredentialKind, string> = {
  service: 'the service key',
  'own-key': 'your own key',
  oauth: 'your sign-in token',
  'by-claim': 'your organisation’s key',
  connection: 'your connected account',
};

export default async function Home() {
  if (keyward.demoEnabled()) return <DemoHome />;
  const state = await keyward.pageSession();
  if (state.state === 'unavailable') {
    return (
      <main className="page-narrow">
        <div className="card">
          <h1>Keyward</h1>
          <div className="alert error" data-testid="store-unavailable">
            Keyward cannot reach its session store right now. Try again in a moment.
          </div>
          <Link className="button block" href="/" prefetch={false} data-testid="retry">
            Try again
          </Link>
        </div>
      </main>
    );
  }
  if (state.state === 'signed-out') {
    return (
      <main className="page-narrow">
        <div className="card" data-testid="signed-out">
          <h1>Keyward</h1>
          <p className="muted">This app calls its APIs through the server, so your browser never holds an API key.</p>
          {state.ended && (
            <div className="alert info" role="status" data-testid="session-ended">
              Your session ended. Sign in again to continue.
            </div>
          )}
          <Link className="button primary block" href="/signin" prefetch={false} data-testid="sign-in">
            Sign in
          </Link>
        </div>
      </main>
    );
  }

  const { session } = state;
  // Only what this user's roles may call: an admin-only upstream is not shown to others.
  const upstreams = keyward.upstreamSummaries(session.roles);
  const ownKeyUpstreams = upstreams.filter((u) => u.credential === 'own-key').map((u) => u.id);
  const isAdmin = session.roles.includes('admin');
  const connectionProviders = keyward.connectionProviders();
  return (
    <main className="page">
      <div className="page-header row" style={{ justifyContent: 'space-between' }}>
        <div>
          <h1 data-testid="signed-in">Signed in as {session.name ?? session.userId}</h1>
          <p>
            {session.roles.length > 0 ? session.roles.map((role) => <span key={role} className="badge" style={{ marginRight: 6 }}>{role}</span>) : <span className="badge neutral">no roles</span>}{' '}
            <span className="small" data-testid="session-ends">
              Session ends {utc(session.expiresAt)}
            </span>
          </p>
        </div>
        <SignOutButton />
      </div>

      <section className="card">
        <div className="card-title">
          <h2>Your keys</h2>
        </div>
        {ownKeyUpstreams.length === 0 ? (
          <div className="empty" data-testid="no-own-keys">No API here takes a key of your own: Keyward uses the keys the server holds.</div>
        ) : (
          <>
            <p className="small muted">A key you store is sealed on the server and used only for your own calls. It is never shown again, only its fingerprint.</p>
            <OwnKeys upstreams={ownKeyUpstreams} />
          </>
        )}
      </section>

      {connectionProviders.length > 0 && (
        <section className="card">
          <div className="card-title">
            <h2>Connected accounts</h2>
            <span className="small muted">the app calls these services as you</span>
          </div>
          <p className="small muted">Connect an account once; its tokens are sealed on the server and renewed there, and never reach this browser.</p>
          <ConnectedAccounts providers={connectionProviders} />
        </section>
      )}

      <p className="small" data-testid="my-usage-link">
        <Link href="/usage" prefetch={false}>
          My usage: your calls, errors and limits of the last 24 hours
        </Link>
      </p>

      <section className="card">
        <div className="card-title">
          <h2>APIs you can call</h2>
          <span className="small muted">through /api/proxy/&lt;id&gt;/…</span>
        </div>
        {upstreams.length === 0 ? (
          <div className="empty">No upstream is configured yet (KEYWARD_CONFIG or upstreams/index.ts).</div>
        ) : (
          <table>
            <thead>
              <tr>
                <th>Upstream</th>
                <th>Calls are made with</th>
              </tr>
            </thead>
            <tbody>
              {upstreams.map((upstream) => (
                <tr key={upstream.id}>
                  <td>
                    <code>{upstream.id}</code>
                  </td>
                  <td>{CREDENTIAL_LABEL[upstream.credential]}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      {isAdmin && (
        <section className="card" data-testid="admin-links">
          <div className="card-title">
            <h2>Administration</h2>
          </div>
          <table>
            <tbody>
              <tr>
                <td>Dashboard: usage by upstream, user and key; key versions</td>
                <td>
                  <Link href="/admin" prefetch={false} data-testid="admin-dashboard-link">
                    Open the admin dashboard
                  </Link>
                </td>
              </tr>
              <tr>
                <td>Service keys: versions, rotation, rollback, revocation</td>
                <td>
                  <Link href="/admin/keys" prefetch={false}>
                    Keys
                  </Link>{' '}
                  · <code>GET /api/admin/keys</code> · <code>npm run keyward -- keys list</code>
                </td>
              </tr>
              <tr>
                <td>Audit trail of calls and admin actions</td>
                <td>
                  <Link href="/admin/audit" prefetch={false}>
                    Audit
                  </Link>{' '}
                  · <code>GET /api/admin/audit</code> · <code>npm run keyward -- audit tail</code>
                </td>
              </tr>
              <tr>
                <td>End every session of a user</td>
                <td>
                  <Link href="/admin/users" prefetch={false}>
                    Users
                  </Link>{' '}
                  · <code>POST /api/admin/users/&lt;id&gt;/revoke-sessions</code>
                </td>
              </tr>
            </tbody>
          </table>
        </section>
      )}
    </main>
  );
}

function DemoHome() {
  return (
    <main className="page">
      <div className="page-header">
        <h1>Keyward demo</h1>
        <p>
          This page calls the demo upstream API through <code>/api/proxy/demo/…</code>. Keyward checks your session, attaches the upstream&apos;s key
          on the server and streams the answer back. Below is exactly what your browser received.
        </p>
      </div>
      <Demo showDemoPassword={process.env.NODE_ENV !== 'production'} />
    </main>
  );
}
