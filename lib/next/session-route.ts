import 'server-only';
import { handleSession } from '@/lib/core/api/session';
import { runtimeOrUnavailable } from './proxy-route';

/** GET /api/session → 200 {user, roles, expiresAt}, 401, or 503 when the store is down. Never a token or key. */
export async function sessionRoute(request: Request): Promise<Response> {
  const runtime = runtimeOrUnavailable();
  if (runtime instanceof Response) return runtime;
  return handleSession(request, runtime);
}
