import Link from 'next/link';
import type { Alert, AlertAction, AlertRule } from '@/lib/core/detect/alerts';
import { AdminFrame, DataUnavailable, GateRefusal, adminGate, adminMetadata } from '../admin-frame';
import { ActionMessage, ActionResults } from '../action-dialog';
import { userPath } from '../users/user-parts';
import { utc } from '@/lib/core/time';
import { PAGE_SIZE, inEffect, loadAlerts, readCursor } from './alerts-data';
import { UndoAlert } from './undo-alert';

// Per request: the session, and alerts the detector writes at any moment.
export const dynamic = 'force-dynamic';

export const generateMetadata = () => adminMetadata('Alerts');

type SearchParams = Promise<Record<string, string | string[] | undefined>>;

/** The steps in escalating colours: blue alert, amber throttle, orange re-authentication, solid red revocation. */
const ACTION_BADGE: Record<AlertAction, { className: string; label: string }> = {
  alert: { className: 'badge', label: 'alert' },
  throttle: { className: 'badge warn', label: 'throttle' },
  reauth: { className: 'badge step-reauth', label: 're-auth' },
  revoke: { className: 'badge step-revoke', label: 'revoke & suspend' },
};

const RULE_LABEL: Record<AlertRule, string> = {
  calls: 'call burst',
  errors: 'failed calls',
  spend: 'spend',
  ips_per_session: 'IPs per session',
  new_routes: 'new routes',
  decoy: 'decoy',
  key_calls: 'key calls',
  scrubber_hits: 'scrubber hits',
};

/** Evidence names as people read them (lib/core/detect/detector.ts); any other name is shown as it is. */
const EVIDENCE_LABEL: Record<string, string> = {
  perMinute: 'per minute',
  baselinePerMinute: 'baseline',
  threshold: 'threshold',
  distinctIps: 'client IPs',
  newRoutes: 'new routes',
  windowMinutes: 'window (min)',
  max: 'max',
  hits: 'hits',
  route: 'route',
  kind: 'kind',
  where: 'where',
  upstream: 'upstream',
  ip: 'IP',
  requestId: 'request',
  decoyId: 'decoy',
  echoedBy: 'echoed by',
  setting: 'setting',
};

/** /admin/alerts: what the anomaly detector did, newest first, with the figures behind each step and its undo. */
export default async function AdminAlerts({ searchParams }: { searchParams: SearchParams }) {
  const cursor = readCursor((await searchParams).cursor);
  const gate = await adminGate(cursor ? `/admin/alerts?cursor=${encodeURIComponent(cursor)}` : '/admin/alerts');
  if (gate.kind !== 'admin') return <GateRefusal gate={gate} />;

  const page = await loadAlerts(cursor);
  return (
    <AdminFrame
      current="/admin/alerts"
      title="Alerts"
      intro={
        <>
          What the anomaly detector did, newest first: each step of the graduated response (throttle → re-authenticate → revoke and suspend), the figures
          behind it, and its undo. Times are UTC; README &ldquo;Anomaly detection&rdquo; explains every rule.
        </>
      }
    >
      {page.kind === 'unavailable' ? (
        <DataUnavailable what="the detector's alerts" />
      ) : page.kind === 'invalid' ? (
        <section className="card">
          <div className="alert error" data-testid="alerts-invalid">
            {page.message} <Link href="/admin/alerts">Newest alerts</Link>
          </div>
        </section>
      ) : page.alerts.length === 0 && cursor === null ? (
        <section className="card">
          <div className="empty" data-testid="alerts-empty">
            No alerts: the detector has not acted. It watches every user&apos;s calls, failed calls and spend per minute, the client IPs of each session, new
            routes, decoys, and keys echoed by upstreams.
          </div>
        </section>
      ) : (
        <section className="card" data-testid="alerts-table">
          <ActionResults>
            <div className="card-title">
              <h2>Detector actions</h2>
              <span className="small muted">newest first · {PAGE_SIZE} a page</span>
            </div>
            <ActionMessage testId="alert-action-result" />
            {page.alerts.length === 0 ? (
              <div className="empty">No older alerts.</div>
            ) : (
              <div className="table-scroll">
                <table className="stack-narrow">
                  <thead>
                    <tr>
                      <th>Time</th>
                      <th>Step</th>
                      <th>Subject</th>
                      <th>What was seen</th>
                      <th>State</th>
                      <th>
                        <span className="sr-only">Actions</span>
                      </th>
                    </tr>
                  </thead>
                  <tbody>
                    {page.alerts.map((alert) => (
                      <AlertRow key={alert.id} alert={alert} now={page.now} viewer={gate.session.userId} />
                    ))}
                  </tbody>
                </table>
              </div>
            )}
            <Pager cursor={cursor} older={page.older} />
          </ActionResults>
        </section>
      )}
    </AdminFrame>
  );
}

function AlertRow({ alert, now, viewer }: { alert: Alert; now: number; viewer: string }) {
  const badge = ACTION_BADGE[alert.action];
  const { userId, upstream, fingerprint } = alert.subject;
  const expires = alert.expiresAt ? Date.parse(alert.expiresAt) : null;
  return (
    <tr data-testid={`alert-${alert.id}`} data-action={alert.action} data-rule={alert.rule} data-state={alert.state}>
      <td data-label="Time" data-testid="alert-time">
        <TwoLineTime at={utc(alert.at, { seconds: true })} />
      </td>
      <td className="nowrap" data-label="Step">
        <span className={badge.className} data-testid="alert-action">
          {badge.label}
        </span>
        <div className="small muted">{RULE_LABEL[alert.rule] ?? alert.rule}</div>
      </td>
      <td className="wrap-anywhere small alert-subject wide" data-label="Subject" data-testid="alert-subject">
        {userId && (
          <div>
            <Link href={userPath(userId)} prefetch={false}>
              <code>{userId}</code>
            </Link>
          </div>
        )}
        {upstream && (
          <div>
            <code>{upstream}</code>
          </div>
        )}
        {fingerprint && (
          <div title="Key fingerprint">
            key <code>{fingerprint}</code>
          </div>
        )}
        {typeof alert.evidence.setting === 'string' && (
          <div title="The Keyward setting an upstream echoed">
            setting <code>{alert.evidence.setting}</code>
          </div>
        )}
      </td>
      <td className="wrap-anywhere wide" data-label="What was seen" data-testid="alert-reason">
        {alert.reason}
        <Evidence evidence={alert.evidence} />
        {alert.rule === 'scrubber_hits' && alert.state === 'active' && (alert.evidence.credential ?? 'service-key') === 'service-key' && (
          <div className="small">
            <Link href="/admin/keys" prefetch={false} data-testid="rotate-key-link">
              Rotate this key on the Keys page →
            </Link>
          </div>
        )}
      </td>
      <td className="small nowrap" data-label="State" data-testid="alert-state">
        <State alert={alert} expires={expires} now={now} />
      </td>
      <td className="actions">
        {alert.state === 'active' &&
          // The API refuses an undo by the alert's own subject (a hijacked admin account would lift its own step); the
          // command line, run on the server with its settings, may undo it (a deployment with a single admin).
          (userId === viewer ? (
            <span className="small muted own-alert-note" data-testid={`undo-${alert.id}-own`}>
              About you: another admin must undo it, or an operator on the server with{' '}
              <code className="wrap-anywhere">npm run keyward -- alerts undo {alert.id}</code>.
            </span>
          ) : (
            <UndoAlert id={alert.id} action={alert.action} userId={userId ?? null} expires={expires === null ? null : utc(expires)} expired={expires !== null && expires <= now} />
          ))}
      </td>
    </tr>
  );
}

function Evidence({ evidence }: { evidence: Alert['evidence'] }) {
  const entries = Object.entries(evidence);
  if (entries.length === 0) return null;
  return (
    <div className="small muted evidence" data-testid="alert-evidence">
      {entries.map(([name, value], i) => (
        <span key={name}>
          {i > 0 && ' · '}
          {EVIDENCE_LABEL[name] ?? name} <strong>{typeof value === 'number' ? value.toLocaleString('en-US') : value}</strong>
        </span>
      ))}
    </div>
  );
}

/** "08:39 UTC" on today's date (UTC), else the full "2026-05-01 08:39 UTC". */
function sameDayUtc(ms: number, now: number): string {
  const text = utc(ms);
  return text.slice(0, 10) === new Date(now).toISOString().slice(0, 10) ? text.slice(11) : text;
}

function State({ alert, expires, now }: { alert: Alert; expires: number | null; now: number }) {
  if (alert.state === 'undone') {
    return (
      <>
        <span className="badge neutral">{alert.action === 'alert' ? 'dismissed' : 'undone'}</span>
        {alert.undoneAt && <div className="muted">{sameDayUtc(Date.parse(alert.undoneAt), now)}</div>}
        {alert.undoneBy && (
          <div className="muted">
            by <code>{alert.undoneBy}</code>
          </div>
        )}
      </>
    );
  }
  if (!inEffect(alert, now)) {
    return (
      <>
        <span className="badge neutral">expired</span>
        <div className="muted">lifted by itself {expires !== null ? sameDayUtc(expires, now) : ''}</div>
      </>
    );
  }
  return (
    <>
      <span className={alert.action === 'alert' ? 'badge' : 'badge danger'}>{alert.action === 'alert' ? 'open' : 'active'}</span>
      {alert.action === 'throttle' && expires !== null && <div className="muted">lifts {sameDayUtc(expires, now)}</div>}
      {(alert.action === 'revoke' || alert.action === 'reauth') && <div className="muted">until undone</div>}
    </>
  );
}

function Pager({ cursor, older }: { cursor: string | null; older: string | null }) {
  if (cursor === null && older === null) return null;
  return (
    <nav className="row pager" aria-label="Pages" data-testid="alerts-pager">
      <span>
        {cursor !== null && (
          <Link className="button small-button" href="/admin/alerts" prefetch={false} data-testid="alerts-newest">
            « Newest
          </Link>
        )}
      </span>
      {older !== null && (
        <Link className="button small-button" href={`/admin/alerts?cursor=${encodeURIComponent(older)}`} prefetch={false} data-testid="alerts-older">
          Older ›
        </Link>
      )}
    </nav>
  );
}

/**
 * utc()'s text as this table showed times before (the time, the date under it, small): narrow, so the reason column
 * keeps its room beside a long note (an admin's own alert).
 */
function TwoLineTime({ at }: { at: string }) {
  const space = at.indexOf(' ');
  return (
    <>
      <span className="nowrap">{at.slice(space + 1)}</span>
      <div className="small muted nowrap">{at.slice(0, space)}</div>
    </>
  );
}
