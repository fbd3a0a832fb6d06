import 'server-only';
import { endpointMethodRefusal } from '@/lib/core/api/guard';
import { errorResponse } from '@/lib/core/errors';
import type { RouteHandler } from './proxy-route';

/** The methods a route file can export that a client can send (Next refuses TRACE and CONNECT itself). */
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
type Method = (typeof METHODS)[number];

export type EveryMethod<P> = Readonly<Record<Method, RouteHandler<P>>>;

/**
 * Every method a route file can export, for one of Keyward's own endpoints: a method the endpoint does not take is
 * then answered by Keyward, 405 `method_not_allowed` with `Allow`, `X-Request-Id` and `Cache-Control: no-store`
 * as README "HTTP contract" says, where Next would answer an empty 405 of its own (a route file's unexported
 * method never reaches a handler).
 *
 * One handler gets every method: Keyward's handlers check theirs (lib/core/api). A map sends its methods to their
 * handlers (HEAD to GET's, as Next does) and answers the others 405 itself, e.g. Auth.js's GET and POST:
 * `export const { GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS } = keyward.everyMethod({ GET: …, POST: … })`.
 */
export function everyMethod<P>(handlers: RouteHandler<P> | Partial<Record<Exclude<Method, 'HEAD'>, RouteHandler<P>>>): EveryMethod<P> {
  if (typeof handlers === 'function') return Object.fromEntries(METHODS.map((method) => [method, handlers])) as EveryMethod<P>;
  const allowed = { ...handlers, ...(handlers.GET ? { HEAD: handlers.GET } : {}) } as Partial<Record<Method, RouteHandler<P>>>;
  const allow = METHODS.filter((method) => allowed[method]).join(', ');
  const refuse: RouteHandler<P> = async () => errorResponse(endpointMethodRefusal(allow), crypto.randomUUID());
  return Object.fromEntries(METHODS.map((method) => [method, allowed[method] ?? refuse])) as EveryMethod<P>;
}
