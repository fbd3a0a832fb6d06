import Link from 'next/link';
import { AdminFrame, DataUnavailable, GateRefusal, adminGate, adminMetadata } from '../admin-frame';
import { loadUsers, MAX_USERS, type MeterUse, type UserSummary } from './users-data';
import { RoleList, meterText, userPath } from './user-parts';

// Per request: the session, and figures that change with every call.
export const dynamic = 'force-dynamic';

export const generateMetadata = () => adminMetadata('Users');

/** /admin/users: every user Keyward knows, with the last 24 hours' calls, sessions and nearest limit. */
export default async function AdminUsers() {
  const gate = await adminGate('/admin/users');
  if (gate.kind !== 'admin') return <GateRefusal gate={gate} />;

  let loaded: Awaited<ReturnType<typeof loadUsers>> | null;
  try {
    loaded = await loadUsers();
  } catch {
    loaded = null;
  }
  return (
    <AdminFrame
      current="/admin/users"
      title="Users"
      intro={
        <>
          Everyone in the users file, and everyone with calls in the usage aggregates. Calls, errors and budget units are the last 24 hours; sessions are the
          recent sign-ins Keyward indexes. Open a user for limits, keys, sessions and revocation.
        </>
      }
    >
      {loaded === null ? (
        <DataUnavailable what="its users, sessions or usage figures" />
      ) : loaded.users.length === 0 ? (
        <section className="card">
          <div className="empty" data-testid="users-empty">
            No users yet: nobody is in a users file and nobody has called through the proxy.
          </div>
        </section>
      ) : (
        <section className="card" data-testid="users-table">
          <div className="card-title">
            <h2>{loaded.users.length === 1 ? '1 user' : `${loaded.users.length} users`}</h2>
            <span className="small muted">busiest in the last 24 h first{loaded.truncated ? ` · the first ${MAX_USERS} shown` : ''}</span>
          </div>
          <div className="table-scroll">
            <table className="stack-narrow">
              <thead>
                <tr>
                  <th>User</th>
                  <th>Roles</th>
                  <th className="num">Calls</th>
                  <th className="num">Errors</th>
                  <th className="num">Units</th>
                  <th>Nearest limit</th>
                  <th className="num">Sessions</th>
                </tr>
              </thead>
              <tbody>
                {loaded.users.map((user) => (
                  <UserRow key={user.userId} user={user} />
                ))}
              </tbody>
            </table>
          </div>
        </section>
      )}
    </AdminFrame>
  );
}

function UserRow({ user }: { user: UserSummary }) {
  return (
    <tr data-testid={`user-${user.userId}`}>
      <td className="wrap-anywhere wide" data-label="User">
        <Link href={userPath(user.userId)} prefetch={false} data-testid="user-link">
          <code>{user.userId}</code>
        </Link>
        <div className="small muted">
          {user.name && user.name !== user.userId.replace(/^local:/, '') ? `${user.name} · ` : ''}
          {user.local ? 'users file' : 'seen in usage'}
        </div>
      </td>
      <td data-label="Roles">
        <RoleList roles={user.roles} />
      </td>
      <td className="num" data-label="Calls" data-testid="user-calls">
        {user.calls}
      </td>
      <td className="num" data-label="Errors" data-testid="user-errors">
        {user.errors === 0 ? '0' : `${user.errors} (${user.errorRate}%)`}
      </td>
      <td className="num" data-label="Units" data-testid="user-units">
        {user.units}
      </td>
      <td data-label="Nearest limit" data-testid="user-closest">{user.closest ? <ClosestMeter meter={user.closest} /> : <span className="small muted">none per user</span>}</td>
      <td className="num" data-label="Sessions" data-testid="user-sessions">
        {user.activeSessions}
        {user.sessions > user.activeSessions && <span className="small muted"> / {user.sessions}</span>}
      </td>
    </tr>
  );
}

function ClosestMeter({ meter }: { meter: MeterUse }) {
  const share = meter.used === null ? 0 : Math.min(meter.used / meter.limit, 1);
  return (
    <div className="small">
      {meterText(meter)} <span className="muted">({meter.upstream})</span>
      <div className={`meter${share >= 0.9 ? ' high' : ''}`} aria-hidden="true">
        <span style={{ width: `${Math.round(share * 100)}%` }} />
      </div>
    </div>
  );
}
