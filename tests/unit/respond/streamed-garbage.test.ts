import { Readable } from 'node:stream';
import { constants, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import { ReadableStream as NodeReadableStream } from 'node:stream/web';
import { runInNewContext } from 'node:vm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { capRequestBody } from '../../../lib/core/forward/body';
import { ProxiedBody } from '../../../lib/core/respond/body';
import { BYTES_PER_COLLECTION, collectYoungGeneration } from '../../../lib/core/respond/streamed-garbage';

/**
 * Long bodies collect V8's young generation as they stream (lib/core/respond/streamed-garbage.ts), which V8
 * reports as forced minor collections: Node's `gc` performance entries say so. V8 starts none of its own with
 * the "forced" flag, so the count is exactly the collections Keyward asked for.
 */
let observer: PerformanceObserver;
let forced: number;

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

/** `bytes` in 64 KiB chunks (the same buffer again: the test itself makes no garbage worth collecting). */
function* chunks(bytes: number): Generator<Buffer> {
  for (let sent = 0; sent < bytes; sent += CHUNK.length) yield CHUNK.subarray(0, Math.min(CHUNK.length, bytes - sent));
}

describe('collectYoungGeneration', () => {
  it('runs a minor collection without putting gc on any global', async () => {
    collectYoungGeneration();
    collectYoungGeneration();
    expect(await forcedCollections()).toBe(2);
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
    expect(runInNewContext('typeof gc')).toBe('undefined');
  });
});

describe('a long body collects the young generation as it streams', () => {
  it('request bodies (capRequestBody): once per BYTES_PER_COLLECTION, none below it', async () => {
    const stream = (bytes: number) => NodeReadableStream.from(chunks(bytes)) as unknown as ReadableStream<Uint8Array>;
    let read = 0;
    for await (const chunk of capRequestBody(stream(BYTES_PER_COLLECTION - 1), 1024 ** 3, 10_000).iterable)
      read += chunk.byteLength;
    expect(read).toBe(BYTES_PER_COLLECTION - 1);
    expect(await forcedCollections()).toBe(0);

    for await (const chunk of capRequestBody(stream(2.5 * BYTES_PER_COLLECTION), 1024 ** 3, 10_000).iterable)
      read += chunk.byteLength;
    expect(await forcedCollections()).toBe(2);
  });

  it('response bodies (ProxiedBody): once per BYTES_PER_COLLECTION read from the upstream', async () => {
    const readAll = async (bytes: number) => {
      const body = new ProxiedBody(Readable.from(chunks(bytes)), null, () => {});
      let read = 0;
      for (let parts = await body.read(); parts !== null; parts = await body.read())
        for (const part of parts) read += part.byteLength;
      return read;
    };
    expect(await readAll(BYTES_PER_COLLECTION - 1)).toBe(BYTES_PER_COLLECTION - 1);
    expect(await forcedCollections()).toBe(0);
    expect(await readAll(3 * BYTES_PER_COLLECTION)).toBe(3 * BYTES_PER_COLLECTION);
    expect(await forcedCollections()).toBe(3);
  });
});
