import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { EventStreamBoundaries } from '../../../lib/core/respond/event-stream';
import { StreamScrubber } from '../../../lib/core/respond/scrub-stream';
import { ProxiedBody } from '../../../lib/core/respond/body';

/** An event-stream message as the framing reads it: total length, then the rest (its content is not read). */
function message(payload: string, crc = [0, 0, 0, 0]): Buffer {
  const body = Buffer.from(payload, 'utf8');
  const total = 12 + body.length + 4;
  const head = Buffer.alloc(12);
  head.writeUInt32BE(total, 0);
  return Buffer.concat([head, body, Buffer.from(crc)]);
}

describe('EventStreamBoundaries', () => {
  it('reports a chunk that ends where a message ends, however the bytes are cut', () => {
    const stream = Buffer.concat([message('{"a":1}'), message('{"bb":22}'), message('x')]);
    const ends = new Set([message('{"a":1}').length, message('{"a":1}').length + message('{"bb":22}').length, stream.length]);
    for (let cut = 1; cut < stream.length; cut++) {
      const tracker = new EventStreamBoundaries();
      expect(tracker.endsAtBoundary(stream.subarray(0, cut)), `cut at ${cut}`).toBe(ends.has(cut));
      expect(tracker.endsAtBoundary(stream.subarray(cut))).toBe(true);
    }
    const byByte = new EventStreamBoundaries();
    const seen: number[] = [];
    for (let i = 0; i < stream.length; i++) if (byByte.endsAtBoundary(stream.subarray(i, i + 1))) seen.push(i + 1);
    expect(new Set(seen)).toEqual(ends);
  });

  it('gives up on a length no message can have, and never reports a boundary after it', () => {
    const tracker = new EventStreamBoundaries();
    expect(tracker.endsAtBoundary(Buffer.from([0, 0, 0, 3, 1, 2, 3]))).toBe(false);
    expect(tracker.endsAtBoundary(message('ok'))).toBe(false);
  });
});

describe('ProxiedBody.stream() with event-stream boundaries', () => {
  it('releases what the scrubber holds back at a message end, and still scrubs a secret inside a message', async () => {
    const secret = 'AKIAEXAMPLESECRETKEYID';
    // A CRC whose last byte could begin the secret ("A"): without boundaries the scrubber holds it back.
    const first = message('{"delta":"Hel"}', [1, 2, 3, 0x41]);
    const scrubber = () => new StreamScrubber([secret]);
    expect(scrubber().push(first).length).toBeLessThan(first.length);

    const source = new Readable({ read() {} });
    const stream = new ProxiedBody(source, scrubber(), () => {}, null, new EventStreamBoundaries()).stream();
    const reader = stream.getReader();
    source.push(first);
    // The whole first message is readable before anything else arrives (already queued, nothing held).
    const received: Buffer[] = [];
    while (Buffer.concat(received).length < first.length) {
      const next = await Promise.race([reader.read(), new Promise<'held'>((resolve) => setImmediate(() => resolve('held')))]);
      expect(next, 'a byte of the first message was held back').not.toBe('held');
      received.push(Buffer.from((next as ReadableStreamReadResult<Uint8Array>).value!));
    }
    expect(Buffer.concat(received).equals(first)).toBe(true);
    // A secret inside a later message is still replaced.
    source.push(message(`{"delta":"${secret}"}`));
    source.push(null);
    const rest: Buffer[] = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest.push(Buffer.from(value));
    }
    expect(Buffer.concat(rest).toString('latin1')).not.toContain(secret);
  });
});
