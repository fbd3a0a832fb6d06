import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { randomUUID } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signIn, startApp, type AppServer } from '../fixtures/app-server';
import { writeConfigFile } from '../fixtures/config';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { writeUsersFile } from '../fixtures/users';

/**
 * Issue 11, finding 3: a flood of sign-ins must not starve the process. Each attempt costs one scrypt
 * (128 MiB, one thread of libuv's pool for a few hundred ms); unbounded, 64 of them held the pool and a
 * gzip-encoded proxied call (zlib runs on the same pool) waited behind all of them. Now at most a few
 * hashes run or wait, the rest are answered 503 `sign_in_busy` with Retry-After at once, and the proxied
 * call goes through while the admitted hashes are still running. Against the real `next start` server;
 * assertions are on counts and ordering, never on wall-clock time.
 */

const FLOOD = 64;
const BODY = { ok: true, pad: 'z'.repeat(200_000) };

let app: AppServer;
let upstream: Server;
let cookie: string;

beforeAll(async () => {
  // A tiny upstream that always answers gzip-encoded JSON (whatever Accept-Encoding says), so Keyward
  // must gunzip it, on libuv's thread pool.
  const zipped = gzipSync(JSON.stringify(BODY));
  upstream = createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': zipped.length });
    res.end(zipped);
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  const { port } = upstream.address() as { port: number };
  const configPath = writeConfigFile({
    upstreams: {
      zipped: {
        baseUrl: `http://127.0.0.1:${port}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'ZIP_KEY' } },
        routes: [{ method: 'GET', path: '/data' }],
      },
    },
  });
  const password = `pw-${randomUUID()}`;
  const usersFile = await writeUsersFile([{ username: 'alice', password, roles: ['user'] }]);
  app = await startApp({
    ...testSessionSecrets(),
    ZIP_KEY: randomSecret('zip'),
    KEYWARD_CONFIG: configPath,
    KEYWARD_USERS_FILE: usersFile,
    KEYWARD_STORE: 'memory',
  });
  cookie = await signIn(app.url, 'alice', password);
}, 90_000);

afterAll(async () => {
  await app?.stop();
  upstream?.close();
});

interface FloodAnswer {
  status: number;
  code: string | null;
  retryAfter: string | null;
}

describe('a sign-in flood against next start', () => {
  it(`${FLOOD} concurrent bad sign-ins: the excess gets 503 sign_in_busy with Retry-After, and a gzip proxied call does not wait for the hashes`, async () => {
    // One valid CSRF pair for every attempt, so each one reaches the password check.
    const csrfResponse = await fetch(`${app.url}/api/auth/csrf`);
    const { csrfToken } = (await csrfResponse.json()) as { csrfToken: string };
    const csrfCookie = csrfResponse.headers.getSetCookie().map((line) => line.split(';')[0]).join('; ');

    let checksDone = 0;
    let firstRefusal!: () => void;
    const refused = new Promise<void>((resolve) => (firstRefusal = resolve));
    const attempts = Array.from({ length: FLOOD }, async (_, i): Promise<FloodAnswer> => {
      const response = await fetch(`${app.url}/api/auth/callback/credentials`, {
        method: 'POST',
        redirect: 'manual',
        headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: csrfCookie },
        // Unknown users cost a full hash too (no timing oracle), so they are the cheapest flood.
        body: new URLSearchParams({ csrfToken, username: `ghost-${i}-${randomUUID().slice(0, 6)}`, password: 'wrong-password' }),
      });
      const text = await response.text();
      if (response.status === 503) {
        firstRefusal();
        return { status: 503, code: (JSON.parse(text) as { error: { code: string } }).error.code, retryAfter: response.headers.get('retry-after') };
      }
      checksDone++;
      return { status: response.status, code: null, retryAfter: null };
    });
    const flood = Promise.all(attempts);

    // The first refusal means the bound is full: hashes are running and waiting right now.
    await Promise.race([refused, flood]);
    const proxied = await fetch(`${app.url}/api/proxy/zipped/data`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    const proxiedBody = await proxied.text();
    const checksDoneAtProxy = checksDone;

    const answers = await flood;
    const checks = answers.filter((answer) => answer.status !== 503);
    const busy = answers.filter((answer) => answer.status === 503);

    // The proxied gzip call succeeded, decoded.
    expect(proxied.status).toBe(200);
    expect(JSON.parse(proxiedBody)).toEqual(BODY);

    // The excess was refused at once, as the documented error with Retry-After.
    expect(busy.length).toBeGreaterThan(0);
    for (const answer of busy) {
      expect(answer.code).toBe('sign_in_busy');
      expect(answer.retryAfter).toMatch(/^[1-9]\d*$/);
    }
    // Every attempt let through was checked and refused as a wrong password (Auth.js's redirect), never a 500.
    for (const answer of checks) expect(answer.status).toBe(302);

    // The gzip call did not wait for the admitted hashes: some were still running or queued when it finished.
    expect(checksDoneAtProxy).toBeLessThan(checks.length);
  }, 120_000);
});
