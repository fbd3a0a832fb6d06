import Link from 'next/link';
import { AdminFrame, DataUnavailable, GateRefusal, adminGate, adminMetadata } from './admin-frame';
import { loadOverview, toChartData, type Overview, type OverviewPeriod, type TopEntry, type Totals } from './admin-data';
import { UsageCharts } from './usage-charts';
import { keyward } from '@/keyward';
import { Stat } from '../components/stat';

// Per request: the session, and figures that change with every call.
export const dynamic = 'force-dynamic';

export const generateMetadata = () => adminMetadata('Overview');

type SearchParams = Promise<Record<string, string | string[] | undefined>>;

const PERIOD_LABEL: Record<OverviewPeriod, string> = { hour: 'Last 24 hours, by hour', minute: 'Last hour, by minute' };

function one(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

export default async function AdminOverview({ searchParams }: { searchParams: SearchParams }) {
  const gate = await adminGate('/admin');
  if (gate.kind !== 'admin') return <GateRefusal gate={gate} />;

  const params = await searchParams;
  const period: OverviewPeriod = one(params.period) === 'minute' ? 'minute' : 'hour';
  const upstreamIds = keyward.upstreamSummaries().map((u) => u.id);
  // Only a configured id filters; anything else in the query shows every upstream.
  const wanted = one(params.upstream);
  const upstream = wanted !== undefined && upstreamIds.includes(wanted) ? wanted : undefined;

  let overview: Overview | null = null;
  try {
    overview = await loadOverview(period, upstream);
  } catch {
    overview = null;
  }

  const href = (next: { period?: OverviewPeriod; upstream?: string | null }) => {
    const query = new URLSearchParams();
    const p = next.period ?? period;
    const u = next.upstream === undefined ? upstream : next.upstream;
    if (p !== 'hour') query.set('period', p);
    if (u) query.set('upstream', u);
    const text = query.toString();
    return text ? `/admin?${text}` : '/admin';
  };

  return (
    <AdminFrame
      current="/admin"
      title="Usage overview"
      intro={<>Calls through the proxy, from the usage aggregates. {PERIOD_LABEL[period]}, times in UTC.</>}
      actions={
        <div className="segmented" role="group" aria-label="Period" data-testid="period-switch">
          <Link href={href({ period: 'hour' })} prefetch={false} className={period === 'hour' ? 'active' : undefined} aria-current={period === 'hour' ? 'true' : undefined}>
            24 h
          </Link>
          <Link href={href({ period: 'minute' })} prefetch={false} className={period === 'minute' ? 'active' : undefined} aria-current={period === 'minute' ? 'true' : undefined}>
            1 h
          </Link>
        </div>
      }
    >
      <div className="row upstream-filter" data-testid="upstream-filter">
        <span className="small muted">Upstream</span>
        <Link href={href({ upstream: null })} prefetch={false} className={`chip${upstream === undefined ? ' active' : ''}`} aria-current={upstream === undefined ? 'true' : undefined}>
          All
        </Link>
        {upstreamIds.map((id) => (
          <Link key={id} href={href({ upstream: id })} prefetch={false} className={`chip${upstream === id ? ' active' : ''}`} aria-current={upstream === id ? 'true' : undefined}>
            {id}
          </Link>
        ))}
      </div>

      {overview === null ? <DataUnavailable /> : <OverviewBody overview={overview} period={period} />}
    </AdminFrame>
  );
}

function OverviewBody({ overview, period }: { overview: Overview; period: OverviewPeriod }) {
  const { total } = overview;
  const data = toChartData(overview.points, period);
  return (
    <>
      <p className="small muted" data-testid="usage-summary">
        {total.calls} calls · {total.errors} errors ({total.errorRate}%) · p50 {ms(total.p50)} · p95 {ms(total.p95)} · {total.units} budget units
      </p>
      <div className="stats">
        <Stat label="Calls" value={total.calls.toLocaleString('en-US')} testId="stat-calls" />
        <Stat label="Errors" value={total.errors.toLocaleString('en-US')} note={total.calls === 0 ? undefined : `${total.errorRate}% of calls`} testId="stat-errors" />
        <Stat label="Latency p50 / p95" value={`${ms(total.p50)} / ${ms(total.p95)}`} testId="stat-latency" />
        <Stat label="Budget units" value={total.units.toLocaleString('en-US')} testId="stat-units" />
      </div>

      {total.calls === 0 ? (
        <section className="card">
          <div className="empty" data-testid="usage-empty">
            No traffic in this window yet. Calls through <code>/api/proxy/…</code> show up here a moment after they finish.
          </div>
        </section>
      ) : (
        <UsageCharts data={data} />
      )}

      <div className="grid">
        <TopTable title="Top users" column="User" rows={overview.topUsers} testId="top-users" />
        <TopTable
          title="Top keys"
          column="Key fingerprint"
          rows={overview.topKeys}
          testId="top-keys"
          nowrapLabel
          note="Service keys only: calls made with users' own keys or connected accounts count under each user."
        />
      </div>
    </>
  );
}

/** A latency for people: "9.2 ms", "180 ms", "2.24 s", with a no-break space: a line never ends between figure and unit. */
function ms(value: number | null): string {
  if (value === null) return '–';
  if (value >= 1000) return `${(value / 1000).toFixed(2)}\u00a0s`;
  return value < 10 ? `${value.toFixed(1)}\u00a0ms` : `${Math.round(value)}\u00a0ms`;
}

/** `nowrapLabel`: labels of a fixed, short length (fingerprints) stay on one line; others (user ids) wrap anywhere. */
function TopTable({
  title,
  column,
  rows,
  testId,
  nowrapLabel = false,
  note,
}: {
  title: string;
  column: string;
  rows: readonly TopEntry[];
  testId: string;
  nowrapLabel?: boolean;
  note?: string;
}) {
  return (
    <section className="card" data-testid={testId}>
      <div className="card-title">
        <h2>{title}</h2>
        <span className="small muted">by calls</span>
      </div>
      {note && (
        <p className="small muted" data-testid={`${testId}-note`}>
          {note}
        </p>
      )}
      {rows.length === 0 ? (
        <div className="empty">No calls in this window.</div>
      ) : (
        <div className="table-scroll">
          <table className="stack-narrow stack-3">
            <thead>
              <tr>
                <th>{column}</th>
                <th className="num">Calls</th>
                <th className="num">Errors</th>
                <th className="num">p95</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((row) => (
                <tr key={`${row.upstream ?? ''} ${row.label}`}>
                  <td className={nowrapLabel ? 'nowrap wide' : 'wrap-anywhere wide'} data-label={column}>
                    <code>{row.label}</code>
                    {row.upstream && <div className="small muted wrap">{row.upstream}</div>}
                  </td>
                  <td className="num" data-label="Calls">
                    {row.calls}
                  </td>
                  <td className="num" data-label="Errors">
                    {errorsCell(row)}
                  </td>
                  <td className="num" data-label="p95">
                    {ms(row.p95)}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function errorsCell(row: Totals): string {
  return row.errors === 0 ? '0' : `${row.errors} (${row.errorRate}%)`;
}
