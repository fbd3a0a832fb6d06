import 'server-only';
import pino, { type Logger } from 'pino';
import { SecretScrubber } from './scrub';

/** pino's levels, as KEYWARD_LOG_LEVEL takes them (lib/core/settings.ts validates it). */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * KEYWARD_LOG_LEVEL as the environment holds it, for a logger made before the settings are read (an error while
 * loading them is logged): pino throws on a level it does not know, so anything else is `info` here, and start-up
 * names the setting.
 */
function envLogLevel(): LogLevel {
  const value = process.env.KEYWARD_LOG_LEVEL;
  return LOG_LEVELS.find((level) => level === value) ?? 'info';
}

/** Every secret value Keyward loads is registered here, so no log line can carry it. */
export const logScrubber = new SecretScrubber();

/**
 * pino with two layers: redaction of credential-bearing fields by path, and the exact-value scrubber on
 * the final serialised line (messages, error stacks and URLs included). JSON encoding escapes CR/LF, so
 * input cannot forge a log line.
 */
export function createLogger(options: { level?: LogLevel; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      level: options.level ?? envLogLevel(),
      base: { app: 'keyward' },
      redact: {
        paths: [
          'headers.authorization',
          'headers.cookie',
          'headers["set-cookie"]',
          'headers["x-api-key"]',
          'headers["proxy-authorization"]',
          '*.headers.authorization',
          '*.headers.cookie',
          '*.headers["set-cookie"]',
          '*.headers["x-api-key"]',
          'authorization',
          'cookie',
          'password',
          'secret',
          'token',
          // No `*.password` wildcard: the redactor would read URL#password on a logged URL and throw.
          // URLs are covered by the exact-value scrubber instead.
          '*.secret',
          '*.token',
        ],
        censor: '[REDACTED]',
      },
      // URL objects become strings before redaction copies them (the copy cannot be serialised); the scrubber
      // below still removes any secret in their query.
      formatters: { log: urlsToStrings },
      hooks: { streamWrite: (line) => logScrubber.scrub(line) },
    },
    // Asynchronous stdout (pino's sonic-boom, as pino recommends for throughput): a line is handed to the OS
    // without blocking the call, and lines logged while a write is under way go out together in the next one,
    // instead of one blocking write per proxied call. pino flushes what is pending when the process exits
    // (exit code, signal handled, uncaught error); only a SIGKILL can lose the last milliseconds of lines. The
    // audit trail is written to the store, not here.
    options.destination ?? pino.destination({ dest: 1, sync: false }),
  );
}

function urlsToStrings(object: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const [key, value] of Object.entries(object)) {
    if (value instanceof URL) {
      out ??= { ...object };
      out[key] = value.href;
    }
  }
  return out ?? object;
}

let shared: Logger | undefined;

/** The process's logger; `level` is the validated KEYWARD_LOG_LEVEL, once start-up has read the settings. */
export function getLogger(level?: LogLevel): Logger {
  shared ??= createLogger({ level });
  if (level) shared.level = level;
  return shared;
}
