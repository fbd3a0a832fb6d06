import 'server-only';
import { ConfigError } from '@/lib/core/config/load';
import { getRuntime } from './runtime';

/**
 * Builds the runtime (the route handlers' by default; the fast lane passes its own, server.ts) and exits 1 with
 * a message naming the field, never a value, when the configuration is invalid.
 */
export function checkStartup(load: () => unknown = getRuntime): void {
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
