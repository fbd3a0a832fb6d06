import 'server-only';
import { handleSession } from '@/lib/core/api/session';
import { runtimeOrUnavailable, type RuntimeSource } from './proxy-route';

/** GET /api/session → 200 {user, roles, expiresAt}, 401, or 503 when the store is down. Never a token or key. */
export function createSessionRoute(getRuntime: RuntimeSource): (request: Request) => Promise<Response> {
  return async (request) => {
    const runtime = runtimeOrUnavailable(getRuntime);
    if (runtime instanceof Response) return runtime;
    return handleSession(request, runtime);
  };
}
