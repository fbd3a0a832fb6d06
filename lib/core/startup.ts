import 'server-only';
import { StoreUnavailableError } from '../store/types';
import { ConfigError } from './config/error';
import { systemErrorDetail } from './errors';

/**
 * Builds the runtime with `load` (the route handlers' from `createKeyward`, or the fast lane's in server.ts) and
 * exits 1 with a message naming the field, never a value, when the configuration is invalid: start-up stops
 * instead of requests failing later.
 */
export function checkStartup(load: () => unknown): void {
  try {
    load();
  } catch (error) {
    const detail = systemErrorDetail(error);
    if (error instanceof ConfigError) {
      console.error(`\nKeyward cannot start.\n${error.message}\n`);
    } else if (error instanceof StoreUnavailableError && error.kind === 'sqlite') {
      // The embedded store's file or folder cannot be made or opened: a read-only root filesystem, for one.
      console.error(
        `\nKeyward cannot start: the SQLite store at KEYWARD_STORE_PATH cannot be opened${detail ? ` (${detail})` : ''}; ` +
          'put it on a writable, persistent volume.\n',
      );
    } else {
      console.error(`\nKeyward cannot start: an unexpected error occurred while loading the configuration${detail ? ` (${detail})` : ''}.\n`);
    }
    process.exit(1);
  }
}
