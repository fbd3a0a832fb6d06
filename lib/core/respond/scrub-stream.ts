import { formsOfSecrets, REDACTED } from '../log/scrub';

const MARKER = Buffer.from(REDACTED, 'utf8');
const EMPTY = Buffer.alloc(0);
const NO_FORMS: readonly Buffer[] = [];

/**
 * The last BLOCK bytes of each window index the shift table directly (64 KiB per secrets list, built once and
 * cached with its forms): two bytes read per step measured faster here than three bytes hashed into a smaller
 * table, although two bytes tell fewer windows apart.
 */
const BLOCK = 2;
const TABLE_SIZE = 1 << 16;

/** The block bytes[end - 1 .. end] as a table index. */
function blockAt(bytes: Uint8Array, end: number): number {
  return (bytes[end - 1]! << 8) | bytes[end]!;
}

/**
 * A polynomial (Rabin-Karp) hash of bytes[start .. start + length - 1], which says which forms can start at a
 * window the shift table stopped at. Looked up by hash, a window costs the same however many forms end in its
 * block: a list per block cost a compare per form there, and the forms of 30 secrets share blocks (`\u00XX`
 * escapes end in "00"), so a body of zeros took seconds a megabyte. Where the shift table stops again within a
 * window of the last stop, the hash rolls on (`rollHash`) instead of being read again. A collision costs a
 * compare, never a miss.
 */
function windowHash(bytes: Uint8Array, start: number, length: number): number {
  let hash = 0;
  for (let i = start; i < start + length; i++) hash = (Math.imul(hash, HASH_BASE) + bytes[i]!) | 0;
  return hash;
}

/** The hash of the window one byte on: `out` leaves it, `into` joins it; `top` is HASH_BASE^(window - 1). */
function rollHash(hash: number, out: number, into: number, top: number): number {
  return (Math.imul((hash - Math.imul(out, top)) | 0, HASH_BASE) + into) | 0;
}

const HASH_BASE = 0x01000193;

interface Patterns {
  /** Every form as bytes, longest first (so a form that contains another is replaced whole). */
  readonly forms: readonly Buffer[];
  /** The shortest form's length: every match is looked for through a window of this many bytes. */
  readonly window: number;
  /** How far the window may move on, given its last BLOCK bytes (0: a form's first `window` bytes may end here). */
  readonly shift: Uint8Array;
  /** The forms by the hash of their first `window` bytes (`windowHash`), longest first. */
  readonly candidates: ReadonlyMap<number, readonly Buffer[]>;
  /** HASH_BASE^(window - 1), for `rollHash`. */
  readonly hashTop: number;
  /** 1 for a byte that a form may hold (see HELD_ALWAYS), for the held-back tail. */
  readonly inForm: Uint8Array;
  readonly maxLength: number;
}

/**
 * Where `find` ran out of bytes without a match, kept with a held-back tail so the search goes on from there when
 * the next chunk arrives instead of reading the tail again: with a long key the tail is kilobytes (up to the longest
 * form), and an upstream writing a few bytes at a time made every push search it again (about a second a MiB with
 * 16-byte chunks and a 2,000-character key). Positions count from the start of the tail.
 */
interface Resume {
  /** The last byte of the next window to look at. */
  readonly end: number;
  /** The hash of the window ending at `hashedEnd` (-1: none), to roll on from. */
  readonly hash: number;
  readonly hashedEnd: number;
  /** The first window with a candidate form too long to check before the bytes ran out (-1: none): searched again from there. */
  readonly unfit: number;
  /** The tail's length: every byte of it one a form may hold (`heldTail` need not read it again). */
  readonly clean: number;
}

/** What `find` leaves when it finds nothing, for a Resume: as Resume's, with the first and last unfit window. */
interface Scan {
  end: number;
  hash: number;
  hashedEnd: number;
  unfit: number;
  lastUnfit: number;
}

/**
 * Bytes held back at a chunk's end whatever the key: letters, digits, and what base64, percent- and
 * JSON-escapes write. With the bytes of the key's own forms, they make the set `heldTail` holds back.
 */
const HELD_ALWAYS = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_%\\.~', 'latin1');

/** By the list of forms, which formsOfSecrets keeps (and drops) per secrets list. */
const patternsCache = new WeakMap<readonly string[], Patterns>();

/**
 * The byte patterns for a secrets list, built once per list: the tables of a multi-pattern Horspool search (Wu
 * and Manber, "A fast algorithm for multi-pattern searching", 1994). One pass over the body finds the leftmost
 * match of any form, skipping up to the shortest form's length at a time, instead of one `indexOf` pass per
 * form (there are about 20 forms per secret).
 */
function patternsFor(secrets: readonly string[]): Patterns {
  const texts = formsOfSecrets(secrets);
  let patterns = patternsCache.get(texts);
  if (patterns) return patterns;
  const forms = texts.map((form) => Buffer.from(form, 'utf8')).sort((a, b) => b.length - a.length);
  const window = forms.reduce((min, form) => Math.min(min, form.length), Infinity);
  const shift = new Uint8Array(TABLE_SIZE).fill(Math.min(255, window - BLOCK + 1));
  const candidates = new Map<number, Buffer[]>();
  const inForm = new Uint8Array(256);
  for (const byte of HELD_ALWAYS) inForm[byte] = 1;
  for (const form of forms) {
    for (const byte of form) inForm[byte] = 1;
    // A block ending at offset `end` of a form's first `window` bytes lets the window move window - 1 - end.
    for (let end = BLOCK - 1; end < window; end++) {
      const block = blockAt(form, end);
      shift[block] = Math.min(shift[block]!, window - 1 - end);
    }
    const hash = windowHash(form, 0, window);
    candidates.set(hash, [...(candidates.get(hash) ?? []), form]);
  }
  let hashTop = 1;
  // No forms (no secrets): the window is Infinity, and no window is ever hashed.
  const hashedLength = forms.length > 0 ? window : 0;
  for (let i = 1; i < hashedLength; i++) hashTop = Math.imul(hashTop, HASH_BASE);
  patterns = { forms, window, shift, candidates, hashTop, inForm, maxLength: forms[0]?.length ?? 0 };
  patternsCache.set(texts, patterns);
  return patterns;
}

/**
 * `data` with every run of `minRun` bytes or more that a form of these secrets may hold (letters, digits and the
 * other bytes `heldTail` holds back) replaced by [REDACTED], and how many runs were. For text that may hold a cut
 * key (a WebSocket close reason, cut to 123 bytes): decided by byte classes only, never by whether the run is part
 * of a key, since redacting exactly the runs that match would tell a client whose text is echoed there whether its
 * guess continues the key. `onRun` sees each run redacted (a view, valid during the call).
 */
export function redactKeyLikeRuns(
  data: Buffer,
  secrets: readonly string[],
  minRun: number,
  onRun?: (run: Buffer) => void,
): { data: Buffer; runs: number } {
  const { inForm, forms } = patternsFor(secrets);
  if (forms.length === 0 || data.length < minRun) return { data, runs: 0 };
  const parts: Buffer[] = [];
  let runs = 0;
  let kept = 0;
  for (let start = 0; start < data.length; ) {
    if (inForm[data[start]!] !== 1) {
      start++;
      continue;
    }
    let end = start + 1;
    while (end < data.length && inForm[data[end]!] === 1) end++;
    if (end - start >= minRun) {
      onRun?.(data.subarray(start, end));
      parts.push(data.subarray(kept, start), MARKER);
      kept = end;
      runs++;
    }
    start = end;
  }
  if (runs === 0) return { data, runs };
  parts.push(data.subarray(kept));
  return { data: Buffer.concat(parts), runs };
}

/**
 * Streaming byte scrubber: replaces every form of every secret (see `secretForms` in log/scrub.ts) with a fixed marker,
 * also when a secret is split across chunks. The end of a chunk that could be part of a secret (its trailing run
 * of letters, digits and the like, see `heldTail`) is held back until the next chunk, so memory stays bounded by
 * the longest secret, and SSE events (which end in a line feed) still leave as soon as they arrive. Hand-written
 * because no maintained library scrubs bytes in a stream.
 */
export class StreamScrubber {
  private readonly patterns: Patterns;
  private carry: Buffer = EMPTY;
  /** The search's state at the end of `carry`, when `carry` is a tail `heldTail` held back (else null). */
  private resume: Resume | null = null;
  private readonly scan: Scan = { end: 0, hash: 0, hashedEnd: -1, unfit: -1, lastUnfit: -1 };
  /**
   * Where a small chunk is written behind a held-back tail (`inStore`), with room for more, rather than tail and
   * chunk copied into a new buffer; the next tail is then a view of it. With a long key the tail is kilobytes, and
   * copying it twice on every push of a few bytes cost more than searching them. Bytes once written here are never
   * written again (the pieces handed on are views of them): a full store is replaced, not reused. Let go of as soon
   * as no tail is held, so a stream holds one only while it is being sent a few bytes at a time.
   */
  private store: Buffer = EMPTY;
  /** store[0 .. filled - 1] is written. */
  private filled = 0;
  /** `carry` is the store's last bytes (else a copy of its own). */
  private carryInStore = false;
  private replaced = 0;

  /**
   * `onMatch` is told each form it replaces (the decoy watch, lib/core/detect/decoys.ts, names the decoy by
   * it); it is given a view of the stream's bytes, valid only during the call. `matchHeld`: it is also told of a
   * whole form held back at a chunk's end (see `process`), before it is replaced, so a watch that stops the stream
   * on a match (the decoy watch) learns of it with that chunk; such a form may be told of twice.
   */
  constructor(
    secrets: readonly string[],
    private readonly onMatch?: (form: Buffer) => void,
    private readonly matchHeld = false,
  ) {
    this.patterns = patternsFor(secrets);
  }

  get active(): boolean {
    return this.patterns.forms.length > 0;
  }

  /** How many bytes are held back, waiting for the next chunk or the end. */
  get heldBytes(): number {
    return this.carry.length;
  }

  /** How many secret forms were replaced so far (the metrics' `keyward_scrubber_hits_total`). */
  get hits(): number {
    return this.replaced;
  }

  /** The scrubbed output for this chunk, in one buffer (a copy when a held-back tail is released in front of it). */
  push(chunk: Uint8Array): Buffer {
    const parts = this.pushParts(chunk);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /**
   * The same output as `push`, as the pieces it is made of, in order and without copying the chunk: a tail
   * held back from the previous chunk comes out as a piece of its own in front of this chunk.
   */
  pushParts(chunk: Uint8Array): Buffer[] {
    const input = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (!this.active) return [input];
    const carry = this.carry;
    const resume = this.resume;
    this.carry = EMPTY;
    this.resume = null;
    if (carry.length === 0) return this.process(input, 0, [], false);
    const { maxLength } = this.patterns;
    if (input.length <= 2 * maxLength) return this.process(this.inStore(carry, input), 0, [], false, resume, true);
    // A large chunk after a held-back tail: instead of copying the whole chunk behind the tail, replace the forms
    // that start in the tail within the tail plus the chunk's first maxLength bytes (which hold any such form
    // whole), then go on in the chunk itself where the last of them ended.
    const head = Buffer.concat([carry, input.subarray(0, maxLength)]);
    const parts: Buffer[] = [];
    let position = 0;
    for (;;) {
      const match = this.find(head, position, null);
      if (!match || match.index >= carry.length) break;
      if (match.index > position) parts.push(head.subarray(position, match.index));
      parts.push(Buffer.from(MARKER)); // a buffer of its own: parts are handed on as they are
      this.replaced++;
      this.onMatch?.(head.subarray(match.index, match.index + match.length));
      position = match.index + match.length;
    }
    if (position < carry.length) parts.push(head.subarray(position, carry.length));
    return this.process(input, Math.max(0, position - carry.length), parts, false);
  }

  /** The stream ended: what was held back is scrubbed as it stands and released. */
  flush(): Buffer {
    const carry = this.carry;
    this.carry = EMPTY;
    this.resume = null;
    return Buffer.concat(this.process(carry, 0, [], true));
  }

  /**
   * Replaces every complete form in data[position..] (leftmost first, longest at a position), appends the
   * result to `parts` and returns them. Unless the stream has ended, it holds back a tail that could be the
   * start of a form, and with it any match inside that tail: the next chunk may complete a form that starts
   * there and replaces it whole, such as padded base64 whose unpadded form matched already, or a form that
   * contains another. `resume`: how far the search got in a held-back tail that `data` begins with; `stored`:
   * `data` is the store's last bytes, so a tail held back from it stays there.
   */
  private process(data: Buffer, position: number, parts: Buffer[], final: boolean, resume: Resume | null = null, stored = false): Buffer[] {
    const { maxLength } = this.patterns;
    let holdFrom = -1;
    for (let from = resume; ; from = null) {
      const match = this.find(data, position, from);
      if (!match) break;
      const { index, length } = match;
      if (!final && index > data.length - maxLength) {
        // A whole form near the end: held back (unreplaced) when the chunk's trailing run of bytes a form may hold
        // covers it, since a longer form (padded base64 whose unpadded form matched, a form that contains another)
        // may start at or before it and go on in the next chunk. Decided by byte classes, as `heldTail` decides,
        // never by whether the text after it begins a form: the form may be one the client knows (its own key, a
        // service key's public prefix such as `sk_live_`), and holding exactly when the client's guess after it
        // begins another secret would tell the client that secret letter by letter.
        const held = data.length - this.heldTail(data, position, resume?.clean ?? 0);
        if (held <= index) {
          if (this.matchHeld) this.onMatch?.(data.subarray(index, index + length));
          holdFrom = held;
          break;
        }
      }
      if (index > position) parts.push(data.subarray(position, index));
      parts.push(Buffer.from(MARKER)); // a buffer of its own: parts are handed on as they are
      this.replaced++;
      this.onMatch?.(data.subarray(index, index + length));
      position = index + length;
    }
    const end = holdFrom !== -1 ? holdFrom : final ? data.length : data.length - this.heldTail(data, position, resume?.clean ?? 0);
    if (end > position) parts.push(data.subarray(position, end));
    if (end < data.length) {
      this.carry = stored ? data.subarray(end) : Buffer.from(data.subarray(end));
      this.carryInStore = stored;
      if (holdFrom === -1) this.resume = this.resumeAt(end, data.length);
    } else {
      this.store = EMPTY;
      this.filled = 0;
      this.carryInStore = false;
    }
    return parts;
  }

  /**
   * The held-back `tail` with `bytes` written behind it, as one view of the store: written where the store was filled
   * up to when the tail is its last bytes and it has room, else with the tail into a new store of twice their size
   * (so each copy of a tail is followed by at least as many bytes written behind it without one).
   */
  private inStore(tail: Buffer, bytes: Buffer): Buffer {
    const length = tail.length + bytes.length;
    if (!this.carryInStore || this.filled + bytes.length > this.store.length) {
      const store = Buffer.allocUnsafe(2 * length);
      tail.copy(store);
      this.store = store;
      this.filled = tail.length;
    }
    bytes.copy(this.store, this.filled);
    this.filled += bytes.length;
    return this.store.subarray(this.filled - length, this.filled);
  }

  /**
   * The search's state (`scan`, where `find` last ran out of bytes) for a tail held back from `start` to `length`,
   * counted from the tail's start. A window with an unchecked candidate that starts before the tail cannot match:
   * the byte before the tail is one no form holds, or the tail is a form's length at least, and a form starting
   * before it would have fitted. With unchecked windows both before the tail and in it, the whole tail is searched
   * again (only a form's first `window` bytes make a candidate, so that is text that holds most of a key).
   */
  private resumeAt(start: number, length: number): Resume {
    const { end, hash, hashedEnd, unfit, lastUnfit } = this.scan;
    const recheck = unfit >= start ? unfit - start : lastUnfit >= start ? 0 : -1;
    return { end: end - start, hash, hashedEnd: hashedEnd - start, unfit: recheck, clean: length - start };
  }

  /**
   * The leftmost complete form at or after `from`, the longest one where several start there: forms that match
   * at the same place share their first `window` bytes, so they are candidates of the same block, longest first.
   */
  private find(data: Buffer, from: number, resume: Resume | null): { index: number; length: number } | null {
    const { window, shift, candidates, hashTop } = this.patterns;
    const length = data.length;
    let end = from + window - 1; // the window is data[end - window + 1 .. end]
    let hash = 0;
    let hashedEnd = -1; // the window `hash` is of ends here (none yet)
    let unfit = -1;
    let lastUnfit = -1;
    if (resume !== null && resume.unfit !== -1) {
      end = Math.max(end, resume.unfit + window - 1);
    } else if (resume !== null) {
      end = Math.max(end, resume.end);
      // Rolled on only while the window it is of is still in `data`.
      if (resume.hashedEnd - window + 1 >= from) ({ hash, hashedEnd } = resume);
    }
    while (end < length) {
      const block = blockAt(data, end);
      const skip = shift[block]!;
      if (skip !== 0) {
        end += skip;
        continue;
      }
      const index = end - window + 1;
      if (hashedEnd >= index) {
        // The last window hashed overlaps this one: rolled on byte by byte, so hashing costs at most a step per
        // byte the search moves, however long the window (a key of 2,000 characters has forms that long).
        for (let next = hashedEnd + 1; next <= end; next++) hash = rollHash(hash, data[next - window]!, data[next]!, hashTop);
      } else {
        hash = windowHash(data, index, window);
      }
      hashedEnd = end;
      for (const form of candidates.get(hash) ?? NO_FORMS) {
        if (index + form.length > length) {
          if (unfit === -1) unfit = index;
          lastUnfit = index;
        } else if (data.compare(form, 0, form.length, index, index + form.length) === 0) {
          return { index, length: form.length };
        }
      }
      end++;
    }
    Object.assign(this.scan, { end, hash, hashedEnd, unfit, lastUnfit });
    return null;
  }

  /**
   * How many bytes at the end of data[from..] to hold back: its trailing run of bytes a form may hold, at most
   * one short of the longest form. That covers every proper prefix of a form that the chunk ends in, and holds
   * as much whether or not the run is one. Holding back exactly the prefixes would be an oracle: a client whose
   * own text an upstream echoes at a chunk's end would see by what arrives when whether that text begins the
   * key, and could grow a guess letter by letter into the whole key. This hold tells it at most which bytes
   * outside HELD_ALWAYS the forms of the secrets use (each such byte, echoed, is held), and the longest form's
   * length (the hold's cap).
   */
  private heldTail(data: Buffer, from: number, clean: number): number {
    const { inForm, maxLength } = this.patterns;
    const stop = Math.max(from, data.length - maxLength + 1);
    // data[0 .. clean - 1] is a tail held back before, every byte of it one a form may hold: not read again.
    const floor = Math.max(stop, clean);
    let start = data.length;
    while (start > floor && inForm[data[start - 1]!] === 1) start--;
    if (start === floor) start = stop;
    return data.length - start;
  }
}
