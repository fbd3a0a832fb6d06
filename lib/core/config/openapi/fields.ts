import type { FieldSpecInput } from '../policy';
import { child, isObject, own, resolveRef, specError, type JsonObject, type SpecDocument } from './document';

/**
 * OpenAPI schemas (JSON Schema) → Keyward's declarative contracts (lib/core/config/policy.ts). A contract is a
 * small, closed subset: types, enums, bounds, arrays, closed objects; no `pattern` (on purpose), no unions, no
 * maps, no recursion, no null. What cannot be kept exactly is decided one way, always said (FieldNotes):
 *
 * - Stricter is the default: an optional field that cannot be expressed is left out of its object, so a request
 *   carrying it is refused; `null` is refused; keys beyond the declared properties are refused.
 * - Looser only where nothing stricter can stand: a check the contract language lacks (`pattern`, `multipleOf`,
 *   `uniqueItems`, `not`…) is dropped and named, the rest of the field is still checked.
 * - A required field (or the whole body) that cannot be expressed makes the contract unsatisfiable: the result
 *   is `ok: false` with the reason, and the caller decides (leave the contract out and say so).
 *
 * Mode `response` reads a response schema into a route's `response` type (types only, for the typed client;
 * never checked), where the safe side is the other one: a type must never claim more than the answer holds. So
 * a field that may be null, or that cannot be expressed, is left out of its object whether required or not (the
 * client does not see it, rather than seeing a wrong type), write-only fields are left out and read-only ones
 * kept; a value that may be null as a whole, or cannot be expressed, has no type (`ok: false`).
 */

export type FieldMode = 'json' | 'form' | 'multipart' | 'query' | 'response';

export type FieldResult =
  { readonly ok: true; readonly spec: FieldSpecInput } | { readonly ok: false; readonly reason: string };

/** Field names a contract can declare (policy.ts FIELD_NAME). */
const FIELD_NAME = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Why a contract cannot declare a field (or query parameter) of this name; null when it can. `__proto__` fits the
 * pattern, but the config loader refuses it anywhere (lib/core/config/load.ts), and set on a plain object it
 * would be dropped without a word.
 */
export function fieldNameProblem(name: string): string | null {
  if (name === '__proto__') return '"__proto__" cannot be a name in the config';
  return FIELD_NAME.test(name) ? null : 'field names in a contract are letters, digits, "_" and "-"';
}

const LOOSENED = {
  pattern: '"pattern" is not checked (contracts have none, on purpose)',
  multipleOf: '"multipleOf" is not checked',
  uniqueItems: '"uniqueItems" is not checked',
  not: '"not" is not checked',
  exclusive: 'an exclusive bound is checked as inclusive',
  propertyCount: '"minProperties"/"maxProperties" are not checked',
  conditional: 'conditional keywords ("if", "dependentRequired", "propertyNames"…) are not checked',
  contains: '"contains" is not checked',
  bigEnum: 'the enum is too large for a contract (over 256 values, or a value over 256 characters) and is not checked',
  bigBound: 'a bound over 1,000,000 is not checked',
  booleanEnum: 'an enum on a boolean is not checked',
  requiredChoice: 'which fields are required together (a oneOf/anyOf of "required" lists) is not checked',
  contentTypes: 'a part\'s media type ("contentType") is not a plain media type and is not checked',
} as const;

const TIGHTENED = {
  null: 'null is refused (contracts have no null)',
  extraKeys: 'keys beyond the declared properties are refused (contracts are closed objects)',
  formNesting: 'nested objects are read in bracket notation (name[field]=…), as Keyward reads forms',
} as const;

export type LoosenedKind = keyof typeof LOOSENED;
export type TightenedKind = keyof typeof TIGHTENED;

/** What an operation's contracts do not keep exactly, by field path; reported once per operation. */
export class FieldNotes {
  private readonly loosened = new Map<LoosenedKind, Set<string>>();
  private readonly tightened = new Map<TightenedKind, Set<string>>();
  private readonly omitted: string[] = [];

  loosen(kind: LoosenedKind, path: string): void {
    add(this.loosened, kind, path);
  }

  tighten(kind: TightenedKind, path: string): void {
    add(this.tightened, kind, path);
  }

  /** A field left out of its object: requests carrying it are refused. `reason` starts with the field's path. */
  omit(reason: string): void {
    this.omitted.push(reason);
  }

  /** The fields left out, as `omit` was told (a response type says them in its own words). */
  omittedFields(): readonly string[] {
    return [...this.omitted];
  }

  messages(): string[] {
    const out: string[] = [];
    for (const [kind, paths] of this.loosened)
      out.push(`looser than the spec: ${LOOSENED[kind]}: ${[...paths].join(', ')}`);
    for (const [kind, paths] of this.tightened)
      out.push(`stricter than the spec: ${TIGHTENED[kind]}: ${[...paths].join(', ')}`);
    if (this.omitted.length > 0)
      out.push(
        `stricter than the spec: left out of the contract, so a request carrying them is refused: ${this.omitted.join('; ')}`,
      );
    return out;
  }
}

function add<K>(map: Map<K, Set<string>>, kind: K, path: string): void {
  const set = map.get(kind) ?? new Set<string>();
  set.add(path);
  map.set(kind, set);
}

export interface FieldContext {
  readonly doc: SpecDocument;
  readonly mode: FieldMode;
  readonly notes: FieldNotes;
  /** Multipart bodies: each part's `encoding.contentType` (media types a file part may carry), by field path. */
  readonly partTypes?: ReadonlyMap<string, string>;
}

/**
 * A conversion under way: how many schema nodes it may still visit (shared refs multiply without recursion), and
 * how deep it is in nested schemas (each level is a call on the stack).
 */
type Walk = FieldContext & { readonly budget: { nodes: number; depth: number } };

/** Converts one schema to a contract field (`path` names it in notes and reasons: `body.tags[].name`). */
export function schemaToField(schema: unknown, at: string, path: string, context: FieldContext): FieldResult {
  const ctx: Walk = { ...context, budget: { nodes: MAX_NODES, depth: 0 } };
  return finalize(draft(schema, at, path, ctx, []), path, ctx, true);
}

// ---- Drafts: a schema read into Keyward's shapes, before objects decide what to leave out ----

type ScalarType = 'string' | 'integer' | 'number' | 'boolean' | 'file';

interface Common {
  description?: string;
  /** readOnly (OpenAPI): sent in responses only, so left out of request contracts. */
  readOnly?: boolean;
  /** writeOnly (OpenAPI): sent in requests only, so left out of response types. */
  writeOnly?: boolean;
  /** The value may be null (a contract has no null): a response type leaves it out. */
  nullable?: boolean;
}

type Draft =
  | { kind: 'none'; reason: string }
  | ({ kind: 'any' } & Common)
  | ({
      kind: 'scalar';
      type: ScalarType;
      enum?: (string | number | boolean)[];
      minLength?: number;
      maxLength?: number;
      minimum?: number;
      maximum?: number;
      contentTypes?: string[];
    } & Common)
  | ({ kind: 'array'; items: Draft; minItems?: number; maxItems?: number } & Common)
  | ({
      kind: 'object';
      properties: Map<string, Draft>;
      required: Set<string>;
      /** additionalProperties: absent (JSON Schema: any key), false, or allowed (true or a schema). */
      additional: 'absent' | 'closed' | 'open';
    } & Common);

const none = (path: string, why: string): Draft => ({ kind: 'none', reason: `${path}: ${why}` });

/** Keywords that describe a schema without constraining it. */
const ANNOTATIONS = new Set([
  'description',
  'title',
  'example',
  'examples',
  'default',
  'deprecated',
  'readOnly',
  'writeOnly',
  'xml',
  'externalDocs',
  '$comment',
  'discriminator',
  '$schema',
  '$id',
  '$anchor',
  'contentEncoding',
]);

const MAX_COUNT = 1_000_000;
const MAX_NODES = 20_000;
/**
 * Schemas reached through more nested conversions than this are not converted, so that a chain of thousands of
 * `$ref`s is a clear problem, not a stack overflow. Each `$ref` followed, `allOf` part and `anyOf` option counts
 * as a level besides each property or item, so a nullable `$ref` (`anyOf: [{$ref}, {type: "null"}]`) costs three
 * per object: 96 lets through every body a contract can hold (a config is refused past 64 levels, and each
 * object level is two of them, `properties.<name>`).
 */
const MAX_SCHEMA_DEPTH = 96;

function draft(schema: unknown, at: string, path: string, ctx: Walk, refs: readonly string[]): Draft {
  if (ctx.budget.depth >= MAX_SCHEMA_DEPTH) return none(path, `the schema is nested too deep to convert (over ${MAX_SCHEMA_DEPTH} levels)`);
  ctx.budget.depth++;
  let result: Draft;
  try {
    result = draftSchema(schema, at, path, ctx, refs);
  } finally {
    ctx.budget.depth--;
  }
  // A field of the other direction (readOnly in a request, writeOnly in a response) is left out whatever its
  // schema, even one a contract cannot express.
  const other = ctx.mode === 'response' ? 'writeOnly' : 'readOnly';
  if (result.kind === 'none' && isObject(schema) && own(schema, other) === true) return { kind: 'any', [other]: true };
  return result;
}

function draftSchema(schema: unknown, at: string, path: string, ctx: Walk, refs: readonly string[]): Draft {
  if (--ctx.budget.nodes < 0) return none(path, `the schema is too large to convert (over ${MAX_NODES} nodes)`);
  if (schema === true) return { kind: 'any' };
  if (schema === false) return none(path, 'the schema accepts no value');
  if (!isObject(schema)) throw specError(at, 'must be a schema object');
  const ref = own(schema, '$ref');
  if (ref !== undefined) return refDraft(schema, ref, at, path, ctx, refs);
  if (own(schema, 'allOf') !== undefined) {
    const parts = own(schema, 'allOf');
    if (!Array.isArray(parts)) throw specError(child(at, 'allOf'), 'must be an array of schemas');
    const base = without(schema, 'allOf');
    const located = parts.map((part, index) => ({ schema: part as unknown, at: child(at, 'allOf', index) }));
    return allOfDraft([{ schema: base, at }, ...located], path, ctx, refs);
  }
  for (const keyword of ['oneOf', 'anyOf'] as const) {
    if (own(schema, keyword) === undefined) continue;
    const result = choiceDraft(schema, keyword, at, path, ctx, refs);
    // A null option (3.1's nullable) is left out of the choice, but the value may still be null.
    const options = own(schema, keyword) as unknown[];
    if (result.kind !== 'none' && options.some(isNullSchema)) result.nullable = true;
    return result;
  }
  if (own(schema, 'not') !== undefined) ctx.notes.loosen('not', path);
  return typedDraft(schema, at, path, ctx, refs);
}

/** `$ref`: followed inside the document; in 3.1 its sibling keywords apply too (JSON Schema 2020-12 §8.2.3.1). */
function refDraft(
  schema: JsonObject,
  ref: unknown,
  at: string,
  path: string,
  ctx: Walk,
  refs: readonly string[],
): Draft {
  if (typeof ref !== 'string') throw specError(child(at, '$ref'), 'must be a string');
  const siblings = Object.fromEntries(Object.entries(schema).filter(([key]) => key !== '$ref'));
  const constraining = Object.keys(siblings).some((key) => !ANNOTATIONS.has(key) && !key.startsWith('x-'));
  if (ctx.doc.version === '3.1' && constraining) {
    return allOfDraft(
      [
        { schema: { $ref: ref }, at },
        { schema: siblings, at },
      ],
      path,
      ctx,
      refs,
    );
  }
  const target = resolveRef(ctx.doc, ref, at);
  if (!target) return none(path, `"$ref": "${ref}" is in another file, which the import does not read`);
  if (refs.includes(target.pointer)) return none(path, `recursive schema (${target.pointer} contains itself)`);
  const result = draft(target.value, target.pointer, path, ctx, [...refs, target.pointer]);
  // Annotations beside a $ref (3.1; 3.0 tools write them too) describe this use of the shared schema.
  if (result.kind !== 'none') {
    if (typeof siblings.description === 'string') result.description = siblings.description;
    if (siblings.readOnly === true) result.readOnly = true;
    if (siblings.writeOnly === true) result.writeOnly = true;
    // 3.0 tools write `nullable` beside a $ref; for a response type, believe it (leaving a field out is safe).
    if (siblings.nullable === true) result.nullable = true;
  }
  return result;
}

/** allOf: every part must hold, so the parts' constraints are merged (where they combine simply). */
function allOfDraft(parts: { schema: unknown; at: string }[], path: string, ctx: Walk, refs: readonly string[]): Draft {
  let merged: Draft = { kind: 'any' };
  for (const part of parts) {
    merged = mergeDrafts(merged, draft(part.schema, part.at, path, ctx, refs), path);
    if (merged.kind === 'none') return merged;
  }
  return merged;
}

/**
 * oneOf/anyOf: a contract has no unions. What still converts exactly: a choice whose other options are only
 * `null` (3.1's nullable), and a choice between enum values of one type. Options that only list `required`
 * fields constrain which fields go together: that alone is dropped (and said). Anything else cannot be expressed.
 */
function choiceDraft(
  schema: JsonObject,
  keyword: 'oneOf' | 'anyOf',
  at: string,
  path: string,
  ctx: Walk,
  refs: readonly string[],
): Draft {
  const options = own(schema, keyword);
  if (!Array.isArray(options)) throw specError(child(at, keyword), 'must be an array of schemas');
  const base = without(schema, keyword);
  const located = options.map((option, index) => ({ schema: option as unknown, at: child(at, keyword, index) }));
  const kept = located.filter((option) => {
    if (!isNullSchema(option.schema)) return true;
    ctx.notes.tighten('null', path);
    return false;
  });
  if (
    kept.every(
      (option) =>
        isObject(option.schema) &&
        Object.keys(option.schema).every((key) => key === 'required' || ANNOTATIONS.has(key)),
    )
  ) {
    if (kept.length > 0) ctx.notes.loosen('requiredChoice', path);
    return draft(base, at, path, ctx, refs);
  }
  if (kept.length === 1) return allOfDraft([{ schema: base, at }, kept[0]!], path, ctx, refs);
  const drafts = kept.map((option) => draft(option.schema, option.at, path, ctx, refs));
  const enums = drafts.every(
    (d) => d.kind === 'scalar' && d.enum !== undefined && d.type === (drafts[0] as { type?: string }).type,
  );
  if (enums && drafts.length > 0) {
    const first = drafts[0] as Extract<Draft, { kind: 'scalar' }>;
    const values = [...new Set(drafts.flatMap((d) => (d as Extract<Draft, { kind: 'scalar' }>).enum!))];
    const merged = allOfDraft(
      [
        { schema: base, at },
        { schema: { type: first.type, enum: values }, at },
      ],
      path,
      ctx,
      refs,
    );
    // The enums' union is rebuilt from their values: an option that allows null still makes the whole nullable.
    if (merged.kind !== 'none' && drafts.some((d) => d.kind !== 'none' && d.nullable)) merged.nullable = true;
    return merged;
  }
  return none(path, `"${keyword}" (one of ${kept.length} shapes) cannot be expressed in a contract`);
}

function isNullSchema(schema: unknown): boolean {
  if (!isObject(schema)) return false;
  const type = own(schema, 'type');
  const values = own(schema, 'enum');
  return (
    type === 'null' ||
    own(schema, 'const') === null ||
    (Array.isArray(values) && values.length > 0 && values.every((v) => v === null))
  );
}

function typedDraft(schema: JsonObject, at: string, path: string, ctx: Walk, refs: readonly string[]): Draft {
  const common: Common = {};
  const description = own(schema, 'description');
  if (typeof description === 'string' && description.trim() !== '') common.description = description.trim();
  if (own(schema, 'readOnly') === true) common.readOnly = true;
  if (own(schema, 'writeOnly') === true) common.writeOnly = true;
  const values = enumValues(schema, at, path, ctx, common);
  let types = declaredTypes(schema, at);
  if (types.includes('null') || own(schema, 'nullable') === true) {
    ctx.notes.tighten('null', path);
    common.nullable = true;
    types = types.filter((type) => type !== 'null');
  }
  if (types.length === 0) types = inferredTypes(schema, values);
  if (types.length === 0) return { kind: 'any', ...common };
  if (types.length > 1) {
    if (types.length === 2 && types.includes('integer') && types.includes('number')) types = ['number'];
    else return none(path, `one of several types (${types.join(', ')}) cannot be expressed in a contract`);
  }
  switch (types[0]) {
    case 'string':
    case 'integer':
    case 'number':
    case 'boolean':
      return scalarDraft(types[0], schema, values, at, path, ctx, common);
    case 'array':
      return arrayDraft(schema, at, path, ctx, refs, common);
    case 'object':
      return objectDraft(schema, at, path, ctx, refs, common);
    default:
      return none(path, `type "${types[0]}" cannot be expressed in a contract`);
  }
}

function declaredTypes(schema: JsonObject, at: string): string[] {
  const type = own(schema, 'type');
  if (type === undefined) return [];
  if (typeof type === 'string') return [type];
  if (Array.isArray(type) && type.every((t) => typeof t === 'string')) return [...new Set(type as string[])];
  throw specError(child(at, 'type'), 'must be a type name or a list of them');
}

/** Without `type`: what the keywords imply (JSON Schema itself would accept any type here). */
function inferredTypes(schema: JsonObject, values: unknown[] | undefined): string[] {
  const has = (...keys: string[]) => keys.some((key) => Object.hasOwn(schema, key));
  if (has('properties', 'additionalProperties', 'required', 'patternProperties')) return ['object'];
  if (has('items', 'prefixItems', 'minItems', 'maxItems')) return ['array'];
  if (has('minLength', 'maxLength', 'pattern')) return ['string'];
  if (has('minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'multipleOf')) return ['number'];
  if (values && values.length > 0) {
    if (values.every((v) => typeof v === 'string')) return ['string'];
    if (values.every((v) => Number.isInteger(v))) return ['integer'];
    if (values.every((v) => typeof v === 'number')) return ['number'];
    if (values.every((v) => typeof v === 'boolean')) return ['boolean'];
  }
  return [];
}

/** `enum` and 3.1's `const`, without null (which contracts cannot express; `common` is then marked nullable). */
function enumValues(schema: JsonObject, at: string, path: string, ctx: Walk, common: Common): unknown[] | undefined {
  let values: unknown[] | undefined;
  if (Object.hasOwn(schema, 'const')) values = [schema.const];
  const list = own(schema, 'enum');
  if (list !== undefined) {
    if (!Array.isArray(list)) throw specError(child(at, 'enum'), 'must be an array');
    values = values ? values.filter((v) => list.includes(v)) : list;
  }
  if (values?.includes(null)) {
    ctx.notes.tighten('null', path);
    common.nullable = true;
    values = values.filter((v) => v !== null);
  }
  return values;
}

function scalarDraft(
  type: 'string' | 'integer' | 'number' | 'boolean',
  schema: JsonObject,
  values: unknown[] | undefined,
  at: string,
  path: string,
  ctx: Walk,
  common: Common,
): Draft {
  if (type === 'boolean') {
    if (values && !(values.includes(true) && values.includes(false))) ctx.notes.loosen('booleanEnum', path);
    return { kind: 'scalar', type, ...common };
  }
  const out: Extract<Draft, { kind: 'scalar' }> = { kind: 'scalar', type, ...common };
  if (values) {
    const fits = values.every((v) =>
      type === 'string' ? typeof v === 'string' : type === 'integer' ? Number.isInteger(v) : typeof v === 'number',
    );
    if (!fits) return none(path, `an enum value is not of type "${type}"`);
    if (values.length === 0) return none(path, 'the enum allows no value');
    if (values.length > 256 || values.some((v) => typeof v === 'string' && v.length > 256))
      ctx.notes.loosen('bigEnum', path);
    else out.enum = values as (string | number | boolean)[];
  }
  if (type === 'string') {
    out.minLength = count(schema, 'minLength', at, path, ctx);
    out.maxLength = count(schema, 'maxLength', at, path, ctx);
    if (own(schema, 'pattern') !== undefined) ctx.notes.loosen('pattern', path);
    if (ctx.mode === 'multipart' && isBinary(schema))
      return fileDraft(ctx.partTypes?.get(path.replace(/\[\]$/, '')), path, ctx, common);
  } else {
    Object.assign(out, bounds(schema, type, at, path, ctx));
    if (own(schema, 'multipleOf') !== undefined) ctx.notes.loosen('multipleOf', path);
  }
  // An enum says it all: bounds beside it would only repeat it.
  if (out.enum)
    return stripUndefined({
      ...out,
      minLength: undefined,
      maxLength: undefined,
      minimum: undefined,
      maximum: undefined,
    });
  return stripUndefined(out);
}

/** A file part of a multipart body: OpenAPI writes it as a binary string. */
function isBinary(schema: JsonObject): boolean {
  return own(schema, 'format') === 'binary' || own(schema, 'contentMediaType') !== undefined;
}

const MEDIA_RANGE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/(?:\*|[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126})$/;

function fileDraft(media: string | undefined, path: string, ctx: Walk, common: Common): Draft {
  const out: Extract<Draft, { kind: 'scalar' }> = { kind: 'scalar', type: 'file', ...common };
  if (media !== undefined) {
    const types = media.split(',').map((type) => type.trim());
    if (types.every((type) => MEDIA_RANGE.test(type)) && !types.includes('*/*')) out.contentTypes = types;
    else if (!types.includes('*/*')) ctx.notes.loosen('contentTypes', path);
  }
  return out;
}

function count(schema: JsonObject, key: string, at: string, path: string, ctx: Walk): number | undefined {
  const value = own(schema, key);
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0)
    throw specError(child(at, key), 'must be a non-negative integer');
  if (value > MAX_COUNT) {
    ctx.notes.loosen('bigBound', path);
    return undefined;
  }
  return value;
}

/** minimum/maximum, with 3.0's boolean and 3.1's numeric exclusive bounds. */
function bounds(
  schema: JsonObject,
  type: 'integer' | 'number',
  at: string,
  path: string,
  ctx: Walk,
): { minimum?: number; maximum?: number } {
  const read = (key: string): number | undefined => {
    const value = own(schema, key);
    if (value === undefined || typeof value === 'boolean') return undefined;
    if (typeof value !== 'number' || !Number.isFinite(value)) throw specError(child(at, key), 'must be a number');
    return value;
  };
  let minimum = read('minimum');
  let maximum = read('maximum');
  const exclusive = (side: 'min' | 'max', value: number | undefined): number | undefined => {
    if (value === undefined) return undefined;
    // An integer's exclusive bound is the next integer inside it, exactly.
    if (type === 'integer') return side === 'min' ? Math.floor(value) + 1 : Math.ceil(value) - 1;
    ctx.notes.loosen('exclusive', path);
    return value;
  };
  const exclusiveMin = own(schema, 'exclusiveMinimum');
  const exclusiveMax = own(schema, 'exclusiveMaximum');
  if (exclusiveMin === true) minimum = exclusive('min', minimum);
  else if (typeof exclusiveMin === 'number')
    minimum = tighter('min', minimum, exclusive('min', read('exclusiveMinimum')));
  if (exclusiveMax === true) maximum = exclusive('max', maximum);
  else if (typeof exclusiveMax === 'number')
    maximum = tighter('max', maximum, exclusive('max', read('exclusiveMaximum')));
  return { minimum, maximum };
}

function tighter(side: 'min' | 'max', a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return side === 'min' ? Math.max(a, b) : Math.min(a, b);
}

function arrayDraft(
  schema: JsonObject,
  at: string,
  path: string,
  ctx: Walk,
  refs: readonly string[],
  common: Common,
): Draft {
  if (own(schema, 'prefixItems') !== undefined)
    return none(path, 'a tuple ("prefixItems") cannot be expressed in a contract');
  const items = own(schema, 'items');
  if (items === undefined) return none(path, 'an array of items of any type cannot be expressed in a contract');
  if (Array.isArray(items)) throw specError(child(at, 'items'), 'must be a schema');
  if (own(schema, 'uniqueItems') === true) ctx.notes.loosen('uniqueItems', path);
  if (own(schema, 'contains') !== undefined) ctx.notes.loosen('contains', path);
  return stripUndefined({
    kind: 'array',
    items: draft(items, child(at, 'items'), `${path}[]`, ctx, refs),
    minItems: count(schema, 'minItems', at, path, ctx),
    maxItems: count(schema, 'maxItems', at, path, ctx),
    ...common,
  });
}

function objectDraft(
  schema: JsonObject,
  at: string,
  path: string,
  ctx: Walk,
  refs: readonly string[],
  common: Common,
): Draft {
  const properties = new Map<string, Draft>();
  const declared = own(schema, 'properties');
  if (declared !== undefined) {
    if (!isObject(declared)) throw specError(child(at, 'properties'), 'must be an object of schemas');
    for (const [name, property] of Object.entries(declared)) {
      properties.set(name, draft(property, child(at, 'properties', name), `${path}.${name}`, ctx, refs));
    }
  }
  const required = own(schema, 'required') ?? [];
  if (!Array.isArray(required) || !required.every((name) => typeof name === 'string')) {
    throw specError(child(at, 'required'), 'must be an array of property names');
  }
  const extra = own(schema, 'additionalProperties') ?? own(schema, 'unevaluatedProperties');
  const additional =
    extra === undefined
      ? own(schema, 'patternProperties') === undefined
        ? 'absent'
        : 'open'
      : extra === false
        ? 'closed'
        : 'open';
  if (own(schema, 'minProperties') !== undefined || own(schema, 'maxProperties') !== undefined)
    ctx.notes.loosen('propertyCount', path);
  if (
    ['if', 'dependentRequired', 'dependentSchemas', 'dependencies', 'propertyNames'].some(
      (key) => own(schema, key) !== undefined,
    )
  ) {
    ctx.notes.loosen('conditional', path);
  }
  return { kind: 'object', properties, required: new Set(required as string[]), additional, ...common };
}

/** Both drafts must hold (allOf). Constraints combine to the tighter one; different types cannot both hold. */
function mergeDrafts(a: Draft, b: Draft, path: string): Draft {
  if (a.kind === 'none') return a;
  if (b.kind === 'none') return b;
  const common: Common = {};
  const description = a.description ?? b.description;
  if (description !== undefined) common.description = description;
  if (a.readOnly || b.readOnly) common.readOnly = true;
  if (a.writeOnly || b.writeOnly) common.writeOnly = true;
  // Strictly both would have to allow null; a response type takes either's word (leaving a field out is safe).
  if (a.nullable || b.nullable) common.nullable = true;
  if (a.kind === 'any') return { ...b, ...common };
  if (b.kind === 'any') return { ...a, ...common };
  if (a.kind === 'scalar' && b.kind === 'scalar') {
    const numeric = (t: ScalarType) => t === 'integer' || t === 'number';
    // An integer is a number: both hold for an integer.
    const type = a.type === b.type ? a.type : numeric(a.type) && numeric(b.type) ? 'integer' : null;
    if (!type) return none(path, `allOf combines ${kindName(a)} with ${kindName(b)}`);
    const values = a.enum && b.enum ? a.enum.filter((v) => b.enum!.includes(v)) : (a.enum ?? b.enum);
    if (values && values.length === 0) return none(path, 'allOf combines enums with no value in common');
    return stripUndefined({
      kind: 'scalar',
      type,
      enum: values,
      minLength: tighter('min', a.minLength, b.minLength),
      maxLength: tighter('max', a.maxLength, b.maxLength),
      minimum: tighter('min', a.minimum, b.minimum),
      maximum: tighter('max', a.maximum, b.maximum),
      contentTypes: a.contentTypes ?? b.contentTypes,
      ...common,
    });
  }
  if (a.kind === 'array' && b.kind === 'array') {
    return stripUndefined({
      kind: 'array',
      items: mergeDrafts(a.items, b.items, `${path}[]`),
      minItems: tighter('min', a.minItems, b.minItems),
      maxItems: tighter('max', a.maxItems, b.maxItems),
      ...common,
    });
  }
  if (a.kind === 'object' && b.kind === 'object') {
    const properties = new Map(a.properties);
    for (const [name, property] of b.properties) {
      const mine = properties.get(name);
      properties.set(name, mine ? mergeDrafts(mine, property, `${path}.${name}`) : property);
    }
    const additional =
      a.additional === 'closed' || b.additional === 'closed'
        ? 'closed'
        : a.additional === 'open' || b.additional === 'open'
          ? 'open'
          : 'absent';
    return { kind: 'object', properties, required: new Set([...a.required, ...b.required]), additional, ...common };
  }
  return none(path, `allOf combines ${kindName(a)} with ${kindName(b)}`);
}

function kindName(d: Draft): string {
  return d.kind === 'scalar' ? `type "${d.type}"` : `an ${d.kind}`;
}

// ---- Finalising: each object decides what to leave out, in the body's format ----

function finalize(d: Draft, path: string, ctx: Walk, top: boolean): FieldResult {
  if (ctx.mode === 'response' && d.kind !== 'none' && d.nullable)
    return { ok: false, reason: `${path}: may be null, which a contract type cannot say` };
  switch (d.kind) {
    case 'none':
      return { ok: false, reason: d.reason };
    case 'any':
      return { ok: false, reason: `${path}: a value of any type cannot be expressed in a contract` };
    case 'scalar': {
      const spec = without(d, 'kind', 'readOnly', 'writeOnly', 'nullable') as FieldSpecInput;
      return { ok: true, spec: withDescription(spec, d.description) };
    }
    case 'array': {
      const items = finalize(d.items, `${path}[]`, ctx, false);
      if (!items.ok) return items;
      const nested = items.spec.type === 'array' || items.spec.type === 'object';
      if (nested && (ctx.mode === 'query' || ctx.mode === 'multipart')) {
        return {
          ok: false,
          reason: `${path}: ${ctx.mode === 'query' ? 'a query parameter' : 'a multipart part'} cannot be a list of ${items.spec.type}s`,
        };
      }
      return {
        ok: true,
        spec: withDescription(
          stripUndefined({ type: 'array', items: items.spec, minItems: d.minItems, maxItems: d.maxItems }),
          d.description,
        ),
      };
    }
    case 'object':
      return finalizeObject(d, path, ctx, top);
  }
}

function finalizeObject(d: Extract<Draft, { kind: 'object' }>, path: string, ctx: Walk, top: boolean): FieldResult {
  // A top-level object parameter is exploded into one parameter per property by the caller.
  if (ctx.mode === 'query' && !top) return { ok: false, reason: `${path}: a query parameter cannot hold an object` };
  if (ctx.mode === 'multipart' && !top) return { ok: false, reason: `${path}: a multipart part cannot be an object` };
  if (ctx.mode === 'form' && !top) ctx.notes.tighten('formNesting', path);
  const properties: Record<string, FieldSpecInput> = {};
  const required: string[] = [];
  const otherDirection = new Set<string>();
  const response = ctx.mode === 'response';
  for (const [name, property] of d.properties) {
    // Left out of the other direction's shape: read-only fields of requests, write-only ones of responses.
    if (property.kind !== 'none' && (response ? property.writeOnly : property.readOnly)) {
      otherDirection.add(name);
      continue;
    }
    const result = fieldName(name, path, ctx, top) ?? finalize(property, `${path}.${name}`, ctx, false);
    if (!result.ok) {
      // A response type leaves out what it cannot say, required or not: absent beats a wrong type.
      if (d.required.has(name) && !response) return result;
      ctx.notes.omit(result.reason);
      continue;
    }
    properties[name] = result.spec;
  }
  for (const name of d.required) {
    if (Object.hasOwn(properties, name)) required.push(name);
    else if (!otherDirection.has(name) && !response)
      return { ok: false, reason: `${path}: requires "${name}", which it does not declare` };
  }
  if (d.properties.size === 0 && d.additional !== 'closed') {
    return {
      ok: false,
      reason: `${path}: ${d.additional === 'open' ? 'a map ("additionalProperties")' : 'an object with any keys'} cannot be expressed in a contract`,
    };
  }
  if (d.additional === 'open') ctx.notes.tighten('extraKeys', path);
  const spec: FieldSpecInput = { type: 'object', properties };
  if (required.length > 0) spec.required = required;
  return { ok: true, spec: withDescription(spec, d.description) };
}

/** A name a contract cannot declare, as a failed field (null when the name is fine). */
function fieldName(name: string, path: string, ctx: Walk, top: boolean): FieldResult | null {
  const problem = fieldNameProblem(name);
  if (problem !== null) return { ok: false, reason: `${path}.${JSON.stringify(name)}: ${problem}` };
  // Bracket notation reads a nested all-digit name as an array index (lib/core/policy/form.ts).
  if (ctx.mode === 'form' && !top && /^\d+$/.test(name))
    return { ok: false, reason: `${path}.${name}: a nested form field cannot be named by digits only` };
  return null;
}

export function withDescription(spec: FieldSpecInput, description: string | undefined): FieldSpecInput {
  if (description === undefined) return spec;
  return { ...spec, description: description.length > 512 ? `${description.slice(0, 511)}…` : description };
}

function without<T extends object>(value: T, ...keys: string[]): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([key]) => !keys.includes(key))) as Partial<T>;
}

function stripUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}
