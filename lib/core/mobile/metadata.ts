import { DPOP_ALGORITHMS } from '../dpop/algorithms';

/** Where the token exchange lives (app/api/session/…); the metadata document names them as absolute URLs. */
export const AUTHORIZE_PATH = '/api/session/mobile/authorize';
export const TOKEN_PATH = '/api/session/token';
/** Token revocation (RFC 7009), beside the token endpoint. */
export const REVOCATION_PATH = '/api/session/token/revoke';
/** RFC 8414 §3: for an issuer without a path, the document is at this path of its origin. */
export const METADATA_PATH = '/.well-known/oauth-authorization-server';

/**
 * Authorization server metadata (RFC 8414 §2) for the native-app token exchange: only what the endpoints
 * really do (lib/core/api/mobile.ts, lib/core/mobile/tokens.ts), so a client that configures itself from it
 * (AppAuth, oauth4webapi) sends what Keyward accepts. The issuer is the public origin, not `request.url`.
 *
 * Left out on purpose: `scopes_supported` (a `scope` parameter is ignored: tokens carry the user's roles),
 * `jwks_uri` (access tokens are sealed, not signed JWTs, and there is no ID token).
 */
export function authorizationServerMetadata(issuer: string): Record<string, unknown> {
  return {
    issuer,
    authorization_endpoint: `${issuer}${AUTHORIZE_PATH}`,
    token_endpoint: `${issuer}${TOKEN_PATH}`,
    response_types_supported: ['code'],
    response_modes_supported: ['query'],
    grant_types_supported: ['authorization_code', 'refresh_token'],
    code_challenge_methods_supported: ['S256'],
    // Apps are public clients (RFC 8252 §8.4): no client secret, PKCE instead.
    token_endpoint_auth_methods_supported: ['none'],
    // RFC 7009 (RFC 8414 §2): the app's sign-out, with its refresh token or its access token.
    revocation_endpoint: `${issuer}${REVOCATION_PATH}`,
    revocation_endpoint_auth_methods_supported: ['none'],
    // RFC 9207: every authorization response (code or error) carries `iss`.
    authorization_response_iss_parameter_supported: true,
    // RFC 9449 §5.1: DPoP proofs are accepted at the token endpoint (binding is optional or required per deployment).
    dpop_signing_alg_values_supported: [...DPOP_ALGORITHMS],
  };
}
