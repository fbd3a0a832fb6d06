import 'server-only';
import { KeywardError, errorResponse } from '@/lib/core/errors';
import { handleProxy } from '@/lib/core/pipeline';
import { getLogger } from '@/lib/core/log/logger';
import type { Runtime } from '@/lib/core/runtime';
import { getRuntime } from './runtime';

interface ProxyContext {
  params: Promise<{ upstream: string; path?: string[] }>;
}

/**
 * Returns the runtime, or a 503 response when the configuration cannot be loaded: fail closed, never
 * "let it through". The ConfigError (which names fields, never values) goes to the log only.
 */
export function runtimeOrUnavailable(): Runtime | Response {
  try {
    return getRuntime();
  } catch (error) {
    getLogger().error({ err: error }, 'keyward configuration failed to load');
    return errorResponse(new KeywardError('service_unavailable'), crypto.randomUUID());
  }
}

/**
 * The Next.js route handler for /api/proxy/[upstream]/[...path]: translate, then hand over to the core.
 * Authentication happens inside handleProxy on every request; nothing relies on proxy.ts/middleware.
 */
export async function proxyRoute(request: Request, context: ProxyContext): Promise<Response> {
  const runtime = runtimeOrUnavailable();
  if (runtime instanceof Response) return runtime;
  const { upstream, path = [] } = await context.params;
  return handleProxy(request, { upstream, path }, runtime);
}
