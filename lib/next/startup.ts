import 'server-only';
import { ConfigError } from '@/lib/core/config/load';
import { getRuntime } from './runtime';

export function checkStartup(): void {
  try {
    getRuntime();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`\nKeyward cannot start.\n${error.message}\n`);
    } else {
      console.error('\nKeyward cannot start: an unexpected error occurred while loading the configuration.\n');
    }
    process.exit(1);
  }
}
