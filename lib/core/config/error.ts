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
