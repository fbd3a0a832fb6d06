import { z } from 'zod';
import { ConfigError } from '../config/error';
import { UPSTREAM_ID, upstreamSchema, type UpstreamInput } from '../config/schema';
import { detectorSchema } from '../detect/config';
import { CONNECTION_ID, connectionSchema, connectionsSchema } from '../connect/config';
import { anthropicPreset } from './anthropic';
import { awsPreset } from './aws';
import { geminiPreset } from './gemini';
import { githubPreset } from './github';
import { googleMapsPreset } from './google-maps';
import { hmacPreset } from './hmac';
import { openaiPreset } from './openai';
import { stripePreset } from './stripe';
import { expandPreset, splitPresetInput, type Preset } from './preset';

export { anthropic } from './anthropic';
export { aws } from './aws';
export { gemini } from './gemini';
export { github } from './github';
export { googleMaps } from './google-maps';
export { hmac } from './hmac';
export { openai } from './openai';
export { stripe } from './stripe';
export { mergeUpstream, routeKey, type UpstreamOverrides } from './preset';

/** Every built-in preset, by its name in the JSON config. A Map: `"preset": "__proto__"` must not resolve. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- each preset has its own options type
export const PRESETS: ReadonlyMap<string, Preset<any>> = new Map(
  [openaiPreset, anthropicPreset, geminiPreset, githubPreset, stripePreset, googleMapsPreset, awsPreset, hmacPreset].map((preset) => [preset.name, preset]),
);

/**
 * The JSON config's `upstreams` with every `{"preset": …}` entry replaced by the upstream it describes (options
 * and overrides applied); other entries are returned as they are. Problems are ConfigErrors naming the field.
 */
export function expandPresetEntries(upstreams: Record<string, unknown>, source: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [id, entry] of Object.entries(upstreams)) {
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry) || !Object.hasOwn(entry, 'preset')) {
      out[id] = entry;
      continue;
    }
    const { preset: name, ...rest } = entry as Record<string, unknown>;
    const preset = typeof name === 'string' ? PRESETS.get(name) : undefined;
    if (!preset) {
      problems.push(`  - upstreams.${id}.preset: must be one of ${[...PRESETS.keys()].map((known) => `"${known}"`).join(', ')}`);
      continue;
    }
    const { options, overrides } = splitPresetInput(rest);
    try {
      out[id] = expandPreset(id, preset, options, overrides);
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      problems.push(error.message.split('\n').slice(1).join('\n'));
    }
  }
  if (problems.length > 0) throw new ConfigError(`${source} is invalid:\n${problems.join('\n')}`);
  return out;
}

/**
 * The JSON Schema editors use for KEYWARD_CONFIG: each upstream is either a full definition or a preset entry
 * (its options, and any upstream field as an override).
 */
export function configJsonSchema(): Record<string, unknown> {
  const fields = z.object({ ...upstreamSchema.shape }).partial().shape;
  const overrides = {
    ...fields,
    routes: fields.routes.describe(
      "Routes beside the preset's: one with a preset route's method and path replaces it field by field (what it leaves out, " +
        'such as identity, paramEquals, caps and cost, stays the preset\'s); any other is added.',
    ),
  };
  const entries = [...PRESETS.values()].map((preset) =>
    z
      .strictObject({ preset: z.literal(preset.name), ...overrides, ...(preset.options as z.ZodObject).shape })
      .describe(`The "${preset.name}" preset, with its options and any upstream field to override.`),
  );
  const upstream = z.union([upstreamSchema, ...entries]);
  const config = z.strictObject({
    $schema: z.string().optional(),
    // The ids' patterns are for editors: the loader checks ids itself, with messages that say what an id may be.
    upstreams: z
      .record(z.string().regex(UPSTREAM_ID), upstream)
      .describe('Upstream APIs by id; called as /api/proxy/<id>/<path>. A built-in preset: {"preset": "openai", …}.'),
    detector: detectorSchema.optional(),
    connections: z.record(z.string().regex(CONNECTION_ID), connectionSchema).describe(connectionsSchema.description ?? '').optional(),
  });
  return { ...z.toJSONSchema(config, { io: 'input', unrepresentable: 'any', reused: 'ref' }), title: 'Keyward configuration (KEYWARD_CONFIG)' };
}

export type { UpstreamInput };
