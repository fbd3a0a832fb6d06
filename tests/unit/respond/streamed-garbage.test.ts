import { Readable } from 'node:stream';
import { constants, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import { ReadableStream as NodeReadableStream } from 'node:stream/web';
import { runInNewContext } from 'node:vm';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { capRequestBody } from '../../../lib/core/forward/body';
import { ProxiedBody } from '../../../lib/core/respond/body';
import {
  BYTES_PER_COLLECTION,
  collectYoungGeneration,
  MIN_INTERVAL_MS,
} from '../../../lib/core/respond/streamed-garbage';

/**
 * Long bodies collect V8's young generation as they stream (lib/core/respond/streamed-garbage.ts), which V8
 * reports as forced minor collections: Node's `gc` performance entries say so. V8 starts none of its own with
 * the "forced" flag, so the count is exactly the collections Keyward asked for. `performance.now()` is a fake
 * clock, moved by the tests (collections are at least MIN_INTERVAL_MS apart); timers stay real.
 */
let observer: PerformanceObserver;
let forced: number;
// Whether this process gave new contexts a `gc` before Keyward looked for one (NODE_OPTIONS=--expose-gc).
const gcBefore = runInNewContext('typeof gc') as string;

beforeAll(() => vi.useFakeTimers({ toFake: ['performance'] }));
afterAll(() => vi.useRealTimers());

beforeEach(() => {
  forced = 0;
  observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) if (isForcedMinor(entry)) forced++;
  });
  observer.observe({ entryTypes: ['gc'] });
});
afterEach(() => observer.disconnect());

function isForcedMinor(entry: PerformanceEntry): boolean {
  const detail = (entry as PerformanceEntry & { detail: { kind: number; flags: number } }).detail;
  return (
    detail.kind === constants.NODE_PERFORMANCE_GC_MINOR &&
    (detail.flags & constants.NODE_PERFORMANCE_GC_FLAGS_FORCED) !== 0
  );
}

/** The forced minor collections reported so far: entries reach the observer a few turns of the event loop later. */
async function forcedCollections(): Promise<number> {
  for (let turn = 0; turn < 5; turn++) await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setTimeout(resolve, 20));
  for (const entry of observer.takeRecords()) if (isForcedMinor(entry)) forced++;
  return forced;
}

const CHUNK = Buffer.alloc(64 * 1024, 97);

/**
 * `bytes` in 64 KiB chunks (the same buffer again: the test itself makes no garbage worth collecting), the
 * clock moving `msPerChunk` before each.
 */
function* chunks(bytes: number, msPerChunk = 1): Generator<Buffer> {
  for (let sent = 0; sent < bytes; sent += CHUNK.length) {
    vi.advanceTimersByTime(msPerChunk);
    yield CHUNK.subarray(0, Math.min(CHUNK.length, bytes - sent));
  }
}

describe('collectYoungGeneration', () => {
  it('runs a minor collection without putting gc on any global', async () => {
    collectYoungGeneration();
    collectYoungGeneration();
    expect(await forcedCollections()).toBe(2);
    expect(typeof (globalThis as { gc?: unknown }).gc).toBe(gcBefore);
    expect(runInNewContext('typeof gc')).toBe(gcBefore);
  });
});

describe('a long body collects the young generation as it streams', () => {
  it('request bodies (capRequestBody): each time one goes past a multiple of BYTES_PER_COLLECTION', async () => {
    const stream = (bytes: number) => NodeReadableStream.from(chunks(bytes)) as unknown as ReadableStream<Uint8Array>;
    let read = 0;
    for await (const chunk of capRequestBody(stream(BYTES_PER_COLLECTION), 1024 ** 3, 10_000).iterable)
      read += chunk.byteLength;
    expect(read).toBe(BYTES_PER_COLLECTION);
    expect(await forcedCollections()).toBe(0);

    for await (const chunk of capRequestBody(stream(2.5 * BYTES_PER_COLLECTION), 1024 ** 3, 10_000).iterable)
      read += chunk.byteLength;
    expect(await forcedCollections()).toBe(2);
  });

  it('response bodies (ProxiedBody): each time one goes past a multiple of BYTES_PER_COLLECTION read from the upstream', async () => {
    const readAll = async (bytes: number, msPerChunk = 1) => {
      const body = new ProxiedBody(Readable.from(chunks(bytes, msPerChunk)), null, () => {});
      let read = 0;
      for (let parts = await body.read(); parts !== null; parts = await body.read())
        for (const part of parts) read += part.byteLength;
      return read;
    };
    expect(await readAll(BYTES_PER_COLLECTION - 1)).toBe(BYTES_PER_COLLECTION - 1);
    expect(await forcedCollections()).toBe(0);
    expect(await readAll(3 * BYTES_PER_COLLECTION + 1)).toBe(3 * BYTES_PER_COLLECTION + 1);
    expect(await forcedCollections()).toBe(3);
  });

  it('is at least MIN_INTERVAL_MS apart, however fast bodies stream', async () => {
    vi.advanceTimersByTime(MIN_INTERVAL_MS);
    const body = new ProxiedBody(Readable.from(chunks(4 * BYTES_PER_COLLECTION, 0)), null, () => {});
    while ((await body.read()) !== null);
    expect(await forcedCollections()).toBe(1);
  });
});
