import { KeywardError } from '../errors';
import type { CompiledRoute, Upstream } from '../upstream/registry';
import { captureParam, type TemplateSegment } from './template';

export interface RouteMatch {
  readonly route: CompiledRoute;
  readonly params: Readonly<Record<string, string>>;
}

/**
 * Finds the declared route for method + (already validated) segments. Deny by default: no route → 404,
 * a route for the path under another method → 405 with `Allow` (RFC 9110 §15.5.6). A segment with a ":" is
 * accepted only where a route's template puts one (lib/core/route/template.ts); a ":" at a position where no
 * route of the upstream can have one is refused as any ":" was before templates could declare it, 400
 * `bad_path`, and an upstream that declares no ":" answers exactly as it always did.
 */
export function matchRoute(upstream: Upstream, method: string, segments: readonly string[]): RouteMatch {
  const allowed: string[] = [];
  // A route tried before the one that matches (more specific: its literals win) that the path matches but for
  // letter case. Many upstreams read paths without regard to case (GitHub's owners and repositories), so the
  // broader route must not serve `/repos/ACME/HR-Private/issues` when `/repos/acme/hr-private/issues` has its
  // own roles: the call is refused instead. So is one that differs only by dots at the end of a segment
  // (`/repos/acme/hr-private./issues`), which Windows-hosted upstreams (IIS) strip, or by a format suffix on its
  // last segment (`/repos/acme/secret.json`), which Rails (`(.:format)` on every route) and Spring MVC's suffix
  // pattern matching strip before routing.
  let shadowedByCase = false;
  // A route with `{name:int}` the path would match but for a value that only looks like an integer (`+42`, `007`,
  // `0x2a`, `42abc`): many upstreams read it as one, so no broader route may serve it, and it is refused.
  let numericLookalike = false;
  // The segments without their trailing dots, made once, when a route of the method does not match as sent; and
  // those without the last one's format suffix too (null: it has none).
  let loose: string[] | null = null;
  let unsuffixed: string[] | null | undefined;
  for (const route of upstream.routes) {
    const params = matchSegments(route, segments);
    if (!params) {
      if (route.method !== method) continue;
      loose ??= segments.map(withoutTrailingDots);
      if (unsuffixed === undefined) unsuffixed = withoutFormatSuffix(loose);
      if (matchSegments(route, loose, { foldCase: true })) shadowedByCase = true;
      // Also with letter case and trailing dots read loosely: `/USERS/07/secret.` is `/users/7/secret` to an upstream
      // that reads all three so.
      else if (matchSegments(route, segments, { numericLookalikes: true }) || matchSegments(route, loose, { foldCase: true, numericLookalikes: true }))
        numericLookalike = true;
      // A format suffix last: `42.0` is a lookalike of 42 (refused as one), not 42 with a format.
      else if (unsuffixed && matchSegments(route, unsuffixed, { foldCase: true })) shadowedByCase = true;
      continue;
    }
    if (route.method === method) {
      if (shadowedByCase) {
        throw new KeywardError('bad_path', {
          message:
            'The path differs only in letter case, trailing dots or a format suffix (".json") from a declared route: send it as the route writes it.',
        });
      }
      if (numericLookalike) throw numericLookalikeRefusal();
      return { route, params };
    }
    allowed.push(route.method);
  }
  if (numericLookalike) throw numericLookalikeRefusal();
  if (allowed.length > 0) {
    throw new KeywardError('method_not_allowed', { headers: { allow: [...new Set(allowed)].join(', ') } });
  }
  if (hasMisplacedColon(upstream, segments)) {
    throw new KeywardError('bad_path', {
      message: 'A ":" is allowed in a path segment only where a declared route puts one.',
    });
  }
  throw new KeywardError('route_not_found');
}

/**
 * Whether a template matches these (valid) segments exactly as `matchRoute` compares them, for code that asks
 * which requests a route would serve before any route is compiled (the OpenAPI import).
 */
export function templateMatches(template: readonly TemplateSegment[], segments: readonly string[]): boolean {
  return matchSegments({ segments: template }, segments) !== null;
}

/** A segment with ":" at a position where no route of the upstream can hold one (asked once nothing matched). */
function hasMisplacedColon(upstream: Upstream, segments: readonly string[]): boolean {
  return segments.some(
    (segment, index) => segment.includes(':') && !upstream.routes.some((route) => colonAllowedAt(route, index)),
  );
}

/** Whether the route's template can hold a ":" in segment `index`. */
function colonAllowedAt(route: CompiledRoute, index: number): boolean {
  const part = route.segments[index];
  if (part === undefined) return false;
  if (typeof part === 'string') return part.includes(':');
  if ('rest' in part) return false;
  return part.colons || part.prefix.includes(':') || part.suffix.includes(':');
}

/** A segment without the dots at its end (`secret.` → `secret`), unless nothing else is left. */
function withoutTrailingDots(segment: string): string {
  const stripped = segment.replace(/\.+$/, '');
  return stripped === '' ? segment : stripped;
}

/**
 * The segments with the last one's format suffix (`secret.json` → `secret`: one dot and what follows it) taken
 * off, or null when it has none (no dot, or nothing before it).
 */
function withoutFormatSuffix(segments: readonly string[]): string[] | null {
  const last = segments[segments.length - 1];
  const dot = last?.lastIndexOf('.') ?? -1;
  if (last === undefined || dot <= 0 || dot === last.length - 1) return null;
  return [...segments.slice(0, -1), last.slice(0, dot)];
}

/**
 * `segment` with the literal text around a parameter (`hr-{repo}`, `{year}-Q4.json`) written as the template
 * writes it, when it differs only in letter case there; else `segment` as it is. The value keeps its own case.
 */
function withTemplateCase({ prefix, suffix }: { readonly prefix: string; readonly suffix: string }, segment: string): string {
  if (segment.length <= prefix.length + suffix.length) return segment;
  const value = segment.slice(prefix.length, segment.length - suffix.length);
  const folded = `${prefix}${value}${suffix}`;
  return folded.toLowerCase() === segment.toLowerCase() ? folded : segment;
}

function numericLookalikeRefusal(): KeywardError {
  return new KeywardError('bad_path', {
    message:
      'A path segment where a route takes an integer must be one in plain decimal, within the 64-bit range (no "+", leading zeros, "-0", "0x", "_", fraction or letters).',
  });
}

/**
 * `foldCase`: literal text, whole segments and the text around a parameter, compared without regard to letter
 * case (ASCII: path segments are ASCII here). `numericLookalikes`: a `{name:int}` also takes a value that only
 * looks like a number (lib/core/route/template.ts LOOKS_NUMERIC).
 */
function matchSegments(
  route: Pick<CompiledRoute, 'segments'>,
  segments: readonly string[],
  { foldCase = false, numericLookalikes = false }: { foldCase?: boolean; numericLookalikes?: boolean } = {},
): Record<string, string> | null {
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
      if (part !== segment && !(foldCase && part.toLowerCase() === segment.toLowerCase())) return null;
    } else if ('param' in part) {
      const value = captureParam(part, foldCase ? withTemplateCase(part, segment) : segment, numericLookalikes);
      if (value === null) return null;
      params[part.param] = value;
    } else {
      const rest = segments.slice(i);
      if (rest.some((s) => s.includes(':'))) return null;
      params['*'] = rest.join('/');
    }
  }
  return params;
}
