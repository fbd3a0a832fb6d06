/** While the admin pages read the aggregates: the frame's shape, in skeletons (app/globals.css `.skeleton`). */
export default function AdminLoading() {
  return (
    <main className="page" aria-busy="true" aria-label="Loading">
      <div className="page-header">
        <div className="skeleton" style={{ width: '14rem', height: '1.6rem', marginBottom: 'var(--space-3)' }} />
        <div className="skeleton" style={{ width: '24rem', maxWidth: '100%' }} />
      </div>
      <div className="stats">
        {[0, 1, 2, 3].map((i) => (
          <div key={i} className="card stat">
            <div className="skeleton" style={{ width: '50%', marginBottom: 'var(--space-2)' }} />
            <div className="skeleton" style={{ width: '70%', height: '1.4rem' }} />
          </div>
        ))}
      </div>
      <section className="card">
        <div className="skeleton" style={{ height: '10rem' }} />
      </section>
    </main>
  );
}
