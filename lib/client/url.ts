import type { LooseQuery, ParamValue, RestValue } from './types';

/**
 * The proxy URL of a call: `<baseUrl><prefix>/<upstream>/<path>?<query>`, with the path template's parameters
 * filled in one percent-encoded segment each, so a value can never add a segment or reach another route.
 */

/** RFC 3986 §3.3 pchar minus "%": a template's literal text is sent as written when it has only these. */
const PLAIN_SEGMENT = /^[A-Za-z0-9._~!$&'()*+,;=:@-]+$/;
/** `{name}` / `{name:colon}` / `{name:int}` inside a segment (lib/core/route/template.ts). */
const BRACED_PARAM = /^([^{}]*)\{([A-Za-z_][A-Za-z0-9_]*)(?::colon|(:int))?\}([^{}]*)$/;
/** What a `{name:int}` takes, as the proxy matches it: an integer in canonical decimal within the 64-bit range. */
const isInteger = (value: string) => /^(0|-?[1-9][0-9]{0,18})$/.test(value) && BigInt(value) >= -(2n ** 63n) && BigInt(value) < 2n ** 63n;

export function buildCallUrl(
  base: string,
  upstream: string,
  template: string,
  params: Readonly<Record<string, ParamValue | RestValue>> | undefined,
  query: LooseQuery | undefined,
): string {
  const search = buildQuery(query);
  return `${base}/${encodeSegment(upstream, 'the upstream id')}${expandPath(template, params ?? {})}${search ? `?${search}` : ''}`;
}

/** `/items/:id` with `{ id: 'a/b' }` → `/items/a%2Fb`. Throws a TypeError for a missing or unusable value. */
export function expandPath(template: string, params: Readonly<Record<string, ParamValue | RestValue>>): string {
  if (!template.startsWith('/')) throw new TypeError('A Keyward path starts with "/"; put the query in `query`.');
  // The root route (`/`) is the upstream's own URL, `/api/proxy/<upstream>`: a trailing "/" would be an empty
  // segment, which the proxy refuses (400 bad_path).
  if (template === '/') return '';
  const segments = template.slice(1).split('/');
  const out = segments.map((segment, index) => {
    if (segment === '*' && index === segments.length - 1) return restSegments(params['*']);
    if (segment.startsWith(':')) return encodeSegment(paramValue(params, segment.slice(1)), `path parameter "${segment.slice(1)}"`);
    const braced = BRACED_PARAM.exec(segment);
    if (braced) {
      const [, prefix = '', name = '', int, suffix = ''] = braced;
      const value = paramValue(params, name);
      const what = `path parameter "${name}"`;
      // Caught here rather than as the proxy's 404 route_not_found (no route takes another value).
      if (int && !isInteger(value)) throw new TypeError(`${capitalise(what)} must be an integer in plain decimal within the 64-bit range.`);
      // A number past 2^53 is no longer the id it was written as (2^53 + 1 is 2^53): such ids go as strings.
      if (int && typeof params[name] === 'number' && !Number.isSafeInteger(params[name]))
        throw new TypeError(`${capitalise(what)} is a number past 2^53, which cannot hold it exactly: pass it as a string of its digits.`);
      if (prefix === '' && suffix === '') return encodeSegment(value, what);
      // The text around it is the template's own, sent as a plain segment's is (`a?{id}` must not start a query).
      // The finished segment can still be a dot segment (`{name}.` with "."): refused too.
      const built = `${literal(prefix)}${encodeURIComponent(nonEmpty(value, what))}${literal(suffix)}`;
      if (built === '.' || built === '..') throw new TypeError(`${capitalise(what)} makes the segment "${built}".`);
      return built;
    }
    // A dot segment in the path's own text (a path built by concatenation) is refused as a parameter's is.
    const plain = (PLAIN_SEGMENT.test(segment) || segment === '') && segment !== '.' && segment !== '..';
    return plain ? segment : encodeSegment(segment, 'a path segment');
  });
  return `/${out.join('/')}`;
}

/** A template's literal text: as written when it is plain, percent-encoded otherwise. */
function literal(text: string): string {
  return text === '' || PLAIN_SEGMENT.test(text) ? text : encodeURIComponent(text);
}

function paramValue(params: Readonly<Record<string, ParamValue | RestValue>>, name: string): string {
  const value = Object.hasOwn(params, name) ? params[name] : undefined;
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  throw new TypeError(`Path parameter "${name}" is missing (or not a string or number).`);
}

/** The final `*`: a string is split on "/", an array is taken segment by segment; each is encoded alone. */
function restSegments(value: ParamValue | RestValue | undefined): string {
  const parts = typeof value === 'string' ? value.split('/') : Array.isArray(value) ? value : undefined;
  if (!parts || parts.length === 0) throw new TypeError('Path parameter "*" is missing (a string or an array of segments).');
  return parts.map((part) => encodeSegment(String(part), 'a segment of "*"')).join('/');
}

/**
 * One segment, percent-encoded. Empty, `.` and `..` are refused here: URL parsing in fetch would resolve a dot
 * segment (also written `%2E`) before Keyward saw it, and call another path (WHATWG URL, "single-dot segment").
 */
function encodeSegment(value: string, what: string): string {
  const segment = nonEmpty(value, what);
  if (segment === '.' || segment === '..') throw new TypeError(`${capitalise(what)} cannot be "." or "..".`);
  return encodeURIComponent(segment);
}

function nonEmpty(value: string, what: string): string {
  if (value === '') throw new TypeError(`${capitalise(what)} is empty.`);
  return value;
}

const capitalise = (text: string) => text.charAt(0).toUpperCase() + text.slice(1);

/** Query values as strings; an array repeats the name; `undefined` and `null` leave the parameter out. */
export function buildQuery(query: LooseQuery | undefined): string {
  if (query === undefined) return '';
  if (query instanceof URLSearchParams) return query.toString();
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value === undefined || value === null) continue;
    for (const item of Array.isArray(value) ? value : [value]) params.append(name, String(item));
  }
  return params.toString();
}
