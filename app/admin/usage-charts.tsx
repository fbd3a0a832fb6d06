'use client';

// Recharts (pinned 3.11.1, React 19 ready): SVG charts written declaratively as React components, the most widely
// used React chart library; its peer react-is is pinned to our React version. Only this small component runs in the
// browser, fed the plain figures the server page computed.
import { Bar, BarChart, CartesianGrid, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis, Legend } from 'recharts';
import { useId, type ReactElement } from 'react';

export interface ChartDatum {
  /** Bucket label (UTC), e.g. "14:00". */
  readonly label: string;
  readonly calls: number;
  readonly errors: number;
  /** Null for a bucket without calls: no rate, rather than 0 %. */
  readonly errorRate: number | null;
  readonly p50: number | null;
  readonly p95: number | null;
  readonly units: number;
}

// The design system's colours (app/globals.css) as CSS variables, so each scheme draws the charts in its own
// colours (the dark scheme's grid lines as faint as its borders). SVG presentation attributes take var().
const ACCENT = 'var(--accent)';
const DANGER = 'var(--danger)';
const OK = 'var(--ok)';
const HEIGHT = 170;
const AXIS = { fontSize: 11, fill: 'var(--muted)' } as const;
const TOOLTIP = {
  contentStyle: { background: 'var(--surface)', border: '1px solid var(--border)', borderRadius: 8, color: 'var(--text)', fontSize: 12 },
  labelStyle: { color: 'var(--text)' },
  cursor: { fill: 'var(--accent-soft)', opacity: 0.6 },
} as const;
// Dots, because most buckets of a quiet window have no calls: a lone bucket with calls is still seen.
const DOT = { r: 2.5 } as const;

/**
 * A chart is an image to assistive technology, named by its title and described by a sentence of what it shows
 * (the figures are also in the summary line above the charts). Recharts' own accessibility layer is off: it made
 * each chart a tab stop with role "application", named by its tick labels, whose tooltip speech never hears.
 */
function ChartCard({ title, summary, testId, children }: { title: string; summary: string; testId: string; children: ReactElement }) {
  const id = useId();
  return (
    <section className="card chart-card" data-testid={testId}>
      <h3>{title}</h3>
      <p id={id} className="sr-only">
        {summary}
      </p>
      {/* A fixed height: the container measures its width only, so the layout never jumps. */}
      <div style={{ height: HEIGHT }} role="img" aria-label={title} aria-describedby={id}>
        <ResponsiveContainer width="100%" height="100%">
          {children}
        </ResponsiveContainer>
      </div>
    </section>
  );
}

type Figure = 'calls' | 'errorRate' | 'p50' | 'p95' | 'units';

/** The bucket with the highest value of `figure` (the first of equals), or null when none has a value above 0. */
function peak(rows: readonly ChartDatum[], figure: Figure): { label: string; value: number } | null {
  let best: { label: string; value: number } | null = null;
  for (const row of rows) {
    const value = row[figure];
    if (value !== null && value > 0 && (best === null || value > best.value)) best = { label: row.label, value };
  }
  return best;
}

/** One sentence per chart: totals and where each peaks. */
export function chartSummaries(rows: readonly ChartDatum[]): Record<'calls' | 'errorRate' | 'latency' | 'units', string> {
  const sum = (figure: 'calls' | 'errors' | 'units') => rows.reduce((total, row) => total + row[figure], 0);
  const calls = peak(rows, 'calls');
  const rate = peak(rows, 'errorRate');
  const p95 = peak(rows, 'p95');
  const p50 = peak(rows, 'p50');
  const units = peak(rows, 'units');
  return {
    calls: `${sum('calls')} calls and ${sum('errors')} errors${calls ? `; most calls at ${calls.label} (${calls.value})` : ''}.`,
    errorRate: rate ? `Highest error rate ${rate.value}% at ${rate.label}.` : 'No errors.',
    latency: p95 && p50 ? `Highest p95 ${Math.round(p95.value)} ms at ${p95.label}; highest p50 ${Math.round(p50.value)} ms at ${p50.label}.` : 'No latency recorded.',
    units: units ? `${sum('units')} budget units; most at ${units.label} (${units.value}).` : 'No budget units used.',
  };
}

export function UsageCharts({ data }: { data: readonly ChartDatum[] }) {
  const rows = [...data];
  const summary = chartSummaries(rows);
  const axes = (unit?: string) => [
    <CartesianGrid key="grid" stroke="var(--border)" vertical={false} />,
    <XAxis key="x" dataKey="label" tick={AXIS} tickLine={false} axisLine={false} minTickGap={24} />,
    <YAxis key="y" tick={AXIS} tickLine={false} axisLine={false} width={44} allowDecimals={false} unit={unit} />,
    <Tooltip key="tip" {...TOOLTIP} />,
  ];
  return (
    <div className="grid chart-grid">
      <ChartCard title="Calls and errors" summary={summary.calls} testId="chart-calls">
        <BarChart data={rows} accessibilityLayer={false}>
          {axes()}
          <Legend iconSize={8} wrapperStyle={{ fontSize: 12 }} />
          <Bar dataKey="calls" name="calls" fill={ACCENT} radius={[3, 3, 0, 0]} isAnimationActive={false} />
          <Bar dataKey="errors" name="errors" fill={DANGER} radius={[3, 3, 0, 0]} isAnimationActive={false} />
        </BarChart>
      </ChartCard>
      <ChartCard title="Error rate (%)" summary={summary.errorRate} testId="chart-error-rate">
        <LineChart data={rows} accessibilityLayer={false}>
          {axes('%')}
          <Line type="linear" dataKey="errorRate" name="error rate" stroke={DANGER} dot={DOT} strokeWidth={2} connectNulls isAnimationActive={false} />
        </LineChart>
      </ChartCard>
      <ChartCard title="Latency p50 / p95 (ms)" summary={summary.latency} testId="chart-latency">
        <LineChart data={rows} accessibilityLayer={false}>
          {axes()}
          <Legend iconSize={8} wrapperStyle={{ fontSize: 12 }} />
          <Line type="linear" dataKey="p50" name="p50" stroke={ACCENT} dot={DOT} strokeWidth={2} connectNulls isAnimationActive={false} />
          <Line type="linear" dataKey="p95" name="p95" stroke={OK} dot={DOT} strokeWidth={2} connectNulls isAnimationActive={false} />
        </LineChart>
      </ChartCard>
      <ChartCard title="Budget units" summary={summary.units} testId="chart-units">
        <BarChart data={rows} accessibilityLayer={false}>
          {axes()}
          <Bar dataKey="units" name="units" fill={OK} radius={[3, 3, 0, 0]} isAnimationActive={false} />
        </BarChart>
      </ChartCard>
    </div>
  );
}
