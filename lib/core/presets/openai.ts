import { z } from 'zod';
import { filePart } from '../config/policy';
import type { TypedRoute } from '../config/load';
import { commonPresetOptions, definePreset, presetFunction, type RouteInput } from './preset';
import { checkPrices, modelSchema, modelsOption, namesStoredObject, outputTokensOption, pricedCost, pricesOption, serverToolsOption } from './shared';

/**
 * OpenAI, and any OpenAI-compatible API (`baseUrl`: Azure OpenAI's v1 endpoint, Groq, Together, Mistral, vLLM,
 * Ollama…). Routes: chat completions, responses (what the Vercel AI SDK's `openai('…')` calls), embeddings,
 * models, image generation, speech, transcription and translation (multipart uploads) and moderations. Every body is closed: a field not listed here is refused
 * (extend a route's schema to allow one). Request bodies: https://platform.openai.com/docs/api-reference.
 */

/** Models allowed when the user names none: small, inexpensive ones. `models: "*"` allows any. */
export const OPENAI_DEFAULT_MODELS = [
  'gpt-5-mini',
  'gpt-5-nano',
  'gpt-4.1-mini',
  'gpt-4.1-nano',
  'gpt-4o-mini',
  'text-embedding-3-small',
  'text-embedding-3-large',
  'gpt-image-1-mini',
  'gpt-4o-mini-tts',
  'gpt-4o-mini-transcribe',
  'whisper-1',
  'omni-moderation-latest',
] as const;

/**
 * Tools OpenAI runs on its side, refused unless `serverTools` names them: web search is billed per call
 * (https://platform.openai.com/docs/pricing#built-in-tools), which `usage` does not report.
 */
export const OPENAI_SERVER_TOOLS = ['web_search', 'web_search_preview'] as const;

const options = z.strictObject({
  ...commonPresetOptions,
  models: modelsOption(OPENAI_DEFAULT_MODELS),
  maxOutputTokens: outputTokensOption(4096),
  identity: z
    .enum(['safety_identifier', 'user', 'none'])
    .default('safety_identifier')
    .describe(
      'Body field stamped with the caller\'s user id on chat, responses, embeddings and images ("user" for ' +
        'OpenAI-compatible APIs that predate safety_identifier; "none" for those that refuse both).',
    ),
  prices: pricesOption,
  serverTools: serverToolsOption(OPENAI_SERVER_TOOLS),
  callPrice: z
    .number()
    .int()
    .min(0)
    .max(Number.MAX_SAFE_INTEGER)
    .optional()
    .describe(
      'Budget units per call on routes that report no tokens (per image for image generations, whose `n` makes ' +
        'several; speech, transcription, translation). With ' +
        '`prices` and no callPrice, those routes are left out: nothing would bound what they cost.',
    ),
}).superRefine(checkPrices);

type Options = z.output<typeof options>;

const loose = z.unknown();

/**
 * What in messages or input items reads an object stored on the account by id: an item reference (`type:
 * "item_reference"`, or no type at all, which the API reads the same way: `{"id": "msg_…"}`; a chat assistant
 * message's `audio: {"id": …}` is one too), a reasoning item by its id alone (without the `encrypted_content` that
 * carries it by value, the API reads the stored reasoning: `{"type": "reasoning", "id": "rs_…", "summary": []}`),
 * or a `file_id` anywhere. An item with a role is a message, sent by value.
 */
function storedById(record: Readonly<Record<string, unknown>>): boolean {
  if (record.type === 'item_reference' || Object.hasOwn(record, 'file_id')) return true;
  if (record.type === 'reasoning') return Object.hasOwn(record, 'id') && typeof record.encrypted_content !== 'string';
  return (record.type === undefined || record.type === null) && Object.hasOwn(record, 'id') && !Object.hasOwn(record, 'role');
}

/** Messages or input items of the caller's own: none refers to an object stored on the account (see above). */
const ownItems = (max: number) =>
  z
    .array(loose)
    .max(max)
    .refine((items) => !namesStoredObject(items, storedById), 'an item reference, a reasoning item without its encrypted_content, or a file_id reads an object stored on the account by id: not accepted');
const metadata = z.record(z.string().max(64), z.string().max(512)).refine((value) => Object.keys(value).length <= 16, 'at most 16 keys');
const temperature = z.number().min(0).max(2);
const stop = z.union([z.string().max(256), z.array(z.string().max(256)).max(4)]);

/**
 * Tool types a caller may declare, and the server tools `serverTools` names. Left out: tools that reach the
 * account's stored data by id (file_search's vector stores, code_interpreter's containers and files), remote MCP
 * servers and computer use.
 */
const CLIENT_TOOLS = ['function', 'custom'] as const;

function toolOf(types: readonly string[]) {
  return z.looseObject({ type: z.enum(types as [string, ...string[]]) });
}

/** The server tools `serverTools` allows (none by default). */
type ServerTools = readonly string[];

/** Chat completions: `POST /chat/completions`. Web search (`web_search_options`) with `serverTools: ["web_search"]`. */
export function chatCompletionsBody(models: z.ZodType<string>, maxOutputTokens: number, serverTools: ServerTools = []) {
  const body = z.object({
    model: models,
    messages: ownItems(2048).refine((items) => items.length >= 1, 'at least one message'),
    audio: loose.optional(),
    frequency_penalty: z.number().min(-2).max(2).optional(),
    logit_bias: z.record(z.string().max(16), z.number().min(-100).max(100)).optional(),
    logprobs: z.boolean().optional(),
    // Over the cap: lowered to it (the route's overCap), as SDKs send a model's own maximum by default.
    max_completion_tokens: z.number().int().min(1).optional(),
    // Deprecated but still sent by older SDKs; bounded like its successor (which the cap fills in).
    max_tokens: z.number().int().min(1).max(maxOutputTokens).optional(),
    metadata: metadata.optional(),
    modalities: z.array(z.enum(['text', 'audio'])).max(2).optional(),
    // One completion per call: the budget reserves one output's worth of tokens (override the route for more).
    n: z.literal(1).optional(),
    parallel_tool_calls: z.boolean().optional(),
    prediction: loose.optional(),
    presence_penalty: z.number().min(-2).max(2).optional(),
    prompt_cache_key: z.string().max(256).optional(),
    reasoning_effort: z.enum(['minimal', 'low', 'medium', 'high', 'none']).optional(),
    response_format: loose.optional(),
    safety_identifier: z.string().max(256).optional(),
    seed: z.number().int().optional(),
    service_tier: z.enum(['auto', 'default', 'flex']).optional(),
    stop: stop.optional(),
    store: z.boolean().optional(),
    stream: z.boolean().optional(),
    stream_options: z.strictObject({ include_usage: z.boolean().optional(), include_obfuscation: z.boolean().optional() }).optional(),
    temperature: temperature.optional(),
    tool_choice: loose.optional(),
    tools: z.array(toolOf(CLIENT_TOOLS)).max(128).optional(),
    top_logprobs: z.number().int().min(0).max(20).optional(),
    top_p: z.number().min(0).max(1).optional(),
    user: z.string().max(256).optional(),
    verbosity: z.enum(['low', 'medium', 'high']).optional(),
    web_search_options: loose.optional(),
  });
  return serverTools.includes('web_search') ? body : body.omit({ web_search_options: true });
}

/** Responses: `POST /responses`. Stored responses are not readable back through Keyward (no `GET /responses/:id`). */
export function responsesBody(models: z.ZodType<string>, serverTools: ServerTools = []) {
  return z.object({
    model: models,
    input: z.union([z.string().max(1_000_000), ownItems(2048)]).optional(),
    include: z.array(z.string().max(128)).max(16).optional(),
    instructions: z.string().max(1_000_000).optional(),
    max_output_tokens: z.number().int().min(16).optional(),
    max_tool_calls: z.number().int().min(1).max(128).optional(),
    metadata: metadata.optional(),
    parallel_tool_calls: z.boolean().optional(),
    // Not here on purpose: previous_response_id and prompt, which read objects stored on the account by id (with
    // one shared key, another user's). Extend the schema where ids are the caller's own.
    prompt_cache_key: z.string().max(256).optional(),
    reasoning: loose.optional(),
    safety_identifier: z.string().max(256).optional(),
    service_tier: z.enum(['auto', 'default', 'flex']).optional(),
    store: z.boolean().optional(),
    stream: z.boolean().optional(),
    stream_options: z.strictObject({ include_obfuscation: z.boolean().optional() }).optional(),
    temperature: temperature.optional(),
    text: loose.optional(),
    tool_choice: loose.optional(),
    tools: z.array(toolOf([...CLIENT_TOOLS, ...serverTools])).max(128).optional(),
    top_logprobs: z.number().int().min(0).max(20).optional(),
    top_p: z.number().min(0).max(1).optional(),
    truncation: z.enum(['auto', 'disabled']).optional(),
    user: z.string().max(256).optional(),
  });
}

export function embeddingsBody(models: z.ZodType<string>) {
  return z.object({
    model: models,
    input: z.union([z.string().max(100_000), z.array(z.union([z.string().max(100_000), z.number().int(), z.array(z.number().int())])).max(2048)]),
    dimensions: z.number().int().min(1).max(4096).optional(),
    encoding_format: z.enum(['float', 'base64']).optional(),
    user: z.string().max(256).optional(),
  });
}

export function imagesBody(models: z.ZodType<string>) {
  return z.object({
    model: models,
    prompt: z.string().min(1).max(32_000),
    n: z.number().int().min(1).max(4).optional(),
    size: z.string().max(32).optional(),
    quality: z.enum(['auto', 'low', 'medium', 'high', 'standard', 'hd']).optional(),
    style: z.enum(['vivid', 'natural']).optional(),
    background: z.enum(['auto', 'transparent', 'opaque']).optional(),
    moderation: z.enum(['auto', 'low']).optional(),
    output_format: z.enum(['png', 'jpeg', 'webp']).optional(),
    output_compression: z.number().int().min(0).max(100).optional(),
    response_format: z.enum(['url', 'b64_json']).optional(),
    user: z.string().max(256).optional(),
  });
}

export function speechBody(models: z.ZodType<string>) {
  return z.object({
    model: models,
    input: z.string().min(1).max(4096),
    voice: z.string().max(64),
    instructions: z.string().max(4096).optional(),
    response_format: z.enum(['mp3', 'opus', 'aac', 'flac', 'wav', 'pcm']).optional(),
    speed: z.number().min(0.25).max(4).optional(),
    stream_format: z.enum(['sse', 'audio']).optional(),
  });
}

/** Audio files the API accepts are at most 25 MB (https://platform.openai.com/docs/guides/speech-to-text). */
const AUDIO_BYTES = 25 * 1024 * 1024;

/** What transcriptions and translations both read. */
function audioTextBody(models: z.ZodType<string>) {
  return {
    file: filePart({ maxBytes: AUDIO_BYTES }),
    model: models,
    prompt: z.string().max(4096).optional(),
    temperature: z.coerce.number().min(0).max(1).optional(),
  };
}

/**
 * Translations: multipart, the audio file streamed through. Only what the API reads for a translation
 * (https://platform.openai.com/docs/api-reference/audio/createTranslation): a transcription's other options are
 * refused, as any field the API does not document is.
 */
export function translationBody(models: z.ZodType<string>) {
  return z.object({ ...audioTextBody(models), response_format: z.enum(['json', 'text', 'srt', 'verbose_json', 'vtt']).optional() });
}

/**
 * Transcriptions: multipart, the audio file streamed through; text fields arrive as strings.
 * The `openai` SDK sends arrays as `include[]` parts and `chunking_strategy` as `"auto"` or in bracket form
 * (`chunking_strategy[type]=server_vad`), as the API reads them: lib/core/policy/multipart.ts reads both.
 * Diarization's known speakers are up to 4 names and as many 2–10 s audio samples as data URLs (text parts:
 * together under the multipart text cap, 1 MiB).
 */
export function transcriptionBody(models: z.ZodType<string>) {
  return z.object({
    ...audioTextBody(models),
    // https://platform.openai.com/docs/api-reference/audio/createTranscription#audio-createtranscription-chunking_strategy
    chunking_strategy: z
      .union([
        z.literal('auto'),
        z.strictObject({
          type: z.literal('server_vad'),
          prefix_padding_ms: z.coerce.number().int().min(0).optional(),
          silence_duration_ms: z.coerce.number().int().min(0).optional(),
          threshold: z.coerce.number().min(0).max(1).optional(),
        }),
      ])
      .optional(),
    include: z.array(z.string().max(64)).max(8).optional(),
    keywords: z.array(z.string().max(256)).max(100).optional(),
    known_speaker_names: z.array(z.string().min(1).max(64)).max(4).optional(),
    known_speaker_references: z.array(z.string().startsWith('data:').max(1024 * 1024)).max(4).optional(),
    language: z.string().max(16).optional(),
    languages: z.array(z.string().max(16)).max(16).optional(),
    response_format: z.enum(['json', 'text', 'srt', 'verbose_json', 'vtt', 'diarized_json']).optional(),
    stream: z.enum(['true', 'false']).optional(),
    timestamp_granularities: z.array(z.enum(['word', 'segment'])).max(2).optional(),
  });
}

export function moderationsBody(models: z.ZodType<string>) {
  return z.object({ model: models.optional(), input: z.union([z.string().max(100_000), z.array(loose).max(256)]) });
}

/** The Responses API reports usage in its JSON body, or in the stream's final `response.completed` event. */
const RESPONSES_OUTPUT = ['usage.output_tokens', 'response.usage.output_tokens'];
const RESPONSES_INPUT = ['usage.input_tokens', 'response.usage.input_tokens'];

/**
 * Who the call is for, written from the session. `safety_identifier` (default): both it and `user` on chat and
 * responses, `user` where that is the only field (embeddings, images), so the caller can set neither and pin
 * abuse on someone else. `user`: `user` only, and `safety_identifier` refused. `none`: both refused.
 */
function endUser(o: Options, fields: readonly ('user' | 'safety_identifier')[]) {
  const stamped = fields.filter((field) => o.identity === 'safety_identifier' || field === o.identity);
  const refused = [...(o.identity === 'none' ? ['user'] : []), ...(o.identity !== 'safety_identifier' ? ['safety_identifier'] : [])];
  return {
    identity: stamped.length === 0 ? undefined : Object.fromEntries(stamped.map((field) => [`body.${field}`, 'userId' as const])),
    /** The schema without the end-user fields this mode refuses (the closed contract then refuses them). */
    contract: <S extends z.ZodObject>(schema: S): S =>
      schema.omit(Object.fromEntries(refused.filter((name) => name in schema.shape).map((name) => [name, true])) as never) as unknown as S,
  };
}

/** With prices, a chat stream must report its usage (else the reservation, a worst case, is all that is known). */
function reportsStreamUsage(body: { stream?: boolean; stream_options?: { include_usage?: boolean } }, ctx: z.RefinementCtx): void {
  if (body.stream && body.stream_options?.include_usage !== true) {
    ctx.addIssue({ code: 'custom', path: ['stream_options', 'include_usage'], message: 'must be true for a stream on a priced route' });
  }
}

function routes(o: Options): RouteInput[] {
  const models = modelSchema(o.models);
  const both = endUser(o, ['safety_identifier', 'user']);
  const userOnly = endUser(o, ['user']);
  const chat = both.contract(chatCompletionsBody(models, o.maxOutputTokens, o.serverTools));
  // Budgets count output tokens, or their cost with `prices`: reserved from the capped bound, settled from what
  // the API reports (the chat stream reports it only with stream_options.include_usage; else the reservation stays).
  const llm: RouteInput[] = [
    {
      method: 'POST',
      path: '/chat/completions',
      body: o.prices ? chat.superRefine(reportsStreamUsage) : chat,
      caps: { '*': { 'body.max_completion_tokens': o.maxOutputTokens } },
      overCap: 'clamp',
      identity: both.identity,
      genAi: { provider: 'openai', model: { field: 'body.model' }, inputTokens: ['usage.prompt_tokens'], outputTokens: ['usage.completion_tokens'] },
      cost: o.prices
        ? pricedCost(o.prices, 'body.max_completion_tokens', ['usage.prompt_tokens'], ['usage.completion_tokens'])
        : { reserveFrom: { field: 'body.max_completion_tokens' }, usage: { json: ['usage.completion_tokens'] } },
    },
    {
      method: 'POST',
      path: '/responses',
      body: both.contract(responsesBody(models, o.serverTools)),
      caps: { '*': { 'body.max_output_tokens': o.maxOutputTokens } },
      overCap: 'clamp',
      identity: both.identity,
      genAi: { provider: 'openai', model: { field: 'body.model' }, inputTokens: RESPONSES_INPUT, outputTokens: RESPONSES_OUTPUT },
      cost: o.prices
        ? pricedCost(o.prices, 'body.max_output_tokens', ['usage.input_tokens', 'response.usage.input_tokens'], RESPONSES_OUTPUT)
        : { reserveFrom: { field: 'body.max_output_tokens' }, usage: { json: RESPONSES_OUTPUT } },
    },
    {
      method: 'POST',
      path: '/embeddings',
      body: userOnly.contract(embeddingsBody(models)),
      identity: userOnly.identity,
      // Input only, reserved at the body's size.
      ...(o.prices ? { cost: pricedCost(o.prices, null, ['usage.prompt_tokens'], undefined) } : {}),
    },
    { method: 'GET', path: '/models' },
    { method: 'GET', path: '/models/:model' },
    { method: 'POST', path: '/moderations', body: moderationsBody(models) },
  ];
  // Priced per call, or (with prices and no callPrice) not offered: the table cannot bound what they cost.
  if (o.prices && o.callPrice === undefined) return llm;
  const perCall = o.callPrice === undefined ? {} : { cost: { reserve: o.callPrice } };
  // An image generation makes `n` images (up to 4), each priced as a call: an absent `n` is one. Free (0): one price.
  const perImage = !o.callPrice ? perCall : { cost: { reserve: o.callPrice, reserveFrom: { field: 'body.n', times: o.callPrice } } };
  return [
    ...llm,
    { method: 'POST', path: '/images/generations', body: userOnly.contract(imagesBody(models)), identity: userOnly.identity, timeoutMs: 120_000, ...perImage },
    { method: 'POST', path: '/audio/speech', body: speechBody(models), timeoutMs: 120_000, ...perCall },
    ...([['/audio/transcriptions', transcriptionBody], ['/audio/translations', translationBody]] as const).map(([path, body]) => ({
      method: 'POST' as const,
      path,
      body: body(models),
      bodyFormat: 'multipart' as const,
      maxRequestBytes: AUDIO_BYTES + 64 * 1024,
      timeoutMs: 300_000,
      ...perCall,
    })),
  ];
}

export const openaiPreset = definePreset({
  name: 'openai',
  options,
  build: (o) => ({
    baseUrl: 'https://api.openai.com/v1/',
    auth: { type: 'bearer', secret: o.secret ?? { env: 'OPENAI_API_KEY' } },
    routes: routes(o),
    timeoutMs: 60_000,
    responseHeaders: ['openai-processing-ms'],
    keys: o.secret === undefined || 'env' in o.secret ? { canary: { method: 'GET', path: '/models' } } : undefined,
  }),
});

type Body<F extends (models: z.ZodType<string>, ...options: never[]) => z.ZodType> = z.input<ReturnType<F>>;

/** The routes as the typed client sees them (bodies from the contracts; responses are the SDKs' business). */
export type OpenAIRoutes = readonly [
  TypedRoute<'POST', '/chat/completions', Body<typeof chatCompletionsBody>>,
  TypedRoute<'POST', '/responses', Body<typeof responsesBody>>,
  TypedRoute<'POST', '/embeddings', Body<typeof embeddingsBody>>,
  TypedRoute<'GET', '/models', never>,
  TypedRoute<'GET', '/models/:model', never>,
  TypedRoute<'POST', '/images/generations', Body<typeof imagesBody>>,
  TypedRoute<'POST', '/audio/speech', Body<typeof speechBody>>,
  TypedRoute<'POST', '/audio/transcriptions', FormData>,
  TypedRoute<'POST', '/audio/translations', FormData>,
  TypedRoute<'POST', '/moderations', Body<typeof moderationsBody>>,
];

/** `openai({ models: ['gpt-4.1-mini'] })`; any OpenAI-compatible API with `baseUrl` (and `secret`). */
export const openai = presetFunction<typeof options, OpenAIRoutes, 'openai'>(openaiPreset);
