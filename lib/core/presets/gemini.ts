import { z } from 'zod';
import { commonPresetOptions, definePreset, presetFunction, type RouteInput } from './preset';
import { fieldsNamed, modelsOption, namesStoredObject, outputTokensOption, serverToolsOption } from './shared';

/**
 * Google's Gemini API (https://ai.google.dev/api): `x-goog-api-key`, actions written after the model with a
 * ":" (`/models/gemini-2.5-flash:generateContent`). The model is in the path, so the allow-list is a list of
 * literal routes, one per model and action; `models: "*"` declares `{model}:<action>` instead. The API has no
 * end-user field, so nothing is stamped.
 */

export const GEMINI_DEFAULT_MODELS = ['gemini-2.5-flash', 'gemini-2.5-flash-lite', 'gemini-embedding-001'] as const;

/**
 * Tools Gemini runs on its side, refused unless `serverTools` names them: grounding with Google Search or Maps is
 * billed per grounded prompt or search query (https://ai.google.dev/gemini-api/docs/pricing), which
 * `usageMetadata` does not report; code execution and URL context cost tokens.
 */
export const GEMINI_SERVER_TOOLS = ['googleSearch', 'googleSearchRetrieval', 'googleMaps', 'codeExecution', 'urlContext'] as const;

const options = z.strictObject({
  ...commonPresetOptions,
  models: modelsOption(GEMINI_DEFAULT_MODELS),
  maxOutputTokens: outputTokensOption(4096),
  serverTools: serverToolsOption(GEMINI_SERVER_TOOLS),
});

type Options = z.output<typeof options>;

const loose = z.unknown();

/**
 * What reads something stored on the project by name, another user's with one shared key: a cached content
 * (`cachedContent`), a file search store (`fileSearch`), or a part's `fileData` naming an uploaded file (the Files
 * API: `files/…` or its https URL; any other URI but a web page's https URL, such as a YouTube video's). Field
 * names are read both ways Google's APIs parse them (`fileData`, `file_data`).
 */
function storedByName(record: Readonly<Record<string, unknown>>): boolean {
  if (fieldsNamed(record, 'cachedContent').length > 0 || fieldsNamed(record, 'fileSearch').length > 0) return true;
  return fieldsNamed(record, 'fileUri').some((uri) => {
    if (typeof uri !== 'string' || !URL.canParse(uri)) return true;
    const url = new URL(uri);
    // A fully qualified name (`googleapis.com.`) is the same host.
    const host = url.hostname.replace(/\.$/, '');
    return url.protocol !== 'https:' || host === 'googleapis.com' || host.endsWith('.googleapis.com');
  });
}

const STORED = 'reads what is stored on the project by name (cachedContent, fileSearch, an uploaded file): not accepted';
const own = <T extends z.ZodType>(schema: T) => schema.refine((value) => !namesStoredObject(value, storedByName), STORED);
const contents = own(z.array(loose).min(1).max(2048));

/**
 * The `tools` a caller may declare: function declarations, and the server tools `serverTools` names. Each entry
 * is a Tool object holding one kind or several (`{"googleSearch": {}}`); every field of it must be one of these,
 * in either spelling (`google_search`), so an unknown or unnamed kind (`computerUse`, `fileSearch`) is refused.
 */
function tools(serverTools: readonly string[]) {
  const allowed = new Set(['functionDeclarations', ...serverTools].map((name) => name.toLowerCase()));
  const allowedTool = (tool: unknown) =>
    tool !== null && typeof tool === 'object' && !Array.isArray(tool) && Object.keys(tool).every((name) => allowed.has(name.replaceAll('_', '').toLowerCase()));
  return own(z.array(loose).max(128)).refine(
    (list) => list.every(allowedTool),
    'each tool declares functionDeclarations, or a server tool serverTools names (googleSearch, codeExecution…)',
  );
}

export function generateContentBody(serverTools: readonly string[] = []) {
  return z.object({
    contents,
    // Not here on purpose: `cachedContent` (a cache stored on the project by name: see storedByName).
    // Loose: generation options pass through as sent, except the two that bound what a call costs. Google reads
    // an option by its proto name too (`candidate_count` is `candidateCount`): only lowerCamelCase names pass,
    // so neither bound can be sent again under its other name.
    generationConfig: z
      .looseObject({
        // Over the cap: lowered to it (overCap).
        maxOutputTokens: z.number().int().min(1).optional(),
        candidateCount: z.literal(1).optional(),
      })
      .refine((config) => Object.keys(config).every((key) => !key.includes('_')), 'write option names in lowerCamelCase (maxOutputTokens, not max_output_tokens)')
      .optional(),
    safetySettings: z.array(loose).max(16).optional(),
    systemInstruction: own(loose).optional(),
    toolConfig: loose.optional(),
    tools: tools(serverTools).optional(),
  });
}

export const countTokensBody = z.object({ contents: contents.optional(), generateContentRequest: own(loose).optional() });
export const embedContentBody = z.object({
  content: own(loose),
  model: z.string().max(128).optional(),
  taskType: z.string().max(64).optional(),
  title: z.string().max(1024).optional(),
  outputDimensionality: z.number().int().min(1).max(4096).optional(),
});

/**
 * Every route has a query contract: Google's APIs also take a key as `?key=`, so a client's own `key` next to the
 * header would choose the key a call runs under. A closed contract refuses it (and any other parameter).
 */
const NO_QUERY = z.object({});

export const batchEmbedContentsBody = z.object({ requests: z.array(embedContentBody.extend({ model: z.string().max(128) })).min(1).max(100) });

function routesFor(model: string, o: Options): RouteInput[] {
  const generation = {
    genAi: {
      provider: 'gcp.gemini',
      operation: 'generate_content' as const,
      model: model === '{model}' ? { param: 'model' } : { value: model },
      inputTokens: ['usageMetadata.promptTokenCount'],
      outputTokens: ['usageMetadata.candidatesTokenCount'],
    },
    body: generateContentBody(o.serverTools),
    caps: { '*': { 'body.generationConfig.maxOutputTokens': o.maxOutputTokens } },
    overCap: 'clamp' as const,
    // Every streamed chunk carries the running usageMetadata; the last one has the total. Thinking is output too
    // (billed as such, and within maxOutputTokens), reported apart from the visible candidates.
    cost: {
      reserveFrom: { field: 'body.generationConfig.maxOutputTokens' as const },
      usage: { sum: ['usageMetadata.candidatesTokenCount', 'usageMetadata.thoughtsTokenCount'] },
    },
  };
  return [
    { method: 'POST', path: `/models/${model}:generateContent`, query: NO_QUERY, ...generation },
    { method: 'POST', path: `/models/${model}:streamGenerateContent`, query: z.object({ alt: z.literal('sse').optional() }), ...generation },
    { method: 'POST', path: `/models/${model}:countTokens`, query: NO_QUERY, body: countTokensBody },
    { method: 'POST', path: `/models/${model}:embedContent`, query: NO_QUERY, body: embedContentBody },
    { method: 'POST', path: `/models/${model}:batchEmbedContents`, query: NO_QUERY, body: batchEmbedContentsBody },
  ];
}

function routes(o: Options): RouteInput[] {
  const models = o.models === '*' ? ['{model}'] : o.models;
  const list = z.object({ pageSize: z.string().regex(/^\d{1,4}$/).optional(), pageToken: z.string().max(1024).optional() });
  return [
    ...models.flatMap((model) => routesFor(model, o)),
    { method: 'GET', path: '/models', query: list },
    { method: 'GET', path: '/models/:model', query: NO_QUERY },
  ];
}

export const geminiPreset = definePreset({
  name: 'gemini',
  options,
  build: (o) => ({
    baseUrl: 'https://generativelanguage.googleapis.com/v1beta/',
    auth: { type: 'header', name: 'x-goog-api-key', secret: o.secret ?? { env: 'GEMINI_API_KEY' } },
    routes: routes(o),
    timeoutMs: 120_000,
    keys: o.secret === undefined || 'env' in o.secret ? { canary: { method: 'GET', path: '/models' } } : undefined,
  }),
});

/** `gemini({ models: ['gemini-2.5-flash'] })`. */
export const gemini = presetFunction(geminiPreset);
