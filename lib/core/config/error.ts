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

