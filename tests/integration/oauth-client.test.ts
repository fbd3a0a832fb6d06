import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as oauth from 'oauth4webapi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signIn, startApp, startFastLane, type AppServer, type StartOptions } from '../fixtures/app-server';
import { findLeak } from '../fixtures/claims-session';
import { writeConfigFile } from '../fixtures/config';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';

/**
 * Issue 15, part 4: an unmodified, standards-following OAuth client (oauth4webapi, the library behind many
 * AppAuth-style integrations) uses Keyward's mobile token exchange with nothing Keyward-specific but the
 * issuer URL: discovery (RFC 8414), authorization code + PKCE S256 with state and iss (RFC 9207), the token
 * exchange, refresh rotation, DPoP-bound tokens (RFC 9449, with the server's nonce) on the proxy, and OAuth
 * errors it surfaces as such.
 *
 * Over real HTTP against the production build, through both doors (`next start` and `npm start`, the fast
 * lane, which hands /.well-known and /api/session to Next); `npm test` builds first, this file builds nothing.
 * The user signs in for real (Auth.js credentials callback) and the browser step is a GET with that session
 * cookie, as the system browser would make it.
 *
 * oauth4webapi refuses http:// endpoints unless told otherwise; the servers here listen on loopback without
 * TLS, so each request passes its documented `allowInsecureRequests` option. Nothing else is relaxed.
 */
const APP_REDIRECT = 'com.example.keyward:/oauth/callback';
const CLIENT: oauth.Client = { client_id: 'com.example.keyward' };
const insecure = { [oauth.allowInsecureRequests]: true } as const;
const echoKey = randomSecret('echo');
const password = randomSecret('pw');
const sessionSecrets = testSessionSecrets();

let upstream: TestUpstream;
let env: Record<string, string>;

beforeAll(async () => {
  upstream = await startUpstream();
  env = {
    ...sessionSecrets,
    ECHO_KEY: echoKey,
    KEYWARD_MOBILE_REDIRECT_URIS: APP_REDIRECT,
    KEYWARD_USERS_FILE: await writeUsersFile([{ username: 'alice', password, roles: ['user'] }]),
    KEYWARD_CONFIG: writeConfigFile({
      upstreams: {
        echo: {
          baseUrl: `${upstream.origin}/v1/`,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
          routes: [{ method: 'GET', path: '/items/:id', roles: ['user'] }],
        },
      },
    }),
  };
});

afterAll(async () => {
  await upstream?.close();
});

const doors: Array<[string, (env: Record<string, string>, options?: StartOptions) => Promise<AppServer>]> = [
  ['next start (route handlers)', startApp],
  ['npm start (the fast lane)', startFastLane],
];

describe.each(doors)('an unmodified OAuth client (oauth4webapi) through %s', (_door, start) => {
  let app: AppServer;
  let cookie: string;
  let issuer: URL;
  let as: oauth.AuthorizationServer;
  /** Every code and token this server issued: none may appear in its output. */
  const issued: string[] = [];

  beforeAll(async () => {
    app = await start({
      ...env,
      KEYWARD_STORE_PATH: join(mkdtempSync(join(tmpdir(), 'keyward-oauth-client-')), 'keyward.db'),
    });
    cookie = await signIn(app.url, 'alice', password);
    issuer = new URL(app.url);
  }, 120_000);

  afterAll(async () => {
    await app?.stop();
    if (app)
      expect(
        findLeak(app.output(), [
          ...issued,
          password,
          echoKey,
          sessionSecrets.AUTH_SECRET,
          sessionSecrets.KEYWARD_SESSION_SECRET,
        ]),
      ).toBeNull();
  });

  /**
   * The browser step: the authorization URL opened with the signed-in session. A private-use scheme proves no
   * app, so a good request lands on the consent page first; the user allows, which posts the page's own form
   * (its hidden fields, as rendered) from this origin. Returns the redirect to the app.
   */
  async function openInBrowser(url: URL): Promise<URL> {
    const response = await fetch(url, { headers: { cookie }, redirect: 'manual' });
    await response.arrayBuffer();
    expect(response.status).toBe(302);
    const consentPage = new URL(response.headers.get('location')!, app.url);
    // A request the endpoint refuses goes straight back to the app with its error.
    if (consentPage.pathname !== '/authorize') return consentPage;
    // The browser keeps the cookie the endpoint set with that redirect: the page and its post need it.
    const asked = response.headers.getSetCookie().map((line) => line.split(';')[0]!);
    const withAsked = [cookie, ...asked].join('; ');
    const page = await fetch(consentPage, { headers: { cookie: withAsked } });
    const html = await page.text();
    expect(page.status).toBe(200);
    expect(html).toContain('Sign in to an app?');
    const form = new URLSearchParams(hiddenFields(html));
    expect(form.get('redirect_uri')).toBe(APP_REDIRECT);
    form.set('decision', 'allow');
    const allowed = await fetch(`${app.url}/api/session/mobile/authorize`, {
      method: 'POST',
      headers: { cookie: withAsked, origin: new URL(app.url).origin, 'content-type': 'application/x-www-form-urlencoded' },
      body: form.toString(),
      redirect: 'manual',
    });
    await allowed.arrayBuffer();
    expect(allowed.status).toBe(303);
    const location = new URL(allowed.headers.get('location')!);
    expect(`${location.protocol}${location.pathname}`).toBe(APP_REDIRECT);
    return location;
  }

  function authorizationUrl(params: Record<string, string>): URL {
    const url = new URL(as.authorization_endpoint!);
    for (const [name, value] of Object.entries({
      client_id: CLIENT.client_id,
      redirect_uri: APP_REDIRECT,
      response_type: 'code',
      ...params,
    })) {
      url.searchParams.set(name, value);
    }
    return url;
  }

  /** Authorization code + PKCE up to the validated callback parameters. */
  async function authorize(): Promise<{ callback: URLSearchParams; verifier: string }> {
    const verifier = oauth.generateRandomCodeVerifier();
    const state = oauth.generateRandomState();
    const url = authorizationUrl({
      code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state,
    });
    const callback = oauth.validateAuthResponse(as, CLIENT, await openInBrowser(url), state);
    issued.push(callback.get('code')!);
    return { callback, verifier };
  }

  async function exchange(
    callback: URLSearchParams,
    verifier: string,
    DPoP?: oauth.DPoPHandle,
  ): Promise<oauth.TokenEndpointResponse> {
    const response = await oauth.authorizationCodeGrantRequest(
      as,
      CLIENT,
      oauth.None(),
      callback,
      APP_REDIRECT,
      verifier,
      { ...insecure, DPoP },
    );
    const tokens = await oauth.processAuthorizationCodeResponse(as, CLIENT, response);
    issued.push(tokens.access_token, tokens.refresh_token!);
    return tokens;
  }

  async function refresh(refreshToken: string, DPoP?: oauth.DPoPHandle): Promise<oauth.TokenEndpointResponse> {
    const response = await oauth.refreshTokenGrantRequest(as, CLIENT, oauth.None(), refreshToken, {
      ...insecure,
      DPoP,
    });
    const tokens = await oauth.processRefreshTokenResponse(as, CLIENT, response);
    issued.push(tokens.access_token, tokens.refresh_token!);
    return tokens;
  }

  async function callProxy(accessToken: string): Promise<number> {
    const response = await fetch(`${app.url}/api/proxy/echo/items/1`, {
      headers: { authorization: `Bearer ${accessToken}` },
    });
    await response.arrayBuffer();
    return response.status;
  }

  /**
   * oauth4webapi's documented DPoP nonce flow (RFC 9449 §8): the server's `use_dpop_nonce` surfaces as an error
   * whose DPoP-Nonce the handle has already kept; the request is made once more.
   */
  async function withNonceRetry<T>(run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      if (!oauth.isDPoPNonceError(error)) throw error;
      return run();
    }
  }

  /** A proxied call as oauth4webapi makes it for a DPoP client: `Authorization: DPoP` and a fresh proof. */
  async function callProxyWithDPoP(accessToken: string, DPoP: oauth.DPoPHandle): Promise<number> {
    try {
      const url = new URL(`${app.url}/api/proxy/echo/items/1`);
      const response = await oauth.protectedResourceRequest(accessToken, 'GET', url, new Headers(), null, {
        ...insecure,
        DPoP,
      });
      await response.arrayBuffer();
      return response.status;
    } catch (error) {
      // A 401 with a WWW-Authenticate challenge: the client reports the challenge itself.
      if (!(error instanceof oauth.WWWAuthenticateChallengeError)) throw error;
      expect(error.cause[0]).toMatchObject({ scheme: 'dpop', parameters: { error: 'invalid_dpop_proof' } });
      return error.response.status;
    }
  }

  /** What oauth4webapi threw, for asserting on its OAuth error class and code. */
  async function failure(run: () => Promise<unknown>): Promise<unknown> {
    try {
      await run();
    } catch (error) {
      return error;
    }
    throw new Error('expected the OAuth client to throw');
  }

  it('discovers the server from the issuer alone (RFC 8414, /.well-known/oauth-authorization-server)', async () => {
    const response = await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure });
    as = await oauth.processDiscoveryResponse(issuer, response);
    expect(as.issuer).toBe(app.url);
    expect(as.authorization_endpoint).toBe(`${app.url}/api/session/mobile/authorize`);
    expect(as.token_endpoint).toBe(`${app.url}/api/session/token`);
    expect(as.code_challenge_methods_supported).toEqual(['S256']);
    expect(as.token_endpoint_auth_methods_supported).toEqual(['none']);
    expect(as.grant_types_supported).toEqual(['authorization_code', 'refresh_token']);
    expect(as.authorization_response_iss_parameter_supported).toBe(true);
    expect(as.revocation_endpoint).toBe(`${app.url}/api/session/token/revoke`);
  });

  it('behind a proxy that forwards the real host name, the issuer is that public origin, not the internal address', async () => {
    // startApp sets AUTH_TRUST_HOST=true, as a deployment behind Vercel or a load balancer has it.
    const response = await fetch(`${app.url}/.well-known/oauth-authorization-server`, {
      headers: { 'x-forwarded-host': 'keyward.example.com', 'x-forwarded-proto': 'https' },
    });
    const body = (await response.json()) as Record<string, string>;
    expect(body.issuer).toBe('https://keyward.example.com');
    expect(body.authorization_endpoint).toBe('https://keyward.example.com/api/session/mobile/authorize');
    expect(body.token_endpoint).toBe('https://keyward.example.com/api/session/token');
  });

  it('authorization code + PKCE → tokens that work on the proxy; a refresh rotates them', async () => {
    const { callback, verifier } = await authorize();
    expect(callback.get('code')).toMatch(/^kwc_/);
    const tokens = await exchange(callback, verifier);
    expect(tokens.token_type).toBe('bearer');
    expect(tokens.expires_in).toBeGreaterThan(0);
    expect(await callProxy(tokens.access_token)).toBe(200);
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(echoKey);

    const renewed = await refresh(tokens.refresh_token!);
    expect(renewed.refresh_token).not.toBe(tokens.refresh_token);
    expect(await callProxy(renewed.access_token)).toBe(200);
  });

  it('DPoP (RFC 9449): with a key pair, the same client gets bound tokens, calls the proxy and refreshes', async () => {
    const DPoP = oauth.DPoP(CLIENT, await oauth.generateKeyPair('ES256'));
    const { callback, verifier } = await authorize();
    // The token endpoint asks for a nonce first; the client signs again with it.
    const tokens = await withNonceRetry(() => exchange(callback, verifier, DPoP));
    expect(tokens.token_type).toBe('dpop');
    expect(await callProxyWithDPoP(tokens.access_token, DPoP)).toBe(200);
    expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(echoKey);
    expect(upstream.requests.at(-1)!.headers.dpop).toBeUndefined();
    // Copied without the key, the token is useless: as Bearer, or with another key's proofs.
    expect(await callProxy(tokens.access_token)).toBe(401);
    const thief = oauth.DPoP(CLIENT, await oauth.generateKeyPair('ES256'));
    expect(await callProxyWithDPoP(tokens.access_token, thief)).toBe(401);
    const stolenRefresh = await failure(() => withNonceRetry(() => refresh(tokens.refresh_token!, thief)));
    expect((stolenRefresh as oauth.ResponseBodyError).error).toBe('invalid_dpop_proof');

    // The nonce came with the tokens: the refresh needs no second attempt, and it is bound to the same key.
    const renewed = await refresh(tokens.refresh_token!, DPoP);
    expect(renewed.token_type).toBe('dpop');
    expect(renewed.refresh_token).not.toBe(tokens.refresh_token);
    expect(await callProxyWithDPoP(renewed.access_token, DPoP)).toBe(200);
  });

  it('a code used twice: the client surfaces invalid_grant (ResponseBodyError, 400)', async () => {
    const { callback, verifier } = await authorize();
    await exchange(callback, verifier);
    const error = await failure(() => exchange(callback, verifier));
    expect(error).toBeInstanceOf(oauth.ResponseBodyError);
    expect((error as oauth.ResponseBodyError).error).toBe('invalid_grant');
    expect((error as oauth.ResponseBodyError).status).toBe(400);
    expect((error as oauth.ResponseBodyError).response.headers.get('cache-control')).toBe('no-store');
  });

  it('a refresh token used twice: the same new one within the grace; once that is used, invalid_grant and the family revoked', async () => {
    const { callback, verifier } = await authorize();
    const first = await exchange(callback, verifier);
    const second = await refresh(first.refresh_token!);
    // Sent again at once (the client never saw the answer): the same successor (KEYWARD_MOBILE_REFRESH_GRACE).
    expect((await refresh(first.refresh_token!)).refresh_token).toBe(second.refresh_token);
    const third = await refresh(second.refresh_token!);
    const reuse = await failure(() => refresh(first.refresh_token!));
    expect((reuse as oauth.ResponseBodyError).error).toBe('invalid_grant');
    expect(await callProxy(third.access_token)).toBe(401);
    expect(((await failure(() => refresh(third.refresh_token!))) as oauth.ResponseBodyError).error).toBe(
      'invalid_grant',
    );
  });

  it("signing out with the client's token revocation (RFC 7009, the discovered revocation_endpoint) ends the sign-in", async () => {
    const revoke = async (token: string, hint: 'refresh_token' | 'access_token') => {
      const response = await oauth.revocationRequest(as, CLIENT, oauth.None(), token, {
        ...insecure,
        additionalParameters: { token_type_hint: hint },
      });
      await oauth.processRevocationResponse(response);
    };
    for (const hint of ['refresh_token', 'access_token'] as const) {
      const { callback, verifier } = await authorize();
      const tokens = await exchange(callback, verifier);
      expect(await callProxy(tokens.access_token)).toBe(200);
      await revoke(hint === 'refresh_token' ? tokens.refresh_token! : tokens.access_token, hint);
      expect(await callProxy(tokens.access_token)).toBe(401);
      const refused = await failure(() => refresh(tokens.refresh_token!));
      expect((refused as oauth.ResponseBodyError).error).toBe('invalid_grant');
    }
  });

  it('an authorization error comes back to the app with state and iss, and the client reads it (AuthorizationResponseError)', async () => {
    const state = oauth.generateRandomState();
    const withoutPkce = authorizationUrl({ state });
    const error = await failure(async () =>
      oauth.validateAuthResponse(as, CLIENT, await openInBrowser(withoutPkce), state),
    );
    expect(error).toBeInstanceOf(oauth.AuthorizationResponseError);
    expect((error as oauth.AuthorizationResponseError).error).toBe('invalid_request');
    expect((error as oauth.AuthorizationResponseError).error_description).toMatch(/S256/);
  });

  it('a client configured with a secret is told invalid_client (401): clients here are public', async () => {
    const { callback, verifier } = await authorize();
    const clientSecret = randomSecret('client');
    const response = await oauth.authorizationCodeGrantRequest(
      as,
      CLIENT,
      oauth.ClientSecretPost(clientSecret),
      callback,
      APP_REDIRECT,
      verifier,
      insecure,
    );
    const error = await failure(() => oauth.processAuthorizationCodeResponse(as, CLIENT, response));
    expect(error).toBeInstanceOf(oauth.ResponseBodyError);
    expect((error as oauth.ResponseBodyError).error).toBe('invalid_client');
    expect((error as oauth.ResponseBodyError).status).toBe(401);
    expect(JSON.stringify((error as oauth.ResponseBodyError).cause)).not.toContain(clientSecret);
    // The code was not spent on the refused request.
    await exchange(callback, verifier);
  });
});

/** The consent page's hidden inputs, as React renders them (attributes in source order, values HTML-escaped). */
function hiddenFields(html: string): [string, string][] {
  const unescape = (value: string) =>
    value.replace(
      /&(amp|lt|gt|quot|#x27|#39);/g,
      (_, entity: string) => ({ amp: '&', lt: '<', gt: '>', quot: '"', '#x27': "'", '#39': "'" })[entity]!,
    );
  return [...html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"\/?>/g)].map((match) => [
    unescape(match[1]!),
    unescape(match[2]!),
  ]);
}
