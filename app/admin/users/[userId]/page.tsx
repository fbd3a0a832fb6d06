import Link from 'next/link';
import { AdminFrame, DataUnavailable, GateRefusal, adminGate, adminMetadata } from '../../admin-frame';
import { ActionMessage, ActionResults } from '../../action-dialog';
import { Stat } from '../../../components/stat';
import { OwnKeyTable } from '../../../components/own-key-list';
import { RevokeSessionsAction } from '../revoke-sessions';
import { RoleList, meterText, userPath } from '../user-parts';
import { utc } from '@/lib/core/time';
import { isUserId, loadUser, type MeterUse, type UserDetail } from '../users-data';
import type { SessionView } from '@/lib/core/session/session-index';
import { userIdFromSegment } from '@/lib/core/session/provider-sessions';

// Per request: the session, counters and sessions change all the time.
export const dynamic = 'force-dynamic';

type Params = Promise<{ userId: string }>;

export async function generateMetadata({ params }: { params: Params }) {
  return adminMetadata(`User ${userIdFromSegment((await params).userId)}`);
}

/** /admin/users/<userId>: one user's usage against their limits, their own keys, their sessions, and revocation. */
export default async function AdminUser({ params }: { params: Params }) {
  const userId = userIdFromSegment((await params).userId);
  const gate = await adminGate(userPath(userId));
  if (gate.kind !== 'admin') return <GateRefusal gate={gate} />;

  let loaded: Awaited<ReturnType<typeof loadUser>> | undefined;
  if (isUserId(userId)) {
    try {
      loaded = await loadUser(userId);
    } catch {
      loaded = undefined;
    }
  } else {
    loaded = null;
  }

  return (
    <AdminFrame
      current="/admin/users"
      title={userId}
      intro={
        <>
          <Link href="/admin/users" prefetch={false}>
            ← All users
          </Link>{' '}
          · calls in the last 24 hours, limits as counted right now, times in UTC.
        </>
      }
      actions={
        loaded ? (
          <Link className="button small-button" href={`/admin/audit?userId=${encodeURIComponent(userId)}`} prefetch={false} data-testid="user-audit-link">
            Audit records
          </Link>
        ) : undefined
      }
    >
      {loaded === undefined ? (
        <DataUnavailable what="this user's sessions, limits or usage figures" />
      ) : loaded === null ? (
        <section className="card">
          <div className="empty" data-testid="user-unknown">
            Keyward knows no user <code>{userId}</code>: not in the users file, no calls in the usage aggregates, no recent sign-in.
          </div>
        </section>
      ) : (
        <UserBody user={loaded.user} now={loaded.now} />
      )}
    </AdminFrame>
  );
}

function UserBody({ user, now }: { user: UserDetail; now: number }) {
  const { summary } = user;
  return (
    <>
      <div className="row" style={{ marginBottom: 'var(--space-4)' }}>
        <span className="small muted">Roles</span> <RoleList roles={summary.roles} />
        <span className="small muted">· {summary.local ? 'in the users file' : 'seen in usage or sign-ins'}</span>
      </div>
      <div className="stats">
        <Stat label="Calls (24 h)" value={summary.calls.toLocaleString('en-US')} testId="stat-calls" />
        <Stat label="Errors" value={summary.errors.toLocaleString('en-US')} note={summary.calls === 0 ? undefined : `${summary.errorRate}% of calls`} testId="stat-errors" />
        <Stat label="Budget units" value={summary.units.toLocaleString('en-US')} testId="stat-units" />
        <Stat label="Active sessions" value={String(summary.activeSessions)} note={`${summary.sessions} indexed`} testId="stat-sessions" />
      </div>

      <section className="card" data-testid="user-limits">
        <div className="card-title">
          <h2>Quotas and budgets</h2>
          <span className="small muted">{summary.roles === null ? 'roles unknown: only the limits for everyone' : 'the rules that apply to these roles'}</span>
        </div>
        {user.meters.length === 0 ? (
          <div className="empty">No quota or budget applies to this user.</div>
        ) : (
          <div className="table-scroll">
            <table>
              <thead>
                <tr>
                  <th>Upstream</th>
                  <th>Limit</th>
                  <th>Used</th>
                  <th>Resets</th>
                </tr>
              </thead>
              <tbody>
                {user.meters.map((meter) => (
                  <MeterRow key={`${meter.upstream} ${meter.route ?? '*'} ${meter.name}`} meter={meter} />
                ))}
              </tbody>
            </table>
          </div>
        )}
        {user.rates.length > 0 && (
          <p className="small muted" data-testid="user-rates">
            Rate limits (short windows, not shown live):{' '}
            {user.rates.map((rate, i) => (
              <span key={`${rate.upstream} ${rate.route ?? '*'} ${rate.name}`}>
                {i > 0 && ' · '}
                <code>{rate.upstream}</code> {rate.value}, per {rate.by}
                {rate.route && ` (${rate.route})`}
              </span>
            ))}
          </p>
        )}
      </section>

      <section className="card" data-testid="user-keys">
        <div className="card-title">
          <h2>Own keys</h2>
          <span className="small muted">fingerprints only</span>
        </div>
        {user.ownKeys.length === 0 ? (
          <div className="empty">No upstream here takes a user&apos;s own key.</div>
        ) : (
          <OwnKeyTable keys={user.ownKeys} testIdPrefix="user-key" />
        )}
      </section>

      {user.connections !== null && (
        <section className="card" data-testid="user-connections">
          <div className="card-title">
            <h2>Connected accounts</h2>
            <span className="small muted">never a token</span>
          </div>
          {user.connections.length === 0 ? (
            <div className="empty">No account connected.</div>
          ) : (
            <div className="table-scroll">
              <table>
                <tbody>
                  {user.connections.map((connection) => (
                    <tr key={connection.provider} data-testid={`user-connection-${connection.provider}`}>
                      <td>
                        <code>{connection.provider}</code>
                      </td>
                      <td style={{ whiteSpace: 'nowrap' }}>
                        <span className={connection.status === 'connected' ? 'badge ok' : 'badge warn'}>
                          {connection.status === 'connected' ? 'connected' : 'needs reconnecting'}
                        </span>
                      </td>
                      <td className="small">
                        {connection.scopes.map((scope) => (
                          <code key={scope}>{scope} </code>
                        ))}
                      </td>
                      <td className="small muted">
                        connected {utc(connection.connectedAt)}
                        {connection.lastRefreshAt && <> · refreshed {utc(connection.lastRefreshAt)}</>}
                        {connection.needsReconnectSince && <> · refused since {utc(connection.needsReconnectSince)}</>}
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </section>
      )}

      <section className="card" data-testid="user-sessions">
        <ActionResults>
          <div className="card-title">
            <h2>Sessions</h2>
            <RevokeSessionsAction userId={summary.userId} active={summary.activeSessions} />
          </div>
          <ActionMessage testId="revoke-sessions-result" />
          {user.sessions.length === 0 ? (
            <div className="empty">No sign-in indexed: sessions are listed from their sign-in on (the last 20 per user, until they expire).</div>
          ) : (
            <div className="table-scroll">
              <table>
                <thead>
                  <tr>
                    <th>Session</th>
                    <th>Kind</th>
                    <th>Signed in</th>
                    <th>Expires</th>
                    <th>State</th>
                  </tr>
                </thead>
                <tbody>
                  {user.sessions.map((session) => (
                    <SessionRow key={session.sessionIdHash} session={session} now={now} />
                  ))}
                </tbody>
              </table>
            </div>
          )}
          <p className="small muted table-note">
            Sessions are sealed cookies and tokens: Keyward keeps no list of them but this index of recent sign-ins, by a hash of the session id (the audit
            records&apos; <code>sessionIdHash</code>). Expiry is as issued; a session in use may be renewed.
          </p>
        </ActionResults>
      </section>
    </>
  );
}

function MeterRow({ meter }: { meter: MeterUse }) {
  const share = meter.used === null ? 0 : Math.min(meter.used / meter.limit, 1);
  return (
    <tr data-testid={`meter-${meter.upstream}-${meter.name}`}>
      <td>
        <code>{meter.upstream}</code>
        {meter.route && <div className="small muted">{meter.route}</div>}
      </td>
      <td>
        {meter.kind} <span className="small muted">{meter.name}</span>
        <div className="small muted">{meter.by === 'user' ? 'per user' : meter.by === 'upstream' ? 'shared by everyone' : 'per key'}</div>
      </td>
      <td data-testid="meter-used">
        <span className="small">{meterText(meter)}</span>
        {meter.used !== null && (
          <div className={`meter${share >= 0.9 ? ' high' : ''}`} aria-hidden="true">
            <span style={{ width: `${Math.round(share * 100)}%` }} />
          </div>
        )}
      </td>
      <td className="small">{utc(meter.resetsAt)}</td>
    </tr>
  );
}

function SessionRow({ session, now }: { session: SessionView; now: number }) {
  const state = session.revoked ? (
    <span className="badge danger">revoked</span>
  ) : session.expired || session.expiresAt <= now ? (
    <span className="badge neutral">expired</span>
  ) : (
    <span className="badge ok">active</span>
  );
  return (
    <tr data-testid={`session-${session.sessionIdHash}`}>
      <td>
        <code>{session.sessionIdHash}</code>
      </td>
      <td>{session.kind}</td>
      <td className="small">{utc(session.createdAt)}</td>
      <td className="small">{utc(session.expiresAt)}</td>
      <td data-testid="session-state">{state}</td>
    </tr>
  );
}
