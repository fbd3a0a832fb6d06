import 'server-only';
import { KeywardError, errorResponse } from '@/lib/core/errors';
import { runtimeOrUnavailable } from './proxy-route';

/** GET /api/session → 200 {user, roles, expiresAt} or 401. Never returns a token or key. */
export async function sessionRoute(request: Request): Promise<Response> {
  const runtime = runtimeOrUnavailable();
  if (runtime instanceof Response) return runtime;
  const session = await runtime.verifySession(request);
  if (!session) return errorResponse(new KeywardError('unauthenticated'), crypto.randomUUID());
  return Response.json(
    { user: { id: session.userId, name: session.name }, roles: session.roles, expiresAt: new Date(session.expiresAt).toISOString() },
    { headers: { 'cache-control': 'private, no-store' } },
  );
}
