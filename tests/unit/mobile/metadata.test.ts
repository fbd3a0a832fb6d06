import { describe, expect, it } from 'vitest';
import { handleOAuthMetadata } from '../../../lib/core/api/oauth-metadata';
import { createRuntime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import { createLogger } from '../../../lib/core/log/logger';
import { testSessionSecrets } from '../../fixtures/secrets';

const REDIRECT = 'com.example.app:/cb';

function runtimeWith(env: Record<string, string>, serving = true) {
  return createRuntime({
    env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory', ...env },
    store: new MemoryStore(),
    logger: createLogger({ level: 'silent' }),
    serving,
  });
}

async function metadata(
  env: Record<string, string>,
  init: { headers?: Record<string, string>; method?: string } = {},
  serving = true,
) {
  // Inside Next, request.url is the internal address whatever the Host was: it must never become the issuer.
  const request = new Request('http://localhost:3000/.well-known/oauth-authorization-server', init);
  const response = await handleOAuthMetadata(request, runtimeWith(env, serving));
  return { response, body: (await response.json()) as Record<string, unknown> };
}

describe('GET /.well-known/oauth-authorization-server (RFC 8414)', () => {
  it("states the deployment's public origin (AUTH_URL) as issuer, and only what the endpoints do", async () => {
    const { response, body } = await metadata(
      {
        NODE_ENV: 'production',
        AUTH_URL: 'https://keyward.example.com',
        KEYWARD_MOBILE_REDIRECT_URIS: REDIRECT,
      },
      {},
      false,
    );
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^application\/json/);
    expect(body).toEqual({
      issuer: 'https://keyward.example.com',
      authorization_endpoint: 'https://keyward.example.com/api/session/mobile/authorize',
      token_endpoint: 'https://keyward.example.com/api/session/token',
      response_types_supported: ['code'],
      response_modes_supported: ['query'],
      grant_types_supported: ['authorization_code', 'refresh_token'],
      code_challenge_methods_supported: ['S256'],
      token_endpoint_auth_methods_supported: ['none'],
      revocation_endpoint: 'https://keyward.example.com/api/session/token/revoke',
      revocation_endpoint_auth_methods_supported: ['none'],
      authorization_response_iss_parameter_supported: true,
      dpop_signing_alg_values_supported: ['ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519', 'PS256', 'PS384', 'PS512', 'RS256', 'RS384', 'RS512'],
    });
    expect(JSON.stringify(body)).not.toContain('localhost');
  });

  it('behind a trusted proxy: the forwarded host and protocol, not request.url', async () => {
    const { body } = await metadata(
      { AUTH_TRUST_HOST: 'true', KEYWARD_MOBILE_REDIRECT_URIS: REDIRECT },
      { headers: { host: 'localhost:3000', 'x-forwarded-host': 'app.example.org', 'x-forwarded-proto': 'https' } },
    );
    expect(body.issuer).toBe('https://app.example.org');
    expect(body.token_endpoint).toBe('https://app.example.org/api/session/token');
  });

  it('without the mobile token exchange there is nothing to describe: 404', async () => {
    const { response, body } = await metadata({});
    expect(response.status).toBe(404);
    expect(body).toMatchObject({ error: { code: 'route_not_found', message: expect.stringContaining('KEYWARD_MOBILE_REDIRECT_URIS') } });
  });

  it('POST → 405 (GET, HEAD)', async () => {
    const { response } = await metadata({ KEYWARD_MOBILE_REDIRECT_URIS: REDIRECT }, { method: 'POST' });
    expect(response.status).toBe(405);
    expect(response.headers.get('allow')).toBe('GET, HEAD');
  });

  it('no public origin (production, neither AUTH_URL nor a trusted host): 503, never a guess', async () => {
    const { response, body } = await metadata(
      { NODE_ENV: 'production', KEYWARD_MOBILE_REDIRECT_URIS: REDIRECT },
      {},
      false,
    );
    expect(response.status).toBe(503);
    expect(body).toMatchObject({ error: { code: 'service_unavailable' } });
  });
});
