import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { buildRegistry } from '../../lib/core/upstream/registry';
import { capturingLogger, claimsSessionCookie, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { thrown } from '../unit/support';

/**
 * A route that writes `owner` into the query (an identity field), caps `limit` there, or reads its cost from it,
 * and takes a body with a contract: a body field by the same name is refused, since many servers read query and
 * body parameters as one, the body's over the query's (Rails, PHP's $_REQUEST, Stripe), and would take the
 * client's. A real node:http upstream on loopback.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const secrets = testSessionSecrets();
let upstream: TestUpstream;
let runtime: Runtime;
let cookie: string;

const openBody = { type: 'object', properties: { text: { type: 'string' }, owner: { type: 'string' }, limit: { type: 'integer' } } } as const;

async function post(path: string, body: string, contentType: string): Promise<{ status: number; code: string | null }> {
  const request = new Request(`${APP_ORIGIN}/api/proxy/twins/${path}`, {
    method: 'POST',
    headers: { cookie, 'x-keyward-csrf': '1', origin: APP_ORIGIN, 'content-type': contentType },
    body,
  });
  const response = await responseText(await handleProxy(request, { upstream: 'twins', path: [path] }, runtime));
  return { status: response.status, code: response.status >= 400 ? (JSON.parse(response.body) as { error: { code: string } }).error.code : null };
}

beforeAll(async () => {
  upstream = await startUpstream();
  runtime = createRuntime({
    env: { ...secrets, TWINS_KEY: randomSecret('twins-key'), KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN },
    upstreams: [
      defineUpstream('twins', {
        baseUrl: `${upstream.origin}/twins/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'TWINS_KEY' } },
        routes: [
          { method: 'POST', path: '/json', body: openBody, identity: { 'query.owner': 'userId' } },
          { method: 'POST', path: '/form', body: openBody, bodyFormat: 'form', caps: { '*': { 'query.limit': 10 } } },
          { method: 'POST', path: '/cost', body: openBody, cost: { reserve: 1, reserveFrom: { field: 'query.limit' } } },
        ],
      }),
    ],
    logger: capturingLogger().logger,
  });
  cookie = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:alice', roles: ['user'] });
});

afterAll(async () => {
  await runtime?.audit.flush().catch(() => {});
  await runtime?.store.close();
  await upstream?.close();
});

describe('a body field named as a query parameter Keyward writes or prices', () => {
  it('is refused, in any spelling a lenient parser folds to the name, and nothing is sent', async () => {
    const before = upstream.requests.length;
    expect(await post('json', JSON.stringify({ text: 'hi', owner: 'local:bob' }), 'application/json')).toEqual({ status: 400, code: 'contract_violation' });
    expect(await post('form', 'text=hi&limit=100000', 'application/x-www-form-urlencoded')).toEqual({ status: 400, code: 'contract_violation' });
    expect(await post('cost', JSON.stringify({ limit: 100000 }), 'application/json')).toEqual({ status: 400, code: 'contract_violation' });
    expect(upstream.requests.length).toBe(before);
  });

  it('leaves a body without it alone: the query carries Keyward\'s value', async () => {
    expect(await post('json', JSON.stringify({ text: 'hi' }), 'application/json')).toEqual({ status: 200, code: null });
    expect(upstream.requests.at(-1)!.url).toBe('/twins/json?owner=local%3Aalice');
    expect(await post('form', 'text=hi', 'application/x-www-form-urlencoded')).toEqual({ status: 200, code: null });
    expect(upstream.requests.at(-1)!.url).toBe('/twins/form?limit=10');
  });

  it('as a multipart part, stops start-up naming it (a part after the first file is checked only as it streams)', () => {
    const parts = defineUpstream('parts', {
      baseUrl: 'https://api.example.com/',
      auth: { type: 'header', name: 'x-api-key', secret: { env: 'K' } },
      routes: [{ method: 'POST', path: '/upload', bodyFormat: 'multipart', body: openBody, identity: { 'query.owner': 'userId' } }],
    });
    const error = thrown(() => buildRegistry([parts], { K: randomSecret('k') }));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain('routes.0.body.owner: is named as a query parameter this route writes');
  });
});
