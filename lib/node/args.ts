import { parseArgs } from 'node:util';
import { userInfo } from 'node:os';
import { shownName } from '@/lib/core/config/error';

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
    throw new UsageError(argsProblem(error) ?? String(error));
  }
  const port = integer(values.port ?? env.PORT ?? '3000', values.port !== undefined ? '--port' : env.PORT !== undefined ? 'PORT' : 'port');
  if (port > 65_535) throw new UsageError(`${values.port !== undefined ? '--port' : 'PORT'} must be a port number (0–65535)`);
  const hostname = values.hostname ?? (env.HOSTNAME || undefined);
  const keepAliveTimeout = values.keepAliveTimeout === undefined ? undefined : integer(values.keepAliveTimeout, '--keepAliveTimeout');
  return { port, hostname, keepAliveTimeout };
}

/**
 * A non-negative decimal integer, as Next's `parseValidPositiveInteger` takes it. The value is not shown, as no
 * argument is (argsProblem): it may be a key pasted in the wrong place.
 */
function integer(text: string, name: string): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${name} must be a non-negative integer (value not shown)`);
  return Number(text.trim());
}

/**
 * What parseArgs found wrong with a command line, or null for an error of another kind. Its messages quote the
 * argument, which may be a key pasted in the wrong place (`npm start sk-…`, `-- --sk-…`): an unexpected
 * positional argument is not shown, and a quoted option is shown by the config errors' rule (`shownName`).
 */
export function argsProblem(error: unknown): string | null {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !code.startsWith('ERR_PARSE_ARGS_')) return null;
  if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') return 'Unexpected argument (not shown): this command takes options only';
  return (error as Error).message.replace(/'([^'\n]*)'/g, (_whole, quoted: string) => `'${shownName(quoted)}'`);
}

/**
 * Who runs a command, for the audit trail (`cli:<name>`): the OS user, or, in a container whose user id has no
 * passwd entry (OpenShift's random ids, `docker run --user 1000`), where os.userInfo() throws, $USER or the id.
 */
export function operator(info: () => { username: string } = userInfo, env: Readonly<Record<string, string | undefined>> = process.env): string {
  try {
    return info().username;
  } catch {
    return env.USER || `uid ${process.getuid?.() ?? 'unknown'}`;
  }
}
