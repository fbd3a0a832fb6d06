import { z } from 'zod';
import { commonPresetOptions, definePreset, presetFunction, type RouteInput } from './preset';

/**
 * Stripe (https://docs.stripe.com/api): form-encoded bodies in bracket notation (`line_items[0][price]=…`),
 * `Idempotency-Key` and `Stripe-Version` passed on. A secret key can do anything on the account, so every route
 * is scoped to the caller's own Stripe customer, read from a session claim (`customerClaim`): stamped into
 * bodies and queries, and required to match `/customers/:customer`. Amounts never come from the browser:
 * payments go through Checkout Sessions of your own prices (a client-chosen PaymentIntent amount is price
 * tampering waiting to happen; add that route yourself only where the amount is the user's to choose). Which
 * prices is `prices`' to say: without it any active price of the account will do, a partner's or a retired
 * discount's too, and the account-wide price list shows them all.
 */

// Form values arrive as strings: numbers and booleans are read with z.coerce / string enums.
const id = (prefix: string) => z.string().regex(new RegExp(`^${prefix}_[A-Za-z0-9]{1,250}$`), `must be a ${prefix}_… id`);

const options = z.strictObject({
  ...commonPresetOptions,
  customerClaim: z
    .string()
    .regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/, 'must be a claim name')
    .default('stripeCustomerId')
    .describe('The session claim holding the caller\'s Stripe customer id (default "stripeCustomerId").'),
  modes: z
    .array(z.enum(['payment', 'subscription', 'setup']))
    .min(1)
    .default(['payment', 'subscription', 'setup'])
    .describe('Checkout Session modes callers may start.'),
  prices: z
    .array(id('price'))
    .min(1)
    .max(100)
    .optional()
    .describe(
      'The price ids callers may check out and read (GET /prices/<id> each; the account-wide GET /prices is then left out). Absent: any active price of the account.',
    ),
  promotionCodes: z
    .boolean()
    .default(false)
    .describe('Offer promotion codes on every Checkout Session (allow_promotion_codes=true); default false: a client asking for them is refused.'),
});

type Options = z.output<typeof options>;

const returnUrl = z.url({ protocol: /^https?$/ }).max(2048);
const metadata = z.record(z.string().max(40), z.string().max(500)).refine((value) => Object.keys(value).length <= 50, 'at most 50 keys');
const page = { limit: z.string().regex(/^\d{1,3}$/).optional(), starting_after: z.string().max(255).optional(), ending_before: z.string().max(255).optional() };
const expand = z.array(z.string().max(255)).max(8).optional();

/**
 * Checkout Session bodies. `prices`: the only price ids a line item may name (absent: any). `promotionCodes`: the
 * operator's choice, written into every session when true (the client may repeat it, not reverse it); when false,
 * only `false` (Stripe's default) is taken, so a client cannot open the promotion code box the operator left closed.
 */
export function checkoutSessionBody(modes: readonly string[], { prices, promotionCodes = false }: { prices?: readonly string[]; promotionCodes?: boolean } = {}) {
  const listed = prices && new Set(prices);
  const price = listed ? id('price').refine((value) => listed.has(value), 'must be one of the prices this app offers') : id('price');
  return z.object({
    mode: z.enum(modes as [string, ...string[]]),
    customer: z.string().optional(),
    line_items: z
      .array(z.strictObject({ price, quantity: z.coerce.number().int().min(1).max(999).optional() }))
      .min(1)
      .max(100)
      .optional(),
    success_url: returnUrl.optional(),
    cancel_url: returnUrl.optional(),
    return_url: returnUrl.optional(),
    ui_mode: z.enum(['hosted', 'embedded', 'custom']).optional(),
    client_reference_id: z.string().max(200).optional(),
    allow_promotion_codes: promotionCodes ? z.literal('true').default('true') : z.literal('false').optional(),
    locale: z.string().max(16).optional(),
    metadata: metadata.optional(),
    expand,
  });
}

export const billingPortalBody = z.object({ customer: z.string().optional(), return_url: returnUrl.optional(), locale: z.string().max(16).optional() });

export const setupIntentBody = z.object({
  customer: z.string().optional(),
  usage: z.enum(['on_session', 'off_session']).optional(),
  automatic_payment_methods: z.strictObject({ enabled: z.enum(['true', 'false']) }).optional(),
  payment_method_types: z.array(z.string().max(64)).max(16).optional(),
  metadata: metadata.optional(),
  expand,
});

export const listQuery = z.object({ ...page, customer: z.string().optional() });

function routes(o: Options): RouteInput[] {
  const customer = `claims.${o.customerClaim}` as const;
  const form = { bodyFormat: 'form' as const, maxRequestBytes: 64 * 1024, identity: { 'body.customer': customer } };
  return [
    { method: 'GET', path: '/customers/:customer', paramEquals: { customer } },
    { method: 'GET', path: '/payment_intents', query: listQuery, identity: { 'query.customer': customer } },
    { method: 'GET', path: '/payment_methods', query: listQuery.extend({ type: z.string().max(64).optional() }), identity: { 'query.customer': customer } },
    { method: 'GET', path: '/invoices', query: listQuery.extend({ status: z.string().max(32).optional() }), identity: { 'query.customer': customer } },
    { method: 'GET', path: '/subscriptions', query: listQuery.extend({ status: z.string().max(32).optional() }), identity: { 'query.customer': customer } },
    // client_reference_id is what fulfilment code matches a paid session to: the caller's own id, never the browser's.
    {
      method: 'POST',
      path: '/checkout/sessions',
      body: checkoutSessionBody(o.modes, { prices: o.prices, promotionCodes: o.promotionCodes }),
      ...form,
      identity: { ...form.identity, 'body.client_reference_id': 'userId' },
    },
    { method: 'POST', path: '/billing_portal/sessions', body: billingPortalBody, ...form },
    { method: 'POST', path: '/setup_intents', body: setupIntentBody, ...form },
    ...priceRoutes(o.prices),
    { method: 'GET', path: '/products', query: z.object({ ...page, active: z.enum(['true', 'false']).optional() }) },
  ];
}

/**
 * Reading prices. With `prices`, one literal route per listed price (`GET /prices/price_…`, taking only
 * `expand[]=product`): Stripe's list cannot be narrowed to ids, and unfiltered it shows every price of the account,
 * inactive ones too. A pricing page reads its prices one by one. Without `prices`, the account's list.
 */
function priceRoutes(prices: readonly string[] | undefined): RouteInput[] {
  const query = z.object({ 'expand[]': z.literal('product').optional() });
  if (prices) return [...new Set(prices)].map((price) => ({ method: 'GET', path: `/prices/${price}`, query }));
  return [{ method: 'GET', path: '/prices', query: z.object({ ...page, active: z.enum(['true', 'false']).optional(), product: z.string().max(255).optional(), currency: z.string().max(3).optional() }) }];
}

export const stripePreset = definePreset({
  name: 'stripe',
  options,
  build: (o) => ({
    baseUrl: 'https://api.stripe.com/v1/',
    auth: { type: 'bearer', secret: o.secret ?? { env: 'STRIPE_SECRET_KEY' } },
    requestHeaders: ['stripe-version'],
    responseHeaders: ['request-id', 'idempotent-replayed', 'stripe-version'],
    routes: routes(o),
    keys: o.secret === undefined || 'env' in o.secret ? { canary: { method: 'GET', path: '/prices' } } : undefined,
  }),
});

/** `stripe({ customerClaim: 'stripeCustomerId' })`. */
export const stripe = presetFunction(stripePreset);
