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
    stopStartup(error);
  }
}

/**
 * Imports the app's upstreams with `load` (`import('./keyward')` in instrumentation.ts, `import('@/upstreams')` in
 * server.ts) and returns the module; a bad setting stops start-up as in `checkStartup`. An upstream declared in
 * TypeScript (`defineUpstream`, a preset) throws its ConfigError while its module loads: imported at the top of
 * the entry module, it would end start-up as an uncaught exception, with a stack, instead of this message.
 * Anything else thrown there is a fault in the app's code, not a setting: start-up stops with its stack
 * (`stopOnFault`).
 */
export async function checkStartupImport<T>(load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (error) {
    if (error instanceof ConfigError) stopStartup(error);
    stopOnFault(error);
  }
}

/**
 * A fault in the app's own upstream code: its stack (the error's name, message and where it was thrown), and the
 * code of a system or Node error, then exit 1. Not the error's other properties, which Node would print for an
 * uncaught exception: they hold the values it failed on (`new URL(process.env.X)` fails with the whole setting
 * in `input`, credentials and all), which the log scrubber does not know yet at that point.
 */
function stopOnFault(error: unknown): never {
  const code = typeof (error as { code?: unknown } | null)?.code === 'string' ? ` (${(error as { code: string }).code})` : '';
  const stack = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : `a thrown ${typeof error}, not an Error`;
  console.error(`\nKeyward cannot start: loading the upstreams failed${code}:\n${stack}\n`);
  process.exit(1);
}

/** Says why start-up stops, in a line naming the field (never a value or a stack), and exits 1. */
function stopStartup(error: unknown): never {
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
