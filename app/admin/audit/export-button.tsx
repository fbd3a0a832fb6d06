'use client';

import { useState } from 'react';

/**
 * Export: GET /api/admin/audit?format=jsonl with the page's filters (every match, oldest first, JSON Lines). The
 * admin API wants `X-Keyward-CSRF: 1` on every cookie-session call, which a plain link cannot send, so the file
 * is fetched with the header and handed to the browser as a download.
 */
export function ExportButton({ href }: { href: string }) {
  const [state, setState] = useState<{ busy: boolean; message: string | null; error: boolean }>({ busy: false, message: null, error: false });

  async function download() {
    setState({ busy: true, message: null, error: false });
    try {
      const response = await fetch(href, { headers: { 'x-keyward-csrf': '1' }, cache: 'no-store' });
      if (!response.ok) {
        const body = (await response.json().catch(() => null)) as { error?: { message?: unknown } } | null;
        const message = typeof body?.error?.message === 'string' ? body.error.message : `Refused (HTTP ${response.status}).`;
        setState({ busy: false, message: `Not exported: ${message}`, error: true });
        return;
      }
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const link = document.createElement('a');
      link.href = url;
      link.download = 'keyward-audit.jsonl';
      document.body.append(link);
      link.click();
      link.remove();
      // The browser has started the download; the in-memory copy can go.
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      setState({ busy: false, message: null, error: false });
    } catch {
      setState({ busy: false, message: 'Not exported: Keyward could not be reached.', error: true });
    }
  }

  return (
    <div className="stack" style={{ alignItems: 'flex-end', gap: 'var(--space-1)' }}>
      <button type="button" className="small-button" onClick={download} disabled={state.busy} data-testid="audit-export">
        {state.busy ? 'Exporting…' : 'Export all matches (JSONL)'}
      </button>
      {state.message && (
        <div className={`alert ${state.error ? 'error' : 'ok'}`} role="status" data-testid="audit-export-result">
          {state.message}
        </div>
      )}
    </div>
  );
}
