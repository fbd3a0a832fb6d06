import { parseArgs } from 'node:util';

export interface ServeOptions {
  readonly port: number;
  /** Absent: every interface, as `next start` without `-H`. */
  readonly hostname: string | undefined;
  /** Milliseconds an idle keep-alive connection is kept (absent: Node's default, 5 s, as `next start`). */
  readonly keepAliveTimeout: number | undefined;
}

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/**
 * What `next start` accepts, read the same way (DESIGN.md "Public contract": scripts and deploy guides written
 * for one keep working): a flag wins over its variable (PORT, HOSTNAME; the latter as Next's standalone
 * server.js reads it), which wins over the default. Anything else is refused, not ignored.
 */
export function readServeOptions(args: readonly string[], env: Readonly<Record<string, string | undefined>>): ServeOptions {
  let values: { port?: string; hostname?: string; keepAliveTimeout?: string };
  try {
    ({ values } = parseArgs({
      args: [...args],
      strict: true,
      allowPositionals: false,
      options: {
        port: { type: 'string', short: 'p' },
        hostname: { type: 'string', short: 'H' },
        keepAliveTimeout: { type: 'string' },
      },
    }));
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
  const port = integer(values.port ?? env.PORT ?? '3000', values.port !== undefined ? '--port' : env.PORT !== undefined ? 'PORT' : 'port');
  if (port > 65_535) throw new UsageError(`${values.port !== undefined ? '--port' : 'PORT'} must be a port number (0–65535), not ${port}`);
  const hostname = values.hostname ?? (env.HOSTNAME || undefined);
  const keepAliveTimeout = values.keepAliveTimeout === undefined ? undefined : integer(values.keepAliveTimeout, '--keepAliveTimeout');
  return { port, hostname, keepAliveTimeout };
}

/** A non-negative decimal integer, as Next's `parseValidPositiveInteger` takes it. */
function integer(text: string, name: string): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${name} must be a non-negative integer, not "${text}"`);
  return Number(text.trim());
}
