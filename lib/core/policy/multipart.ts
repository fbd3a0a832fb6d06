import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { Busboy, type BusboyInstance } from '@fastify/busboy';
import type { z } from 'zod';
import type { UploadedFile } from '../config/policy';
import { KeywardError } from '../errors';
import { contractError, violation, type PartRule } from './contract';

/**
 * `multipart/form-data` bodies (RFC 7578) under a contract: parsed as they stream in (busboy), each part checked
 * against its declared name, and re-serialised as a new body with a fresh boundary. Text fields are small and
 * read whole; file parts are streamed through, never buffered, under their own byte cap. Client part headers
 * other than the name, the filename (sanitised) and the media type are dropped.
 *
 * The text fields that come before the first file part are read before anything is forwarded (they are the
 * body that caps, identity fields and budgets see). Everything after is checked as it passes: a part that fails
 * then throws out of the forwarded body, so the upstream sees a request cut off before its closing boundary,
 * never a complete one, and the client gets the error.
 */

/** Bounds on what one body may make Keyward hold or count. Files are only ever held a chunk at a time. */
export const MULTIPART_LIMITS = {
  /**
   * Parts of any kind, the client's and those caps and identity add together: parsers that read only the first
   * 1,000 fields (PHP's `max_input_vars`, formidable's `maxFields`) drop the rest silently, so a client padding the
   * body could otherwise push a field Keyward adds at the end out of what the upstream reads.
   */
  parts: 1000,
  /** Bytes of one part's header block; the rest is cut off (busboy keeps the first bytes). */
  headerBytes: 16 * 1024,
  /** Header fields of one part (a form needs Content-Disposition and Content-Type). */
  headerPairs: 16,
  /** Bytes of all text fields together: they are held in memory until checked. */
  textBytes: 1024 * 1024,
  /** Code points of a forwarded filename. */
  filenameLength: 255,
} as const;

/** What the contract compiled from the route's `body` (lib/core/policy/contract.ts). */
export interface MultipartContract {
  /** The whole body, checked when the client's parts have all been seen. */
  readonly schema: z.ZodType;
  readonly parts: ReadonlyMap<string, PartRule>;
  /** `body.<name>` identity fields: a client copy that comes after a file part is dropped. */
  readonly identity: ReadonlySet<string>;
  /**
   * Fields the call's cost is read from (`reserveFrom`, a price's model): reserved from the head, so one that
   * comes after a file part is refused; forwarded, it would bound or price the call as nothing reserved for.
   */
  readonly costFields?: ReadonlySet<string>;
}

export interface MultipartBody {
  /** The text fields sent before the first file part, read as the contract types them (parts.body). */
  readonly head: Record<string, unknown>;
  /**
   * The body to forward: `fields` (the head, after caps and identity were applied to it) first, then the rest
   * of the client's parts as they pass, then the fields caps and identity added that the client never sent.
   * A Buffer when the client's body has already ended (no file parts): every check is then done here.
   */
  forward(fields: unknown): { body: AsyncIterable<Uint8Array> | Buffer; contentType: string };
  /** Stops reading: destroys the parser and any open file stream (the forwarded body, if any, then fails). */
  cancel(): void;
}

/** Reads the head of a multipart body; refused (400, 413) if the head already breaks the contract. */
export async function readMultipart(
  contract: MultipartContract,
  contentType: string,
  input: AsyncIterable<Uint8Array>,
): Promise<MultipartBody> {
  const reading = new MultipartReading(contract, contentType, input);
  try {
    await reading.readHead();
  } catch (error) {
    reading.cancel();
    throw error;
  }
  return reading;
}

/**
 * What a part's name says: the field it belongs to, under which spelling. A declared array is read from `name`
 * or `name[]`; an object field (PartRule.members) from `name[key]`, one part per declared key (and from `name`
 * too when its schema also takes a string). Any other bracketed name is unknown, so no spelling reaches a field
 * the contract does not declare. One body uses one spelling per field: an upstream may read `tag` and `tag[]`
 * as two fields, or keep only one of them, so a mix has no one meaning.
 */
interface PartName {
  readonly field: string;
  readonly rule: PartRule;
  readonly spelling: 'plain' | 'brackets' | 'member';
  /** The member's key (`member` only). */
  readonly key: string | null;
}

const BRACKETED = /^([A-Za-z0-9_-]{1,64})\[([A-Za-z0-9_-]{0,64})\]$/;

function resolvePart(parts: ReadonlyMap<string, PartRule>, name: string | undefined): PartName | undefined {
  if (name === undefined) return undefined;
  const rule = parts.get(name);
  if (rule) return { field: name, rule, spelling: 'plain', key: null };
  const [, field, key] = BRACKETED.exec(name) ?? [];
  const outer = field === undefined ? undefined : parts.get(field);
  if (!outer || key === undefined) return undefined;
  if (key === '') return outer.array ? { field: field!, rule: outer, spelling: 'brackets', key: null } : undefined;
  return outer.members?.has(key) ? { field: field!, rule: outer, spelling: 'member', key } : undefined;
}

/** The part name a field's value is forwarded under, spelled as the client spelled it. */
function partName(field: string, spelling: PartName['spelling'] | undefined, key?: string): string {
  if (spelling === 'brackets') return `${field}[]`;
  return key === undefined ? field : `${field}[${key}]`;
}

type PartEvent =
  | { readonly type: 'field'; readonly name: string; readonly value: string; readonly encoding: string }
  | {
      readonly type: 'file';
      readonly name: string | undefined;
      readonly stream: Readable;
      readonly filename: string | undefined;
      readonly encoding: string;
      readonly mimeType: string;
    }
  | { readonly type: 'end' };

/** Busboy's events in order, for one reader to take one at a time; a failure wins over what is still queued. */
class PartQueue {
  private readonly events: PartEvent[] = [];
  private failure: { readonly error: unknown } | null = null;
  private wake: (() => void) | null = null;

  get failed(): unknown {
    return this.failure?.error;
  }

  push(event: PartEvent): void {
    this.events.push(event);
    this.notify();
  }

  unshift(event: PartEvent): void {
    this.events.unshift(event);
  }

  fail(error: unknown): void {
    this.failure ??= { error };
    this.notify();
  }

  async next(): Promise<PartEvent> {
    for (;;) {
      if (this.failure) throw this.failure.error;
      const event = this.events.shift();
      if (event) return event;
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

const CRLF = Buffer.from('\r\n');
const MALFORMED = 'body: not a valid multipart/form-data body';
// RFC 7578 §4.7: senders do not use Content-Transfer-Encoding; these three mean "as is". Any other (base64,
// quoted-printable) would make Keyward forward encoded bytes as if they were the file.
const IDENTITY_ENCODINGS = new Set(['7bit', '8bit', 'binary']);
const MEDIA_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/;

class MultipartReading implements MultipartBody {
  readonly head: Record<string, unknown> = {};
  private readonly queue = new PartQueue();
  private readonly parser: BusboyInstance;
  private readonly abort = new AbortController();
  private readonly openFiles = new Set<Readable>();
  /** RFC 2046 §5.1.1: at most 70 characters; random, so no part's content can contain it by chance. */
  private readonly boundary = `keyward-${randomBytes(18).toString('base64url')}`;
  /**
   * What the client sent, per field (strings as sent, files as streamed through; an object field's members by
   * key), for the final check.
   */
  private readonly sent = new Map<string, (string | UploadedFile)[] | Map<string, string | UploadedFile>>();
  /** How the client spelled each field's part names (PartName): forwarded the same way. */
  private readonly spellings = new Map<string, PartName['spelling']>();
  /** Names the client sent in the head (the fields caps and identity add to it are not among them). */
  private headNames: ReadonlySet<string> = new Set();
  private textBytes = 0;
  /** Parts written to the forwarded body so far (see MULTIPART_LIMITS.parts). */
  private forwardedParts = 0;
  private ended = false;

  constructor(
    private readonly contract: MultipartContract,
    contentType: string,
    input: AsyncIterable<Uint8Array>,
  ) {
    this.parser = createParser(contentType, contract.parts);
    this.parser.on(
      'field',
      (name: string, value: string, _nameTruncated: boolean, truncated: boolean, encoding: string) => {
        this.textBytes += Buffer.byteLength(value);
        if (truncated || this.textBytes > MULTIPART_LIMITS.textBytes) {
          this.fail(violation(`body: text fields are larger than ${MULTIPART_LIMITS.textBytes} bytes together`));
        } else {
          this.queue.push({ type: 'field', name, value, encoding });
        }
      },
    );
    this.parser.on(
      'file',
      (
        name: string | undefined,
        stream: Readable,
        filename: string | undefined,
        encoding: string,
        mimeType: string,
      ) => {
        // Busboy emits a part's errors on its stream; without a listener one that is still queued would crash the process.
        stream.on('error', () => {});
        this.openFiles.add(stream);
        stream.once('close', () => this.openFiles.delete(stream));
        this.queue.push({ type: 'file', name, stream, filename, encoding, mimeType });
      },
    );
    this.parser.on('finish', () => this.queue.push({ type: 'end' }));
    this.parser.on('error', () => this.fail(violation(MALFORMED)));
    this.parser.on('partsLimit', () => this.fail(violation(`body: more than ${MULTIPART_LIMITS.parts} parts`)));
    void this.pump(input);
  }

  /** Reads and checks the text fields up to the first file part (or the end of the body). */
  async readHead(): Promise<void> {
    for (;;) {
      const event = await this.queue.next();
      if (event.type === 'end') {
        this.ended = true;
        break;
      }
      if (event.type === 'file') {
        // Its headers are checked now, so a first file the contract refuses is refused before anything is sent.
        this.checkFileHeaders(event);
        this.queue.unshift(event);
        break;
      }
      const { part, value } = this.checkField(event);
      appendValue(this.head, part, value);
    }
    this.headNames = new Set(Object.keys(this.head));
  }

  forward(fields: unknown): { body: AsyncIterable<Uint8Array> | Buffer; contentType: string } {
    const values = fields as Record<string, unknown>;
    const added = new Map(Object.entries(values).filter(([name]) => !this.headNames.has(name)));
    const contentType = `multipart/form-data; boundary=${this.boundary}`;
    if (!this.ended) return { body: this.stream(values, added), contentType };
    try {
      const chunks = [...this.headParts(values), ...this.addedParts(added)];
      this.finalCheck();
      this.checkPartCount();
      return { body: Buffer.concat([...chunks, this.closing()]), contentType };
    } finally {
      this.cancel();
    }
  }

  cancel(): void {
    if (this.abort.signal.aborted) return;
    this.abort.abort();
    for (const file of this.openFiles) file.destroy();
    this.parser.destroy();
  }

  private async *stream(values: Record<string, unknown>, added: Map<string, unknown>): AsyncGenerator<Uint8Array> {
    try {
      yield* this.headParts(values);
      for (;;) {
        const event = await this.queue.next();
        if (event.type === 'end') break;
        if (event.type === 'file') {
          yield* this.filePart(event);
          continue;
        }
        const value = this.laterField(event, added);
        if (value !== undefined) yield this.textPart(event.name, value);
      }
      yield* this.addedParts(added);
      // Before the closing boundary: a body that fails here reaches the upstream incomplete.
      this.finalCheck();
      this.checkPartCount();
      yield this.closing();
    } finally {
      this.cancel();
    }
  }

  private *headParts(values: Record<string, unknown>): Generator<Buffer> {
    for (const name of this.headNames) {
      const spelling = this.spellings.get(name);
      const value = values[name];
      if (spelling === 'member' && isObject(value)) {
        // The keys the client sent, each a declared member (checked again: the name goes into a part header).
        for (const [key, member] of Object.entries(value)) {
          if (!this.contract.parts.get(name)!.members!.has(key)) throw new TypeError(`body.${name}: not a member`);
          yield this.textPart(partName(name, spelling, key), member);
        }
        continue;
      }
      // A field caps or identity wrote over is a plain value, forwarded under the plain name.
      for (const item of listOf(value))
        yield this.textPart(partName(name, spelling === 'member' ? 'plain' : spelling), item);
    }
  }

  private *addedParts(added: ReadonlyMap<string, unknown>): Generator<Buffer> {
    for (const [name, value] of added) {
      for (const item of listOf(value)) yield this.textPart(name, item);
    }
  }

  /**
   * A text field after the first file part. An identity field's copy is dropped (the session's value is added
   * at the end); a field the call's cost is read from is refused (the cost was reserved from the head); a capped
   * field the head did not carry is checked against the cap caps wrote for it, and replaces it.
   */
  private laterField(event: Extract<PartEvent, { type: 'field' }>, added: Map<string, unknown>): unknown {
    const {
      part: { field },
      value,
    } = this.checkField(event);
    if (this.contract.identity.has(field)) return undefined;
    if (this.contract.costFields?.has(field)) {
      throw violation(`body.${field}: must come before the first file part (the call's cost is read from it)`);
    }
    if (added.has(field)) {
      const cap = added.get(field);
      added.delete(field);
      if (typeof cap === 'number' && (typeof value !== 'number' || value > cap)) {
        throw violation(`body.${field}: must be at most ${cap} for your role`);
      }
    }
    return value;
  }

  /**
   * One text field: declared, not repeated unless an array, as-is transfer encoding, and valid for its type (an
   * object's member for the member's; the object as a whole is checked at the end).
   */
  private checkField(event: Extract<PartEvent, { type: 'field' }>): { part: PartName; value: unknown } {
    const part = resolvePart(this.contract.parts, event.name);
    if (!part || part.rule.kind !== 'text') throw violation('body: unknown field');
    const where = part.key === null ? `body.${part.field}` : `body.${part.field}.${part.key}`;
    this.record(part, event.value);
    if (!IDENTITY_ENCODINGS.has(event.encoding))
      throw violation(`${where}: Content-Transfer-Encoding is not supported`);
    const schema = part.key === null ? part.rule.value : part.rule.members!.get(part.key)!;
    const result = schema.safeParse(event.value);
    if (!result.success) throw contractError(result.error, where, schema);
    return { part, value: result.data };
  }

  /** A file part's headers: a declared file, sent as is, of a media type the contract accepts. */
  private checkFileHeaders(event: Extract<PartEvent, { type: 'file' }>): {
    /** The part name as the client sent it (one resolvePart accepted), forwarded as is. */
    sentAs: string;
    part: PartName;
    file: UploadedFile;
  } {
    const part = resolvePart(this.contract.parts, event.name);
    if (!part || part.rule.kind !== 'file') throw violation('body: unknown field');
    const { rule, field } = part;
    if (!IDENTITY_ENCODINGS.has(event.encoding))
      throw violation(`body.${field}: Content-Transfer-Encoding is not supported`);
    const type = MEDIA_TYPE.test(event.mimeType) ? event.mimeType : null;
    const ranges = rule.file!.contentTypes;
    if (ranges && (type === null || !accepts(ranges, type))) {
      throw new KeywardError('unsupported_media_type', {
        message: `The file part "${field}" has a media type this route does not accept.`,
      });
    }
    return {
      sentAs: event.name!,
      part,
      file: { filename: sanitizeFilename(event.filename), contentType: type ?? 'application/octet-stream', bytes: 0 },
    };
  }

  /** Streams one file part through, under its byte cap. */
  private async *filePart(event: Extract<PartEvent, { type: 'file' }>): AsyncGenerator<Uint8Array> {
    const { sentAs, part, file } = this.checkFileHeaders(event);
    const { rule, field } = part;
    const max = rule.file!.maxBytes ?? Infinity;
    let bytes = 0;
    this.forwardedParts += 1;
    yield Buffer.from(
      `--${this.boundary}\r\nContent-Disposition: form-data; name="${sentAs}"; filename="${file.filename}"\r\n` +
        `Content-Type: ${file.contentType}\r\n\r\n`,
      'utf8',
    );
    try {
      for await (const chunk of event.stream as AsyncIterable<Buffer>) {
        bytes += chunk.byteLength;
        if (bytes > max) {
          throw new KeywardError('payload_too_large', {
            message: `The file part "${field}" is larger than this route allows (${max} bytes).`,
          });
        }
        yield chunk;
      }
    } catch (error) {
      // The stream fails when the body does (cut short, over the route's cap): the body's failure says why.
      throw this.queue.failed ?? (error instanceof KeywardError ? error : violation(MALFORMED));
    }
    yield CRLF;
    const uploaded = { ...file, bytes };
    this.record(part, uploaded);
    const result = rule.value.safeParse(uploaded);
    if (!result.success) throw contractError(result.error, `body.${field}`, rule.value);
  }

  /**
   * Counts a part under its field: a second one is refused unless the contract declares an array, and so is a
   * member sent twice, or a field sent under two spellings (`tag` and `tag[]`, `mode` and `mode[type]`).
   */
  private record(part: PartName, value: string | UploadedFile): void {
    const { field, key } = part;
    const spelling = this.spellings.get(field);
    if (spelling !== undefined && spelling !== part.spelling)
      throw violation(`body.${field}: sent under two part names`);
    this.spellings.set(field, part.spelling);
    const values = this.sent.get(field);
    if (key !== null) {
      const members =
        (values as Map<string, string | UploadedFile> | undefined) ?? new Map<string, string | UploadedFile>();
      if (members.has(key)) throw violation(`body.${field}.${key}: given more than once`);
      this.sent.set(field, members.set(key, value));
    } else if (!values) this.sent.set(field, [value]);
    else if (part.rule.array) (values as (string | UploadedFile)[]).push(value);
    else throw violation(`body.${field}: given more than once`);
  }

  /** The contract over everything the client sent (required parts, array sizes, the adapter's own refinements). */
  private finalCheck(): void {
    const body = Object.fromEntries(
      [...this.sent].map(([name, values]) => [
        name,
        values instanceof Map ? Object.fromEntries(values) : this.contract.parts.get(name)!.array ? values : values[0],
      ]),
    );
    const result = this.contract.schema.safeParse(body);
    if (!result.success) throw contractError(result.error, 'body', this.contract.schema);
  }

  /** The client's parts and the fields Keyward added, together, under the parts limit. */
  private checkPartCount(): void {
    if (this.forwardedParts > MULTIPART_LIMITS.parts) {
      throw violation(`body: more than ${MULTIPART_LIMITS.parts} parts with the fields Keyward adds`);
    }
  }

  private textPart(name: string, value: unknown): Buffer {
    this.forwardedParts += 1;
    return Buffer.from(
      `--${this.boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${textOf(value)}\r\n`,
      'utf8',
    );
  }

  private closing(): Buffer {
    return Buffer.from(`--${this.boundary}--\r\n`);
  }

  /** Feeds the client's body to busboy, no faster than the parts are taken (busboy holds its writes meanwhile). */
  private async pump(input: AsyncIterable<Uint8Array>): Promise<void> {
    const { signal } = this.abort;
    try {
      for await (const chunk of input) {
        if (signal.aborted) return;
        if (!this.parser.write(chunk)) await once(this.parser, 'drain', { signal });
      }
      if (!signal.aborted) this.parser.end();
    } catch (error) {
      // The client's body failed (over the route's cap, stalled, the client went away), or busboy did (its
      // 'error' handler has already said so).
      if (!signal.aborted)
        this.fail(
          error instanceof KeywardError
            ? error
            : new KeywardError('bad_request', { message: 'The request body could not be read.', cause: error }),
        );
    }
  }

  private fail(error: KeywardError): void {
    if (this.queue.failed) return;
    this.queue.fail(error);
    for (const file of this.openFiles) file.destroy(error);
  }
}

function createParser(contentType: string, parts: ReadonlyMap<string, PartRule>): BusboyInstance {
  try {
    return Busboy({
      headers: { 'content-type': contentType },
      defCharset: 'utf8',
      preservePath: false,
      // Anything but a declared text field is streamed, never buffered: a declared file is a file whether or not
      // the client gave a filename, and an unknown part is refused at its headers instead of after its content.
      isPartAFile: (name) => resolvePart(parts, name)?.rule.kind !== 'text',
      limits: {
        fieldSize: MULTIPART_LIMITS.textBytes,
        parts: MULTIPART_LIMITS.parts,
        headerPairs: MULTIPART_LIMITS.headerPairs,
        headerSize: MULTIPART_LIMITS.headerBytes,
      },
    });
  } catch {
    // Busboy throws when the Content-Type names no boundary.
    throw violation('body: the multipart boundary is missing');
  }
}

/** Adds a checked head part to the head: a value, an array's next item, or an object's member. */
function appendValue(target: Record<string, unknown>, part: PartName, value: unknown): void {
  const name = part.field;
  const current = Object.hasOwn(target, name) ? target[name] : undefined;
  let next: unknown = value;
  if (part.key !== null) {
    next = (current as Record<string, unknown> | undefined) ?? {};
    define(next as Record<string, unknown>, part.key, value);
  } else if (part.rule.array) next = [...((current as unknown[] | undefined) ?? []), value];
  define(target, name, next);
}

// defineProperty: a part named `__proto__` stays a plain field.
function define(target: Record<string, unknown>, name: string, value: unknown): void {
  Object.defineProperty(target, name, { value, enumerable: true, writable: true, configurable: true });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function listOf(value: unknown): unknown[] {
  if (value === undefined || value === null) return [];
  return Array.isArray(value) ? value : [value];
}

function textOf(value: unknown): string {
  if (typeof value === 'string') return value;
  if ((typeof value === 'number' && Number.isFinite(value)) || typeof value === 'boolean' || typeof value === 'bigint')
    return String(value);
  throw new TypeError('a multipart text field is a string, a number or a boolean');
}

/** `image/*` accepts any image type; other ranges must match exactly (case-insensitively). */
function accepts(ranges: readonly string[], type: string): boolean {
  return ranges.some((range) => {
    const lower = range.toLowerCase();
    return lower === type || (lower.endsWith('/*') && type.startsWith(lower.slice(0, -1)));
  });
}

/**
 * The filename forwarded for a file part. RFC 7578 §4.2 makes it a hint the receiver must not trust as a path;
 * upstreams still use it as one, so it is reduced to a plain name: busboy already keeps only the last path
 * segment; control, format (bidi overrides) and line-separator characters go; quotes, path, shell and
 * Windows-reserved characters, and `%` (so nothing percent-decodes into them), become `_`; leading dots and
 * spaces (hidden files, `..`) and trailing ones go; at most 255 code points. Empty: `file`.
 */
export function sanitizeFilename(name: string | undefined): string {
  const cleaned = (name ?? '')
    .normalize('NFC')
    .replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, '')
    .replace(/["\\/:*?<>|%]/g, '_');
  let short = Array.from(cleaned).slice(0, MULTIPART_LIMITS.filenameLength).join('');
  // Trimmed by hand: a `[\s.]+$` pattern backtracks quadratically on a long run of spaces.
  let start = 0;
  let end = short.length;
  while (start < end && (short[start] === '.' || /\s/.test(short[start]!))) start += 1;
  while (end > start && (short[end - 1] === '.' || /\s/.test(short[end - 1]!))) end -= 1;
  short = short.slice(start, end);
  return short === '' ? 'file' : short;
}
