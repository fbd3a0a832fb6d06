import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleProxy } from '../../lib/core/pipeline';
import { stripe } from '../../lib/core/presets';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { capturingLogger, claimsSessionCookie, findLeak, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * The Stripe preset's price allow-list (`prices`) and promotion codes (`promotionCodes`), through the real pipeline
 * against a node:http upstream on loopback standing in for api.stripe.com: which prices a caller may check out and
 * read, and that a 400 never repeats a key the client chose (a secret key pasted as a `metadata` key).
 */
const APP_ORIGIN = 'https://app.keyward.test';
const STRIPE_KEY = randomSecret('sk_test');
const sessionSecrets = testSessionSecrets();
const FORM = 'application/x-www-form-urlencoded';
let upstream: TestUpstream;
let runtime: Runtime;
let buyer: string;

beforeAll(async () => {
  upstream = await startUpstream();
  const baseUrl = `${upstream.origin}/stripe/v1/`;
  runtime = createRuntime({
    env: { ...sessionSecrets, STRIPE_SECRET_KEY: STRIPE_KEY, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, KEYWARD_STORE: 'memory' },
    upstreams: [
      stripe({ baseUrl }),
      stripe({ id: 'priced', baseUrl, prices: ['price_Basic1', 'price_Pro2'], promotionCodes: true }),
    ],
    logger: capturingLogger().logger,
  });
  buyer = await claimsSessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:buyer', roles: ['user'], claims: { stripeCustomerId: 'cus_Mine123' } });
});

afterAll(async () => {
  await runtime?.audit.flush().catch(() => {});
  await runtime?.store.close();
  await upstream?.close();
});

async function call(upstreamId: string, path: string, form?: string) {
  const url = new URL(`${APP_ORIGIN}/api/proxy/${upstreamId}${path}`);
  const headers: Record<string, string> = { cookie: buyer, 'x-keyward-csrf': '1', origin: APP_ORIGIN };
  if (form !== undefined) headers['content-type'] = FORM;
  const request = new Request(url, { method: form === undefined ? 'GET' : 'POST', headers, body: form });
  const segments = url.pathname.split('/').slice(4).map(decodeURIComponent);
  const { status, body } = await responseText(await handleProxy(request, { upstream: upstreamId, path: segments }, runtime));
  expect(findLeak(body, [STRIPE_KEY, ...Object.values(sessionSecrets)]), 'a secret leaked into a response').toBeNull();
  const error = status >= 400 ? (JSON.parse(body) as { error: { code: string; message: string } }).error : null;
  return { status, code: error?.code ?? null, message: error?.message ?? '' };
}

/** The form the upstream received for the last call. */
const sentForm = () => new URLSearchParams(upstream.requests.at(-1)!.bodyPreview.toString('utf8'));
const checkout = (price: string, extra = '') => `mode=subscription&line_items[0][price]=${price}&line_items[0][quantity]=1${extra}`;

describe('stripe preset with `prices`', () => {
  it('checks out only the listed prices: a hidden or partner price id is refused before the call', async () => {
    const before = upstream.requests.length;
    for (const price of ['price_PartnerHalfOff', 'price_Basic1x', 'price_basic1']) {
      const refused = await call('priced', '/checkout/sessions', checkout(price));
      expect(refused, price).toMatchObject({ status: 400, code: 'contract_violation' });
      expect(refused.message).toContain('body.line_items.0.price');
    }
    // One listed price among others is not enough: every line item's price must be listed.
    const mixed = await call('priced', '/checkout/sessions', `${checkout('price_Basic1')}&line_items[1][price]=price_PartnerHalfOff`);
    expect(mixed).toMatchObject({ status: 400, code: 'contract_violation' });
    expect(upstream.requests.length).toBe(before);
    expect(await call('priced', '/checkout/sessions', checkout('price_Pro2'))).toMatchObject({ status: 200 });
    expect(sentForm().get('line_items[0][price]')).toBe('price_Pro2');
  });

  it('reads only the listed prices, one by one; the account-wide list (hidden prices with it) is not a route', async () => {
    const before = upstream.requests.length;
    for (const path of ['/prices', '/prices?active=false&limit=100', '/prices/price_PartnerHalfOff', '/prices/price_basic1']) {
      expect(await call('priced', path), path).toMatchObject({ status: 404, code: 'route_not_found' });
    }
    // A listed price's product may be expanded; nothing else rides along in the query.
    for (const query of ['?expand[]=tiers', '?expand[]=product&active=false', '?lookup_keys[]=partner']) {
      expect(await call('priced', `/prices/price_Basic1${query}`), query).toMatchObject({ status: 400, code: 'contract_violation' });
    }
    expect(upstream.requests.length).toBe(before);
    for (const price of ['price_Basic1', 'price_Pro2']) {
      expect(await call('priced', `/prices/${price}`)).toMatchObject({ status: 200 });
      expect(upstream.requests.at(-1)!.url).toBe(`/stripe/v1/prices/${price}`);
    }
    expect(await call('priced', '/prices/price_Pro2?expand[]=product')).toMatchObject({ status: 200 });
    expect(new URL(upstream.requests.at(-1)!.url, 'http://x').searchParams.getAll('expand[]')).toEqual(['product']);
  });

  it('`promotionCodes: true` offers promotion codes on every Checkout Session; the client cannot turn them off', async () => {
    expect(await call('priced', '/checkout/sessions', checkout('price_Basic1'))).toMatchObject({ status: 200 });
    expect(sentForm().getAll('allow_promotion_codes')).toEqual(['true']);
    const before = upstream.requests.length;
    expect(await call('priced', '/checkout/sessions', checkout('price_Basic1', '&allow_promotion_codes=false'))).toMatchObject({ status: 400, code: 'contract_violation' });
    expect(upstream.requests.length).toBe(before);
  });
});

describe('stripe preset without `prices`', () => {
  it('takes any price id and lists the account\'s prices, as before', async () => {
    expect(await call('stripe', '/checkout/sessions', checkout('price_PartnerHalfOff'))).toMatchObject({ status: 200 });
    expect(await call('stripe', '/prices?active=false&limit=100')).toMatchObject({ status: 200 });
  });

  it('promotion codes are the operator\'s choice (`promotionCodes`, default off): a client asking for them is refused', async () => {
    const before = upstream.requests.length;
    const refused = await call('stripe', '/checkout/sessions', checkout('price_Basic1', '&allow_promotion_codes=true'));
    expect(refused).toMatchObject({ status: 400, code: 'contract_violation' });
    expect(refused.message).toContain('body.allow_promotion_codes');
    expect(upstream.requests.length).toBe(before);
    expect(await call('stripe', '/checkout/sessions', checkout('price_Basic1'))).toMatchObject({ status: 200 });
    expect(sentForm().has('allow_promotion_codes')).toBe(false);
  });
});

describe('stripe preset: a 400 never repeats a key the client chose', () => {
  it('a secret key pasted as a metadata key is named `(a key)`', async () => {
    const pasted = `sk_live_51HxPastedByMistake${randomSecret('k').replace(/[^A-Za-z0-9]/g, '').slice(0, 16)}`;
    for (const value of ['x'.repeat(600), 'ok']) {
      const answer = await call('stripe', '/checkout/sessions', checkout('price_Basic1', `&metadata[${pasted}]=${value}`));
      expect(answer).toMatchObject({ status: 400, code: 'contract_violation' });
      expect(answer.message).toContain('body.metadata.(a key)');
      expect(answer.message).not.toContain('sk_live');
    }
  });
});
