import { z } from 'zod';

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
  type: 'string' | 'integer' | 'number' | 'boolean' | 'array' | 'object';
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
  description?: string;
}

const count = z.number().int().min(0).max(1_000_000);

/**
 * One field of a contract, in JSON Schema's words. Objects are closed: a field that is not declared is
 * refused. There is no `pattern` on purpose: a client-supplied string against a config regex is a ReDoS risk.
 */
export const fieldSpecSchema: z.ZodType<FieldSpecInput> = z.lazy(() =>
  z
    .strictObject({
      type: z.enum(['string', 'integer', 'number', 'boolean', 'array', 'object']),
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
            ctx.addIssue({ code: 'custom', path: ['required'], message: `"${name}" is not in properties` });
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
          if (!Object.hasOwn(spec.properties, name)) ctx.addIssue({ code: 'custom', path: ['required'], message: `"${name}" is not in properties` });
        }
      }),
    zodContract,
  ])
  .describe('Query parameters this route accepts; any other, or any repeated one not declared as an array, is refused.');

const bodyContractSchema = z
  .union([fieldSpecSchema, zodContract])
  .describe('The JSON body this route accepts (closed objects); it is re-serialised from the parsed value.');

const rolesFilter = z
  .array(z.string().min(1).max(64))
  .min(1)
  .optional()
  .describe('The rule applies only to sessions with one of these roles. Absent: to everyone.');

export const rateLimitSchema = z.strictObject({
  name: z.string().regex(POLICY_NAME, 'lowercase letters, digits, "_" and "-"').optional(),
  by: z.enum(['user', 'credential', 'upstream', 'ip']).describe('Who shares the counter.'),
  limit: z.number().int().min(1).max(1_000_000_000),
  windowSeconds: z.number().int().min(1).max(31 * 24 * 3600),
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

export const costSchema = z
  .strictObject({
    reserve: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(1).describe('Worst-case units reserved before forwarding.'),
    reserveFrom: z
      .strictObject({
        field: fieldTargetSchema.describe('A numeric request field bounding the cost, e.g. "body.max_tokens".'),
        times: z.number().positive().max(1_000_000).default(1),
        plus: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
      })
      .optional()
      .describe('Reserve field × times + plus when the field is present (else "reserve").'),
    usage: z
      .union([
        z.strictObject({ json: dottedPath.describe('Numeric field of the JSON response, or of the last SSE event carrying it.') }),
        z.strictObject({ header: z.string().regex(/^[A-Za-z0-9-]{1,64}$/).transform((n) => n.toLowerCase()) }),
      ])
      .optional()
      .describe('Where the upstream reports the real usage; settled when the response ends. Absent: the reservation is charged.'),
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
  identity: z
    .record(fieldTargetSchema, sessionValueSchema)
    .optional()
    .describe('Fields always written from the session, never taken from the client, e.g. {"body.user": "userId"}.'),
  caps: z
    .record(z.string().min(1).max(64), z.record(fieldTargetSchema, z.number()))
    .optional()
    .describe('Role → numeric field → maximum, e.g. {"free": {"body.max_tokens": 1000}}. Absent fields are set to the cap.'),
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
export type Period = (typeof PERIODS)[number];
