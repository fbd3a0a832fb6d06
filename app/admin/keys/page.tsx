import { AdminFrame, DataUnavailable, GateRefusal, adminGate } from '../admin-frame';
import { loadKeyRings, type KeyRingView, type KeyVersionRow } from '../admin-data';

// Per request: the session, key states and expiry countdowns change over time.
export const dynamic = 'force-dynamic';

const DAY_MS = 86_400_000;

/** Badge colours per status (lib/core/keys/rings.ts VersionView): green serving, neutral idle, red unusable. */
const STATUS_BADGE: Record<string, string> = {
  serving: 'badge ok',
  fallback: 'badge warn',
  standby: 'badge neutral',
  next: 'badge',
  pending: 'badge',
  retired: 'badge neutral',
  revoked: 'badge danger',
  expired: 'badge danger',
};

export default async function AdminKeys() {
  const gate = await adminGate('/admin/keys');
  if (gate.kind !== 'admin') return <GateRefusal gate={gate} />;

  let loaded: { now: number; rings: KeyRingView[] } | null;
  try {
    loaded = await loadKeyRings();
  } catch {
    loaded = null;
  }
  return (
    <AdminFrame
      current="/admin/keys"
      title="Service keys"
      intro={
        <>
          Every version of each upstream&apos;s service key, named by fingerprint (a key&apos;s value is never shown). To add, rotate, roll back or revoke a
          version use <code>/api/admin/keys</code> or <code>npm run keyward -- keys</code> (README &ldquo;Key lifecycle&rdquo;).
        </>
      }
    >
      {loaded === null ? (
        <DataUnavailable />
      ) : loaded.rings.length === 0 ? (
        <section className="card">
          <div className="empty" data-testid="no-key-rings">
            No upstream uses a service key: every call is made with a user&apos;s own key or sign-in token.
          </div>
        </section>
      ) : (
        loaded.rings.map((ring) => <RingCard key={ring.upstream} ring={ring} now={loaded.now} />)
      )}
    </AdminFrame>
  );
}

function RingCard({ ring, now }: { ring: KeyRingView; now: number }) {
  return (
    <section className="card" data-testid={`key-ring-${ring.upstream}`}>
      <div className="card-title">
        <h2>
          <code>{ring.upstream}</code>
        </h2>
        <span className="small muted">
          Calls {ring.sinceRotation ? `since the last rotation, ${utc(ring.since)}` : 'in the last 30 days (no rotation yet)'}
        </span>
      </div>
      <table>
        <thead>
          <tr>
            <th>Fingerprint</th>
            <th>Status</th>
            <th>Age</th>
            <th>Expires</th>
            <th>Last used</th>
            <th className="num">Calls</th>
          </tr>
        </thead>
        <tbody>
          {ring.versions.map((version) => (
            <VersionRow key={version.fingerprint} version={version} now={now} />
          ))}
        </tbody>
      </table>
    </section>
  );
}

function VersionRow({ version, now }: { version: KeyVersionRow; now: number }) {
  return (
    <tr data-testid={`key-version-${version.fingerprint}`}>
      <td>
        <code>{version.fingerprint}</code>
        <div className="small muted">{version.source === 'env' ? 'from the environment' : 'managed'}</div>
      </td>
      <td>
        <span className={STATUS_BADGE[version.status] ?? 'badge neutral'}>{version.status}</span>
      </td>
      <td>{version.created > 0 ? age(now - version.created) : <span className="muted">unknown</span>}</td>
      <td>
        {version.expiresAt === null ? (
          <span className="muted">never</span>
        ) : version.expiresAt <= now ? (
          <span className="text-danger">expired {utcDate(version.expiresAt)}</span>
        ) : (
          <>
            in {version.expiresInDays} day{version.expiresInDays === 1 ? '' : 's'}
            <div className={version.warning ? 'small text-danger' : 'small muted'}>{utcDate(version.expiresAt)}</div>
          </>
        )}
      </td>
      <td>{version.lastUsedHour === null ? <span className="muted">not in 7 days</span> : lastUsed(version.lastUsedHour, now)}</td>
      <td className="num" data-testid="calls-since">
        {version.callsSince}
      </td>
    </tr>
  );
}

function age(ms: number): string {
  const days = Math.floor(ms / DAY_MS);
  if (days >= 1) return `${days} day${days === 1 ? '' : 's'}`;
  const hours = Math.floor(ms / 3_600_000);
  if (hours >= 1) return `${hours} h`;
  return 'under an hour';
}

/** The aggregates keep hours: "this hour", else the hour's start. */
function lastUsed(hourStart: number, now: number): string {
  return now - hourStart < 3_600_000 ? 'this hour' : `${utc(hourStart)}`;
}

function utc(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

function utcDate(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}
