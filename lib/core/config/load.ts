import { readFileSync } from 'node:fs';
import { keywardConfigSchema, formatIssues, upstreamSchema, UPSTREAM_ID, type UpstreamConfig, type UpstreamInput } from './schema';

/** Thrown at start-up for any invalid configuration. The message names fields, never secret values. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export interface UpstreamDefinition {
  readonly id: string;
  readonly config: UpstreamConfig;
}

/**
 * Declares an upstream in TypeScript. Parsed with the same schema as the JSON file, so a mistake throws
 * a ConfigError naming the field when the module is loaded.
 */
export function defineUpstream(id: string, input: UpstreamInput): UpstreamDefinition {
  // Checked here, not through the record schema: zod's record parser silently skips a `__proto__` key.
  if (!UPSTREAM_ID.test(id)) {
    throw new ConfigError(`Invalid upstream "${id}":\n  - upstreams.${id}: upstream ids are lowercase letters, digits, "-" and "_"`);
  }
  const result = keywardConfigSchema.shape.upstreams.safeParse({ [id]: input });
  if (!result.success) {
    throw new ConfigError(`Invalid upstream "${id}":\n${formatIssues(result.error.issues, 'upstreams')}`);
  }
  return { id, config: upstreamSchema.parse(input) };
}

/** Reads and validates the JSON config file. */
export function readConfigFile(path: string): UpstreamDefinition[] {
  let raw: string;
  try {
    raw = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new ConfigError(`KEYWARD_CONFIG: cannot read ${path} (${code})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    throw new ConfigError(`KEYWARD_CONFIG: ${path} is not valid JSON`);
  }
  return parseConfig(json, `KEYWARD_CONFIG (${path})`);
}

/** Reads KEYWARD_CONFIG_JSON: the same config held in an environment variable (Vercel, containers). */
export function readConfigJson(text: string): UpstreamDefinition[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ConfigError('KEYWARD_CONFIG_JSON: is not valid JSON');
  }
  return parseConfig(json, 'KEYWARD_CONFIG_JSON');
}

export function parseConfig(json: unknown, source: string): UpstreamDefinition[] {
  // zod's record parser silently drops a `__proto__` key (JSON.parse makes it an own property): refuse it here.
  const upstreams = (json as { upstreams?: unknown } | null)?.upstreams;
  if (upstreams && typeof upstreams === 'object') {
    const bad = Object.keys(upstreams).filter((id) => !UPSTREAM_ID.test(id));
    if (bad.length > 0) {
      const lines = bad.map((id) => `  - upstreams.${id}: upstream ids are lowercase letters, digits, "-" and "_"`);
      throw new ConfigError(`${source} is invalid:\n${lines.join('\n')}`);
    }
  }
  const result = keywardConfigSchema.safeParse(json);
  if (!result.success) {
    throw new ConfigError(`${source} is invalid:\n${formatIssues(result.error.issues, '')}`);
  }
  return Object.entries(result.data.upstreams).map(([id, config]) => ({ id, config }));
}
