import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { capturingLogger, claimsSessionCookie, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * The `User-Agent` an upstream receives: Keyward's own (`keyward`) unless the upstream's config names one, as a
 * fixed header (APIs such as SEC EDGAR or Nominatim want a contact in it), a default, or the client's own one
 * passed through (`requestHeaders`). A real node:http upstream on loopback.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const secrets = testSessionSecrets();
const CONTACT = 'ExampleCo admin@example.test';
let upstream: TestUpstream;
let runtime: Runtime;
let cookie: string;

async function userAgentSeen(id: string, clientAgent?: string): Promise<string | undefined> {
  const headers: Record<string, string> = { cookie, 'x-keyward-csrf': '1' };
  if (clientAgent) headers['user-agent'] = clientAgent;
  const request = new Request(`${APP_ORIGIN}/api/proxy/${id}/a`, { headers });
  const { status } = await responseText(await handleProxy(request, { upstream: id, path: ['a'] }, runtime));
  expect(status).toBe(200);
  return upstream.requests.at(-1)!.headers['user-agent'];
}

beforeAll(async () => {
  upstream = await startUpstream();
  const upstreamWith = (id: string, fields: Record<string, unknown>) =>
    defineUpstream(id, {
      baseUrl: `${upstream.origin}/${id}/`,
      auth: { type: 'header', name: 'x-api-key', secret: { env: 'UA_KEY' } },
      routes: [{ method: 'GET', path: '/a' }],
      ...fields,
    });
  runtime = createRuntime({
    env: { ...secrets, UA_KEY: randomSecret('ua-key'), KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN },
    upstreams: [
      upstreamWith('plain', {}),
      upstreamWith('fixed', { headers: { 'User-Agent': CONTACT } }),
      upstreamWith('default', { defaultHeaders: { 'user-agent': CONTACT }, requestHeaders: ['user-agent'] }),
      upstreamWith('passed', { requestHeaders: ['user-agent'] }),
    ],
    logger: capturingLogger().logger,
  });
  cookie = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:ua', roles: ['user'] });
});

afterAll(async () => {
  await runtime?.audit.flush().catch(() => {});
  await runtime?.store.close();
  await upstream?.close();
});

describe('the User-Agent sent upstream', () => {
  it("is Keyward's own unless the config names one; the client's is not passed on by default", async () => {
    expect(await userAgentSeen('plain', 'Browser/1.0')).toBe('keyward');
  });

  it('is a fixed header as configured, whatever the client sent', async () => {
    expect(await userAgentSeen('fixed', 'Browser/1.0')).toBe(CONTACT);
  });

  it("is the client's where the config passes it through, else the configured default, else Keyward's", async () => {
    expect(await userAgentSeen('default', 'Browser/1.0')).toBe('Browser/1.0');
    expect(await userAgentSeen('default')).toBe(CONTACT);
    expect(await userAgentSeen('passed', 'Browser/1.0')).toBe('Browser/1.0');
    // An empty one is none (some APIs refuse an empty User-Agent).
    expect(await userAgentSeen('passed', ' ')).toBe('keyward');
  });
});
