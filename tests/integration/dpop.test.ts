import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { unsealData } from 'iron-session';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleMobileAuthorize, handleMobileToken } from '../../lib/core/api/mobile';
import { handleLogout } from '../../lib/core/api/revoke';
import { handleSession } from '../../lib/core/api/session';
import { JTI_TTL_MS } from '../../lib/core/dpop/proof';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { REDIS_URL, capturingLogger, claimsSessionCookie, findLeak, responseText } from '../fixtures/claims-session';
import { dpopKey, dpopProof, hmacProof, privateJwkProof, unsignedProof, type DpopTestKey } from '../fixtures/dpop';
import { deleteKeysUnder, keysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * Issue 15, part 3: DPoP-bound mobile tokens (RFC 9449) at handler level, on the real Redis (own key prefix):
 * the token endpoint (nonce flow, binding access and refresh tokens to the proof's key, refresh with the same
 * key only, KEYWARD_MOBILE_DPOP=required), and bound tokens on the proxy and on Keyward's own API, with every
 * way a proof can be wrong. An unmodified client (oauth4webapi) over real HTTP: tests/integration/oauth-client.test.ts.
 */
const APP_ORIGIN = 'https://app.keyward.test';
// An https app link (verified by the platform): no consent page in between (tests/integration/mobile-tokens.test.ts).
const APP_REDIRECT = 'https://app.keyward.test/oauth/callback';
const TOKEN_URL = `${APP_ORIGIN}/api/session/token`;
const ITEM_URL = `${APP_ORIGIN}/api/proxy/svc/items/1`;
// A user of an identity provider: kept as signed in (a local user would be looked up in a users file).
const ALICE = 'oidc:alice';

let upstream: TestUpstream;
let store: RedisStore;
let optional: Runtime;
let required: Runtime;
const sessionSecrets = testSessionSecrets();
const serviceKey = randomSecret('svc');
const { logger, lines: logLines } = capturingLogger();
/** Every code, token and proof used in this file: none may appear in a log line or a response. */
const issued: string[] = [];
let aliceCookie: string;
const redisPrefix = `keyward-test:dpop:${randomUUID()}:`;

interface Result {
  status: number;
  body: string;
  headers: Headers;
  json<T = Record<string, unknown>>(): T;
}

interface Tokens {
  access_token: string;
  refresh_token: string;
  token_type: string;
  expires_in: number;
}

async function read(response: Response): Promise<Result> {
  const flat = await responseText(response);
  return { status: flat.status, body: flat.body, headers: response.headers, json: <T>() => JSON.parse(flat.body) as T };
}

const now = () => Math.floor(Date.now() / 1000);

beforeAll(async () => {
  upstream = await startUpstream();
  store = new RedisStore(REDIS_URL, { prefix: redisPrefix });
  await store.ready();
  const env = {
    ...sessionSecrets,
    SVC_KEY: serviceKey,
    KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
    KEYWARD_MOBILE_REDIRECT_URIS: APP_REDIRECT,
  };
  const upstreams = [
    defineUpstream('svc', {
      baseUrl: `${upstream.origin}/v1/`,
      auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
      routes: [
        { method: 'GET', path: '/items/:id', roles: ['user'] },
        { method: 'POST', path: '/items', roles: ['user'] },
      ],
    }),
  ];
  optional = createRuntime({ env, upstreams, store, logger });
  required = createRuntime({ env: { ...env, KEYWARD_MOBILE_DPOP: 'required' }, upstreams, store, logger });
  aliceCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: ALICE, roles: ['user'] });
});

afterAll(async () => {
  await upstream?.close();
  await store?.close();
  await deleteKeysUnder(REDIS_URL, redisPrefix);
  expect(findLeak(logLines.join('\n'), [...issued, serviceKey, sessionSecrets.KEYWARD_SESSION_SECRET])).toBeNull();
});

/** The browser step (signed in with a cookie): a one-time code and its PKCE verifier. */
async function newCode(on: Runtime = optional): Promise<{ code: string; verifier: string }> {
  const verifier = randomBytes(32).toString('base64url');
  const query = new URLSearchParams({
    redirect_uri: APP_REDIRECT,
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256',
  });
  const request = new Request(`${APP_ORIGIN}/api/session/mobile/authorize?${query}`, {
    headers: { cookie: aliceCookie },
  });
  const response = await handleMobileAuthorize(request, on);
  expect(response.status).toBe(302);
  const code = new URL(response.headers.get('location')!).searchParams.get('code')!;
  issued.push(code);
  return { code, verifier };
}

async function token(params: Record<string, string>, dpop: string | null, on: Runtime = optional): Promise<Result> {
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
  if (dpop !== null) {
    headers.dpop = dpop;
    issued.push(dpop);
  }
  const request = new Request(TOKEN_URL, { method: 'POST', headers, body: new URLSearchParams(params).toString() });
  const result = await read(await handleMobileToken(request, on));
  if (result.status === 200) issued.push(result.json<Tokens>().access_token, result.json<Tokens>().refresh_token);
  return result;
}

const codeGrant = ({ code, verifier }: { code: string; verifier: string }) => ({
  grant_type: 'authorization_code',
  code,
  code_verifier: verifier,
  redirect_uri: APP_REDIRECT,
});
const refreshGrant = (refreshToken: string) => ({ grant_type: 'refresh_token', refresh_token: refreshToken });

/** The client's current nonce per runtime, as a DPoP client keeps it from the last DPoP-Nonce header. */
const nonces = new Map<Runtime, string>();

/**
 * A token request with a proof by `key`, following the nonce flow as a client does: the server's
 * `use_dpop_nonce` (400 with DPoP-Nonce) is answered by signing again with that nonce, once.
 */
async function dpopToken(params: Record<string, string>, key: DpopTestKey, on: Runtime = optional): Promise<Result> {
  let result = await token(params, await dpopProof(key, 'POST', TOKEN_URL, { nonce: nonces.get(on) }), on);
  if (result.status === 400 && result.json().error === 'use_dpop_nonce') {
    nonces.set(on, result.headers.get('dpop-nonce')!);
    result = await token(params, await dpopProof(key, 'POST', TOKEN_URL, { nonce: nonces.get(on) }), on);
  }
  if (result.headers.get('dpop-nonce')) nonces.set(on, result.headers.get('dpop-nonce')!);
  return result;
}

async function boundTokens(key: DpopTestKey, on: Runtime = optional): Promise<Tokens> {
  const result = await dpopToken(codeGrant(await newCode(on)), key, on);
  expect(result.status, result.body).toBe(200);
  return result.json<Tokens>();
}

/** An OAuth error of the token endpoint (RFC 6749 §5.2 form); returns its description. */
function expectOAuthError(result: Result, error: string): string {
  expect(result.status, result.body).toBe(400);
  const body = result.json<{ error: string; error_description: string }>();
  expect(Object.keys(body).sort()).toEqual(['error', 'error_description']);
  expect(body.error).toBe(error);
  expect(result.headers.get('cache-control')).toBe('no-store');
  return body.error_description;
}

interface CallOptions {
  /** The Authorization scheme (default DPoP). */
  scheme?: string;
  /** The DPoP header value (default: a good proof by `key` for this call); null: none. */
  proof?: string | null;
  method?: string;
  url?: string;
  headers?: Record<string, string>;
}

/** A proxied call with a (bound) access token, as a DPoP client sends it; whether it reached the upstream. */
async function call(
  accessToken: string,
  key: DpopTestKey,
  options: CallOptions = {},
): Promise<{ result: Result; reached: boolean }> {
  const method = options.method ?? 'GET';
  const url = options.url ?? (method === 'GET' ? ITEM_URL : `${APP_ORIGIN}/api/proxy/svc/items`);
  const proof = options.proof === undefined ? await dpopProof(key, method, url, { accessToken }) : options.proof;
  const headers: Record<string, string> = {
    authorization: `${options.scheme ?? 'DPoP'} ${accessToken}`,
    ...options.headers,
  };
  if (proof !== null) {
    headers.dpop = proof;
    issued.push(proof);
  }
  const before = upstream.requests.length;
  const init: RequestInit = { method, headers };
  if (method === 'POST') {
    init.body = '{"name":"x"}';
    headers['content-type'] = 'application/json';
  }
  const path = method === 'GET' ? ['items', '1'] : ['items'];
  const result = await read(await handleProxy(new Request(url, init), { upstream: 'svc', path }, optional));
  return { result, reached: upstream.requests.length > before };
}

/** The resource's refusal (RFC 9449 §7.1): 401, Keyward's JSON error, and the DPoP challenge with `error`. */
function expectDpopRefusal(result: Result, error: 'invalid_token' | 'invalid_dpop_proof'): string {
  expect(result.status, result.body).toBe(401);
  const body = result.json<{ error: { code: string; message: string } }>();
  expect(body.error.code).toBe('unauthenticated');
  const challenge = result.headers.get('www-authenticate')!;
  expect(challenge).toMatch(new RegExp(`^DPoP error="${error}", algs="[A-Za-z0-9 ]*ES256[A-Za-z0-9 ]*"$`));
  expect(challenge).not.toContain('HS256');
  return body.error.message;
}

describe('the token endpoint with a DPoP proof', () => {
  it('asks for a nonce first (use_dpop_nonce, DPoP-Nonce) without spending the code, then binds both tokens to the key', async () => {
    const key = await dpopKey();
    const code = await newCode();
    const first = await token(codeGrant(code), await dpopProof(key, 'POST', TOKEN_URL));
    expectOAuthError(first, 'use_dpop_nonce');
    const nonce = first.headers.get('dpop-nonce')!;
    expect(nonce).toMatch(/^[0-9a-z]+\.[A-Za-z0-9_-]{43}$/);
    expect(first.headers.get('www-authenticate')).toBeNull();

    const second = await token(codeGrant(code), await dpopProof(key, 'POST', TOKEN_URL, { nonce }));
    expect(second.status, second.body).toBe(200);
    const tokens = second.json<Tokens>();
    expect(tokens.token_type).toBe('DPoP');
    expect(second.headers.get('dpop-nonce')).toBe(nonce);
    // The access token names the key (cnf.jkt, RFC 9449 §6.1): sealed, so only the server reads it.
    const claims = await unsealData<{ cnf?: { jkt: string } }>(tokens.access_token, {
      password: { 1: sessionSecrets.KEYWARD_SESSION_SECRET },
    });
    expect(claims.cnf).toEqual({ jkt: key.jkt });
  });

  it('the bound access token works on the proxy with a proof; the upstream sees neither token nor proof', async () => {
    const key = await dpopKey('EdDSA');
    const tokens = await boundTokens(key);
    const { result, reached } = await call(tokens.access_token, key);
    expect(result.status, result.body).toBe(200);
    expect(reached).toBe(true);
    const seen = upstream.requests.at(-1)!;
    expect(seen.headers['x-api-key']).toBe(serviceKey);
    expect(seen.headers.dpop).toBeUndefined();
    expect(seen.headers.authorization).toBeUndefined();
    expect(JSON.stringify(seen)).not.toContain(tokens.access_token);
    // A POST with a JSON body, its own proof (htm POST, its URL).
    expect((await call(tokens.access_token, key, { method: 'POST' })).result.status).toBe(200);
  });

  it('a refresh of a bound family needs a proof by the same key; refused ones do not spend the refresh token', async () => {
    const key = await dpopKey();
    const tokens = await boundTokens(key);
    // No proof, or another key's: refused before the token is used, so the real client keeps its sign-in.
    expect(expectOAuthError(await token(refreshGrant(tokens.refresh_token), null), 'invalid_dpop_proof')).toMatch(
      /bound to a DPoP key/,
    );
    const thief = await dpopKey();
    expect(expectOAuthError(await dpopToken(refreshGrant(tokens.refresh_token), thief), 'invalid_dpop_proof')).toMatch(
      /another key/,
    );

    const renewed = await dpopToken(refreshGrant(tokens.refresh_token), key);
    expect(renewed.status, renewed.body).toBe(200);
    const next = renewed.json<Tokens>();
    expect(next.token_type).toBe('DPoP');
    expect((await call(next.access_token, key)).result.status).toBe(200);
    // Still bound to the same key after the rotation.
    expectDpopRefusal((await call(next.access_token, thief)).result, 'invalid_dpop_proof');
    expectOAuthError(await dpopToken(refreshGrant(next.refresh_token), thief), 'invalid_dpop_proof');
  });

  it.each([
    [
      'htu of another URL',
      (key: DpopTestKey, nonce: string) => dpopProof(key, 'POST', `${APP_ORIGIN}/api/session/other`, { nonce }),
    ],
    [
      'htu of the internal origin',
      (key: DpopTestKey, nonce: string) => dpopProof(key, 'POST', 'http://localhost:3000/api/session/token', { nonce }),
    ],
    ['htm GET', (key: DpopTestKey, nonce: string) => dpopProof(key, 'GET', TOKEN_URL, { nonce })],
    [
      'a stale iat',
      (key: DpopTestKey, nonce: string) => dpopProof(key, 'POST', TOKEN_URL, { nonce, iat: now() - 300 }),
    ],
    [
      'a future iat',
      (key: DpopTestKey, nonce: string) => dpopProof(key, 'POST', TOKEN_URL, { nonce, iat: now() + 300 }),
    ],
    ['HS256', () => hmacProof('POST', TOKEN_URL)],
    ['alg none', (key: DpopTestKey) => Promise.resolve(unsignedProof(key, 'POST', TOKEN_URL))],
    ['a private key in its jwk', (key: DpopTestKey) => privateJwkProof(key, 'POST', TOKEN_URL)],
  ])('a proof with %s → 400 invalid_dpop_proof (with a nonce), and the code is still good', async (_name, make) => {
    const key = await dpopKey();
    await dpopToken(codeGrant(await newCode()), key); // leaves a current nonce in `nonces`
    const code = await newCode();
    const refused = await token(codeGrant(code), await make(key, nonces.get(optional)!));
    expectOAuthError(refused, 'invalid_dpop_proof');
    expect(refused.headers.get('dpop-nonce')).toMatch(/^[0-9a-z]+\./);
    expect((await dpopToken(codeGrant(code), key)).status).toBe(200);
  });

  it('an unknown code or refresh token → invalid_grant before its proof is looked at: no jti is recorded for it', async () => {
    const key = await dpopKey();
    await boundTokens(key); // leaves a current nonce in `nonces`
    const recorded = async () => (await keysUnder(REDIS_URL, `${redisPrefix}dpop:jti:`)).length;
    const before = await recorded();
    for (let i = 0; i < 10; i++) {
      const bogus = i % 2 === 0 ? refreshGrant(`kwr_${randomBytes(32).toString('base64url')}`) : codeGrant({ code: `kwc_${randomBytes(32).toString('base64url')}`, verifier: randomBytes(32).toString('base64url') });
      expectOAuthError(await token(bogus, await dpopProof(key, 'POST', TOKEN_URL, { nonce: nonces.get(optional) })), 'invalid_grant');
    }
    expect(await recorded()).toBe(before);
    // A live one still has its proof checked and recorded.
    expect((await dpopToken(codeGrant(await newCode()), key)).status).toBe(200);
    expect(await recorded()).toBe(before + 1);
  });

  it('a proof sent twice (its jti) → invalid_dpop_proof', async () => {
    const key = await dpopKey();
    await boundTokens(key);
    const proof = await dpopProof(key, 'POST', TOKEN_URL, { nonce: nonces.get(optional) });
    expect((await token(codeGrant(await newCode()), proof)).status).toBe(200);
    expect(expectOAuthError(await token(codeGrant(await newCode()), proof), 'invalid_dpop_proof')).toMatch(
      /already used/,
    );
  });

  it('a nonce from another deployment (another secret) → use_dpop_nonce with this one', async () => {
    const key = await dpopKey();
    const other = createRuntime({
      env: { ...testSessionSecrets(), KEYWARD_MOBILE_REDIRECT_URIS: APP_REDIRECT, KEYWARD_STORE: 'memory' },
      logger,
    });
    const foreign = other.dpop.nonces.current();
    const result = await token(codeGrant(await newCode()), await dpopProof(key, 'POST', TOKEN_URL, { nonce: foreign }));
    expectOAuthError(result, 'use_dpop_nonce');
    expect(result.headers.get('dpop-nonce')).not.toBe(foreign);
  });

  it('without a proof (optional, the default): Bearer tokens as before, which the DPoP scheme does not take', async () => {
    const result = await token(codeGrant(await newCode()), null);
    expect(result.status).toBe(200);
    const tokens = result.json<Tokens>();
    expect(tokens.token_type).toBe('Bearer');
    expect(result.headers.get('dpop-nonce')).toBeNull();
    const key = await dpopKey();
    expect((await call(tokens.access_token, key, { scheme: 'Bearer', proof: null })).result.status).toBe(200);
    expect(expectDpopRefusal((await call(tokens.access_token, key)).result, 'invalid_token')).toMatch(/not bound/);
  });

  it('an unbound family refreshed with a proof is bound from then on', async () => {
    const unbound = (await token(codeGrant(await newCode()), null)).json<Tokens>();
    const key = await dpopKey();
    const renewed = await dpopToken(refreshGrant(unbound.refresh_token), key);
    expect(renewed.status, renewed.body).toBe(200);
    const next = renewed.json<Tokens>();
    expect(next.token_type).toBe('DPoP');
    expectDpopRefusal((await call(next.access_token, key, { scheme: 'Bearer', proof: null })).result, 'invalid_token');
    expect((await call(next.access_token, key)).result.status).toBe(200);
    expectOAuthError(await token(refreshGrant(next.refresh_token), null), 'invalid_dpop_proof');
  });

  it('the same refresh presented again within the grace needs the key its successor was bound to; without it, it is a copy', async () => {
    const key = await dpopKey();
    // Same key again (the answer was lost): the same successor.
    const retried = (await token(codeGrant(await newCode()), null)).json<Tokens>();
    const first = (await dpopToken(refreshGrant(retried.refresh_token), key)).json<Tokens>();
    const again = await dpopToken(refreshGrant(retried.refresh_token), key);
    expect(again.status, again.body).toBe(200);
    expect(again.json<Tokens>().refresh_token).toBe(first.refresh_token);
    expect(again.json<Tokens>().token_type).toBe('DPoP');
    // Another key, or none: whoever sends it is not the app that bound the successor; the family ends.
    for (const other of [await dpopKey(), null]) {
      const unbound = (await token(codeGrant(await newCode()), null)).json<Tokens>();
      const bound = (await dpopToken(refreshGrant(unbound.refresh_token), key)).json<Tokens>();
      const copy =
        other === null
          ? await token(refreshGrant(unbound.refresh_token), null)
          : await dpopToken(refreshGrant(unbound.refresh_token), other);
      expectOAuthError(copy, 'invalid_grant');
      expect((await call(bound.access_token, key)).result.status).toBe(401);
      expectOAuthError(await dpopToken(refreshGrant(bound.refresh_token), key), 'invalid_grant');
    }
  });
});

describe('KEYWARD_MOBILE_DPOP=required', () => {
  it('a code exchange without a proof → invalid_dpop_proof, the code not spent; with one → DPoP tokens', async () => {
    const code = await newCode(required);
    expect(expectOAuthError(await token(codeGrant(code), null, required), 'invalid_dpop_proof')).toMatch(/DPoP proof/);
    const key = await dpopKey();
    const result = await dpopToken(codeGrant(code), key, required);
    expect(result.status, result.body).toBe(200);
    expect(result.json<Tokens>().token_type).toBe('DPoP');
  });

  it('a refresh without a proof → invalid_dpop_proof (an unbound family from before the switch too)', async () => {
    const unbound = (await token(codeGrant(await newCode()), null)).json<Tokens>();
    expectOAuthError(await token(refreshGrant(unbound.refresh_token), null, required), 'invalid_dpop_proof');
    const key = await dpopKey();
    const renewed = await dpopToken(refreshGrant(unbound.refresh_token), key, required);
    expect(renewed.json<Tokens>().token_type).toBe('DPoP');
  });

  it('the metadata names the proof algorithms (RFC 9449 §5.1), never HS256 or none', async () => {
    const { handleOAuthMetadata } = await import('../../lib/core/api/oauth-metadata');
    const response = await handleOAuthMetadata(
      new Request(`${APP_ORIGIN}/.well-known/oauth-authorization-server`),
      required,
    );
    const body = (await response.json()) as { dpop_signing_alg_values_supported: string[] };
    expect(body.dpop_signing_alg_values_supported).toContain('ES256');
    expect(body.dpop_signing_alg_values_supported).toContain('EdDSA');
    expect(body.dpop_signing_alg_values_supported.some((alg) => alg.startsWith('HS') || alg === 'none')).toBe(false);
  });
});

describe('a bound access token on the proxy', () => {
  let key: DpopTestKey;
  let tokens: Tokens;

  beforeAll(async () => {
    key = await dpopKey();
    tokens = await boundTokens(key);
  });

  it('sent as Bearer → 401 with WWW-Authenticate: DPoP error="invalid_token", nothing sent upstream', async () => {
    const { result, reached } = await call(tokens.access_token, key, { scheme: 'Bearer', proof: null });
    expect(expectDpopRefusal(result, 'invalid_token')).toMatch(/Authorization: DPoP/);
    expect(reached).toBe(false);
    // With a good proof beside it, still not as Bearer.
    expectDpopRefusal((await call(tokens.access_token, key, { scheme: 'Bearer' })).result, 'invalid_token');
  });

  it('the scheme is case-insensitive (RFC 9110 §11.1)', async () => {
    expect((await call(tokens.access_token, key, { scheme: 'dpop' })).result.status).toBe(200);
  });

  it('a proof used twice (jti) → 401 invalid_dpop_proof the second time', async () => {
    const proof = await dpopProof(key, 'GET', ITEM_URL, { accessToken: tokens.access_token });
    expect((await call(tokens.access_token, key, { proof })).result.status).toBe(200);
    const replay = await call(tokens.access_token, key, { proof });
    expect(expectDpopRefusal(replay.result, 'invalid_dpop_proof')).toMatch(/already used/);
    expect(replay.reached).toBe(false);
  });

  const proofs: Array<[string, (token: string, key: DpopTestKey) => Promise<string | null>, RegExp]> = [
    ['no proof', async () => null, /exactly one DPoP header/],
    [
      'a proof for another path (htu)',
      (t, k) => dpopProof(k, 'GET', `${APP_ORIGIN}/api/proxy/svc/items/2`, { accessToken: t }),
      /htu/,
    ],
    [
      'a proof for the internal origin (htu)',
      (t, k) => dpopProof(k, 'GET', 'http://localhost:3000/api/proxy/svc/items/1', { accessToken: t }),
      /htu/,
    ],
    ['a proof for another method (htm)', (t, k) => dpopProof(k, 'POST', ITEM_URL, { accessToken: t }), /htm/],
    ['a stale iat', (t, k) => dpopProof(k, 'GET', ITEM_URL, { accessToken: t, iat: now() - 120 }), /iat/],
    ['a future iat', (t, k) => dpopProof(k, 'GET', ITEM_URL, { accessToken: t, iat: now() + 120 }), /iat/],
    [
      'the hash of another token (ath)',
      (_t, k) => dpopProof(k, 'GET', ITEM_URL, { accessToken: 'another-access-token-value' }),
      /ath/,
    ],
    ['no ath', (_t, k) => dpopProof(k, 'GET', ITEM_URL), /ath/],
    [
      'another key than the bound one',
      async (t) => dpopProof(await dpopKey(), 'GET', ITEM_URL, { accessToken: t }),
      /another key/,
    ],
    ['HS256', async () => hmacProof('GET', ITEM_URL), /signed with one of/],
    ['alg none', async (_t, k) => unsignedProof(k, 'GET', ITEM_URL), /signed with one of/],
    ['a private key in its jwk', (_t, k) => privateJwkProof(k, 'GET', ITEM_URL), /public key only/],
    ['typ JWT', (t, k) => dpopProof(k, 'GET', ITEM_URL, { accessToken: t, header: { typ: 'JWT' } }), /typ/],
  ];

  it.each(proofs)('%s → 401 invalid_dpop_proof, nothing sent upstream', async (_name, make, message) => {
    const { result, reached } = await call(tokens.access_token, key, { proof: await make(tokens.access_token, key) });
    expect(expectDpopRefusal(result, 'invalid_dpop_proof')).toMatch(message);
    expect(reached).toBe(false);
  });

  it('two DPoP headers → 401 invalid_dpop_proof', async () => {
    const headers = new Headers({ authorization: `DPoP ${tokens.access_token}` });
    headers.append('dpop', await dpopProof(key, 'GET', ITEM_URL, { accessToken: tokens.access_token }));
    headers.append('dpop', await dpopProof(key, 'GET', ITEM_URL, { accessToken: tokens.access_token }));
    const result = await read(
      await handleProxy(new Request(ITEM_URL, { headers }), { upstream: 'svc', path: ['items', '1'] }, optional),
    );
    expectDpopRefusal(result, 'invalid_dpop_proof');
  });

  it('htu is the public origin as the client saw it: behind a proxy that forwards the host, the internal URL does not count', async () => {
    // Inside Next, request.url is http://localhost:<port>; the trusted forwarded host names the public origin.
    const internal = 'http://localhost:3000/api/proxy/svc/items/1';
    const forwarded = { 'x-forwarded-host': 'app.keyward.test', 'x-forwarded-proto': 'https', host: 'localhost:3000' };
    const proof = await dpopProof(key, 'GET', ITEM_URL, { accessToken: tokens.access_token });
    expect((await call(tokens.access_token, key, { url: internal, headers: forwarded, proof })).result.status).toBe(
      200,
    );
    const wrong = await call(tokens.access_token, key, {
      url: internal,
      headers: forwarded,
      proof: await dpopProof(key, 'GET', internal, { accessToken: tokens.access_token }),
    });
    expectDpopRefusal(wrong.result, 'invalid_dpop_proof');
  });

  it('a tampered token in the DPoP scheme → 401 invalid_token', async () => {
    const tampered = `${tokens.access_token.slice(0, -3)}${tokens.access_token.endsWith('AAA') ? 'BBB' : 'AAA'}`;
    expectDpopRefusal((await call(tampered, key)).result, 'invalid_token');
  });

  it("Keyward's own API takes it the same way (GET /api/session), and logout with it ends the family", async () => {
    const own = await boundTokens(key);
    const sessionUrl = `${APP_ORIGIN}/api/session`;
    const get = async (scheme: string, proof: string | null) => {
      const headers: Record<string, string> = { authorization: `${scheme} ${own.access_token}` };
      if (proof) headers.dpop = proof;
      return read(await handleSession(new Request(sessionUrl, { headers }), optional));
    };
    const ok = await get('DPoP', await dpopProof(key, 'GET', sessionUrl, { accessToken: own.access_token }));
    expect(ok.status, ok.body).toBe(200);
    expect(ok.json<{ user: { id: string } }>().user.id).toBe(ALICE);
    expectDpopRefusal(await get('Bearer', null), 'invalid_token');
    expectDpopRefusal(
      await get('DPoP', await dpopProof(key, 'GET', ITEM_URL, { accessToken: own.access_token })),
      'invalid_dpop_proof',
    );

    const logoutUrl = `${APP_ORIGIN}/api/session/logout`;
    const logout = await handleLogout(
      new Request(logoutUrl, {
        method: 'POST',
        headers: {
          authorization: `DPoP ${own.access_token}`,
          dpop: await dpopProof(key, 'POST', logoutUrl, { accessToken: own.access_token }),
        },
      }),
      optional,
    );
    expect(logout.status).toBe(200);
    const after = await call(own.access_token, key);
    expect(after.result.status).toBe(401);
    expect(after.reached).toBe(false);
  });

  it('the jti is kept under a hash, with a TTL; no proof or token is stored', async () => {
    const keys = await keysUnder(REDIS_URL, `${redisPrefix}dpop:jti:`);
    expect(keys.length).toBeGreaterThan(0);
    // The store's own connection adds the key prefix itself.
    const names = keys.map((name) => name.slice(redisPrefix.length));
    for (const ttl of await Promise.all(names.map((name) => store.client.pttl(name)))) {
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(JTI_TTL_MS);
    }
    const dump = (await Promise.all(names.map((name) => store.client.get(name)))).join('');
    expect(findLeak(dump + keys.join(''), issued)).toBeNull();
  });
});
