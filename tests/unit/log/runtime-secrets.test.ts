import { describe, expect, it } from 'vitest';
import { defineUpstream } from '../../../lib/core/config/load';
import { logScrubber } from '../../../lib/core/log/logger';
import { createRuntime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import { randomSecret, testSessionSecrets } from '../../fixtures/secrets';

/** What a runtime puts in the process-wide log scrubber beyond the keys it sends (lib/core/runtime.ts). */
describe('secrets the log scrubber is given at start-up', () => {
  it("REDIS_URL's password, and a basic username from the environment on a per-user upstream (when 8 characters or more)", () => {
    const password = randomSecret('redis_pw');
    const username = randomSecret('acct');
    const store = new MemoryStore();
    createRuntime({
      env: {
        ...testSessionSecrets(),
        KEYWARD_VAULT_SECRET: randomSecret('vault'),
        REDIS_URL: `redis://default:${encodeURIComponent(password)}@127.0.0.1:6379`,
        ACCT: username,
      },
      upstreams: [
        defineUpstream('twilio', {
          baseUrl: 'https://api.twilio.test/',
          auth: { type: 'basic', username: { env: 'ACCT' }, secret: { user: 'key' } },
          routes: [{ method: 'GET', path: '/calls' }],
        }),
      ],
      store,
      serving: false,
    });
    const line = `ReplyError: NOAUTH AUTH ${password} refused; account ${username}`;
    expect(logScrubber.scrub(line)).toBe('ReplyError: NOAUTH AUTH [REDACTED] refused; account [REDACTED]');
  });

  it('a Redis password given in the query, as ioredis also reads it (`?password=`)', () => {
    const password = randomSecret('redis_query_pw');
    createRuntime({
      env: { ...testSessionSecrets(), REDIS_URL: `redis://127.0.0.1:6379/0?password=${encodeURIComponent(password)}` },
      store: new MemoryStore(),
      serving: false,
    });
    expect(logScrubber.scrub(`AUTH ${password}`)).toBe('AUTH [REDACTED]');
  });

  it("the OTLP exporter's header values (a collector's API key, a Basic credential), as written, as sent and the credential alone", () => {
    const apiKey = randomSecret('hc_team');
    const credential = Buffer.from(`grafana:${randomSecret('otlp_pw')}`).toString('base64');
    createRuntime({
      env: {
        ...testSessionSecrets(),
        OTEL_EXPORTER_OTLP_HEADERS: `x-honeycomb-team=${apiKey},authorization=Basic%20${credential}`,
        OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'x-scope-orgid=production,x-honeycomb-dataset=keyward-traces',
      },
      store: new MemoryStore(),
      serving: false,
    });
    for (const value of [apiKey, `Basic ${credential}`, `Basic%20${credential}`, credential]) {
      expect(logScrubber.scrub(`collector said: ${value}`)).toBe('collector said: [REDACTED]');
    }
    // A value under a name that is no credential's (a tenant, a dataset) is no secret to cut out of every line.
    expect(logScrubber.scrub('starting in production mode; dataset keyward-traces')).toBe('starting in production mode; dataset keyward-traces');
  });

  it('a short Redis password or username is not scrubbed (it would cut ordinary words out of every line)', () => {
    createRuntime({
      env: { ...testSessionSecrets(), KEYWARD_VAULT_SECRET: randomSecret('vault'), REDIS_URL: 'redis://:hunter@127.0.0.1:6379', SHORT: 'api' },
      upstreams: [
        defineUpstream('mail', {
          baseUrl: 'https://api.mail.test/',
          auth: { type: 'basic', username: { env: 'SHORT' }, secret: { user: 'key' } },
          routes: [{ method: 'GET', path: '/messages' }],
        }),
      ],
      store: new MemoryStore(),
      serving: false,
    });
    expect(logScrubber.scrub('the api answered: hunter2 is no password')).toBe('the api answered: hunter2 is no password');
  });
});

describe('what every answer is scrubbed of (heldSecrets)', () => {
  it("every secret Keyward holds, but not a basic username from the environment (an account name other APIs may show)", () => {
    const username = 'svc-report@example.com';
    const password = randomSecret('acct_pw');
    const clientKey = randomSecret('other_key');
    const runtime = createRuntime({
      env: { ...testSessionSecrets(), ACCT: username, ACCT_PW: password, OTHER_KEY: clientKey },
      upstreams: [
        defineUpstream('reports', {
          baseUrl: 'https://api.reports.test/',
          auth: { type: 'basic', username: { env: 'ACCT' }, secret: { env: 'ACCT_PW' } },
          routes: [{ method: 'GET', path: '/runs' }],
        }),
        defineUpstream('other', {
          baseUrl: 'https://api.other.test/',
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'OTHER_KEY' } },
          routes: [{ method: 'GET', path: '/things' }],
        }),
      ],
      store: new MemoryStore(),
      serving: false,
    });
    expect(runtime.heldSecrets.current()).toEqual(expect.arrayContaining([password, clientKey, runtime.settings.AUTH_SECRET]));
    expect(runtime.heldSecrets.current()).not.toContain(username);
    // Its own upstream's answers and every log line are still scrubbed of it.
    expect(logScrubber.scrub(`account ${username}`)).toBe('account [REDACTED]');
  });
});
