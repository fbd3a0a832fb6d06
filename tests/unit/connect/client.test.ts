import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ProviderClient, ProviderRefusedError } from '../../../lib/core/connect/client';
import { connectionsSchema } from '../../../lib/core/connect/config';
import { resolveConnections, type ConnectionProvider } from '../../../lib/core/connect/providers';
import { OAuthGrantError, OAuthTokenStore } from '../../../lib/core/credential/oauth';
import { Vault } from '../../../lib/core/vault/seal';
import { MemoryStore } from '../../../lib/store/memory';
import { writeEndless, READ_AT_MOST_MB } from '../../fixtures/endless-answer';
import { randomSecret } from '../../fixtures/secrets';

/**
 * The provider quirks the presets handle, against fakes of each provider's endpoints on loopback (the real
 * GitHub and Slack are out of reach of a test): GitHub's errors with HTTP 200 and comma-separated scopes, its
 * grant-deletion API; Slack's user token under `authed_user` and its `{"ok": false}` errors, auth.revoke.
 */
interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: string;
}

const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (closers.length > 0) await closers.pop()!();
});

async function fake(handle: (seen: Seen, res: ServerResponse) => void): Promise<{ origin: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const entry = {
        method: req.method!,
        url: req.url!,
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      };
      seen.push(entry);
      handle(entry, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => new Promise((resolve) => server.close(() => resolve())));
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

function json(res: ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const secret = randomSecret('client_secret');
const env = { ID: 'Iv1.client', SECRET: secret };

function preset(preset: string, origin: string, extra: Record<string, unknown> = {}): ConnectionProvider {
  const config = connectionsSchema.parse({
    p: {
      preset,
      clientId: { env: 'ID' },
      clientSecret: { env: 'SECRET' },
      authorizationUrl: `${origin}/authorize`,
      tokenUrl: `${origin}/token`,
      ...extra,
    },
  });
  return resolveConnections(config, env).get('p')!;
}

async function exchange(client: ProviderClient) {
  const callback = await client.validateCallback(
    new URLSearchParams({ code: 'the-code', state: 'the-state' }),
    'the-state',
  );
  return client.exchangeCode(callback, 'https://app.test/api/connect/p/callback', 'verifier-'.padEnd(43, 'x'), null);
}

describe('GitHub', () => {
  it("the code exchange: client_secret_post, PKCE verifier, JSON asked for; a token without expiry or refresh token; comma-separated scopes; the user's id from GET /user", async () => {
    // A token URL on another host is GitHub Enterprise Server: its REST API is at /api/v3 on that host.
    const { origin, seen } = await fake((entry, res) =>
      entry.url === '/api/v3/user'
        ? json(res, 200, { login: 'octocat', id: 583231 })
        : json(res, 200, { access_token: 'gho_token', token_type: 'bearer', scope: 'repo,read:user' }),
    );
    const tokens = await exchange(new ProviderClient(preset('github', origin)));
    expect(tokens).toEqual({
      accessToken: 'gho_token',
      refreshToken: null,
      expiresAt: 0,
      scopes: ['repo', 'read:user'],
      account: '583231',
    });
    expect(seen[1]).toMatchObject({ method: 'GET', url: '/api/v3/user' });
    expect(seen[1]!.headers.authorization).toBe('Bearer gho_token');
    const form = new URLSearchParams(seen[0]!.body);
    expect(Object.fromEntries(form)).toMatchObject({
      grant_type: 'authorization_code',
      code: 'the-code',
      client_id: 'Iv1.client',
      client_secret: secret,
    });
    expect(form.get('code_verifier')).toMatch(/^verifier-/);
    expect(seen[0]!.headers.accept).toBe('application/json');
    expect(seen[0]!.headers.authorization).toBeUndefined();
  });

  it('an error answered with HTTP 200 is a refusal, by its code only', async () => {
    const { origin } = await fake((_seen, res) =>
      json(res, 200, { error: 'bad_verification_code', error_description: 'The code passed is incorrect or expired.' }),
    );
    const error = await exchange(new ProviderClient(preset('github', origin))).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ProviderRefusedError);
    expect((error as ProviderRefusedError).error).toBe('bad_verification_code');
    expect((error as Error).message).not.toContain('incorrect');
  });

  it('refresh (GitHub Apps with expiring tokens): a refused refresh token ends the grant (OAuthGrantError)', async () => {
    const { origin } = await fake((_seen, res) => json(res, 200, { error: 'bad_refresh_token' }));
    await expect(new ProviderClient(preset('github', origin)).refresh('ghr_old')).rejects.toBeInstanceOf(
      OAuthGrantError,
    );
  });

  it("disconnect deletes the grant through the REST API, with the client's credentials and the token in the body", async () => {
    const api = await fake((_seen, res) => {
      res.writeHead(204);
      res.end();
    });
    const provider = {
      ...preset('github', api.origin),
      revocation: { kind: 'github-grant', apiUrl: api.origin } as const,
    };
    const client = new ProviderClient(provider);
    expect(await client.canRevoke()).toBe(true);
    expect(await client.revoke({ accessToken: 'gho_token', refreshToken: null, expiresAt: 0 })).toBe(true);
    const [request] = api.seen;
    expect(request!.method).toBe('DELETE');
    expect(request!.url).toBe('/applications/Iv1.client/grant');
    expect(request!.headers.authorization).toBe(`Basic ${Buffer.from(`Iv1.client:${secret}`).toString('base64')}`);
    expect(request!.headers['x-github-api-version']).toBe('2022-11-28');
    expect(JSON.parse(request!.body)).toEqual({ access_token: 'gho_token' });
  });

  it("an account another Keyward user linked too: only this token is deleted (DELETE /applications/{client_id}/token), not the grant", async () => {
    const api = await fake((_seen, res) => {
      res.writeHead(204);
      res.end();
    });
    const provider = { ...preset('github', api.origin), revocation: { kind: 'github-grant', apiUrl: api.origin } as const };
    expect(await new ProviderClient(provider).revokeOwn({ accessToken: 'gho_token', refreshToken: null, expiresAt: 0 })).toBe(true);
    expect(api.seen.map((r) => `${r.method} ${r.url}`)).toEqual(['DELETE /applications/Iv1.client/token']);
    expect(JSON.parse(api.seen[0]!.body)).toEqual({ access_token: 'gho_token' });
  });

  it('no user id from GitHub (an error, no number): the connect completes with no account', async () => {
    const { origin } = await fake((entry, res) =>
      entry.url === '/api/v3/user'
        ? json(res, 401, { message: 'Bad credentials' })
        : json(res, 200, { access_token: 'gho_token', token_type: 'bearer' }),
    );
    expect((await exchange(new ProviderClient(preset('github', origin)))).account).toBeNull();
  });
});

describe('Slack', () => {
  it("user scopes in user_scope (comma-separated), no PKCE; the user's token from authed_user, not the bot's", async () => {
    const { origin } = await fake((_seen, res) =>
      json(res, 200, {
        ok: true,
        access_token: 'xoxb-bot',
        token_type: 'bot',
        team: { id: 'T9', name: 'Acme' },
        authed_user: {
          id: 'U1',
          access_token: 'xoxe.xoxp-user',
          refresh_token: 'xoxe-1-refresh',
          expires_in: 43200,
          scope: 'users:read,chat:write',
          token_type: 'user',
        },
      }),
    );
    const client = new ProviderClient(preset('slack', origin, { scopes: ['users:read', 'chat:write'] }), {
      now: () => 1_000_000,
    });
    const request = await client.authorizationRequest('https://app.test/api/connect/p/callback', [
      'users:read',
      'chat:write',
    ]);
    const url = new URL(request.url);
    expect(url.searchParams.get('user_scope')).toBe('users:read,chat:write');
    expect(url.searchParams.has('scope')).toBe(false);
    expect(url.searchParams.has('code_challenge')).toBe(false);
    expect(request.codeVerifier).toBeNull();
    const callback = await client.validateCallback(
      new URLSearchParams({ code: 'c', state: request.state }),
      request.state,
    );
    const tokens = await client.exchangeCode(callback, 'https://app.test/api/connect/p/callback', null, null);
    expect(tokens).toEqual({
      accessToken: 'xoxe.xoxp-user',
      refreshToken: 'xoxe-1-refresh',
      expiresAt: 1_000_000 + 43_200_000,
      scopes: ['users:read', 'chat:write'],
      // User ids are per workspace: the account is both.
      account: 'T9:U1',
    });
  });

  it("a code exchange with only the bot token (no authed_user token) is refused, never stored as the user's", async () => {
    const { origin } = await fake((_seen, res) =>
      json(res, 200, { ok: true, access_token: 'xoxb-bot', token_type: 'bot', authed_user: { id: 'U1' } }),
    );
    const client = new ProviderClient(preset('slack', origin));
    const request = await client.authorizationRequest('https://app.test/api/connect/p/callback', ['users:read']);
    const callback = await client.validateCallback(
      new URLSearchParams({ code: 'c', state: request.state }),
      request.state,
    );
    const error = await client
      .exchangeCode(callback, 'https://app.test/api/connect/p/callback', null, null)
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ProviderRefusedError);
    expect((error as ProviderRefusedError).error).toBe('no_user_token');
  });

  it('{"ok": false} on refresh ends the grant; auth.revoke with the token', async () => {
    const { origin, seen } = await fake((entry, res) =>
      entry.url === '/revoke'
        ? json(res, 200, { ok: true, revoked: true })
        : json(res, 200, { ok: false, error: 'invalid_refresh_token' }),
    );
    const provider = { ...preset('slack', origin), revocation: { kind: 'slack', url: `${origin}/revoke` } as const };
    const client = new ProviderClient(provider);
    await expect(client.refresh('xoxe-1-old')).rejects.toBeInstanceOf(OAuthGrantError);
    expect(await client.revoke({ accessToken: 'xoxp-user', refreshToken: null, expiresAt: 0 })).toBe(true);
    expect(seen.at(-1)!.headers.authorization).toBe('Bearer xoxp-user');
    // auth.revoke may end what other Keyward users linked to the same Slack user hold too: for a shared
    // account, nothing is revoked at Slack.
    const requests = seen.length;
    expect(await client.revokeOwn({ accessToken: 'xoxp-user', refreshToken: null, expiresAt: 0 })).toBe(false);
    expect(seen.length).toBe(requests);
  });

  it('token rotation: an expired user token is refreshed first, and auth.revoke gets the new one (Slack refuses the old)', async () => {
    const { origin, seen } = await fake((entry, res) => {
      if (entry.url !== '/revoke') return json(res, 200, { ok: true, access_token: 'xoxe.xoxp-new', refresh_token: 'xoxe-1-next', expires_in: 43_200, token_type: 'user' });
      const fresh = entry.headers.authorization === 'Bearer xoxe.xoxp-new';
      json(res, 200, fresh ? { ok: true, revoked: true } : { ok: false, error: 'token_expired' });
    });
    const provider = { ...preset('slack', origin), revocation: { kind: 'slack', url: `${origin}/revoke` } as const };
    const client = new ProviderClient(provider);
    const expired = { accessToken: 'xoxe.xoxp-old', refreshToken: 'xoxe-1-old', expiresAt: Date.now() - 60_000 };
    expect(await client.revoke(expired)).toBe(true);
    expect(seen.map((r) => r.url)).toEqual(['/token', '/revoke']);
    expect(new URLSearchParams(seen[0]!.body).get('refresh_token')).toBe('xoxe-1-old');
  });
});

describe('RFC 7009 revocation', () => {
  /** A revocation endpoint as Google's behaves: a refresh token's access tokens end with it; a token it no longer knows is 400 invalid_token. */
  async function googleLike(refreshAnswer = 200) {
    const revoked = new Set<string>();
    const { origin, seen } = await fake((entry, res) => {
      const token = new URLSearchParams(entry.body).get('token')!;
      if (token === 'rt' && refreshAnswer !== 200) return json(res, refreshAnswer, { error: 'server_error' });
      if (revoked.has(token)) return json(res, 400, { error: 'invalid_token', error_description: 'Token expired or revoked' });
      revoked.add(token);
      if (token === 'rt') revoked.add('at');
      res.writeHead(200).end();
    });
    const client = new ProviderClient(preset('generic', origin, { revocationUrl: `${origin}/revoke` }));
    return { client, seen: () => seen.map((entry) => new URLSearchParams(entry.body).get('token_type_hint')) };
  }

  it("the refresh token, then the access token; the access token's invalid_token after its refresh token was revoked is confirmation (Google)", async () => {
    const { client, seen } = await googleLike();
    expect(await client.revoke({ accessToken: 'at', refreshToken: 'rt', expiresAt: 0 })).toBe(true);
    expect(seen()).toEqual(['refresh_token', 'access_token']);
  });

  it('a refresh token the provider would not revoke: the access token is still revoked, and the disconnect is not confirmed', async () => {
    const { client, seen } = await googleLike(500);
    await expect(client.revoke({ accessToken: 'at', refreshToken: 'rt', expiresAt: 0 })).rejects.toThrow();
    expect(seen()).toEqual(['refresh_token', 'access_token']);
  });

  it('an access token alone answered invalid_token is not confirmation', async () => {
    const { client } = await googleLike();
    expect(await client.revoke({ accessToken: 'at', refreshToken: null, expiresAt: 0 })).toBe(true);
    await expect(client.revoke({ accessToken: 'at', refreshToken: null, expiresAt: 0 })).rejects.toThrow();
  });
});

describe('any provider', () => {
  it('a provider that cannot be reached is not a refused grant (the connection is kept)', async () => {
    const { origin } = await fake((_seen, res) => json(res, 503, { message: 'down' }));
    const error = await new ProviderClient(preset('github', origin)).refresh('r').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect(error).not.toBeInstanceOf(OAuthGrantError);
  });

  it('expires_in as sent, within reason: absurdly large is ten years, negative is expired now, 0 or absent is unsaid', async () => {
    const now = Date.now();
    const expiresAt = async (expires_in: unknown) => {
      const { origin } = await fake((_seen, res) => json(res, 200, { access_token: 'at', token_type: 'bearer', expires_in }));
      return (await new ProviderClient(preset('github', origin)).refresh('r')).expiresAt;
    };
    expect(await expiresAt(3600)).toBeGreaterThanOrEqual(now + 3_600_000);
    // 1e306 s made the expiry Infinity, which the vault cannot seal: the connect answered 500 and a rotated
    // refresh token was lost.
    const huge = await expiresAt(1e306);
    expect(Number.isFinite(huge)).toBe(true);
    expect(huge - now).toBeLessThanOrEqual(10 * 365 * 86_400_000 + 60_000);
    expect(huge - now).toBeGreaterThan(9 * 365 * 86_400_000);
    const negative = await expiresAt(-5);
    expect(negative).toBeGreaterThan(0);
    expect(negative).toBeLessThanOrEqual(Date.now());
    expect(await expiresAt(0)).toBe(0);
    expect(await expiresAt(undefined)).toBe(0);
  });

  it('a token that is not a Bearer token (MAC, DPoP) is refused, never sent as one: by the provider (provider_error), not an outage', async () => {
    for (const token_type of ['mac', 'DPoP']) {
      const { origin } = await fake((_seen, res) => json(res, 200, { access_token: 'mac_token', token_type }));
      const error = await new ProviderClient(preset('github', origin)).refresh('r').catch((e: unknown) => e);
      expect(error, token_type).toBeInstanceOf(ProviderRefusedError);
      expect((error as ProviderRefusedError).error).toBe('unsupported_token_type');
      // A refresh answered so is not a grant the provider ended: the connection is kept.
      expect(error).not.toBeInstanceOf(OAuthGrantError);
      const exchanged = await exchange(new ProviderClient(preset('generic', origin))).catch((e: unknown) => e);
      expect((exchanged as ProviderRefusedError).error, token_type).toBe('unsupported_token_type');
    }
    const { origin: empty } = await fake((_seen, res) => json(res, 200, { token_type: 'Bearer' }));
    expect(((await exchange(new ProviderClient(preset('generic', empty))).catch((e: unknown) => e)) as ProviderRefusedError).error).toBe('no_access_token');
    for (const token_type of ['Bearer', 'bearer']) {
      const { origin } = await fake((_seen, res) => json(res, 200, { access_token: 'at', token_type }));
      expect((await new ProviderClient(preset('github', origin)).refresh('r')).accessToken).toBe('at');
    }
  });

  it('an access token that could not go in a header (a line break, a space, a control or non-ASCII character) is refused by the provider, never stored', async () => {
    for (const access_token of ['at-part\r\nx-evil: 1', 'two words', 'tab\there', 'caf\u00e9']) {
      const { origin } = await fake((_seen, res) => json(res, 200, { access_token, token_type: 'Bearer', refresh_token: 'rt' }));
      const error = await exchange(new ProviderClient(preset('generic', origin))).catch((e: unknown) => e);
      expect(error, JSON.stringify(access_token)).toBeInstanceOf(ProviderRefusedError);
      expect((error as ProviderRefusedError).error).toBe('invalid_access_token');
      const refreshed = await new ProviderClient(preset('generic', origin)).refresh('r').catch((e: unknown) => e);
      expect((refreshed as ProviderRefusedError).error).toBe('invalid_access_token');
    }
  });

  it("invalid_client is the deployment's problem, not the user's grant: not OAuthGrantError", async () => {
    const { origin } = await fake((_seen, res) => json(res, 401, { error: 'invalid_client' }));
    const error = await new ProviderClient(preset('github', origin)).refresh('r').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ProviderRefusedError);
    expect(error).not.toBeInstanceOf(OAuthGrantError);
  });

  it('an ID token whose nonce is not the one sent is refused', async () => {
    const payload = Buffer.from(JSON.stringify({ nonce: 'another', sub: 'x' })).toString('base64url');
    const { origin } = await fake((_seen, res) =>
      json(res, 200, { access_token: 'at', token_type: 'Bearer', id_token: `eyJhbGciOiJub25lIn0.${payload}.` }),
    );
    const client = new ProviderClient(preset('generic', origin));
    const callback = await client.validateCallback(new URLSearchParams({ code: 'c', state: 's' }), 's');
    const error = await client
      .exchangeCode(callback, 'https://app.test/cb', 'v'.repeat(43), 'the-nonce')
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ProviderRefusedError);
    expect((error as ProviderRefusedError).error).toBe('nonce_mismatch');
  });

  it("the callback: a wrong state is refused; an error response is oauth4webapi's AuthorizationResponseError", async () => {
    const client = new ProviderClient(preset('generic', 'http://127.0.0.1:9'));
    await expect(client.validateCallback(new URLSearchParams({ code: 'c', state: 'other' }), 's')).rejects.toThrow(
      /state/,
    );
    await expect(
      client.validateCallback(new URLSearchParams({ error: 'access_denied', state: 's' }), 's'),
    ).rejects.toMatchObject({ error: 'access_denied' });
  });
});

describe("a refresh the provider cannot serve now (OAuthTokenStore's backoff)", () => {
  it.each([
    ['a JSON error', 'application/json', JSON.stringify({ error: 'temporarily_unavailable' })],
    ['no JSON', 'text/html', '<h1>Service Unavailable</h1>'],
  ])("503 with %s and Retry-After: the expired token's calls get 503 with the provider's Retry-After, one request until then", async (_name, type, body) => {
    const { origin, seen } = await fake((_seen, res) => {
      res.writeHead(503, { 'content-type': type, 'retry-after': '90' });
      res.end(body);
    });
    const client = new ProviderClient(preset('github', origin));
    const tokens = new OAuthTokenStore(new MemoryStore(), new Vault(randomSecret('vault')), new Map([['p', (token: string) => client.refresh(token)]]));
    await tokens.save('p', { userId: 'local:alice' }, { accessToken: randomSecret('at'), refreshToken: randomSecret('rt'), expiresAt: Date.now() - 1_000 });
    for (let i = 0; i < 3; i++) {
      await expect(tokens.accessToken('p', { userId: 'local:alice' })).rejects.toMatchObject({
        code: 'credential_unavailable',
        status: 503,
        headers: { 'retry-after': expect.stringMatching(/^(90|89)$/) },
      });
    }
    expect(seen).toHaveLength(1);
  });
});

/**
 * A provider (or something answering at its address) that sends an answer without end: Keyward reads at most a
 * bounded amount of any answer from a provider (token, revocation, discovery, GitHub's and Slack's APIs), then
 * lets the connection go, rather than holding all of it in memory until the 10-second timeout.
 */
interface Endless {
  origin: string;
  /** Per request path: how many megabytes the server had sent when the answer ended (read to its end, or let go). */
  sent: Map<string, number>;
}

/** Answers every request with `status` and a JSON body without end (writeEndless). */
async function endless(status: number, prefix: string): Promise<Endless> {
  const sent = new Map<string, number>();
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    const path = new URL(req.url!, 'http://x').pathname;
    writeEndless(res, status, prefix, (megabytes) => sent.set(path, megabytes));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(
    () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { origin, sent };
}

/** How much of its answer the server had sent when it ended, once it has (the client's end reaches it a moment later). */
async function sentTo(server: Endless, path: string): Promise<number> {
  await expect.poll(() => server.sent.has(path)).toBe(true);
  return server.sent.get(path)!;
}

const liveTokens = { accessToken: 'at-live', refreshToken: null, expiresAt: 0 };

describe('a provider whose answer has no end', () => {
  it('RFC 7009 revocation answered 400 with an endless error body: the disconnect is not confirmed, and the body is not read to its end', async () => {
    const server = await endless(400, '{"error":"invalid_request","error_description":"');
    const client = new ProviderClient(preset('generic', server.origin, { revocationUrl: `${server.origin}/revoke` }));
    await expect(client.revoke(liveTokens)).rejects.toThrow();
    expect(await sentTo(server, '/revoke')).toBeLessThan(READ_AT_MOST_MB);
  });

  it("Slack's auth.revoke answered with an endless body: not confirmed, not read to its end", async () => {
    const server = await endless(200, '{"ok":false,"error":"');
    const provider = { ...preset('slack', server.origin), revocation: { kind: 'slack', url: `${server.origin}/revoke` } as const };
    await expect(new ProviderClient(provider).revoke(liveTokens)).rejects.toThrow();
    expect(await sentTo(server, '/revoke')).toBeLessThan(READ_AT_MOST_MB);
  });

  it('the token endpoint (refresh) answered with an endless body: refused, not read to its end', async () => {
    const server = await endless(200, '{"access_token":"');
    const client = new ProviderClient(preset('generic', server.origin));
    await expect(client.refresh('rt')).rejects.toThrow();
    expect(await sentTo(server, '/token')).toBeLessThan(READ_AT_MOST_MB);
  });

  it('a discovery document without end: the provider cannot be used, and the document is not read to its end', async () => {
    const server = await endless(200, '{"issuer":"');
    const config = connectionsSchema.parse({ p: { preset: 'generic', issuer: server.origin, clientId: { env: 'ID' }, clientSecret: { env: 'SECRET' } } });
    const client = new ProviderClient(resolveConnections(config, env).get('p')!);
    await expect(client.authorizationServer()).rejects.toThrow();
    expect(await sentTo(server, '/.well-known/openid-configuration')).toBeLessThan(READ_AT_MOST_MB);
  });
});
