import Link from 'next/link';
import type { ReactNode } from 'react';

/**
 * A page that stands in for the one asked for (403, 404, an error): a narrow card with the status, what happened
 * in words, and a way on (home, unless `actions` says otherwise).
 */
export function StatusCard({ status, title, testId, actions, children }: { status: string; title: string; testId: string; actions?: ReactNode; children: ReactNode }) {
  return (
    <main className="page-narrow">
      <div className="card" data-testid={testId}>
        <p className="small muted">{status}</p>
        <h1>{title}</h1>
        {children}
        {actions ?? <HomeButton />}
      </div>
    </main>
  );
}

export function HomeButton() {
  return (
    <Link className="button block" href="/" prefetch={false}>
      Back home
    </Link>
  );
}
