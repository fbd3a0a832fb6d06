import type { ProxyTarget } from '@/lib/core/pipeline';
import { decodeSegment } from '@/lib/core/route/segments';

/** A request the fast lane serves itself: its upstream and path segments, and the raw query (with its `?`). */
export interface ProxyPath {
  readonly target: ProxyTarget;
  /** The path as received (an absolute-form target's scheme and authority removed), not decoded. */
  readonly path: string;
  readonly search: string;
}

/** `scheme://authority` of an absolute-form request target (RFC 9112 §3.2.2), which Node passes on as is. */
const ABSOLUTE_FORM = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/;

/**
 * Reads a request target the way the core expects its segments, without asking Node, WHATWG URL or Next to
 * normalise it first. Next answers some paths before a route handler runs (PITFALLS.md: a trailing `.`, `..` or
 * `%2e` segment gets a 308 to another path, a lone `%` or `%zz` a 500); the fast lane hands them to the core.
 *
 * The path is split on `/` before anything is decoded, so `%2F` stays inside its segment and `..` is never
 * resolved; each segment is then decoded once. A segment that is not valid percent-encoding (a lone `%`, `%zz`,
 * overlong or surrogate UTF-8 such as `%c0%ae`) is passed on as written: it contains `%`, which the core's route
 * step refuses like any other unsafe segment (400 `bad_path`, recorded), after the steps that run before it.
 *
 * Returns null for anything outside `/api/proxy`, which Next serves, and for `/api/proxy` written with escapes
 * (`/%61pi/proxy/…`), which isDisguisedProxyPath refuses.
 */
export function parseProxyPath(requestTarget: string): ProxyPath | null {
  const queryAt = requestTarget.indexOf('?');
  let path = queryAt === -1 ? requestTarget : requestTarget.slice(0, queryAt);
  const absolute = ABSOLUTE_FORM.exec(path);
  if (absolute) path = path.slice(absolute[0].length);
  // Pages and assets are most requests a browser makes: one cheap test before any splitting. `/api/proxy` is
  // claimed as written only (a rule at a front proxy or WAF matches it so); spelt with escapes, it is disguised.
  if (!path.startsWith('/api/')) return null;
  const segments = path.split('/');
  if (segments[1] !== 'api' || segments[2] !== 'proxy') return null;
  return {
    // `/api/proxy` and `/api/proxy/` name no upstream: the core answers 404 `upstream_not_found`.
    target: { upstream: decodeSegment(segments[3] ?? ''), path: segments.slice(4).map(decodeSegment) },
    path,
    search: queryAt === -1 ? '' : requestTarget.slice(queryAt),
  };
}

/** A dot segment (`.`, `..`, `%2e` in any case) or a `\`: what WHATWG URL would resolve or turn into `/`. */
const NORMALISED_AWAY = /\\|%2e|\/\.\.?(?:[/?#]|$)/i;

/**
 * Whether a target that is not `/api/proxy/…` as written becomes it once normalised as WHATWG URL does: dot
 * segments (`/x/../api/proxy/…`, `/api/%2e/proxy/…`) resolved, `\` read as `/`. http-proxy reads the target so
 * on its way to Next, and Next would route the result to its own proxy route handler: a proxied call run in
 * Next's process, outside this one's per-user in-flight slots and its shutdown drain. The fast lane answers it
 * instead, 400 `bad_path`, as the core answers any dot segment (and as `next start` does not: it redirects).
 */
export function isDisguisedProxyPath(requestTarget: string): boolean {
  const target = originFormTarget(requestTarget);
  if (target === null) return false;
  const queryAt = target.indexOf('?');
  const path = queryAt === -1 ? target : target.slice(0, queryAt);
  // `/%61pi/proxy/…`, `/api/prox%79/…`: the prefix in escapes, which a rule on `/api/proxy/` would not see.
  if (spellsProxy(path) && parseProxyPath(path) === null) return true;
  if (!NORMALISED_AWAY.test(path)) return false;
  try {
    return spellsProxy(new URL(path, 'http://fast-lane.invalid').pathname);
  } catch {
    return false;
  }
}

/**
 * The request target in origin form (`/path?query`), for Next: an absolute-form target loses its scheme and
 * authority, as text (the public origin comes from configuration, not from the target). Not normalised here, but
 * http-proxy-3 reads the path with WHATWG `new URL` on its way to Next, which resolves dot segments and reads `\`
 * as `/` (`/_next/static/../../signin` reaches `/signin`): harmless, since every page and route checks the session
 * itself and `/api/proxy` in disguise is refused before (isDisguisedProxyPath). Null for a target in neither form
 * (`*`, `a:b`): answered 400, never handed on, since an invalid one (`http://a:99999/x`) would make that `new URL`
 * throw out of the listener.
 */
export function originFormTarget(requestTarget: string): string | null {
  const absolute = ABSOLUTE_FORM.exec(requestTarget);
  if (!absolute) return requestTarget.startsWith('/') ? requestTarget : null;
  const rest = requestTarget.slice(absolute[0].length);
  return rest.startsWith('/') ? rest : rest === '' || rest.startsWith('?') ? `/${rest}` : null;
}

/** Whether the path's first two segments are `api` and `proxy`, as written or once decoded (`/%61pi/prox%79/…`). */
function spellsProxy(path: string): boolean {
  const [empty, first = '', second = ''] = path.split('/', 3);
  return empty === '' && decodeSegment(first) === 'api' && decodeSegment(second) === 'proxy';
}
