'use client';

import type { AlertAction } from '@/lib/core/detect/alerts';
import { ActionDialog, apiError, postAdmin, type ActionOutcome } from '../action-dialog';

/**
 * An alert's Undo button: POST /api/admin/alerts/<id>/undo (README "Anomaly detection"), behind a confirmation
 * that says what the undo lifts. The API answers with the alert as it now is; the page is read again after.
 */

interface UndoProps {
  readonly id: string;
  readonly action: AlertAction;
  readonly userId: string | null;
  /** A throttle's own end, "2026-05-01 10:15 UTC" (it lifts by itself then). */
  readonly expires: string | null;
  /** The throttle already lifted by itself. */
  readonly expired: boolean;
}

/** What undoing each step puts back, in words. */
function lifts({ action, userId, expires, expired }: UndoProps): string {
  const who = userId ?? 'the user';
  switch (action) {
    case 'throttle':
      if (expired) return `The throttle on ${who} already lifted by itself${expires ? ` at ${expires}` : ''}: undoing it marks it undone.`;
      return `Lifts the throttle on ${who} at once: their calls are counted against the configured limits only${expires ? ` (it would lift by itself at ${expires})` : ''}.`;
    case 'reauth':
      return `The sessions this step ended work again, so ${who} does not have to sign in again (a session signed out since stays signed out).`;
    case 'revoke':
      return `Every session this step revoked works again and ${who}'s own keys are no longer suspended: both are back as they were before the step (an earlier sign-out stays).`;
    case 'alert':
      return 'This alert took no action, so nothing is lifted: dismissing it marks it undone.';
  }
}

/** What was lifted, once the API said so. */
function lifted({ action, userId, expired }: UndoProps): string {
  const who = userId ?? 'the user';
  switch (action) {
    case 'throttle':
      if (expired) return `The throttle on ${who} is marked undone.`;
      return `The throttle on ${who} is lifted.`;
    case 'reauth':
      return `The sessions of ${who} that this step ended work again.`;
    case 'revoke':
      return `The sessions and own keys of ${who} are back as they were before the step.`;
    case 'alert':
      return 'The alert is dismissed.';
  }
}

export function UndoAlert(props: UndoProps) {
  const { id, action, userId } = props;
  const dismiss = action === 'alert';

  async function undo(): Promise<ActionOutcome> {
    const { status, json } = await postAdmin(`/api/admin/alerts/${encodeURIComponent(id)}/undo`, {});
    if (status === 200) return { ok: true, message: lifted(props) };
    return { ok: false, message: `Not undone: ${apiError(status, json)}` };
  }

  // One "Undo…" per row: the accessible name says which step, of whom (WCAG 2.5.3: it starts with the label's word).
  const step = action === 'revoke' ? 'revocation' : action === 'reauth' ? 're-authentication' : 'throttle';
  const subject = userId ?? 'the user';
  return (
    <ActionDialog
      label={dismiss ? 'Dismiss…' : 'Undo…'}
      name={dismiss ? `Dismiss the alert about ${subject}…` : `Undo the ${step} of ${subject}…`}
      testId={`undo-${id}`}
      title={dismiss ? 'Dismiss this alert' : `Undo the ${step}`}
      confirmLabel={dismiss ? 'Dismiss' : 'Undo'}
      submit={undo}
    >
      <p>{lifts(props)}</p>
      {dismiss ? (
        <p className="small muted">The dismissal is recorded in the audit trail with you as the actor.</p>
      ) : (
        userId !== null && (
          <p className="small muted">
            The detector then takes what <code>{userId}</code> did as normal for them: it starts over from the first step, with their current rates as
            the baselines. The undo is recorded in the audit trail with you as the actor.
          </p>
        )
      )}
    </ActionDialog>
  );
}
