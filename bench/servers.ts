import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { freePort, npmStartNodeFlags } from '../tests/fixtures/app-server';

/**
 * Starts `next start` or the fast lane (`scripts/start.mjs` with `npm start`'s Node flags, as `npm start` does)
 * from the production build in `cwd`, on a free 127.0.0.1 port, like tests/fixtures/app-server.ts, except that the
 * server's output is not kept whole: Keyward logs a line per proxied call, and a load run makes millions. Only the
 * last 64 KiB are kept (for the error message when it fails to start).
 */
export interface BenchServer {
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  tail(): string;
  stop(): Promise<void>;
}

const TAIL = 64 * 1024;

export async function startServer(kind: 'next' | 'fastlane', env: Record<string, string>, cwd: string, bundle?: string): Promise<BenchServer> {
  const port = await freePort();
  const command =
    kind === 'next'
      ? [join(cwd, 'node_modules', 'next', 'dist', 'bin', 'next'), 'start', '-p', String(port), '-H', '127.0.0.1']
      : // `bundle`: another build of the fast lane (`--ab`), run directly as start.mjs would run the usual one.
        [...npmStartNodeFlags(cwd), bundle ? join(cwd, '.next', bundle) : join(cwd, 'scripts', 'start.mjs'), '-p', String(port), '-H', '127.0.0.1'];
  const child: ChildProcess = spawn(process.execPath, command, {
    cwd,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      NODE_ENV: 'production',
      NEXT_TELEMETRY_DISABLED: '1',
      AUTH_TRUST_HOST: 'true',
      KEYWARD_SIGNIN_MAX_ATTEMPTS: '10000',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (chunk: Buffer) => {
    output += chunk.toString('utf8');
    if (output.length > 2 * TAIL) output = output.slice(-TAIL);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const url = `http://localhost:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`bench: ${kind} exited with ${child.exitCode}:\n${output.slice(-TAIL)}`);
    try {
      const response = await fetch(`${url}/api/session`, { signal: AbortSignal.timeout(5_000) });
      await response.arrayBuffer();
      break;
    } catch {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`bench: ${kind} did not answer within 60 s:\n${output.slice(-TAIL)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  return {
    url,
    port,
    pid: child.pid!,
    tail: () => output.slice(-TAIL),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await once(child, 'exit');
      clearTimeout(timer);
    },
  };
}
