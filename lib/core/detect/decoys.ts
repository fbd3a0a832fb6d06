import { hashSessionId } from '../audit/audit';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ConfigError, jsonErrorAt } from '../config/error';
import { withFileLock, writeTarget } from '../config/file-lock';
import { formatIssues } from '../config/schema';
import { namedSecretForms } from '../log/scrub';
import { StreamScrubber } from '../respond/scrub-stream';
import { DECOY_SHAPES } from './mint';
import type { DecoyHit, SecuritySignals } from './signals';

/**
 * Decoy credentials (honeytokens; README "Decoy keys"): the decoys file (KEYWARD_DECOYS_FILE), validated at
 * start-up, and the matcher the request paths use to recognise a decoy in whatever form it arrives.
 *
 * The file holds the decoys' values: they are fake by construction (lib/core/detect/mint.ts) and open nothing,
 * so they are not secrets. Keyward must know them to recognise them, and they are planted in public anyway.
 */

/** Shorter values would match ordinary text, and signing out a user for a coincidence is not acceptable. */
const MIN_VALUE_LENGTH = 16;

const decoyValue = z
  .string()
  .min(MIN_VALUE_LENGTH, `must be at least ${MIN_VALUE_LENGTH} characters (a shorter value could match ordinary text)`)
  // Bounded, as the count below: every request's headers and query are matched against every decoy.
  .max(256)
  .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces');

const decoySchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'letters, digits, _ and - only (1 to 64)'),
  shape: z.enum(DECOY_SHAPES),
  value: decoyValue,
  /** `aws`: the secret access key planted with the access key id. */
  secret: decoyValue.optional(),
  note: z.string().max(500).optional(),
  createdAt: z.iso.datetime({ offset: true }),
});

const decoysFileSchema = z.strictObject({
  decoys: z
    .array(decoySchema)
    .max(100)
    .superRefine((decoys, ctx) => {
      const ids = new Set<string>();
      const values = new Set<string>();
      decoys.forEach((decoy, index) => {
        if (ids.has(decoy.id))
          ctx.addIssue({ code: 'custom', path: [index, 'id'], message: 'is used by an earlier decoy' });
        ids.add(decoy.id);
        for (const field of ['value', 'secret'] as const) {
          const value = decoy[field];
          if (value === undefined) continue;
          if (values.has(value))
            ctx.addIssue({ code: 'custom', path: [index, field], message: 'is the value of an earlier decoy' });
          values.add(value);
        }
      });
    }),
});

export type Decoy = z.output<typeof decoySchema>;

/**
 * Reads and validates a decoys file. A file that does not exist is an empty list when `missing` is 'empty'
 * (the CLI creates it); otherwise it is an error, as any unreadable or invalid file is: ConfigError naming the
 * field, never a value.
 */
export function readDecoysFile(path: string, missing: 'error' | 'empty' = 'error'): Decoy[] {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && missing === 'empty') return [];
    const reason = error instanceof SyntaxError ? `is not valid JSON${jsonErrorAt(error)}` : `cannot be read (${code})`;
    throw new ConfigError(`KEYWARD_DECOYS_FILE: ${path} ${reason}`);
  }
  const result = decoysFileSchema.safeParse(json);
  if (!result.success) {
    throw new ConfigError(`KEYWARD_DECOYS_FILE (${path}) is invalid:\n${formatIssues(result.error.issues, '')}`);
  }
  return result.data.decoys;
}

/**
 * Adds a decoy to the file (created if missing, readable by its owner only), after validating what is there:
 * a file that does not validate is left as it is. Written to a temporary file and renamed over the old one,
 * so a reader never sees half a file.
 */
export function appendDecoy(path: string, decoy: Decoy): void {
  // One command at a time (two at once each wrote the list it read, plus its own: one decoy was lost), and through
  // a symbolic link to its target.
  const target = writeTarget(path, 0o600).path;
  withFileLock(target, () => {
    const decoys = [...readDecoysFile(target, 'empty'), decoy];
    const checked = decoysFileSchema.safeParse({ decoys });
    if (!checked.success) throw new ConfigError(`The new decoy is invalid:\n${formatIssues(checked.error.issues, '')}`);
    const temporary = `${target}.${process.pid}.tmp`;
    writeFileSync(temporary, `${JSON.stringify({ decoys }, null, 2)}\n`, { mode: 0o600 });
    renameSync(temporary, target);
  });
}

/** Loads KEYWARD_DECOYS_FILE for a server: null when it lists no decoy (then nothing is scanned at all). */
export function loadDecoys(path: string): DecoySet | null {
  const decoys = readDecoysFile(path);
  return decoys.length > 0 ? new DecoySet(decoys) : null;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * The decoys a server knows, compiled once: every form the leak scrubber knows for each value (raw,
 * URL-encoded, JSON-escaped, `\u` escapes, hex, base64 and base64url at every alignment: `namedSecretForms`
 * in lib/core/log/scrub.ts), mapped back to the decoy's id.
 */
export class DecoySet {
  /** Every form of every decoy value → the decoy's id. */
  private readonly idByForm = new Map<string, string>();
  /** Every decoy value (and AWS secret), for the streaming matcher, which derives the same forms. */
  private readonly values: readonly string[];
  /** Any form, longest first (so the longest form at a position is the one named). */
  private readonly pattern: RegExp;

  constructor(decoys: readonly Pick<Decoy, 'id' | 'value' | 'secret'>[]) {
    const values: string[] = [];
    for (const decoy of decoys) {
      for (const value of decoy.secret === undefined ? [decoy.value] : [decoy.value, decoy.secret]) {
        values.push(value);
        for (const form of namedSecretForms(value).keys())
          if (!this.idByForm.has(form)) this.idByForm.set(form, decoy.id);
      }
    }
    this.values = values;
    const forms = [...this.idByForm.keys()].sort((a, b) => b.length - a.length);
    this.pattern = new RegExp(forms.map(escapeRegExp).join('|'));
  }

  get size(): number {
    return this.values.length;
  }

  /** The id of a decoy one of whose forms occurs in `text`, or null. */
  find(text: string): string | null {
    const match = this.pattern.exec(text);
    return match ? (this.idByForm.get(match[0]) ?? null) : null;
  }

  /**
   * Watches a body as it streams, with the leak scrubber's streaming matcher (lib/core/respond/scrub-stream.ts):
   * a decoy split across chunks is found, and the end of a chunk that could be the start of a decoy is held
   * back until the next chunk says, so a whole decoy is never passed on before it is recognised.
   */
  watch(): DecoyWatch {
    return new DecoyWatch(this.values, this.idByForm);
  }
}

export class DecoyWatch {
  private readonly scrubber: StreamScrubber;
  /** The decoy found (its id; null if its form could not be named), or undefined while none was. */
  found: string | null | undefined = undefined;

  constructor(values: readonly string[], idByForm: ReadonlyMap<string, string>) {
    // A whole decoy held back at a chunk's end (a longer form might go on in the next) is found with its chunk.
    this.scrubber = new StreamScrubber(
      values,
      (form) => {
        this.found ??= idByForm.get(form.toString('utf8')) ?? null;
      },
      true,
    );
  }

  /** The bytes of the stream so far that can be passed on (unless `found` is now set: then nothing can). */
  push(chunk: Uint8Array): Buffer {
    return this.scrubber.push(chunk);
  }

  /** The stream ended: the bytes held back (unless `found` is now set). */
  flush(): Buffer {
    return this.scrubber.flush();
  }
}

/** Where a decoy was found in a request, by name only. */
export interface DecoyFinding {
  readonly decoyId: string;
  readonly where: string;
}

/** A header or query parameter name reported as is only if it is short plain text (it is the client's text). */
const PLAIN_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/**
 * A decoy in the request's headers (cookies and Authorization among them, not the Referer), query or path, named by where it
 * was (`header:x-api-key`, `query:key`, `path`), never by its value. A name that is not plain text, or that
 * holds the decoy itself, is left out (`header`, `query`).
 */
export function findDecoyInRequest(
  decoys: DecoySet,
  headers: Headers,
  url: URL,
  path: readonly string[],
): DecoyFinding | null {
  for (const [name, value] of headers) {
    // The browser writes the Referer itself, from the page's address: a link anyone sends the user can put a
    // decoy there, and every call that page makes would be refused, with an alert naming the user.
    if (name === 'referer') continue;
    const decoyId = decoys.find(value) ?? decoys.find(name);
    if (decoyId) return { decoyId, where: decoys.find(name) || !PLAIN_NAME.test(name) ? 'header' : `header:${name}` };
  }
  if (url.search.length > 1) {
    for (const pair of url.search.slice(1).split('&')) {
      const equals = pair.indexOf('=');
      const rawName = equals === -1 ? pair : pair.slice(0, equals);
      // The raw text covers every encoded form; the decoded one a decoy written with needless escapes.
      const decoyId = decoys.find(pair) ?? decoys.find(decodeQueryText(pair));
      if (!decoyId) continue;
      const name = decodeQueryText(rawName);
      return { decoyId, where: decoys.find(name) || !PLAIN_NAME.test(name) ? 'query' : `query:${name}` };
    }
  }
  for (const segment of path) {
    const decoyId = decoys.find(segment);
    if (decoyId) return { decoyId, where: 'path' };
  }
  return null;
}

/** application/x-www-form-urlencoded decoding as URLSearchParams does it; malformed escapes are left as they are. */
function decodeQueryText(text: string): string {
  const spaced = text.replaceAll('+', ' ');
  try {
    return decodeURIComponent(spaced);
  } catch {
    return spaced;
  }
}

/**
 * Raises a decoy hit: logged as a warning (ids and names only, never a value) and handed to the detector,
 * which acts off the request's path. A detector that throws never breaks the call that raised it.
 */
export function raiseDecoyHit(
  deps: { readonly logger: Logger; readonly signals?: SecuritySignals },
  hit: DecoyHit,
): void {
  // The session by its hash, as the audit trail names it.
  const { sessionId, ...logged } = hit;
  deps.logger.warn({ decoyHit: { ...logged, sessionIdHash: sessionId === null ? null : hashSessionId(sessionId) } }, 'decoy presented');
  try {
    deps.signals?.decoyHit(hit);
  } catch (error) {
    deps.logger.error({ err: error, requestId: hit.requestId }, 'decoy signal failed');
  }
}
