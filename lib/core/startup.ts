import 'server-only';
import { ConfigError } from './config/error';

/**
 * Builds the runtime with `load` (the route handlers' from `createKeyward`, or the fast lane's in server.ts) and
 * exits 1 with a message naming the field, never a value, when the configuration is invalid: start-up stops
 * instead of requests failing later.
 */
export function checkStartup(load: () => unknown): void {
  try {
    load();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`\nKeyward cannot start.\n${error.message}\n`);
    } else {
      console.error('\nKeyward cannot start: an unexpected error occurred while loading the configuration.\n');
    }
    process.exit(1);
  }
}
