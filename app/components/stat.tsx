/** One figure card (the dashboard's and "My usage"'s summary row): a label, the value, an optional note. */
export function Stat({ label, value, note, testId }: { label: string; value: string; note?: string; testId: string }) {
  return (
    <div className="card stat">
      <div className="stat-label">{label}</div>
      <div className="stat-value" data-testid={testId}>
        {value}
      </div>
      {note && <div className="small muted">{note}</div>}
    </div>
  );
}
