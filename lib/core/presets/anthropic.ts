import { z } from 'zod';
import type { TypedRoute } from '../config/load';
import { commonPresetOptions, definePreset, presetFunction, type RouteInput } from './preset';
import { checkPrices, modelSchema, modelsOption, namesStoredObject, outputTokensOption, pricedCost, pricesOption, serverToolsOption, textIdentity } from './shared';

/**
 * Anthropic's Messages API (https://docs.anthropic.com/en/api/messages): `x-api-key`; `anthropic-version` and
 * `anthropic-beta` passed on as the client (its SDK) sends them, `anthropic-version` defaulted when it sends none; `metadata.user_id` stamped from the session.
 * Routes keep the API's `/v1/…` paths under the bare origin, as the official SDKs call them: their base URL is
 * `/api/proxy/anthropic`.
 */

/** The API version sent for a client that names none (plain fetch, the typed client, the key canary). */
export const ANTHROPIC_VERSION = '2023-06-01';

export const ANTHROPIC_DEFAULT_MODELS = ['claude-haiku-4-5', 'claude-sonnet-4-5', 'claude-3-5-haiku-latest'] as const;

/**
 * Tools Anthropic runs on its side (https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/overview), refused
 * unless `serverTools` names them: web search is billed per search and code execution per container hour
 * (https://docs.anthropic.com/en/docs/about-claude/pricing), fees budgets do not count. Named without the version
 * date their `type` carries (`web_search` allows `web_search_20250305` and later versions).
 */
export const ANTHROPIC_SERVER_TOOLS = ['web_search', 'web_fetch', 'code_execution', 'tool_search_tool_regex', 'tool_search_tool_bm25'] as const;

/** Tools Anthropic defines and the caller's application runs: they cost tokens only, which budgets count. */
const ANTHROPIC_CLIENT_TOOLS = ['bash', 'text_editor', 'computer', 'memory', 'computer_toolset', 'browser_toolset'];

const options = z.strictObject({
  ...commonPresetOptions,
  models: modelsOption(ANTHROPIC_DEFAULT_MODELS),
  maxOutputTokens: outputTokensOption(4096),
  prices: pricesOption,
  serverTools: serverToolsOption(ANTHROPIC_SERVER_TOOLS),
}).superRefine(checkPrices);

type Options = z.output<typeof options>;

const loose = z.unknown();

/**
 * Content of the caller's own: no block reads a file stored on the account by id (`source: {"type": "file",
 * "file_id": …}`, a `container_upload`), which with one shared key may be another user's. Inline (base64) and URL
 * sources pass.
 */
const STORED_FILE = 'a file_id reads a file stored on the account by id: not accepted';
const ownContent = <T extends z.ZodType>(schema: T) => schema.refine((value) => !namesStoredObject(value, (record) => Object.hasOwn(record, 'file_id')), STORED_FILE);
const messages = ownContent(z.array(loose).min(1).max(2048));
const system = ownContent(z.union([z.string().max(1_000_000), z.array(loose).max(256)]));

/**
 * A tool a caller may declare: its own (no `type`, or `"custom"`), one Anthropic defines for the caller to run,
 * or a server tool `serverTools` names, in any version (`<name>_<YYYYMMDD>`). Any other type (a server tool not
 * named, the MCP connector's `mcp_toolset`, one not yet known) is refused.
 */
function toolOf(serverTools: readonly string[]) {
  const versioned = new RegExp(`^(?:${[...ANTHROPIC_CLIENT_TOOLS, ...serverTools].join('|')})_\\d{8}$`);
  return z.looseObject({ type: z.union([z.literal('custom'), z.string().regex(versioned, 'a server tool serverTools does not name, or a tool type not known')]).optional() });
}

export function messagesBody(models: z.ZodType<string>, serverTools: readonly string[] = []) {
  return z.object({
    model: models,
    messages,
    // Required by the API: optional here so that a call without it gets the cap (see routes) instead of a 400;
    // one over the cap is lowered to it (overCap), as the Vercel AI SDK sends the model's own maximum by default.
    max_tokens: z.number().int().min(1).optional(),
    // Not here on purpose: `container`, which reuses a code-execution container (and its files) by id, another
    // user's with one shared key. Extend the schema to allow it where each user has their own key.
    context_management: loose.optional(),
    metadata: z.strictObject({ user_id: z.string().max(256).optional() }).optional(),
    service_tier: z.enum(['auto', 'standard_only']).optional(),
    stop_sequences: z.array(z.string().max(256)).max(16).optional(),
    stream: z.boolean().optional(),
    system: system.optional(),
    temperature: z.number().min(0).max(1).optional(),
    thinking: loose.optional(),
    tool_choice: loose.optional(),
    tools: z.array(toolOf(serverTools)).max(128).optional(),
    top_k: z.number().int().min(0).optional(),
    top_p: z.number().min(0).max(1).optional(),
  });
}

export function countTokensBody(models: z.ZodType<string>, serverTools: readonly string[] = []) {
  return z.object({
    model: models,
    messages,
    system: system.optional(),
    thinking: loose.optional(),
    tool_choice: loose.optional(),
    tools: z.array(toolOf(serverTools)).max(128).optional(),
  });
}

/**
 * Prompt-cache input, reported apart from `input_tokens`, at Anthropic's share of the input price: reads 0.1×,
 * writes 1.25× for the 5-minute cache and 2× for the 1-hour one (`cache_control.ttl: "1h"`). Only a JSON answer
 * (and `message_start`) says which writes were which (`cache_creation.ephemeral_5m_input_tokens`); a stream's
 * last `message_delta`, which a streamed call settles from, has the total alone. So every write is charged 2×,
 * less 0.75× for those reported as 5-minute ones: exact where the split is reported, never below the price.
 */
const PROMPT_CACHE = [
  { path: 'usage.cache_creation_input_tokens', times: 2 },
  { path: 'usage.cache_creation.ephemeral_5m_input_tokens', times: -0.75 },
  { path: 'usage.cache_read_input_tokens', times: 0.1 },
];

/**
 * Long-context pricing (https://docs.anthropic.com/en/docs/about-claude/pricing#long-context-pricing): a call of
 * more than 200K input tokens in all (input, cache writes and reads), which only the 1M context window
 * (`anthropic-beta: context-1m-…`) allows, pays 2× the input price and 1.5× the output price for all its tokens.
 * Filled in for every model priced without `longContext` of its own: no other call passes 200K, so the tier costs
 * nothing where it does not apply, and a 1M-context call cannot settle at half its cost.
 */
export function withLongContext(prices: NonNullable<Options['prices']>): NonNullable<Options['prices']> {
  return Object.fromEntries(
    Object.entries(prices).map(([model, price]) => [
      model,
      price.longContext ? price : { ...price, longContext: { above: 200_000, input: price.input * 2, output: price.output * 1.5 } },
    ]),
  );
}

function routes(o: Options): RouteInput[] {
  const models = modelSchema(o.models);
  return [
    {
      method: 'POST',
      path: '/v1/messages',
      body: messagesBody(models, o.serverTools),
      caps: { '*': { 'body.max_tokens': o.maxOutputTokens } },
      overCap: 'clamp',
      ...textIdentity('body.metadata.user_id'),
      genAi: { provider: 'anthropic', model: { field: 'body.model' }, inputTokens: ['usage.input_tokens'], outputTokens: ['usage.output_tokens'] },
      // Output tokens (or their cost): the JSON body's usage, or the stream's last `message_delta` (cumulative).
      cost: o.prices
        ? pricedCost(withLongContext(o.prices), 'body.max_tokens', ['usage.input_tokens'], ['usage.output_tokens'], PROMPT_CACHE)
        : { reserveFrom: { field: 'body.max_tokens' }, usage: { json: ['usage.output_tokens'] } },
    },
    { method: 'POST', path: '/v1/messages/count_tokens', body: countTokensBody(models, o.serverTools) },
    { method: 'GET', path: '/v1/models' },
    { method: 'GET', path: '/v1/models/:model' },
  ];
}

export const anthropicPreset = definePreset({
  name: 'anthropic',
  options,
  build: (o) => ({
    baseUrl: 'https://api.anthropic.com/',
    auth: { type: 'header', name: 'x-api-key', secret: o.secret ?? { env: 'ANTHROPIC_API_KEY' } },
    // Each SDK sends the version its response parsing expects, and keeps it.
    requestHeaders: ['anthropic-version', 'anthropic-beta'],
    responseHeaders: ['request-id'],
    routes: routes(o),
    timeoutMs: 120_000,
    // The API refuses a call without a version: this one goes with a client's (or the canary) that sends none.
    defaultHeaders: { 'anthropic-version': ANTHROPIC_VERSION },
    keys: o.secret === undefined || 'env' in o.secret ? { canary: { method: 'GET', path: '/v1/models' } } : undefined,
  }),
});

/** The routes as the typed client sees them. */
export type AnthropicRoutes = readonly [
  TypedRoute<'POST', '/v1/messages', z.input<ReturnType<typeof messagesBody>>>,
  TypedRoute<'POST', '/v1/messages/count_tokens', z.input<ReturnType<typeof countTokensBody>>>,
  TypedRoute<'GET', '/v1/models', never>,
  TypedRoute<'GET', '/v1/models/:model', never>,
];

/** `anthropic({ models: ['claude-haiku-4-5'] })`. */
export const anthropic = presetFunction<typeof options, AnthropicRoutes, 'anthropic'>(anthropicPreset);
