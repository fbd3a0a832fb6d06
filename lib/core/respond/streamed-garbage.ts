import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/**
 * Bytes a long body (request or response) streams between two young-generation collections.
 *
 * Every chunk a socket delivers is a new buffer outside V8's heap. Passed on without a copy, it is garbage at
 * once, but V8 frees it only when it collects the small object that holds it, and a body streamed that way
 * leaves too little garbage in the heap to start a collection. V8 then collects when 64 MiB of such buffers
 * have piled up (its external-memory limit), and the allocator keeps what they took. `npm run bench --
 * --big-only`, 1 GiB uploaded to a fresh server: RSS grew 85 MiB (fast lane) and 83 MiB (route handler).
 *
 * Only a body's bytes past the first BYTES_PER_COLLECTION count: collecting every few MiB streamed by all calls
 * together cost the 1 MiB workload (32 calls at a time) 80 % more CPU per call, each forced collection copying
 * the young objects of every call in flight; a body this long is rare, and its collections are what bound its
 * memory. And however many long bodies stream at once, collections are at least MIN_INTERVAL_MS apart.
 */
export const BYTES_PER_COLLECTION = 8 * 1024 * 1024;

/**
 * The shortest time between two collections, for the whole process: at most 50 a second, whatever the clients
 * stream (one body at 500 MiB/s passes 8 MiB every 16 ms, so a collection then comes every 16 MiB).
 */
export const MIN_INTERVAL_MS = 20;

type Collect = (options: { type: 'minor' }) => void;

let collect: Collect | null | undefined;
let lastCollection = Number.NEGATIVE_INFINITY;

/** Multiples of BYTES_PER_COLLECTION a body of `bytes` has gone past (a body of exactly 8 MiB has passed none). */
function passed(bytes: number): number {
  return Math.max(0, Math.ceil(bytes / BYTES_PER_COLLECTION) - 1);
}

/**
 * Called as a body streams, with its length so far before and after a chunk: each time it goes past a multiple
 * of BYTES_PER_COLLECTION, the young generation is collected (unless one was less than MIN_INTERVAL_MS ago).
 */
export function streamedTo(before: number, after: number): void {
  if (passed(after) <= passed(before)) return;
  const now = performance.now();
  if (now - lastCollection < MIN_INTERVAL_MS) return;
  lastCollection = now;
  collectYoungGeneration();
}

/**
 * Runs a young-generation collection (a scavenge). Node has no API for it: V8's `gc()` exists only with
 * `--expose-gc`, which puts it on every context's global. The flag is turned on for the one context created
 * here, which hands its `gc` over, and off again, so no other code sees a `gc`. A process started with
 * `--expose-gc` (or `--expose-gc-as`) already gives new contexts a `gc`: that one is used and the flags are left
 * alone. Node documents that changing V8's flags after start-up may not work: Node 22 and 24 leave them
 * unfrozen, and where V8 ignores the flag, the context has no `gc` and nothing is collected (memory then behaves
 * as without).
 */
export function collectYoungGeneration(): void {
  if (collect === undefined) collect = findCollector();
  collect?.({ type: 'minor' });
}

function findCollector(): Collect | null {
  const gcOf = (): unknown => runInNewContext('typeof gc === "function" ? gc : undefined');
  try {
    const existing = gcOf();
    if (typeof existing === 'function') return existing as Collect;
  } catch {
    return null;
  }
  // `--expose-gc-as=name` sets the flag but names the function otherwise: turning the flag off afterwards would
  // take it from the operator's later contexts and workers.
  const startFlags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  if (startFlags.some((flag) => /^--expose[-_]gc/.test(flag))) return null;
  try {
    setFlagsFromString('--expose-gc');
    const found = gcOf();
    return typeof found === 'function' ? (found as Collect) : null;
  } catch {
    return null;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
}
