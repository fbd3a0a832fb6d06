/** Thrown at start-up for any invalid configuration. The message names fields, never secret values. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}
