import 'server-only';
import { handleAudit, handleKeyAction, handleKeyList, handleKeyRevoke } from '@/lib/core/api/admin';
import { handleUserKey } from '@/lib/core/api/keys';
import { handleMobileAuthorize, handleMobileToken } from '@/lib/core/api/mobile';
import { handleAdminRevoke, handleLogout, handleRevokeAll } from '@/lib/core/api/revoke';
import { limitSignIn } from '@/lib/core/api/sign-in';
import type { Runtime } from '@/lib/core/runtime';
import { handlers } from './auth';
import { runtimeOrUnavailable } from './proxy-route';

/** Route handlers for Keyward's own API: each translates params, then hands over to lib/core/api. */
function withRuntime<P>(handle: (request: Request, params: P, runtime: Runtime) => Promise<Response>) {
  return async (request: Request, context: { params: Promise<P> }): Promise<Response> => {
    const runtime = runtimeOrUnavailable();
    if (runtime instanceof Response) return runtime;
    return handle(request, await context.params, runtime);
  };
}

export const userKeyRoute = withRuntime<{ upstream: string }>((request, { upstream }, runtime) =>
  handleUserKey(request, upstream, runtime),
);
export const adminRevokeRoute = withRuntime<{ userId: string }>((request, { userId }, runtime) =>
  handleAdminRevoke(request, userId, runtime),
);
export const adminKeysRoute = withRuntime<object>((request, _, runtime) => handleKeyList(request, runtime));
export const adminKeyActionRoute = withRuntime<{ upstream: string; action: string }>((request, { upstream, action }, runtime) =>
  handleKeyAction(request, upstream, action, runtime),
);
export const adminKeyRevokeRoute = withRuntime<object>((request, _, runtime) => handleKeyRevoke(request, runtime));
export const adminAuditRoute = withRuntime<object>((request, _, runtime) => handleAudit(request, runtime));
export const revokeAllRoute = withRuntime<object>((request, _, runtime) => handleRevokeAll(request, runtime));
export const logoutRoute = withRuntime<object>((request, _, runtime) => handleLogout(request, runtime));
export const mobileAuthorizeRoute = withRuntime<object>((request, _, runtime) => handleMobileAuthorize(request, runtime));
export const mobileTokenRoute = withRuntime<object>((request, _, runtime) => handleMobileToken(request, runtime));

/** Auth.js's POST handler behind the sign-in attempt limits (per IP and per username). */
export async function authPostRoute(request: Request): Promise<Response> {
  const runtime = runtimeOrUnavailable();
  if (runtime instanceof Response) return runtime;
  return (await limitSignIn(request, runtime)) ?? handlers.POST(request as Parameters<typeof handlers.POST>[0]);
}
