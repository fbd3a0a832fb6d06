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
 * Only bodies longer than this are counted: collecting every few MiB streamed by all calls together cost the
 * 1 MiB workload (32 calls at a time) 80 % more CPU per call, each forced collection copying the young objects
 * of every call in flight; a body this long is rare, and its collections are what bound its memory.
 */
export const BYTES_PER_COLLECTION = 8 * 1024 * 1024;

type Collect = (options: { type: 'minor' }) => void;

let collect: Collect | null | undefined;

/**
 * Called as a body streams, with its length so far before and after a chunk: each time it passes a multiple of
 * BYTES_PER_COLLECTION, the young generation is collected.
 */
export function streamedTo(before: number, after: number): void {
  if (Math.floor(after / BYTES_PER_COLLECTION) > Math.floor(before / BYTES_PER_COLLECTION)) collectYoungGeneration();
}

/**
 * Runs a young-generation collection (a scavenge). Node has no API for it: V8's `gc()` exists only with
 * `--expose-gc`, which puts it on every context's global. The flag is turned on for the one context created
 * here, which hands its `gc` over, and off again, so no other code sees a `gc` (a process already started with
 * `--expose-gc` has its own, used as is). Where V8 refuses, nothing is collected: memory then behaves as without.
 */
export function collectYoungGeneration(): void {
  if (collect === undefined) collect = findCollector();
  collect?.({ type: 'minor' });
}

function findCollector(): Collect | null {
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === 'function') return exposed as Collect;
  try {
    setFlagsFromString('--expose-gc');
    const found = runInNewContext('gc') as unknown;
    return typeof found === 'function' ? (found as Collect) : null;
  } catch {
    return null;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
}
