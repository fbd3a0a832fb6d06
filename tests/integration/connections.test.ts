import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  handleAdminUserConnections,
  handleConnectCallback,
  handleConnection,
  handleConnections,
  handleConnectStart,
} from '../../lib/core/api/connect';
import { defineUpstream } from '../../lib/core/config/load';
import { verifyWebhookSignature } from '../../lib/core/detect/webhook';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { PENDING_STARTS_MAX, PENDING_TTL_MS } from '../../lib/core/connect/connections';
import { RedisStore } from '../../lib/store/redis';
import { REDIS_URL, capturingLogger, claimsSessionCookie, findLeak, responseText } from '../fixtures/claims-session';
import { startConnectProvider, type ConnectProvider } from '../fixtures/oauth-connect-provider';
import { deleteKeysUnder, keysUnder } from '../fixtures/redis-server';
import { passwordVersionIn, writeUsersFile } from '../fixtures/users';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * Connected accounts end to end (README "Connected accounts"), against a real OAuth server on loopback
 * (oidc-provider, tests/fixtures/oauth-connect-provider.ts) that plays two providers:
 *
 *  - `github`: the GitHub preset, with its authorize/token URLs pointed at the loopback provider through the
 *    preset's override options (`authorizationUrl`, `tokenUrl`), and `revocationUrl` for an RFC 7009 endpoint in
 *    place of GitHub's grant-deletion API (which tests/unit/connect covers). Everything else is the preset's:
 *    client_secret_post, PKCE, the scopes' format. The loopback provider issues expiring tokens with refresh
 *    tokens, as GitHub Apps do.
 *  - `acme`: the generic preset, configured by its issuer alone (discovery finds every endpoint, revocation too).
 *
 * Two runtimes with their own Redis connections on one prefix stand for two instances: a connect started on one
 * completes on the other, refreshes are single-flight across both, and the idle-grant keeper runs once for both.
 * The browser is simulated: Keyward's handlers take Requests, the provider's pages are walked by the fixture.
 */
const APP = 'https://app.keyward.test';

let provider: ConnectProvider;
let upstream: TestUpstream;
let webhook: Server;
let webhookUrl: string;
const deliveries: { signature: string | null; body: string }[] = [];
let a: Runtime;
let b: Runtime;
let prefix: string;
const stores: RedisStore[] = [];
let skewMs = 0;
const now = () => Date.now() + skewMs;
const sessionSecrets = testSessionSecrets();
const vaultSecret = randomSecret('vault');
const webhookSecret = randomSecret('webhook_signing_secret');
const { logger, lines: logLines } = capturingLogger();
/** Every response Keyward gave, flattened (status, headers, body): searched for tokens at the end. */
const seen: string[] = [];
const userId = 'local:ada';
let cookie: string;

async function instance(extraEnv: Record<string, string> = {}): Promise<Runtime> {
  const store = new RedisStore(REDIS_URL, { prefix });
  stores.push(store);
  await store.ready();
  const { github, acme } = provider.clients;
  return createRuntime({
    env: {
      ...sessionSecrets,
      KEYWARD_VAULT_SECRET: vaultSecret,
      GH_CLIENT_ID: github!.clientId,
      GH_CLIENT_SECRET: github!.clientSecret,
      ACME_CLIENT_ID: acme!.clientId,
      ACME_CLIENT_SECRET: acme!.clientSecret,
      WEBHOOK_SECRET: webhookSecret,
      // The tests move the clock days ahead with one sign-in (`cookie`, below): sessions last a week here.
      KEYWARD_SESSION_MAX_AGE: String(7 * 86_400),
      ...extraEnv,
    },
    connections: {
      github: {
        preset: 'github',
        clientId: { env: 'GH_CLIENT_ID' },
        clientSecret: { env: 'GH_CLIENT_SECRET' },
        optionalScopes: ['repo'],
        // The preset's endpoints, pointed at the loopback provider (see the file's comment).
        authorizationUrl: `${provider.issuer}/auth`,
        tokenUrl: `${provider.issuer}/token`,
        revocationUrl: `${provider.issuer}/token/revocation`,
      },
      acme: {
        preset: 'generic',
        name: 'Acme',
        issuer: provider.issuer,
        clientId: { env: 'ACME_CLIENT_ID' },
        clientSecret: { env: 'ACME_CLIENT_SECRET' },
        scopes: ['openid', 'offline_access'],
      },
    },
    upstreams: [
      defineUpstream('gh', {
        baseUrl: `${upstream.origin}/gh/`,
        auth: { type: 'bearer', secret: { oauth: 'github' } },
        routes: [{ method: 'GET', path: '/user' }],
      }),
      defineUpstream('acme', {
        baseUrl: `${upstream.origin}/acme/`,
        auth: { type: 'bearer', secret: { oauth: 'acme' } },
        routes: [{ method: 'GET', path: '/me' }],
      }),
    ],
    detector: { webhook: { url: webhookUrl, secret: { env: 'WEBHOOK_SECRET' }, maxAttempts: 1 } },
    store,
    logger,
    now,
  });
}

async function keep(response: Response): Promise<{ status: number; body: string; headers: Headers }> {
  const flat = await responseText(response);
  seen.push(flat.text);
  return { status: flat.status, body: flat.body, headers: response.headers };
}

function errorOf(body: string): { code: string; message: string; connectUrl?: string } {
  return (JSON.parse(body) as { error: { code: string; message: string; connectUrl?: string } }).error;
}

/** GET /api/connect/<provider>: the 303 to the provider and the binding cookie it set. */
async function start(runtime: Runtime, providerId: string, query = '', headers: Record<string, string> = {}) {
  const response = await keep(
    await handleConnectStart(
      new Request(`${APP}/api/connect/${providerId}${query}`, { headers: { cookie, ...headers } }),
      providerId,
      runtime,
    ),
  );
  const setCookie = response.headers.get('set-cookie') ?? '';
  const binding = /^(__Host-keyward\.connect-[a-z0-9-]+=[^;]*)/.exec(setCookie)?.[1] ?? null;
  return { ...response, location: response.headers.get('location'), setCookie, binding };
}

/**
 * The provider's redirect back, as the browser follows it (the binding cookie only: the session cookie is Strict).
 * Keyward answers with a page that moves on to the app (a meta refresh: see handleConnectCallback); `location`
 * is where it sends the browser.
 */
async function callback(runtime: Runtime, providerId: string, url: URL, binding: string | null) {
  const response = await keep(
    await handleConnectCallback(new Request(url, { headers: binding ? { cookie: binding } : {} }), providerId, runtime),
  );
  const target = /<meta http-equiv="refresh" content="0;url=([^"]*)">/.exec(response.body)?.[1];
  return {
    ...response,
    location:
      target === undefined ? null : target.replace(/&#(\d+);/g, (_, code: string) => String.fromCharCode(Number(code))),
  };
}

/** A whole connect: start on `on`, the provider's login and consent, the callback on `back`. */
async function connect(
  providerId: string,
  options: { on?: Runtime; back?: Runtime; query?: string; deny?: boolean; as?: string; other?: boolean } = {},
) {
  const started = await start(options.on ?? a, providerId, options.query, options.as ? { cookie: options.as } : {});
  expect(started.status).toBe(303);
  // Another account than the provider's browser session's: signed out there first, then in as the other one.
  if (options.other) provider.signOut();
  const returned = await provider.drive(started.location!, { deny: options.deny, other: options.other });
  return { started, returned, done: await callback(options.back ?? b, providerId, returned, started.binding) };
}

async function call(runtime: Runtime, upstreamId: string, path: string, as = cookie) {
  const request = new Request(`${APP}/api/proxy/${upstreamId}/${path}`, { headers: { cookie: as, 'x-keyward-csrf': '1' } });
  return keep(await handleProxy(request, { upstream: upstreamId, path: [path] }, runtime));
}

async function list(runtime: Runtime, as = cookie) {
  const response = await keep(
    await handleConnections(
      new Request(`${APP}/api/connections`, { headers: { cookie: as, 'x-keyward-csrf': '1' } }),
      runtime,
    ),
  );
  expect(response.status).toBe(200);
  return JSON.parse(response.body) as {
    connections: {
      provider: string;
      status: string;
      scopes: string[];
      connectedAt: string;
      lastRefreshAt: string | null;
      connectUrl: string;
    }[];
    providers: { provider: string; name: string; connectUrl: string }[];
  };
}

async function disconnect(runtime: Runtime, providerId: string, as = cookie) {
  const request = new Request(`${APP}/api/connections/${providerId}`, {
    method: 'DELETE',
    headers: { cookie: as, 'x-keyward-csrf': '1', origin: APP },
  });
  return keep(await handleConnection(request, providerId, runtime));
}

function lastAuthorization(): string | undefined {
  return upstream.requests.at(-1)?.headers.authorization;
}

beforeAll(async () => {
  upstream = await startUpstream();
  webhook = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      deliveries.push({
        signature: req.headers['keyward-signature'] as string | null,
        body: Buffer.concat(chunks).toString('utf8'),
      });
      res.writeHead(204).end();
    });
  });
  webhook.listen(0, '127.0.0.1');
  await once(webhook, 'listening');
  webhookUrl = `http://127.0.0.1:${(webhook.address() as AddressInfo).port}/hooks/keyward`;
  provider = await startConnectProvider({
    clients: {
      github: { redirectUri: `${APP}/api/connect/github/callback`, authMethod: 'client_secret_post' },
      acme: { redirectUri: `${APP}/api/connect/acme/callback`, authMethod: 'client_secret_basic' },
    },
  });
  prefix = `keyward-test:connect:${randomUUID()}:`;
  a = await instance();
  b = await instance();
  // A week: the tests move the clock a day and more ahead.
  cookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: userId, roles: ['user'] }, 7 * 86_400);
});

afterAll(async () => {
  await provider?.stop();
  await upstream?.close();
  webhook?.closeAllConnections();
  webhook?.close();
  await Promise.all(stores.map((store) => store.close()));
  if (prefix) await deleteKeysUnder(REDIS_URL, prefix);
});

describe('the GitHub preset, end to end', () => {
  it('before connecting, a call answers 403 connection_required with the connect URL, and nothing goes upstream', async () => {
    const before = upstream.requests.length;
    const response = await call(a, 'gh', 'user');
    expect(response.status).toBe(403);
    expect(errorOf(response.body)).toMatchObject({ code: 'connection_required', connectUrl: '/api/connect/github' });
    expect(errorOf(response.body).message).toContain('Connect your GitHub account');
    expect(upstream.requests.length).toBe(before);
    expect((await list(a)).connections).toEqual([]);
  });

  it('starting a connect needs a cookie session of this site, a known provider and offered scopes', async () => {
    const anonymous = await keep(await handleConnectStart(new Request(`${APP}/api/connect/github`), 'github', a));
    expect(anonymous.status).toBe(401);
    const crossSite = await start(a, 'github', '', { 'sec-fetch-site': 'cross-site' });
    expect(crossSite.status).toBe(403);
    expect(errorOf(crossSite.body).code).toBe('csrf_failed');
    const unknown = await keep(
      await handleConnectStart(new Request(`${APP}/api/connect/gitlab`, { headers: { cookie } }), 'gitlab', a),
    );
    expect(unknown.status).toBe(404);
    const badScope = await start(a, 'github', '?scope=admin:org');
    expect(badScope.status).toBe(400);
    expect(badScope.binding).toBeNull();
    expect(provider.counts().tokenRequests).toBe(0);
  });

  it(`a user starts at most ${PENDING_STARTS_MAX} connects in ${PENDING_TTL_MS / 60_000} minutes (each stores a pending record): then 429, on every instance`, async () => {
    const loopCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:looper', roles: ['user'] }, 3_600);
    const begin = (runtime: Runtime) =>
      handleConnectStart(new Request(`${APP}/api/connect/github`, { headers: { cookie: loopCookie } }), 'github', runtime);
    for (let i = 0; i < PENDING_STARTS_MAX; i++) expect((await begin(i % 2 ? a : b)).status).toBe(303);
    const refused = await keep(await begin(b));
    expect(refused.status).toBe(429);
    expect(errorOf(refused.body).code).toBe('rate_limited');
    expect(Number(refused.headers.get('retry-after'))).toBe(PENDING_TTL_MS / 1000);
    expect(refused.headers.get('set-cookie')).toBeNull();
    // Another user is not held back by it.
    expect((await start(a, 'github')).status).toBe(303);
  });

  it('connect: PKCE and state to the provider, login and consent there, the callback on the OTHER instance saves the tokens', async () => {
    const { started, done } = await connect('github', {
      query: `?returnTo=${encodeURIComponent('/settings?tab=accounts')}`,
    });
    const authorize = new URL(started.location!);
    expect(authorize.origin + authorize.pathname).toBe(`${provider.issuer}/auth`);
    expect(Object.fromEntries(authorize.searchParams)).toMatchObject({
      client_id: provider.clients.github!.clientId,
      redirect_uri: `${APP}/api/connect/github/callback`,
      response_type: 'code',
      scope: 'read:user',
      code_challenge_method: 'S256',
    });
    expect(authorize.searchParams.get('state')).toMatch(/^[A-Za-z0-9_-]{40,}$/);
    expect(authorize.searchParams.get('code_challenge')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    // The binding cookie: Lax so it survives the provider's cross-site redirect back, HttpOnly, __Host-.
    expect(started.setCookie).toMatch(
      /^__Host-keyward\.connect-github=[A-Za-z0-9_-]{43}; Path=\/; Max-Age=600; HttpOnly; Secure; SameSite=Lax$/,
    );
    expect(started.headers.get('cache-control')).toBe('private, no-store');

    expect(done.status).toBe(200);
    expect(done.headers.get('content-type')).toBe('text/html; charset=utf-8');
    expect(done.headers.get('content-security-policy')).toContain("default-src 'none'");
    expect(done.body).toContain('<a href="/settings?tab=accounts&#38;connected=github">Continue</a>');
    expect(done.location).toBe('/settings?tab=accounts&connected=github');
    expect(done.headers.get('set-cookie')).toMatch(/^__Host-keyward\.connect-github=; Path=\/; Max-Age=0/);
    expect(provider.counts()).toMatchObject({ codeGrants: 1, refreshGrants: 0 });
    expect(provider.consents()).toEqual(['read:user']);
  });

  it("a call then carries the provider's access token, on either instance; the list shows the connection, never a token", async () => {
    for (const runtime of [a, b]) {
      const response = await call(runtime, 'gh', 'user');
      expect(response.status).toBe(200);
      expect(lastAuthorization()).toBe(`Bearer ${provider.issued().accessTokens.at(-1)}`);
    }
    const { connections, providers } = await list(b);
    expect(providers).toEqual([
      { provider: 'github', name: 'GitHub', connectUrl: '/api/connect/github' },
      { provider: 'acme', name: 'Acme', connectUrl: '/api/connect/acme' },
    ]);
    expect(connections).toHaveLength(1);
    expect(connections[0]).toMatchObject({
      provider: 'github',
      status: 'connected',
      scopes: ['read:user'],
      lastRefreshAt: null,
      connectUrl: '/api/connect/github',
    });
    expect(Date.parse(connections[0]!.connectedAt)).toBeGreaterThan(0);
  });

  it('the callback is single use, bound to the browser that started it, and to a session that is still valid', async () => {
    const codesBefore = provider.counts().codeGrants;
    const first = await start(a, 'github');
    const back = await provider.drive(first.location!);
    const noCookie = await callback(b, 'github', back, null);
    expect(noCookie.location).toBe('/?connect_error=expired&connect_provider=github');
    const wrongBrowser = await callback(b, 'github', back, '__Host-keyward.connect-github=someone-elses-binding');
    expect(wrongBrowser.location).toBe('/?connect_error=expired&connect_provider=github');
    // The right binding under a name that is no __Host- cookie to the browser (a leading byte 0xA0, which Node
    // reads as U+00A0 and String.trim() would strip): a sibling subdomain can set such a cookie for the whole site,
    // so reading it as the binding would let that site finish its own connect in this browser (the victim's account).
    const tossed = `\u00a0${first.binding!}`;
    expect((await callback(b, 'github', back, tossed)).location).toBe('/?connect_error=expired&connect_provider=github');
    // Neither used the pending authorization up (anyone who learns a state must not be able to cancel the
    // victim's connect) and no code was exchanged for them; the browser that started it completes it, once.
    expect(provider.counts().codeGrants).toBe(codesBefore);
    // Nor did either clear the browser's binding cookie: another site can send the browser to the callback with a
    // state of its own (a top-level GET carries the Lax cookie), and clearing it would cancel the real connect.
    const junk = new URL(back);
    junk.searchParams.set('state', 'another-sites-state');
    for (const refused of [noCookie, wrongBrowser, await callback(b, 'github', junk, first.binding)]) {
      expect(refused.location).toBe('/?connect_error=expired&connect_provider=github');
      expect(refused.headers.get('set-cookie')).toBeNull();
    }
    const right = await callback(b, 'github', back, first.binding);
    expect(right.headers.get('set-cookie')).toMatch(/^__Host-keyward\.connect-github=; Path=\/; Max-Age=0/);
    expect(right.location).toBe('/?connected=github');
    const replayed = await callback(b, 'github', back, first.binding);
    expect(replayed.location).toBe('/?connect_error=expired&connect_provider=github');
    expect(provider.counts().codeGrants).toBe(codesBefore + 1);

    // Signed out (every session of the user revoked) between start and callback.
    const otherCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, {
      sub: 'local:grace',
      authTimeMs: Date.now() - 60_000,
    });
    const started = await keep(
      await handleConnectStart(
        new Request(`${APP}/api/connect/github`, { headers: { cookie: otherCookie } }),
        'github',
        a,
      ),
    );
    const binding = /^([^;]*)/.exec(started.headers.get('set-cookie')!)![1]!;
    const returned = await provider.drive(started.headers.get('location')!);
    await a.revocations.revokeUser('local:grace');
    const ended = await callback(b, 'github', returned, binding);
    expect(ended.location).toBe('/?connect_error=session_ended&connect_provider=github');
    // Only the one completed above was exchanged.
    expect(provider.counts().codeGrants).toBe(codesBefore + 1);
  });

  it('returnTo is a path on this site only', async () => {
    for (const returnTo of [
      '//evil.example/x',
      'https://evil.example/',
      '/\\evil.example',
      '/%0d%0aSet-Cookie:x',
      'javascript:alert(1)',
      // `//host` only once normalised (a review found these reached the bounce page as `//attacker.example/…`).
      '/.//a//attacker.example/login',
      '/%2e//a//attacker.example/login',
    ]) {
      // A scope not granted yet, so the provider asks, and Deny (no tokens are issued for these).
      const started = await start(a, 'github', `?scope=repo&returnTo=${encodeURIComponent(returnTo)}`);
      const returned = await provider.drive(started.location!, { deny: true });
      const done = await callback(b, 'github', returned, started.binding);
      const location = done.location!;
      expect(location.startsWith('/') && !location.startsWith('//'), location).toBe(true);
      expect(new URL(location, APP).origin).toBe(APP);
      if (!returnTo.startsWith('/%0d')) expect(new URL(location, APP).pathname).toBe('/');
    }
  });

  it("a refusal at the provider (Deny) comes back as access_denied, never the provider's text; the connection is unchanged", async () => {
    const grants = provider.counts().codeGrants;
    // `repo` is not granted yet, so the provider shows its consent page, where the user denies.
    const { done } = await connect('github', { query: '?scope=repo&returnTo=/accounts', deny: true });
    expect(provider.consents().at(-1)).toBe('repo');
    expect(provider.counts().codeGrants).toBe(grants);
    expect(done.location).toBe('/accounts?connect_error=access_denied&connect_provider=github');
    expect(seen.some((text) => text.includes('onerror') || text.includes('The user said no'))).toBe(false);
    expect((await list(a)).connections[0]?.status).toBe('connected');
  });

  it('refresh: an expired token, 20 concurrent calls over both instances, ONE refresh grant; lastRefreshAt is recorded', async () => {
    skewMs += 2 * 3600_000;
    const grantsBefore = provider.counts().refreshGrants;
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => call(i % 2 === 0 ? a : b, 'gh', 'user')));
    expect(results.map((r) => r.status)).toEqual(Array(20).fill(200));
    expect(provider.counts().refreshGrants).toBe(grantsBefore + 1);
    expect(lastAuthorization()).toBe(`Bearer ${provider.issued().accessTokens.at(-1)}`);
    const [connection] = (await list(a)).connections;
    expect(Date.parse(connection!.lastRefreshAt!)).toBeGreaterThan(Date.parse(connection!.connectedAt));
  });

  it('the idle-grant keeper: after 21 idle hours a pass refreshes the grant once, whichever instances run it', async () => {
    skewMs += 21 * 3600_000;
    const grantsBefore = provider.counts().refreshGrants;
    const [passA, passB] = await Promise.all([a.connectionKeeper!.pass(), b.connectionKeeper!.pass()]);
    // One instance ran the pass; the other found it taken (or already done within the hour).
    expect([passA.ran, passB.ran].filter(Boolean)).toHaveLength(1);
    expect(passA.refreshed + passB.refreshed).toBe(1);
    expect(provider.counts().refreshGrants).toBe(grantsBefore + 1);
    // The call after uses the token the keeper got (fresh: no refresh on use).
    expect((await call(a, 'gh', 'user')).status).toBe(200);
    expect(lastAuthorization()).toBe(`Bearer ${provider.issued().accessTokens.at(-1)}`);
    expect(provider.counts().refreshGrants).toBe(grantsBefore + 1);
    // Within the interval, no instance runs another pass.
    expect((await a.connectionKeeper!.pass()).ran).toBe(false);
    // An hour later a pass runs, but the grant is not idle any more: nothing to refresh.
    skewMs += 3600_000 + 1;
    expect(await b.connectionKeeper!.pass()).toMatchObject({ ran: true, refreshed: 0 });
    expect(provider.counts().refreshGrants).toBe(grantsBefore + 1);
  });

  it('incremental consent: reconnect with ?scope=repo keeps read:user, and the provider asks only for repo', async () => {
    const { started, done } = await connect('github', { query: '?scope=repo' });
    expect(new URL(started.location!).searchParams.get('scope')).toBe('read:user repo');
    expect(done.location).toBe('/?connected=github');
    expect(provider.consents().at(-1)).toBe('repo');
    const [connection] = (await list(a)).connections;
    expect(connection).toMatchObject({ provider: 'github', status: 'connected', scopes: ['read:user', 'repo'] });
    expect((await call(b, 'gh', 'user')).status).toBe(200);
  });

  it('a refresh the provider refuses marks the connection needs_reconnect: 403 connection_required, the list, the webhook, the audit', async () => {
    const refreshToken = provider.issued().refreshTokens.at(-1)!;
    await provider.revoke('github', refreshToken);
    skewMs += 2 * 3600_000;
    const before = upstream.requests.length;
    const refused = await call(a, 'gh', 'user');
    expect(refused.status).toBe(403);
    expect(errorOf(refused.body)).toMatchObject({ code: 'connection_required', connectUrl: '/api/connect/github' });
    expect(errorOf(refused.body).message).toContain('reconnect');
    // The next call, on the other instance, does not ask the provider again.
    const refusedAgain = await call(b, 'gh', 'user');
    expect(errorOf(refusedAgain.body).code).toBe('connection_required');
    expect(provider.counts().refreshRefused).toBe(1);
    expect(upstream.requests.length).toBe(before);

    expect((await list(b)).connections[0]).toMatchObject({
      provider: 'github',
      status: 'needs_reconnect',
      scopes: ['read:user', 'repo'],
    });
    // The webhook is sent in the background.
    // (The detector's own alerts use the same webhook: the echo upstream sends the token back, a scrubber hit.)
    const ours = () =>
      deliveries.filter((d) => (JSON.parse(d.body) as { type: string }).type === 'keyward.connection.needs_reconnect');
    await expect.poll(() => ours().length).toBe(1);
    const delivery = ours()[0]!;
    // Signed at the runtime's (moved) clock.
    expect(verifyWebhookSignature(webhookSecret, delivery.signature, delivery.body, now())).toBe(true);
    expect(JSON.parse(delivery.body)).toMatchObject({
      type: 'keyward.connection.needs_reconnect',
      connection: { provider: 'github', userId },
    });
    const audit = await a.audit.query({ type: 'admin', action: 'connection.needs_reconnect' }, { limit: 10 });
    expect(audit.records.map((record) => ('targetUser' in record ? record.targetUser : null))).toContain(userId);

    // The admin data shows it too.
    const adminCookie = await claimsSessionCookie(
      sessionSecrets.AUTH_SECRET,
      { sub: 'local:root', roles: ['user', 'admin'] },
      7 * 86_400,
    );
    const admin = await keep(
      await handleAdminUserConnections(
        new Request(`${APP}/api/admin/users/${userId}/connections`, {
          headers: { cookie: adminCookie, 'x-keyward-csrf': '1' },
        }),
        userId,
        a,
      ),
    );
    expect(JSON.parse(admin.body)).toMatchObject({
      userId,
      connections: [{ provider: 'github', status: 'needs_reconnect' }],
    });
    const notAdmin = await keep(
      await handleAdminUserConnections(
        new Request(`${APP}/api/admin/users/${userId}/connections`, { headers: { cookie, 'x-keyward-csrf': '1' } }),
        userId,
        a,
      ),
    );
    expect(notAdmin.status).toBe(403);
  });

  it('reconnect brings the connection back with the scopes it had', async () => {
    const { started, done } = await connect('github', { on: b, back: a });
    expect(new URL(started.location!).searchParams.get('scope')).toBe('read:user repo');
    expect(done.location).toBe('/?connected=github');
    expect((await list(a)).connections[0]).toMatchObject({ status: 'connected', scopes: ['read:user', 'repo'] });
    expect((await call(b, 'gh', 'user')).status).toBe(200);
    expect(lastAuthorization()).toBe(`Bearer ${provider.issued().accessTokens.at(-1)}`);
  });

  it('a reconnect that comes back while a disconnect holds the grant waits for it: its grant is saved after, never deleted unrevoked', async () => {
    const started = await start(a, 'github');
    const returned = await provider.drive(started.location!);
    // A disconnect under way on instance a: it holds the grant's lock while it revokes, then deletes the grant.
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let entered!: () => void;
    const holding = new Promise<void>((resolve) => (entered = resolve));
    const disconnecting = a.connections!.tokens.exclusive('github', userId, async () => {
      entered();
      await released;
      await a.connections!.tokens.unlink('github', userId);
    });
    await holding;
    let finished = false;
    const completing = callback(b, 'github', returned, started.binding).finally(() => (finished = true));
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(finished, 'the callback waits for the lock').toBe(false);
    release();
    await disconnecting;
    expect((await completing).location).toBe('/?connected=github');
    expect(await a.connections!.tokens.load('github', userId)).toMatchObject({ accessToken: provider.issued().accessTokens.at(-1) });
    expect((await call(b, 'gh', 'user')).status).toBe(200);
  });

  it('disconnect revokes the grant at the provider (RFC 7009), then deletes it everywhere', async () => {
    const access = provider.issued().accessTokens.at(-1)!;
    const refresh = provider.issued().refreshTokens.at(-1)!;
    expect(await provider.isActive('github', access)).toBe(true);
    const revocationsBefore = provider.counts().revocations;
    expect(await b.connections!.indexedUsers('github')).toContain(userId);
    const response = await disconnect(a, 'github');
    expect(response.status).toBe(200);
    // Out of the keeper's index too (its own field read and zeroed, not the whole index).
    expect(await b.connections!.indexedUsers('github')).not.toContain(userId);
    expect(JSON.parse(response.body)).toEqual({
      provider: 'github',
      disconnected: true,
      revokedAtProvider: true,
      sharedAccount: false,
    });
    expect(provider.counts().revocations).toBe(revocationsBefore + 2);
    expect(await provider.isActive('github', access)).toBe(false);
    expect(await provider.isActive('github', refresh)).toBe(false);
    expect((await list(b)).connections).toEqual([]);
    expect(await b.store.get(`oauth:github:${userId}`)).toBeNull();
    const after = await call(b, 'gh', 'user');
    expect(errorOf(after.body)).toMatchObject({ code: 'connection_required', connectUrl: '/api/connect/github' });
    expect(errorOf(after.body).message).not.toContain('reconnect');
    expect((await disconnect(b, 'github')).status).toBe(404);
    // DELETE is state-changing: without Origin it fails the CSRF check.
    const noOrigin = await keep(
      await handleConnection(
        new Request(`${APP}/api/connections/github`, { method: 'DELETE', headers: { cookie, 'x-keyward-csrf': '1' } }),
        'github',
        a,
      ),
    );
    expect(errorOf(noOrigin.body).code).toBe('csrf_failed');
  });
});

describe('the generic preset (issuer discovery), end to end', () => {
  it('connect (a nonce with openid), call, single-flight refresh over both instances, disconnect with the discovered revocation endpoint', async () => {
    const { started, done } = await connect('acme', { on: b, back: a });
    const authorize = new URL(started.location!);
    expect(authorize.searchParams.get('scope')).toBe('openid offline_access');
    expect(authorize.searchParams.get('nonce')).toMatch(/^[A-Za-z0-9_-]{40,}$/);
    expect(done.location).toBe('/?connected=acme');

    expect((await call(a, 'acme', 'me')).status).toBe(200);
    expect(lastAuthorization()).toBe(`Bearer ${provider.issued().accessTokens.at(-1)}`);

    skewMs += 2 * 3600_000;
    const grantsBefore = provider.counts().refreshGrants;
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => call(i % 2 === 0 ? a : b, 'acme', 'me')));
    expect(results.map((r) => r.status)).toEqual(Array(10).fill(200));
    expect(provider.counts().refreshGrants).toBe(grantsBefore + 1);

    const access = provider.issued().accessTokens.at(-1)!;
    const response = await disconnect(b, 'acme');
    expect(JSON.parse(response.body)).toMatchObject({ revokedAtProvider: true });
    expect(await provider.isActive('acme', access)).toBe(false);
    expect(errorOf((await call(a, 'acme', 'me')).body).code).toBe('connection_required');
  });

  it("two users linked to one account at the provider (the ID token's sub): the first to disconnect leaves the grant to the other, the last revokes it", async () => {
    const bob = 'local:bob';
    const bobCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: bob, roles: ['user'] }, 7 * 86_400);
    // The provider's browser session is still linus's: both connects act as the same account, in one grant.
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    const adaTokens = { accessToken: provider.issued().accessTokens.at(-1)!, refreshToken: provider.issued().refreshTokens.at(-1)!, expiresAt: 0 };
    expect((await connect('acme', { as: bobCookie, on: b, back: a })).done.location).toBe('/?connected=acme');
    const bobAccess = provider.issued().accessTokens.at(-1)!;
    const bobRefresh = provider.issued().refreshTokens.at(-1)!;
    expect(await provider.isActive('acme', bobRefresh)).toBe(true);
    const revocationsBefore = provider.counts().revocations;

    const first = await disconnect(a, 'acme');
    expect(JSON.parse(first.body)).toEqual({ provider: 'acme', disconnected: true, revokedAtProvider: false, sharedAccount: true });
    expect(provider.counts().revocations).toBe(revocationsBefore);
    expect(await provider.isActive('acme', bobAccess)).toBe(true);
    expect(await provider.isActive('acme', bobRefresh)).toBe(true);
    expect(errorOf((await call(b, 'acme', 'me')).body).code).toBe('connection_required');
    expect((await call(b, 'acme', 'me', bobCookie)).status).toBe(200);
    expect(lastAuthorization()).toBe(`Bearer ${bobAccess}`);
    const audit = await a.audit.query({ type: 'admin', action: 'connection.disconnect' }, { limit: 10 });
    expect(audit.records.map((record) => ('outcome' in record ? record.outcome : null))).toContain('acme:deleted:shared');
    // A refresh of ada's that was under way saves tokens after her disconnect: they are revoked as it revoked.
    await a.connections!.orphaned('acme', userId, adaTokens);
    expect(provider.counts().revocations).toBe(revocationsBefore);
    expect(await provider.isActive('acme', bobRefresh)).toBe(true);

    // Bob is the last one linked to it: his disconnect revokes the grant.
    const last = await disconnect(b, 'acme', bobCookie);
    expect(JSON.parse(last.body)).toMatchObject({ revokedAtProvider: true, sharedAccount: false });
    expect(await provider.isActive('acme', bobRefresh)).toBe(false);
    expect(await provider.isActive('acme', bobAccess)).toBe(false);
  });

  it('two users linked to one account who disconnect at the same moment: the grant does not outlive them both', async () => {
    const bob = 'local:bob';
    const bobCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: bob, roles: ['user'] }, 7 * 86_400);
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    expect((await connect('acme', { as: bobCookie, on: b, back: a })).done.location).toBe('/?connected=acme');
    const bobRefresh = provider.issued().refreshTokens.at(-1)!;
    expect(await provider.isActive('acme', bobRefresh)).toBe(true);

    // On two instances at once: each may find the other still linked, but not both (each unlinks itself first).
    const answers = await Promise.all([disconnect(a, 'acme'), disconnect(b, 'acme', bobCookie)]);
    const bodies = answers.map((answer) => JSON.parse(answer.body) as { revokedAtProvider: boolean; sharedAccount: boolean });
    expect(bodies.some((body) => body.revokedAtProvider && !body.sharedAccount)).toBe(true);
    expect(await provider.isActive('acme', bobRefresh)).toBe(false);
  });

  it('a linked user whose connection needs reconnecting does not hold the grant: the other one\'s disconnect revokes it', async () => {
    const bob = 'local:bob';
    const bobCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: bob, roles: ['user'] }, 7 * 86_400);
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    const adaAccess = provider.issued().accessTokens.at(-1)!;
    expect((await connect('acme', { as: bobCookie, on: b, back: a })).done.location).toBe('/?connected=acme');
    // Bob's refresh is refused (his token revoked at the provider): his connection needs reconnecting.
    await provider.revoke('acme', provider.issued().refreshTokens.at(-1)!);
    skewMs += 2 * 3600_000;
    expect(errorOf((await call(b, 'acme', 'me', bobCookie)).body).code).toBe('connection_required');

    const answer = JSON.parse((await disconnect(a, 'acme')).body) as { revokedAtProvider: boolean; sharedAccount: boolean };
    expect(answer).toMatchObject({ revokedAtProvider: true, sharedAccount: false });
    expect(await provider.isActive('acme', adaAccess)).toBe(false);
    expect(JSON.parse((await disconnect(b, 'acme', bobCookie)).body)).toMatchObject({ disconnected: true });
  });

  it('the indexes (who is connected, who shares an account) live as long as the connection: a reconnect and every keeper pass renew them', async () => {
    // When each index hash expires (PEXPIRETIME, ms): `connidx:acme`, and the one `connacct:acme:<digest>`.
    const expiries = async () => {
      const [accountKey, ...others] = await keysUnder(REDIS_URL, `${prefix}hash:connacct:acme:`);
      expect(accountKey).toBeDefined();
      expect(others).toEqual([]);
      const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
      await redis.connect();
      try {
        return {
          index: await redis.pexpiretime(`${prefix}hash:connidx:acme`),
          account: await redis.pexpiretime(accountKey!),
        };
      } finally {
        redis.disconnect();
      }
    };
    const days = (n: number) => n * 86_400_000;
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    const first = await expiries();
    expect(first.account).toBeGreaterThan(now() + days(399));
    expect(first.index).toBeGreaterThan(now() + days(399));

    // Two days on, the same account connected again (nothing in the indexes changes): both are renewed.
    skewMs += days(2);
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    const reconnected = await expiries();
    expect(reconnected.account).toBeGreaterThanOrEqual(first.account + days(2));
    expect(reconnected.index).toBeGreaterThanOrEqual(first.index + days(2));

    // Two more days without a connect: the keeper's pass renews the fields of every connection it finds alive.
    skewMs += days(2);
    expect((await a.connectionKeeper!.pass()).ran).toBe(true);
    const kept = await expiries();
    expect(kept.account).toBeGreaterThanOrEqual(reconnected.account + days(2));
    expect(kept.index).toBeGreaterThanOrEqual(reconnected.index + days(2));

    expect(JSON.parse((await disconnect(a, 'acme')).body)).toMatchObject({ disconnected: true, sharedAccount: false });
  });
});

describe('a reconnect replaces the grant', () => {
  /** The tokens the provider issued last (to the connect just made). */
  const lastIssued = () => ({ access: provider.issued().accessTokens.at(-1)!, refresh: provider.issued().refreshTokens.at(-1)! });

  it("to another account: the grant it replaced is revoked at the provider (RFC 7009); a later disconnect revokes the new one", async () => {
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    const x = lastIssued();
    const revocationsBefore = provider.counts().revocations;
    try {
      expect((await connect('acme', { other: true })).done.location).toBe('/?connected=acme');
    } finally {
      provider.signOut();
    }
    const y = lastIssued();
    expect(provider.counts().revocations).toBe(revocationsBefore + 2);
    expect(await provider.isActive('acme', x.refresh)).toBe(false);
    expect(await provider.isActive('acme', x.access)).toBe(false);
    expect(await provider.isActive('acme', y.refresh)).toBe(true);
    expect((await call(a, 'acme', 'me')).status).toBe(200);
    expect(lastAuthorization()).toBe(`Bearer ${y.access}`);

    const answer = JSON.parse((await disconnect(b, 'acme')).body) as { revokedAtProvider: boolean };
    expect(answer).toMatchObject({ revokedAtProvider: true, sharedAccount: false });
    expect(await provider.isActive('acme', y.refresh)).toBe(false);
    expect(await provider.isActive('acme', y.access)).toBe(false);
  });

  it('to the same account (one grant per account and app here, as at Google): nothing is revoked, the new tokens work; the disconnect ends both', async () => {
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    const first = lastIssued();
    const revocationsBefore = provider.counts().revocations;
    expect((await connect('acme', { on: b, back: a })).done.location).toBe('/?connected=acme');
    const second = lastIssued();
    expect(second.refresh).not.toBe(first.refresh);
    expect(provider.counts().revocations).toBe(revocationsBefore);
    expect(await provider.isActive('acme', second.refresh)).toBe(true);
    expect((await call(b, 'acme', 'me')).status).toBe(200);
    expect(lastAuthorization()).toBe(`Bearer ${second.access}`);

    expect(JSON.parse((await disconnect(a, 'acme')).body)).toMatchObject({ revokedAtProvider: true });
    // Revoking the new refresh token ended the grant, the earlier tokens with it.
    expect(await provider.isActive('acme', first.refresh)).toBe(false);
    expect(await provider.isActive('acme', second.refresh)).toBe(false);
  });

  it('answered with the refresh token already stored (the same grant, handed out again): nothing is revoked', async () => {
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    const stored = lastIssued();
    // A provider that does not rotate refresh tokens may give the same one back. Signed in as the other account,
    // so that only the "same grant" rule keeps the stored tokens from being revoked.
    const client = b.connections!.client('acme');
    const exchange = client.exchangeCode.bind(client);
    client.exchangeCode = async (...args) => ({ ...(await exchange(...args)), refreshToken: stored.refresh });
    const revocationsBefore = provider.counts().revocations;
    try {
      expect((await connect('acme', { other: true })).done.location).toBe('/?connected=acme');
    } finally {
      client.exchangeCode = exchange;
      provider.signOut();
    }
    expect(provider.counts().revocations).toBe(revocationsBefore);
    expect(await provider.isActive('acme', stored.refresh)).toBe(true);
    expect(await provider.isActive('acme', stored.access)).toBe(true);
    expect(JSON.parse((await disconnect(a, 'acme')).body)).toMatchObject({ disconnected: true });
  });

  it('another user still linked to the replaced account keeps its grant', async () => {
    const bob = 'local:bob';
    const bobCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: bob, roles: ['user'] }, 7 * 86_400);
    expect((await connect('acme', { as: bobCookie })).done.location).toBe('/?connected=acme');
    const bobs = lastIssued();
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    const revocationsBefore = provider.counts().revocations;
    try {
      expect((await connect('acme', { other: true })).done.location).toBe('/?connected=acme');
    } finally {
      provider.signOut();
    }
    expect(provider.counts().revocations).toBe(revocationsBefore);
    expect(await provider.isActive('acme', bobs.refresh)).toBe(true);
    expect((await call(a, 'acme', 'me', bobCookie)).status).toBe(200);
    expect(JSON.parse((await disconnect(a, 'acme')).body)).toMatchObject({ revokedAtProvider: true, sharedAccount: false });
    expect(JSON.parse((await disconnect(a, 'acme', bobCookie)).body)).toMatchObject({ revokedAtProvider: true, sharedAccount: false });
    expect(await provider.isActive('acme', bobs.refresh)).toBe(false);
  });

  it('a provider whose revocation fails: the reconnect still completes, and the failure is logged without a token', async () => {
    expect((await connect('acme')).done.location).toBe('/?connected=acme');
    const x = lastIssued();
    const revocationsBefore = provider.counts().revocations;
    const linesBefore = logLines.length;
    provider.failRevocations(true);
    try {
      expect((await connect('acme', { other: true })).done.location).toBe('/?connected=acme');
    } finally {
      provider.failRevocations(false);
      provider.signOut();
    }
    expect(provider.counts().revocations).toBeGreaterThan(revocationsBefore);
    expect(await provider.isActive('acme', x.refresh)).toBe(true);
    const y = lastIssued();
    expect((await call(b, 'acme', 'me')).status).toBe(200);
    expect(lastAuthorization()).toBe(`Bearer ${y.access}`);
    const logged = logLines.slice(linesBefore).join('\n');
    expect(logged).toContain('revoking the grant a reconnect replaced failed; the reconnect stands');
    expect(findLeak(logged, [x.access, x.refresh, y.access, y.refresh])).toBeNull();
    expect(JSON.parse((await disconnect(a, 'acme')).body)).toMatchObject({ revokedAtProvider: true });
    await provider.revoke('acme', x.refresh);
  });
});

describe('an expiring token with no refresh token', () => {
  it('once expired: needs_reconnect with its own reason (log, audit), the webhook as for a refusal, no request to the provider', async () => {
    // A user of its own: ada used up this window's connect starts above (PENDING_STARTS_MAX).
    const eve = 'local:eve';
    const eveCookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: eve, roles: ['user'] }, 7 * 86_400);
    // A provider that gives no refresh token (oidc-provider always does: dropped from its answer here).
    const client = b.connections!.client('acme');
    const exchange = client.exchangeCode.bind(client);
    client.exchangeCode = async (...args) => ({ ...(await exchange(...args)), refreshToken: null });
    try {
      expect((await connect('acme', { as: eveCookie })).done.location).toBe('/?connected=acme');
    } finally {
      client.exchangeCode = exchange;
    }
    expect((await call(a, 'acme', 'me', eveCookie)).status).toBe(200);
    const tokenRequests = provider.counts().tokenRequests;
    const linesBefore = logLines.length;
    const deliveriesBefore = deliveries.length;
    skewMs += 2 * 3600_000;

    const ended = await call(a, 'acme', 'me', eveCookie);
    expect(errorOf(ended.body)).toMatchObject({ code: 'connection_required', connectUrl: '/api/connect/acme' });
    expect(provider.counts().tokenRequests).toBe(tokenRequests);
    expect(await b.connections!.list({ userId: eve })).toMatchObject([{ provider: 'acme', status: 'needs_reconnect' }]);
    const logged = logLines.slice(linesBefore).join('\n');
    expect(logged).toContain('connection needs reconnecting: its token expired, and the provider gave no refresh token');
    expect(logged).not.toContain('the provider refused to refresh it');
    const audit = await a.audit.query({ type: 'admin', action: 'connection.needs_reconnect' }, { limit: 50 });
    expect(audit.records.map((record) => ('outcome' in record ? record.outcome : null))).toContain('acme:expired');
    await expect
      .poll(() =>
        deliveries
          .slice(deliveriesBefore)
          .map((d) => JSON.parse(d.body) as { type: string; connection?: { provider: string } })
          .filter((d) => d.type === 'keyward.connection.needs_reconnect' && d.connection?.provider === 'acme').length,
      )
      .toBe(1);

    expect(JSON.parse((await disconnect(a, 'acme', eveCookie)).body)).toMatchObject({ disconnected: true });
  });
});

// After the tests above: a connection of its own would change what the idle-grant keeper and refreshes count.
describe('a users file', () => {
  it("a local user given a new password (or removed) between start and callback: session_ended, no code exchanged", async () => {
    const password = randomSecret('pw');
    const before = await writeUsersFile([{ username: 'hal', password, roles: ['user'] }]);
    const renewed = await writeUsersFile([{ username: 'hal', password: randomSecret('new-pw'), roles: ['user'] }]);
    const removed = await writeUsersFile([{ username: 'someone-else', password, roles: ['user'] }]);
    // Instances reading each version of the file, on the same store (a redeploy, or another instance's copy).
    const [old, changed, without] = await Promise.all([before, renewed, removed].map((file) => instance({ KEYWARD_USERS_FILE: file })));
    // Valid for a week, as `cookie` is: the tests above moved the runtimes' clock on by hours.
    const halCookie = await claimsSessionCookie(
      sessionSecrets.AUTH_SECRET,
      { sub: 'local:hal', authTimeMs: now(), passwordVersion: passwordVersionIn(before, 'hal') },
      7 * 86_400,
    );
    const startAs = async () => {
      const started = await keep(await handleConnectStart(new Request(`${APP}/api/connect/github`, { headers: { cookie: halCookie } }), 'github', old!));
      expect(started.status).toBe(303);
      return { binding: /^([^;]*)/.exec(started.headers.get('set-cookie')!)![1]!, back: await provider.drive(started.headers.get('location')!) };
    };
    const codesBefore = provider.counts().codeGrants;
    for (const on of [changed!, without!]) {
      const { binding, back } = await startAs();
      expect((await callback(on, 'github', back, binding)).location).toBe('/?connect_error=session_ended&connect_provider=github');
    }
    expect(provider.counts().codeGrants).toBe(codesBefore);
    // Where the file still gives hal that password, the same flow completes.
    const { binding, back } = await startAs();
    expect((await callback(old!, 'github', back, binding)).location).toBe('/?connected=github');
    expect(provider.counts().codeGrants).toBe(codesBefore + 1);
  });

  it("a name given a new passwordHash (no server saw it removed): the next owner's calls never carry the last owner's token, until they connect their own", async () => {
    const before = await writeUsersFile([{ username: 'ivy', password: randomSecret('ivy-pw'), roles: ['user'] }]);
    const renewed = await writeUsersFile([{ username: 'ivy', password: randomSecret('ivy-next-pw'), roles: ['user'] }]);
    // The same store read by a server with each version of the file (a redeploy with the edited file).
    const [old, changed] = await Promise.all([before, renewed].map((file) => instance({ KEYWARD_USERS_FILE: file })));
    const ivyCookie = (file: string) =>
      claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:ivy', authTimeMs: now(), passwordVersion: passwordVersionIn(file, 'ivy') }, 7 * 86_400);
    const firstIvy = await ivyCookie(before);
    expect((await connect('github', { on: old!, back: old!, as: firstIvy })).done.location).toBe('/?connected=github');
    expect((await call(old!, 'gh', 'user', firstIvy)).status).toBe(200);
    const firstToken = lastAuthorization();
    expect(firstToken).toMatch(/^Bearer /);

    const nextIvy = await ivyCookie(renewed);
    const requestsBefore = upstream.requests.length;
    const refused = await call(changed!, 'gh', 'user', nextIvy);
    expect(refused.status).toBe(403);
    expect(errorOf(refused.body)).toMatchObject({ code: 'connection_required', connectUrl: '/api/connect/github' });
    expect(errorOf(refused.body).message).toContain('Connect your GitHub account');
    expect(upstream.requests.length).toBe(requestsBefore);
    expect((await list(changed!, nextIvy)).connections).toEqual([]);
    // Kept in the store, not deleted for the next owner.
    expect(await changed!.connections!.tokens.load('github', 'local:ivy')).not.toBeNull();

    // The next owner connects their own account: calls carry the new grant's token.
    expect((await connect('github', { on: changed!, back: changed!, as: nextIvy })).done.location).toBe('/?connected=github');
    expect((await call(changed!, 'gh', 'user', nextIvy)).status).toBe(200);
    expect(lastAuthorization()).toMatch(/^Bearer /);
    expect(lastAuthorization()).not.toBe(firstToken);
    expect((await list(changed!, nextIvy)).connections).toMatchObject([{ provider: 'github', status: 'connected' }]);
    expect(upstream.requests.filter((request) => request.headers.authorization === firstToken)).toHaveLength(1);
  });
});

describe('secrets', () => {
  it('no provider token or client secret in any response, log line or webhook; tokens sealed in the store', async () => {
    const issued = provider.issued();
    const secrets = [
      ...issued.accessTokens,
      ...issued.refreshTokens,
      provider.clients.github!.clientSecret,
      provider.clients.acme!.clientSecret,
    ];
    expect(issued.accessTokens.length).toBeGreaterThan(5);
    for (const text of [...seen, ...logLines, ...deliveries.map((d) => d.body)])
      expect(findLeak(text, secrets)).toBeNull();
  });
});
