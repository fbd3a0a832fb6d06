import { formatWithOptions, inspect, type InspectOptions } from 'node:util';
import { logScrubber } from './logger';

const SCRUBBED = Symbol.for('keyward.console-scrubbed');
/** Strings shown whole (console shows 10,000 characters); arrays as console shows them (an item is whole or absent). */
const WHOLE = { maxStringLength: Infinity };

/**
 * Passes what others print with `console` (Next.js's own error lines above all: an absolute-form request target
 * it cannot parse is printed whole, query and all) through the exact-value scrubber that every Keyward log line
 * goes through, so a secret Keyward holds never reaches the output that way either. A line with no secret in it
 * is printed as it was given (its arguments unchanged); one with a secret is printed formatted, then scrubbed.
 * Called once per process (instrumentation.ts's `keyward.register()`); calling it again changes nothing.
 */
export function scrubConsole(target: Console = console): void {
  const marked = target as Console & { [SCRUBBED]?: true };
  if (marked[SCRUBBED]) return;
  marked[SCRUBBED] = true;
  const log = target.log.bind(target);
  // dirxml prints its arguments as log does (Node's calls `this.log`, so a clean line is checked twice).
  for (const name of ['log', 'info', 'warn', 'error', 'debug', 'trace', 'dirxml'] as const) {
    if (typeof target[name] !== 'function') continue;
    const original = target[name].bind(target);
    target[name] = (...args: unknown[]) => {
      // Strings checked whole: console shows 10,000 characters of one, so a secret where it cuts would not match
      // the scrubber in the text it prints, and its start would be printed.
      const text = formatted(args);
      if (text === null) return original(TOO_LONG);
      const scrubbed = logScrubber.scrub(text);
      if (scrubbed === text) original(...args);
      else original(scrubbed);
    };
  }
  if (typeof target.dir === 'function') {
    const dir = target.dir.bind(target);
    // One value, inspected with the options given (console.dir's own default: no custom inspect); one with a
    // secret is printed inspected, then scrubbed, through log (the same stream: stdout), since dir would quote it.
    target.dir = (item?: unknown, options?: InspectOptions) => {
      const text = inspected(item, options);
      if (text === null) return log(TOO_LONG);
      const scrubbed = logScrubber.scrub(text);
      if (scrubbed === text) dir(item, options);
      else log(scrubbed);
    };
  }
}

/**
 * What stands for a line too long to check whole (past V8's longest string): printed as console would cut it, it
 * could show the start of a secret at a cut, which is what checking whole is for.
 */
const TOO_LONG = 'keyward: a console line too long to check for secrets was not printed';

/** The line with its strings whole, or null when that is longer than a string can be. */
function formatted(args: unknown[]): string | null {
  try {
    return formatWithOptions(WHOLE, ...args);
  } catch {
    return null;
  }
}

/** A value as console.dir shows it with these options, strings whole; null when that is longer than a string can be. */
function inspected(item: unknown, options: InspectOptions | undefined): string | null {
  try {
    return inspect(item, { customInspect: false, ...options, ...WHOLE });
  } catch {
    return null;
  }
}

/**
 * Node prints an uncaught exception (and an unhandled rejection, which its default mode raises as one) with a
 * writer of its own, past the console: a secret in the error's message, cause or properties would reach stderr
 * whole. For a process of Keyward's own (`npm start`'s fast lane), this prints it through `console` instead, so
 * scrubConsole sees it, then exits 1 as Node would. Next's own process needs none: its router server already logs
 * an uncaught exception with `console` (and keeps serving).
 */
export function printUncaughtErrorsScrubbed(target: Console = console, exit: (code: number) => void = (code) => process.exit(code)): void {
  process.on('uncaughtException', (error, origin) => {
    try {
      target.error(`\n${origin === 'unhandledRejection' ? 'An unhandled rejection' : 'An uncaught exception'} stops the process:`, error);
    } catch {
      // Formatting the error failed (a getter that throws): say so rather than let Node print it raw.
      target.error(`\n${origin} stops the process (the error could not be printed)`);
    }
    exit(1);
  });
}
