/**
 * Names TypeScript reads from `Object.prototype` on every object (lib.es5.d.ts, `interface Object`). An optional
 * field of one of these names (`constructor?: string`) makes every object literal without it fail to type-check:
 * TypeScript takes the missing field's type from the prototype, and `Function` is not `string`. The typed client's
 * generated types leave such a field out (scripts/client-types.ts); the import and `types` say so.
 */
const OBJECT_PROTOTYPE_NAMES: ReadonlySet<string> = new Set([
  'constructor',
  'hasOwnProperty',
  'isPrototypeOf',
  'propertyIsEnumerable',
  'toLocaleString',
  'toString',
  'valueOf',
]);

/** Whether an object type can declare this field as it is (a required field always can). */
export function typeableField(name: string, required: boolean): boolean {
  return required || !OBJECT_PROTOTYPE_NAMES.has(name);
}

/**
 * The fields of a request contract (a field spec, a query contract, or a zod contract's JSON Schema) that the
 * typed client's types leave out, as paths from `path` (`body.meta.toString`).
 */
export function untypeableFields(schema: unknown, path: string): string[] {
  if (!isRecord(schema)) return [];
  const found: string[] = [];
  for (const key of ['anyOf', 'oneOf', 'allOf'] as const) {
    const options = schema[key];
    if (Array.isArray(options)) found.push(...options.flatMap((option) => untypeableFields(option, path)));
  }
  found.push(...untypeableFields(schema.items, `${path}[]`));
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  for (const [name, spec] of Object.entries(isRecord(schema.properties) ? schema.properties : {})) {
    if (typeableField(name, required.has(name))) found.push(...untypeableFields(spec, `${path}.${name}`));
    else found.push(`${path}.${name}`);
  }
  return [...new Set(found)];
}

/** What the import and `types` say about a field `untypeableFields` names. */
export function untypeableFieldMessage(path: string): string {
  return `the optional field ${path} is left out of the typed client's types (TypeScript reads an optional field of that name from Object.prototype, and would refuse every call to the route)`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}
