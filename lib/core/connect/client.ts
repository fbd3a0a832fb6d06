import 'server-only';
import { decodeJwt } from 'jose';
import * as oauth from 'oauth4webapi';
import { cappedFetch } from '../credential/capped-fetch';
import { expiryOf, OAuthGrantError, type OAuthTokens } from '../credential/oauth';
import type { ConnectionProvider } from './providers';
import { parseScopes } from './providers';

/**
 * The client side of a connection provider, on oauth4webapi: the authorization request (code flow, PKCE S256,
 * state, a nonce when `openid` is asked for), the callback's validation, the code exchange, refresh and
 * revocation. Token responses are read here rather than by oauth4webapi's processors: a connection signs nobody
 * in, so its ID token is not used (only its nonce is compared), and providers bend the format (GitHub and Slack
 * answer errors with HTTP 200, Slack nests the user's token, GitHub separates scopes with commas).
 */

/** Tokens as the provider granted them, with the scopes it says it granted (null: it did not say). */
export interface GrantedTokens extends OAuthTokens {
  readonly scopes: readonly string[] | null;
}

/**
 * A code exchange's tokens, and the account at the provider they act as, when the provider said which: the ID
 * token's `sub` (nonce checked), Slack's `team:user`, GitHub's numeric user id (where its grant API is used).
 * Null otherwise. Not a secret; Connections keeps only a digest of it, to tell whether two Keyward users linked
 * the same account (where revoking one's grant at the provider would end the other's).
 */
export interface ConnectedTokens extends GrantedTokens {
  readonly account: string | null;
}

/** The provider answered, and refused (its `error` code, from a fixed vocabulary of the provider's). */
export class ProviderRefusedError extends Error {
  override readonly name = 'ProviderRefusedError';
  /** `options.cause`: the provider's answer, where there was one (its Retry-After backs off a refresh: OAuthTokenStore). */
  constructor(
    readonly error: string,
    options?: ErrorOptions,
  ) {
    super(`the provider refused: ${error}`, options);
  }
}

export interface AuthorizationRequest {
  readonly url: string;
  readonly state: string;
  readonly codeVerifier: string | null;
  readonly nonce: string | null;
}

export interface ClientOptions {
  /** Replaces fetch for every request to the provider (tests). */
  readonly fetch?: typeof fetch;
  readonly now?: () => number;
}

/** oauth4webapi's request options, as every call here passes them (one fetch for GETs and POSTs alike). */
interface RequestOptions {
  readonly signal: () => AbortSignal;
  readonly [oauth.customFetch]: (
    url: string,
    init: { method: string; headers: Record<string, string>; body?: unknown; signal?: AbortSignal },
  ) => Promise<Response>;
  readonly [oauth.allowInsecureRequests]?: boolean;
}

/** Each request to the provider; the refresh lock (lib/core/credential/oauth.ts LOCK_TTL_MS) outlives three in turn. */
const REQUEST_TIMEOUT_MS = 10_000;
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;
const GITHUB_HEADERS = {
  accept: 'application/vnd.github+json',
  'x-github-api-version': '2022-11-28',
  'user-agent': 'keyward',
} as const;
/** Token endpoint errors that end a grant for good (RFC 6749 §5.2's, and GitHub's and Slack's own names). */
const GRANT_ENDED = new Set([
  'invalid_grant',
  'bad_refresh_token',
  'invalid_refresh_token',
  'token_revoked',
  'token_expired',
  'bad_verification_code',
]);

export class ProviderClient {
  private server: Promise<oauth.AuthorizationServer> | undefined;
  private readonly client: oauth.Client;
  private readonly auth: oauth.ClientAuth;
  private readonly fetch: typeof fetch;
  private readonly now: () => number;

  constructor(
    readonly provider: ConnectionProvider,
    options: ClientOptions = {},
  ) {
    this.client = { client_id: provider.clientId };
    const secret = provider.clientSecret ?? '';
    this.auth =
      provider.clientAuth === 'none'
        ? oauth.None()
        : provider.clientAuth === 'client_secret_post'
          ? oauth.ClientSecretPost(secret)
          : oauth.ClientSecretBasic(secret);
    this.fetch = cappedFetch(options.fetch ?? fetch);
    this.now = options.now ?? Date.now;
  }

  /** Plain-http endpoints are accepted only on loopback (the schema refuses others); oauth4webapi must be told. */
  private options(): RequestOptions {
    const urls = [this.provider.issuer, this.provider.authorizationUrl, this.provider.tokenUrl].filter(
      (u): u is string => u !== null,
    );
    const insecure = urls.some((u) => new URL(u).protocol === 'http:');
    return {
      signal: () => AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      [oauth.customFetch]: (url, init) =>
        this.fetch(url, { ...init, body: init.body as BodyInit | undefined, redirect: 'manual' }),
      ...(insecure ? { [oauth.allowInsecureRequests]: true } : {}),
    };
  }

  /**
   * The authorization server: discovered once from the issuer (OpenID Connect's well-known document, else
   * RFC 8414's), with any configured endpoint taking precedence; or the configured endpoints alone, under a
   * stand-in issuer (such a provider's `iss` response parameter cannot be checked, see validateCallback).
   */
  authorizationServer(): Promise<oauth.AuthorizationServer> {
    this.server ??= this.discover().catch((error: unknown) => {
      this.server = undefined;
      throw error;
    });
    return this.server;
  }

  private async discover(): Promise<oauth.AuthorizationServer> {
    const { provider } = this;
    const configured = {
      ...(provider.authorizationUrl ? { authorization_endpoint: provider.authorizationUrl } : {}),
      ...(provider.tokenUrl ? { token_endpoint: provider.tokenUrl } : {}),
      ...(provider.revocation.kind === 'rfc7009' && provider.revocation.url
        ? { revocation_endpoint: provider.revocation.url }
        : {}),
    };
    if (!provider.issuer) return { issuer: new URL(provider.tokenUrl!).origin, ...configured };
    const issuer = new URL(provider.issuer);
    let discovered: oauth.AuthorizationServer;
    try {
      discovered = await oauth.processDiscoveryResponse(
        issuer,
        await oauth.discoveryRequest(issuer, { ...this.options(), algorithm: 'oidc' }),
      );
    } catch {
      discovered = await oauth.processDiscoveryResponse(
        issuer,
        await oauth.discoveryRequest(issuer, { ...this.options(), algorithm: 'oauth2' }),
      );
    }
    if (!discovered.authorization_endpoint && !configured.authorization_endpoint)
      throw new Error('the discovery document names no authorization endpoint');
    return { ...discovered, ...configured };
  }

  /** The URL to send the user to, with a fresh state, PKCE verifier and (for `openid`) nonce. */
  async authorizationRequest(redirectUri: string, scopes: readonly string[]): Promise<AuthorizationRequest> {
    const as = await this.authorizationServer();
    const url = new URL(as.authorization_endpoint!);
    const state = oauth.generateRandomState();
    const codeVerifier = this.provider.pkce ? oauth.generateRandomCodeVerifier() : null;
    const nonce = scopes.includes('openid') ? oauth.generateRandomNonce() : null;
    for (const [name, value] of Object.entries(this.provider.authorizationParams)) url.searchParams.set(name, value);
    url.searchParams.set('client_id', this.provider.clientId);
    url.searchParams.set('redirect_uri', redirectUri);
    url.searchParams.set('response_type', 'code');
    if (scopes.length > 0)
      url.searchParams.set(this.provider.scopeParam, scopes.join(this.provider.preset === 'slack' ? ',' : ' '));
    url.searchParams.set('state', state);
    if (nonce) url.searchParams.set('nonce', nonce);
    if (codeVerifier) {
      url.searchParams.set('code_challenge', await oauth.calculatePKCECodeChallenge(codeVerifier));
      url.searchParams.set('code_challenge_method', 'S256');
    }
    return { url: url.href, state, codeVerifier, nonce };
  }

  /**
   * The callback's parameters, checked by oauth4webapi: the state, the issuer (RFC 9207) where the provider is
   * known by one, and an error response (thrown as oauth.AuthorizationResponseError). A provider configured by
   * endpoints has no issuer to compare `iss` with; RFC 9207 §2.4 has such clients ignore it.
   */
  async validateCallback(parameters: URLSearchParams, expectedState: string): Promise<URLSearchParams> {
    const as = await this.authorizationServer();
    const params = new URLSearchParams(parameters);
    if (!this.provider.issuer) params.delete('iss');
    return oauth.validateAuthResponse(as, this.client, params, expectedState);
  }

  /** Exchanges the code (with the PKCE verifier); checks the ID token's nonce when one was sent. */
  async exchangeCode(
    callback: URLSearchParams,
    redirectUri: string,
    codeVerifier: string | null,
    nonce: string | null,
  ): Promise<ConnectedTokens> {
    const as = await this.authorizationServer();
    // The token's lifetime counts from when the provider issued it: when the request was sent, not answered.
    const sentAt = this.now();
    const response = await oauth.authorizationCodeGrantRequest(
      as,
      this.client,
      this.auth,
      callback,
      redirectUri,
      codeVerifier ?? oauth.nopkce,
      this.options(),
    );
    const body = await readTokenBody(response);
    const slack = this.provider.tokenShape === 'slack-user';
    const tokens = tokensFrom(slack ? slackUserToken(body) : body, sentAt);
    let account: string | null = slack ? slackAccount(body) : null;
    if (nonce && typeof body.id_token === 'string') {
      // Received straight from the token endpoint over TLS, so its signature need not be checked (OIDC Core
      // §3.1.3.7); its nonce ties it to this authorization request.
      let claims: Record<string, unknown>;
      try {
        claims = decodeJwt(body.id_token);
      } catch {
        throw new ProviderRefusedError('invalid_id_token');
      }
      if (claims.nonce !== nonce) throw new ProviderRefusedError('nonce_mismatch');
      account = accountId(claims.sub);
    }
    if (account === null && this.provider.revocation.kind === 'github-grant')
      account = await this.githubUserId(this.provider.revocation.apiUrl, tokens.accessToken);
    return { ...tokens, account };
  }

  /**
   * GitHub's id of the user a token acts as (GET /user), so a disconnect can tell whether another Keyward user
   * linked the same GitHub account (see revokeOwn). Null when GitHub does not answer with one: the connect still
   * completes, and its disconnect deletes the grant as before.
   */
  private async githubUserId(apiUrl: string, accessToken: string): Promise<string | null> {
    try {
      const response = await this.fetch(`${apiUrl}/user`, {
        headers: { ...GITHUB_HEADERS, authorization: `Bearer ${accessToken}` },
        redirect: 'manual',
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
      if (response.status !== 200) {
        await response.body?.cancel();
        return null;
      }
      const user = JSON.parse(await readCapped(response, MAX_TOKEN_RESPONSE_BYTES)) as { id?: unknown } | null;
      return typeof user?.id === 'number' && Number.isSafeInteger(user.id) ? String(user.id) : null;
    } catch {
      return null;
    }
  }

  /** The refresh_token grant. Throws OAuthGrantError when the provider ends the grant for good. */
  async refresh(refreshToken: string): Promise<GrantedTokens> {
    const as = await this.authorizationServer();
    const sentAt = this.now();
    const response = await oauth.refreshTokenGrantRequest(as, this.client, this.auth, refreshToken, this.options());
    let body: Record<string, unknown>;
    try {
      body = await readTokenBody(response);
    } catch (error) {
      if (error instanceof ProviderRefusedError && GRANT_ENDED.has(error.error)) throw new OAuthGrantError(error.error);
      throw error;
    }
    return tokensFrom(body, sentAt);
  }

  /** Whether disconnecting can revoke anything at this provider (its preset's way, or a discovered RFC 7009 endpoint). */
  async canRevoke(): Promise<boolean> {
    const { revocation } = this.provider;
    if (revocation.kind === 'none') return false;
    if (revocation.kind !== 'rfc7009' || revocation.url) return true;
    return Boolean((await this.authorizationServer()).revocation_endpoint);
  }

  /**
   * Revokes a grant at the provider on disconnect: the refresh token first (RFC 7009 §2.1: its access tokens go
   * with it where the server supports that), then the access token, also when the first was refused. GitHub and
   * Slack take the access token alone, which must still be valid: see `live`. True when the provider confirmed;
   * throws the first refusal (or a failed refresh) otherwise.
   */
  async revoke(tokens: OAuthTokens): Promise<boolean> {
    const { revocation } = this.provider;
    switch (revocation.kind) {
      case 'none':
        return false;
      case 'rfc7009': {
        const as = await this.authorizationServer();
        if (!as.revocation_endpoint) return false;
        const revokeToken = async (token: string, hint: string) => {
          const response = await oauth.revocationRequest(as, this.client, this.auth, token, {
            ...this.options(),
            additionalParameters: { token_type_hint: hint },
          });
          await oauth.processRevocationResponse(response);
        };
        let refused: unknown = null;
        if (tokens.refreshToken) await revokeToken(tokens.refreshToken, 'refresh_token').catch((error: unknown) => (refused = error));
        await revokeToken(tokens.accessToken, 'access_token').catch((error: unknown) => {
          // Google ends a refresh token's access tokens with it, then answers 400 invalid_token for one of them
          // (RFC 7009 §2.2 asks for 200): once the refresh token was revoked, that is confirmation.
          const ended = tokens.refreshToken && refused === null && error instanceof oauth.ResponseBodyError && error.error === 'invalid_token';
          if (!ended) refused ??= error;
        });
        if (refused !== null) throw refused;
        return true;
      }
      case 'github-grant':
        return this.deleteGithubApp(revocation.apiUrl, 'grant', await this.live(tokens));
      case 'slack':
        return this.slackRevoke(revocation.url, (await this.live(tokens)).accessToken);
    }
  }

  /**
   * Tokens whose access token is still valid, for revocations that authenticate with it (GitHub's grant API,
   * Slack's auth.revoke): an expired one is refused there (GitHub answers 404, as for a grant already gone), and
   * the grant and its refresh token stay alive at the provider. GitHub App user tokens expire after 8 hours, so a
   * connection left idle that long has one. Refreshed first, once, by the refresh_token grant a call's refresh
   * uses; a failed refresh is thrown (nothing revoked). Without a refresh token, sent as it is.
   */
  private async live(tokens: OAuthTokens): Promise<OAuthTokens> {
    if (!tokens.refreshToken || !this.expired(tokens)) return tokens;
    const next = await this.refresh(tokens.refreshToken);
    return { ...next, refreshToken: next.refreshToken ?? tokens.refreshToken };
  }

  /** Expired, or expiring before a request sent now may be answered. 0: the provider did not say (never expires). */
  private expired(tokens: OAuthTokens): boolean {
    return tokens.expiresAt !== 0 && tokens.expiresAt - REQUEST_TIMEOUT_MS <= this.now();
  }

  /**
   * Revokes only these tokens, leaving the rest of the grant: for a provider account another Keyward user linked
   * too, whose tokens belong to the same grant. GitHub deletes one token (DELETE /applications/{client_id}/token);
   * nothing else offers that reliably (an RFC 7009 server or Slack may end the whole grant for any of its tokens),
   * so elsewhere nothing is revoked (false) and the tokens are only deleted from the store.
   */
  async revokeOwn(tokens: OAuthTokens): Promise<boolean> {
    const { revocation } = this.provider;
    if (revocation.kind !== 'github-grant') return false;
    return this.deleteGithubApp(revocation.apiUrl, 'token', await this.live(tokens));
  }

  /**
   * GitHub: DELETE /applications/{client_id}/grant with the client's credentials (Basic) and the token in the
   * body ends the whole authorization, every token of it; /token ends that token alone. 404: already gone, when
   * the token sent was valid; for an expired one GitHub answers 404 too, and the grant may well be alive.
   * https://docs.github.com/en/rest/apps/oauth-applications#delete-an-app-authorization
   */
  private async deleteGithubApp(apiUrl: string, what: 'grant' | 'token', tokens: OAuthTokens): Promise<boolean> {
    const status = await this.githubApp(apiUrl, what, tokens.accessToken);
    if (status === 204 || (status === 404 && !this.expired(tokens))) return true;
    throw new Error(`GitHub answered ${status} to the ${what} deletion${status === 404 ? ' of an expired token' : ''}`);
  }

  /** Whether `revokedAtProvider` can tell: GitHub's API (the github preset). */
  get checksTokens(): boolean {
    return this.provider.revocation.kind === 'github-grant';
  }

  /**
   * Whether the provider says this access token no longer works (the user revoked the app, or it was deleted):
   * GitHub's `GET /user` with the token itself answers 401 for a token that is not valid, 200 for one that is. Asked
   * with the token rather than through "Check a token" (POST /applications/{client_id}/token), which needs the
   * app's client secret and answers 404 both for a dead token and for a wrong or rotated secret: that would end
   * every user's connection for the operator's mistake. False where the provider cannot tell (checksTokens); any
   * other answer is thrown (not known).
   */
  async revokedAtProvider(accessToken: string): Promise<boolean> {
    const { revocation } = this.provider;
    if (revocation.kind !== 'github-grant') return false;
    const response = await this.fetch(`${revocation.apiUrl}/user`, {
      headers: { ...GITHUB_HEADERS, authorization: `Bearer ${accessToken}` },
      redirect: 'manual',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    await response.body?.cancel();
    if (response.status === 200) return false;
    if (response.status === 401) return true;
    throw new Error(`GitHub answered ${response.status} to GET /user with the token`);
  }

  /**
   * A DELETE of GitHub's OAuth app API about one token (`/applications/{client_id}/grant` or `/token`): the
   * client's id and secret (Basic), the token in the body. Its status; the body is not read.
   */
  private async githubApp(apiUrl: string, what: 'grant' | 'token', accessToken: string): Promise<number> {
    const basic = Buffer.from(`${this.provider.clientId}:${this.provider.clientSecret ?? ''}`).toString('base64');
    const response = await this.fetch(`${apiUrl}/applications/${encodeURIComponent(this.provider.clientId)}/${what}`, {
      method: 'DELETE',
      headers: { ...GITHUB_HEADERS, authorization: `Basic ${basic}`, 'content-type': 'application/json' },
      body: JSON.stringify({ access_token: accessToken }),
      redirect: 'manual',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    await response.body?.cancel();
    return response.status;
  }

  /** Slack: auth.revoke with the token itself; `{"ok": true}` confirms. https://api.slack.com/methods/auth.revoke */
  private async slackRevoke(url: string, accessToken: string): Promise<boolean> {
    const response = await this.fetch(url, {
      method: 'POST',
      headers: { authorization: `Bearer ${accessToken}`, 'content-type': 'application/x-www-form-urlencoded' },
      body: '',
      redirect: 'manual',
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    const body = (await response.json().catch(() => null)) as { ok?: unknown } | null;
    if (body?.ok === true) return true;
    throw new Error(`Slack answered ${response.status} to auth.revoke`);
  }
}

/**
 * A token endpoint's JSON body. An `error` member is a refusal whatever the status (GitHub and Slack answer 200);
 * its code is kept only if it looks like one (it ends up in logs), never the description.
 */
/** Its errors carry the answer as `cause`, so a refresh that failed is backed off for the answer's Retry-After. */
async function readTokenBody(response: Response): Promise<Record<string, unknown>> {
  const text = await readCapped(response, MAX_TOKEN_RESPONSE_BYTES);
  const answered = { cause: response };
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`the token endpoint answered ${response.status} without JSON`, answered);
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new Error(`the token endpoint answered ${response.status} without a JSON object`, answered);
  const object = body as Record<string, unknown>;
  if (typeof object.error === 'string' || object.ok === false) {
    const code =
      typeof object.error === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(object.error)
        ? object.error
        : 'invalid_response';
    throw new ProviderRefusedError(code, answered);
  }
  if (response.status !== 200) throw new Error(`the token endpoint answered ${response.status}`, answered);
  return object;
}

async function readCapped(response: Response, maxBytes: number): Promise<string> {
  const reader = response.body?.getReader();
  if (!reader) return '';
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel();
      throw new Error('the token response is too large');
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Slack's code exchange: the user's own token under `authed_user`. The top-level token is the app's bot token,
 * the workspace's, not this user's: stored as theirs it would let them call as the bot, and their disconnect
 * (`auth.revoke`) would revoke the bot for the whole workspace. Without a user token the connect is refused.
 */
function slackUserToken(body: Record<string, unknown>): Record<string, unknown> {
  const user = body.authed_user;
  if (user && typeof user === 'object' && typeof (user as Record<string, unknown>).access_token === 'string')
    return user as Record<string, unknown>;
  throw new ProviderRefusedError('no_user_token');
}

/** Slack's user in the code exchange (`authed_user.id`), with its workspace (`team.id`): ids are per workspace. */
function slackAccount(body: Record<string, unknown>): string | null {
  const user = accountId((body.authed_user as Record<string, unknown> | undefined)?.id);
  const team = body.team && typeof body.team === 'object' ? accountId((body.team as Record<string, unknown>).id) : null;
  return user === null ? null : `${team ?? ''}:${user}`;
}

/** A provider's account id as it came (a string of at most 255 characters), or null. */
function accountId(value: unknown): string | null {
  return typeof value === 'string' && value.length > 0 && value.length <= 255 ? value : null;
}

function tokensFrom(body: Record<string, unknown>, now: number): GrantedTokens {
  // The provider answered, with something Keyward cannot use: a refusal of its own (the connect's
  // `provider_error`: trying again would not help), not an outage.
  if (typeof body.access_token !== 'string' || body.access_token === '') throw new ProviderRefusedError('no_access_token');
  // It is sent in a header: visible ASCII only (RFC 6749 §A.12 allows a space, which no header value can carry
  // as a token). A line break would fail every call as the upstream's outage, with the connection shown as fine.
  if (!/^[\x21-\x7e]+$/.test(body.access_token)) throw new ProviderRefusedError('invalid_access_token');
  // Keyward sends the token as a Bearer token: a DPoP-bound one could not be used without the key that asked for it
  // (Keyward sends none), nor a token of another type (MAC). Slack calls its user tokens `user`.
  const type = typeof body.token_type === 'string' ? body.token_type.toLowerCase() : null;
  if (type !== null && type !== 'bearer' && type !== 'user') throw new ProviderRefusedError('unsupported_token_type');
  const expiresIn =
    typeof body.expires_in === 'number'
      ? body.expires_in
      : typeof body.expires_in === 'string'
        ? Number(body.expires_in)
        : NaN;
  return {
    accessToken: body.access_token,
    refreshToken: typeof body.refresh_token === 'string' && body.refresh_token !== '' ? body.refresh_token : null,
    expiresAt: expiryOf(expiresIn, now),
    scopes: typeof body.scope === 'string' ? parseScopes(body.scope) : null,
  };
}
