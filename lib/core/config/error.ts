import { parse as parseJson, type ValueNode } from '@humanwhocodes/momoa';

/** Thrown at start-up for any invalid configuration. The message names fields, never secret values. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/**
 * Where a JSON.parse SyntaxError says the text broke (" at line 3, column 2"), or "" when it does not say. Only
 * the numbers: V8's message may quote the text itself, which must not reach a log (a users file holds password
 * hashes, a config may hold what should not be printed).
 */
export function jsonErrorAt(error: unknown): string {
  const match = error instanceof SyntaxError ? /\(line (\d+) column (\d+)\)/.exec(error.message) : null;
  return match ? ` at line ${match[1]}, column ${match[2]}` : '';
}

/**
 * How a message names the environment variable a field refers to: by its name when it looks like one (upper
 * case, digits and `_`, as variables are named), else not at all, since a key pasted where its variable's name
 * belongs (`"secret": {"env": "sk_live_…"}`, `ghp_…`, an AWS access key id) must not reach the log.
 */
export function variableNamed(name: string): string {
  const looksLikeName = /^[A-Z][A-Z0-9_]{0,79}$/.test(name) && !/^(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}$/.test(name);
  return looksLikeName
    ? `environment variable ${name}`
    : 'the environment variable this field names (its name is not shown: it does not look like a variable name, and may be a key)';
}

/**
 * How deep a config is looked at: `protoKeyAt` (load.ts) refuses one nested deeper (unchecked, a `__proto__` down
 * there would pass), and `duplicateJsonName` stops there, so that a walk never overflows the stack.
 */
export const MAX_DEPTH = 64;

/**
 * The first name that appears twice in one object of a JSON text, as a message naming where (its path, line and
 * column), or null. JSON.parse keeps the last of them, so `{"roles": ["admin"], …, "roles": ["user"]}` or one
 * upstream id twice would drop the first silently; a config must say one thing once. @humanwhocodes/momoa (the
 * JSON parser ESLint's JSON support is built on) keeps every member, which JSON.parse cannot. Call it on text
 * JSON.parse accepted. A name longer than 32 characters is not shown: it may be a key pasted in the wrong place.
 * Nothing below MAX_DEPTH levels is looked at: such a config is refused as too deep once parsed.
 */
export function duplicateJsonName(text: string): string | null {
  let document: ReturnType<typeof parseJson>;
  try {
    document = parseJson(text);
  } catch {
    return null; // JSON.parse accepted it: nothing momoa could add
  }
  const found = { at: null as string | null };
  walk(document.body, [], found);
  return found.at;
}

function walk(node: ValueNode, path: string[], found: { at: string | null }): void {
  if (found.at !== null || path.length > MAX_DEPTH) return;
  if (node.type === 'Array') node.elements.forEach((element, i) => walk(element.value, [...path, String(i)], found));
  if (node.type !== 'Object') return;
  const seen = new Set<string>();
  for (const member of node.members) {
    const name = member.name.type === 'String' ? member.name.value : member.name.name;
    if (seen.has(name)) {
      const { line, column } = member.name.loc.start;
      found.at = `${[...path, shownName(name)].join('.')}: appears twice in one object (again at line ${line}, column ${column}); JSON keeps only the last, so say it once`;
      return;
    }
    seen.add(name);
    walk(member.value, [...path, shownName(name)], found);
  }
}

/**
 * A name from the config as an error message may print it: a long one, or one shaped like an AWS key id, may be a
 * key pasted where a name belongs (a header name, an upstream id, an unknown field), and is not shown. A setting's
 * name (upper-case words joined by `_`, such as KEYWARD_USAGE_MINUTES_RETENTION_HOURS) is shown up to 64.
 */
export function shownName(name: string): string {
  if (name.length <= 64 && /^[A-Z]+(?:_[A-Z]+)*$/.test(name)) return name;
  return name.length <= 32 && !/^(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}$/.test(name) ? name : '(a name not shown)';
}
