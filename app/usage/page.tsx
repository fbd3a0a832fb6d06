import type { Metadata } from 'next';
import Link from 'next/link';
import { redirect } from 'next/navigation';
import { UsageCharts } from '../admin/usage-charts';
import { loadMyUsage, type MyUsage, type UpstreamUsage } from './usage-data';
import { toChartData } from '../admin/admin-data';
import { keyward } from '@/keyward';
import { Stat } from '../components/stat';
import { OwnKeyTable } from '../components/own-key-list';

// Per request: the session, and figures that change with every call.
export const dynamic = 'force-dynamic';

export const metadata: Metadata = { title: 'My usage' };

/** /usage: the signed-in user's own calls and keys, and the limits configured for them. Nobody else's. */
export default async function MyUsagePage() {
  const state = await keyward.pageSession();
  if (state.state === 'signed-out') redirect(`/signin?callbackUrl=${encodeURIComponent('/usage')}`);
  let usage: MyUsage | null = null;
  if (state.state === 'signed-in') {
    try {
      usage = await loadMyUsage(state.session);
    } catch {
      usage = null;
    }
  }
  return (
    <main className="page">
      <nav className="admin-nav" aria-label="My account">
        <Link href="/usage" prefetch={false} className="active" aria-current="page">
          My usage
        </Link>
        <Link href="/" prefetch={false} className="admin-nav-home">
          ← Home
        </Link>
      </nav>
      <div className="page-header">
        <h1>My usage</h1>
        <p>Your own calls through the proxy, from the usage aggregates. Last 24 hours, by hour, times in UTC.</p>
      </div>
      {usage === null ? (
        <section className="card">
          <div className="alert error" data-testid="usage-unavailable">
            Keyward cannot read your usage or keys right now (the store is unavailable). Try again in a moment.
          </div>
        </section>
      ) : (
        <UsageBody usage={usage} />
      )}
    </main>
  );
}

function UsageBody({ usage }: { usage: MyUsage }) {
  const { total } = usage;
  const data = toChartData(usage.points, 'hour');
  return (
    <>
      <div className="stats">
        <Stat label="Calls" value={total.calls.toLocaleString('en-US')} testId="stat-calls" />
        <Stat label="Errors" value={total.errors.toLocaleString('en-US')} note={total.calls === 0 ? undefined : `${total.errorRate}% of calls`} testId="stat-errors" />
        <Stat label="Budget units" value={total.units.toLocaleString('en-US')} testId="stat-units" />
      </div>
      {total.calls === 0 ? (
        <section className="card">
          <div className="empty" data-testid="usage-empty">
            You have made no calls in the last 24 hours. Calls through <code>/api/proxy/…</code> show up here a moment after they finish.
          </div>
        </section>
      ) : (
        <UsageCharts data={data} />
      )}
      <section className="card" data-testid="per-upstream">
        <div className="card-title">
          <h2>By upstream</h2>
          <span className="small muted">last 24 h, with the limits that apply to you</span>
        </div>
        <div className="table-scroll">
          <table>
            <thead>
              <tr>
                <th>Upstream</th>
                <th className="num">Calls</th>
                <th className="num">Errors</th>
                <th className="num">Budget units</th>
                <th>Limits configured</th>
              </tr>
            </thead>
            <tbody>
              {usage.upstreams.map((row) => (
                <UpstreamRow key={row.upstream} row={row} />
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section className="card" data-testid="my-keys">
        <div className="card-title">
          <h2>Your keys</h2>
        </div>
        {usage.ownKeys.length === 0 ? (
          <div className="empty">No API here takes a key of your own: Keyward uses the keys the server holds.</div>
        ) : (
          <OwnKeyTable keys={usage.ownKeys} testIdPrefix="my-key" />
        )}
        <p className="small muted">Store, replace or delete a key on the home page.</p>
      </section>
    </>
  );
}

function UpstreamRow({ row }: { row: UpstreamUsage }) {
  return (
    <tr data-testid={`upstream-${row.upstream}`}>
      <td>
        <code>{row.upstream}</code>
      </td>
      <td className="num" data-testid="upstream-calls">
        {row.calls}
      </td>
      <td className="num">{row.errors === 0 ? '0' : `${row.errors} (${row.errorRate}%)`}</td>
      <td className="num">{row.units}</td>
      <td data-testid="upstream-limits">
        {row.limits.length === 0 ? (
          <span className="small muted">none</span>
        ) : (
          <ul className="small" style={{ margin: 0, paddingLeft: '1rem' }}>
            {row.limits.map((limit) => (
              <li key={`${limit.route ?? '*'} ${limit.name}`}>
                {limit.kind}: {limit.value}, per {limit.by}
                {limit.route && <span className="muted"> ({limit.route})</span>}
              </li>
            ))}
          </ul>
        )}
      </td>
    </tr>
  );
}
