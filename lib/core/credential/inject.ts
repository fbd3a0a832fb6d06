import 'server-only';
import { KeywardError } from '../errors';
import { hasQueryParam } from '../forward/query';
import type { ResolvedCredential } from '../upstream/registry';

/**
 * Attaches the server-held credential. Runs after the client's headers were filtered, so the client can
 * neither supply nor override it; a client query parameter with the credential's name is refused.
 */
export function injectCredential(credential: ResolvedCredential, headers: Record<string, string>, url: URL): void {
  if (credential.headerName && credential.headerValue) {
    headers[credential.headerName] = credential.headerValue;
  }
  if (credential.queryName && credential.queryValue) {
    // Compared the way a lenient upstream reads names (case, `key[]`, `key%00`, `KEY+`: lib/core/forward/query.ts).
    if (hasQueryParam(url.searchParams, credential.queryName)) {
      throw new KeywardError('bad_request', { message: 'The request sets a query parameter reserved for the credential.' });
    }
    url.searchParams.append(credential.queryName, credential.queryValue);
  }
}
