import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { parseConfig } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { openai, stripe } from '../../lib/core/presets';
import { chatCompletionsBody } from '../../lib/core/presets/openai';
import { checkoutSessionBody } from '../../lib/core/presets/stripe';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { claimsSessionCookie, findLeak } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * A route given beside a preset with the preset's method and path replaces the preset's route to loosen or
 * tighten its contract: what guards or prices that route (the caller's stamped identity, the object-level check,
 * caps, the cost a budget reserves) stays unless the given route sets it. Through the real pipeline against a
 * recording node:http upstream, for presets from TypeScript and from the JSON config.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const keys = { openai: randomSecret('oai'), stripe: randomSecret('sk_test') };
const sessionSecrets = testSessionSecrets();
const secrets = [...Object.values(keys), ...Object.values(sessionSecrets)];
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const expandQuery = z.object({ expand: z.string().max(255).optional() });

let upstream: TestUpstream;
let runtime: Runtime;
let buyer: string;

beforeAll(async () => {
  upstream = await startUpstream();
  const base = (path: string) => `${upstream.origin}${path}`;
  const fromJson = parseConfig(
    {
      upstreams: {
        'stripe-json': {
          preset: 'stripe',
          baseUrl: base('/stripe/v1/'),
          routes: [
            { method: 'GET', path: '/customers/:customer', query: { properties: { expand: { type: 'array', items: { type: 'string', maxLength: 255 }, maxItems: 8 } } } },
            { method: 'POST', path: '/setup_intents', maxRequestBytes: 32 * 1024 },
          ],
        },
      },
    },
    'KEYWARD_CONFIG',
  );
  runtime = createRuntime({
    env: { ...sessionSecrets, OPENAI_API_KEY: keys.openai, STRIPE_SECRET_KEY: keys.stripe, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, KEYWARD_STORE: 'memory' },
    upstreams: [
      stripe({
        baseUrl: base('/stripe/v1/'),
        routes: [
          {
            method: 'POST',
            path: '/checkout/sessions',
            bodyFormat: 'form',
            body: checkoutSessionBody(['payment']).extend({ submit_type: z.enum(['pay', 'book']).optional() }),
          },
          { method: 'GET', path: '/customers/:customer', query: expandQuery },
        ],
      }),
      ...fromJson,
      openai({
        baseUrl: base('/openai/v1/'),
        models: ['gpt-test'],
        maxOutputTokens: 500,
        budgets: [{ by: 'user', units: 1000, period: 'day' }],
        routes: [{ method: 'POST', path: '/chat/completions', body: chatCompletionsBody(z.enum(['gpt-test']), 500).extend({ prompt_cache_retention: z.enum(['in_memory', '24h']).optional() }) }],
      }),
    ],
  });
  buyer = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:buyer', roles: ['user'], claims: { stripeCustomerId: 'cus_Mine123' } });
});

afterAll(async () => {
  await upstream.close();
  await (runtime.dispatcher as { close?: () => Promise<void> }).close?.();
  await runtime.store.close();
});

beforeEach(() => upstream.reset());

async function call(upstreamId: string, path: string, init: { body?: string; cookie: string; headers?: Record<string, string> }) {
  const headers = new Headers({ cookie: init.cookie, 'x-keyward-csrf': '1', origin: APP_ORIGIN, ...init.headers });
  const url = new URL(`${APP_ORIGIN}/api/proxy/${upstreamId}${path}`);
  const request = new Request(url, { method: init.body === undefined ? 'GET' : 'POST', headers, body: init.body });
  const segments = url.pathname.split('/').slice(4).map(decodeURIComponent);
  const response = await handleProxy(request, { upstream: upstreamId, path: segments }, runtime);
  const text = await response.text();
  expect(findLeak(text, secrets), 'a secret leaked into a response').toBeNull();
  return { status: response.status, code: response.ok ? undefined : (JSON.parse(text) as { error: { code: string } }).error.code };
}

describe('a preset route replaced to loosen its contract keeps what guards it', () => {
  it('stripe Checkout: the caller\'s customer and client_reference_id are still stamped, whatever the client sent', async () => {
    const before = upstream.requests.length;
    const form = 'mode=payment&line_items[0][price]=price_1Abc&submit_type=book&customer=cus_Victim&client_reference_id=local:victim';
    expect((await call('stripe', '/checkout/sessions', { body: form, cookie: buyer, headers: FORM })).status).toBe(200);
    const sent = new URLSearchParams(upstream.requests[before]!.bodyPreview.toString('utf8'));
    expect(sent.get('submit_type')).toBe('book');
    expect(sent.getAll('customer')).toEqual(['cus_Mine123']);
    expect(sent.getAll('client_reference_id')).toEqual(['local:buyer']);
  });

  it('stripe customer, replaced only to take ?expand (TypeScript and JSON): another customer is still 403 not_owner', async () => {
    for (const id of ['stripe', 'stripe-json']) {
      const before = upstream.requests.length;
      expect(await call(id, '/customers/cus_Victim?expand=default_source', { cookie: buyer }), id).toEqual({ status: 403, code: 'not_owner' });
      expect(upstream.requests.length, id).toBe(before);
      expect((await call(id, '/customers/cus_Mine123?expand=default_source', { cookie: buyer })).status, id).toBe(200);
      expect(upstream.requests.at(-1)!.url, id).toBe('/stripe/v1/customers/cus_Mine123?expand=default_source');
    }
  });

  it('stripe from JSON, a route replaced only to lower its byte cap: still a form, still for the caller\'s customer', async () => {
    const before = upstream.requests.length;
    expect((await call('stripe-json', '/setup_intents', { body: 'usage=off_session&customer=cus_Victim', cookie: buyer, headers: FORM })).status).toBe(200);
    expect(new URLSearchParams(upstream.requests[before]!.bodyPreview.toString('utf8')).getAll('customer')).toEqual(['cus_Mine123']);
    expect(await call('stripe-json', '/setup_intents', { body: `usage=off_session&metadata[a]=${'x'.repeat(40 * 1024)}`, cookie: buyer, headers: FORM })).toMatchObject({ status: 413 });
  });

  it('openai chat with an extended body: the output is still capped, the caller stamped, the budget reserved', async () => {
    const spender = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:spender', roles: ['user'] });
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ usage: { completion_tokens: 450 } }));
    });
    const chat = { model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }], prompt_cache_retention: '24h' };
    const before = upstream.requests.length;
    const body = JSON.stringify({ ...chat, max_completion_tokens: 100_000, user: 'someone-else' });
    expect((await call('openai', '/chat/completions', { body, cookie: spender, headers: { 'content-type': 'application/json' } })).status).toBe(200);
    const received = JSON.parse(upstream.requests[before]!.bodyPreview.toString('utf8')) as Record<string, unknown>;
    expect(received).toEqual({ ...chat, max_completion_tokens: 500, user: 'local:spender', safety_identifier: 'local:spender' });
    // 1000 units: the first call settled at 450, the second too; a third would reserve 500 of the 100 left.
    const again = JSON.stringify(chat);
    expect((await call('openai', '/chat/completions', { body: again, cookie: spender, headers: { 'content-type': 'application/json' } })).status).toBe(200);
    expect(await call('openai', '/chat/completions', { body: again, cookie: spender, headers: { 'content-type': 'application/json' } })).toEqual({ status: 429, code: 'budget_exceeded' });
  });
});
