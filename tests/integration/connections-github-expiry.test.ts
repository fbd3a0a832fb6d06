import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleConnectCallback, handleConnection, handleConnectStart } from '../../lib/core/api/connect';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { REDIS_URL, capturingLogger, claimsSessionCookie } from '../fixtures/claims-session';
import { githubConnectionAt } from '../fixtures/github-connection';
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
/** When set, the token endpoint answers refreshes with this status (GitHub down). */
let refreshOutage: number | null = null;
let github: Server;
let origin: string;
let prefix: string;
let runtime: Runtime;
let store: RedisStore;
const sessionSecrets = testSessionSecrets();
const { logger } = capturingLogger();
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
          return send(200, issue(grant));
        }
        if (refreshOutage !== null) return send(refreshOutage, { message: 'unavailable' });
        const grant = grants.find((g) => g.alive && g.refreshToken === form.get('refresh_token'));
        return grant ? send(200, issue(grant)) : send(200, { error: 'bad_refresh_token' });
      }
      if (req.method === 'GET' && url.pathname === '/api/v3/user') {
        const grant = grantOf(req.headers.authorization?.replace(/^Bearer /, ''));
        return grant ? send(200, { id: grant.account }) : send(401, { message: 'Bad credentials' });
      }
      const basic = `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`;
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
  return new Promise((resolve) =>
    github.listen(0, '127.0.0.1', () => {
      origin = `http://127.0.0.1:${(github.address() as AddressInfo).port}`;
      resolve();
    }),
  );
}

/** Start, GitHub's consent (the fake grants whatever is asked), and the callback as the browser brings it back. */
async function connect(): Promise<void> {
  const started = await handleConnectStart(new Request(`${APP}/api/connect/github`, { headers: { cookie } }), 'github', runtime);
  expect(started.status).toBe(303);
  const binding = /^(__Host-keyward\.connect-github=[^;]*)/.exec(started.headers.get('set-cookie') ?? '')![1]!;
  const authorize = new URL(started.headers.get('location')!);
  const back = new URL(authorize.searchParams.get('redirect_uri')!);
  back.search = new URLSearchParams({ code: randomUUID(), state: authorize.searchParams.get('state')! }).toString();
  const done = await handleConnectCallback(new Request(back, { headers: { cookie: binding } }), 'github', runtime);
  expect(await done.text()).toContain('connected=github');
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
