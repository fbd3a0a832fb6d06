import { z } from 'zod';
import { shownName } from './error';

/**
 * The policy language of a route in the JSON config: request contracts (a small subset of JSON Schema),
 * object-level checks, identity fields, per-role caps, rate limits, quotas, budgets and cost. TypeScript
 * adapters may give zod schemas instead of the declarative contracts (see `contractSchema`).
 */

const FIELD_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const POLICY_NAME = /^[a-z0-9][a-z0-9_-]{0,31}$/;

/** Where a value from the session comes from: the user id, or a string claim copied at sign-in. */
export const sessionValueSchema = z
  .string()
  .regex(/^(?:userId|claims\.[A-Za-z_][A-Za-z0-9_]{0,63})$/, 'must be "userId" or "claims.<name>"')
  .describe('"userId" or "claims.<name>" (a string claim copied into the session at sign-in).');

/** `body.a.b` or `query.name`: a field of the JSON body (dotted path) or a query parameter. */
const fieldTargetSchema = z
  .string()
  .regex(/^(?:body(?:\.[A-Za-z0-9_-]{1,64}){1,8}|query\.[A-Za-z0-9_-]{1,64})$/, 'must be "body.<path>" or "query.<name>"');

export interface FieldSpecInput {
  type: 'string' | 'integer' | 'number' | 'boolean' | 'array' | 'object' | 'file';
  enum?: (string | number | boolean)[];
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  items?: FieldSpecInput;
  minItems?: number;
  maxItems?: number;
  properties?: Record<string, FieldSpecInput>;
  required?: string[];
  maxBytes?: number;
  contentTypes?: string[];
  description?: string;
}

const count = z.number().int().min(0).max(1_000_000);

/** A media type a file part may carry (RFC 6838 §4.2 names), or a whole top-level type: "image/*". */
const mediaRangeSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/(?:\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126})$/, 'must be a media type such as "audio/mpeg" or "image/*"');

/** What a file part of a multipart body may be: its own byte cap and the media types it may declare. */
export const filePartSpecSchema = z.strictObject({
  maxBytes: z
    .number()
    .int()
    .positive()
    .max(1024 ** 3)
    .optional()
    .describe("Largest file accepted in this part, in bytes (the route's maxRequestBytes caps the whole body anyway)."),
  contentTypes: z
    .array(mediaRangeSchema)
    .min(1)
    .max(64)
    .optional()
    .describe('Media types the part may declare (Content-Type of the part), e.g. ["audio/mpeg", "image/*"]. Absent: any.'),
});

export type FilePartSpec = z.output<typeof filePartSpecSchema>;

/** What a multipart contract sees of a file part once it has been streamed through (zod contracts' input). */
export interface UploadedFile {
  /** The sanitised filename that was forwarded. */
  readonly filename: string;
  /** The part's media type, lower-case, without parameters. */
  readonly contentType: string;
  readonly bytes: number;
}

/** The file parts of zod multipart contracts, by schema instance (see `filePart`). */
export const fileParts = z.registry<FilePartSpec>();

/**
 * A file part in a zod multipart contract (TypeScript adapters), the counterpart of `{"type": "file"}`:
 * `body: z.object({ purpose: z.enum(['fine-tune']), file: filePart({ maxBytes: 25 << 20, contentTypes: ['audio/mpeg'] }) })`.
 * The file is streamed through under these limits; the contract then sees an `UploadedFile`.
 */
export function filePart(spec: FilePartSpec = {}): z.ZodType<UploadedFile> {
  const schema = z.strictObject({ filename: z.string(), contentType: z.string(), bytes: z.number().int().min(0) });
  return schema.register(fileParts, filePartSpecSchema.parse(spec));
}

/**
 * One field of a contract, in JSON Schema's words. Objects are closed: a field that is not declared is
 * refused. There is no `pattern` on purpose: a client-supplied string against a config regex is a ReDoS risk.
 */
export const fieldSpecSchema: z.ZodType<FieldSpecInput> = z.lazy(() =>
  z
    .strictObject({
      type: z.enum(['string', 'integer', 'number', 'boolean', 'array', 'object', 'file']),
      enum: z.array(z.union([z.string().max(256), z.number(), z.boolean()])).min(1).max(256).optional(),
      minLength: count.optional(),
      maxLength: count.optional(),
      minimum: z.number().optional(),
      maximum: z.number().optional(),
      items: fieldSpecSchema.optional(),
      minItems: count.optional(),
      maxItems: count.optional(),
      properties: z.record(z.string().regex(FIELD_NAME, 'field names are letters, digits, "_" and "-"'), fieldSpecSchema).optional(),
      required: z.array(z.string().regex(FIELD_NAME)).optional(),
      ...filePartSpecSchema.shape,
      description: z.string().max(512).optional(),
    })
    .superRefine((spec, ctx) => {
      const allowed: Record<FieldSpecInput['type'], readonly string[]> = {
        string: ['enum', 'minLength', 'maxLength'],
        integer: ['enum', 'minimum', 'maximum'],
        number: ['enum', 'minimum', 'maximum'],
        boolean: [],
        array: ['items', 'minItems', 'maxItems'],
        object: ['properties', 'required'],
        file: ['maxBytes', 'contentTypes'],
      };
      for (const key of Object.keys(spec)) {
        if (key === 'type' || key === 'description') continue;
        if (!allowed[spec.type].includes(key)) ctx.addIssue({ code: 'custom', path: [key], message: `does not apply to type "${spec.type}"` });
      }
      if (spec.type === 'array' && !spec.items) ctx.addIssue({ code: 'custom', path: ['items'], message: 'an array needs "items"' });
      (spec.enum ?? []).forEach((value, index) => {
        const fits = spec.type === 'string' ? typeof value === 'string' : spec.type === 'integer' ? Number.isInteger(value) : typeof value === 'number';
        if (!fits) ctx.addIssue({ code: 'custom', path: ['enum', index], message: `is not a value of type "${spec.type}"` });
      });
      if (spec.type === 'object') {
        for (const name of spec.required ?? []) {
          if (!spec.properties || !Object.hasOwn(spec.properties, name)) {
            ctx.addIssue({ code: 'custom', path: ['required'], message: `"${shownName(name)}" is not in properties` });
          }
        }
      }
    }),
);

/** A zod schema given by a TypeScript adapter; the JSON file can only use the declarative form. */
export const ZOD_CONTRACT_MESSAGE = 'must be a zod schema or a contract';
const zodContract = z.custom<z.ZodType>((value) => value instanceof z.ZodType, ZOD_CONTRACT_MESSAGE);

const queryContractSchema = z
  .union([
    z
      .strictObject({
        properties: z.record(z.string().regex(FIELD_NAME), fieldSpecSchema),
        required: z.array(z.string().regex(FIELD_NAME)).optional(),
      })
      .superRefine((spec, ctx) => {
        // As for objects: a misspelt name would otherwise make the parameter silently optional.
        for (const name of spec.required ?? []) {
          if (!Object.hasOwn(spec.properties, name)) ctx.addIssue({ code: 'custom', path: ['required'], message: `"${shownName(name)}" is not in properties` });
        }
      }),
    zodContract,
  ])
  .describe('Query parameters this route accepts; any other, or any repeated one not declared as an array, is refused.');

/**
 * Types only: what a route answers, for the typed client (lib/client, `npm run keyward -- types`). Keyward never
 * validates or reshapes a response against it; it passes on what the upstream sent (scrubbed).
 */
export const responseTypeSchema = z
  .union([fieldSpecSchema, zodContract])
  .describe('The response type the typed client gives this route (types only: Keyward does not validate responses).');

const bodyContractSchema = z
  .union([fieldSpecSchema, zodContract])
  .describe('The body this route accepts (closed objects), in its bodyFormat; it is re-serialised from the parsed value.');

export const BODY_FORMATS = ['json', 'form', 'multipart'] as const;
export type BodyFormat = (typeof BODY_FORMATS)[number];

/**
 * How a form body's arrays of values are written for the upstream (`formArrays`): `indexes` (`tag[0]=a&tag[1]=b`:
 * Stripe, PHP, qs/Express), `brackets` (`tag[]=a&tag[]=b`: Rack/Rails, PHP, qs) or `repeat` (`tag=a&tag=b`:
 * Django, Flask, Go's net/http, Spring, ASP.NET, FastAPI, which take `tag[0]` for a field of that name, while
 * Rack and PHP keep only the last). Arrays of objects are written with indexes in every style (`items[0][price]`).
 */
export const FORM_ARRAY_STYLES = ['indexes', 'brackets', 'repeat'] as const;
export type FormArrayStyle = (typeof FORM_ARRAY_STYLES)[number];

const rolesFilter = z
  .array(z.string().min(1).max(64))
  .min(1)
  .optional()
  .describe('The rule applies only to sessions with one of these roles. Absent: to everyone.');

/**
 * A rate limit's longest window: 24 days. The in-memory limiter (rate-limiter-flexible's, with the embedded
 * store) forgets a counter with a timer, and Node fires a timer longer than 2^31 - 1 ms (24.8 days) at once, so a
 * longer window would limit nothing there while it limited on Redis. A quota counts a month.
 */
export const MAX_RATE_WINDOW_SECONDS = 24 * 86_400;

export const rateLimitSchema = z.strictObject({
  name: z.string().regex(POLICY_NAME, 'lowercase letters, digits, "_" and "-"').optional(),
  by: z.enum(['user', 'credential', 'upstream', 'ip']).describe('Who shares the counter.'),
  limit: z.number().int().min(1).max(1_000_000_000),
  windowSeconds: z
    .number()
    .int()
    .min(1)
    .max(MAX_RATE_WINDOW_SECONDS, `at most ${MAX_RATE_WINDOW_SECONDS} (24 days); for a longer period, a quota ("period": "month")`)
    .describe('The window in seconds, at most 24 days.'),
  roles: rolesFilter,
});

const PERIODS = ['minute', 'hour', 'day', 'month'] as const;

export const quotaSchema = z.strictObject({
  name: z.string().regex(POLICY_NAME).optional(),
  by: z.enum(['user', 'credential', 'upstream']),
  requests: z.number().int().min(1).max(1_000_000_000),
  period: z.enum(PERIODS).describe('Calendar period in UTC: the counter starts again at its start.'),
  roles: rolesFilter,
});

export const budgetSchema = z.strictObject({
  name: z.string().regex(POLICY_NAME).optional(),
  by: z.enum(['user', 'credential', 'upstream']),
  units: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).describe('Cost units (tokens, cents…) as the routes\' "cost" counts them.'),
  period: z.enum(PERIODS),
  roles: rolesFilter,
});

const dottedPath = z.string().regex(/^[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,7}$/, 'must be a dotted field path');

const pathList = z.union([dottedPath.transform((path) => [path]), z.array(dottedPath).min(1).max(8)]);
const unitPrice = z.number().min(0).max(1_000_000);

/**
 * What a generative-AI route tells traces (OpenTelemetry GenAI semantic conventions,
 * https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/): the provider, the operation, where the
 * model is named and where the response reports its tokens. The LLM presets declare it; traces only.
 */
export const genAiSchema = z
  .strictObject({
    provider: z
      .string()
      .regex(/^[a-z0-9_.]{1,64}$/, 'must be a provider name such as "openai", "anthropic", "gcp.gemini", "aws.bedrock"')
      .describe('gen_ai.provider.name (and gen_ai.system): "openai", "anthropic", "gcp.gemini", "aws.bedrock"…'),
    operation: z.enum(['chat', 'generate_content', 'text_completion', 'embeddings']).default('chat').describe('gen_ai.operation.name.'),
    model: z
      .union([
        z.strictObject({ field: fieldTargetSchema.describe('The request field naming the model, e.g. "body.model".') }),
        z.strictObject({ param: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/).describe('The path parameter naming the model.') }),
        z.strictObject({ value: z.string().regex(/^[A-Za-z0-9._:/@-]{1,128}$/).describe('The model this route always calls.') }),
      ])
      .describe('gen_ai.request.model: from a request field, a path parameter, or fixed.'),
    inputTokens: pathList.optional().describe('gen_ai.usage.input_tokens: where the JSON response (or the last SSE event) reports them.'),
    outputTokens: pathList.optional().describe('gen_ai.usage.output_tokens: where the JSON response (or the last SSE event) reports them.'),
  })
  .describe('OpenTelemetry GenAI attributes for this route\'s spans (README "Metrics and traces").');

/**
 * A price table: what a token costs, per model, in budget units. With units of micro-dollars, a model's price
 * per token is its list price in dollars per million tokens (gpt-4.1-mini: {"input": 0.4, "output": 1.6}).
 */
export const priceSchema = z.strictObject({
  model: fieldTargetSchema.default('body.model').describe('The request field naming the model (default "body.model").'),
  table: z
    .record(
      z.string().regex(/^(?:\*|[A-Za-z0-9._:/@-]{1,128})$/, 'must be a model id or "*"'),
      z.strictObject({
        input: unitPrice.describe('Units per input token.'),
        output: unitPrice.describe('Units per output token.'),
        longContext: z
          .strictObject({
            above: z.number().int().min(1).max(100_000_000).describe('Input tokens of one call (reported input and input reported apart) above which these prices apply.'),
            input: unitPrice.describe('Units per input token of such a call.'),
            output: unitPrice.describe('Units per output token of such a call.'),
          })
          .optional()
          .describe(
            'Prices for every token of a call whose input passes `above`, as Anthropic charges a call of more than 200K input tokens (1M context window) 2× input and 1.5× output.',
          ),
      }),
    )
    .refine((table) => Object.keys(table).length > 0, 'must price at least one model')
    .describe('Model → price per token in budget units; "*" prices any other model. A call for an unpriced model is refused.'),
  inputTokens: pathList.describe('Where the response reports input tokens (as "usage.json"); absent there: the reserved bound is charged.'),
  extraInputTokens: z
    // A negative `times` takes back part of another entry's charge (a breakdown saying some of a total was cheaper).
    .array(z.strictObject({ path: dottedPath, times: z.number().min(-100).max(100).default(1) }))
    .max(8)
    .default([])
    .describe(
      'More input reported apart, added at `times` the input price, e.g. Anthropic\'s prompt cache: ' +
        '[{"path": "usage.cache_creation_input_tokens", "times": 1.25}, {"path": "usage.cache_read_input_tokens", "times": 0.1}].',
    ),
  outputTokens: pathList
    .optional()
    .describe('Where the response reports output tokens (as "usage.json"). Absent: the route has no output (embeddings), input must be reported.'),
});

export const costSchema = z
  .strictObject({
    reserve: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(1).describe('Worst-case units reserved before forwarding.'),
    reserveFrom: z
      .strictObject({
        field: fieldTargetSchema.describe('A numeric request field bounding the cost, e.g. "body.max_tokens".'),
        // As large as a price may be: a preset prices one image of `n` at `callPrice` units (reservations are capped).
        times: z.number().positive().max(Number.MAX_SAFE_INTEGER).default(1),
        plus: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
      })
      .optional()
      .describe('Reserve field × times + plus when the field is present (else "reserve").'),
    usage: z
      .union([
        z.strictObject({
          json: pathList.describe(
            'Numeric field of the JSON response, or of the last SSE event carrying it; a list is tried in order ' +
              '(e.g. ["usage.total_tokens", "response.usage.total_tokens"] for a JSON body and a stream\'s final event).',
          ),
        }),
        z.strictObject({
          sum: z
            .array(dottedPath)
            .min(1)
            .max(8)
            .describe('Numeric fields added up, from the same JSON body or event (e.g. Gemini\'s candidates and thoughts tokens).'),
        }),
        z.strictObject({ header: z.string().regex(/^[A-Za-z0-9-]{1,64}$/).transform((n) => n.toLowerCase()) }),
      ])
      .optional()
      .describe('Where the upstream reports the real usage; settled when the response ends. Absent: the reservation is charged.'),
    price: priceSchema
      .optional()
      .describe('Cost from a price table: units = input tokens × input price + output tokens × output price, per model.'),
  })
  .superRefine((cost, ctx) => {
    if (cost.price && cost.usage) ctx.addIssue({ code: 'custom', path: ['usage'], message: 'with "price", usage is read from price.inputTokens and price.outputTokens' });
  })
  .describe('What one call costs against budgets.');

/** Route fields added by the policy language (merged into the route schema). */
export const routePolicyFields = {
  scopes: z
    .array(z.string().min(1).max(128))
    .optional()
    .describe('The session needs every one of these scopes (space-separated "scope" claim).'),
  paramEquals: z
    .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), sessionValueSchema)
    .optional()
    .describe('Object-level check: path parameter → session value it must equal, e.g. {"id": "claims.accountId"}.'),
  query: queryContractSchema.optional(),
  body: bodyContractSchema.optional(),
  bodyFormat: z
    .enum(BODY_FORMATS)
    .optional()
    .describe(
      'How the "body" contract is read: "json" (default), "form" (application/x-www-form-urlencoded in bracket notation, ' +
        'e.g. metadata[order_id]=1, as Stripe uses) or "multipart" (multipart/form-data: text fields and "file" parts, streamed).',
    ),
  formArrays: z
    .enum(FORM_ARRAY_STYLES)
    .optional()
    .describe(
      'With "bodyFormat": "form": how arrays of values are sent upstream, whatever notation the client used: "indexes" ' +
        '(default, tag[0]=a&tag[1]=b: Stripe, PHP, Express), "brackets" (tag[]=a&tag[]=b: Rails/Rack, PHP) or "repeat" ' +
        '(tag=a&tag=b: Django, Flask, Go, Spring, ASP.NET, FastAPI). Arrays of objects always use indexes.',
    ),
  identity: z
    .record(fieldTargetSchema, sessionValueSchema)
    .optional()
    .describe('Fields always written from the session, never taken from the client, e.g. {"body.user": "userId"}.'),
  caps: z
    .record(z.string().min(1).max(64), z.record(fieldTargetSchema, z.number()))
    .optional()
    .describe(
      'Role → numeric field → maximum, e.g. {"free": {"body.max_tokens": 1000}}; the role "*" caps every caller. Absent fields are set to the cap.',
    ),
  overCap: z
    .enum(['refuse', 'clamp'])
    .optional()
    .describe('A value over its cap: "refuse" (default, 400 contract_violation) or "clamp" (lowered to the cap and forwarded).'),
  cost: costSchema.optional(),
  rateLimits: z.array(rateLimitSchema).max(16).optional().describe('Rate limits counted for this route only.'),
  quotas: z.array(quotaSchema).max(16).optional(),
  budgets: z.array(budgetSchema).max(16).optional(),
};

/** Upstream fields added by the policy language. */
export const upstreamPolicyFields = {
  rateLimits: z.array(rateLimitSchema).max(16).default([]).describe('Rate limits counted across all routes of this upstream.'),
  quotas: z.array(quotaSchema).max(16).default([]).describe('Request quotas per calendar period across all routes.'),
  budgets: z.array(budgetSchema).max(16).default([]).describe('Cost budgets per calendar period across all routes.'),
};

export type FieldTarget = z.output<typeof fieldTargetSchema>;
export type SessionValue = z.output<typeof sessionValueSchema>;
export type RateLimitConfig = z.output<typeof rateLimitSchema>;
export type QuotaConfig = z.output<typeof quotaSchema>;
export type BudgetConfig = z.output<typeof budgetSchema>;
export type CostConfig = z.output<typeof costSchema>;
export type GenAiConfig = z.output<typeof genAiSchema>;
export type Period = (typeof PERIODS)[number];
