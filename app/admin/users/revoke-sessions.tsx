'use client';

import { ActionDialog, apiError, postAdmin, type ActionOutcome } from '../action-dialog';

/** "Revoke sessions": POST /api/admin/users/<userId>/revoke-sessions (every session and mobile token of the user). */
export function RevokeSessionsAction({ userId, active }: { userId: string; active: number }) {
  async function revoke(): Promise<ActionOutcome> {
    const { status, json } = await postAdmin(`/api/admin/users/${encodeURIComponent(userId)}/revoke-sessions`, {});
    if (status === 200) return { ok: true, message: `Every session of ${userId} is revoked: their next call is refused until they sign in again.` };
    return { ok: false, message: `Not revoked: ${apiError(status, json)}` };
  }

  return (
    <ActionDialog label="Revoke sessions…" danger testId="revoke-sessions" title={`Revoke every session of ${userId}`} confirmLabel="Revoke sessions" submit={revoke}>
      <p>
        Every browser session and mobile token of <code>{userId}</code> signed in until now is refused from its next request, on every instance
        {active > 0 ? ` (${active} active in the index)` : ''}. They can sign in again; to keep them out, remove them from the users file or the identity
        provider.
      </p>
    </ActionDialog>
  );
}
