'use client';

import { ActionDialog, apiError, postAdmin, type ActionOutcome } from '../action-dialog';
import { utc } from '@/lib/core/time';

/**
 * The Keys page's actions, through the existing admin API (README "Key lifecycle"):
 *   POST /api/admin/keys/<upstream>/rotate {"key","skipCanary"?}  POST /api/admin/keys/<upstream>/rollback {"rotationId"}
 *   POST /api/admin/keys/revoke {"fingerprint"}
 * Answers name versions by fingerprint only. The new key is read from the password field when the form is sent
 * and the field is cleared at once: it is never put in React state, shown again or logged.
 */

interface RotationAnswer {
  readonly rotation?: { id: string; state: string; from: string[]; to: string; canaryStatus: number | null; at: number; repeated?: boolean };
}

function keysPath(upstream: string, action: 'rotate' | 'rollback'): string {
  return `/api/admin/keys/${encodeURIComponent(upstream)}/${action}`;
}

function duration(seconds: number): string {
  if (seconds % 3600 === 0) return `${seconds / 3600} hour${seconds === 3600 ? '' : 's'}`;
  if (seconds % 60 === 0) return `${seconds / 60} minute${seconds === 60 ? '' : 's'}`;
  return `${seconds} seconds`;
}

export function RotateAction({ upstream, canary, graceSeconds, serving }: { upstream: string; canary: string | null; graceSeconds: number; serving: string | null }) {
  async function rotate(data: FormData): Promise<ActionOutcome> {
    const key = data.get('key');
    if (typeof key !== 'string' || key === '') return { ok: false, message: 'Nothing was rotated: the new key was empty.' };
    const skipCanary = canary === null || data.get('skipCanary') === 'on';
    const { status, json } = await postAdmin(keysPath(upstream, 'rotate'), { key, skipCanary });
    const rotation = (json as RotationAnswer | null)?.rotation;
    if (status === 200 && rotation?.repeated) {
      // The default rotation id is the key's: this key was rotated to before, and that rotation is answered again.
      const when = utc(rotation.at);
      const again = 'rotate with another rotation id (rotationId in the API, --id on the CLI)';
      return {
        ok: false,
        message:
          rotation.state === 'rolled_back'
            ? `Nothing changed: this key (${rotation.to}) was rotated to before and rolled back (${rotation.id}, ${when}); each rotation happens once. To switch to it again, ${again}.`
            : `Nothing changed: this key (${rotation.to}) was rotated to before (${rotation.id}, ${when}); each rotation happens once. If another key serves now, roll back the rotation after it, or ${again}.`,
      };
    }
    if (status === 200 && rotation) {
      const from = rotation.from.length > 0 ? ` ${rotation.from.join(', ')} stays usable as a fallback for ${duration(graceSeconds)}.` : '';
      return { ok: true, message: `Rotated ${upstream}: ${rotation.to} serves every call now.${from}` };
    }
    if (status === 409 && rotation) {
      const answered = rotation.canaryStatus === 0 ? 'could not reach the upstream' : `was answered ${rotation.canaryStatus}`;
      return { ok: false, message: `Not rotated: the canary call with the new key (${rotation.to}) ${answered}. Traffic stays on the current key.` };
    }
    return { ok: false, message: `Not rotated: ${apiError(status, json)}` };
  }

  return (
    <ActionDialog
      label="Rotate…"
      name={`Rotate the ${upstream} key…`}
      testId={`rotate-${upstream}`}
      title={`Rotate the ${upstream} key`}
      confirmLabel="Rotate"
      submit={rotate}
      fields={
        <>
          <div className="field">
            <label htmlFor={`rotate-${upstream}-key`}>New key</label>
            <input id={`rotate-${upstream}-key`} name="key" type="password" autoComplete="off" spellCheck={false} required />
          </div>
          {canary !== null && (
            <label className="checkbox">
              <input type="checkbox" name="skipCanary" /> Skip the canary: switch without testing it first
            </label>
          )}
        </>
      }
    >
      <p>
        Keyward adds the new key as a version of <code>{upstream}</code>
        {canary !== null ? (
          <>
            , sends the canary call <code>{canary}</code> with it, and switches every call to it only if the canary answers 2xx.
          </>
        ) : (
          <> and switches every call to it at once (this upstream declares no canary call to test it with).</>
        )}
      </p>
      <p className="small muted">
        {serving ? (
          <>
            The version serving now, <code>{serving}</code>, stays usable as a fallback for {duration(graceSeconds)}.
          </>
        ) : (
          <>No version serves right now.</>
        )}{' '}
        The key is sealed in the store and never shown again: only its fingerprint.
      </p>
    </ActionDialog>
  );
}

export function RollbackAction({ upstream, rotation }: { upstream: string; rotation: { id: string; from: readonly string[]; to: string; at: string; actor: string } }) {
  async function rollback(): Promise<ActionOutcome> {
    const { status, json } = await postAdmin(keysPath(upstream, 'rollback'), { rotationId: rotation.id });
    if (status === 200) return { ok: true, message: `Rolled back ${rotation.id}: ${rotation.from.join(', ')} serves again; ${rotation.to} is retired.` };
    return { ok: false, message: `Not rolled back: ${apiError(status, json)}` };
  }

  return (
    <ActionDialog label="Roll back…" name={`Roll back the last ${upstream} rotation…`} testId={`rollback-${upstream}`} title={`Roll back the last ${upstream} rotation`} confirmLabel="Roll back" submit={rollback}>
      <p>
        Undoes rotation <code>{rotation.id}</code> ({rotation.at}, by <code>{rotation.actor}</code>): {rotation.from.map((print, i) => (
          <span key={print}>
            {i > 0 && ', '}
            <code>{print}</code>
          </span>
        ))}{' '}
        {rotation.from.length === 1 ? 'serves' : 'serve'} again (unless revoked or expired since), and <code>{rotation.to}</code> is retired at once, with no grace
        window.
      </p>
    </ActionDialog>
  );
}

export function RevokeAction({ upstream, fingerprint, serving }: { upstream: string; fingerprint: string; serving: boolean }) {
  async function revoke(): Promise<ActionOutcome> {
    const { status, json } = await postAdmin('/api/admin/keys/revoke', { fingerprint });
    if (status === 200) return { ok: true, message: `Revoked ${fingerprint}: no instance uses it from its next request on.` };
    return { ok: false, message: `Not revoked: ${apiError(status, json)}` };
  }

  return (
    <ActionDialog label="Revoke…" name={`Revoke ${upstream} key version ${fingerprint}…`} danger testId={`revoke-${fingerprint}`} title={`Revoke key version ${fingerprint}`} confirmLabel="Revoke" submit={revoke}>
      <p>
        Every instance stops using version <code>{fingerprint}</code> of <code>{upstream}</code> on its next request (and any other upstream&apos;s version with
        this fingerprint). This cannot be undone: a revoked key can never be added again.
      </p>
      {serving && (
        <p className="alert error">
          It is serving now: calls move to the next usable version (a replaced one still in its grace window), or fail with 503 <code>credential_unavailable</code>{' '}
          if there is none.
        </p>
      )}
    </ActionDialog>
  );
}
