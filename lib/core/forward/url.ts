import { KeywardError } from '../errors';
import type { TemplateSegment } from '../route/template';
import type { Upstream } from '../upstream/registry';

/**
 * Builds the upstream URL by appending each (validated) segment, percent-encoded, to the upstream's fixed
 * base, then asserts that the result kept the base origin and stayed under the base path. Never
 * `new URL(path, base)`: a path such as `//evil.com` or `https:%2F%2Fevil.com` would change the host.
 * The result has no query and no fragment; `withQuery` adds the client's validated query afterwards.
 *
 * How each character is written is fixed (README "### Upstreams"): every client-supplied value goes through
 * `encodeURIComponent`, so a ":" in a value is sent as `%3A` (as AWS SDKs send Bedrock model ids); only a ":"
 * that the route's template itself writes (`{model}:generateContent`, Google's custom methods) is sent as is.
 * `url.pathname` is exactly the path sent: a SigV4 signer (non-S3 services) encodes each of its segments once
 * more for the canonical request (`%3A` → `%253A`), as AWS SDKs do.
 *
 * `template` is the matched route's (lib/core/route/template.ts); without one (a canary's literal path), every
 * segment is encoded whole.
 */
export function buildUpstreamUrl(
  upstream: Pick<Upstream, 'base' | 'origin' | 'basePath'>,
  segments: readonly string[],
  template?: readonly TemplateSegment[],
): URL {
  let appended = '';
  for (let i = 0; i < segments.length; i++) {
    if (i > 0) appended += '/';
    appended += encodeSegment(segments[i]!, template ? templatePart(template, i, segments.length) : undefined);
  }
  // RFC 3986 §4.2: a ":" that began a segment could be read as ending a scheme; segment rules refuse that and
  // this proves it of what is sent.
  if (appended.startsWith(':') || appended.includes('/:')) throw new KeywardError('bad_path');
  const path = upstream.basePath + appended;
  const url = new URL(upstream.base.href);
  url.pathname = path;
  url.search = '';
  url.hash = '';
  if (url.origin !== upstream.origin || !url.pathname.startsWith(upstream.basePath) || url.search || url.hash) {
    throw new KeywardError('bad_path');
  }
  // `.`/`..` would be normalised away by the URL parser; segment validation refuses them and this
  // check makes sure no normalisation happened at all (nor any re-encoding: ":" is a pchar, RFC 3986 §3.3,
  // outside WHATWG URL's path percent-encode set, so it is kept as written).
  if (url.pathname !== path) throw new KeywardError('bad_path');
  return url;
}

/** The template entry for segment `index`: a final `*` covers every remaining segment. */
function templatePart(template: readonly TemplateSegment[], index: number, count: number): TemplateSegment {
  const last = template[template.length - 1];
  const rest = typeof last === 'object' && 'rest' in last;
  if (rest ? count < template.length : count !== template.length) throw new KeywardError('bad_path');
  return template[Math.min(index, template.length - 1)]!;
}

function encodeSegment(segment: string, part: TemplateSegment | undefined): string {
  if (part === undefined || (typeof part === 'object' && 'rest' in part)) return encodeURIComponent(segment);
  if (typeof part === 'string') {
    // The route matched this segment, so it equals the literal; checked again because the ":" is kept.
    if (segment !== part) throw new KeywardError('bad_path');
    return encodeTemplateText(part);
  }
  const { prefix, suffix } = part;
  if (segment.length <= prefix.length + suffix.length || !segment.startsWith(prefix) || !segment.endsWith(suffix)) {
    throw new KeywardError('bad_path');
  }
  const value = segment.slice(prefix.length, segment.length - suffix.length);
  return encodeTemplateText(prefix) + encodeURIComponent(value) + encodeTemplateText(suffix);
}

/** Text from the operator's template: encoded like any segment, except that its ":" stays literal. */
function encodeTemplateText(text: string): string {
  return encodeURIComponent(text).replaceAll('%3A', ':');
}
