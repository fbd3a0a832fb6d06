import type { Alert } from '../detect/alerts';
import { KeywardError } from '../errors';
import type { Runtime } from '../runtime';
import { requireAdmin } from './admin';
import { apiHandler, json, requireRead } from './guard';

/**
 * GET /api/admin/alerts: what the anomaly detector did, newest first (`limit` ≤ 200, `cursor` for the next page).
 * Alerts name users, upstreams and key fingerprints; never a session id, a key or a decoy's value.
 */
export function handleAlerts(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    requireRead(request);
    await requireAdmin(request, runtime);
    const params = new URL(request.url).searchParams;
    for (const name of params.keys()) {
      if (name !== 'limit' && name !== 'cursor') throw new KeywardError('bad_request', { message: 'Only limit and cursor are accepted.' });
      // Which copy would win is not for a server to guess (the audit and usage APIs refuse them too).
      if (params.getAll(name).length > 1) throw new KeywardError('bad_request', { message: `${name} is given more than once.` });
    }
    const limit = params.has('limit') ? Number(params.get('limit')) : 50;
    if (!Number.isInteger(limit) || limit < 1 || limit > 200) throw new KeywardError('bad_request', { message: 'limit is 1 to 200.' });
    const cursor = params.get('cursor') ?? undefined;
    // A cursor the store could not have made would be read as none, and the pages would start over unnoticed.
    if (cursor !== undefined && !runtime.alerts.isCursor(cursor)) throw new KeywardError('bad_request', { message: 'cursor is not valid: pass back the one a page gave.' });
    return json(await runtime.alerts.list({ limit, cursor }));
  });
}

/**
 * POST /api/admin/alerts/<id>/undo: lifts what the alert's action set (a throttle, ended sessions, a
 * revocation and suspension). Idempotent; audited as `detector.undo` with the admin as actor. An alert about the
 * admin themselves is refused 403: another admin (or the CLI, `keyward alerts undo`) must undo it.
 */
export function handleAlertUndo(request: Request, alertId: string, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (request.method !== 'POST') throw new KeywardError('method_not_allowed', { headers: { allow: 'POST' } });
    const session = await requireAdmin(request, runtime);
    const { alert } = await undoAlert(runtime, alertId, session.userId, { notBySubject: true });
    return json({ alert });
  });
}

/**
 * An alert's undo, for the admin API and the CLI alike (`keyward alerts undo`): `Alerts.undo` (the alert marked
 * undone, what its step set lifted, every instance's detector told through the store, `detector.undo` on the audit
 * trail with `actor`), and this instance's detector told at once. `notBySubject`: the API's refusal of an alert
 * about the admin themselves; the CLI, run with the server's settings and store, may undo any alert. `repeated`:
 * the alert was undone already, and this call changed nothing.
 */
export async function undoAlert(
  runtime: Pick<Runtime, 'alerts' | 'detector'>,
  alertId: string,
  actor: string,
  options: { readonly notBySubject: boolean },
): Promise<{ alert: Alert; repeated: boolean }> {
  let repeated = true;
  // The detector forgets the user's state only for an undo this call did: undoing an alert undone already must not
  // reset it in the middle of a new anomaly.
  const alert = await runtime.alerts.undo(
    alertId,
    actor,
    (undone) => {
      repeated = false;
      runtime.detector.forget(undone);
    },
    options,
  );
  return { alert, repeated };
}
