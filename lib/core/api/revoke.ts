import { KeywardError } from '../errors';
import type { Runtime } from '../runtime';
import { USER_ID } from '../session/provider-sessions';
import { apiHandler, json, requireSession } from './guard';

/** POST /api/session/revoke-all: "sign out everywhere": every session and mobile token of the caller. */
export function handleRevokeAll(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (request.method !== 'POST') throw new KeywardError('method_not_allowed', { headers: { allow: 'POST' } });
    const session = await requireSession(request, runtime);
    await runtime.revocations.revokeUser(session.userId);
    runtime.logger.info({ userId: session.userId, sessionId: session.sessionId }, 'all sessions revoked by user');
    return json({ revoked: true });
  });
}

/** POST /api/admin/users/<userId>/revoke-sessions: an admin ends every session of a user. */
export function handleAdminRevoke(request: Request, userId: string, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (request.method !== 'POST') throw new KeywardError('method_not_allowed', { headers: { allow: 'POST' } });
    const session = await requireSession(request, runtime);
    if (!session.roles.includes('admin')) throw new KeywardError('forbidden');
    if (!USER_ID.test(userId)) throw new KeywardError('bad_request', { message: 'Not a user id.' });
    await runtime.revocations.revokeUser(userId);
    runtime.logger.info({ userId, by: session.userId }, 'all sessions revoked by admin');
    await runtime.audit.recordAdmin({ action: 'sessions.revoke', actor: session.userId, targetUser: userId, outcome: 'revoked' });
    return json({ revoked: true, userId });
  });
}

/** POST /api/session/logout: ends the caller's current session (cookie or bearer) on the server. */
export function handleLogout(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (request.method !== 'POST') throw new KeywardError('method_not_allowed', { headers: { allow: 'POST' } });
    const session = await requireSession(request, runtime);
    await runtime.revocations.revokeSession(session.sessionId);
    return json({ revoked: true });
  });
}
