import { queryParamKey } from '../forward/query';

/**
 * What Keyward does with an upstream's `Link` header (RFC 8288), per route (`links`, default the upstream's):
 * - `rewrite` (default): each link whose target is under the upstream's `baseUrl` is written onto the proxy path,
 *   `<public origin>/api/proxy/<upstream>/<rest of its path>?<its query>`; every other link is dropped;
 * - `same-path`: for APIs whose page links name the list another way than the route does (GitHub's
 *   `/repositories/<id>/issues` for `/repos/<owner>/<repo>/issues`): the page links (`next`, `prev`, `first`,
 *   `last`) under `baseUrl` keep only their query, on the path the client called; every other link is dropped;
 * - `drop`: no `Link` at all.
 * A link is never passed as the upstream wrote it: its absolute upstream URL would take a client (Octokit's
 * `paginate`, a fetch loop) straight to the upstream, without Keyward's key but with whatever credential the
 * client's own hook adds (its Keyward session token).
 */
export type LinkMode = 'rewrite' | 'same-path' | 'drop';

export interface LinkContext {
  readonly mode: Exclude<LinkMode, 'drop'>;
  /** The upstream's id, fixed origin and base path (ending in `/`): only links under them are kept. */
  readonly upstream: { readonly id: string; readonly origin: string; readonly basePath: string };
  /** The upstream URL this answer came from (origin and path): a relative link is resolved against it (RFC 8288 §3.1). */
  readonly calledUrl: string;
  /** The path segments the client called under its upstream (decoded): `same-path` links point there. */
  readonly calledPath: readonly string[];
  /** The origin rewritten links are written on; null: path-absolute (`/api/proxy/…`), resolved by the client. */
  readonly publicOrigin: string | null;
  /** The credential's query parameter (auth type `query`): taken out of each link's query. */
  readonly credentialQuery: string | null;
}

/** The relations a paginated list links its own pages with (IANA link relations; `previous` is `prev`'s synonym). */
const PAGE_RELATIONS = new Set(['next', 'prev', 'previous', 'first', 'last']);

/**
 * One `Link` header line with each link rewritten (see `LinkMode`) and the others left out; null when none is
 * left. Written anew from what was parsed (`writeParam`): a link-value that is not well formed is dropped whole.
 * The caller still checks the result for secrets (lib/core/forward/headers.ts, `filterResponseHeaders`).
 */
export function rewriteLinks(value: string, context: LinkContext): string | null {
  const kept: string[] = [];
  for (const link of parseLinks(value)) {
    const target = link && proxiedTarget(link, context);
    if (!target) continue;
    kept.push(`<${target}>${link.params.map(writeParam).join('')}`);
  }
  return kept.length > 0 ? kept.join(', ') : null;
}

interface Link {
  readonly target: string;
  /** Each parameter's name (lowercased) and value (unquoted; undefined when it has none), in order. */
  readonly params: ReadonlyArray<readonly [string, string | undefined]>;
}

/** The link's target on the proxy path, or null when it is dropped. */
function proxiedTarget(link: Link, context: LinkContext): string | null {
  // `anchor` makes another resource the link's context (RFC 8288 §3.2): a URL of the upstream's, as written.
  if (link.params.some(([name]) => name === 'anchor')) return null;
  let url: URL;
  try {
    url = new URL(link.target, context.calledUrl);
  } catch {
    return null;
  }
  const { upstream } = context;
  if (url.origin !== upstream.origin || !url.pathname.startsWith(upstream.basePath)) return null;
  let rest: string;
  if (context.mode === 'same-path') {
    const rel = link.params.flatMap(([name, text]) =>
      name === 'rel' && text ? text.toLowerCase().split(/[\t ]+/) : [],
    );
    if (!rel.some((type) => PAGE_RELATIONS.has(type))) return null;
    rest = context.calledPath.map(encodeURIComponent).join('/');
  } else {
    rest = url.pathname.slice(upstream.basePath.length);
  }
  const query = context.credentialQuery === null ? url.search : withoutParam(url.search, context.credentialQuery);
  return `${context.publicOrigin ?? ''}/api/proxy/${encodeURIComponent(upstream.id)}/${rest}${query}`;
}

/**
 * The query without the credential's parameter, in any spelling a lenient parser would read as it (Keyward
 * refuses a client's query that holds one: the link could not be followed, and the key is not the client's to see).
 * The other pairs stay exactly as written.
 */
function withoutParam(search: string, name: string): string {
  if (search.length <= 1) return search;
  const wanted = queryParamKey(name);
  const kept = search
    .slice(1)
    .split('&')
    .filter((pair) => queryParamKey((pair.split('=')[0] ?? '').replaceAll('+', ' ')) !== wanted);
  return kept.length > 0 ? `?${kept.join('&')}` : '';
}

// RFC 9110 §5.6.2 (token), §5.6.4 (quoted-string); RFC 8288 §3 (link-value, link-param).
const TOKEN = /[!#$%&'*+.^_`|~0-9A-Za-z-]+/y;
const QUOTED = /"((?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*)"/y;
const WHITESPACE = /[\t ]*/y;
const TARGET = /<([^<>]*)>/y;

/**
 * The link-values of a `Link` line, read in one pass: `<URI-Reference> *( OWS ";" OWS link-param )`, separated by
 * commas (empty elements allowed, RFC 9110 §5.6.1). A malformed one is null, and reading resumes after the next
 * comma outside a quoted string.
 */
function parseLinks(value: string): Array<Link | null> {
  const links: Array<Link | null> = [];
  let at = 0;
  const match = (pattern: RegExp): RegExpExecArray | null => {
    pattern.lastIndex = at;
    const found = pattern.exec(value);
    if (found) at = pattern.lastIndex;
    return found;
  };
  const skipToNextLink = () => {
    while (at < value.length && value[at] !== ',') {
      if (value[at] === '"' && match(QUOTED)) continue;
      at++;
    }
  };
  while (at < value.length) {
    match(WHITESPACE);
    if (value[at] === ',') {
      at++;
      continue;
    }
    const link = readLink();
    links.push(link);
    if (!link) skipToNextLink();
  }
  return links;

  function readLink(): Link | null {
    const target = match(TARGET);
    if (!target) return null;
    const params: Array<[string, string | undefined]> = [];
    for (;;) {
      match(WHITESPACE);
      if (at >= value.length || value[at] === ',') return { target: target[1]!, params };
      if (value[at] !== ';') return null;
      at++;
      match(WHITESPACE);
      const name = match(TOKEN);
      if (!name) return null;
      match(WHITESPACE);
      let text: string | undefined;
      if (value[at] === '=') {
        at++;
        match(WHITESPACE);
        const quoted = match(QUOTED);
        const token = quoted ? null : match(TOKEN);
        if (!quoted && !token) return null;
        text = quoted ? quoted[1]!.replace(/\\(.)/g, '$1') : token![0];
      }
      params.push([name[0].toLowerCase(), text]);
    }
  }
}

/**
 * `; name="value"`: quoted as Octokit's pattern wants `rel` (`rel="next"`); an RFC 8187 `name*` value as the token it
 * must be. Empty for a value holding `<` or `>`, where a client's pattern could read a link inside the value.
 */
function writeParam([name, text]: readonly [string, string | undefined]): string {
  if (text === undefined) return `; ${name}`;
  if (/[<>]/.test(text)) return '';
  if (!name.endsWith('*')) return `; ${name}="${text.replace(/["\\]/g, '\\$&')}"`;
  TOKEN.lastIndex = 0;
  return TOKEN.exec(text)?.[0] === text ? `; ${name}=${text}` : '';
}
