import { templateMatches } from '../../route/match';
import { bySpecificity, captureParam, compileTemplate, templateShape, type TemplateParam, type TemplateSegment } from '../../route/template';
import type { ImportedRoute, PlannedOperation } from './operations';

/**
 * Operations the user did not choose that a chosen route would serve. A template parameter matches any segment,
 * so choosing `GET /users/{id}` would also forward `GET /users/export` (an admin dump the document declares
 * beside it) with the upstream's key. OpenAPI serves a concrete path before a templated one (3.1 §4.8.8), and so
 * does Keyward (lib/core/route/template.ts `bySpecificity`): an operation that ranks before a chosen route and
 * shares a request with it is written as a route of its own that nobody may call (`"roles": []`, 403
 * `forbidden`), which takes those requests from the chosen one.
 */

export interface RefusedOperation {
  readonly operation: PlannedOperation;
  /** The chosen operation whose route would otherwise serve its requests. */
  readonly servedBy: string;
  readonly route: ImportedRoute;
}

export interface ChosenRoute {
  readonly key: string;
  readonly route: ImportedRoute;
}

/**
 * The operations not chosen that a chosen route would serve: `refused`, those that rank before it (a route of
 * their own takes their requests), and `overlapping`, those of the same rank that share a request with it
 * (neither path is more specific, so no route of their own could come first: the chosen one serves the requests
 * they share, which the import can only say).
 */
export function shadowedOperations(
  operations: readonly PlannedOperation[],
  chosen: readonly ChosenRoute[],
  selected: ReadonlySet<PlannedOperation>,
): { refused: RefusedOperation[]; overlapping: Array<{ operation: PlannedOperation; servedBy: string }> } {
  const compiled = chosen.map((entry) => ({ ...entry, segments: compileTemplate(entry.route.path) }));
  const shapes = new Set(chosen.map(({ route }) => `${route.method} ${templateShape(route.path)}`));
  const refused: RefusedOperation[] = [];
  const overlapping: Array<{ operation: PlannedOperation; servedBy: string }> = [];
  for (const operation of operations) {
    // An operation that cannot be a route has no template to refuse by (said in the report as not imported).
    if (selected.has(operation) || !operation.route) continue;
    const { method, path } = operation.route;
    const segments = compileTemplate(path);
    const sharing = compiled.filter((entry) => entry.route.method === method && commonRequest(segments, entry.segments) !== null);
    const servedBy = sharing.find((entry) => bySpecificity(segments, entry.segments) < 0);
    const shape = `${method} ${templateShape(path)}`;
    if (!servedBy) {
      const tied = sharing.find((entry) => bySpecificity(segments, entry.segments) === 0);
      if (tied && !shapes.has(shape)) overlapping.push({ operation, servedBy: tied.key });
      continue;
    }
    // Two unchosen operations for the same requests (a document may declare both): one refusal covers them.
    if (shapes.has(shape)) continue;
    shapes.add(shape);
    refused.push({ operation, servedBy: servedBy.key, route: { method, path, roles: [] } });
  }
  return { refused, overlapping };
}

/**
 * A request both templates match (as the run-time matcher reads them), or null when none can. Built segment by
 * segment, then checked whole with `templateMatches`, so a sample the matcher would not accept is never counted.
 */
export function commonRequest(a: readonly TemplateSegment[], b: readonly TemplateSegment[]): string[] | null {
  const request: string[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (x === undefined || y === undefined) return null;
    if (isRest(x) || isRest(y)) {
      // A final `*` takes one or more segments: the rest of the other template, or one segment.
      const other = isRest(x) ? b : a;
      request.push(...other.slice(i).map(sampleSegment));
      break;
    }
    const segment = commonSegment(x, y);
    if (segment === null) return null;
    request.push(segment);
  }
  return templateMatches(a, request) && templateMatches(b, request) ? request : null;
}

function isRest(part: TemplateSegment): part is { readonly rest: true } {
  return typeof part === 'object' && 'rest' in part;
}

function sampleSegment(part: TemplateSegment): string {
  if (typeof part === 'string') return part;
  return 'rest' in part ? '0' : `${part.prefix}0${part.suffix}`;
}

/** One segment both parts match, or null. */
function commonSegment(x: Exclude<TemplateSegment, { rest: true }>, y: Exclude<TemplateSegment, { rest: true }>): string | null {
  if (typeof x === 'string' && typeof y === 'string') return x === y ? x : null;
  if (typeof x === 'string') return captureParam(y as TemplateParam, x) === null ? null : x;
  if (typeof y === 'string') return captureParam(x, y) === null ? null : y;
  // Two parameters: a segment starts with the longer prefix and ends with the longer suffix, when each is an
  // extension of the other's; the two may share letters (`a:{v}` and `{w}:b` both match `a:b`).
  const prefix = x.prefix.length >= y.prefix.length ? x.prefix : y.prefix;
  const suffix = x.suffix.length >= y.suffix.length ? x.suffix : y.suffix;
  if (!prefix.startsWith(x.prefix) || !prefix.startsWith(y.prefix)) return null;
  if (!suffix.endsWith(x.suffix) || !suffix.endsWith(y.suffix)) return null;
  const candidates = [`${prefix}0${suffix}`, `${prefix}${suffix}`];
  for (let k = 1; k <= Math.min(prefix.length, suffix.length); k++) {
    if (prefix.endsWith(suffix.slice(0, k))) candidates.push(`${prefix}${suffix.slice(k)}`);
  }
  return candidates.find((segment) => captureParam(x, segment) !== null && captureParam(y, segment) !== null) ?? null;
}
