import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { KeywardError } from '../../../lib/core/errors';
import { decodeBody, ProxiedBody, type StreamOutcome } from '../../../lib/core/respond/body';
import { StreamScrubber } from '../../../lib/core/respond/scrub-stream';

const TEXT = Buffer.from('{"items":[' + Array.from({ length: 2000 }, (_, i) => `{"id":${i},"name":"item ${i}"}`).join(',') + ']}');
const MiB = 1024 * 1024;

/** A body arriving in pieces of `size` bytes, as a socket may cut it. */
function chunked(data: Buffer, size: number): Readable {
  const pieces: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) pieces.push(data.subarray(i, i + size));
  return Readable.from(pieces, { objectMode: false });
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Reads until the stream ends or fails; returns the byte count and the error, if any. */
async function drain(stream: Readable): Promise<{ bytes: number; error: unknown }> {
  let bytes = 0;
  try {
    for await (const chunk of stream) bytes += (chunk as Buffer).length;
    return { bytes, error: null };
  } catch (error) {
    return { bytes, error };
  }
}

describe('decodeBody: Content-Encoding deflate in both forms browsers accept', () => {
  it('inflates zlib-wrapped deflate (RFC 9110) and raw deflate alike', async () => {
    const wrapped = zlib.deflateSync(TEXT);
    const raw = zlib.deflateRawSync(TEXT);
    expect(wrapped[0]).toBe(0x78);
    expect((await readAll(decodeBody(chunked(wrapped, 4096), 'deflate', MiB))).equals(TEXT)).toBe(true);
    expect((await readAll(decodeBody(chunked(raw, 4096), 'deflate', MiB))).equals(TEXT)).toBe(true);
  });

  it('ends when bytes follow the end of the deflate stream (a stray newline, a second stream), in one chunk or apart', async () => {
    const cases: Buffer[][] = [
      [Buffer.concat([zlib.deflateSync(TEXT), Buffer.from('\n')])],
      [zlib.deflateSync(TEXT), Buffer.from('\n')],
      [Buffer.concat([zlib.deflateRawSync(TEXT), Buffer.from('junk')])],
      [zlib.deflateSync(TEXT), zlib.deflateSync(Buffer.from('second'))],
    ];
    for (const pieces of cases) {
      const read = drain(decodeBody(Readable.from(pieces, { objectMode: false }), 'deflate', MiB));
      // Bounded: before the fix the decoded body never ended (no deadline applies once the upstream is done).
      const outcome = await Promise.race([read, new Promise<'pending'>((resolve) => setTimeout(() => resolve('pending'), 5_000))]);
      expect(outcome).toEqual({ bytes: TEXT.length, error: null });
    }
  });

  it('tells them apart even when the first two bytes arrive one at a time', async () => {
    for (const data of [zlib.deflateSync(TEXT), zlib.deflateRawSync(TEXT), zlib.deflateSync(TEXT, { level: 1 })]) {
      const body = Readable.from([data.subarray(0, 1), data.subarray(1, 2), data.subarray(2, 3), data.subarray(3)], { objectMode: false });
      expect((await readAll(decodeBody(body, 'deflate', MiB))).equals(TEXT)).toBe(true);
    }
  });

  it('passes an empty body on empty, and fails on corrupt data', async () => {
    expect((await readAll(decodeBody(Readable.from([], { objectMode: false }), 'deflate', MiB))).length).toBe(0);
    const { error } = await drain(decodeBody(chunked(Buffer.from('this is not deflate at all, not even raw'), 8), 'deflate', MiB));
    expect((error as { code?: string }).code).toMatch(/^Z_/);
  });

  it('still decodes gzip and br, and refuses an unknown coding', async () => {
    expect((await readAll(decodeBody(chunked(zlib.gzipSync(TEXT), 1000), 'gzip', MiB))).equals(TEXT)).toBe(true);
    expect((await readAll(decodeBody(chunked(zlib.brotliCompressSync(TEXT), 1000), 'br', MiB))).equals(TEXT)).toBe(true);
    expect(() => decodeBody(Readable.from([]), 'compress', MiB)).toThrow(KeywardError);
  });
});

describe('decodeBody: the decoded-size cap', () => {
  const bombs = {
    br: zlib.brotliCompressSync(Buffer.alloc(16 * MiB)),
    gzip: zlib.gzipSync(Buffer.alloc(16 * MiB)),
    'deflate (zlib)': zlib.deflateSync(Buffer.alloc(16 * MiB)),
    'deflate (raw)': zlib.deflateRawSync(Buffer.alloc(16 * MiB)),
  };

  it.each(Object.entries(bombs))('%s: 16 MiB from a few KB is cut after the 1 MiB cap', async (name, bomb) => {
    expect(bomb.length).toBeLessThan(64 * 1024);
    const { bytes, error } = await drain(decodeBody(chunked(bomb, 1024), name.split(' ')[0], MiB));
    expect(error).toBeInstanceOf(KeywardError);
    expect((error as KeywardError).code).toBe('upstream_bad_response');
    expect((error as KeywardError).message).toContain('maxDecodedResponseBytes');
    expect(bytes).toBeLessThanOrEqual(MiB);
  });

  it('lets a body of exactly the cap through', async () => {
    const exact = Buffer.alloc(MiB, 0x61);
    expect((await readAll(decodeBody(chunked(zlib.gzipSync(exact), 4096), 'gzip', MiB))).length).toBe(MiB);
  });

  it('destroys the upstream body when the cap is hit', async () => {
    const body = chunked(zlib.gzipSync(Buffer.alloc(8 * MiB)), 512);
    await drain(decodeBody(body, 'gzip', 64 * 1024));
    expect(body.destroyed).toBe(true);
  });

  it('does not cap an identity body (it costs the upstream every byte it sends)', async () => {
    const body = Readable.from([Buffer.alloc(MiB), Buffer.alloc(MiB)], { objectMode: false });
    expect(decodeBody(body, undefined, 1024)).toBe(body);
    expect(decodeBody(body, 'identity', 1024)).toBe(body);
  });
});

describe('ProxiedBody.stream(): how a failed body ends', () => {
  async function run(source: Readable): Promise<{ outcome: StreamOutcome; error: KeywardError | null; clientError: unknown }> {
    let done: { outcome: StreamOutcome; error: KeywardError | null } | null = null;
    const stream = new ProxiedBody(source, null, (outcome, _bytes, error) => (done = { outcome, error })).stream();
    let clientError: unknown = null;
    try {
      for await (const chunk of stream as unknown as AsyncIterable<Uint8Array>) void chunk;
    } catch (error) {
      clientError = error;
    }
    return { ...done!, clientError };
  }

  it('the cap: the client stream errors with upstream_bad_response, reported to onDone', async () => {
    const result = await run(decodeBody(chunked(zlib.brotliCompressSync(Buffer.alloc(4 * MiB)), 256), 'br', 64 * 1024));
    expect(result.outcome).toBe('error');
    expect(result.error?.code).toBe('upstream_bad_response');
    expect(result.clientError).toBe(result.error);
  });

  it('corrupt compressed data: upstream_bad_response; a broken upstream: upstream_unreachable (never its message)', async () => {
    const corrupt = await run(decodeBody(chunked(Buffer.from('not gzip at all, just text'), 4), 'gzip', MiB));
    expect(corrupt).toMatchObject({ outcome: 'error', error: { code: 'upstream_bad_response' } });
    // Every decoder's: brotli's errors carry codes of their own (ERR__ERROR_FORMAT_…), not zlib's Z_….
    for (const [encoding, bytes] of [
      ['br', Buffer.from('not brotli at all, just text')],
      ['br', zlib.gzipSync('gzip labelled br')],
      ['deflate', Buffer.from('not deflate either')],
    ] as const) {
      const failed = await run(decodeBody(chunked(bytes, 4), encoding, MiB));
      expect(failed, encoding).toMatchObject({ outcome: 'error', error: { code: 'upstream_bad_response' } });
    }
    // An upstream that breaks inside a compressed body is still a broken upstream, whichever decoder it fed.
    for (const encoding of ['gzip', 'br', 'deflate'] as const) {
      const compressed = encoding === 'gzip' ? zlib.gzipSync(Buffer.alloc(MiB)) : encoding === 'br' ? zlib.brotliCompressSync(Buffer.alloc(MiB)) : zlib.deflateSync(Buffer.alloc(MiB));
      let sent = false;
      const breaking = new Readable({
        read() {
          if (sent) return this.destroy(new Error('socket hang up'));
          sent = true;
          this.push(compressed.subarray(0, compressed.length >> 1));
        },
      });
      const cut = await run(decodeBody(breaking, encoding, 4 * MiB));
      expect(cut, encoding).toMatchObject({ outcome: 'error', error: { code: 'upstream_unreachable' } });
    }
    const broken = new Readable({
      read() {
        this.destroy(new Error('socket hang up http://10.0.0.1/v1/?api_key=secret'));
      },
    });
    const result = await run(broken);
    expect(result).toMatchObject({ outcome: 'error', error: { code: 'upstream_unreachable' } });
    expect(String((result.clientError as Error).message)).not.toContain('api_key');
  });
});

describe('ProxiedBody: the fast lane reads the same body directly', () => {
  const SECRET = 'sk-body-test-0123456789abcdef';
  const pieces = ['head ', SECRET.slice(0, 9), `${SECRET.slice(9)} middle `, SECRET.slice(0, 5)];

  function body(source: Readable) {
    const done: Array<{ outcome: StreamOutcome; bytes: number; error: KeywardError | null }> = [];
    const seen: Uint8Array[] = [];
    const proxied = new ProxiedBody(source, new StreamScrubber([SECRET]), (outcome, bytes, error) => done.push({ outcome, bytes, error }), {
      push: (chunk) => seen.push(chunk),
    });
    return { proxied, done, seen };
  }

  it('read() hands on the scrubbed pieces, then the held-back tail, then null; onDone once, with the bytes sent', async () => {
    const { proxied, done, seen } = body(Readable.from(pieces.map((p) => Buffer.from(p)), { objectMode: false }));
    const out: Buffer[] = [];
    for (let parts = await proxied.read(); parts !== null; parts = await proxied.read()) {
      expect(parts.length).toBeGreaterThan(0);
      out.push(...parts.map((part) => Buffer.from(part)));
    }
    const text = Buffer.concat(out).toString();
    expect(text).toBe(`head [REDACTED] middle ${SECRET.slice(0, 5)}`);
    expect(done).toEqual([{ outcome: 'complete', bytes: Buffer.byteLength(text), error: null }]);
    expect(Buffer.concat(seen).toString()).toBe(text); // the usage tap saw every byte sent, the tail included
    expect(await proxied.read()).toBeNull();
    expect(done).toHaveLength(1);
  });

  it('gives the same bytes as its web stream', async () => {
    const direct = body(Readable.from(pieces.map((p) => Buffer.from(p)), { objectMode: false }));
    const viaStream = body(Readable.from(pieces.map((p) => Buffer.from(p)), { objectMode: false }));
    const a: Buffer[] = [];
    for (let parts = await direct.proxied.read(); parts; parts = await direct.proxied.read()) a.push(...parts.map((p) => Buffer.from(p)));
    const b = Buffer.from(await new Response(viaStream.proxied.stream()).arrayBuffer());
    expect(b.equals(Buffer.concat(a))).toBe(true);
    expect(viaStream.done).toEqual(direct.done);
  });

  it('cancel() destroys the upstream body and records aborted once; a failure is thrown and recorded once', async () => {
    const source = new Readable({ read() {} });
    source.push('partial ');
    const { proxied, done } = body(source);
    expect(Buffer.from((await proxied.read())![0]!).toString()).toBe('partial ');
    const pending = proxied.read();
    proxied.cancel();
    proxied.cancel();
    await pending.catch(() => null);
    expect(source.destroyed).toBe(true);
    expect(done).toEqual([{ outcome: 'aborted', bytes: 8, error: null }]);
    expect(await proxied.read()).toBeNull();

    const broken = body(new Readable({ read() { this.destroy(new Error('socket hang up http://10.0.0.1/?api_key=x')); } }));
    const error = await broken.proxied.read().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeywardError);
    expect((error as KeywardError).code).toBe('upstream_unreachable');
    expect(broken.done).toEqual([{ outcome: 'error', bytes: 0, error }]);
  });

  it('a client that leaves handed-out pieces unread for stallMs: the call is cut once, the source destroyed, recorded aborted', async () => {
    const source = new Readable({ read() {} });
    source.push('first piece ');
    const done: Array<{ outcome: StreamOutcome; bytes: number }> = [];
    const proxied = new ProxiedBody(source, null, (outcome, bytes) => done.push({ outcome, bytes }), null, null, 40);
    let told = 0;
    proxied.onCut(() => told++);
    expect(await proxied.read()).toHaveLength(1);
    // The client never asks for more.
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(proxied.stalled).toBe(true);
    expect(source.destroyed).toBe(true);
    expect(told).toBe(1);
    expect(done).toEqual([{ outcome: 'aborted', bytes: 12 }]);
    expect(await proxied.read()).toBeNull();
  });

  it('a slow upstream is not a stalled client: waiting for the upstream between reads never cuts the call', async () => {
    const source = new Readable({ read() {} });
    const done: StreamOutcome[] = [];
    const proxied = new ProxiedBody(source, null, (outcome) => done.push(outcome), null, null, 40);
    const text: string[] = [];
    const reading = (async () => {
      for (let parts = await proxied.read(); parts !== null; parts = await proxied.read()) text.push(...parts.map((p) => Buffer.from(p).toString()));
    })();
    for (const piece of ['a', 'b', 'c']) {
      source.push(piece);
      await new Promise((resolve) => setTimeout(resolve, 120)); // 3× stallMs between the upstream's pieces
    }
    source.push(null);
    await reading;
    expect(text.join('')).toBe('abc');
    expect(proxied.stalled).toBe(false);
    expect(done).toEqual(['complete']);
  });

  it('its web stream errors when the client stalls, and the upstream is let go', async () => {
    const source = new Readable({ read() {} });
    source.push('x'.repeat(1000));
    const proxied = new ProxiedBody(source, null, () => {}, null, null, 40);
    const reader = proxied.stream().getReader();
    expect((await reader.read()).value).toHaveLength(1000);
    source.push('more');
    // The stream pulls once more to fill its queue; after that, nobody reads.
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(proxied.stalled).toBe(true);
    expect(source.destroyed).toBe(true);
    await expect(reader.read()).rejects.toMatchObject({ code: 'upstream_unreachable' });
  });

  it('cut() (a stop past its drain): the source destroyed, recorded aborted once, ended() resolved, the web stream aborted mid-read', async () => {
    const source = new Readable({ read() {} });
    source.push('first piece ');
    const done: Array<{ outcome: StreamOutcome; bytes: number }> = [];
    const proxied = new ProxiedBody(source, null, (outcome, bytes) => done.push({ outcome, bytes }));
    const ended = proxied.ended();
    const reader = proxied.stream().getReader();
    expect((await reader.read()).value).toHaveLength(12);
    const next = reader.read();
    proxied.cut();
    proxied.cut();
    await ended;
    expect(source.destroyed).toBe(true);
    expect(proxied.stalled).toBe(false);
    expect(done).toEqual([{ outcome: 'aborted', bytes: 12 }]);
    // An abort, as Next reads one: the response is destroyed without an error logged.
    await expect(next).rejects.toMatchObject({ name: 'AbortError' });
    await expect(proxied.ended()).resolves.toBeUndefined();
  });

  it('readAhead() keeps the first pieces for the first read(): the same bytes and one onDone as without it', async () => {
    const { proxied, done } = body(Readable.from(pieces.map((p) => Buffer.from(p)), { objectMode: false }));
    await proxied.readAhead();
    expect(done).toEqual([]);
    const out: Buffer[] = [];
    for (let parts = await proxied.read(); parts !== null; parts = await proxied.read()) out.push(...parts.map((part) => Buffer.from(part)));
    expect(Buffer.concat(out).toString()).toBe(`head [REDACTED] middle ${SECRET.slice(0, 5)}`);
    expect(done).toEqual([{ outcome: 'complete', bytes: Buffer.concat(out).length, error: null }]);

    // A body that ends within the read-ahead: its stream still closes after its bytes.
    const short = body(Readable.from([Buffer.from('all of it')], { objectMode: false }));
    await short.proxied.readAhead();
    expect(await new Response(short.proxied.stream()).text()).toBe('all of it');
    expect(short.done).toEqual([{ outcome: 'complete', bytes: 9, error: null }]);
  });

  it('readAhead() on data that is not what its Content-Encoding says: throws upstream_bad_response, destroys the source, leaves onDone to the caller', async () => {
    const source = chunked(Buffer.from('not gzip at all, just text'), 4);
    const { proxied, done } = body(decodeBody(source, 'gzip', MiB));
    const error = await proxied.readAhead().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KeywardError);
    expect((error as KeywardError).code).toBe('upstream_bad_response');
    expect(source.destroyed).toBe(true);
    expect(await proxied.read()).toBeNull();
    proxied.cancel();
    expect(done).toEqual([]);
  });
});
