import { z } from 'zod';
import type { KeywardError } from '../errors';
import type { FormArrayStyle } from '../config/policy';
import { contractError, unwrapSchema, violation } from './contract';

/**
 * `application/x-www-form-urlencoded` bodies in bracket notation, as Stripe's API reads them:
 * `metadata[order_id]=6735`, `items[0][price]=price_1`, `expand[]=customer` (or `expand[0]=customer`).
 *
 * Parsed here rather than with `qs` (what Stripe's own client encodes with): qs settles ambiguous input on its
 * own and has no option to refuse it instead: `a=1&a[b]=2` becomes an array of both, `a[0]=x&a[b]=y` an object
 * with a "0" key, `a[]=x&a[0]=y` one array, `a[b]c=1` drops the `c`, `a[b=1` makes a key "[b", and a malformed
 * escape (`%zz`) stays as text. Upstream parsers (Rack, PHP, qs, Express) settle each of these differently, so
 * Keyward refuses them: what it checked must be what the upstream reads. The encoder is the WHATWG one
 * (URLSearchParams), and arrays of values are written in the notation the upstream reads as a list (the route's
 * `formArrays`), whatever notation the client used: the upstream's parser decides what a body means, not the client.
 */

/** Bounds on what one body may ask the parser to build (the byte cap comes first: maxRequestBytes). */
export const FORM_LIMITS = {
  /** `name=value` pairs. */
  fields: 1000,
  /** Bracket segments after the root name: `a[b][0][c]` has 3. */
  depth: 8,
  /** Largest array index: an index is a position, so `a[99999999]=x` would otherwise ask for a huge array. */
  index: 999,
  /** Characters in one decoded field name. */
  nameLength: 512,
} as const;

const PUSH = Symbol('[]');
type Segment = string | number | typeof PUSH;

/** What the body said, before it becomes a value: every path given, and how (see `insert`). */
type FormNode =
  | { kind: 'leaf'; values: string[]; push: boolean }
  | { kind: 'object'; fields: Map<string, FormNode> }
  | { kind: 'array'; items: Map<number, FormNode> };

/** Linear: the character classes cannot overlap, so no input makes it backtrack. */
const NAME = /^([^[\]]+)((?:\[[^[\]]*\])*)$/;
const SEGMENT = /\[([^[\]]*)\]/g;
const DIGITS = /^\d+$/;
const INDEX = /^(?:0|[1-9]\d{0,2})$/;

/**
 * Parses a form body into a nested value of strings and checks it against the contract (`schema`). A name may
 * repeat only where the contract declares an array (`tag=a&tag=b`); `[]` appends (`tag[]=a`); indexes must run
 * from 0 without gaps. Refused with 400 `contract_violation`: a name given twice elsewhere, one path used both as
 * a value and as an object or array (`a=1&a[b]=2`), mixed forms for one array, names outside the notation, bad
 * percent-encoding, and more than FORM_LIMITS allows. Messages name declared fields only, never client text.
 */
export function parseForm(schema: z.ZodType, text: string): unknown {
  const root: FormNode = { kind: 'object', fields: new Map() };
  // Counted before splitting: a body of separators alone would otherwise build an array as long as the body.
  let separators = 0;
  for (let at = text.indexOf('&'); at !== -1 && separators <= FORM_LIMITS.fields * 4; at = text.indexOf('&', at + 1)) separators++;
  if (separators > FORM_LIMITS.fields * 4) throw violation(`body: more than ${FORM_LIMITS.fields} fields`);
  const pairs = text.split('&').filter((pair) => pair !== '');
  if (pairs.length > FORM_LIMITS.fields) throw violation(`body: more than ${FORM_LIMITS.fields} fields`);
  for (const pair of pairs) {
    const equals = pair.indexOf('=');
    const name = decode(equals === -1 ? pair : pair.slice(0, equals));
    const value = decode(equals === -1 ? '' : pair.slice(equals + 1));
    insert(root, parseName(name), value, schema);
  }
  const result = schema.safeParse(build(root, [], schema));
  if (!result.success) throw contractError(result.error, 'body', schema);
  return result.data;
}

/**
 * The form encoding of a parsed value, in bracket notation (`items[0][price]=…`), in the value's own key order,
 * arrays of values in `arrays` style. Empty arrays and objects, `undefined` and `null` have no form encoding and
 * are left out. The fields at `first` (the ones Keyward writes: caps, identity) go before all others: parsers that
 * keep only the first 1,000 fields (node:querystring, qs, PHP's max_input_vars) would otherwise drop them after
 * a client's long array, silently.
 */
export function serializeForm(value: unknown, arrays: FormArrayStyle = 'indexes', first: ReadonlyArray<readonly string[]> = []): string {
  if (!isPlainObject(value)) throw new TypeError('a form body is an object of fields');
  const pairs: [string, string][] = [];
  const written = new Set<string>();
  for (const path of first) {
    let node: unknown = value;
    for (const key of path) node = isPlainObject(node) && Object.hasOwn(node, key) ? node[key] : undefined;
    if (node === undefined) continue;
    const name = path.reduce((outer, key) => (outer === '' ? key : `${outer}[${key}]`), '');
    appendPairs(pairs, name, node, arrays);
    written.add(name);
  }
  appendPairs(pairs, '', value, arrays, written);
  return new URLSearchParams(pairs).toString();
}

function appendPairs(pairs: [string, string][], name: string, value: unknown, arrays: FormArrayStyle, skip?: ReadonlySet<string>): void {
  if (value === undefined || value === null || skip?.has(name)) return;
  if (Array.isArray(value)) {
    if (arrays !== 'indexes' && value.every((item) => formScalar(item) !== null)) {
      const itemName = arrays === 'brackets' ? `${name}[]` : name;
      for (const item of value) pairs.push([itemName, formScalar(item)!]);
      return;
    }
    value.forEach((item, index) => appendPairs(pairs, `${name}[${index}]`, item, arrays, skip));
  } else if (isPlainObject(value)) {
    for (const [key, item] of Object.entries(value)) appendPairs(pairs, name === '' ? key : `${name}[${key}]`, item, arrays, skip);
  } else {
    const text = formScalar(value);
    if (text === null) throw new TypeError('a form field is a string, a number or a boolean');
    pairs.push([name, text]);
  }
}

/** A value's text in a form, or null for what is not a single value. */
function formScalar(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if ((typeof value === 'number' && Number.isFinite(value)) || typeof value === 'boolean' || typeof value === 'bigint') {
    return String(value);
  }
  return null;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/**
 * WHATWG form decoding (`+` is a space), except that a malformed escape or one that is not UTF-8 is refused
 * instead of kept as text or replaced by U+FFFD: decodeURIComponent throws on both.
 */
function decode(text: string): string {
  try {
    return decodeURIComponent(text.replaceAll('+', ' '));
  } catch {
    throw violation('body: malformed percent-encoding');
  }
}

/** `root[a][0][]` → ['root', 'a', 0, PUSH]. */
function parseName(name: string): Segment[] {
  if (name.length > FORM_LIMITS.nameLength)
    throw violation(`body: a field name is longer than ${FORM_LIMITS.nameLength} characters`);
  const match = NAME.exec(name);
  if (!match) throw violation('body: a field name is not in bracket notation');
  const segments: Segment[] = [match[1]!];
  for (const [, inner] of match[2]!.matchAll(SEGMENT)) {
    if (segments.length > FORM_LIMITS.depth)
      throw violation(`body: fields are nested more than ${FORM_LIMITS.depth} levels deep`);
    if (segments[segments.length - 1] === PUSH) throw violation('body: "[]" may only end a field name');
    if (inner === '') segments.push(PUSH);
    else if (!DIGITS.test(inner!)) segments.push(inner!);
    // `a[01]` or `a[1000]`: parsers disagree on whether it is an index or a key.
    else if (INDEX.test(inner!)) segments.push(Number(inner));
    else throw violation(`body: an array index is not a number from 0 to ${FORM_LIMITS.index}`);
  }
  return segments;
}

/**
 * Adds one `name=value` to the tree. A path holds one kind of thing: values (given once, or repeated where the
 * contract declares an array), `[]` values, an object of named fields, or an array of indexed items.
 */
function insert(root: FormNode, segments: readonly Segment[], value: string, schema: z.ZodType): void {
  let node = root;
  for (let i = 0; i < segments.length; i += 1) {
    const segment = segments[i]!;
    const next = segments[i + 1];
    const path = segments.slice(0, i + 1) as (string | number)[];
    const children: Map<string | number, FormNode> =
      node.kind === 'object' ? node.fields : (node as Extract<FormNode, { kind: 'array' }>).items;
    let child = children.get(segment as string | number);
    if (next === undefined || next === PUSH) {
      const push = next === PUSH;
      if (!child) {
        children.set(segment as string | number, { kind: 'leaf', values: [value], push });
      } else if (child.kind === 'leaf' && child.push === push) {
        child.values.push(value);
      } else {
        throw fieldError(path, schema, `given both as ${push ? '"[]" values' : 'a value'} and in another form`);
      }
      return;
    }
    const kind = typeof next === 'number' ? 'array' : 'object';
    if (!child) {
      child = kind === 'array' ? { kind, items: new Map() } : { kind, fields: new Map() };
      children.set(segment as string | number, child);
    } else if (child.kind !== kind) {
      throw fieldError(
        path,
        schema,
        `given both as ${kind === 'array' ? 'an array' : 'an object'} and in another form`,
      );
    }
    node = child;
  }
}

/** Turns the tree into the value the contract checks (objects of strings and arrays). */
function build(node: FormNode, path: readonly (string | number)[], schema: z.ZodType): unknown {
  switch (node.kind) {
    case 'leaf':
      if (node.push || isArrayAt(schema, path)) return node.values;
      if (node.values.length > 1) throw fieldError(path, schema, 'given more than once');
      return node.values[0];
    case 'object': {
      const value: Record<string, unknown> = {};
      for (const [key, child] of node.fields) {
        // defineProperty: a field named `__proto__` stays a plain (unknown, so refused) field.
        Object.defineProperty(value, key, {
          value: build(child, [...path, key], schema),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return value;
    }
    case 'array': {
      const items: unknown[] = [];
      for (let index = 0; index < node.items.size; index += 1) {
        const child = node.items.get(index);
        if (!child) throw fieldError(path, schema, 'array indexes must run from 0 without gaps');
        items.push(build(child, [...path, index], schema));
      }
      return items;
    }
  }
}

/**
 * The contract's schema for a path, or null where it declares nothing. `named` counts the leading segments that
 * are declared names or indexes; below a record (a map such as Stripe's `metadata`), keys are the client's text.
 */
function lookup(schema: z.ZodType, path: readonly (string | number)[]): { schema: z.ZodType; named: number } | null {
  let current = schema;
  let named = 0;
  let inRecord = false;
  for (const segment of path) {
    const field = unwrapText(current);
    if (typeof segment === 'number' && field instanceof z.ZodArray) {
      current = field.element as z.ZodType;
    } else if (typeof segment === 'string' && field instanceof z.ZodObject && Object.hasOwn(field.shape, segment)) {
      current = field.shape[segment] as z.ZodType;
    } else if (typeof segment === 'string' && field instanceof z.ZodRecord) {
      current = field.valueType as z.ZodType;
      inRecord = true;
    } else {
      return null;
    }
    if (!inRecord) named += 1;
  }
  return { schema: current, named };
}

/** A field's own type under wrappers and the text-to-value pipes of declared contracts (`"10"` → 10). */
function unwrapText(schema: z.ZodType): z.ZodType {
  let current = unwrapSchema(schema);
  while (current instanceof z.ZodPipe) current = unwrapSchema(current.in as z.ZodType);
  return current;
}

function isArrayAt(schema: z.ZodType, path: readonly (string | number)[]): boolean {
  const found = lookup(schema, path);
  return found !== null && unwrapText(found.schema) instanceof z.ZodArray;
}

/** `body.items.0.price: …` for a declared path; undeclared names are the client's text and never echoed. */
function fieldError(path: readonly (string | number)[], schema: z.ZodType, problem: string): KeywardError {
  const found = lookup(schema, path);
  if (!found) return violation('body: unknown field');
  const where = ['body', ...path.slice(0, found.named).map(String)].join('.');
  return violation(`${where}${found.named < path.length ? '.(a key)' : ''}: ${problem}`);
}
