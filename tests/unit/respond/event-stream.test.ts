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
    // Longer than AWS's 16 MiB limit: not an event stream either.
    const long = new EventStreamBoundaries();
    const head = Buffer.alloc(12);
    head.writeUInt32BE(16 * 1024 * 1024 + 1, 0);
    expect(long.endsAtBoundary(head)).toBe(false);
    expect(long.endsAtBoundary(Buffer.alloc(16 * 1024 * 1024 + 1 - 12))).toBe(false);
    expect(long.endsAtBoundary(message('ok'))).toBe(false);
  });

  it('lets only a CRC go at a boundary, and after that wants the next chunk to begin a message', () => {
    const tracker = new EventStreamBoundaries();
    expect(tracker.endsAtBoundary(message('a'))).toBe(true);
    expect(tracker.mayRelease(5)).toBe(false);
    expect(tracker.mayRelease(4)).toBe(true);
    // A length's first byte is 0x00 or 0x01 (16 MiB at most): a letter cannot begin the next message.
    expect(() => tracker.endsAtBoundary(Buffer.from('CDEF'))).toThrow(expect.objectContaining({ code: 'upstream_bad_response' }));
    const honest = new EventStreamBoundaries();
    expect(honest.endsAtBoundary(message('a'))).toBe(true);
    expect(honest.mayRelease(4)).toBe(true);
    expect(honest.endsAtBoundary(message('b'))).toBe(true);
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

  /** The bytes a ProxiedBody with event-stream boundaries hands on for `chunks`, and the error it ended with. */
  async function through(secret: string, chunks: Buffer[]): Promise<{ out: Buffer; error: unknown }> {
    const source = Readable.from(chunks);
    const body = new ProxiedBody(source, new StreamScrubber([secret]), () => {}, null, new EventStreamBoundaries());
    const out: Buffer[] = [];
    try {
      for (let parts = await body.read(); parts !== null; parts = await body.read()) out.push(...parts.map((part) => Buffer.from(part)));
    } catch (error) {
      return { out: Buffer.concat(out), error };
    }
    return { out: Buffer.concat(out), error: null };
  }

  it('cuts a stream that puts the start of a secret where a CRC would be and the rest after it', async () => {
    const secret = 'AKIAEXAMPLESECRETKEYID';
    // Framed as a message whose "CRC" is the secret's first 4 bytes, then the rest of the secret as the next bytes.
    const forged = [message('{"delta":"x"}', [...Buffer.from(secret.slice(0, 4))]), Buffer.from(`${secret.slice(4)} and more`)];
    const { out, error } = await through(secret, forged);
    expect(error).toMatchObject({ code: 'upstream_bad_response' });
    expect(out.toString('latin1')).not.toContain(secret.slice(4));
    expect(out.toString('latin1')).not.toContain(secret);
  });

  it('keeps holding a tail longer than a CRC at a boundary: a secret across it is replaced whole', async () => {
    const secret = 'AKIAEXAMPLESECRETKEYID';
    // The message's content ends with the secret's first 8 bytes, its CRC is the next 4: 12 bytes held back.
    const first = message(`{"delta":"x"}${secret.slice(0, 8)}`, [...Buffer.from(secret.slice(8, 12))]);
    const { out, error } = await through(secret, [first, Buffer.from(secret.slice(12))]);
    expect(error).toBeNull();
    expect(out.toString('latin1')).not.toContain(secret);
    expect(out.toString('latin1')).toContain('[REDACTED]');
    // An honest stream whose content ends in letters loses nothing: the held bytes go with the next message.
    const honest = [message('{"delta":"x"}abcdefgh', [...Buffer.from('ijkl')]), message('{"delta":"y"}')];
    const passed = await through(secret, honest);
    expect(passed.error).toBeNull();
    expect(passed.out.equals(Buffer.concat(honest))).toBe(true);
  });
});
