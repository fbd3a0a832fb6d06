import 'server-only';
import { KeywardError } from '../errors';
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
    // Compared without case: some upstreams read parameter names case-insensitively (?API_KEY= would count).
    const reserved = credential.queryName.toLowerCase();
    if ([...url.searchParams.keys()].some((name) => name.toLowerCase() === reserved)) {
      throw new KeywardError('bad_request', { message: 'The request sets a query parameter reserved for the credential.' });
    }
    url.searchParams.append(credential.queryName, credential.queryValue);
  }
}
