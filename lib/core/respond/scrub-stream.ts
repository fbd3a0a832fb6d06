import { formsOfSecrets, REDACTED } from '../log/scrub';

const MARKER = Buffer.from(REDACTED, 'utf8');

interface Patterns {
  readonly forms: Buffer[];
  readonly firstBytes: Set<number>;
  readonly maxLength: number;
}

const patternsCache = new WeakMap<readonly string[], Patterns>();

/** The byte patterns for a secrets list, built once per list (a service key's list lives as long as the process). */
function patternsFor(secrets: readonly string[]): Patterns {
  let patterns = patternsCache.get(secrets);
  if (!patterns) {
    // Longest first, so a form that contains another is replaced whole.
    const forms = formsOfSecrets(secrets)
      .map((form) => Buffer.from(form, 'utf8'))
      .sort((a, b) => b.length - a.length);
    patterns = {
      forms,
      firstBytes: new Set(forms.map((form) => form[0]!)),
      maxLength: forms.reduce((max, form) => Math.max(max, form.length), 0),
    };
    patternsCache.set(secrets, patterns);
  }
  return patterns;
}

/**
 * Streaming byte scrubber: replaces every form of every secret (see `secretForms` in log/scrub.ts) with a fixed marker,
 * also when a secret is split across chunks. Only the end of a chunk that could be the start of a secret
 * is held back (usually nothing), so memory stays bounded by the longest secret and SSE events still
 * leave as soon as they arrive. Hand-written because no maintained library scrubs bytes in a stream.
 */
export class StreamScrubber {
  private readonly forms: Buffer[];
  private readonly firstBytes: Set<number>;
  private readonly maxLength: number;
  private carry: Buffer = Buffer.alloc(0);

  constructor(secrets: readonly string[]) {
    ({ forms: this.forms, firstBytes: this.firstBytes, maxLength: this.maxLength } = patternsFor(secrets));
  }

  get active(): boolean {
    return this.forms.length > 0;
  }

  push(chunk: Uint8Array): Buffer {
    const input = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    return this.process(this.carry.length ? Buffer.concat([this.carry, input]) : input, false);
  }

  /** The stream ended: what was held back is scrubbed as it stands and released. */
  flush(): Buffer {
    return this.process(this.carry, true);
  }

  /**
   * Replaces every complete form (leftmost first, longest at a position). Unless the stream has ended, it holds
   * back (a) a match that a longer form could still extend in the next chunk, such as unpadded base64 before
   * its "=", and (b) a tail that could be the start of a form.
   */
  private process(data: Buffer, final: boolean): Buffer {
    this.carry = Buffer.alloc(0);
    const parts: Buffer[] = [];
    let position = 0;
    let holdFrom = -1;
    for (;;) {
      let bestIndex = -1;
      let bestLength = 0;
      for (const form of this.forms) {
        const index = data.indexOf(form, position);
        if (index !== -1 && (bestIndex === -1 || index < bestIndex)) {
          bestIndex = index;
          bestLength = form.length;
        }
      }
      if (bestIndex === -1) break;
      if (!final && this.couldGrow(data, bestIndex, bestLength)) {
        holdFrom = bestIndex;
        break;
      }
      if (bestIndex > position) parts.push(data.subarray(position, bestIndex));
      parts.push(MARKER);
      position = bestIndex + bestLength;
    }
    const end = holdFrom !== -1 ? holdFrom : final ? data.length : data.length - this.partialSuffix(data, position);
    if (end > position) parts.push(data.subarray(position, end));
    if (end < data.length) this.carry = Buffer.from(data.subarray(end));
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /** True if a longer form starts at `index` and runs past the end of `data` consistently so far. */
  private couldGrow(data: Buffer, index: number, length: number): boolean {
    const remaining = data.length - index;
    for (const form of this.forms) {
      if (form.length > length && form.length > remaining && data.compare(form, 0, remaining, index, data.length) === 0) {
        return true;
      }
    }
    return false;
  }

  /** Length of the longest suffix of data[from..] that is a proper prefix of some secret form. */
  private partialSuffix(data: Buffer, from: number): number {
    const longest = Math.min(this.maxLength - 1, data.length - from);
    for (let length = longest; length > 0; length--) {
      const start = data.length - length;
      if (!this.firstBytes.has(data[start]!)) continue;
      for (const form of this.forms) {
        if (form.length > length && data.compare(form, 0, length, start, data.length) === 0) return length;
      }
    }
    return 0;
  }
}
