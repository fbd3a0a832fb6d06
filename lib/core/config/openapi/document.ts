import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../error';

/**
 * Reading an OpenAPI 3.0/3.1 document (https://spec.openapis.org/oas/v3.1.1) for `keyward import`: the text
 * (JSON, or YAML through the `yaml` package), the parts of its structure the import reads, and local `$ref`s.
 * A document that is wrong where the import reads it is a ConfigError naming the JSON pointer (RFC 6901) of
 * the problem, e.g. `#/paths/~1pets~1{petId}/get/parameters/0/in: …`. Only the document's own text is ever
 * quoted: it is the user's file, never a secret.
 */

export type JsonObject = Record<string, unknown>;

export interface SpecDocument {
  readonly root: JsonObject;
  /** "3.0" or "3.1": 3.1 schemas are JSON Schema 2020-12 (type arrays, `const`, `$ref` with siblings). */
  readonly version: '3.0' | '3.1';
}

/** Parses the document's text: JSON when it looks like JSON (or the file is .json), YAML otherwise. */
export function parseSpecText(text: string, fileName: string): unknown {
  const json = fileName.toLowerCase().endsWith('.json') || /^\s*[{[]/.test(text);
  if (json) {
    try {
      return JSON.parse(text);
    } catch (error) {
      throw new ConfigError(`${fileName} is not valid JSON (${(error as Error).message})`);
    }
  }
  try {
    // YAML 1.2 core schema (no timestamps or other surprises); duplicate keys are refused, aliases capped.
    return parseYaml(text, { uniqueKeys: true, maxAliasCount: 1000 });
  } catch (error) {
    throw new ConfigError(`${fileName} is not valid YAML (${(error as Error).message.split('\n')[0]})`);
  }
}

/** A JSON pointer segment (RFC 6901 §3): "~" is written "~0" and "/" is written "~1". */
export function pointerSegment(key: string | number): string {
  return String(key).replaceAll('~', '~0').replaceAll('/', '~1');
}

/** `base` extended by one segment per key, e.g. child('#/paths', '/pets') is "#/paths/~1pets". */
export function child(base: string, ...keys: (string | number)[]): string {
  return [base, ...keys.map(pointerSegment)].join('/');
}

export function specError(pointer: string, message: string): ConfigError {
  return new ConfigError(`the OpenAPI document is invalid at ${pointer}: ${message}`);
}

export function isObject(value: unknown): value is JsonObject {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** An own property only: `$ref: "#/components/schemas/constructor"` must not reach Object.prototype. */
export function own(object: JsonObject, key: string): unknown {
  return Object.hasOwn(object, key) ? object[key] : undefined;
}

/**
 * Checks `value` against a zod shape; the first issues become one ConfigError naming their JSON pointers.
 * Shapes are loose: the import reads a few fields and ignores the rest (extensions, examples, docs).
 */
export function expectShape<T>(schema: z.ZodType<T>, value: unknown, pointer: string): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const lines = result.error.issues
    .slice(0, 5)
    .map((issue) => `${child(pointer, ...issue.path.map(String))}: ${issue.message}`);
  throw new ConfigError(`the OpenAPI document is invalid:\n${lines.map((line) => `  - ${line}`).join('\n')}`);
}

const serverShape = z.looseObject({
  url: z.string({ error: 'must be a string' }),
  variables: z.record(z.string(), z.looseObject({ default: z.string({ error: 'must be a string' }) })).optional(),
});
export type SpecServer = z.output<typeof serverShape>;

const securityRequirementsShape = z.array(z.record(z.string(), z.array(z.string())));
export type SecurityRequirement = Record<string, string[]>;

const rootShape = z.looseObject({
  openapi: z
    .string({ error: 'must be a string such as "3.0.4" or "3.1.1"' })
    .regex(/^3\.[01]\.\d+(?:-[0-9A-Za-z.-]+)?$/, 'must be an OpenAPI 3.0 or 3.1 version, such as "3.0.4" or "3.1.1"'),
  info: z.looseObject({ title: z.string().optional() }).optional(),
  servers: z.array(serverShape).optional(),
  paths: z.record(z.string(), z.unknown()).optional(),
  components: z
    .looseObject({
      schemas: z.record(z.string(), z.unknown()).optional(),
      parameters: z.record(z.string(), z.unknown()).optional(),
      requestBodies: z.record(z.string(), z.unknown()).optional(),
      securitySchemes: z.record(z.string(), z.unknown()).optional(),
    })
    .optional(),
  security: securityRequirementsShape.optional(),
});

/** The parsed document, checked where the import reads it. */
export function readSpecDocument(value: unknown): SpecDocument {
  if (!isObject(value)) throw specError('#', 'must be an object (an OpenAPI document)');
  if (Object.hasOwn(value, 'swagger')) {
    throw specError(
      '#/swagger',
      'Swagger 2.0 documents are not read; convert it to OpenAPI 3 first (for example with swagger2openapi)',
    );
  }
  const root = expectShape(rootShape, value, '#');
  const deep = tooDeepAt(value);
  if (deep !== null) throw specError(deep, `nested more than ${MAX_DOCUMENT_DEPTH} levels deep (no API needs that many)`);
  return { root: value, version: root.openapi.startsWith('3.1') ? '3.1' : '3.0' };
}

/**
 * How deep a document may nest. The import's reads are recursive (so is JSON.stringify, which compares answers'
 * schemas): a document nested thousands deep is refused here, naming where, instead of overflowing the stack. A
 * schema nested even a fifth as deep could not become a contract anyway (see MAX_SCHEMA_DEPTH in fields.ts).
 */
const MAX_DOCUMENT_DEPTH = 200;

/** The JSON pointer of the first value deeper than MAX_DOCUMENT_DEPTH, or null; walked with a stack of its own. */
function tooDeepAt(document: JsonObject): string | null {
  interface Entry {
    readonly value: unknown;
    readonly depth: number;
    readonly parent: Entry | null;
    readonly key: string;
  }
  const stack: Entry[] = [{ value: document, depth: 0, parent: null, key: '' }];
  for (let entry = stack.pop(); entry !== undefined; entry = stack.pop()) {
    if (entry.value === null || typeof entry.value !== 'object') continue;
    if (entry.depth > MAX_DOCUMENT_DEPTH) {
      const keys: string[] = [];
      for (let at: Entry | null = entry; at?.parent; at = at.parent) keys.unshift(at.key);
      return child('#', ...keys);
    }
    for (const [key, value] of Object.entries(entry.value)) stack.push({ value, depth: entry.depth + 1, parent: entry, key });
  }
  return null;
}

export function documentTitle(doc: SpecDocument): string {
  const info = own(doc.root, 'info');
  const title = isObject(info) ? own(info, 'title') : undefined;
  return typeof title === 'string' && title.trim() !== '' ? title.trim() : 'the OpenAPI document';
}

export const pathItemShape = z.looseObject({
  $ref: z.string().optional(),
  parameters: z.array(z.unknown()).optional(),
  servers: z.array(serverShape).optional(),
});

export const operationShape = z.looseObject({
  operationId: z.string().optional(),
  summary: z.string().optional(),
  deprecated: z.boolean().optional(),
  parameters: z.array(z.unknown()).optional(),
  requestBody: z.unknown().optional(),
  // Read by the response type only (operations.ts), which takes what it can and never fails the import.
  responses: z.unknown().optional(),
  security: securityRequirementsShape.optional(),
  servers: z.array(serverShape).optional(),
});

export const parameterShape = z.looseObject({
  name: z.string({ error: 'must be a string' }).min(1),
  in: z.enum(['query', 'header', 'path', 'cookie'], { error: 'must be "query", "header", "path" or "cookie"' }),
  required: z.boolean().optional(),
  schema: z.unknown().optional(),
  content: z.record(z.string(), z.unknown()).optional(),
  style: z.string().optional(),
  explode: z.boolean().optional(),
  description: z.string().optional(),
});
export type SpecParameter = z.output<typeof parameterShape>;

const encodingShape = z.looseObject({
  contentType: z.string().optional(),
  style: z.string().optional(),
  explode: z.boolean().optional(),
});

export const requestBodyShape = z.looseObject({
  content: z.record(
    z.string(),
    z.looseObject({ schema: z.unknown().optional(), encoding: z.record(z.string(), encodingShape).optional() }),
  ),
  required: z.boolean().optional(),
});
export type SpecRequestBody = z.output<typeof requestBodyShape>;

export const securitySchemeShape = z
  .looseObject({
    type: z.enum(['apiKey', 'http', 'oauth2', 'openIdConnect', 'mutualTLS'], {
      error: 'must be "apiKey", "http", "oauth2", "openIdConnect" or "mutualTLS"',
    }),
    name: z.string().optional(),
    in: z.string().optional(),
    scheme: z.string().optional(),
  })
  .superRefine((scheme, ctx) => {
    if (scheme.type === 'apiKey' && (!scheme.name || !['query', 'header', 'cookie'].includes(scheme.in ?? ''))) {
      ctx.addIssue({
        code: 'custom',
        path: ['in'],
        message: 'an apiKey scheme needs "name" and "in" ("query", "header" or "cookie")',
      });
    }
    if (scheme.type === 'http' && !scheme.scheme)
      ctx.addIssue({ code: 'custom', path: ['scheme'], message: 'an http scheme needs "scheme"' });
  });
export type SpecSecurityScheme = z.output<typeof securitySchemeShape>;

/**
 * Follows a `$ref` inside the document (RFC 6901 pointer in a URI fragment, RFC 3986 §3.5, so percent-decoded
 * first). Another file's `$ref` is not followed: null, and the caller says why it skipped that part. A local
 * one that does not resolve is a bad document.
 */
export function resolveRef(doc: SpecDocument, ref: string, at: string): { value: unknown; pointer: string } | null {
  if (!ref.startsWith('#')) return null;
  // A JSON pointer needs no parser of its own beyond RFC 6901's two escapes; written here for that reason.
  const segments = ref === '#' || ref === '#/' ? [] : ref.slice(2).split('/');
  let node: unknown = doc.root;
  const walked: string[] = [];
  for (const raw of segments) {
    let key: string;
    try {
      key = decodeURIComponent(raw).replaceAll('~1', '/').replaceAll('~0', '~');
    } catch {
      throw specError(`${at}/$ref`, `"${ref}" is not a valid JSON pointer`);
    }
    walked.push(key);
    if (Array.isArray(node) && /^(?:0|[1-9]\d*)$/.test(key) && Number(key) < node.length) node = node[Number(key)];
    else if (isObject(node) && Object.hasOwn(node, key)) node = node[key];
    else throw specError(`${at}/$ref`, `"${ref}" does not resolve to anything in the document`);
  }
  return { value: node, pointer: child('#', ...walked) };
}

/**
 * A Parameter, Request Body or Security Scheme object, with `$ref`s followed (chains included). `external`:
 * the value is in another file, which the import does not read.
 */
export function derefObject(
  doc: SpecDocument,
  value: unknown,
  at: string,
): { value: unknown; pointer: string } | { external: string } {
  let current = { value, pointer: at };
  for (let hops = 0; hops < 32; hops++) {
    if (!isObject(current.value) || typeof own(current.value, '$ref') !== 'string') return current;
    const ref = own(current.value, '$ref') as string;
    const next = resolveRef(doc, ref, current.pointer);
    if (!next) return { external: ref };
    current = next;
  }
  throw specError(at, '$ref chain is circular');
}

/** Substitutes server variables with their defaults (OpenAPI "Server Variable Object"). */
export function serverUrl(server: SpecServer, at: string): string {
  return server.url.replace(/\{([^{}]+)\}/g, (_, name: string) => {
    const variable = server.variables && Object.hasOwn(server.variables, name) ? server.variables[name] : undefined;
    if (!variable) throw specError(child(at, 'url'), `uses the variable "${name}", which "variables" does not define`);
    return variable.default;
  });
}
