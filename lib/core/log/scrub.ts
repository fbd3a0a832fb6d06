/**
 * Replaces known secret values in text: the raw value and the forms it takes when it travels (see
 * `namedSecretForms`). Used on every log line and error message; the same list drives the response-header
 * filter, the response-body scrubber and the build-output leak scan.
 */
export const REDACTED = '[REDACTED]';

/** Below this, a form is too short to be told apart from ordinary text. */
const MIN_FORM_LENGTH = 4;
/**
 * Base64 fragments cut out of a larger blob (below) are held to more: each character pins 6 bits of the key,
 * so 8 characters pin 48 bits and a random base64 body of 1 MiB matches one by chance with a probability of
 * about 2^-28. Any key of 8 characters or more yields fragments at least this long (16 characters: 20 or more).
 */
const MIN_FRAGMENT_LENGTH = 8;

/**
 * Every form a secret takes in transit, as encoded text → the name of the first encoding that produces it.
 * Matching is exact (bytes or UTF-16 units): where an encoding has two letter cases, both are listed; one
 * key written in mixed case is not.
 * - raw;
 * - percent-encoded, as encodeURIComponent writes it and as application/x-www-form-urlencoded does
 *   (URLSearchParams: differs for ( ) ! ' ~ and space), each with upper- and lowercase hex (.NET writes `%2f`);
 * - JSON-escaped as JSON.stringify writes it, with `/` written `\/` (PHP's default), and with non-ASCII written
 *   as `\uxxxx` (Python's and PHP's default), and every UTF-16 unit written `\uXXXX` (either case);
 * - hex of the UTF-8 bytes, either case;
 * - base64 and base64url (padded and not) of the UTF-8 bytes, and at each of the three byte alignments the
 *   key can have inside a larger encoded blob, the characters that depend on the key alone (`base64Fragment`).
 */
export function namedSecretForms(secret: string): ReadonlyMap<string, string> {
  const forms = new Map<string, string>();
  const add = (name: string, text: string, minLength = MIN_FORM_LENGTH) => {
    if (text.length >= minLength && !forms.has(text)) forms.set(text, name);
  };
  const bytes = Buffer.from(secret, 'utf8');
  add('raw', secret);
  const uri = encodeURIComponent(secret);
  add('url-encoded', uri);
  add('url-encoded-lowercase', lowercaseEscapes(uri));
  const form = new URLSearchParams({ k: secret }).toString().slice(2);
  add('form-encoded', form);
  add('form-encoded-lowercase', lowercaseEscapes(form));
  const json = JSON.stringify(secret).slice(1, -1);
  add('json-escaped', json);
  // JSON.stringify never writes "\/" and writes a backslash as "\\", so every "/" here is a slash of the secret.
  add('json-escaped-slash', json.replaceAll('/', '\\/'));
  const asciiJson = json.replace(/[^\x00-\x7f]/g, (unit) => unicodeEscape(unit, false));
  add('json-escaped-ascii', asciiJson);
  add('json-escaped-ascii-slash', asciiJson.replaceAll('/', '\\/'));
  // Without the u flag, [\s\S] is one UTF-16 unit: a character outside the BMP becomes its two surrogates.
  add('unicode-escaped', secret.replace(/[\s\S]/g, (unit) => unicodeEscape(unit, false)));
  add('unicode-escaped-uppercase', secret.replace(/[\s\S]/g, (unit) => unicodeEscape(unit, true)));
  const hex = bytes.toString('hex');
  add('hex', hex);
  add('hex-uppercase', hex.toUpperCase());
  const base64 = bytes.toString('base64');
  add('base64', base64);
  add('base64-unpadded', base64.replace(/=+$/, ''));
  add('base64url', bytes.toString('base64url'));
  add('base64url-padded', toBase64url(base64));
  for (const offset of [0, 1, 2] as const) {
    const fragment = base64Fragment(bytes, offset);
    add(`base64-offset${offset}`, fragment, MIN_FRAGMENT_LENGTH);
    add(`base64url-offset${offset}`, toBase64url(fragment), MIN_FRAGMENT_LENGTH);
  }
  return forms;
}

/** The encoded texts of `namedSecretForms`. */
export function secretForms(secret: string): string[] {
  return [...namedSecretForms(secret).keys()];
}

/**
 * The part of base64(`offset` unknown bytes + key + unknown bytes) that depends on the key alone (RFC 4648 §4):
 * each character encodes 6 bits, so the leading ceil(8·offset/6) characters mix in the bytes before the key and
 * the character after the last whole 6 bits of the key mixes in the bytes after it. Offset 0 is also where an
 * encoded key followed by more data lands.
 */
function base64Fragment(bytes: Buffer, offset: 0 | 1 | 2): string {
  const encoded = Buffer.concat([Buffer.alloc(offset), bytes]).toString('base64');
  return encoded.slice(Math.ceil((8 * offset) / 6), Math.floor((8 * (offset + bytes.length)) / 6));
}

function toBase64url(base64: string): string {
  return base64.replaceAll('+', '-').replaceAll('/', '_');
}

function lowercaseEscapes(encoded: string): string {
  return encoded.replace(/%[0-9A-F]{2}/g, (escape) => escape.toLowerCase());
}

function unicodeEscape(unit: string, uppercase: boolean): string {
  const code = unit.charCodeAt(0).toString(16).padStart(4, '0');
  return `\\u${uppercase ? code.toUpperCase() : code}`;
}

const formsCache = new WeakMap<readonly string[], readonly string[]>();

/**
 * Every distinct form of every secret in the list, computed once per list: service credentials keep the same
 * list for the life of the process, so the header filter and the stream scrubber share one computation.
 */
export function formsOfSecrets(secrets: readonly string[]): readonly string[] {
  let forms = formsCache.get(secrets);
  if (!forms) {
    forms = [...new Set(secrets.flatMap((secret) => secretForms(secret)))];
    formsCache.set(secrets, forms);
  }
  return forms;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Replaces every form of the secrets it was given. Log lines are JSON, so each form is also looked for as JSON
 * writes it: a logged string that holds a form with a backslash or a quote (`\u` escapes, `\/`, a JSON-escaped
 * key) reaches the line escaped once more.
 */
export class SecretScrubber {
  private readonly secrets = new Set<string>();
  private pattern: RegExp | null = null;

  add(secrets: Iterable<string>): void {
    for (const secret of secrets) {
      for (const form of secretForms(secret)) {
        this.secrets.add(form);
        this.secrets.add(JSON.stringify(form).slice(1, -1));
      }
    }
    // Longest first, so a form that contains another is replaced whole.
    const sorted = [...this.secrets].sort((a, b) => b.length - a.length);
    this.pattern = sorted.length ? new RegExp(sorted.map(escapeRegExp).join('|'), 'g') : null;
  }

  scrub(text: string): string {
    return this.pattern ? text.replace(this.pattern, REDACTED) : text;
  }
}

/**
 * A loggable copy of an error with the given secrets replaced in its message, stack and cause chain. Used
 * for per-user secrets (a user's own key, an OAuth token), which the process-wide log scrubber does not know.
 */
export function scrubError(error: unknown, secrets: readonly string[], depth = 0): unknown {
  if (!(error instanceof Error) || secrets.length === 0) return error;
  const scrubber = new SecretScrubber();
  scrubber.add(secrets);
  return {
    type: error.name,
    message: scrubber.scrub(error.message),
    stack: error.stack === undefined ? undefined : scrubber.scrub(error.stack),
    code: (error as { code?: unknown }).code,
    cause: depth < 3 ? scrubError(error.cause, secrets, depth + 1) : undefined,
  };
}
