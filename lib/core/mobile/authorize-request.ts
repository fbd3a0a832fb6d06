import { OAuthError } from './oauth-error';

/**
 * Who asked: the registered redirect URI, the `state` to send back and the optional `client_id`. Once these
 * are known to be good, every later error goes back to the app at that URI (RFC 6749 §4.1.2.1); before,
 * nothing is redirected anywhere.
 */
export interface AuthorizeClient {
  readonly redirectUri: string;
  /** Sent back as received, or null when the request had none (or one that cannot be: see readAuthorizeClient). */
  readonly state: string | null;
  /**
   * Keyward has no client registry: the registered redirect URIs are the apps. A `client_id` is accepted
   * (AppAuth and RFC 6749 send one) and bound to the code and its tokens, so the token request must name the
   * same one.
   */
  readonly clientId: string | null;
}

export interface AuthorizeRequest extends AuthorizeClient {
  /** BASE64URL(SHA-256(code_verifier)), RFC 7636 §4.2. */
  readonly challenge: string;
}

const CHALLENGE = /^[A-Za-z0-9_-]{43}$/;
/** RFC 6749 Appendix A.1: client_id is VSCHAR (printable ASCII). */
const CLIENT_ID = /^[\x20-\x7e]{1,255}$/;
const MAX_STATE = 512;

/**
 * The parameters the authorize endpoint reads (and the consent form carries back). RFC 6749 §3.1: none may
 * appear twice; one sent empty counts as absent.
 */
export const PARAMETERS = [
  'redirect_uri',
  'client_id',
  'state',
  'response_type',
  'code_challenge',
  'code_challenge_method',
] as const;
type Parameter = (typeof PARAMETERS)[number];

/**
 * The request's PARAMETERS and nothing else, in the order sent: what is carried through the sign-in and the
 * consent page. Others are ignored (RFC 6749 §3.1), so they are not carried either: a link padded with them
 * would pass Node's 16 KiB header limit once encoded into the sign-in's `callbackUrl`.
 */
export function authorizeParams(query: URLSearchParams): URLSearchParams {
  return new URLSearchParams([...query].filter(([name]) => (PARAMETERS as readonly string[]).includes(name)));
}

/**
 * Step 1: the redirect URI and the client. Any problem here is answered to the browser, never redirected:
 * redirecting to an unregistered URI would hand the code (or the user) to whoever named it.
 */
export function readAuthorizeClient(query: URLSearchParams, isRegistered: (uri: string) => boolean): AuthorizeClient {
  const redirectUri = single(query, 'redirect_uri');
  if (redirectUri === null || !isRegistered(redirectUri)) {
    throw new OAuthError('invalid_request', 'redirect_uri is missing or not registered for the mobile token exchange.');
  }
  const clientId = single(query, 'client_id');
  if (clientId !== null && !CLIENT_ID.test(clientId)) {
    throw new OAuthError('invalid_request', 'client_id must be 1 to 255 printable ASCII characters.');
  }
  // A repeated state, or one longer than MAX_STATE, cannot be sent back as it came (RFC 6749 §4.1.2: exactly):
  // it is left out (null), and the request fails in step 2.
  const state = single(query, 'state');
  return { redirectUri, clientId, state: state === null || state.length > MAX_STATE ? null : state };
}

/** Step 2, for a known-good client: what it asks for. Errors here are redirected back to the app. */
export function readAuthorizeRequest(query: URLSearchParams, client: AuthorizeClient): AuthorizeRequest {
  for (const name of PARAMETERS) {
    if (query.getAll(name).length > 1)
      throw new OAuthError('invalid_request', `${name} must not be sent more than once.`);
  }
  if ((single(query, 'state')?.length ?? 0) > MAX_STATE)
    throw new OAuthError('invalid_request', `state must be at most ${MAX_STATE} characters.`);
  // RFC 6749 requires response_type=code; Keyward's first apps never sent it, so absent still means code.
  const responseType = single(query, 'response_type');
  if (responseType !== null && responseType !== 'code') {
    throw new OAuthError('unsupported_response_type', 'Only response_type=code is supported.');
  }
  // RFC 7636 §4.4.1: a server that requires PKCE answers invalid_request without it (plain included).
  const challenge = single(query, 'code_challenge');
  if (single(query, 'code_challenge_method') !== 'S256' || challenge === null || !CHALLENGE.test(challenge)) {
    throw new OAuthError('invalid_request', 'A PKCE code_challenge with code_challenge_method=S256 is required.');
  }
  return { ...client, challenge };
}

/**
 * Where the browser goes back to the app: the registered redirect URI with the response's fields, `state` when
 * the request had one, and `iss` (RFC 9207), which tells the app which server answered (mix-up defence).
 */
export function callbackLocation(
  client: AuthorizeClient,
  fields: Record<string, string>,
  issuer: string | null,
): string {
  const target = new URL(client.redirectUri);
  for (const [name, value] of Object.entries(fields)) target.searchParams.set(name, value);
  if (client.state !== null) target.searchParams.set('state', client.state);
  if (issuer !== null) target.searchParams.set('iss', issuer);
  return target.href;
}

function single(query: URLSearchParams, name: Parameter): string | null {
  const values = query.getAll(name);
  if (values.length > 1) {
    if (name === 'redirect_uri' || name === 'client_id') {
      throw new OAuthError('invalid_request', `${name} must not be sent more than once.`);
    }
    return null;
  }
  const value = values[0];
  return value === undefined || value === '' ? null : value;
}
