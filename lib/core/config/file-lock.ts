import { closeSync, openSync, realpathSync, rmSync, statSync, writeSync } from 'node:fs';
import { ConfigError } from './error';

/** A lock older than this is taken to be a crashed writer's, and removed. */
const STALE_MS = 30_000;
const WAIT_MS = 10_000;
const STEP_MS = 25;

/**
 * Runs `work` holding `<path>.lock`, so that two CLI commands editing one file at once (two `decoys create`, two
 * `import … --out`) take turns instead of each reading the file, adding its entry and renaming its copy over the
 * other's: the last rename won and the other's entry was lost, though it had been printed as added. A lock left
 * by a process that died is removed once it is STALE_MS old; a lock held longer than WAIT_MS fails the command
 * with a message naming the lock file.
 *
 * Why not a library: proper-lockfile (the usual choice) has seen no release since 2021 and brings three
 * dependencies for this; an exclusive create (`wx`, atomic on local file systems) is the whole mechanism.
 */
export function withFileLock<T>(path: string, work: () => T): T {
  const lock = `${path}.lock`;
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    try {
      const fd = openSync(lock, 'wx', 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      if (isStale(lock)) {
        rmSync(lock, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new ConfigError(`${lock} is held by another command; try again, or delete it if none is running`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, STEP_MS);
    }
  }
  try {
    return work();
  } finally {
    rmSync(lock, { force: true });
  }
}

function isStale(lock: string): boolean {
  try {
    return Date.now() - statSync(lock).mtimeMs > STALE_MS;
  } catch {
    return false; // gone meanwhile: try again
  }
}

/**
 * Where a write to `path` must go so that a symbolic link stays one (its target is replaced, not the link), and
 * the mode the file has now (a new file: `fallback`), for the temporary file renamed over it.
 */
export function writeTarget(path: string, fallback: number): { path: string; mode: number } {
  try {
    const real = realpathSync(path);
    return { path: real, mode: statSync(real).mode & 0o777 };
  } catch {
    return { path, mode: fallback };
  }
}
