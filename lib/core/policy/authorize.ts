import { KeywardError } from '../errors';
import type { Session } from '../session/session';
import type { CompiledRoute } from '../upstream/registry';
import { sessionValue } from './contract';

/** The session's OAuth-style scopes: the space-separated `scope` claim (RFC 8693 §4.2, RFC 9068 §2.2.3). */
export function sessionScopes(session: Session): ReadonlySet<string> {
  const scope = session.claims.scope;
  return new Set(scope ? scope.split(' ').filter(Boolean) : []);
}

/** Whether one of `roles` may call the route (a route without `roles` is open to every signed-in user). */
export function rolesAllow(route: Pick<CompiledRoute, 'roles'>, roles: readonly string[]): boolean {
  return route.roles === null || roles.some((role) => route.roles!.has(role));
}

/**
 * Who may call this route (DESIGN.md step 5), deny by default: any one of the route's roles, every one of
 * its scopes, and for object-level routes the path parameter must be the caller's own (OWASP API1:2023,
 * broken object-level authorization). Each refusal has its own code so a client can tell them apart.
 */
export function authorize(route: CompiledRoute, params: Readonly<Record<string, string>>, session: Session): void {
  if (!rolesAllow(route, session.roles)) throw new KeywardError('forbidden');
  if (route.scopes) {
    const granted = sessionScopes(session);
    if (![...route.scopes].every((scope) => granted.has(scope))) throw new KeywardError('insufficient_scope');
  }
  for (const [param, source] of route.paramEquals) {
    // Compared on the decoded segment; a missing claim refuses (sessionValue throws forbidden).
    if (params[param] !== sessionValue(session, source)) throw new KeywardError('not_owner');
  }
}
