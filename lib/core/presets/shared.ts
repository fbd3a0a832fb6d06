import { z } from 'zod';
import { priceSchema } from '../config/policy';
import type { RouteInput } from './preset';

/** Pieces the presets share: the model allow-list, the output-token cap, the identity field. */

const MODEL_ID = /^[A-Za-z0-9._:/@-]{1,128}$/;

/** The `models` option: a list of model ids, or "*" for any (a preset's defaults when absent). */
export function modelsOption(defaults: readonly string[]) {
  return z
    .union([z.literal('*'), z.array(z.string().regex(MODEL_ID, 'must be a model id')).min(1).max(256)])
    .default([...defaults])
    .describe('Models callers may use ("*": any). Default: a few small, inexpensive models.');
}

/**
 * The `serverTools` option: tools the provider runs on its own side (web search, grounding, code execution) that
 * callers may declare. None by default: some are billed per use, a fee the API does not report as tokens, so no
 * budget counts it; a tool the option does not name is refused like any unknown field.
 */
export function serverToolsOption<const T extends readonly [string, ...string[]]>(names: T) {
  return z
    .array(z.enum(names))
    .max(names.length)
    .default([])
    .describe(
      `Tools the provider runs on its side that callers may declare, by name: ${names.map((name) => `"${name}"`).join(', ')}. ` +
        'Default none. Budgets do not count their per-use fees (README "Server-side tools").',
    );
}

/** The `model` field of a request body for this allow-list. */
export function modelSchema(models: '*' | readonly string[]): z.ZodType<string> {
  return models === '*' ? z.string().regex(MODEL_ID, 'must be a model id') : z.enum(models as [string, ...string[]]);
}

/** The `maxOutputTokens` option: the cap on a call's output tokens for every caller. */
export function outputTokensOption(defaultCap: number) {
  return z
    .number()
    .int()
    .min(1)
    .max(1_000_000)
    .default(defaultCap)
    .describe(`Largest number of output tokens one call may ask for; a call that names none gets this (default ${defaultCap}).`);
}

/**
 * Whether a request value names something stored on the provider's account (a file, a stored item, a cache, a
 * bucket's object) by id or location: with one shared key it may be another user's, so the presets refuse it,
 * as they refuse OpenAI's `previous_response_id`. `names` is asked of every object inside the value; deeper than
 * any request the APIs take (32 levels) counts as naming one (refused, not walked further).
 */
export function namesStoredObject(value: unknown, names: (record: Readonly<Record<string, unknown>>) => boolean, depth = 0): boolean {
  if (value === null || typeof value !== 'object') return false;
  if (depth > 32) return true;
  if (Array.isArray(value)) return value.some((item) => namesStoredObject(item, names, depth + 1));
  const record = value as Record<string, unknown>;
  if (names(record)) return true;
  return Object.values(record).some((item) => namesStoredObject(item, names, depth + 1));
}

/**
 * The values of `record`'s fields of this name, read the way APIs that parse proto3 JSON (Google's) read names:
 * the lowerCamelCase name and the proto field name (`fileData`, `file_data`) are the same field. Every spelling
 * present is returned (an object may hold two, and which one the API keeps is its own affair); empty when none.
 */
export function fieldsNamed(record: Readonly<Record<string, unknown>>, lowerCamel: string): unknown[] {
  const wanted = lowerCamel.toLowerCase();
  return Object.keys(record)
    .filter((name) => name.replaceAll('_', '').toLowerCase() === wanted)
    .map((name) => record[name]);
}

/** A route field stamped with the caller's user id, whatever the client sent. */
export function textIdentity(target: `body.${string}`): Pick<RouteInput, 'identity'> {
  return { identity: { [target]: 'userId' } };
}

/**
 * The `prices` option: model → price per token in budget units. With it, budgets count cost instead of output
 * tokens (README "Budgets from a price table"); every allowed model needs a price, or "*" one for the rest.
 */
export const pricesOption = priceSchema.shape.table
  .optional()
  .describe('Model → {"input", "output"} price per token in budget units (micro-dollars: the list price in $ per 1M tokens).');

/** Refines a preset's options: with `prices`, every model of a `models` list is priced (or "*" is). */
export function checkPrices(options: { models: '*' | readonly string[]; prices?: Record<string, unknown> }, ctx: z.RefinementCtx): void {
  const { prices, models } = options;
  if (!prices || Object.hasOwn(prices, '*')) return;
  const missing = models === '*' ? ['"*" (models is "*")'] : models.filter((model) => !Object.hasOwn(prices, model)).map((model) => `"${model}"`);
  if (missing.length > 0) ctx.addIssue({ code: 'custom', path: ['prices'], message: `no price for ${missing.join(', ')}; add them, or a "*" price` });
}

/** A route's `cost` with prices: the capped output bound reserved at the model's prices, settled from the reported tokens. */
export function pricedCost(
  prices: NonNullable<z.output<typeof pricesOption>>,
  bound: `body.${string}` | null,
  inputTokens: string[],
  outputTokens: string[] | undefined,
  extraInputTokens: { path: string; times: number }[] = [],
): NonNullable<RouteInput['cost']> {
  const price = { model: 'body.model' as const, table: prices, inputTokens, outputTokens, extraInputTokens };
  return bound ? { reserveFrom: { field: bound }, price } : { price };
}
