'use client';

import { createContext, useContext, useRef, useState, type FormEvent, type ReactNode } from 'react';
import { useRouter } from 'next/navigation';

/**
 * The admin pages' buttons that change something (rotate, roll back, revoke, revoke sessions): each opens a
 * confirmation dialog (the native <dialog>, modal: focus is trapped and Escape cancels) that says what will
 * happen, then calls the existing admin API from the browser with the session cookie and `X-Keyward-CSRF: 1`
 * (the browser adds the Origin). The outcome, or the API's own error message, is shown in the card's
 * <ActionMessage>, and the page's data is read again (router.refresh()).
 */

export interface ActionOutcome {
  readonly ok: boolean;
  readonly message: string;
}

type Report = (outcome: ActionOutcome) => void;

const ResultContext = createContext<{ outcome: ActionOutcome | null; report: Report } | null>(null);

/** Holds the last outcome of the actions inside it, so it outlives a button that the refreshed page removes. */
export function ActionResults({ children }: { children: ReactNode }) {
  const [outcome, setOutcome] = useState<ActionOutcome | null>(null);
  return <ResultContext.Provider value={{ outcome, report: setOutcome }}>{children}</ResultContext.Provider>;
}

/** Where the outcome of the last action inside the same <ActionResults> is shown. */
export function ActionMessage({ testId }: { testId: string }) {
  const outcome = useContext(ResultContext)?.outcome;
  if (!outcome) return null;
  return (
    <div className={`alert ${outcome.ok ? 'ok' : 'error'}`} role="status" data-testid={testId}>
      {outcome.message}
    </div>
  );
}

export interface ActionDialogProps {
  /** The button that opens the dialog. */
  readonly label: string;
  /**
   * The button's accessible name when its label alone is ambiguous (one "Revoke…" per row): what it acts on,
   * starting with the label's word, so speech input still finds it by what it shows (WCAG 2.5.3).
   */
  readonly name?: string;
  readonly danger?: boolean;
  readonly testId: string;
  readonly title: string;
  /** What will happen, in words. */
  readonly children: ReactNode;
  /** Inputs sent with the action (read from the form at submit, never kept in state). */
  readonly fields?: ReactNode;
  readonly confirmLabel: string;
  /** Runs the action with the form's fields; the form is cleared before it is called. */
  readonly submit: (data: FormData) => Promise<ActionOutcome>;
}

export function ActionDialog({ label, name, danger, testId, title, children, fields, confirmLabel, submit }: ActionDialogProps) {
  const dialog = useRef<HTMLDialogElement>(null);
  const form = useRef<HTMLFormElement>(null);
  const [busy, setBusy] = useState(false);
  const report = useContext(ResultContext)?.report;
  const router = useRouter();

  function close() {
    // Whatever was typed (a new key) leaves the page with the dialog.
    form.current?.reset();
    dialog.current?.close();
  }

  async function onSubmit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    const data = new FormData(event.currentTarget);
    event.currentTarget.reset();
    setBusy(true);
    let outcome: ActionOutcome;
    try {
      outcome = await submit(data);
    } catch {
      outcome = { ok: false, message: 'Keyward could not be reached. Nothing was changed by this page; reload to check.' };
    } finally {
      setBusy(false);
    }
    dialog.current?.close();
    report?.(outcome);
    router.refresh();
  }

  return (
    <>
      <button type="button" className={danger ? 'danger small-button' : 'small-button'} aria-label={name} data-testid={testId} onClick={() => dialog.current?.showModal()}>
        {label}
      </button>
      <dialog ref={dialog} className="confirm-dialog" aria-labelledby={`${testId}-title`} data-testid={`${testId}-dialog`} onCancel={() => form.current?.reset()}>
        <form ref={form} onSubmit={onSubmit} autoComplete="off">
          <h2 id={`${testId}-title`}>{title}</h2>
          <div className="confirm-body">{children}</div>
          {fields}
          <div className="row confirm-buttons">
            <button type="button" onClick={close} disabled={busy}>
              Cancel
            </button>
            <button type="submit" className={danger ? 'danger-solid' : 'primary'} disabled={busy}>
              {busy ? 'Working…' : confirmLabel}
            </button>
          </div>
        </form>
      </dialog>
    </>
  );
}

/** POSTs JSON to an admin API route as the dashboard's user: cookie session, CSRF header, same origin. */
export async function postAdmin(path: string, body: unknown): Promise<{ status: number; json: unknown }> {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'x-keyward-csrf': '1', 'content-type': 'application/json' },
    body: JSON.stringify(body),
    cache: 'no-store',
  });
  let json: unknown = null;
  try {
    json = await response.json();
  } catch {
    json = null;
  }
  return { status: response.status, json };
}

/** The API's own error message (`{"error":{"message"}}`), else the status. */
export function apiError(status: number, json: unknown): string {
  const message = (json as { error?: { message?: unknown } } | null)?.error?.message;
  return typeof message === 'string' ? message : `Refused (HTTP ${status}).`;
}
