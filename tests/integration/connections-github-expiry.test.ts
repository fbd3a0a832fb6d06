import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleConnection, handleConnections } from '../../lib/core/api/connect';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { REDIS_URL, capturingLogger, claimsSessionCookie } from '../fixtures/claims-session';
import { connectGithub, githubConnectionAt, listenOnLoopback } from '../fixtures/github-connection';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';

/**
 * Disconnecting a GitHub App connection whose user token has expired (GitHub App user tokens live 8 hours, their
 * refresh tokens about 6 months). GitHub's "Delete an app authorization" authenticates with the access token
 * itself, and answers 404 for one that expired: the grant and its refresh token stay alive. Keyward refreshes
 * first, then deletes the grant with the new token; when it cannot refresh, it says it did not revoke.
 *
 * A fake GitHub on loopback (the preset's token URL pointed at it, so its grant API is `<origin>/api/v3`, as for
 * GitHub Enterprise Server) keeps real state: 8-hour access tokens, refresh tokens that rotate (each works once),
 * and grants deleted only through a valid token. It reads the test's clock, which the tests move.
 *
 * Then a GitHub OAuth app's grant (tokens that never expire, no refresh token) that the user revokes at GitHub
 * (Settings → Applications → Revoke): no refresh ever finds out, the upstream's 401 to the dead token is what tells.
 * Keyward then asks GitHub (GET /user with the token itself) and, when GitHub no longer knows the token, the
 * connection needs reconnecting. The fake's GET /repos is the upstream the calls go to (401 `Bad credentials` for a
 * token it does not know), GET /orgs answers 401 whatever the token (a 401 that is not about it), GET /user answers
 * 200 for a live token and 401 otherwise, and POST /applications/{client_id}/token ("Check a token") answers 404
 * for a live token too when the app's credentials are wrong, as GitHub does: it must never be what Keyward asks.
 */
const APP = 'https://app.keyward.test';
const CLIENT_ID = 'Iv1.keywardtest';
const CLIENT_SECRET = randomSecret('gh_client_secret');
const ACCESS_TTL_S = 8 * 3600;

interface Grant {
  account: number;
  alive: boolean;
  /** The grant's current tokens: older ones were rotated out. */
  accessToken: string;
  accessExpiresAt: number;
  refreshToken: string;
}

let skewMs = 0;
const now = () => Date.now() + skewMs;
const grants: Grant[] = [];
/** The account the next code exchange connects. */
let nextAccount = 42;
/** When set, the code exchange gives an OAuth app's token: it never expires, and comes with no refresh token. */
let oauthApp = false;
/** The tokens GET /user was asked about (the connect's own account lookup, and Keyward's checks). */
const checks: string[] = [];
/** When set, the token endpoint answers refreshes with this status (GitHub down). */
let refreshOutage: number | null = null;
let github: Server;
let origin: string;
let prefix: string;
let runtime: Runtime;
let store: RedisStore;
const sessionSecrets = testSessionSecrets();
const { logger, lines } = capturingLogger();
let cookie: string;

function issue(grant: Grant) {
  grant.accessToken = `ghu_${randomBytes(12).toString('hex')}`;
  grant.accessExpiresAt = now() + ACCESS_TTL_S * 1000;
  grant.refreshToken = `ghr_${randomBytes(12).toString('hex')}`;
  return {
    access_token: grant.accessToken,
    token_type: 'bearer',
    expires_in: ACCESS_TTL_S,
    refresh_token: grant.refreshToken,
    refresh_token_expires_in: 15_897_600,
    scope: '',
  };
}

/** The live grant a valid (unexpired, current) access token belongs to. */
function grantOf(accessToken: unknown): Grant | undefined {
  return grants.find((g) => g.alive && g.accessToken === accessToken && g.accessExpiresAt > now());
}

function startGithub(): Promise<void> {
  github = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const send = (status: number, value?: unknown) => {
        res.writeHead(status, value === undefined ? {} : { 'content-type': 'application/json' });
        res.end(value === undefined ? undefined : JSON.stringify(value));
      };
      const url = new URL(req.url!, origin);
      if (req.method === 'POST' && url.pathname === '/login/oauth/access_token') {
        const form = new URLSearchParams(body);
        if (form.get('client_id') !== CLIENT_ID || form.get('client_secret') !== CLIENT_SECRET)
          return send(200, { error: 'incorrect_client_credentials' });
        if (form.get('grant_type') === 'authorization_code') {
          const grant: Grant = { account: nextAccount, alive: true, accessToken: '', accessExpiresAt: 0, refreshToken: '' };
          grants.push(grant);
          const issued = issue(grant);
          if (!oauthApp) return send(200, issued);
          grant.accessExpiresAt = Infinity;
          return send(200, { access_token: issued.access_token, token_type: 'bearer', scope: 'read:user' });
        }
        if (refreshOutage !== null) return send(refreshOutage, { message: 'unavailable' });
        const grant = grants.find((g) => g.alive && g.refreshToken === form.get('refresh_token'));
        return grant ? send(200, issue(grant)) : send(200, { error: 'bad_refresh_token' });
      }
      if (req.method === 'GET' && (url.pathname === '/api/v3/user' || url.pathname === '/api/v3/repos')) {
        const token = req.headers.authorization?.replace(/^Bearer /, '') ?? '';
        if (url.pathname === '/api/v3/user') checks.push(token);
        const grant = grantOf(token);
        if (!grant) return send(401, { message: 'Bad credentials' });
        return send(200, url.pathname === '/api/v3/user' ? { id: grant.account } : []);
      }
      if (req.method === 'GET' && url.pathname === '/api/v3/orgs') return send(401, { message: 'Requires authentication' });
      const basic = `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`;
      // As GitHub with the app's credentials wrong (an operator's rotated or mistyped secret): 404 for any token.
      if (req.method === 'POST' && url.pathname === `/api/v3/applications/${CLIENT_ID}/token`) return send(404, { message: 'Not Found' });
      if (req.method === 'DELETE' && url.pathname === `/api/v3/applications/${CLIENT_ID}/grant`) {
        if (req.headers.authorization !== basic) return send(401, { message: 'Bad credentials' });
        const grant = grantOf((JSON.parse(body) as { access_token?: unknown }).access_token);
        // As GitHub: an expired or unknown token is Not Found, and the grant stays.
        if (!grant) return send(404, { message: 'Not Found' });
        grant.alive = false;
        return send(204);
      }
      send(404, { message: 'Not Found' });
    });
  });
  return listenOnLoopback(github).then((listening) => {
    origin = listening;
  });
}

/** A whole connect (the fake grants whatever is asked). */
function connect(): Promise<void> {
  return connectGithub(runtime, APP, cookie);
}

async function disconnect(): Promise<{ disconnected: boolean; revokedAtProvider: boolean }> {
  const response = await handleConnection(
    new Request(`${APP}/api/connections/github`, { method: 'DELETE', headers: { cookie, 'x-keyward-csrf': '1', origin: APP } }),
    'github',
    runtime,
  );
  expect(response.status).toBe(200);
  return (await response.json()) as { disconnected: boolean; revokedAtProvider: boolean };
}

async function call(path: string): Promise<{ status: number; body: string }> {
  const request = new Request(`${APP}/api/proxy/gh/${path}`, { headers: { cookie, 'x-keyward-csrf': '1' } });
  const response = await handleProxy(request, { upstream: 'gh', path: [path] }, runtime);
  return { status: response.status, body: await response.text() };
}

async function status(): Promise<string | undefined> {
  const response = await handleConnections(new Request(`${APP}/api/connections`, { headers: { cookie, 'x-keyward-csrf': '1' } }), runtime);
  const { connections } = (await response.json()) as { connections: { provider: string; status: string }[] };
  return connections.find((c) => c.provider === 'github')?.status;
}

beforeAll(async () => {
  await startGithub();
  prefix = `keyward-test:gh-expiry:${randomUUID()}:`;
  store = new RedisStore(REDIS_URL, { prefix });
  await store.ready();
  runtime = await createRuntime({
    env: {
      ...sessionSecrets,
      KEYWARD_VAULT_SECRET: randomSecret('vault'),
      GH_CLIENT_ID: CLIENT_ID,
      GH_CLIENT_SECRET: CLIENT_SECRET,
      KEYWARD_SESSION_MAX_AGE: String(7 * 86_400),
    },
    connections: githubConnectionAt(origin),
    upstreams: [
      defineUpstream('gh', {
        baseUrl: `${origin}/api/v3/`,
        auth: { type: 'bearer', secret: { oauth: 'github' } },
        routes: [
          { method: 'GET', path: '/repos' },
          { method: 'GET', path: '/orgs' },
        ],
      }),
    ],
    store,
    logger,
    now,
  });
  cookie = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:ada', roles: ['user'] }, 7 * 86_400);
});

afterAll(async () => {
  github?.closeAllConnections();
  github?.close();
  await store?.close();
  if (prefix) await deleteKeysUnder(REDIS_URL, prefix);
});

describe('disconnecting a GitHub App connection whose token expired', () => {
  it('refreshes it first, then deletes the grant with the new token: the refresh token is dead at GitHub too', async () => {
    await connect();
    const grant = grants.at(-1)!;
    skewMs += 9 * 3_600_000; // idle past the 8-hour access token
    expect(await disconnect()).toMatchObject({ disconnected: true, revokedAtProvider: true });
    expect(grant.alive).toBe(false);
  });

  it('says it did not revoke when the refresh fails (GitHub down), rather than counting its 404 as done', async () => {
    await connect();
    const grant = grants.at(-1)!;
    skewMs += 9 * 3_600_000;
    refreshOutage = 503;
    try {
      expect(await disconnect()).toMatchObject({ disconnected: true, revokedAtProvider: false });
    } finally {
      refreshOutage = null;
    }
    expect(grant.alive).toBe(true); // left at GitHub: the user removes it there (README "Connected accounts")
  });

  it("a reconnect to another GitHub account revokes the expired grant it replaced", async () => {
    nextAccount = 42;
    await connect();
    const replaced = grants.at(-1)!;
    skewMs += 9 * 3_600_000;
    nextAccount = 43;
    await connect();
    expect(replaced.alive).toBe(false);
    expect(grants.at(-1)!.alive).toBe(true);
    expect(await disconnect()).toMatchObject({ revokedAtProvider: true });
  });
});

describe('a GitHub OAuth app grant revoked at GitHub', () => {
  beforeAll(() => {
    oauthApp = true;
  });

  it("an upstream's 401 that is not about the token: GitHub says the token is alive, and the connection stands", async () => {
    await connect();
    const before = checks.length;
    expect((await call('repos')).status).toBe(200);
    expect((await call('orgs')).status).toBe(401);
    await expect.poll(() => checks.length).toBe(before + 1);
    // Asked with the token the call carried (GitHub's "Check a token" would answer 404 here: see the fake).
    expect(checks.at(-1)).toBe(grants.at(-1)!.accessToken);
    expect(await status()).toBe('connected');
    expect((await call('repos')).status).toBe(200);
  });

  it("revoked: the upstream's 401 passes through, GitHub confirms, and the connection needs reconnecting (403 connection_required after)", async () => {
    await store.delete('conncheck:github:local:ada'); // the last test's check holds the connection's one a minute
    await connect();
    grants.at(-1)!.alive = false; // the user revokes the app at GitHub
    const before = checks.length;
    expect(await call('repos')).toMatchObject({ status: 401, body: expect.stringContaining('Bad credentials') });
    await expect.poll(() => status()).toBe('needs_reconnect');
    expect(checks.length).toBe(before + 1);
    const next = await call('repos');
    expect(next.status).toBe(403);
    const { error } = JSON.parse(next.body) as { error: { code: string; connectUrl: string; message: string } };
    expect(error).toMatchObject({ code: 'connection_required', connectUrl: '/api/connect/github' });
    expect(error.message).toContain('reconnect');
    expect(lines.some((line) => line.includes('an upstream refused its token'))).toBe(true);
    await connect();
    expect(await status()).toBe('connected');
    expect((await call('repos')).status).toBe(200);
  });

  it('at most one check a minute per connection, however many 401s', async () => {
    await store.delete('conncheck:github:local:ada');
    const before = checks.length;
    await Promise.all(Array.from({ length: 10 }, () => call('orgs')));
    await expect.poll(() => checks.length).toBe(before + 1);
    for (let i = 0; i < 5; i++) await call('orgs');
    expect(checks.length).toBe(before + 1);
    expect(await status()).toBe('connected');
  });

  it('no token or client secret in any log line', () => {
    for (const line of lines) {
      expect(line).not.toContain(CLIENT_SECRET);
      for (const grant of grants) expect(line).not.toContain(grant.accessToken);
    }
  });
});
