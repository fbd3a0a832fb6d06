import { parseCookie } from 'cookie';
import { KeywardError } from '../errors';
import type { Runtime } from '../runtime';
import { USER_ID } from '../session/provider-sessions';
import { SESSION_COOKIE } from '../session/session';
import { endPendingConnects } from './connect';
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
    const response = json({ revoked: true });
    // A cookie session's browser drops its cookie (every chunk Auth.js split it into), which no server accepts now.
    if (session.via !== 'cookie') return response;
    for (const name of sessionCookieNames(request)) response.headers.append('set-cookie', `${name}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict`);
    // A connect this browser started for the user ends with the session (endPendingConnects).
    return endPendingConnects(response, runtime);
  });
}

/** The session cookie's names in the request: `__Host-keyward.session`, or its chunks (`….0`, `….1`) when Auth.js split it. */
function sessionCookieNames(request: Request): string[] {
  return Object.keys(parseCookie(request.headers.get('cookie') ?? '')).filter(
    (name) => name === SESSION_COOKIE || (name.startsWith(`${SESSION_COOKIE}.`) && /^\d+$/.test(name.slice(SESSION_COOKIE.length + 1))),
  );
}
