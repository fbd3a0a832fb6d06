import { KeywardError } from '../errors';
import { streamedTo } from '../respond/streamed-garbage';

/** Methods whose calls are forwarded without a body (a route for one cannot declare a body contract). */
export const BODYLESS_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'DELETE']);

export interface CappedBody {
  readonly iterable: AsyncIterable<Uint8Array>;
  /** Bytes read from the client so far. */
  bytes(): number;
  /** Set when the body went past its cap, so the caller can answer 413 whatever the HTTP client reports. */
  exceeded(): boolean;
}

/**
 * Streams the client's body to the upstream without buffering it, stopping at `maxBytes` (413) and when
 * the client goes quiet for `idleMs` (Node would otherwise keep a dripping body open for minutes).
 */
export function capRequestBody(body: ReadableStream<Uint8Array>, maxBytes: number, idleMs: number): CappedBody {
  let total = 0;
  let tooLarge = false;
  async function* iterate(): AsyncGenerator<Uint8Array> {
    const reader = body.getReader();
    let timer: NodeJS.Timeout | undefined;
    try {
      for (;;) {
        const idle = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new KeywardError('bad_request', { message: 'The request body stalled.' })), idleMs);
        });
        const { value, done } = await Promise.race([reader.read().catch(brokenOff), idle]);
        clearTimeout(timer);
        if (done) return;
        streamedTo(total, total + value.byteLength);
        total += value.byteLength;
        if (total > maxBytes) {
          tooLarge = true;
          throw new KeywardError('payload_too_large');
        }
        yield value;
      }
    } finally {
      clearTimeout(timer);
      reader.cancel().catch(() => {});
    }
  }
  return { iterable: iterate(), bytes: () => total, exceeded: () => tooLarge };
}

/**
 * The client's body stream failed: the client went away mid-upload (Node's `aborted`, ECONNRESET, or Next's
 * ResponseAborted). A 400 the pipeline records as `aborted` (lib/core/pipeline.ts refuse), never a 500.
 */
function brokenOff(error: unknown): never {
  if (error instanceof KeywardError) throw error;
  throw clientClosed(error);
}

/** The error of a call whose client went away before its answer. */
export function clientClosed(cause?: unknown): KeywardError {
  return new KeywardError('bad_request', { message: 'The client closed the request.', cause, recordedAs: 'client_closed' });
}

/** Whether `error` is `clientClosed`'s. */
export function isClientClosed(error: unknown): error is KeywardError {
  return error instanceof KeywardError && error.recordedAs === 'client_closed';
}

/** Reads a whole (small, capped) body for routes whose JSON contract must see it before forwarding. */
export async function readCappedBody(body: CappedBody): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of body.iterable) chunks.push(chunk);
  return Buffer.concat(chunks);
}
