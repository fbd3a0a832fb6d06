import { isSafeSegment } from './segments';
import { shownName } from '../config/error';

/**
 * A route's path template, one entry per segment (README "### Upstreams"):
 * - a literal, compared exactly (`models`, or `images:annotate`: a ":" the template writes is sent as is);
 * - a parameter: `:name` (the whole segment), or `{name}` with literal text around it inside one segment
 *   (`{model}:generateContent`); its value never contains ":" unless declared `{name:colon}`; `{name:int}`
 *   (whole or with text around it) takes only an integer written in decimal (`12`, `-3`);
 * - `*` (last only): one or more remaining segments, none of them with a ":".
 */
export type TemplateSegment = string | TemplateParam | { readonly rest: true };

export interface TemplateParam {
  readonly param: string;
  /** Literal text before the value in the same segment ('' for `:name`). */
  readonly prefix: string;
  /** Literal text after the value in the same segment, e.g. `:generateContent`. */
  readonly suffix: string;
  /** `{name:colon}`: the value may contain ":" (where a segment may); it is sent upstream as `%3A`. */
  readonly colons: boolean;
  /** `{name:int}`: the value is an integer in canonical decimal (isCanonicalInteger), so it never takes `comments` or `1.5`. */
  readonly int: boolean;
}

const NAME = '[A-Za-z_][A-Za-z0-9_]*';
const WHOLE_PARAM = new RegExp(`^:(${NAME})$`);
// Braces cannot occur in a request segment (RFC 3986 §2.2, §2.3), so `{` … `}` can only mean a parameter.
// One modifier at most: `{name:int}` never holds a ":", so the two do not combine.
const BRACED_PARAM = new RegExp(`^([^{}]*)\\{(${NAME})(:colon|:int)?\\}([^{}]*)$`);
/**
 * A `{name:int}` value: an integer in canonical decimal (`0`, `12`, `-3`: no "+", leading zero, `-0`, exponent,
 * "0x" or "_"), within the 64-bit range APIs declare ids in (`format: int64`: snowflake ids reach 19 digits), so a
 * parser that overflows never reads it as another number.
 */
export function isCanonicalInteger(value: string): boolean {
  if (!/^(0|-?[1-9][0-9]{0,18})$/.test(value)) return false;
  const n = BigInt(value);
  return n >= INT64_MIN && n <= INT64_MAX;
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/**
 * A value some upstream may read as a number though it is not a canonical integer: Java's `Long.valueOf` and Go's
 * `Atoi` take `+42`, Spring's `Long.decode` `0x2a`, `parseInt` and Rails `42abc`, Python `4_2`, JS's `Number`
 * `42.0`, and any of them `007`. Where a `{name:int}` could take a segment, such a value is refused rather than
 * served by a broader route (lib/core/route/match.ts).
 */
export const LOOKS_NUMERIC = /^[+-]?[0-9]/;

/** The parameter a template segment declares, or null for a literal; undefined when it is neither. */
function parseParam(segment: string): TemplateParam | null | undefined {
  const whole = WHOLE_PARAM.exec(segment);
  if (whole) return { param: whole[1]!, prefix: '', suffix: '', colons: false, int: false };
  if (!segment.includes('{') && !segment.includes('}')) return null;
  const braced = BRACED_PARAM.exec(segment);
  if (!braced) return undefined;
  const [, prefix = '', param = '', modifier, suffix = ''] = braced;
  // The literal text obeys the request-segment rules with any value in place: no ":" first, last or doubled.
  if (!isSafeSegment(`${prefix}0${suffix}`)) return undefined;
  return { param, prefix, suffix, colons: modifier === ':colon', int: modifier === ':int' };
}

/** What is wrong with a path template (for the config schema), or null. Checked once, at start-up. */
export function templateProblems(path: string): string[] {
  if (!path.startsWith('/')) return ['must start with "/"'];
  const segments = splitTemplate(path);
  const problems: string[] = [];
  const names = new Set<string>();
  segments.forEach((segment, index) => {
    if (segment === '*') {
      if (index !== segments.length - 1) problems.push('"*" may only be the last segment');
      return;
    }
    const param = parseParam(segment);
    if (param === undefined || (param === null && !isSafeSegment(segment))) {
      // The segment's text is not repeated: a URL copied from an API's docs may carry a key (`?appid=…`), and
      // this message goes to the console and the platform's logs.
      problems.push(
        /[?#]/.test(segment)
          ? `segment ${index + 1} holds a "?" or "#": a route path has no query string or fragment (declare query parameters under "query")`
          : `segment ${index + 1} is not a literal, a :param, a {param}, {param:int} or {param:colon} with literal text around it (":" inside only), or a final * (its text is not shown)`,
      );
    } else if (param) {
      if (names.has(param.param)) problems.push(`parameter "${shownName(param.param)}" is declared twice`);
      names.add(param.param);
    }
  });
  return problems;
}

/** Compiles a template that `templateProblems` accepted. */
export function compileTemplate(path: string): TemplateSegment[] {
  return splitTemplate(path).map((segment) => {
    if (segment === '*') return { rest: true };
    const param = parseParam(segment);
    if (param === undefined) throw new Error('path template was not validated');
    return param ?? segment;
  });
}

/**
 * Orders templates from the most specific: segment by segment, a literal before a parameter with literal text
 * around it, before a whole-segment parameter, before `*`; then the shorter first; then, for templates of one
 * shape, a typed parameter (`{param:int}`) before an untyped one, segment by segment; otherwise as declared (sorts
 * are stable). So `/issues/{n:int}` serves `/issues/12` and a `/issues/:name` beside it serves the rest, while a
 * literal later in the path still outranks a typed parameter before it (`/users/:id/password` with its own roles
 * over `/users/{id:int}/:field`). Keyward serves a call by the first route of this order that matches (a literal
 * `/repos/acme/private/issues` with its own roles wins over `/repos/:owner/:repo/issues` wherever either is
 * declared), as OpenAPI matches concrete paths before templated ones (OpenAPI 3.1 §4.8.8).
 */
export function bySpecificity(a: readonly TemplateSegment[], b: readonly TemplateSegment[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const difference = specificityRank(a[i]!) - specificityRank(b[i]!);
    if (difference !== 0) return difference;
  }
  // Templates of different lengths with equal ranks up to the shorter one's end never match the same request
  // (only a final `*` spans lengths, and it ranks last).
  if (a.length !== b.length) return a.length - b.length;
  for (let i = 0; i < a.length; i++) {
    const difference = Number(!isTyped(a[i]!)) - Number(!isTyped(b[i]!));
    if (difference !== 0) return difference;
  }
  // A total order, so any sort applies it whole.
  return 0;
}

function specificityRank(part: TemplateSegment): number {
  return typeof part === 'string' ? 0 : 'rest' in part ? 3 : part.prefix || part.suffix ? 1 : 2;
}

function isTyped(part: TemplateSegment): boolean {
  return typeof part === 'object' && 'param' in part && part.int;
}

/**
 * The requests a template matches, without parameter names: two routes of one method and shape can never both serve.
 * `{ types: false }` leaves out parameter types too (`/a/{n:int}` as `/a/:x`).
 */
export function templateShape(path: string, { types = true }: { types?: boolean } = {}): string {
  return compileTemplate(path)
    .map((part) => (typeof part === 'string' ? part : 'rest' in part ? '*' : `${part.prefix}{${types && part.int ? 'int' : ''}}${part.suffix}`))
    .join('/');
}

/** The parameters a template declares, in order (e.g. to check `paramEquals` names). */
export function templateParamNames(path: string): string[] {
  return splitTemplate(path)
    .map(parseParam)
    .filter((param): param is TemplateParam => Boolean(param))
    .map((param) => param.param);
}

function splitTemplate(path: string): string[] {
  return path === '/' ? [] : path.slice(1).split('/');
}

/**
 * The value a parameter takes from one request segment (already validated by assertSafeSegments), or null when the segment does not
 * fit: the literal text must match exactly and the value be non-empty, a safe segment on its own, and free of
 * ":" unless the parameter allows it, and an integer for `{name:int}` (with `numericLookalikes`, also a value that
 * only looks like a number, for the check that refuses it). A value is never split from a literal ":" in more than one way: the
 * prefix and suffix are fixed strings anchored at the ends.
 */
export function captureParam(param: TemplateParam, segment: string, numericLookalikes = false): string | null {
  const { prefix, suffix } = param;
  const isInt = (value: string) => isCanonicalInteger(value) || (numericLookalikes && LOOKS_NUMERIC.test(value));
  // `:name` and `{name}`: the segment itself, which the route step has already validated.
  if (prefix === '' && suffix === '') {
    if (param.int) return isInt(segment) ? segment : null;
    return param.colons || !segment.includes(':') ? segment : null;
  }
  if (segment.length <= prefix.length + suffix.length) return null;
  if (!segment.startsWith(prefix) || !segment.endsWith(suffix)) return null;
  const value = segment.slice(prefix.length, segment.length - suffix.length);
  if (!param.colons && value.includes(':')) return null;
  if (param.int && !isInt(value)) return null;
  return isSafeSegment(value) ? value : null;
}
