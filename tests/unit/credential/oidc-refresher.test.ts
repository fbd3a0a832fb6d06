import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { oidcRefresher } from '../../../lib/core/credential/oauth';
import { writeEndless, READ_AT_MOST_MB } from '../../fixtures/endless-answer';
import { randomSecret } from '../../fixtures/secrets';

/**
 * oidcRefresher against a real issuer on loopback: a node:http server with a discovery document and a token
 * endpoint that answers the refresh grant with the `expires_in` a test sets. (A whole provider is started in
 * tests/integration/oauth-refresh.test.ts; oidc-provider will not issue a token with a lifetime of 0 or less.)
 */
let server: Server;
let issuer: string;
let expiresIn: unknown;
/** When set, the token endpoint's answer has no end (writeEndless); how many megabytes it had sent when it ended. */
let endless = false;
let sentMb: number | null = null;
const ACCESS = randomSecret('access');

beforeAll(async () => {
  server = createServer((req, res) => {
    if (req.url === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify({ issuer, token_endpoint: `${issuer}/token` }));
    }
    req.resume();
    req.on('end', () => {
      if (endless) return writeEndless(res, 200, '{"token_type":"Bearer","access_token":"', (megabytes) => (sentMb = megabytes));
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify({ access_token: ACCESS, token_type: 'Bearer', ...(expiresIn === undefined ? {} : { expires_in: expiresIn }) }));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(
  () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
);

describe('oidcRefresher: when the refreshed access token expires', () => {
  const NOW = 1_800_000_000_000;
  const refresh = () => oidcRefresher(issuer, 'client', randomSecret('client-secret'), () => NOW)(randomSecret('refresh'));

  it('expires_in seconds from when the refresh was sent; none or 0 read as "not said"', async () => {
    const cases: Array<[unknown, number]> = [
      [3600, NOW + 3_600_000],
      [undefined, 0],
      // 0 would make the token due at once: every call, and every caller behind the lock, refreshing again.
      [0, 0],
      // An absurd lifetime is capped at ten years, not Infinity.
      [1e300, NOW + 10 * 365 * 86_400_000],
    ];
    for (const [given, expected] of cases) {
      expiresIn = given;
      const tokens = await refresh();
      expect(tokens.accessToken).toBe(ACCESS);
      expect(tokens.expiresAt, String(given)).toBe(expected);
    }
  });
});

describe('oidcRefresher: an answer without end', () => {
  it('is refused after 1 MB, not read to its end (nor held in memory for the whole timeout)', async () => {
    endless = true;
    try {
      await expect(oidcRefresher(issuer, 'client', randomSecret('client-secret'))(randomSecret('refresh'))).rejects.toThrow();
      await expect.poll(() => sentMb).not.toBeNull();
      expect(sentMb).toBeLessThan(READ_AT_MOST_MB);
    } finally {
      endless = false;
    }
  });
});
