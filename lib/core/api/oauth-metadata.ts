import { KeywardError, endpointOff } from '../errors';
import { authorizationServerMetadata } from '../mobile/metadata';
import type { Runtime } from '../runtime';
import { apiHandler, requireRead } from './guard';

/**
 * GET /.well-known/oauth-authorization-server (RFC 8414): how an OAuth client finds the mobile token exchange.
 * It exists when the exchange does (KEYWARD_MOBILE_REDIRECT_URIS); errors here are Keyward's JSON errors.
 */
export function handleOAuthMetadata(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (!runtime.mobile.enabled) throw endpointOff('The mobile token exchange', 'KEYWARD_MOBILE_REDIRECT_URIS');
    requireRead(request);
    // AUTH_URL's origin, or the trusted Host's (DESIGN.md "The public origin"); without either, there is no
    // issuer to state (fail closed; production refuses to start in that state anyway).
    const issuer = runtime.allowedOrigins.publicOrigin(request);
    if (issuer === null) throw new KeywardError('service_unavailable');
    return Response.json(authorizationServerMetadata(issuer), {
      // Private: with a trusted Host the issuer follows the request's host, which a shared cache must not mix up.
      headers: { 'cache-control': 'private, max-age=300', 'x-content-type-options': 'nosniff' },
    });
  });
}
