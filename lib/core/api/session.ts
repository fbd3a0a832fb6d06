import { KeywardError } from '../errors';
import type { Runtime } from '../runtime';
import { apiHandler, json, requireRead } from './guard';

/**
 * GET /api/session → 200 {user, roles, expiresAt} or 401; 503 `store_unavailable` when revocation cannot be
 * read (fail closed, never a 500). Never returns a token or key.
 */
export function handleSession(request: Request, runtime: Pick<Runtime, 'verifySession' | 'logger'>): Promise<Response> {
  return apiHandler(runtime, async () => {
    requireRead(request);
    const session = await runtime.verifySession(request);
    if (!session) throw new KeywardError('unauthenticated');
    return json({ user: { id: session.userId, name: session.name }, roles: session.roles, expiresAt: new Date(session.expiresAt).toISOString() });
  });
}
