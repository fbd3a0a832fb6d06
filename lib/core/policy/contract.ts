import { z } from 'zod';
import { ConfigError } from '../config/load';
import { filePart, fileParts, type BodyFormat, type FieldSpecInput, type FormArrayStyle, type FieldTarget, type FilePartSpec, type SessionValue } from '../config/policy';
import type { RouteConfig } from '../config/schema';
import { KeywardError } from '../errors';
import { queryParamKey } from '../forward/query';
import type { Session } from '../session/session';

/**
 * Request contracts (DESIGN.md step 5): the query and body a route accepts (JSON, form or multipart: see
 * ./body.ts), per-role caps and identity fields. What is forwarded is rebuilt from the parsed values, never
 * the client's raw text, so a field the contract does not know (or a second copy of one it does) cannot reach
 * the upstream.
 */

export type QueryValues = Record<string, unknown>;

export interface CompiledContract {
  /** Null: the query is passed through as sent (no contract declared). */
  readonly query: { readonly schema: z.ZodType; readonly arrays: ReadonlySet<string> | null } | null;
  /** What the body must be once read in its format (form and multipart fields arrive as strings). */
  readonly body: z.ZodType | null;
  readonly bodyFormat: BodyFormat;
  /** Form bodies: how arrays of values are written for the upstream (`formArrays`). */
  readonly formArrays: FormArrayStyle;
  /** Multipart bodies: what each part name may carry (a text field or a file), from `body`'s shape. */
  readonly parts: ReadonlyMap<string, PartRule> | null;
  readonly caps: ReadonlyMap<string, ReadonlyMap<FieldTarget, number>>;
  /** A value over its cap: refused (400), or lowered to the cap ("clamp"). */
  readonly overCap: 'refuse' | 'clamp';
  readonly identity: ReadonlyArray<readonly [FieldTarget, SessionValue]>;
  /**
   * Query parameters Keyward writes (caps, then identity fields, as they are applied), which go first in the upstream's query:
   * common parsers keep only the first 1,000 parameters (node:querystring and so Express 5, qs, PHP's
   * max_input_vars) and drop the rest, so a client padding the query must not push these past them.
   */
  readonly writtenQuery: ReadonlySet<string>;
  /** The same for form bodies: the body fields Keyward writes, as paths, which go first in the form sent upstream. */
  readonly writtenBody: ReadonlyArray<readonly string[]>;
  /**
   * The top-level body fields the call's cost is read from (`cost.reserveFrom`'s field, a price table's model):
   * a multipart body must send them before its first file part (lib/core/policy/multipart.ts).
   */
  readonly costFields: ReadonlySet<string>;
  /**
   * With a body contract, the query fields Keyward writes or reads the cost from (`query.owner`, `query.limit`), as
   * `queryParamKey` folds them: a body field by one of these names is refused (`refuseQueryTwins`).
   */
  readonly queryTwins: ReadonlySet<string>;
}

/** One field of a multipart contract, and the part names it is read from (lib/core/policy/multipart.ts). */
export interface PartRule {
  readonly kind: 'text' | 'file';
  /** Declared as an array: the part may be sent more than once, as `name` or as `name[]`. */
  readonly array: boolean;
  /** Checks one value: a text part's string, or a file's `UploadedFile`. */
  readonly value: z.ZodType;
  /** Files: their byte cap and media types. */
  readonly file: FilePartSpec | null;
  /**
   * Declared as a z.object (or a union with one): the text parts `name[key]` it is read from, each key one of
   * the object's own, with the schema one such part's string is checked against. Null for any other field.
   */
  readonly members: ReadonlyMap<string, z.ZodType> | null;
}

/**
 * `closedQuery`: a route that declares no `query` accepts none (an `aws-sigv4` upstream's: on S3 and AWS's Query
 * APIs the query chooses the operation, so a signed `?acl` or `?Action=` would be another call than the route's).
 */
export function compileContract(route: RouteConfig, where: string, closedQuery = false): CompiledContract {
  let query: CompiledContract['query'] = null;
  if (route.query instanceof z.ZodType) {
    query = { schema: closed(route.query), arrays: null };
  } else if (route.query) {
    const spec = route.query as { properties: Record<string, FieldSpecInput>; required?: string[] };
    const shape: Record<string, z.ZodType> = {};
    const arrays = new Set<string>();
    for (const [name, field] of Object.entries(spec.properties)) {
      if (field.type === 'array') arrays.add(name);
      const schema = textField(field, `${where}.query.properties.${name}`, 'query');
      shape[name] = spec.required?.includes(name) ? schema : schema.optional();
    }
    query = { schema: z.strictObject(shape), arrays };
  } else if (route.body || closedQuery) {
    // A body contract closes the query too: many servers read query parameters into the same bucket as the body
    // (Stripe, Rails, PHP's $_REQUEST), so an open query would carry what the contract refuses in the body.
    query = { schema: z.strictObject({}), arrays: new Set() };
  }
  const bodyFormat = route.bodyFormat ?? 'json';
  const body = route.body ? compileBody(route.body as FieldSpecInput | z.ZodType, bodyFormat, `${where}.body`) : null;
  const parts = body && bodyFormat === 'multipart' ? partRules(body as z.ZodObject, `${where}.body`) : null;
  const caps = new Map(Object.entries(route.caps ?? {}).map(([role, fields]) => [role, new Map(Object.entries(fields)) as Map<FieldTarget, number>]));
  const overCap = route.overCap ?? 'refuse';
  const formArrays = route.formArrays ?? 'indexes';
  const identity = Object.entries(route.identity ?? {}) as [FieldTarget, SessionValue][];
  const targets = [...[...caps.values()].flatMap((fields) => [...fields.keys()]), ...identity.map(([target]) => target)];
  const writtenQuery = new Set(targets.filter((target) => target.startsWith('query.')).map((target) => target.slice('query.'.length)));
  const writtenBody = [...new Set(targets.filter((target) => target.startsWith('body.')))].map((target) => target.split('.').slice(1));
  const costTargets = [route.cost?.reserveFrom?.field, route.cost?.price?.model];
  const costFields = new Set(costTargets.flatMap((target) => (target?.startsWith('body.') ? [target.slice('body.'.length)] : [])));
  const queryFields = [...targets, ...costTargets].flatMap((target) => (target?.startsWith('query.') ? [target.slice('query.'.length)] : []));
  const queryTwins = new Set(body ? queryFields.map(queryParamKey) : []);
  // A multipart body's fields after its first file are checked as they stream, after the call went out: a part
  // by such a name is refused here, at start-up, rather than looked for in the body (refuseQueryTwins).
  for (const name of parts?.keys() ?? []) {
    if (queryTwins.has(queryParamKey(name))) {
      throw new ConfigError(`  - ${where}.body.${name}: is named as a query parameter this route writes or reads the cost from; an upstream reading both as one would take the part's`);
    }
  }
  return { query, body, bodyFormat, formArrays, parts, caps, overCap, identity, writtenQuery, writtenBody, costFields, queryTwins };
}

/**
 * Refuses a checked body with a top-level field named as a query field Keyward writes or reads the cost from
 * (`CompiledContract.queryTwins`, in any spelling a lenient parser folds to it): many servers read query and body
 * parameters as one, the body's over the query's (Rails' `params`, PHP's `$_REQUEST`, Stripe), so the client's
 * `owner` or `limit` in the body would win over the one Keyward wrote or priced in the query.
 */
export function refuseQueryTwins(contract: CompiledContract, body: unknown): void {
  if (contract.queryTwins.size === 0 || body === null || typeof body !== 'object' || Array.isArray(body)) return;
  for (const key of Object.keys(body)) {
    if (contract.queryTwins.has(queryParamKey(key))) {
      throw violation('body: a field named as a query parameter Keyward writes or reads the cost from (a server reading both as one would take the body\'s)');
    }
  }
}

/** The body contract in its format: JSON values as they are; form and multipart fields read from their text. */
function compileBody(body: FieldSpecInput | z.ZodType, format: BodyFormat, where: string): z.ZodType {
  if (body instanceof z.ZodType) {
    if (format === 'multipart' && !(body instanceof z.ZodObject)) throw new ConfigError(`  - ${where}: a multipart contract is a z.object of its parts`);
    return closed(body);
  }
  if (format === 'json') return bodyField(body, where);
  if (body.type !== 'object') throw new ConfigError(`  - ${where}: a ${format} body is an object of fields ("type": "object")`);
  return textObject(body, where, format, true);
}

/** Names are written back into the forwarded part headers: only plain ones (quotes or line breaks would split them). */
const PART_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Multipart fields, each a text field or a file (`filePart`, `{"type": "file"}`), possibly repeated (arrays), or
 * (zod contracts) an object of text fields sent in bracket notation, as the `openai` SDK sends
 * `chunking_strategy: { type: 'server_vad' }`.
 */
function partRules(schema: z.ZodObject, where: string): Map<string, PartRule> {
  const rules = new Map<string, PartRule>();
  for (const [name, field] of Object.entries(schema.shape)) {
    if (!PART_NAME.test(name)) throw new ConfigError(`  - ${where}: multipart part names are letters, digits, "_" and "-"`);
    const inner = unwrapSchema(field as z.ZodType);
    const array = inner instanceof z.ZodArray;
    const value = array ? (inner.element as z.ZodType) : inner;
    const file = fileParts.get(value) ?? null;
    // zod links no metadata to a derived schema: `filePart().refine(…)` would silently become a text field.
    if (!file && value instanceof z.ZodObject && isFileShape(value)) {
      throw new ConfigError(`  - ${where}.${name}: refine the contract's object, not filePart() (a derived schema is no longer a file part)`);
    }
    const members = file || array ? null : objectMembers(value, `${where}.${name}`);
    rules.set(name, { kind: file ? 'file' : 'text', array, value, file, members });
  }
  return rules;
}

function isFileShape(schema: z.ZodObject): boolean {
  return Object.keys(schema.shape).sort().join() === 'bytes,contentType,filename';
}

/**
 * The members of a field declared as an object, or as a union with objects among its options (`'auto' | {…}`):
 * each key of any of those objects, checked against its schema (a union of them where objects share a key).
 * Members are single text parts: one that is itself an object, an array or a file could only be sent as
 * `name[key][…]`, which is not read.
 */
function objectMembers(schema: z.ZodType, where: string): Map<string, z.ZodType> | null {
  const options = schema instanceof z.ZodUnion ? (schema.options as z.ZodType[]).map(unwrapSchema) : [schema];
  const objects = options.filter((option): option is z.ZodObject => option instanceof z.ZodObject && !isFileShape(option));
  if (objects.length === 0) return null;
  // The parts are forwarded as sent, not as parsed: a member of one object sent beside another's (a union's other
  // branch) would pass a plain z.object, which drops keys it does not know, and still reach the upstream.
  if (objects.length > 1 && objects.some((object) => object._zod.def.catchall?._zod.def.type !== 'never')) {
    throw new ConfigError(`  - ${where}: the objects of a multipart union are z.strictObject (a plain object would let another one's member through)`);
  }
  const schemas = new Map<string, z.ZodType[]>();
  for (const object of objects) {
    for (const [key, member] of Object.entries(object.shape)) {
      if (!PART_NAME.test(key)) throw new ConfigError(`  - ${where}: multipart object keys are letters, digits, "_" and "-"`);
      const inner = unwrapSchema(member as z.ZodType);
      if (inner instanceof z.ZodObject || inner instanceof z.ZodArray || fileParts.has(inner)) {
        throw new ConfigError(`  - ${where}.${key}: a multipart object holds text fields only`);
      }
      schemas.set(key, [...(schemas.get(key) ?? []), member as z.ZodType]);
    }
  }
  return new Map(
    [...schemas].map(([key, list]) => [key, list.length === 1 ? list[0]! : z.union(list as [z.ZodType, z.ZodType, ...z.ZodType[]])]),
  );
}

/** The schema under optional/nullable/default wrappers (what a field's own type is). */
export function unwrapSchema(schema: z.ZodType): z.ZodType {
  let current = schema;
  while (current instanceof z.ZodOptional || current instanceof z.ZodNullable || current instanceof z.ZodDefault) {
    current = current.unwrap() as z.ZodType;
  }
  return current;
}

/** A zod object from an adapter refuses unknown keys like the declarative contracts do. */
function closed(schema: z.ZodType): z.ZodType {
  return schema instanceof z.ZodObject ? schema.strict() : schema;
}

function literals(values: readonly (string | number | boolean)[]): z.ZodType {
  return z.literal(values as [string, ...string[]]);
}

function bodyField(spec: FieldSpecInput, where: string): z.ZodType {
  switch (spec.type) {
    case 'string': {
      if (spec.enum) return literals(spec.enum);
      let schema = z.string();
      if (spec.minLength !== undefined) schema = schema.min(spec.minLength);
      if (spec.maxLength !== undefined) schema = schema.max(spec.maxLength);
      return schema;
    }
    case 'integer':
    case 'number': {
      if (spec.enum) return literals(spec.enum);
      let schema = spec.type === 'integer' ? z.number().int() : z.number();
      if (spec.minimum !== undefined) schema = schema.min(spec.minimum);
      if (spec.maximum !== undefined) schema = schema.max(spec.maximum);
      return schema;
    }
    case 'boolean':
      return z.boolean();
    case 'array': {
      let schema = z.array(bodyField(spec.items!, `${where}.items`));
      if (spec.minItems !== undefined) schema = schema.min(spec.minItems);
      if (spec.maxItems !== undefined) schema = schema.max(spec.maxItems);
      return schema;
    }
    case 'object': {
      const shape: Record<string, z.ZodType> = {};
      for (const [name, field] of Object.entries(spec.properties ?? {})) {
        const schema = bodyField(field, `${where}.properties.${name}`);
        shape[name] = spec.required?.includes(name) ? schema : schema.optional();
      }
      return z.strictObject(shape);
    }
    case 'file':
      throw new ConfigError(`  - ${where}: "file" applies to multipart bodies only ("bodyFormat": "multipart")`);
  }
}

const INTEGER = /^-?(?:0|[1-9]\d{0,15})$/;
const NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d{1,3})?$/;

type TextFormat = 'query' | 'form' | 'multipart';

/**
 * Values that arrive as text (query parameters, form fields, multipart text parts): each declared type says how
 * to read one (`limit=10` is the integer 10), then the JSON body rules apply. Query parameters and multipart
 * parts are flat (arrays of scalars, or of files for multipart); form fields nest in bracket notation.
 */
function textField(spec: FieldSpecInput, where: string, format: TextFormat): z.ZodType {
  switch (spec.type) {
    case 'string':
      return bodyField(spec, where);
    case 'integer':
    case 'number':
      return z
        .string()
        .regex(spec.type === 'integer' ? INTEGER : NUMBER, `expected ${spec.type === 'integer' ? 'an integer' : 'a number'}`)
        .transform(Number)
        .pipe(bodyField(spec, where) as z.ZodType<unknown, number>);
    case 'boolean':
      return z.enum(['true', 'false'], { error: 'expected true or false' }).transform((value) => value === 'true');
    case 'file':
      if (format !== 'multipart') throw new ConfigError(`  - ${where}: "file" applies to multipart bodies only ("bodyFormat": "multipart")`);
      return filePart({ maxBytes: spec.maxBytes, contentTypes: spec.contentTypes });
    case 'array': {
      const nested = spec.items!.type === 'array' || spec.items!.type === 'object';
      if (nested && format === 'query') throw new ConfigError(`  - ${where}.items: query arrays hold strings, numbers or booleans`);
      if (nested && format === 'multipart') throw new ConfigError(`  - ${where}.items: multipart arrays hold text fields or files`);
      let schema = z.array(textField(spec.items!, `${where}.items`, format));
      if (spec.minItems !== undefined) schema = schema.min(spec.minItems);
      if (spec.maxItems !== undefined) schema = schema.max(spec.maxItems);
      return schema;
    }
    case 'object':
      if (format === 'query') throw new ConfigError(`  - ${where}: query parameters cannot be objects`);
      if (format === 'multipart') throw new ConfigError(`  - ${where}: multipart parts cannot be objects`);
      return textObject(spec, where, format, false);
  }
}

/** A closed object of text fields: a form body or one of its nested objects, or a multipart body. */
function textObject(spec: FieldSpecInput, where: string, format: TextFormat, top: boolean): z.ZodType {
  const shape: Record<string, z.ZodType> = {};
  for (const [name, field] of Object.entries(spec.properties ?? {})) {
    // In bracket notation `a[0]` is an index: a nested field named by digits could never be sent.
    if (format === 'form' && !top && /^\d+$/.test(name)) {
      throw new ConfigError(`  - ${where}.properties.${name}: a nested form field cannot be named by digits only (it reads as an array index)`);
    }
    const schema = textField(field, `${where}.properties.${name}`, format);
    shape[name] = spec.required?.includes(name) ? schema : schema.optional();
  }
  return z.strictObject(shape);
}

/**
 * Reads the query against its contract. Refused: a parameter the contract does not declare, and a repeated
 * parameter not declared as an array (HTTP parameter pollution: servers disagree on which copy wins). A `;` is
 * a character of its value, as `&` and `=` alone separate (URLSearchParams): the query sent upstream is rebuilt
 * from the parsed values with `;` percent-encoded, so an upstream framework that splits on `;` sees no other
 * parameter. (Refusing a raw `;` would split the lanes: Next hands its route handlers the query with `;` already
 * encoded as `%3B`, which no check can tell from a client's own `%3B`.)
 */
export function parseQuery(contract: NonNullable<CompiledContract['query']>, params: URLSearchParams): QueryValues {
  const raw: Record<string, string | string[]> = Object.create(null);
  for (const [name, value] of params) {
    const seen = raw[name];
    if (seen === undefined) {
      raw[name] = contract.arrays?.has(name) ? [value] : value;
    } else if (Array.isArray(seen)) {
      seen.push(value);
    } else if (contract.arrays === null) {
      raw[name] = [seen, value];
    } else {
      // Only a declared name is echoed; any other is the client's own text (it could be a key).
      const declared = contract.schema instanceof z.ZodObject && Object.hasOwn(contract.schema.shape, name);
      throw violation(declared ? `query.${name}: given more than once` : 'query: unknown field');
    }
  }
  const result = contract.schema.safeParse(raw);
  if (!result.success) throw contractError(result.error, 'query', contract.schema);
  return result.data as QueryValues;
}

/** Parses and validates a JSON body. The caller forwards `JSON.stringify` of what this returns. */
export function parseBody(schema: z.ZodType, text: string): unknown {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw violation('body: not valid JSON');
  }
  const result = schema.safeParse(json);
  if (!result.success) throw contractError(result.error, 'body', schema);
  return result.data;
}

/** Rebuilds the query string from parsed values, in a fixed form. */
export function serializeQuery(values: QueryValues): URLSearchParams {
  const out = new URLSearchParams();
  for (const [name, value] of Object.entries(values)) {
    if (value === undefined || value === null) continue;
    for (const item of Array.isArray(value) ? value : [value]) out.append(name, String(item));
  }
  return out;
}

/**
 * Reads `userId` or `claims.<name>`. A missing or empty claim fails closed: the route cannot be called without it
 * (an empty value stamped into a field is, to many APIs, no value: Stripe lists every customer's for `customer=`).
 */
export function sessionValue(session: Session, source: SessionValue): string {
  if (source === 'userId') return session.userId;
  const name = source.slice('claims.'.length);
  const value = Object.hasOwn(session.claims, name) ? session.claims[name] : undefined;
  if (value === undefined || value === '') throw new KeywardError('forbidden', { message: 'Your session lacks a claim this route needs.' });
  return value;
}

export interface RequestParts {
  query: QueryValues | URLSearchParams;
  body: unknown;
}

/** The caps key that applies to every session, whatever its roles. */
const ALL_ROLES = '*';

/**
 * Applies per-role caps (`"*"`: every caller): the most generous cap among the caller's roles that have one (a
 * role listed with no cap for the field lifts it). A larger value is refused, or lowered to the cap when the route
 * says `overCap: "clamp"`; a missing value is set to the cap, so the upstream's own (possibly larger) default
 * never applies.
 */
export function applyCaps(contract: CompiledContract, session: Session, parts: RequestParts): void {
  if (contract.caps.size === 0) return;
  const limits = new Map<FieldTarget, number>();
  // "*" caps every caller; a role of the caller's listed beside it can still lift a field (below).
  const capped = [...session.roles, ALL_ROLES].filter((role) => contract.caps.has(role));
  for (const role of capped) {
    for (const [target, max] of contract.caps.get(role)!) limits.set(target, Math.max(limits.get(target) ?? -Infinity, max));
  }
  for (const [target, max] of limits) {
    // A caller's role listed in caps without this field is not capped on it: {"free": {…}, "pro": {}}
    // lets a pro user who is also "free" go past free's cap.
    if (capped.some((role) => !contract.caps.get(role)!.has(target))) continue;
    const current = readTarget(parts, target);
    if (current === undefined) {
      writeTarget(parts, target, max);
    } else if (typeof current !== 'number' || !Number.isFinite(current)) {
      throw violation(`${target}: expected a number`);
    } else if (current > max) {
      if (contract.overCap === 'clamp') writeTarget(parts, target, max);
      else throw violation(`${target}: must be at most ${max} for your role`);
    }
  }
}

/** Writes identity fields from the session, whatever the client sent. */
export function applyIdentity(contract: CompiledContract, session: Session, parts: RequestParts): void {
  for (const [target, source] of contract.identity) writeTarget(parts, target, sessionValue(session, source));
}

/** Reads a numeric or other value at `body.a.b` / `query.name`; undefined when absent. */
export function readTarget(parts: RequestParts, target: FieldTarget): unknown {
  const [root, ...path] = target.split('.');
  if (root === 'query') {
    const name = path[0]!;
    if (parts.query instanceof URLSearchParams) {
      // A repeated parameter has no one value (servers disagree on which copy wins): every copy is
      // returned, so a cap refuses it instead of checking the first while the upstream reads the last. A
      // parameter a lenient server could take for this one (`LIMIT`, `limit[]`: see queryParamKey) makes it
      // as ambiguous, even alone.
      const wanted = queryParamKey(name);
      const values: (number | string)[] = [];
      let ambiguous = false;
      for (const [key, value] of parts.query) {
        if (key === name) values.push(rawQueryNumber(value));
        else if (queryParamKey(key) === wanted) {
          ambiguous = true;
          values.push(value);
        }
      }
      return values.length === 0 ? undefined : values.length === 1 && !ambiguous ? values[0] : values;
    }
    return Object.hasOwn(parts.query, name) ? parts.query[name] : undefined;
  }
  let node: unknown = parts.body;
  for (const key of path) {
    if (node === null || typeof node !== 'object' || Array.isArray(node)) return undefined;
    // A key that differs from this one in case alone (in an open object: closed contracts refuse it) is one a Go or
    // .NET upstream may read instead: no one value, as with a repeated query parameter (caps and budgets refuse it).
    const variants = caseVariants(node as Record<string, unknown>, key);
    if (variants.length > 0) return [...(Object.hasOwn(node, key) ? [key] : []), ...variants].map((name) => (node as Record<string, unknown>)[name]);
    if (!Object.hasOwn(node, key)) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

/**
 * A raw query value as a number only when it is written the way the number is (`10`, `0.5`): an upstream reads
 * `99999e-999`, `9e-1` or `05` with parseInt as 99999, 9 and 5, where Number() gives 0, 0.9 and 5, so a cap or
 * a budget would check one number while the upstream uses another. Anything else stays text (refused where a
 * number is needed).
 */
function rawQueryNumber(value: string): number | string {
  if (!NUMBER.test(value)) return value;
  const number = Number(value);
  return String(number) === value ? number : value;
}

function writeTarget(parts: RequestParts, target: FieldTarget, value: string | number): void {
  const [root, ...path] = target.split('.');
  if (root === 'query') {
    const name = path[0]!;
    if (parts.query instanceof URLSearchParams) {
      // Only Keyward's value goes on: a spelling a lenient upstream could read instead (`User`, `user[]`) is dropped.
      const wanted = queryParamKey(name);
      for (const key of [...parts.query.keys()]) if (key !== name && queryParamKey(key) === wanted) parts.query.delete(key);
      parts.query.set(name, String(value));
    } else parts.query[name] = value;
    return;
  }
  if (parts.body === null || typeof parts.body !== 'object' || Array.isArray(parts.body)) {
    throw violation('body: must be a JSON object');
  }
  let node = parts.body as Record<string, unknown>;
  for (const key of path.slice(0, -1)) {
    dropCaseVariants(node, key);
    const next = Object.hasOwn(node, key) ? node[key] : undefined;
    if (next === undefined) {
      const created: Record<string, unknown> = {};
      // defineProperty: an assignment to `__proto__` would replace the prototype and the field would be lost.
      Object.defineProperty(node, key, { value: created, enumerable: true, writable: true, configurable: true });
      node = created;
    } else if (next !== null && typeof next === 'object' && !Array.isArray(next)) {
      node = next as Record<string, unknown>;
    } else {
      throw violation(`body.${key}: must be an object`);
    }
  }
  // defineProperty, not assignment: a key named `__proto__` stays a plain data property.
  dropCaseVariants(node, path[path.length - 1]!);
  Object.defineProperty(node, path[path.length - 1]!, { value, enumerable: true, writable: true, configurable: true });
}

/**
 * Only Keyward's copy of a field it writes goes on: a key that differs from it in case alone (`User`, `USER_ID`) is
 * dropped, since some upstreams match JSON keys case-insensitively and keep the last copy (Go's encoding/json,
 * .NET with PropertyNameCaseInsensitive). Closed contracts refuse such keys already; an open object (a zod record) does not.
 */
function dropCaseVariants(node: Record<string, unknown>, key: string): void {
  for (const other of caseVariants(node, key)) delete node[other];
}

/** The keys of `node` other than `key` that equal it once case is folded, as Go's encoding/json folds it. */
function caseVariants(node: Record<string, unknown>, key: string): string[] {
  // Upper then lower case: Go's folding also matches `ſ` (long s) to `s` and `K` (Kelvin sign) to `k`.
  const fold = (name: string) => name.toUpperCase().toLowerCase();
  const wanted = fold(key);
  return Object.keys(node).filter((other) => other !== key && fold(other) === wanted);
}

export function violation(message: string): KeywardError {
  return new KeywardError('contract_violation', { message: `The request does not match this route's contract: ${message}.` });
}

/** A declared name is echoed only in a harmless form (no quotes or markup, at most 64 characters). */
function safeName(name: string): string {
  // Brackets and dots too: a query or form contract declares `expand[]` or `page.size` as written on the wire.
  return /^[A-Za-z0-9_.[\]-]{1,64}$/.test(name) ? name : '(invalid name)';
}

/**
 * An issue's path as it may be shown: indexes, and the names the contract declares (an object's own keys). Any
 * other part is the client's own text, a record's key (Stripe's `metadata[…]`), a catchall's or one no schema on
 * the path declares, and is shown as `(a key)` whatever its characters: a key pasted as a field name would be
 * echoed (as lib/core/policy/form.ts names a form field).
 */
function shownPath(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let at: z.ZodType[] = [schema];
  return path.map((part) => {
    const branches = at.flatMap((node) => branchesOf(node, new Set()));
    at = [];
    let declared = false;
    for (const node of branches) {
      if (typeof part === 'number') {
        if (node instanceof z.ZodArray) at.push(node.element as z.ZodType);
        if (node instanceof z.ZodTuple) {
          const item = node.def.items[part] ?? node.def.rest;
          if (item) at.push(item as z.ZodType);
        }
      } else if (node instanceof z.ZodObject && Object.hasOwn(node.shape, part)) {
        at.push(node.shape[part as string] as z.ZodType);
        declared = true;
      } else if (node instanceof z.ZodObject && node.def.catchall) {
        at.push(node.def.catchall as z.ZodType);
      } else if (node instanceof z.ZodRecord) {
        at.push(node.valueType as z.ZodType);
      }
    }
    if (typeof part === 'number') return String(part);
    return declared && typeof part === 'string' ? safeName(part) : '(a key)';
  });
}

/** The schemas a value at this node is checked against: itself, under wrappers, pipes, unions and intersections. */
function branchesOf(node: z.ZodType, seen: Set<z.ZodType>): z.ZodType[] {
  if (seen.has(node)) return [];
  seen.add(node);
  const def = node._zod.def;
  // `innerType`: optional, nullable, default, catch, readonly and the other wrappers.
  const inner =
    'innerType' in def ? [def.innerType]
    : node instanceof z.ZodPipe ? [node.in, node.out]
    : node instanceof z.ZodLazy ? [node.unwrap()]
    : node instanceof z.ZodUnion ? node.options
    : node instanceof z.ZodIntersection ? [node.def.left, node.def.right]
    : null;
  return inner ? (inner as z.ZodType[]).flatMap((child) => branchesOf(child, seen)) : [node];
}

/**
 * Names the first problems by path (`shownPath`, against the `schema` that was parsed); zod's messages name
 * expected types and config limits, not values.
 */
export function contractError(error: z.ZodError, root: string, schema: z.ZodType): KeywardError {
  const problems = error.issues.slice(0, 3).map((issue) => {
    const path = [root, ...shownPath(schema, issue.path)].join('.');
    // The unknown names are the client's own text (a key pasted as a field name would be echoed): never shown.
    if (issue.code === 'unrecognized_keys') return `${path}: unknown field${issue.keys.length > 1 ? 's' : ''}`;
    return `${path}: ${issue.message}`;
  });
  return violation(problems.join('; '));
}
