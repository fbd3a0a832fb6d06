'use client';

// Recharts (pinned 3.11.1, React 19 ready): SVG charts written declaratively as React components, the most widely
// used React chart library; its peer react-is is pinned to our React version. Only this small component runs in the
// browser, fed the plain figures the server page computed.
import { Bar, BarChart, CartesianGrid, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis, Legend } from 'recharts';
import type { ReactElement } from 'react';

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

// The design system's colours (app/globals.css): accent, danger, ok, muted.
const ACCENT = '#2f55d4';
const DANGER = '#c0362c';
const OK = '#1d7a46';
const MUTED = '#5b6472';
const HEIGHT = 170;
const AXIS = { fontSize: 11, fill: MUTED } as const;
// Dots, because most buckets of a quiet window have no calls: a lone bucket with calls is still seen.
const DOT = { r: 2.5 } as const;

function ChartCard({ title, testId, children }: { title: string; testId: string; children: ReactElement }) {
  return (
    <section className="card chart-card" data-testid={testId}>
      <h3>{title}</h3>
      {/* A fixed height: the container measures its width only, so the layout never jumps. */}
      <div style={{ height: HEIGHT }}>
        <ResponsiveContainer width="100%" height="100%">
          {children}
        </ResponsiveContainer>
      </div>
    </section>
  );
}

export function UsageCharts({ data }: { data: readonly ChartDatum[] }) {
  const rows = [...data];
  const axes = (unit?: string) => [
    <CartesianGrid key="grid" stroke="#e3e6eb" vertical={false} />,
    <XAxis key="x" dataKey="label" tick={AXIS} tickLine={false} axisLine={false} minTickGap={24} />,
    <YAxis key="y" tick={AXIS} tickLine={false} axisLine={false} width={44} allowDecimals={false} unit={unit} />,
    <Tooltip key="tip" cursor={{ fill: 'rgba(47, 85, 212, 0.06)' }} />,
  ];
  return (
    <div className="grid chart-grid">
      <ChartCard title="Calls and errors" testId="chart-calls">
        <BarChart data={rows}>
          {axes()}
          <Legend iconSize={8} wrapperStyle={{ fontSize: 12 }} />
          <Bar dataKey="calls" name="calls" fill={ACCENT} radius={[3, 3, 0, 0]} isAnimationActive={false} />
          <Bar dataKey="errors" name="errors" fill={DANGER} radius={[3, 3, 0, 0]} isAnimationActive={false} />
        </BarChart>
      </ChartCard>
      <ChartCard title="Error rate (%)" testId="chart-error-rate">
        <LineChart data={rows}>
          {axes('%')}
          <Line type="linear" dataKey="errorRate" name="error rate" stroke={DANGER} dot={DOT} strokeWidth={2} connectNulls isAnimationActive={false} />
        </LineChart>
      </ChartCard>
      <ChartCard title="Latency p50 / p95 (ms)" testId="chart-latency">
        <LineChart data={rows}>
          {axes()}
          <Legend iconSize={8} wrapperStyle={{ fontSize: 12 }} />
          <Line type="linear" dataKey="p50" name="p50" stroke={ACCENT} dot={DOT} strokeWidth={2} connectNulls isAnimationActive={false} />
          <Line type="linear" dataKey="p95" name="p95" stroke={OK} dot={DOT} strokeWidth={2} connectNulls isAnimationActive={false} />
        </LineChart>
      </ChartCard>
      <ChartCard title="Budget units" testId="chart-units">
        <BarChart data={rows}>
          {axes()}
          <Bar dataKey="units" name="units" fill={OK} radius={[3, 3, 0, 0]} isAnimationActive={false} />
        </BarChart>
      </ChartCard>
    </div>
  );
}
