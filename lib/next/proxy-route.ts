import 'server-only';
import { KeywardError, errorResponse } from '@/lib/core/errors';
import { handleProxy } from '@/lib/core/pipeline';
import { getLogger } from '@/lib/core/log/logger';
import type { Runtime } from '@/lib/core/runtime';

/** How a route handler gets its runtime: built once, on first use (lib/next/runtime.ts). */
export type RuntimeSource = () => Runtime;

/** A Next.js App Router route handler: the request, and the dynamic segments as a promise. */
export type RouteHandler<P = object> = (request: Request, context: { params: Promise<P> }) => Promise<Response>;

/**
 * Returns the runtime, or a 503 response when the configuration cannot be loaded: fail closed, never
 * "let it through". The ConfigError (which names fields, never values) goes to the log only.
 */
export function runtimeOrUnavailable(getRuntime: RuntimeSource): Runtime | Response {
  try {
    return getRuntime();
  } catch (error) {
    getLogger().error({ err: error }, 'keyward configuration failed to load');
    return errorResponse(new KeywardError('service_unavailable'), crypto.randomUUID());
  }
}

/**
 * The Next.js route handler for /api/proxy/[upstream]/[[...path]]: translate, then hand over to the core.
 * Authentication happens inside handleProxy on every request; nothing relies on proxy.ts/middleware.
 */
export function createProxyRoute(getRuntime: RuntimeSource): RouteHandler<{ upstream: string; path?: string[] }> {
  return async (request, context) => {
    const runtime = runtimeOrUnavailable(getRuntime);
    if (runtime instanceof Response) return runtime;
    const { upstream, path = [] } = await context.params;
    return handleProxy(request, { upstream, path }, runtime);
  };
}
