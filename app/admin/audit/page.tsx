import Link from 'next/link';
import { ADMIN_ACTIONS, type AuditRecord } from '@/lib/core/audit/audit';
import { utc } from '@/lib/core/time';
import { keyward } from '@/keyward';
import { AdminFrame, DataUnavailable, GateRefusal, adminGate, adminMetadata } from '../admin-frame';
import { ExportButton } from './export-button';
import { FILTER_NAMES, PAGE_SIZES, apiParams, loadAuditPage, readQuery, type AuditPageQuery, type FilterValues } from './audit-data';

// Per request: the session, and a trail that grows with every call.
export const dynamic = 'force-dynamic';

export const generateMetadata = () => adminMetadata('Audit');

type SearchParams = Promise<Record<string, string | string[] | undefined>>;

/** Suggestions for the text filters (any value the API accepts may be typed). */
const ACTIONS = ADMIN_ACTIONS;
const OUTCOMES = ['complete', 'aborted', 'error', 'refused', 'upstream_error', 'unavailable', 'switched', 'canary_failed', 'rolled_back', 'revoked'];

/** /admin/audit: the audit trail, filtered (a GET form: the URL is the view), paged newest first, exported as JSON Lines. */
export default async function AdminAudit({ searchParams }: { searchParams: SearchParams }) {
  const query = readQuery(await searchParams);
  // Signed out, the sign-in page brings you back to this very view (filters and page).
  const gate = await adminGate(pageHref(query, query.older ? { older: query.older } : query.newer ? { newer: query.newer } : null));
  if (gate.kind !== 'admin') return <GateRefusal gate={gate} />;

  const page = await loadAuditPage(query).catch(() => ({ kind: 'unavailable' }) as const);
  const exportParams = apiParams(query.filters);
  exportParams.set('format', 'jsonl');

  return (
    <AdminFrame
      current="/admin/audit"
      title="Audit trail"
      intro={
        <>
          Every proxied call and every admin action, newest first, as recorded (keys by fingerprint, sessions by hash). Times are UTC; kept{' '}
          {keyward.getRuntime().settings.KEYWARD_AUDIT_RETENTION_DAYS} days.
        </>
      }
    >
      <FilterForm query={query} upstreams={keyward.upstreamSummaries().map((u) => u.id)} />
      {page.kind === 'unavailable' ? (
        <DataUnavailable what="its audit trail" />
      ) : page.kind === 'invalid' ? (
        <section className="card">
          <div className="alert error" data-testid="audit-invalid">
            {page.message}
          </div>
        </section>
      ) : (
        <section className="card" data-testid="audit-records">
          <div className="card-title">
            <h2>{Object.keys(query.filters).length > 0 ? 'Matching records' : 'All records'}</h2>
            {/* Every match of the applied filters (not only this page), oldest first. */}
            <ExportButton href={`/api/admin/audit?${exportParams}`} />
          </div>
          {page.records.length === 0 ? (
            <div className="empty" data-testid="audit-empty">
              {Object.keys(query.filters).length > 0 ? 'No record matches these filters.' : 'Nothing recorded yet: calls and admin actions appear here as they happen.'}
            </div>
          ) : (
            <div className="table-scroll">
              <table className="stack-narrow">
                <thead>
                  <tr>
                    <th>Time</th>
                    <th>Who</th>
                    <th>What</th>
                    <th>Result</th>
                    <th>Key</th>
                  </tr>
                </thead>
                <tbody>
                  {page.records.map((record, i) => (
                    <RecordRow key={record.id ?? i} record={record} />
                  ))}
                </tbody>
              </table>
            </div>
          )}
          <Pager query={query} older={page.olderCursor} newer={page.newerCursor} />
        </section>
      )}
    </AdminFrame>
  );
}

function FilterForm({ query, upstreams }: { query: AuditPageQuery; upstreams: string[] }) {
  const value = (name: keyof FilterValues) => query.filters[name] ?? '';
  // A datetime-local field shows no zone: a time given with "Z" is shown without it (it is UTC either way).
  const time = (name: 'since' | 'until') => value(name).replace(/Z$/, '');
  return (
    <section className="card">
      <form method="get" action="/admin/audit" className="filters" data-testid="audit-filters">
        <div className="field">
          <label htmlFor="f-type">Type</label>
          <select id="f-type" name="type" defaultValue={value('type')}>
            <option value="">Any</option>
            <option value="call">Calls</option>
            <option value="admin">Admin actions</option>
          </select>
        </div>
        <TextFilter id="f-upstream" name="upstream" label="Upstream" value={value('upstream')} list={upstreams} />
        <TextFilter id="f-user" name="userId" label="User" value={value('userId')} placeholder="local:ada" />
        <TextFilter id="f-action" name="action" label="Action" value={value('action')} list={ACTIONS} />
        <TextFilter id="f-outcome" name="outcome" label="Outcome" value={value('outcome')} list={OUTCOMES} />
        <TextFilter id="f-fingerprint" name="fingerprint" label="Key fingerprint" value={value('fingerprint')} placeholder="12 hex digits" />
        <div className="field">
          <label htmlFor="f-since">Since (UTC)</label>
          <input id="f-since" type="datetime-local" step={1} name="since" defaultValue={time('since')} />
        </div>
        <div className="field">
          <label htmlFor="f-until">Until (UTC)</label>
          <input id="f-until" type="datetime-local" step={1} name="until" defaultValue={time('until')} />
        </div>
        <div className="field">
          <label htmlFor="f-limit">Per page</label>
          <select id="f-limit" name="limit" defaultValue={String(query.limit)}>
            {PAGE_SIZES.map((size) => (
              <option key={size} value={size}>
                {size}
              </option>
            ))}
          </select>
        </div>
        <div className="row filter-buttons">
          <Link className="button small-button" href="/admin/audit" prefetch={false}>
            Clear
          </Link>
          <button type="submit" className="primary small-button">
            Apply filters
          </button>
        </div>
      </form>
    </section>
  );
}

function TextFilter({ id, name, label, value, list, placeholder }: { id: string; name: string; label: string; value: string; list?: readonly string[]; placeholder?: string }) {
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      <input id={id} type="text" name={name} defaultValue={value} placeholder={placeholder ?? 'any'} list={list ? `${id}-list` : undefined} autoComplete="off" spellCheck={false} />
      {list && (
        <datalist id={`${id}-list`}>
          {list.map((option) => (
            <option key={option} value={option} />
          ))}
        </datalist>
      )}
    </div>
  );
}

/** The page's URL with the same filters and another cursor. */
function pageHref(query: AuditPageQuery, cursor: { older: string } | { newer: string } | null): string {
  const params = new URLSearchParams();
  for (const name of FILTER_NAMES) {
    const value = query.filters[name];
    if (value !== undefined) params.set(name, value);
  }
  if (query.limit !== PAGE_SIZES[0]) params.set('limit', String(query.limit));
  if (cursor && 'older' in cursor) params.set('older', cursor.older);
  if (cursor && 'newer' in cursor) params.set('newer', cursor.newer);
  const text = params.toString();
  return text ? `/admin/audit?${text}` : '/admin/audit';
}

function Pager({ query, older, newer }: { query: AuditPageQuery; older: string | null; newer: string | null }) {
  if (older === null && newer === null) return null;
  return (
    <nav className="row pager" aria-label="Pages" data-testid="audit-pager">
      <span className="row">
        {newer !== null && (
          <>
            <Link className="button small-button" href={pageHref(query, null)} prefetch={false} data-testid="audit-newest">
              « Newest
            </Link>
            <Link className="button small-button" href={pageHref(query, { newer })} prefetch={false} data-testid="audit-newer">
              ‹ Newer
            </Link>
          </>
        )}
      </span>
      {older !== null && (
        <Link className="button small-button" href={pageHref(query, { older })} prefetch={false} data-testid="audit-older">
          Older ›
        </Link>
      )}
    </nav>
  );
}

function RecordRow({ record }: { record: AuditRecord }) {
  return (
    <tr data-testid="audit-record" data-record-type={record.type}>
      <td className="small nowrap" data-label="Time">
        <span data-testid="audit-time">{utc(record.at, { seconds: true })}</span>
        <div>
          <span className={record.type === 'admin' ? 'badge' : 'badge neutral'}>{record.type}</span>
        </div>
      </td>
      {record.type === 'call' ? <CallCells record={record} /> : <AdminCells record={record} />}
      <td className="nowrap" data-label="Key">{(record.type === 'call' ? record.keyFingerprint : record.fingerprint) ? <code>{record.type === 'call' ? record.keyFingerprint : record.fingerprint}</code> : <span className="muted">–</span>}</td>
    </tr>
  );
}

const OUTCOME_BADGE: Record<string, string> = { complete: 'badge ok', aborted: 'badge warn', refused: 'badge warn', error: 'badge danger', upstream_error: 'badge danger', unavailable: 'badge danger' };

function CallCells({ record }: { record: Extract<AuditRecord, { type: 'call' }> }) {
  return (
    <>
      <td className="wrap-anywhere audit-who" data-label="Who">
        <code>{record.userId ?? 'anonymous'}</code>
        {record.clientIp && <div className="small muted">{record.clientIp}</div>}
      </td>
      <td className="wrap-anywhere wide" data-label="What">
        <code>{record.upstream}</code> {record.method} {record.route ?? <span className="muted">(no route)</span>}
        <details className="record">
          <summary>Record</summary>
          <pre>{JSON.stringify(record, null, 2)}</pre>
        </details>
      </td>
      <td data-label="Result">
        {record.status} <span className={OUTCOME_BADGE[record.outcome] ?? 'badge neutral'}>{record.outcome}</span>
        <div className="small muted">
          {record.errorCode && <code className="nowrap">{record.errorCode}</code>} {Math.round(record.durationMs)} ms
          {record.scrubberHits > 0 && <span className="badge warn"> scrubbed {record.scrubberHits}</span>}
        </div>
      </td>
    </>
  );
}

function AdminCells({ record }: { record: Extract<AuditRecord, { type: 'admin' }> }) {
  return (
    <>
      <td className="wrap-anywhere audit-who" data-label="Who">
        <code>{record.actor}</code>
        {record.targetUser && (
          <div className="small muted">
            → <code>{record.targetUser}</code>
          </div>
        )}
      </td>
      <td className="wrap-anywhere wide" data-label="What">
        {record.action} {record.upstream && <code>{record.upstream}</code>}
        {record.rotationId && <div className="small muted">{record.rotationId}</div>}
        <details className="record">
          <summary>Record</summary>
          <pre>{JSON.stringify(record, null, 2)}</pre>
        </details>
      </td>
      <td data-label="Result">
        <span className={record.outcome === 'canary_failed' ? 'badge danger' : 'badge neutral'}>{record.outcome}</span>
      </td>
    </>
  );
}
