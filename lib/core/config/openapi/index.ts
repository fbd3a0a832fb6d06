import { queryParamKey } from '../../forward/query';
import { compileContract } from '../../policy/contract';
import { bySpecificity, compileTemplate, templateShape } from '../../route/template';
import { ConfigError } from '../error';
import { parseConfig } from '../load';
import { documentTitle, own, readSpecDocument, serverUrl, type SpecDocument } from './document';
import { absoluteBase, planOperations, serverBase, type ImportedRoute, type PlannedOperation } from './operations';
import { chooseAuth, type AuthInput } from './security';
import { shadowedOperations, type ChosenRoute } from './shadowed';

/**
 * `keyward import`: an OpenAPI 3.0/3.1 document → one upstream of the JSON config (README "Add an upstream").
 * Pure: the document in, the upstream and what it does not keep exactly (warnings) out; the CLI
 * (scripts/import-openapi.ts) reads files, asks which operations to expose, and writes the config.
 *
 *   const plan = planImport(parseSpecText(text, 'openapi.yaml'));      // every operation, converted or not
 *   const result = buildUpstream(plan, selectOperations(plan, ['GET /pets']), { id: 'pets' });
 */

export { parseSpecText } from './document';
export { envPrefix } from './security';
export type { ImportedRoute, PlannedOperation, QueryContract } from './operations';

export interface ImportWarning {
  /** The operation (`GET /pets/{petId}`), or null for the whole upstream. */
  readonly operation: string | null;
  readonly message: string;
}

export interface ImportPlan {
  readonly doc: SpecDocument;
  readonly title: string;
  /** The upstream's base URL; null when the document has none usable (`baseUrlProblem` says why). */
  readonly baseUrl: string | null;
  readonly baseUrlProblem: string | null;
  readonly operations: readonly PlannedOperation[];
  /** Paths whose path item is in another file, which the import does not read: their operations are unknown. */
  readonly externalPaths: readonly string[];
  readonly warnings: readonly ImportWarning[];
}

export interface ImportedUpstream {
  baseUrl: string;
  auth: AuthInput;
  routes: ImportedRoute[];
}

export interface ImportResult {
  readonly id: string;
  /** The upstream as the JSON config writes it, checked by the config schema and the contract compiler. */
  readonly upstream: ImportedUpstream;
  /** Environment variables holding the credential (names only). */
  readonly env: readonly string[];
  readonly warnings: readonly ImportWarning[];
}

/** Reads the document and converts every operation (the chooser lists them all, with what each keeps). */
export function planImport(document: unknown, options: { baseUrl?: string } = {}): ImportPlan {
  const doc = readSpecDocument(document);
  const servers = own(doc.root, 'servers') as Parameters<typeof serverUrl>[0][] | undefined;
  const first = servers?.[0] ? serverUrl(servers[0], '#/servers/0') : undefined;
  const reference = options.baseUrl === undefined ? null : absoluteBase(options.baseUrl);
  const documentServer = first === undefined ? null : serverBase(first, reference);
  // --base-url replaces an absolute server; a relative one is resolved against it (./operations.ts serverBase).
  const relative = first !== undefined && absoluteBase(first) === null;
  const baseUrl = options.baseUrl === undefined ? documentServer : ((relative ? documentServer : null) ?? reference ?? options.baseUrl);
  let baseUrlProblem: string | null = null;
  if (baseUrl === null) {
    baseUrlProblem =
      first === undefined
        ? 'the document names no server ("servers"): pass --base-url https://…'
        : `the document's server "${first}" is not an absolute http(s) URL: pass --base-url https://…`;
  }
  const { operations, externalPaths, warnings } = planOperations(doc, { documentServer, baseUrl, reference });
  return { doc, title: documentTitle(doc), baseUrl, baseUrlProblem, operations, externalPaths, warnings };
}

/**
 * The operations named by `--operations`: `GET /pets/{petId}` (the document's method and path) or an
 * operationId. A name that matches nothing, or an operation that cannot be imported, is an error.
 */
export function selectOperations(plan: ImportPlan, names: readonly string[]): PlannedOperation[] {
  const selected: PlannedOperation[] = [];
  for (const raw of names) {
    const name = raw.trim();
    if (name === '') continue;
    const spaced = /^([A-Za-z]+)\s+(\/.*)$/.exec(name);
    const match = spaced
      ? plan.operations.find((op) => op.method === spaced[1]!.toUpperCase() && op.path === spaced[2])
      : plan.operations.find((op) => op.operationId === name);
    if (!match)
      throw new ConfigError(
        `--operations: the document has no operation "${name}" (write "GET /path" as in the document, or an operationId)`,
      );
    if (match.skipped) throw new ConfigError(`--operations: ${match.key} cannot be imported: ${match.skipped}`);
    if (!selected.includes(match)) selected.push(match);
  }
  return selected;
}

/** Every operation that can be imported (`--all`). */
export function importableOperations(plan: ImportPlan): PlannedOperation[] {
  return plan.operations.filter((op) => op.skipped === null);
}

/**
 * The upstream for the selected operations: base URL, one credential (`auth`, from the environment), and
 * a route per operation, most specific paths first, and a route nobody may call for each operation not selected
 * that a selected route would serve (./shadowed.ts). Checked by the real config schema and contract compiler
 * before it is returned, so what the CLI writes is what start-up accepts.
 */
export function buildUpstream(
  plan: ImportPlan,
  selected: readonly PlannedOperation[],
  options: { id: string; auth?: string },
): ImportResult {
  if (plan.baseUrl === null) throw new ConfigError(plan.baseUrlProblem ?? 'no base URL: pass --base-url https://…');
  if (selected.length === 0) throw new ConfigError('no operation selected: an upstream needs at least one route');
  const auth = chooseAuth(
    plan.doc,
    selected.map((op) => op.security),
    options.id,
    options.auth,
  );
  const warnings: ImportWarning[] = [...auth.warnings];
  const routes: ImportedRoute[] = [];
  const chosen: ChosenRoute[] = [];
  const shapes = new Map<string, string>();
  for (const op of mostSpecificFirst(selected, (op) => op.route?.path)) {
    if (!op.route) throw new ConfigError(`${op.key} cannot be imported: ${op.skipped}`);
    const route = withoutReservedQuery(op.route, auth.auth, (message) => warnings.push({ operation: op.key, message }));
    const shape = `${route.method} ${templateShape(route.path)}`;
    const earlier = shapes.get(shape);
    if (earlier) {
      warnings.push({ operation: op.key, message: `left out: ${earlier} matches the same requests and comes first` });
      continue;
    }
    shapes.set(shape, op.key);
    routes.push(route);
    chosen.push({ key: op.key, route });
    if (op.deprecated) warnings.push({ operation: op.key, message: 'deprecated in the document' });
    for (const message of op.warnings) warnings.push({ operation: op.key, message });
    const credentialHeader = auth.auth.type === 'header' ? auth.auth.name : undefined;
    const headers = op.headerParams.filter((name) => name !== credentialHeader);
    if (headers.length > 0) {
      warnings.push({
        operation: op.key,
        message: `header parameter${headers.length === 1 ? '' : 's'} ${headers.map((h) => `"${h}"`).join(', ')} not forwarded from the client (add to "requestHeaders" if the API needs ${headers.length === 1 ? 'it' : 'them'})`,
      });
    }
  }
  const shadowed = shadowedOperations(plan, chosen, new Set(selected));
  for (const refused of shadowed.refused) {
    routes.push(refused.route);
    warnings.push({
      operation: refused.key,
      message: `${refused.why}, but the route of ${refused.servedBy} would serve it: written as a route nobody may call ("roles": [], 403 forbidden)`,
    });
  }
  for (const { key, why, servedBy } of shadowed.overlapping) {
    warnings.push({
      operation: key,
      message: `${why}, but the route of ${servedBy} serves the requests the two paths share (neither is more specific, so none can be refused apart): check the API answers them as ${servedBy}`,
    });
  }
  for (const { key, why, servedBy } of shadowed.unrefusable) {
    warnings.push({
      operation: key,
      message: `${why}, and no route can refuse it alone (its path cannot be a template): the route of ${servedBy} can serve its requests; check the API answers them as ${servedBy}, or leave that out`,
    });
  }
  const upstream: ImportedUpstream = { baseUrl: plan.baseUrl, auth: auth.auth, routes: mostSpecificFirst(routes, (route) => route.path) };
  checkUpstream(options.id, upstream);
  return { id: options.id, upstream, env: auth.env, warnings: [...plan.warnings, ...warnings] };
}

/**
 * Literal segments before parameters, segment by segment, the order in which Keyward tries routes
 * (`bySpecificity`): the generated file lists them as they are served.
 */
function mostSpecificFirst<T>(items: readonly T[], pathOf: (item: T) => string | undefined): T[] {
  const keyed = items.map((item) => {
    const path = pathOf(item);
    return { item, segments: path === undefined ? [] : compileTemplate(path) };
  });
  // Array.prototype.sort is stable: equal ranks keep the document's order.
  keyed.sort((a, b) => bySpecificity(a.segments, b.segments));
  return keyed.map(({ item }) => item);
}

/**
 * Query parameters the client can never send through Keyward: the credential's own (Keyward writes it) and the
 * names refused everywhere (`access_token`, `_method`: lib/core/pipeline.ts). Left out of the contract.
 */
function withoutReservedQuery(route: ImportedRoute, auth: AuthInput, warn: (message: string) => void): ImportedRoute {
  if (!route.query) return route;
  const credential = auth.type === 'query' ? queryParamKey(auth.name) : null;
  const reserved = new Set(['access_token', '_method'].map(queryParamKey));
  const properties = { ...route.query.properties };
  for (const name of Object.keys(properties)) {
    const key = queryParamKey(name);
    if (key === credential) delete properties[name];
    else if (reserved.has(key)) {
      delete properties[name];
      warn(`query parameter "${name}" is refused by Keyward on every route (it could carry or fake a credential)`);
    }
  }
  const required = (route.query.required ?? []).filter((name) => Object.hasOwn(properties, name));
  return { ...route, query: { properties, ...(required.length > 0 ? { required } : {}) } };
}

/** The same checks start-up runs: the config schema, then each route's contracts compiled. */
function checkUpstream(id: string, upstream: ImportedUpstream): void {
  const [definition] = parseConfig({ upstreams: { [id]: upstream } }, `the imported upstream "${id}"`);
  definition!.config.routes.forEach((route, index) => compileContract(route, `upstreams.${id}.routes.${index}`));
}
