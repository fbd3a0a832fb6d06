import { KeywardError } from '../errors';
import type { CompiledRoute, Upstream } from '../upstream/registry';

export interface RouteMatch {
  readonly route: CompiledRoute;
  readonly params: Readonly<Record<string, string>>;
}

/**
 * Finds the declared route for method + (already validated) segments. Deny by default: no route → 404,
 * a route for the path under another method → 405 with `Allow` (RFC 9110 §15.5.6).
 */
export function matchRoute(upstream: Upstream, method: string, segments: readonly string[]): RouteMatch {
  const allowed: string[] = [];
  for (const route of upstream.routes) {
    const params = matchSegments(route, segments);
    if (!params) continue;
    if (route.method === method) return { route, params };
    allowed.push(route.method);
  }
  if (allowed.length > 0) {
    throw new KeywardError('method_not_allowed', { headers: { allow: [...new Set(allowed)].join(', ') } });
  }
  throw new KeywardError('route_not_found');
}

function matchSegments(route: CompiledRoute, segments: readonly string[]): Record<string, string> | null {
  const template = route.segments;
  const last = template[template.length - 1];
  const hasRest = typeof last === 'object' && 'rest' in last;
  if (hasRest ? segments.length < template.length : segments.length !== template.length) return null;
  // Created without a prototype: a parameter called `__proto__` is just a key.
  const params: Record<string, string> = Object.create(null);
  for (let i = 0; i < template.length; i++) {
    const part = template[i]!;
    const segment = segments[i]!;
    if (typeof part === 'string') {
      if (part !== segment) return null;
    } else if ('param' in part) {
      params[part.param] = segment;
    } else {
      params['*'] = segments.slice(i).join('/');
    }
  }
  return params;
}
