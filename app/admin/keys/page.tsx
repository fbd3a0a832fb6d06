import { AdminFrame, DataUnavailable, GateRefusal, adminGate, adminMetadata } from '../admin-frame';
import { loadKeyRings, type KeyRingView, type KeyVersionRow } from '../admin-data';
import { ActionMessage, ActionResults } from '../action-dialog';
import { RevokeAction, RollbackAction, RotateAction } from './key-actions';
import { utc } from '@/lib/core/time';

// Per request: the session, key states and expiry countdowns change over time.
export const dynamic = 'force-dynamic';

export const generateMetadata = () => adminMetadata('Keys');

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
  refused: 'badge danger',
  unreadable: 'badge danger',
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
          Every version of each upstream&apos;s service key, named by fingerprint (a key&apos;s value is never shown). Rotate, roll back and revoke here
          (each asks first), or with <code>/api/admin/keys</code> and <code>npm run keyward -- keys</code> (README &ldquo;Key lifecycle&rdquo;).
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
  const serving = ring.versions.find((version) => version.status === 'serving')?.fingerprint ?? null;
  const echoed = ring.versions.filter((version) => version.scrubberHits > 0 && version.status !== 'revoked');
  return (
    <section className="card" data-testid={`key-ring-${ring.upstream}`}>
      <ActionResults>
        <div className="card-title">
          <h2>
            <code>{ring.upstream}</code>
          </h2>
          <div className="row">
            <RotateAction upstream={ring.upstream} canary={ring.canary} graceSeconds={ring.graceSeconds} serving={serving} />
            {ring.rollback && (
              <RollbackAction
                upstream={ring.upstream}
                rotation={{ id: ring.rollback.id, from: ring.rollback.from, to: ring.rollback.to, at: utc(ring.rollback.at), actor: ring.rollback.actor }}
              />
            )}
          </div>
        </div>
        {ring.noneServes && <NoneServes ring={ring} />}
        <p className="small muted">
          Calls {ring.sinceRotation ? `since the last rotation, ${utc(ring.since)}` : 'in the last 30 days (no rotation yet)'}
          {ring.rollback && (
            <>
              {' '}
              · last rotation <code>{ring.rollback.id}</code> switched to <code>{ring.rollback.to}</code>
            </>
          )}
        </p>
        <ActionMessage testId={`key-action-result-${ring.upstream}`} />
        {echoed.length > 0 && (
          <div className="alert info" data-testid={`suggest-rotation-${ring.upstream}`}>
            {echoed.length === 1 ? 'A key of this upstream was' : 'Keys of this upstream were'} echoed back in responses in the last 30 days ({echoed.map((version) => version.fingerprint).join(', ')}
            ), by this upstream or another (its alert says which); Keyward scrubbed {echoed.length === 1 ? 'it' : 'them'}, but a copy may sit in that upstream&apos;s logs
            or a client&apos;s cache.{' '}
            {echoed.some(inUse) ? 'Consider rotating, then revoking the echoed version.' : 'Consider revoking the echoed version.'}
          </div>
        )}
        <div className="table-scroll">
          <table className="key-versions stack-narrow">
            <thead>
              <tr>
                <th>Fingerprint</th>
                <th>Status</th>
                <th>Age</th>
                <th>Expires</th>
                <th>Last used</th>
                <th className="num">Calls</th>
                <th className="num wrap" title="Responses the leak scrubber removed this key from, last 30 days">
                  Scrubber hits
                </th>
                <th>
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {ring.versions.map((version) => (
                <VersionRows key={version.fingerprint} upstream={ring.upstream} version={version} now={now} />
              ))}
            </tbody>
          </table>
        </div>
      </ActionResults>
    </section>
  );
}

/**
 * A version's row, and under it, across the whole table, why a version that could serve is never sent: a sentence
 * too long for a cell, where it would make the whole row as tall.
 */
function VersionRows({ upstream, version, now }: { upstream: string; version: KeyVersionRow; now: number }) {
  return (
    <>
      <tr data-testid={`key-version-${version.fingerprint}`} className={version.neverSent ? 'has-note' : undefined}>
        <td className="nowrap" data-label="Fingerprint">
          <code>{version.fingerprint}</code>
          <div className="small muted">{version.source === 'env' ? 'environment' : 'managed'}</div>
        </td>
        <td data-label="Status">
          <span className={STATUS_BADGE[version.status] ?? 'badge neutral'} data-testid="version-status">
            {version.status}
          </span>
        </td>
        <td className="nowrap" data-label="Age">
          {version.created > 0 ? age(now - version.created) : <span className="muted">unknown</span>}
        </td>
        <td className="nowrap" data-label="Expires">
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
        <td className="nowrap" data-label="Last used">
          {version.lastUsedHour === null ? <span className="muted">not in 7 days</span> : lastUsed(version.lastUsedHour, now)}
        </td>
        <td className="num" data-label="Calls" data-testid="calls-since">
          {version.callsSince}
        </td>
        <td className="num" data-label="Scrubber hits" data-testid="scrubber-hits">
          {version.scrubberHits === 0 ? (
            '0'
          ) : (
            <>
              <span className="badge warn" title="The upstream echoed this key">
                {version.scrubberHits}
              </span>
              {version.status !== 'revoked' && <div className="small text-danger wrap">{inUse(version) ? 'suggest rotation' : 'suggest revoking'}</div>}
            </>
          )}
        </td>
        <td className="actions">
          {version.status !== 'revoked' && <RevokeAction upstream={upstream} fingerprint={version.fingerprint} serving={version.status === 'serving'} />}
        </td>
      </tr>
      {version.neverSent && (
        <tr className="row-note">
          <td colSpan={8} className="small text-danger" data-testid={`never-sent-${version.fingerprint}`}>
            {sentence(version.neverSent)}
          </td>
        </tr>
      )}
    </>
  );
}

/** At the top of a ring's card when no version serves: every call fails until a version that can be sent serves. */
function NoneServes({ ring }: { ring: KeyRingView }) {
  const unsendable = ring.versions.filter((version) => version.neverSent);
  return (
    <div className="alert error" role="alert" data-testid={`no-serving-${ring.upstream}`}>
      <strong>
        No key serves: every call to <code>{ring.upstream}</code> answers 503 <code>credential_unavailable</code>.
      </strong>
      {unsendable.length > 0 ? (
        <ul className="alert-list">
          {unsendable.map((version) => (
            <li key={version.fingerprint}>
              <code>{version.fingerprint}</code> ({version.status}): {version.neverSent}.
            </li>
          ))}
        </ul>
      ) : (
        <div>Every version is revoked or expired.</div>
      )}
      <div>
        Rotate to a new key (Rotate…){unsendable.some((version) => version.status === 'unreadable') && ', or start Keyward again with the KEYWARD_VAULT_SECRET that sealed the unreadable version'}
        ; then revoke the versions that cannot be sent.
      </div>
    </div>
  );
}

/** A version calls may still be made with: rotating away from it is the remedy (then revoking it). */
function inUse(version: KeyVersionRow): boolean {
  return version.status === 'serving' || version.status === 'fallback';
}

/** A note as a sentence: capitalised, with a full stop. */
function sentence(note: string): string {
  return `${note.charAt(0).toUpperCase()}${note.slice(1)}.`;
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

function utcDate(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}
