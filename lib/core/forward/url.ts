import { KeywardError } from '../errors';
import type { Upstream } from '../upstream/registry';

/**
 * Builds the upstream URL by appending each (validated) segment, percent-encoded, to the upstream's fixed
 * base, then asserts that the result kept the base origin and stayed under the base path. Never
 * `new URL(path, base)`: a path such as `//evil.com` or `https:%2F%2Fevil.com` would change the host.
 * The result has no query and no fragment; `withQuery` adds the client's validated query afterwards.
 */
export function buildUpstreamUrl(upstream: Pick<Upstream, 'base' | 'origin' | 'basePath'>, segments: readonly string[]): URL {
  let path = upstream.basePath;
  for (let i = 0; i < segments.length; i++) {
    if (i > 0) path += '/';
    path += encodeURIComponent(segments[i]!);
  }
  const url = new URL(upstream.base.href);
  url.pathname = path;
  url.search = '';
  url.hash = '';
  if (url.origin !== upstream.origin || !url.pathname.startsWith(upstream.basePath) || url.search || url.hash) {
    throw new KeywardError('bad_path');
  }
  // `.`/`..` would be normalised away by the URL parser; segment validation refuses them and this
  // check makes sure no normalisation happened at all.
  if (url.pathname !== path) throw new KeywardError('bad_path');
  return url;
}
