import { readFileSync } from 'node:fs';
import type { z } from 'zod';
import { keywardConfigSchema, formatIssues, upstreamSchema, UPSTREAM_ID, type RouteMethod, type UpstreamConfig, type UpstreamInput } from './schema';
import { ConfigError, duplicateJsonName, jsonErrorAt, MAX_DEPTH, shownName } from './error';
import { expandPresetEntries } from '../presets';
import { detectorSchema, type DetectorConfig } from '../detect/config';
import { connectionsSchema, type ConnectionsConfig } from '../connect/config';

export { ConfigError };

/**
 * An upstream, validated. `Id` and `Routes` are for the typed client (lib/client) only: `defineUpstream` keeps
 * the literal id and routes it was given, so `createKeywardClient<typeof upstreams>()` knows every route's
 * method, path, contracts and response type. `UpstreamDefinition` alone (any id, any routes) accepts them all.
 */
export interface UpstreamDefinition<Id extends string = string, Routes extends readonly unknown[] = readonly unknown[]> {
  readonly id: Id;
  readonly config: UpstreamConfig;
  /** Types only, never set at run time: the routes as declared (route inputs or `TypedRoute`s). */
  readonly '~routes'?: Routes;
}

/**
 * A route's types stated outright, for upstreams whose routes are computed at run time (presets): the typed
 * client sends `Body` and `Query` and reads `Response` on `Method Path`. Types only; see `withRouteTypes`.
 */
export interface TypedRoute<Method extends RouteMethod = RouteMethod, Path extends string = string, Body = unknown, Query = unknown, Response = unknown> {
  readonly method: Method;
  readonly path: Path;
  readonly '~types'?: { readonly body: Body; readonly query: Query; readonly response: Response };
}

/** A route as `defineUpstream` takes it. */
type RouteInput = UpstreamInput['routes'][number];

/**
 * `T` with every array readonly and zod schemas left as they are: what a `const` type parameter infers from a
 * literal must fit its constraint, or TypeScript falls back to the constraint and the literal types are lost.
 */
type Declared<T> = T extends z.core.$ZodType
  ? T
  : T extends readonly (infer E)[]
    ? readonly Declared<E>[]
    : T extends object
      ? { readonly [K in keyof T]: Declared<T[K]> }
      : T;

/**
 * Declares an upstream in TypeScript. Parsed with the same schema as the JSON file, so a mistake throws
 * a ConfigError naming the field when the module is loaded.
 *
 * Types: the id and the routes are inferred as written (`const` type parameters), for the typed client. The
 * input is still checked against `UpstreamInput` as a whole (`NoInfer`), so a misspelt field anywhere, routes
 * included, stays a compile error.
 */
export function defineUpstream<const Id extends string, const Routes extends readonly Declared<RouteInput>[]>(
  id: Id,
  input: NoInfer<Omit<UpstreamInput, 'routes'>> & { readonly routes: Routes & NoInfer<readonly Declared<RouteInput>[]> },
): UpstreamDefinition<Id, Routes> {
  // Checked here, not through the record schema: zod's record parser silently skips a `__proto__` key.
  if (!UPSTREAM_ID.test(id)) {
    throw new ConfigError(`Invalid upstream "${shownName(id)}":\n  - upstreams.${shownName(id)}: upstream ids are lowercase letters, digits, "-" and "_"`);
  }
  const proto = protoKeyAt(input, ['upstreams', shownName(id)]);
  if (proto) throw new ConfigError(`Invalid upstream "${shownName(id)}":\n  - ${proto}`);
  const result = keywardConfigSchema.shape.upstreams.safeParse({ [id]: input });
  if (!result.success) {
    throw new ConfigError(`Invalid upstream "${shownName(id)}":\n${formatIssues(result.error.issues, 'upstreams')}`);
  }
  return { id, config: upstreamSchema.parse(input) };
}

/**
 * Gives an upstream built at run time (a preset, whose id and routes TypeScript cannot see) the id and route
 * types the typed client uses: `TypedRoute`s, or route inputs with zod or declarative contracts. Types only:
 * returns `definition` itself, so what it states is the caller's word, as with any type assertion.
 *
 *   function openai<const Id extends string = 'openai'>(options: … & { id?: Id }): UpstreamDefinition<Id, OpenAIRoutes> {
 *     return withRouteTypes(defineUpstream(options.id ?? 'openai', buildInput(options))); // both from the return type
 *   }
 *   withRouteTypes<'openai', OpenAIRoutes>(definition); // or stated
 */
export function withRouteTypes<Id extends string, Routes extends readonly unknown[]>(definition: UpstreamDefinition): UpstreamDefinition<Id, Routes> {
  return definition as UpstreamDefinition<Id, Routes>;
}

/**
 * Where the config holds an own `__proto__` key (JSON.parse makes one; so does an object literal with a computed
 * key), as the problem to report (its field path first), or null. zod's record parser skips such a key without an
 * issue, so a record entry named `__proto__` (a `paramEquals` on a parameter of that name, a cap, a contract
 * property) would vanish and its check with it. Only plain objects and arrays are walked (zod schemas given as
 * contracts are not), MAX_DEPTH levels at most: deeper is a problem too.
 */
function protoKeyAt(value: unknown, path: readonly string[] = [], depth = 0): string | null {
  if (value === null || typeof value !== 'object') return null;
  if (depth > MAX_DEPTH) return `${path.join('.')}: nested more than ${MAX_DEPTH} levels deep`;
  if (Array.isArray(value)) {
    for (const [index, element] of value.entries()) {
      const found = protoKeyAt(element, [...path, String(index)], depth + 1);
      if (found) return found;
    }
    return null;
  }
  const prototype = Object.getPrototypeOf(value) as unknown;
  if (prototype !== Object.prototype && prototype !== null) return null;
  if (Object.hasOwn(value, '__proto__')) {
    return `${[...path, '__proto__'].join('.')}: "__proto__" cannot be a name in the config (it would be dropped without a word, with what it says)`;
  }
  for (const [name, member] of Object.entries(value)) {
    const found = protoKeyAt(member, [...path, shownName(name)], depth + 1);
    if (found) return found;
  }
  return null;
}

/** What a KEYWARD_CONFIG file (or KEYWARD_CONFIG_JSON) holds. */
export interface ConfigSections {
  readonly upstreams: UpstreamDefinition[];
  /** The anomaly detector's rules (lib/core/detect/config.ts); undefined when the file says nothing. */
  readonly detector: DetectorConfig | undefined;
  /** Connected-account providers (lib/core/connect/config.ts); undefined when the file says nothing. */
  readonly connections: ConnectionsConfig | undefined;
}

/** The file's schema: the upstreams, and the deployment-wide sections beside them. */
const configFileSchema = keywardConfigSchema.extend({ detector: detectorSchema.optional(), connections: connectionsSchema.optional() });

/** Reads and validates the JSON config file's upstreams. */
export function readConfigFile(path: string): UpstreamDefinition[] {
  return loadConfigFile(path).upstreams;
}

/** Reads and validates the JSON config file: every section. */
export function loadConfigFile(path: string): ConfigSections {
  let raw: string;
  try {
    // A byte order mark (some Windows editors write one) is not JSON, but says nothing: dropped (RFC 8259 §8.1).
    raw = readFileSync(path, 'utf8').replace(/^\uFEFF/, '');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new ConfigError(`KEYWARD_CONFIG: cannot read ${path} (${code})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (error) {
    throw new ConfigError(`KEYWARD_CONFIG: ${path} is not valid JSON${jsonErrorAt(error)}`);
  }
  const duplicate = duplicateJsonName(raw);
  if (duplicate) throw new ConfigError(`KEYWARD_CONFIG (${path}) is invalid:\n  - ${duplicate}`);
  return parseConfigSections(json, `KEYWARD_CONFIG (${path})`);
}

/** Reads KEYWARD_CONFIG_JSON's upstreams: the same config held in an environment variable (Vercel, containers). */
export function readConfigJson(text: string): UpstreamDefinition[] {
  return loadConfigJson(text).upstreams;
}

export function loadConfigJson(text: string): ConfigSections {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`KEYWARD_CONFIG_JSON: is not valid JSON${jsonErrorAt(error)}`);
  }
  const duplicate = duplicateJsonName(text);
  if (duplicate) throw new ConfigError(`KEYWARD_CONFIG_JSON is invalid:\n  - ${duplicate}`);
  return parseConfigSections(json, 'KEYWARD_CONFIG_JSON');
}

export function parseConfig(json: unknown, source: string): UpstreamDefinition[] {
  return parseConfigSections(json, source).upstreams;
}

export function parseConfigSections(json: unknown, source: string): ConfigSections {
  // zod's record parser silently drops a `__proto__` key (JSON.parse makes it an own property): refuse it here.
  const upstreams = (json as { upstreams?: unknown } | null)?.upstreams;
  if (upstreams && typeof upstreams === 'object') {
    const bad = Object.keys(upstreams).filter((id) => !UPSTREAM_ID.test(id));
    if (bad.length > 0) {
      const lines = bad.map((id) => `  - upstreams.${shownName(id)}: upstream ids are lowercase letters, digits, "-" and "_"`);
      throw new ConfigError(`${source} is invalid:\n${lines.join('\n')}`);
    }
  }
  // The same for connection ids (a `__proto__` provider would be dropped silently, not refused).
  const connections = (json as { connections?: unknown } | null)?.connections;
  if (connections && typeof connections === 'object' && Object.hasOwn(connections, '__proto__')) {
    throw new ConfigError(`${source} is invalid:\n  - connections.__proto__: connection ids are 1–32 lowercase letters, digits and "-"`);
  }
  // And anywhere deeper: a `paramEquals`, `caps` or contract `properties` entry dropped would be a check gone.
  const proto = protoKeyAt(json);
  if (proto) throw new ConfigError(`${source} is invalid:\n  - ${proto}`);
  // Built-in presets ({"preset": "openai", …}) become full upstream definitions before the one schema checks them.
  const expanded = upstreams && typeof upstreams === 'object' && !Array.isArray(upstreams)
    ? { ...(json as object), upstreams: expandPresetEntries(upstreams as Record<string, unknown>, source) }
    : json;
  const result = configFileSchema.safeParse(expanded);
  if (!result.success) {
    throw new ConfigError(`${source} is invalid:\n${formatIssues(result.error.issues, '')}`);
  }
  return {
    upstreams: Object.entries(result.data.upstreams).map(([id, config]) => ({ id, config })),
    detector: result.data.detector,
    connections: result.data.connections,
  };
}
