/** The list pages' loading state (users, audit): the frame's shape in skeletons (app/globals.css `.skeleton`). */
export function TableLoading({ rows = 8 }: { rows?: number }) {
  return (
    <main className="page" aria-busy="true" aria-label="Loading">
      <div className="skeleton" style={{ width: '18rem', height: '1.2rem', marginBottom: 'var(--space-6)' }} />
      <div className="page-header">
        <div className="skeleton" style={{ width: '12rem', height: '1.6rem', marginBottom: 'var(--space-3)' }} />
        <div className="skeleton" style={{ width: '28rem', maxWidth: '100%' }} />
      </div>
      <section className="card stack">
        {Array.from({ length: rows }, (_, i) => (
          <div key={i} className="skeleton" style={{ width: `${92 - (i % 3) * 9}%` }} />
        ))}
      </section>
    </main>
  );
}
