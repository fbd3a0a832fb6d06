import { z } from 'zod';
import { ConfigError, shownName } from '../config/error';
import { defineUpstream, withRouteTypes, type UpstreamDefinition } from '../config/load';
import { compileTemplate, templateShape, type TemplateSegment } from '../route/template';
import { credentialSourceSchema, formatIssues, routeSchema, upstreamSchema, type CredentialSource, type UpstreamInput } from '../config/schema';

/**
 * Built-in adapters ("presets"): a function that turns a few options into a complete upstream definition
 * (auth scheme, routes with contracts, caps, identity fields, usage readers, key canary, response headers),
 * which the user can then override or extend. The same preset is reachable from TypeScript
 * (`openai({ models: […] })`) and from the JSON config (`{"preset": "openai", "models": […]}`); both end in
 * `defineUpstream`, so the result is checked by the one upstream schema like any hand-written definition.
 */

export type RouteInput = UpstreamInput['routes'][number];

const ROUTE_KEY = /^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) \/\S*$/;

/** Options every preset takes, beside its own. */
export const commonPresetOptions = {
  secret: credentialSourceSchema
    .optional()
    .describe('Whose key: {"env": "NAME"} (the preset names a default variable), {"user": "key"}, {"oauth": "<provider>"} or {"claim", "keys"}.'),
  roles: z
    .array(z.string().min(1).max(64))
    .min(1)
    .optional()
    .describe('Roles needed for every route that names none, the preset\'s and those given beside it (absent: any signed-in user).'),
  only: z
    .array(z.string().regex(ROUTE_KEY, 'must be "METHOD /path" as the preset declares it'))
    .min(1)
    .optional()
    .describe('Keep only these of the preset\'s routes, e.g. ["POST /chat/completions"]. Deny by default: fewer is safer.'),
};

type CommonOptions = { secret?: CredentialSource; roles?: string[]; only?: string[] };

export interface Preset<S extends z.ZodType<CommonOptions>> {
  /** Its name in the JSON config (`"preset": "<name>"`). */
  readonly name: string;
  /** Its options (a strict object holding `commonPresetOptions` and its own). */
  readonly options: S;
  /** The upstream it describes, before the user's overrides. */
  build(options: z.output<S>): UpstreamInput;
}

export function definePreset<S extends z.ZodType<CommonOptions>, const Name extends string>(preset: Preset<S> & { readonly name: Name }): Preset<S> & { readonly name: Name } {
  return preset;
}

/** Upstream fields a user may set beside a preset's options: any field of an upstream, merged (see `mergeUpstream`). */
export type UpstreamOverrides = Partial<UpstreamInput>;

const UPSTREAM_FIELDS: ReadonlySet<string> = new Set(Object.keys(upstreamSchema.shape));

/** Splits one object into the upstream fields it overrides and the preset's own options. */
export function splitPresetInput(input: Record<string, unknown>): { options: Record<string, unknown>; overrides: UpstreamOverrides } {
  const options: Record<string, unknown> = {};
  const overrides: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue;
    (UPSTREAM_FIELDS.has(key) ? overrides : options)[key] = value;
  }
  return { options, overrides: overrides as UpstreamOverrides };
}

/**
 * The upstream a preset describes for these options, with the user's overrides merged in. Throws a
 * ConfigError naming the field (`upstreams.<id>.<option>`) for a bad option or an `only` entry that names
 * no route of the preset.
 */
export function expandPreset<S extends z.ZodType<CommonOptions>>(
  id: string,
  preset: Preset<S>,
  options: unknown,
  overrides: UpstreamOverrides,
): UpstreamInput {
  const parsed = preset.options.safeParse(options);
  if (!parsed.success) {
    throw new ConfigError(`Invalid upstream "${shownName(id)}" (preset "${preset.name}"):\n${formatIssues(parsed.error.issues, `upstreams.${shownName(id)}`)}`);
  }
  const built = preset.build(parsed.data);
  let routes = built.routes;
  const { only, roles } = parsed.data;
  if (only) {
    const declared = new Set(routes.map(routeKey));
    // Named by index, and by text only as a name is (shownName): a path can hold a pasted key (a bot token).
    const unknown = only.flatMap((key, index) => (declared.has(key) ? [] : [[key, index] as const]));
    if (unknown.length > 0) {
      const lines = unknown.map(([key, index]) => `  - upstreams.${id}.only.${index}: "${shownName(key)}" is not a route of the "${preset.name}" preset`);
      throw new ConfigError(`Invalid upstream "${id}" (preset "${preset.name}"):\n${lines.join('\n')}`);
    }
    // A route nobody may call (`"roles": []`) stays: it keeps requests away from a broader route that is kept.
    routes = routes.filter((route) => only.includes(routeKey(route)) || route.roles?.length === 0);
  }
  // The routes given beside the preset are checked before they are merged among its own, so a problem is named
  // by the route's index in the file (and a route that is not an object cannot break the merge). One that replaces
  // a preset's route is checked as it will be, with the fields it keeps from it (a body contract its identity needs).
  if (Array.isArray(overrides.routes)) {
    const own = new Map(routes.map((route) => [routeKey(route), route]));
    const given = z.array(routeSchema).safeParse(overrides.routes.map((route) => replacingRoute(own, route)));
    if (!given.success) {
      throw new ConfigError(`Invalid upstream "${shownName(id)}" (preset "${preset.name}"):\n${formatIssues(given.error.issues, `upstreams.${shownName(id)}.routes`)}`);
    }
    const retyped = given.data.flatMap((route, index) => {
      const typedLike = routes.find((own) => retypes(route, own));
      if (!typedLike) return [];
      // Its parameters by name only: the rest of a path may be the operator's text (`repos`), never repeated.
      const typed = [...typedLike.path.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*):int\}/g)].map(([, name = '']) => `{${shownName(name)}:int}`);
      return [`  - upstreams.${shownName(id)}.routes.${index}.path: the preset's own ${route.method} route for these requests types its parameters (${typed.join(', ')}): to replace it, give the preset's path as written`];
    });
    if (retyped.length > 0) throw new ConfigError(`Invalid upstream "${shownName(id)}" (preset "${preset.name}"):\n${retyped.join('\n')}`);
  }
  const merged = mergeUpstream({ ...built, routes }, overrides);
  // After the merge: a route given to replace or extend the preset's is as closed as the preset's own.
  if (roles && Array.isArray(merged.routes)) merged.routes = merged.routes.map((route) => ({ ...route, roles: route.roles ?? roles }));
  return merged;
}

/**
 * Whether a given route differs from a preset's only by a parameter's type (`…/issues/:issue_number` beside the
 * preset's `…/issues/{issue_number:int}`). It would not replace the preset's route but be added after it, taking
 * only what the typed one does not: roles it sets to tighten the preset's route would silently not apply.
 */
function retypes(given: Pick<RouteInput, 'method' | 'path'>, own: Pick<RouteInput, 'method' | 'path'>): boolean {
  if (given.method !== own.method || given.path === own.path) return false;
  if (templateShape(given.path, { types: false }) !== templateShape(own.path, { types: false })) return false;
  // Only where the preset's route is the typed one: a given route typed where the preset's is not (`/models/{m:int}`
  // beside `/models/:model`) comes first for what it takes and narrows, as any more specific route does.
  const givenParts = compileTemplate(given.path);
  return compileTemplate(own.path).some((part, i) => isIntParam(part) && !isIntParam(givenParts[i]!));
}

function isIntParam(part: TemplateSegment): boolean {
  return typeof part === 'object' && 'param' in part && part.int;
}

/**
 * A preset's upstream with the user's fields on top. Routes: a user route with the same method and path
 * replaces the preset's, merged with it (`mergeRoute`), any other is added. Pass-through header lists are joined,
 * fixed and default headers merged name by name. Every other field given replaces the preset's (`auth`,
 * `baseUrl`, `keys`, limits…).
 */
export function mergeUpstream(base: UpstreamInput, overrides: UpstreamOverrides): UpstreamInput {
  const merged: UpstreamInput = { ...base, ...overrides };
  // From the JSON file these are unchecked yet: anything but an array (or object) is left for the schema to name.
  if (Array.isArray(overrides.routes)) {
    const replacing = new Map(overrides.routes.map((route) => [routeKey(route), route]));
    const kept = base.routes.map((route) => {
      const given = replacing.get(routeKey(route));
      return given ? mergeRoute(route, given) : route;
    });
    const baseKeys = new Set(base.routes.map(routeKey));
    merged.routes = [...kept, ...overrides.routes.filter((route) => !baseKeys.has(routeKey(route)))];
  }
  for (const list of ['requestHeaders', 'responseHeaders'] as const) {
    const extra = overrides[list];
    if (Array.isArray(extra) && base[list]) merged[list] = [...new Set([...base[list], ...extra])];
  }
  for (const field of ['headers', 'defaultHeaders'] as const) {
    const extra = overrides[field];
    if (isPlainObject(extra) && base[field]) merged[field] = { ...base[field], ...(extra as Record<string, string>) };
  }
  return merged;
}

/** Route fields merged name by name (`identity`, `paramEquals`) or role by role (`caps`), the given route's winning. */
const MERGED_ROUTE_FIELDS = ['identity', 'paramEquals', 'caps'] as const;

/**
 * The preset's route `own` replaced by the user's `given` (same method and path). A replacement loosens or
 * tightens a contract (a body schema extended with a field), so what the given route leaves out stays the
 * preset's: dropping it would silently open the route (the caller's customer no longer stamped, another user's
 * object readable, output uncapped, calls no longer reserved against budgets). `identity` and `paramEquals` are
 * merged name by name and `caps` role by role (`{"*": {}}` lifts the preset's cap for every caller); any other
 * field given replaces the preset's. To serve a route without what the preset writes into it, leave the preset's
 * out with `only` and declare your own: it is then added, not merged.
 */
export function mergeRoute(own: RouteInput, given: RouteInput): RouteInput {
  // `{identity: undefined}` in TypeScript leaves the field to the preset, as leaving it out does. Built with
  // fromEntries, which keeps a JSON `"__proto__"` key an own property for the schema to refuse.
  const merged: Record<string, unknown> = Object.fromEntries([...Object.entries(own), ...Object.entries(given).filter(([, value]) => value !== undefined)]);
  for (const field of MERGED_ROUTE_FIELDS) {
    const [mine, theirs] = [own[field], given[field]];
    if (isPlainObject(mine) && isPlainObject(theirs)) merged[field] = { ...mine, ...theirs };
  }
  return merged as RouteInput;
}

/** A given route as it will be once merged with the preset's route of the same method and path, if any. */
function replacingRoute(own: ReadonlyMap<string, RouteInput>, given: unknown): unknown {
  if (!isPlainObject(given)) return given;
  const replaced = own.get(routeKey(given as RouteInput));
  return replaced ? mergeRoute(replaced, given as RouteInput) : given;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** `METHOD /path`, as `only` names a route. */
export function routeKey(route: Pick<RouteInput, 'method' | 'path'>): string {
  return `${route.method} ${route.path}`;
}

/**
 * The TypeScript form of a preset: `openai({ models: ['gpt-4.1-mini'] })`, with `id` (default: the preset's
 * name) and any upstream field beside the options. `Routes` states the preset's route types for the typed client
 * (lib/client): its routes are computed at run time, so TypeScript cannot infer them. Routes added through
 * overrides are not in them (call those with `keywardFetch`), and `only` does not remove any.
 */
export function presetFunction<S extends z.ZodType<CommonOptions>, Routes extends readonly unknown[] = readonly unknown[], Name extends string = string>(
  preset: Preset<S> & { readonly name: Name },
) {
  return <const Id extends string = Name>(input?: z.input<S> & UpstreamOverrides & { id?: Id }): UpstreamDefinition<Id, Routes> => {
    const { id = preset.name, ...rest } = (input ?? {}) as Record<string, unknown> & { id?: string };
    const { options, overrides } = splitPresetInput(rest);
    return withRouteTypes<Id, Routes>(defineUpstream(id, expandPreset(id, preset, options, overrides)));
  };
}
