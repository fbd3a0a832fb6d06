import { templateMatches } from '../../route/match';
import { decodeSegment, isSafeSegment } from '../../route/segments';
import { bySpecificity, captureParam, compileTemplate, templateShape, type TemplateParam, type TemplateSegment } from '../../route/template';
import { literalText, pathTemplate, type ImportedRoute, type PlannedOperation } from './operations';

/**
 * Operations the user did not choose that a chosen route would serve. A template parameter matches any segment
 * (an integer one, `{id:int}`, any integer), so choosing `GET /users/{id}` with a string `id` would also forward
 * `GET /users/export` (an admin dump the document declares beside it) with the upstream's key. OpenAPI serves a concrete path before a templated one (3.1 §4.8.8), and so
 * does Keyward (lib/core/route/template.ts `bySpecificity`): an operation that ranks before a chosen route and
 * shares a request with it is written as a route of its own that nobody may call (`"roles": []`, 403
 * `forbidden`), which takes those requests from the chosen one.
 *
 * That holds for what the import could not read or convert as well, since the chosen route serves it all the
 * same: an operation not imported is refused by its path as a template, and a path item in another file (its
 * operations unknown) for every method a chosen route serving it uses. A path that cannot be a template at all (a
 * literal `*`, two parameters in a segment) cannot be refused apart: the chosen routes that can serve it are named.
 */

export interface ServedOperation {
  /** `GET /users/export`: the method and the document's path. */
  readonly key: string;
  /** Why it has no route of its own: "not chosen", "not imported (…)", "its path item is in another file (…)". */
  readonly why: string;
  /** The chosen operation whose route serves (or would otherwise serve) its requests. */
  readonly servedBy: string;
}

export interface RefusedOperation extends ServedOperation {
  readonly route: ImportedRoute;
}

export interface ChosenRoute {
  readonly key: string;
  readonly route: ImportedRoute;
}

/** What the import must say about the document beside the chosen routes. */
export interface ShadowedPaths {
  readonly operations: readonly PlannedOperation[];
  /** Paths whose path item is in another file (./operations.ts `planOperations`). */
  readonly externalPaths: readonly string[];
}

/** A path the document declares, not chosen: one operation's (`method`), or a path item's in another file (null). */
interface Candidate {
  readonly method: string | null;
  readonly path: string;
  readonly why: string;
  /** The path as a Keyward template; null when it cannot be one. */
  readonly template: string | null;
}

/**
 * The operations not chosen that a chosen route would serve: `refused`, those that rank before it (a route of
 * their own takes their requests), `overlapping`, those of the same rank that share a request with it (neither
 * path is more specific, so no route of their own could come first: the chosen one serves the requests they
 * share, which the import can only say), and `unrefusable`, those whose path cannot be a template, so no route of
 * their own can be written (said as well).
 */
export function shadowedOperations(
  plan: ShadowedPaths,
  chosen: readonly ChosenRoute[],
  selected: ReadonlySet<PlannedOperation>,
): { refused: RefusedOperation[]; overlapping: ServedOperation[]; unrefusable: ServedOperation[] } {
  const compiled = chosen.map((entry) => ({ ...entry, segments: compileTemplate(entry.route.path) }));
  const shapes = new Set(chosen.map(({ route }) => `${route.method} ${templateShape(route.path)}`));
  const refused: RefusedOperation[] = [];
  const overlapping: ServedOperation[] = [];
  const unrefusable: ServedOperation[] = [];
  const keyOf = (candidate: Candidate, method: string) => `${method} ${candidate.path}`;
  for (const candidate of candidates(plan, selected)) {
    const { template } = candidate;
    const sameMethod = (entry: ChosenRoute) => candidate.method === null || entry.route.method === candidate.method;
    if (template === null) {
      const cover = pathCover(candidate.path);
      if (!cover) continue;
      for (const entry of compiled) {
        // A concrete path serves only itself, as the document says it does (OpenAPI 3.1 §4.8.8).
        if (!sameMethod(entry) || entry.segments.every((part) => typeof part === 'string')) continue;
        if (commonRequest(cover, entry.segments) !== null)
          unrefusable.push({ key: keyOf(candidate, entry.route.method), why: candidate.why, servedBy: entry.key });
      }
      continue;
    }
    const segments = compileTemplate(template);
    const sharing = compiled.filter((entry) => sameMethod(entry) && commonRequest(segments, entry.segments) !== null);
    for (const method of new Set(sharing.map((entry) => entry.route.method))) {
      const served = sharing.filter((entry) => entry.route.method === method);
      const servedBy = served.find((entry) => bySpecificity(segments, entry.segments) < 0);
      const shape = `${method} ${templateShape(template)}`;
      if (!servedBy) {
        const tied = served.find((entry) => bySpecificity(segments, entry.segments) === 0);
        if (tied && !shapes.has(shape))
          overlapping.push({ key: keyOf(candidate, method), why: candidate.why, servedBy: tied.key });
        continue;
      }
      // Two unchosen operations for the same requests (a document may declare both): one refusal covers them.
      if (shapes.has(shape)) continue;
      shapes.add(shape);
      refused.push({
        key: keyOf(candidate, method),
        why: candidate.why,
        servedBy: servedBy.key,
        route: { method, path: template, roles: [] },
      });
    }
  }
  return { refused, overlapping, unrefusable };
}

/** Every path not chosen: operations imported or not (in the document's order), then path items not read. */
function candidates(plan: ShadowedPaths, selected: ReadonlySet<PlannedOperation>): Candidate[] {
  const asTemplate = (path: string) => {
    const template = pathTemplate(path);
    return 'path' in template ? template.path : null;
  };
  return [
    ...plan.operations
      .filter((operation) => !selected.has(operation))
      .map((operation) => ({
        method: operation.method,
        path: operation.path,
        why: operation.route ? 'not chosen' : `not imported (${operation.skipped})`,
        template: operation.route ? operation.route.path : asTemplate(operation.path),
      })),
    ...plan.externalPaths.map((path) => ({
      method: null,
      path,
      why: 'its path item is in another file (not read)',
      template: asTemplate(path),
    })),
  ];
}

/**
 * Every request a document path that cannot be a template may be sent as, and perhaps more: its literal segments
 * decoded, as the route step reads a request's (a literal `*` included; `%21root` is `!root`, which a chosen
 * `:name` forwards and an upstream that decodes paths may read as `%21root`), and a segment with several
 * parameters (or one with no name) as one parameter between the text before the first and after the last. Null
 * when no request can take the path (a segment the route step refuses, such as `:name` or `%2F`,
 * lib/core/route/segments.ts).
 */
function pathCover(path: string): TemplateSegment[] | null {
  if (!path.startsWith('/')) return null;
  const cover: TemplateSegment[] = [];
  for (const written of path === '/' ? [] : path.slice(1).split('/')) {
    // Braces are found as written (a `%7B` is a literal "{", which no request segment holds), then decoded around.
    const first = written.indexOf('{');
    const last = written.lastIndexOf('}');
    if (first === -1 || last < first) {
      const segment = decodeSegment(written);
      if (!isSafeSegment(segment)) return null;
      cover.push(segment);
      continue;
    }
    if (!isSafeSegment(literalText(written, decodeSegment).replace(/\{[^{}]*\}/g, '0'))) return null;
    const prefix = decodeSegment(written.slice(0, first));
    const suffix = decodeSegment(written.slice(last + 1));
    cover.push({ param: 'value', prefix, suffix, colons: true, int: false });
  }
  return cover;
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
