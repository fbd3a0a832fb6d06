import { pipeline, type Readable } from 'node:stream';
import zlib from 'node:zlib';
import { KeywardError } from '../errors';
import type { StreamScrubber } from './scrub-stream';

export type StreamOutcome = 'complete' | 'aborted' | 'error';

/**
 * Undoes the upstream's content-encoding. Keyward asks for `identity`, but upstreams may compress anyway,
 * and Next drops `content-encoding` from handler responses, so a compressed body passed on would be garbage.
 */
export function decodeBody(body: Readable, encoding: string | undefined): Readable {
  const value = (encoding ?? 'identity').trim().toLowerCase();
  if (value === '' || value === 'identity') return body;
  const decoder =
    value === 'gzip' || value === 'x-gzip'
      ? zlib.createGunzip()
      : value === 'deflate'
        ? zlib.createInflate()
        : value === 'br'
          ? zlib.createBrotliDecompress()
          : null;
  if (!decoder) {
    discardBody(body);
    throw new KeywardError('upstream_bad_response');
  }
  return pipeline(body, decoder, () => {});
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
 * Adapts the upstream body (a Node stream) to the web stream a Response needs, through the scrubber.
 * Each chunk is handed on as soon as it arrives (SSE stays unbuffered); cancelling (the browser went away)
 * destroys the upstream body, which closes the upstream request. `onDone` is called exactly once.
 */
export function toResponseStream(
  source: Readable,
  scrubber: StreamScrubber | null,
  onDone: (outcome: StreamOutcome, bytes: number) => void,
  /** Sees every chunk sent to the client (after scrubbing), e.g. to read the usage an upstream reports. */
  tap?: { push(chunk: Uint8Array): void } | null,
): ReadableStream<Uint8Array> {
  const iterator = source[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let bytes = 0;
  let finished = false;
  const finish = (outcome: StreamOutcome) => {
    if (finished) return;
    finished = true;
    onDone(outcome, bytes);
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        for (;;) {
          const { value, done } = await iterator.next();
          if (done) {
            const tail = scrubber?.flush();
            if (tail && tail.length > 0) {
              bytes += tail.length;
              tap?.push(tail);
              controller.enqueue(tail);
            }
            controller.close();
            finish('complete');
            return;
          }
          const out = scrubber ? scrubber.push(value) : value;
          if (out.length === 0) continue;
          bytes += out.length;
          tap?.push(out);
          controller.enqueue(out);
          return;
        }
      } catch {
        // The cause may carry the upstream URL; the client only learns that the stream broke.
        controller.error(new KeywardError('upstream_unreachable'));
        finish('error');
      }
    },
    cancel() {
      source.destroy();
      finish('aborted');
    },
  });
}
