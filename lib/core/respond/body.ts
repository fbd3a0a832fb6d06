import { finished, pipeline, Transform, type Readable, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { KeywardError } from '../errors';
import type { StreamScrubber } from './scrub-stream';
import type { EventStreamBoundaries } from './event-stream';
import { streamedTo } from './streamed-garbage';

export type StreamOutcome = 'complete' | 'aborted' | 'error';

/**
 * Undoes the upstream's content-encoding. Keyward asks for `identity`, but upstreams may compress anyway,
 * and Next drops `content-encoding` from handler responses, so a compressed body passed on would be garbage.
 * A compressed body is cut off once its decoded size passes `maxDecodedBytes`: 1.6 KB of brotli can expand
 * to 1 GiB (a decompression bomb). An identity body costs the upstream every byte it sends, so it is not
 * capped here (downloads and long SSE streams pass whole).
 */
export function decodeBody(body: Readable, encoding: string | undefined, maxDecodedBytes: number): Readable {
  const value = (encoding ?? 'identity').trim().toLowerCase();
  if (value === '' || value === 'identity') return body;
  const decoder =
    value === 'gzip' || value === 'x-gzip'
      ? zlib.createGunzip()
      : value === 'deflate'
        ? new InflateEitherForm()
        : value === 'br'
          ? zlib.createBrotliDecompress()
          : null;
  if (!decoder) {
    discardBody(body);
    throw new KeywardError('upstream_bad_response');
  }
  // What the decoder fails with of its own is the body's fault, whatever its code (zlib's Z_…, brotli's
  // ERR__ERROR_…); not what the upstream body failed with, which pipeline hands on to the decoder after it.
  const upstreamErrors = new WeakSet<object>();
  body.on('error', (error) => upstreamErrors.add(error));
  decoder.on('error', (error) => {
    if (!upstreamErrors.has(error)) decodingErrors.add(error);
  });
  // An error or early end anywhere destroys every stage, the upstream body (and its connection) included.
  return pipeline(body, decoder, capBytes(maxDecodedBytes), () => {});
}

/** Errors a content decoder failed with (corrupt compressed data): `upstream_bad_response`, not a broken upstream. */
const decodingErrors = new WeakSet<object>();

/** Passes chunks on until more than `maxBytes` went through, then fails the stream with a Keyward error. */
function capBytes(maxBytes: number): Transform {
  let total = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      total += chunk.length;
      if (total <= maxBytes) return callback(null, chunk);
      callback(
        new KeywardError('upstream_bad_response', {
          message:
            'The upstream response is larger than this route allows once decompressed (maxDecodedResponseBytes).',
        }),
      );
    },
  });
}

/**
 * `Content-Encoding: deflate` means deflate inside a zlib wrapper (RFC 9110 §8.4.1.2), yet some servers send
 * raw deflate, and browsers accept both. The first two bytes tell them apart: a zlib header has CM = 8 and
 * (CMF × 256 + FLG) divisible by 31 (RFC 1950 §2.2). The inner inflater is paused while the reader is full,
 * so a small input cannot pile up its whole expansion in memory.
 */
class InflateEitherForm extends Transform {
  private inflater: zlib.Inflate | zlib.InflateRaw | null = null;
  private head: Buffer = Buffer.alloc(0);

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (!this.inflater) {
      this.head = Buffer.concat([this.head, chunk]);
      if (this.head.length < 2) return callback();
      chunk = this.head;
      this.start(isZlibHeader(this.head[0]!, this.head[1]!));
    }
    this.inflater!.write(chunk, () => callback());
  }

  override _flush(callback: TransformCallback): void {
    if (!this.inflater && this.head.length === 0) return callback(); // an empty body stays empty
    if (!this.inflater) this.start(false).write(this.head);
    // finished(), not once('end'): bytes after the end of the deflate stream make the inflater end while they are
    // written, before this runs, and a listener added now would wait for an 'end' already emitted, forever.
    finished(this.inflater!, { writable: false }, (error) => callback(error ?? null));
    this.inflater!.end();
  }

  override _read(size: number): void {
    this.inflater?.resume();
    super._read(size);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.inflater?.destroy();
    callback(error);
  }

  private start(wrapped: boolean): zlib.Inflate | zlib.InflateRaw {
    const inflater = wrapped ? zlib.createInflate() : zlib.createInflateRaw();
    inflater.on('data', (data: Buffer) => {
      if (!this.push(data)) inflater.pause();
    });
    inflater.on('error', (error) => this.destroy(error));
    this.inflater = inflater;
    return inflater;
  }
}

function isZlibHeader(cmf: number, flg: number): boolean {
  return (cmf & 0x0f) === 8 && cmf >> 4 <= 7 && (cmf * 256 + flg) % 31 === 0;
}

/**
 * Closes an upstream body that will not be read. undici's body emits an 'error' (RequestAbortedError) when
 * destroyed before its end; with no listener that is an uncaught exception, which takes the process down.
 */
export function discardBody(body: Readable): void {
  body.on('error', () => {});
  body.destroy();
}

/**
 * The response body on its way to the client: the upstream body (a Node stream) through the scrubber, read
 * chunk by chunk by whichever door serves the call. A route handler needs a web stream for its `Response`
 * (`stream()`); the fast lane (lib/node/response.ts) reads the chunks directly (`read()`), which spares it a
 * web stream, its controller and a promise per chunk (issue 12, measured with `npm run bench`). Both are the
 * same reads: each chunk is handed on as soon as it arrives (SSE stays unbuffered); cancelling (the client went
 * away) destroys the upstream body, which closes the upstream request. `onDone` is called exactly once, with
 * the error the client's stream ended with, if any.
 */
export class ProxiedBody {
  private readonly iterator: AsyncIterator<Buffer>;
  private bytes = 0;
  /** Bytes read from the upstream (after decoding), before scrubbing. */
  private received = 0;
  private finished = false;
  /** What `readAhead` read, for the first `read` (undefined: nothing read ahead). */
  private ahead: Uint8Array[] | null | undefined = undefined;

  constructor(
    private readonly source: Readable,
    private readonly scrubber: StreamScrubber | null,
    private readonly onDone: (outcome: StreamOutcome, bytes: number, error: KeywardError | null) => void,
    /** Sees every chunk sent to the client (after scrubbing), e.g. to read the usage an upstream reports. */
    private readonly tap?: { push(chunk: Uint8Array): void } | null,
    /** For a framed body (AWS event stream): where messages end, so that the scrubber holds nothing back there. */
    private readonly boundaries?: EventStreamBoundaries | null,
    /** How long the client may leave handed-out pieces unread before the call is cut (`stalled`); 0: no limit. */
    private readonly stallMs = 0,
  ) {
    this.iterator = source[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  /**
   * The client stopped reading for `stallMs` (the route's `timeoutMs`) after pieces were handed to it: the call
   * was cut, the upstream body destroyed (its pooled connection freed) and the call recorded as aborted.
   * Without it, a client that stops reading would hold an upstream connection for ever: undici's body timeout
   * does not run while its reader is paused, and a server's socket has no write deadline.
   */
  stalled = false;
  /** Armed while handed-out pieces wait for the client's next read; one timer per body, refreshed. */
  private stallTimer: NodeJS.Timeout | null = null;
  private awaitingClient = false;
  private readonly cutListeners: Array<() => void> = [];
  /** Resolved by `finish` for `ended` (made only when asked for: the fast lane never asks). */
  private endedResolve: (() => void) | null = null;
  private endedPromise: Promise<void> | null = null;

  /** Called once if the call is cut (the client stalled, see `stalled`, or `cut`): the door ends the client's response. */
  onCut(listener: () => void): void {
    this.cutListeners.push(listener);
  }

  /** Resolves once the body ended, failed or was cut or cancelled: the call's record (step 15) is made then. */
  ended(): Promise<void> {
    if (this.finished) return Promise.resolve();
    this.endedPromise ??= new Promise<void>((resolve) => (this.endedResolve = resolve));
    return this.endedPromise;
  }

  /** Pieces were handed out: the client's next read is due within `stallMs`. */
  private handedOut(): void {
    if (this.stallMs <= 0 || this.finished) return;
    this.awaitingClient = true;
    if (this.stallTimer) this.stallTimer.refresh();
    else this.stallTimer = setTimeout(() => this.stall(), this.stallMs).unref();
  }

  private stall(): void {
    if (!this.awaitingClient || this.finished) return;
    this.stalled = true;
    this.cut();
  }

  /**
   * Ends the call now, whatever the client does (it stalled, or the server is stopping: lib/core/shutdown.ts): the
   * upstream body is destroyed, the call recorded as aborted, and the door ends the client's response (`onCut`).
   */
  cut(): void {
    if (this.finished) return;
    this.source.destroy();
    this.finish('aborted');
    for (const listener of this.cutListeners) listener();
  }

  /**
   * The next pieces to send (one or more, never empty), or null once the body is complete. Throws the
   * KeywardError the body failed with (then `onDone` has had it). One read at a time.
   */
  async read(): Promise<Uint8Array[] | null> {
    this.awaitingClient = false;
    if (this.ahead !== undefined) {
      const parts = this.ahead;
      this.ahead = undefined;
      if (parts !== null) this.handedOut();
      return parts;
    }
    if (this.finished) return null;
    try {
      const parts = await this.next();
      if (parts !== null) this.handedOut();
      return parts;
    } catch (error) {
      const failure = asFailure(error);
      this.finish('error', failure);
      throw failure;
    }
  }

  /**
   * Reads the first pieces before the status goes out, and keeps them for the first `read`. For a compressed
   * body: data that is not what its `Content-Encoding` says fails on its first bytes, and is then answered 502
   * `upstream_bad_response` instead of a 200 whose body is cut before it starts. Throws that KeywardError
   * without `onDone` (the caller refuses the call, which records it); the upstream body is destroyed.
   */
  async readAhead(): Promise<void> {
    try {
      this.ahead = await this.next();
    } catch (error) {
      this.finished = true;
      this.source.destroy();
      throw asFailure(error);
    }
  }

  private async next(): Promise<Uint8Array[] | null> {
    const { scrubber, tap, boundaries } = this;
    for (;;) {
      const { value, done } = await this.iterator.next();
      if (done) {
        const tail = scrubber?.flush();
        this.finish('complete', null, tail);
        return tail && tail.length > 0 ? [tail] : null;
      }
      streamedTo(this.received, (this.received += value.length));
      // Before any of this chunk goes out: it throws when the chunk breaks the framing after held bytes went.
      const atBoundary = scrubber !== null && boundaries != null && boundaries.endsAtBoundary(value);
      // The scrubber's pieces go on as they are: a byte held back from the previous chunk comes out in
      // front of this one without copying the chunk behind it.
      const parts = scrubber ? scrubber.pushParts(value) : [value];
      if (atBoundary && boundaries.mayRelease(scrubber.heldBytes)) {
        const held = scrubber.flush();
        if (held.length > 0) parts.push(held);
      }
      if (parts.length === 0) continue;
      for (const out of parts) {
        this.bytes += out.length;
        tap?.push(out);
      }
      return parts;
    }
  }

  /** The client went away: the upstream body is destroyed and the call recorded as aborted (once). */
  cancel(): void {
    this.source.destroy();
    this.finish('aborted');
  }

  /** The same reads as a web stream, for a `Response`. */
  stream(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.onCut(() => {
          try {
            // A stop's cut is an abort, as Next reads one (it destroys the response and logs nothing); a stalled
            // client's is Keyward's failure to deliver, logged.
            controller.error(this.stalled ? new KeywardError('upstream_unreachable') : new DOMException('The call was cut.', 'AbortError'));
          } catch {
            // already closed
          }
        });
      },
      pull: async (controller) => {
        let parts: Uint8Array[] | null;
        try {
          parts = await this.read();
        } catch (error) {
          controller.error(error);
          return;
        }
        if (parts === null) return controller.close();
        for (const part of parts) controller.enqueue(part);
        if (this.finished) controller.close(); // the scrubber's tail, sent with the end
      },
      cancel: () => this.cancel(),
    });
  }

  private finish(outcome: StreamOutcome, error: KeywardError | null = null, tail?: Uint8Array): void {
    if (this.finished) return;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    if (tail && tail.length > 0) {
      this.bytes += tail.length;
      this.tap?.push(tail);
    }
    this.finished = true;
    this.onDone(outcome, this.bytes, error);
    this.endedResolve?.();
  }
}

/**
 * What a body failed with, as the client may learn it. Keyward's own errors (the decoded-size cap) carry fixed
 * messages. Any other cause may carry the upstream URL: the client only learns that the stream broke.
 */
function asFailure(error: unknown): KeywardError {
  return error instanceof KeywardError
    ? error
    : new KeywardError(typeof error === 'object' && error !== null && decodingErrors.has(error) ? 'upstream_bad_response' : 'upstream_unreachable');
}
