import { DEFAULT_REQUEST_HEADERS } from '../../forward/headers';
import { templateProblems } from '../../route/template';
import { ConfigError } from '../error';
import type { FieldSpecInput } from '../policy';
import type { RouteMethod } from '../schema';
import { untypeableFieldMessage, untypeableFields } from '../type-gaps';
import {
  child,
  derefObject,
  expectShape,
  isObject,
  operationShape,
  own,
  parameterShape,
  pathItemShape,
  requestBodyShape,
  serverUrl,
  type SecurityRequirement,
  type SpecDocument,
  type SpecParameter,
  type SpecServer,
} from './document';
import { FieldNotes, fieldNameProblem, schemaToField, withDescription, type FieldContext, type FieldMode } from './fields';
import type { OperationSecurity } from './security';

/** A query contract as the JSON config writes it. */
export interface QueryContract {
  properties: Record<string, FieldSpecInput>;
  required?: string[];
}

/** A route as the JSON config writes it. */
export interface ImportedRoute {
  method: RouteMethod;
  path: string;
  /** Only `[]`: a route nobody may call, written for an operation the user did not choose (./shadowed.ts). */
  roles?: string[];
  query?: QueryContract;
  body?: FieldSpecInput;
  bodyFormat?: 'form' | 'multipart';
  /** A form body's arrays as the spec encodes them (repeated names, OpenAPI's default for forms). */
  formArrays?: 'repeat';
  /** The answer's type for the typed client (types only, never checked): the success response's JSON schema. */
  response?: FieldSpecInput;
}

/** One operation of the document, converted (or why it cannot be). */
export interface PlannedOperation {
  /** `GET /pet/{petId}`: the method and the document's path. */
  readonly key: string;
  readonly method: string;
  readonly path: string;
  readonly pointer: string;
  readonly operationId?: string;
  readonly summary?: string;
  readonly deprecated: boolean;
  /** Why the operation cannot be imported; null when `route` is set. */
  readonly skipped: string | null;
  readonly route: ImportedRoute | null;
  /** The route forwards its body without a contract (the chooser says so). */
  readonly bodyUnchecked: boolean;
  /** What the route does not keep exactly, in words. */
  readonly warnings: readonly string[];
  readonly security: OperationSecurity;
  /** Header parameters the client would send (not forwarded unless listed in requestHeaders). */
  readonly headerParams: readonly string[];
}

/** Where the upstream's base URL comes from, to tell operations served elsewhere. */
export interface ServerChoice {
  /** The document's first server, absolute, with a final "/" (null: none, or relative with no --base-url). */
  readonly documentServer: string | null;
  /** The upstream's base URL (--base-url, else the document's first server). */
  readonly baseUrl: string | null;
  /** --base-url as a base URL, which a relative server is resolved against (null: not given). */
  readonly reference: string | null;
}

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;
const NO_BODY = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS']);
const PARAM_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function planOperations(
  doc: SpecDocument,
  servers: ServerChoice,
): {
  operations: PlannedOperation[];
  externalPaths: string[];
  warnings: { operation: string | null; message: string }[];
} {
  const operations: PlannedOperation[] = [];
  const externalPaths: string[] = [];
  const warnings: { operation: string | null; message: string }[] = [];
  const paths = own(doc.root, 'paths');
  if (!isObject(paths)) return { operations, externalPaths, warnings };
  for (const [path, rawItem] of Object.entries(paths)) {
    const itemAt = child('#/paths', path);
    const resolved = derefObject(doc, rawItem, itemAt);
    if ('external' in resolved) {
      warnings.push({
        operation: path,
        message: `skipped: its path item is in another file ("${resolved.external}"), which the import does not read`,
      });
      externalPaths.push(path);
      continue;
    }
    const item = expectShape(pathItemShape, resolved.value, resolved.pointer);
    for (const method of METHODS) {
      if (!Object.hasOwn(item, method)) continue;
      operations.push(planOperation(doc, servers, path, method, item, resolved.pointer));
    }
  }
  return { operations, externalPaths, warnings };
}

function planOperation(
  doc: SpecDocument,
  servers: ServerChoice,
  path: string,
  method: (typeof METHODS)[number],
  item: ReturnType<typeof pathItemShape.parse>,
  itemAt: string,
): PlannedOperation {
  const at = child(itemAt, method);
  const op = expectShape(operationShape, item[method], at);
  const key = `${method.toUpperCase()} ${path}`;
  const securityAt = op.security ? child(at, 'security') : '#/security';
  const security: OperationSecurity = {
    key,
    pointer: securityAt,
    requirements: op.security ?? (own(doc.root, 'security') as SecurityRequirement[] | undefined) ?? [],
  };
  const base = {
    key,
    method: method.toUpperCase(),
    path,
    pointer: at,
    ...(op.operationId !== undefined ? { operationId: op.operationId } : {}),
    ...(op.summary !== undefined ? { summary: op.summary } : {}),
    deprecated: op.deprecated === true,
    security,
  };
  const skip = (reason: string): PlannedOperation => ({
    ...base,
    skipped: reason,
    route: null,
    bodyUnchecked: false,
    warnings: [],
    headerParams: [],
  });

  if (method === 'trace') return skip('TRACE is never forwarded');
  const elsewhere = otherServer(
    op.servers ?? item.servers,
    op.servers ? child(at, 'servers', 0) : child(itemAt, 'servers', 0),
    servers,
  );
  if (elsewhere)
    return skip(`served from its own server (${elsewhere}); import it into an upstream of its own with --base-url`);

  const warnings: string[] = [];
  const params = parameters(
    doc,
    item.parameters ?? [],
    child(itemAt, 'parameters'),
    op.parameters ?? [],
    child(at, 'parameters'),
    warnings,
  );
  const template = routeTemplate(
    doc,
    path,
    params.filter((p) => p.param.in === 'path'),
  );
  if ('reason' in template) return skip(template.reason);

  const notes = new FieldNotes();
  const context = (mode: FieldMode, partTypes?: ReadonlyMap<string, string>): FieldContext => ({
    doc,
    mode,
    notes,
    partTypes,
  });
  const route: ImportedRoute = { method: method.toUpperCase() as RouteMethod, path: template.path };
  const query = queryContract(
    doc,
    params.filter((p) => p.param.in === 'query'),
    context('query'),
    warnings,
  );
  if (query) route.query = query;
  let bodyUnchecked = false;
  if (op.requestBody !== undefined) {
    const body = bodyContract(doc, op.requestBody, child(at, 'requestBody'), route.method, context, warnings);
    if (body.body) route.body = body.body;
    if (body.bodyFormat) route.bodyFormat = body.bodyFormat;
    if (body.formArrays) route.formArrays = body.formArrays;
    bodyUnchecked = body.unchecked;
  }
  warnings.push(...notes.messages());
  for (const field of [...untypeableFields(route.query, 'query'), ...untypeableFields(route.body, 'body')])
    warnings.push(untypeableFieldMessage(field));
  const response = responseType(doc, op.responses, child(at, 'responses'), warnings);
  if (response) route.response = response;
  const loosePath = params.filter((p) => p.param.in === 'path').flatMap((p) => uncheckedPathParam(doc, p.param, p.at));
  if (loosePath.length > 0)
    warnings.push(
      `looser than the spec: path parameters are not type-checked (any one path segment is forwarded): ${loosePath.join(', ')}`,
    );
  for (const { param } of params.filter((p) => p.param.in === 'cookie'))
    warnings.push(`cookie parameter "${param.name}" is not forwarded (Keyward never forwards cookies)`);
  const headerParams = params
    .filter((p) => p.param.in === 'header')
    .map((p) => p.param.name.toLowerCase())
    // Accept, Content-Type and Authorization parameters are ignored by OpenAPI itself (Parameter Object, "in").
    .filter((name) => !DEFAULT_REQUEST_HEADERS.has(name) && name !== 'authorization');
  return { ...base, skipped: null, route, bodyUnchecked, warnings, headerParams };
}

/** The server an operation (or its path) declares, when the upstream's base URL is not it. */
function otherServer(list: SpecServer[] | undefined, at: string, servers: ServerChoice): string | null {
  const first = list?.[0];
  if (!first) return null;
  const url = serverUrl(first, at);
  const normal = serverBase(url, servers.reference);
  if (normal !== null && (normal === servers.documentServer || normal === servers.baseUrl)) return null;
  return url;
}

/** An absolute http(s) URL with a final "/", as the upstream schema writes baseUrl; null otherwise. */
export function absoluteBase(url: string): string | null {
  try {
    const parsed = new URL(url);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') return null;
    if (!parsed.pathname.endsWith('/')) parsed.pathname += '/';
    return parsed.href;
  } catch {
    return null;
  }
}

/**
 * A server URL as a base URL: absolute as written, or a relative one resolved against --base-url (`/api/v3`
 * against `https://petstore3.swagger.io` is `https://petstore3.swagger.io/api/v3/`), which stands for where the
 * document is served (OpenAPI 3.1 §4.8.5: server URLs are relative to it). One that resolves to another host
 * (`//other.example/v3`) is null: --base-url names the upstream's host. Null without --base-url.
 */
export function serverBase(url: string, reference: string | null): string | null {
  const absolute = absoluteBase(url);
  if (absolute !== null || reference === null) return absolute;
  let resolved: string | null;
  try {
    resolved = absoluteBase(new URL(url, reference).href);
  } catch {
    return null;
  }
  return resolved !== null && new URL(resolved).origin === new URL(reference).origin ? resolved : null;
}

interface LocatedParameter {
  readonly param: SpecParameter;
  readonly at: string;
}

/** Path-level parameters, overridden by the operation's own of the same name and location (OpenAPI 3.1 §4.8.10). */
function parameters(
  doc: SpecDocument,
  pathLevel: unknown[],
  pathAt: string,
  opLevel: unknown[],
  opAt: string,
  warnings: string[],
): LocatedParameter[] {
  const byKey = new Map<string, LocatedParameter>();
  const read = (list: unknown[], at: string) =>
    list.forEach((raw, index) => {
      const resolved = derefObject(doc, raw, child(at, index));
      if ('external' in resolved) {
        warnings.push(
          `parameter ${index} is in another file ("${resolved.external}"), which the import does not read; it is not declared`,
        );
        return;
      }
      const param = expectShape(parameterShape, resolved.value, resolved.pointer);
      byKey.set(`${param.in} ${param.name}`, { param, at: resolved.pointer });
    });
  read(pathLevel, pathAt);
  read(opLevel, opAt);
  return [...byKey.values()];
}

/**
 * The document's path as a Keyward template: `{petId}` filling a segment becomes `:petId`; with literal text
 * around it (`{name}.json`, `{model}:generate`) it stays `{name}`, which Keyward matches inside the segment. A
 * parameter whose schema is an integer becomes `{petId:int}` (`v{n:int}.json`): it takes only an integer, so a
 * chosen `/issues/{number}` no longer serves an `/issues/comments` beside it.
 */
function routeTemplate(doc: SpecDocument, path: string, pathParams: LocatedParameter[]): { path: string } | { reason: string } {
  if (!path.startsWith('/')) return pathTemplate(path); // that reason first
  for (const { param } of pathParams) {
    if (param.style !== undefined && param.style !== 'simple')
      return { reason: `path parameter "${param.name}" uses style "${param.style}"; only "simple" can be matched` };
  }
  const isInteger = ({ param, at }: LocatedParameter) => {
    const type = pathParamType(doc, param, at);
    return type !== null && type !== 'any' && type.type === 'integer';
  };
  const integers = new Set(pathParams.filter(isInteger).map(({ param }) => param.name));
  return pathTemplate(path, integers);
}

/**
 * The document's path as a Keyward template, its `integers` (parameter names as the document writes them) typed
 * `{name:int}`. Without them, whatever its parameters say: the import also refuses by it the paths it cannot
 * import (./shadowed.ts), and an untyped template covers every request the path can take.
 */
export function pathTemplate(path: string, integers: ReadonlySet<string> = new Set()): { path: string } | { reason: string } {
  if (!path.startsWith('/')) return { reason: `the path "${path}" does not start with "/"` };
  const used = new Set<string>();
  const segments: string[] = [];
  for (const written of path === '/' ? [] : path.slice(1).split('/')) {
    const segment = literalText(written, decodeUnreserved);
    const names = [...segment.matchAll(/\{([^{}]*)\}/g)];
    if (names.length === 0) {
      // A literal `*` or `:name` in the document would be a wildcard or a parameter in a template: a route far
      // broader than the one path the document declares, so the operation is left out.
      if (segment === '*' || segment.startsWith(':')) {
        return { reason: `the literal segment "${segment}" would match any ${segment === '*' ? 'remaining path' : 'value'} in a Keyward template` };
      }
      segments.push(segment);
      continue;
    }
    if (names.length > 1)
      return {
        reason: `the segment "${segment}" holds ${names.length} parameters; a Keyward template holds one per segment`,
      };
    const [whole, name = ''] = names[0]!;
    // `{}` would be `:p_`, any segment, with nothing in the document to say what it stands for.
    if (name === '') return { reason: `the segment "${segment}" holds a parameter with no name` };
    const safe = uniqueName(name, used);
    if (integers.has(name)) segments.push(segment.replace(whole, `{${safe}:int}`));
    else segments.push(whole === segment ? `:${safe}` : segment.replace(whole, `{${safe}}`));
  }
  const template = `/${segments.join('/')}`;
  const problems = templateProblems(template);
  if (problems.length > 0) return { reason: `the path cannot be a Keyward template: ${problems.join('; ')}` };
  return { path: template };
}

/**
 * A segment's literal text (outside `{…}`) through `decode`; parameter names are left as the document writes them.
 */
export function literalText(segment: string, decode: (text: string) => string): string {
  return segment
    .split(/(\{[^{}]*\})/)
    .map((part, index) => (index % 2 === 1 ? part : decode(part)))
    .join('');
}

/**
 * Percent-encoded unreserved characters decoded: `%7Eadmin` and `~admin` are the same path (RFC 3986 §6.2.2.2,
 * https://www.rfc-editor.org/rfc/rfc3986#section-6.2.2.2), and a request for either reaches a route for `~admin`,
 * since Keyward matches decoded segments. Other escapes stay: the segment then cannot be a template.
 */
function decodeUnreserved(text: string): string {
  return text.replace(/%([0-9A-Fa-f]{2})/g, (escape, hex: string) => {
    const char = String.fromCharCode(parseInt(hex, 16));
    return /^[A-Za-z0-9._~-]$/.test(char) ? char : escape;
  });
}

/** A parameter name a template accepts (`pet-id` → `pet_id`); a path parameter's name is never sent upstream. */
function uniqueName(name: string, used: Set<string>): string {
  let safe = name.replace(/[^A-Za-z0-9_]/g, '_');
  if (!PARAM_NAME.test(safe)) safe = `p_${safe}`;
  let candidate = safe;
  for (let n = 2; used.has(candidate); n++) candidate = `${safe}_${n}`;
  used.add(candidate);
  return candidate;
}

/** A path parameter's schema as a contract field would read it; null without one, `any` when it cannot be read. */
function pathParamType(doc: SpecDocument, param: SpecParameter, at: string): FieldSpecInput | 'any' | null {
  if (param.schema === undefined) return null;
  const result = schemaToField(param.schema, child(at, 'schema'), param.name, {
    doc,
    mode: 'query',
    notes: new FieldNotes(),
  });
  return result.ok ? result.spec : 'any';
}

/**
 * Describes a path parameter whose spec says more than Keyward checks: any one safe segment is forwarded, and
 * for an integer (`{name:int}`) any integer.
 */
function uncheckedPathParam(doc: SpecDocument, param: SpecParameter, at: string): string[] {
  const spec = pathParamType(doc, param, at);
  if (spec === null) return [];
  if (spec === 'any') return [`${param.name} (any value)`];
  if (spec.type === 'integer' && !spec.enum) {
    if (spec.minimum === undefined && spec.maximum === undefined) return [];
    return [`${param.name} (integer: only its bounds are not checked)`];
  }
  if (
    spec.type === 'string' &&
    !spec.enum &&
    spec.minLength === undefined &&
    spec.maxLength === undefined &&
    !hasPattern(doc, param.schema)
  )
    return [];
  return [`${param.name} (${spec.enum ? `one of ${spec.enum.map((v) => JSON.stringify(v)).join(', ')}` : spec.type})`];
}

function hasPattern(doc: SpecDocument, schema: unknown): boolean {
  const resolved = derefObject(doc, schema, '#');
  return !('external' in resolved) && isObject(resolved.value) && own(resolved.value, 'pattern') !== undefined;
}

/**
 * The query contract: every query parameter the operation declares, typed; any other is refused. A parameter
 * that cannot be declared is left out (so refused) when optional; when required, it is declared as a plain
 * string if it is one value with a plain name (said), else the contract is left out and the query passes
 * through unchecked (said).
 */
function queryContract(
  doc: SpecDocument,
  params: LocatedParameter[],
  ctx: FieldContext,
  warnings: string[],
): QueryContract | null {
  const properties: Record<string, FieldSpecInput> = {};
  const required: string[] = [];
  for (const { param, at } of params) {
    for (const field of queryFields(param, at, ctx)) {
      if (field.ok) {
        properties[field.name] = field.spec;
        if (field.required) required.push(field.name);
      } else if (!field.required) {
        ctx.notes.omit(field.reason);
      } else if (fieldNameProblem(field.name) === null && !looksLikeObject(doc, param.schema)) {
        properties[field.name] = { type: 'string' };
        required.push(field.name);
        warnings.push(
          `looser than the spec: required query parameter "${field.name}" is checked only as a string (${field.reason})`,
        );
      } else {
        warnings.push(
          `the query is passed through unchecked: required query parameter ${JSON.stringify(field.name)} cannot be declared (${field.reason})`,
        );
        return null;
      }
    }
  }
  const contract: QueryContract = { properties };
  if (required.length > 0) contract.required = [...new Set(required)];
  return contract;
}

type QueryField = { name: string; required: boolean } & (
  { ok: true; spec: FieldSpecInput } | { ok: false; reason: string }
);

/** One query parameter as contract fields: itself, or (an object sent as form, exploded) one per property. */
function queryFields(param: SpecParameter, at: string, ctx: FieldContext): QueryField[] {
  const { name } = param;
  const required = param.required === true;
  const fail = (reason: string): QueryField[] => [{ name, required, ok: false, reason: `query.${name}: ${reason}` }];
  const problem = fieldNameProblem(name);
  if (problem !== null) return fail(problem.replace('field names', 'parameter names'));
  if (param.schema === undefined) {
    const media = param.content ? Object.keys(param.content)[0] : undefined;
    return fail(media ? `it is sent as ${media}, which a contract cannot read` : 'it has no schema');
  }
  const style = param.style ?? 'form';
  const explode = param.explode ?? style === 'form';
  const result = schemaToField(param.schema, child(at, 'schema'), `query.${name}`, ctx);
  if (!result.ok) return [{ name, required, ok: false, reason: result.reason }];
  const { spec } = result;
  if (spec.type === 'object') {
    if (style !== 'form' || !explode)
      return fail(
        `an object sent as ${style === 'deepObject' ? `${name}[key]=…` : 'one value'} cannot be read by a contract`,
      );
    // An object sent as form, exploded, is one parameter per property (OpenAPI "Style Examples").
    return Object.entries(spec.properties ?? {}).map(([property, field]) => ({
      name: property,
      required: required && (spec.required ?? []).includes(property),
      ok: true,
      spec: field,
    }));
  }
  if (spec.type === 'array' && (style !== 'form' || !explode)) {
    return fail(
      `a list sent as one value (style "${style}"${explode ? '' : ', explode false'}) cannot be split by a contract`,
    );
  }
  // The parameter's own description, where its schema has none (the typed client shows it).
  const description = typeof param.description === 'string' ? param.description.trim() : '';
  return [
    { name, required, ok: true, spec: spec.description || !description ? spec : withDescription(spec, description) },
  ];
}

/** An object parameter's name is never sent (its properties are): a plain string cannot stand in for it. */
function looksLikeObject(doc: SpecDocument, schema: unknown): boolean {
  const resolved = derefObject(doc, schema, '#');
  if ('external' in resolved || !isObject(resolved.value)) return false;
  const value = resolved.value;
  return (
    own(value, 'type') === 'object' ||
    ['properties', 'additionalProperties', 'patternProperties'].some((key) => own(value, key) !== undefined)
  );
}

/**
 * The route's `response` type (the typed client's answer type; types only, never checked): the JSON schema of
 * the operation's success answers (its 2xx statuses and `2XX`). They must all have that same schema, or the type
 * of one would claim more than another answers (a 202's body is not the 200's); a success without a body (a
 * 204) does not count, since the typed client answers `undefined` for it. None, and nothing said, when no
 * success has a JSON body; none, said, when the bodies differ or the schema cannot be a type. Fields that cannot
 * be typed, or may be null, are left out of the type (and said): the client does not see them, rather than
 * seeing a wrong type. What is wrong in the document here (a `$ref` that resolves to nothing, a malformed
 * schema) costs the route its type, never the import: answers are described more loosely than requests.
 */
function responseType(
  doc: SpecDocument,
  responses: unknown,
  at: string,
  warnings: string[],
): FieldSpecInput | undefined {
  const notes = new FieldNotes();
  let result: ReturnType<typeof schemaToField> | null;
  try {
    const body = successBody(doc, responses, at);
    if (body === null) return undefined;
    result =
      'differ' in body
        ? { ok: false, reason: body.differ }
        : schemaToField(body.schema, body.at, 'response', { doc, mode: 'response', notes });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    result = { ok: false, reason: error.message };
  }
  if (!result.ok) {
    warnings.push(`the response is typed unknown: ${result.reason}`);
    return undefined;
  }
  const omitted = notes.omittedFields();
  if (omitted.length > 0)
    warnings.push(
      `the response type leaves out what it cannot say (the typed client does not show them): ${omitted.join('; ')}`,
    );
  return result.spec;
}

/** The one JSON schema the success answers share; null when none has a JSON body; `differ` when they disagree. */
function successBody(
  doc: SpecDocument,
  responses: unknown,
  at: string,
): { schema: unknown; at: string } | { differ: string } | null {
  if (!isObject(responses)) return null;
  const json: { status: string; schema: unknown; at: string }[] = [];
  const other: string[] = [];
  for (const status of Object.keys(responses).filter((key) => /^2(?:\d\d|XX)$/i.test(key))) {
    const resolved = derefObject(doc, responses[status], child(at, status));
    if ('external' in resolved)
      return { differ: `the ${status} answer is defined in another file ("${resolved.external}")` };
    const content = isObject(resolved.value) ? own(resolved.value, 'content') : undefined;
    if (!isObject(content) || Object.keys(content).length === 0) continue; // no body
    const media = Object.keys(content).find((type) => isJsonMedia(type.split(';')[0]!.trim().toLowerCase()));
    const entry = media === undefined ? undefined : content[media];
    if (!isObject(entry) || own(entry, 'schema') === undefined) other.push(status);
    else json.push({ status, schema: own(entry, 'schema'), at: child(resolved.pointer, 'content', media!, 'schema') });
  }
  const [first] = json;
  if (!first) return null;
  const differing = json.filter((body) => JSON.stringify(body.schema) !== JSON.stringify(first.schema));
  if (differing.length > 0 || other.length > 0) {
    const statuses = [...json.map((body) => body.status), ...other].join(', ');
    return { differ: `the success answers (${statuses}) do not all have the same JSON body` };
  }
  return { schema: first.schema, at: first.at };
}

/** `application/json` or a `+json` type (lower-case, without parameters). */
function isJsonMedia(base: string): boolean {
  return base === 'application/json' || /^application\/[^/]+\+json$/.test(base);
}

/** The request body's contract in the first format Keyward reads: JSON, then a form, then multipart. */
function bodyContract(
  doc: SpecDocument,
  raw: unknown,
  at: string,
  method: RouteMethod,
  context: (mode: FieldMode, partTypes?: ReadonlyMap<string, string>) => FieldContext,
  warnings: string[],
): { body?: FieldSpecInput; bodyFormat?: 'form' | 'multipart'; formArrays?: 'repeat'; unchecked: boolean } {
  const resolved = derefObject(doc, raw, at);
  if ('external' in resolved) {
    warnings.push(
      `the body is forwarded unchecked (capped by maxRequestBytes): its definition is in another file ("${resolved.external}")`,
    );
    return { unchecked: true };
  }
  const requestBody = expectShape(requestBodyShape, resolved.value, resolved.pointer);
  if (NO_BODY.has(method)) {
    warnings.push(
      `stricter than the spec: it declares a request body, but Keyward forwards ${method} requests without one`,
    );
    return { unchecked: false };
  }
  const media = Object.keys(requestBody.content).map((type) => ({
    type,
    base: type.split(';')[0]!.trim().toLowerCase(),
  }));
  const pick =
    media.find((m) => isJsonMedia(m.base)) ??
    media.find((m) => m.base === 'application/x-www-form-urlencoded') ??
    media.find((m) => m.base === 'multipart/form-data');
  if (!pick) {
    const types = media.map((m) => m.type).join(', ') || 'no media type';
    warnings.push(
      `the body (${types}) is forwarded as sent, unchecked (capped by maxRequestBytes): a contract reads JSON, form and multipart bodies only`,
    );
    return { unchecked: true };
  }
  const others = media.filter((m) => m !== pick).map((m) => m.type);
  if (others.length > 0)
    warnings.push(
      `stricter than the spec: the route accepts ${pick.base} only (the spec also allows ${others.join(', ')})`,
    );
  const entry = requestBody.content[pick.type]!;
  const mode: FieldMode =
    pick.base === 'application/x-www-form-urlencoded'
      ? 'form'
      : pick.base === 'multipart/form-data'
        ? 'multipart'
        : 'json';
  const partTypes = new Map<string, string>();
  for (const [name, encoding] of Object.entries(entry.encoding ?? {}))
    if (encoding.contentType) partTypes.set(`body.${name}`, encoding.contentType);
  const contentAt = child(resolved.pointer, 'content', pick.type);
  if (entry.schema === undefined) {
    warnings.push(`the body is forwarded unchecked (capped by maxRequestBytes): ${pick.type} has no schema`);
    return { unchecked: true };
  }
  const result = schemaToField(entry.schema, child(contentAt, 'schema'), 'body', context(mode, partTypes));
  if (!result.ok) {
    warnings.push(`the body is forwarded unchecked (capped by maxRequestBytes): ${result.reason}`);
    return { unchecked: true };
  }
  if (mode !== 'json' && result.spec.type !== 'object') {
    warnings.push(
      `the body is forwarded unchecked (capped by maxRequestBytes): a ${mode} body must be an object of fields`,
    );
    return { unchecked: true };
  }
  if (mode === 'json' && requestBody.required !== true) {
    warnings.push(
      'stricter than the spec: the spec makes the body optional; the route needs one (JSON matching the contract)',
    );
  }
  const formArrays = mode === 'form' ? formArrayStyle(result.spec, entry.encoding ?? {}, warnings) : null;
  if (formArrays === 'unsupported') return { unchecked: true };
  return { body: result.spec, ...(mode === 'json' ? {} : { bodyFormat: mode }), ...(formArrays ? { formArrays } : {}), unchecked: false };
}

/**
 * How the spec sends a form body's arrays of values: OpenAPI's default for a form property is `style: form`,
 * exploded (`tag=a&tag=b`: `formArrays: "repeat"`); `style: deepObject` is how specs such as Stripe's say bracket
 * notation, which Keyward writes with indexes (its default: null). A list sent as one value (`explode: false`,
 * `pipeDelimited`, `spaceDelimited`: `tag=a,b`) cannot be read by a contract: "unsupported", the body is
 * forwarded unchecked (as such a query parameter makes the operation's query).
 */
function formArrayStyle(
  spec: FieldSpecInput,
  encoding: Readonly<Record<string, { style?: string | undefined; explode?: boolean | undefined }>>,
  warnings: string[],
): 'repeat' | 'unsupported' | null {
  const properties = (spec as { properties?: Record<string, FieldSpecInput> }).properties ?? {};
  const arrays = Object.entries(properties).filter(([, field]) => field.type === 'array');
  if (arrays.length === 0) return null;
  const styleOf = (name: string) => {
    const style = encoding[name]?.style ?? 'form';
    const explode = encoding[name]?.explode ?? style === 'form';
    return style === 'deepObject' ? 'indexes' : style === 'form' && explode ? 'repeat' : 'one value';
  };
  const oneValue = arrays.filter(([name]) => styleOf(name) === 'one value').map(([name]) => name);
  if (oneValue.length > 0) {
    warnings.push(
      `the body is forwarded unchecked (capped by maxRequestBytes): a list sent as one value (${oneValue.join(', ')}) cannot be split by a contract`,
    );
    return 'unsupported';
  }
  const deep = arrays.filter(([name]) => styleOf(name) === 'indexes').map(([name]) => name);
  if (deep.length === arrays.length) return null;
  if (deep.length > 0) {
    warnings.push(
      `the spec sends some form arrays as repeated names and others in brackets (${deep.join(', ')}); Keyward sends them all with indexes (set "formArrays" if your server reads repeated names)`,
    );
    return null;
  }
  return 'repeat';
}
