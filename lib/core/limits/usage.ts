/** JSON bodies are parsed for usage up to this size; SSE keeps this much of its end. */
const MAX_JSON_BYTES = 1024 * 1024;
const SSE_TAIL_BYTES = 64 * 1024;

/** Reads a call's usage, in budget units, from one parsed JSON value (a body, or one event); null if absent. */
export type UsageRead = (value: unknown) => number | null;

/** A model's price per token, in budget units (README "Budgets from a price table"). */
export interface TokenPrice {
  readonly input: number;
  readonly output: number;
  /** Prices of every token of a call whose input tokens pass `above` (long-context pricing). */
  readonly longContext?: { readonly above: number; readonly input: number; readonly output: number };
}

/**
 * The prices a call pays for `inputTokens` input tokens in all (reported input and input reported apart): its
 * model's, or its long-context ones past their threshold.
 */
export function ratesFor(price: TokenPrice, inputTokens: number): { readonly input: number; readonly output: number } {
  return price.longContext && inputTokens > price.longContext.above ? price.longContext : price;
}

/**
 * Reads the usage an upstream reports, for settling a budget: a numeric field of a JSON response
 * (`usage.total_tokens`; the first of several paths that holds a number), or of the last Server-Sent Event
 * that carries it (OpenAI-style streams put usage in the final chunk), or, priced (`pricedUsage`), the input
 * and output tokens of that response or event. Null when the response did not report it.
 */
export class UsageReader {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private overflow = false;
  /** SSE: chunks before `head` are dropped (shifting each would cost the array's length), `chunks[head]` is at
   * stream offset `start`; where events begin (after a blank line), and the last two bytes seen. */
  private head = 0;
  private start = 0;
  private readonly eventStarts: number[] = [];
  private before = [-1, -1];
  private readonly read: UsageRead;
  private readonly mode: 'json' | 'sse' | 'none';

  constructor(usage: { readonly json: string | readonly string[] } | UsageRead, contentType: string) {
    this.read = typeof usage === 'function' ? usage : numberAt(typeof usage.json === 'string' ? [usage.json] : usage.json);
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
    if (this.mode === 'sse') this.keepTail(chunk);
  }

  /**
   * SSE: drops whole chunks from the front, keeping from the start of the event that holds the last SSE_TAIL_BYTES:
   * the event with the usage may be long (OpenAI Responses' `response.completed` repeats the whole response, its
   * instructions included), and one whose start was dropped would not parse. At most MAX_JSON_BYTES more is kept.
   */
  private keepTail(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    const end = this.start + this.size;
    const offset = end - chunk.byteLength;
    // An event begins after `\n\n` or `\n\r\n` (result() splits on /\r?\n\r?\n/), found across chunk cuts too.
    for (let i = chunk.indexOf(0x0a); i !== -1; i = chunk.indexOf(0x0a, i + 1)) {
      const back1 = i >= 1 ? chunk[i - 1]! : this.before[1]!;
      const back2 = i >= 2 ? chunk[i - 2]! : i === 1 ? this.before[1]! : this.before[0]!;
      if (back1 === 0x0a || (back1 === 0x0d && back2 === 0x0a)) this.eventStarts.push(offset + i + 1);
    }
    this.before = chunk.byteLength >= 2 ? [chunk[chunk.byteLength - 2]!, chunk[chunk.byteLength - 1]!] : [this.before[1]!, chunk[0]!];
    let keepFrom = this.start;
    for (const at of this.eventStarts) {
      if (at > end - SSE_TAIL_BYTES) break;
      keepFrom = at;
    }
    keepFrom = Math.max(keepFrom, end - SSE_TAIL_BYTES - MAX_JSON_BYTES);
    while (this.chunks.length - this.head > 1 && this.start + this.chunks[this.head]!.byteLength <= keepFrom) {
      const dropped = this.chunks[this.head++]!.byteLength;
      this.start += dropped;
      this.size -= dropped;
    }
    if (this.head >= 1024 && this.head * 2 >= this.chunks.length) {
      this.chunks.splice(0, this.head);
      this.head = 0;
    }
    const stale = this.eventStarts.findIndex((at) => at >= keepFrom);
    this.eventStarts.splice(0, stale === -1 ? this.eventStarts.length : stale);
  }

  result(): number | null {
    if (this.mode === 'none' || this.overflow) return null;
    const text = Buffer.concat(this.head === 0 ? this.chunks : this.chunks.slice(this.head)).toString('utf8');
    if (this.mode === 'json') return this.parse(text, true);
    // Events are separated by a blank line; an event's data is its `data:` lines joined with "\n"
    // (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
    const events = text.split(/\r?\n\r?\n/);
    for (let i = events.length - 1; i >= 0; i--) {
      const data = events[i]!
        .split(/\r?\n/)
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5));
      if (data.length === 0) continue;
      const value = this.parse(data.join('\n'));
      if (value !== null) return value;
    }
    return null;
  }

  /**
   * `body`: a whole JSON body, which may be an array of the API's answers (Gemini's `:streamGenerateContent`
   * without `alt=sse` sends its chunks so): read from the last element that carries the usage, when the array
   * itself does not.
   */
  private parse(text: string, body = false): number | null {
    try {
      const value: unknown = JSON.parse(text);
      const units = this.read(value);
      if (units !== null || !body || !Array.isArray(value)) return units;
      for (let i = value.length - 1; i >= 0; i--) {
        const found = this.read(value[i]);
        if (found !== null) return found;
      }
      return null;
    } catch {
      return null;
    }
  }
}

/** The first of these dotted paths that holds a usable number, as whole units. */
export function numberAt(paths: readonly string[]): UsageRead {
  const split = paths.map((path) => path.split('.'));
  return (value) => {
    for (const path of split) {
      const units = toUnits(at(value, path));
      if (units !== null) return units;
    }
    return null;
  };
}

/** The sum of these dotted paths' numbers (an absent one counts 0), as whole units; null when none is there. */
export function sumAt(paths: readonly string[]): UsageRead {
  const readers = paths.map((path) => numberAt([path]));
  return (value) => {
    const found = readers.map((read) => read(value)).filter((units): units is number => units !== null);
    return found.length === 0 ? null : toUnits(found.reduce((total, units) => total + units, 0));
  };
}

export interface PricedPaths {
  readonly inputTokens: readonly string[];
  /** Input reported apart (a prompt cache), each at `times` the input price. */
  readonly extraInputTokens: readonly { readonly path: string; readonly times: number }[];
  /** Absent: the route has no output (embeddings); its input must then be reported. */
  readonly outputTokens?: readonly string[];
}

/**
 * Units from a price table: reported input tokens × input price + output tokens × output price, read from the
 * same body or event. Output tokens must be reported (where the route has output); input tokens absent from it
 * are charged at the bound reserved for them (Anthropic streams report them in their first event, long before
 * the last). A call whose input tokens in all (the input, and every entry of input reported apart whose share is
 * positive: a negative one is a breakdown of another entry's tokens) pass the long-context threshold pays the
 * long-context prices for all its tokens.
 */
export function pricedUsage(paths: PricedPaths, price: TokenPrice, inputBound: number): UsageRead {
  const input = numberAt(paths.inputTokens);
  const extra = paths.extraInputTokens.map(({ path, times }) => ({ read: numberAt([path]), times }));
  const output = paths.outputTokens ? numberAt(paths.outputTokens) : null;
  return (value) => {
    const out = output ? output(value) : 0;
    const reportedInput = input(value);
    if (out === null || (output === null && reportedInput === null)) return null;
    const inputTokens = reportedInput ?? inputBound;
    let extraInput = 0;
    let allInput = inputTokens;
    for (const { read, times } of extra) {
      const tokens = read(value) ?? 0;
      extraInput += tokens * times;
      if (times > 0) allInput += tokens;
    }
    const rates = ratesFor(price, allInput);
    return toUnits((inputTokens + extraInput) * rates.input + out * rates.output);
  };
}

/** The value at a dotted path of parsed JSON (own properties only); undefined when absent. */
function at(root: unknown, path: readonly string[]): unknown {
  let node = root;
  for (const key of path) {
    if (node === null || typeof node !== 'object' || !Object.hasOwn(node, key)) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

/** A reported amount as whole units (rounded up), or null if it is not a usable number. */
export function toUnits(value: unknown): number | null {
  const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) return null;
  return Math.min(Math.ceil(n), Number.MAX_SAFE_INTEGER);
}
