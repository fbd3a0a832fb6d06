'use client';

import { HomeButton, StatusCard } from './components/status-card';

/**
 * A page that failed while rendering. Words and the digest only: never the error's message or stack, which may
 * name internals (Next.js replaces a server error's message in production; a client error's is the original). The
 * digest is what the server logged the error under, for whoever reads the logs.
 */
export default function ErrorPage({ error, retry }: { error: unknown; retry: () => void }) {
  const digest = error instanceof Error && 'digest' in error && typeof error.digest === 'string' ? error.digest : null;
  return (
    <StatusCard
      status="Error"
      title="Something went wrong"
      testId="page-error"
      actions={
        <div className="stack">
          <button type="button" className="primary block" onClick={() => retry()}>
            Try again
          </button>
          <HomeButton />
        </div>
      }
    >
      <p className="muted">Keyward could not show this page. Try again in a moment; if it keeps failing, tell whoever runs this Keyward.</p>
      {digest && (
        <p className="small muted" data-testid="error-digest">
          Reference: <code>{digest}</code>
        </p>
      )}
    </StatusCard>
  );
}
