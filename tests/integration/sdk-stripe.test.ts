import { randomUUID } from 'node:crypto';
import Stripe from 'stripe';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { stripe as stripePreset } from '../../lib/core/presets';
import { FAKE_TOKENS, type FakeApi } from '../fixtures/fake-apis';
import { closeAfterLeakChecks, MEMBER_ROLE, sdkTestPolicy, startKeyward, THROTTLED_ROLE, type KeywardServer, type SdkIdentity } from '../fixtures/keyward-server';

/**
 * The official `stripe` SDK (stripe-node) against Keyward over real HTTP, with the `stripe` preset (routes
 * scoped to the caller's own customer, from the `stripeCustomerId` session claim) pointed at a local fake of
 * the Stripe API that checks `Authorization: Bearer <secret key>` (or Basic). stripe-node takes a host and
 * port but no base path, and its paths carry `/v1`: its fetch client is given a fetch that sends
 * `/v1/<path>` to `<site>/api/proxy/stripe/<path>` (and, for a cookie session, adds the CSRF header).
 */

const PLACEHOLDER = `sk_test_keyward_placeholder_${randomUUID().replaceAll('-', '')}`;
const CUSTOMER = 'cus_Mine123';
const buyer: SdkIdentity = { sub: 'local:buyer', claims: { stripeCustomerId: CUSTOMER } };

let kw: KeywardServer;
let fake: FakeApi;
let cookie: string;
const tokens: string[] = [];

beforeAll(async () => {
  kw = await startKeyward(['stripe'], (fakes) => [stripePreset({ baseUrl: `${fakes.stripe!.origin}/v1/`, ...sdkTestPolicy })]);
  fake = kw.fakes.stripe!;
  cookie = await kw.cookie(buyer);
});

afterAll(async () => {
  await closeAfterLeakChecks(kw, [PLACEHOLDER, cookie.split('=')[1]!, ...tokens]);
});

beforeEach(() => fake.stepwise(false));

/** stripe-node's fetch client, sending its `/v1/…` calls to Keyward's proxy path (as the README shows). */
function throughKeyward(inner: typeof fetch, csrf: boolean): Stripe.HttpClient {
  return Stripe.createFetchHttpClient((input, init) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    const target = new URL(`/api/proxy/stripe/${url.pathname.replace(/^\/v1\//, '')}${url.search}`, kw.origin);
    const headers = new Headers(init?.headers);
    if (csrf) headers.set('x-keyward-csrf', '1');
    return inner(target, { ...init, headers });
  });
}

/** A signed-in page's client: the browser sends the cookie; the SDK's key is a placeholder. */
function cookieClient(sessionCookie: string | null, options: { csrf?: boolean; maxNetworkRetries?: number } = {}): Stripe {
  return new Stripe(PLACEHOLDER, {
    httpClient: throughKeyward(sessionCookie === null ? fetch : kw.browserFetch(sessionCookie), options.csrf ?? true),
    maxNetworkRetries: options.maxNetworkRetries ?? 0,
  });
}

/** Cookie-less: the bearer session token is the SDK's key (stripe-node sends `Authorization: Bearer <key>`). */
async function tokenClient(identity: SdkIdentity, maxNetworkRetries = 0): Promise<Stripe> {
  const token = await kw.bearer(identity);
  tokens.push(token);
  return new Stripe(token, { httpClient: throughKeyward(fetch, false), maxNetworkRetries });
}

function lastRequest() {
  return fake.requests.at(-1)!;
}

describe('stripe SDK through Keyward', () => {
  it("retrieves the caller's own customer; the API sees the secret key and nothing of the client", async () => {
    const customer = await cookieClient(cookie).customers.retrieve(CUSTOMER);
    expect(customer.id).toBe(CUSTOMER);
    const request = lastRequest();
    expect(request.url).toBe(`/v1/customers/${CUSTOMER}`);
    expect(request.headers.authorization).toBe(`Bearer ${fake.key}`);
    expect(request.headers.cookie).toBeUndefined();
  });

  it('creates a Checkout Session: a form-encoded body, the customer stamped from the session, Idempotency-Key passed on', async () => {
    const session = await cookieClient(cookie).checkout.sessions.create(
      {
        mode: 'payment',
        line_items: [{ price: 'price_fake0', quantity: 2 }],
        success_url: 'https://app.example.com/paid',
        cancel_url: 'https://app.example.com/cart',
        metadata: { order: '42' },
      },
      { idempotencyKey: 'order-42' },
    );
    expect(session).toMatchObject({ id: 'cs_test_fake1', mode: 'payment', customer: CUSTOMER });
    const request = lastRequest();
    expect(request.headers['content-type']).toMatch(/^application\/x-www-form-urlencoded/);
    expect(request.headers['idempotency-key']).toBe('order-42');
    const form = new URLSearchParams(request.bodyPreview.toString('utf8'));
    expect(Object.fromEntries(form)).toMatchObject({
      mode: 'payment',
      'line_items[0][price]': 'price_fake0',
      'line_items[0][quantity]': '2',
      'metadata[order]': '42',
      customer: CUSTOMER,
    });
  });

  it('lists prices; a cookie-less client passes its bearer session token as the API key', async () => {
    const prices = await (await tokenClient(buyer)).prices.list({ active: true, limit: 10 });
    expect(prices.data.map((price) => price.id)).toEqual(FAKE_TOKENS.map((_, i) => `price_fake${i}`));
    const request = lastRequest();
    expect(Object.fromEntries(new URL(request.url, fake.origin).searchParams)).toEqual({ active: 'true', limit: '10' });
    expect(request.headers.authorization).toBe(`Bearer ${fake.key}`);
  });
});

describe("stripe SDK: Keyward's refusals as Stripe's error classes", () => {
  async function refusal(call: Promise<unknown>): Promise<Stripe.errors.StripeError> {
    const before = fake.requests.length;
    const error = await call.catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(Stripe.errors.StripeError);
    expect(fake.requests.length).toBe(before);
    return error as Stripe.errors.StripeError;
  }

  it('no session: 401 StripeAuthenticationError', async () => {
    const error = await refusal(cookieClient(null).customers.retrieve(CUSTOMER));
    expect(error).toBeInstanceOf(Stripe.errors.StripeAuthenticationError);
    expect(error.statusCode).toBe(401);
  });

  it("another customer's record: 403 StripePermissionError (not_owner)", async () => {
    const error = await refusal(cookieClient(cookie).customers.retrieve('cus_Victim'));
    expect(error).toBeInstanceOf(Stripe.errors.StripePermissionError);
    expect(error.statusCode).toBe(403);
    // Keyward's error body ({"error":{"code","message","requestId"}}) reads as Stripe's: code and message.
    expect(error.code).toBe('not_owner');
  });

  it('a session without the role, or without the CSRF header: 403 StripePermissionError', async () => {
    const forbidden = await refusal(cookieClient(await kw.cookie({ ...buyer, roles: ['user'] })).customers.retrieve(CUSTOMER));
    expect(forbidden).toBeInstanceOf(Stripe.errors.StripePermissionError);
    expect(forbidden.code).toBe('forbidden');
    const noCsrf = await refusal(cookieClient(cookie, { csrf: false }).customers.retrieve(CUSTOMER));
    expect(noCsrf.code).toBe('csrf_failed');
  });

  it('a body outside the contract: 400 StripeInvalidRequestError', async () => {
    const error = await refusal(
      cookieClient(cookie).checkout.sessions.create({ mode: 'payment', line_items: [{ price_data: { currency: 'usd', unit_amount: 1, product: 'prod_x' }, quantity: 1 }] }),
    );
    expect(error).toBeInstanceOf(Stripe.errors.StripeInvalidRequestError);
    expect(error.code).toBe('contract_violation');
  });

  it("Keyward's 429: StripeRateLimitError with Retry-After; stripe-node does not retry a 429, even with retries allowed", async () => {
    const client = await tokenClient({ ...buyer, sub: `local:${randomUUID()}`, roles: ['user', MEMBER_ROLE, THROTTLED_ROLE] }, 2);
    await client.customers.retrieve(CUSTOMER);
    const seenBefore = kw.responses.length;
    const error = await refusal(client.customers.retrieve(CUSTOMER));
    expect(error).toBeInstanceOf(Stripe.errors.StripeRateLimitError);
    expect(error.statusCode).toBe(429);
    expect(error.headers?.['retry-after']).toBe('1');
    expect(kw.responses.slice(seenBefore).map((seen) => seen.status)).toEqual([429]);
  });
});

describe('stripe SDK: aborts', () => {
  it("the SDK's request timeout (its only abort) closes the connection to the API", async () => {
    fake.stepwise(true);
    const call = (await tokenClient(buyer)).prices.list({}, { timeout: 200 });
    const error = await call.catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(Stripe.errors.StripeConnectionError);
    const request = lastRequest();
    await request.closed;
    expect(request.closedEarly).toBe(true);
    expect(fake.tokensSent).toBe(1);
  });
});
