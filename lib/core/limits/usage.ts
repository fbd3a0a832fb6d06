import type { CostConfig } from '../config/policy';

/** JSON bodies are parsed for usage up to this size; SSE keeps this much of its end. */
const MAX_JSON_BYTES = 1024 * 1024;
const SSE_TAIL_BYTES = 64 * 1024;

/**
 * Reads the usage an upstream reports, for settling a budget: a numeric field of a JSON response
 * (`usage.total_tokens`), or of the last Server-Sent Event that carries it (OpenAI-style streams put
 * usage in the final chunk), or a response header. Null when the response did not report it.
 */
export class UsageReader {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private overflow = false;
  private readonly path: readonly string[];
  private readonly mode: 'json' | 'sse' | 'none';

  constructor(
    usage: NonNullable<CostConfig['usage']> & { json: string },
    contentType: string,
  ) {
    this.path = usage.json.split('.');
    const type = contentType.toLowerCase();
    this.mode = type.includes('text/event-stream') ? 'sse' : type.includes('json') ? 'json' : 'none';
  }

  push(chunk: Uint8Array): void {
    if (this.mode === 'none' || this.overflow) return;
    this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    this.size += chunk.byteLength;
    if (this.mode === 'json' && this.size > MAX_JSON_BYTES) {
      this.overflow = true;
      this.chunks.length = 0;
    }
    // SSE: drop whole chunks from the front while the rest still covers the tail.
    while (this.mode === 'sse' && this.chunks.length > 1 && this.size - this.chunks[0]!.byteLength >= SSE_TAIL_BYTES) {
      this.size -= this.chunks.shift()!.byteLength;
    }
  }

  result(): number | null {
    if (this.mode === 'none' || this.overflow) return null;
    const text = Buffer.concat(this.chunks).toString('utf8');
    if (this.mode === 'json') return this.read(text);
    // Events are separated by a blank line; an event's data is its `data:` lines joined with "\n"
    // (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
    const events = text.split(/\r?\n\r?\n/);
    for (let i = events.length - 1; i >= 0; i--) {
      const data = events[i]!
        .split(/\r?\n/)
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5));
      if (data.length === 0) continue;
      const value = this.read(data.join('\n'));
      if (value !== null) return value;
    }
    return null;
  }

  private read(text: string): number | null {
    let node: unknown;
    try {
      node = JSON.parse(text);
    } catch {
      return null;
    }
    for (const key of this.path) {
      if (node === null || typeof node !== 'object' || !Object.hasOwn(node, key)) return null;
      node = (node as Record<string, unknown>)[key];
    }
    return toUnits(node);
  }
}

/** A reported amount as whole units (rounded up), or null if it is not a usable number. */
export function toUnits(value: unknown): number | null {
  const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return null;
  return Math.min(Math.ceil(n), Number.MAX_SAFE_INTEGER);
}
