import { inspect } from 'node:util';

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
 * - raw, and all upper- or lowercase for a key of hex digits and dashes (hex, a UUID: case-insensitive);
 * - percent-encoded, as encodeURIComponent writes it and as application/x-www-form-urlencoded does
 *   (URLSearchParams: differs for ( ) ! ' ~ and space), each with upper- and lowercase hex (.NET writes `%2f`),
 *   as Python's urllib.parse.quote (`/` kept) and Go's url.PathEscape (`+ = : @ $ &` kept) write it, and as the
 *   WHATWG URL parser writes it in a query and in a fragment (`new URL(…).href`: only a few characters escaped),
 *   and with every byte escaped (either case);
 * - JSON-escaped as JSON.stringify writes it, with `/` written `\/` (PHP's default), with non-ASCII written
 *   as `\uxxxx` (Python's and PHP's default), with `<` `>` `&` written `\u003c`… (Go's default), and `=` `'`
 *   too (Gson's default), as
 *   System.Text.Json writes it (ASP.NET Core's default: `+` as `\u002B`, see dotnetJson), and every UTF-16 unit
 *   written `\uXXXX` (either case);
 * - as `console` prints a string inside an object (util.inspect's quoted form);
 * - hex of the UTF-8 bytes, either case;
 * - base64 and base64url (padded and not) of the UTF-8 bytes, and at each of the three byte alignments the
 *   key can have inside a larger encoded blob, the characters that depend on the key alone (`base64Fragment`).
 */
export function namedSecretForms(secret: string): ReadonlyMap<string, string> {
  const forms = new Map<string, string>();
  const add = (name: string, text: string, minLength = MIN_FORM_LENGTH) => {
    if (text.length >= minLength && !forms.has(text)) forms.set(text, name);
  };
  add('raw', secret);
  // A key of hex digits (hex, a UUID) is usually case-insensitive: it works in either case, and an upstream may
  // echo it normalised (SQL Server's uniqueidentifier comes back uppercase). Only such a key: another secret's
  // other case (a password `Production`) is an ordinary word, which scrubbing would corrupt in every answer.
  if (HEX_KEY.test(secret)) {
    add('uppercase', secret.toUpperCase());
    add('lowercase', secret.toLowerCase());
  }
  const uri = encodeURIComponent(secret);
  add('url-encoded', uri);
  add('url-encoded-lowercase', lowercaseEscapes(uri));
  // URLSearchParams leaves only A-Z a-z 0-9 * - . _ as they are; for such a secret (most keys) it is the raw form.
  const form = /^[\w*.-]*$/.test(secret) ? secret : new URLSearchParams({ k: secret }).toString().slice(2);
  add('form-encoded', form);
  add('form-encoded-lowercase', lowercaseEscapes(form));
  // Python's urllib.parse.quote (safe="/" by default) and Go's url.PathEscape keep other characters as they are.
  add('url-encoded-python', percentEncode(secret, PYTHON_QUOTE_SAFE));
  add('url-encoded-go-path', percentEncode(secret, GO_PATH_SAFE));
  // The WHATWG URL parser (new URL(…).href, every browser) escapes only a few characters in a query or fragment.
  add('url-query', percentEncode(secret, URL_QUERY_SAFE));
  add('url-fragment', percentEncode(secret, URL_FRAGMENT_SAFE));
  // Every byte escaped, as an encoder with no safe set writes it (and what hides a key from a plain search).
  const everyByte = percentEncode(secret, NOTHING_SAFE);
  add('url-encoded-every-byte', everyByte);
  add('url-encoded-every-byte-lowercase', lowercaseEscapes(everyByte));
  const json = JSON.stringify(secret).slice(1, -1);
  add('json-escaped', json);
  // JSON.stringify never writes "\/" and writes a backslash as "\\", so every "/" here is a slash of the secret.
  add('json-escaped-slash', json.replaceAll('/', '\\/'));
  const asciiJson = /[^\x00-\x7f]/.test(json) ? json.replace(/[^\x00-\x7f]/g, unicodeEscapes) : json;
  add('json-escaped-ascii', asciiJson);
  add('json-escaped-ascii-slash', asciiJson.replaceAll('/', '\\/'));
  // Go's encoding/json (HTML-safe by default) writes < > & and U+2028/2029 as \u003c…, lowercase.
  add('json-escaped-go', json.replace(/[<>&\u2028\u2029]/g, unicodeEscapes));
  // Gson's default (HTML-safe) writes = and ' as well, lowercase: a padded base64 key ends in \u003d.
  add('json-escaped-gson', json.replace(/[<>&='\u2028\u2029]/g, unicodeEscapes));
  add('json-escaped-dotnet', dotnetJson(secret));
  // As `console` prints it inside an object or array (util.inspect): a key holding ' " and ` is single-quoted,
  // its ' written \', and a backslash is \\ whatever the quotes (JSON's form also has \" for a ").
  add('console', inspect(secret).slice(1, -1));
  const escaped = unicodeEscapes(secret);
  add('unicode-escaped', escaped);
  add('unicode-escaped-uppercase', escaped.toUpperCase().replaceAll('\\U', '\\u'));
  const bytes = Buffer.from(secret, 'utf8');
  const hex = bytes.toString('hex');
  add('hex', hex);
  add('hex-uppercase', hex.toUpperCase());
  const base64 = bytes.toString('base64');
  add('base64', base64);
  add('base64-unpadded', base64.replace(/=+$/, ''));
  add('base64url', bytes.toString('base64url'));
  add('base64url-padded', toBase64url(base64));
  const padded = Buffer.alloc(2 + bytes.length);
  bytes.copy(padded, 2);
  for (const offset of [0, 1, 2] as const) {
    const fragment = base64Fragment(padded.subarray(2 - offset), offset);
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
 * The part of base64(`offset` unknown bytes + key + unknown bytes) that depends on the key alone (RFC 4648 §4),
 * given the key behind `offset` bytes: each character encodes 6 bits, so the leading ceil(8·offset/6) characters
 * mix in the bytes before the key and the character after the last whole 6 bits of the key mixes in the bytes
 * after it. Offset 0 is also where an encoded key followed by more data lands.
 */
function base64Fragment(behindOffset: Buffer, offset: 0 | 1 | 2): string {
  return behindOffset.toString('base64').slice(Math.ceil((8 * offset) / 6), Math.floor((8 * behindOffset.length) / 6));
}

function toBase64url(base64: string): string {
  return base64.replaceAll('+', '-').replaceAll('/', '_');
}

/** Hex digits and dashes only: a hex key or a UUID, which most servers read in either case. */
const HEX_KEY = /^[0-9A-Fa-f-]+$/;
/** Matches no character: every byte escaped. */
const NOTHING_SAFE = /(?!)/;
/** What urllib.parse.quote leaves as it is by default: letters, digits, `_.-~` and `/`. */
const PYTHON_QUOTE_SAFE = /^[A-Za-z0-9_.~/-]$/;
/** What Go's url.PathEscape leaves as it is: letters, digits, `-_.~` and `$&+:=@`. */
const GO_PATH_SAFE = /^[A-Za-z0-9_.~$&+:=@-]$/;

/** What the WHATWG URL parser leaves as it is in a query: printable ASCII but `"` `#` `'` `<` `>` (the special-query set). */
const URL_QUERY_SAFE = /^[!$-&(-;=?-~]$/;
/** …and in a fragment: printable ASCII but `"` `<` `>` and the backtick (the fragment percent-encode set). */
const URL_FRAGMENT_SAFE = /^[!#-;=?-_a-~]$/;

/** Every UTF-8 byte of `text` that is not ASCII matching `safe` as %XX, uppercase. */
function percentEncode(text: string, safe: RegExp): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const char = String.fromCharCode(byte);
    out += byte < 0x80 && safe.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function lowercaseEscapes(encoded: string): string {
  return encoded.includes('%') ? encoded.replace(/%[0-9A-F]{2}/g, (escape) => escape.toLowerCase()) : encoded;
}

/** JSON escapes that have a short form (System.Text.Json writes these, as JSON.stringify does). */
const SHORT_ESCAPES: Readonly<Record<string, string>> = { '\b': '\\b', '\t': '\\t', '\n': '\\n', '\f': '\\f', '\r': '\\r', '\\': '\\\\' };

/**
 * A JSON string as ASP.NET Core's System.Text.Json writes it by default (JavaScriptEncoder.Default): the
 * HTML-sensitive characters `"` `&` `'` `+` `<` `>` and the backtick, controls and everything outside printable
 * ASCII as `\uXXXX` in uppercase hex, the rest as it is. A base64 key with a `+` in it (an AWS or Azure secret)
 * comes out as `…\u002B…`.
 */
function dotnetJson(text: string): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    const char = text[i]!;
    if (SHORT_ESCAPES[char] !== undefined) out += SHORT_ESCAPES[char];
    else if (unit < 0x20 || unit > 0x7e || `"&'+<>\``.includes(char)) out += `\\u${unit.toString(16).toUpperCase().padStart(4, '0')}`;
    else out += char;
  }
  return out;
}

/** Every UTF-16 unit as \uxxxx (a character outside the BMP becomes its two surrogates, as JSON writes them). */
function unicodeEscapes(text: string): string {
  let out = '';
  for (let i = 0; i < text.length; i++) out += `\\u${(text.charCodeAt(i) | 0x10000).toString(16).slice(1)}`;
  return out;
}

/**
 * Each secret's forms, by its value: a list that is not cached (a user's own key joined to every secret Keyward
 * holds, ProxyDeps.heldSecrets) derives only the forms of the secrets it has not seen. Cleared when full (a plain
 * bound, not an LRU: a miss costs one secret's forms).
 */
const formsBySecret = new Map<string, readonly string[]>();
const FORMS_BY_SECRET_SIZE = 4096;

function formsOfOne(secret: string): readonly string[] {
  let forms = formsBySecret.get(secret);
  if (!forms) {
    if (formsBySecret.size >= FORMS_BY_SECRET_SIZE) formsBySecret.clear();
    forms = secretForms(secret);
    formsBySecret.set(secret, forms);
  }
  return forms;
}

/** Lists of forms by secrets list (JSON of the list: one key per list), most recently used last. */
const formsCache = new Map<string, readonly string[]>();
const FORMS_CACHE_SIZE = 256;
/**
 * The same, by the list object (a service key's credential is one object for the process's life), with the
 * values it held then: a list changed in place since is looked up again by value.
 */
const formsByList = new WeakMap<readonly string[], { readonly values: readonly string[]; readonly forms: readonly string[] }>();

/**
 * Every distinct form of every secret in the list, computed once per list and shared by the header filter and
 * the stream scrubber (which keys its byte tables by the returned array). Cached by value, not by the list
 * object: a user's own key or OAuth token arrives in a fresh list on every call. The cache holds the last 256
 * lists, which stay in this process's memory as the secrets themselves do.
 */
export function formsOfSecrets(secrets: readonly string[]): readonly string[] {
  // A service key's list is the same array on every call: found by identity, without serialising it.
  const known = formsByList.get(secrets);
  if (known && known.values.length === secrets.length && known.values.every((value, i) => value === secrets[i])) return known.forms;
  const key = JSON.stringify(secrets);
  let forms = formsCache.get(key);
  if (forms) {
    formsCache.delete(key);
  } else {
    forms = [...new Set(secrets.flatMap(formsOfOne))];
    if (formsCache.size >= FORMS_CACHE_SIZE) formsCache.delete(formsCache.keys().next().value!);
  }
  formsCache.set(key, forms);
  formsByList.set(secrets, { values: [...secrets], forms });
  return forms;
}

/** By secrets list: each form's bytes (as latin1 text, one character a byte) → the first secret in the list with that form. */
const secretByForm = new WeakMap<readonly string[], ReadonlyMap<string, number>>();

/**
 * Which secret of the list `form` (bytes the stream scrubber replaced) is a form of, by its index: the first in the
 * list's order (a call's own credential comes first), or -1 for bytes that are no form of any. The table is built on
 * a list's first hit, so calls whose answers echo nothing never build one.
 */
export function secretOfForm(secrets: readonly string[], form: Uint8Array): number {
  let table = secretByForm.get(secrets);
  if (!table) {
    const built = new Map<string, number>();
    secrets.forEach((secret, index) => {
      for (const text of formsOfOne(secret)) {
        const bytes = Buffer.from(text, 'utf8').toString('latin1');
        if (!built.has(bytes)) built.set(bytes, index);
      }
    });
    secretByForm.set(secrets, (table = built));
  }
  return table.get(Buffer.from(form.buffer, form.byteOffset, form.byteLength).toString('latin1')) ?? -1;
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
 * A loggable copy of what was thrown with the given secrets replaced in its message, stack, code and cause chain.
 * Used for per-user secrets (a user's own key, an OAuth token), which the process-wide log scrubber does not
 * know. An error of another realm is read as an Error; anything else thrown (a string, a plain object) becomes
 * its text, scrubbed, since it may hold a secret as well as an Error may.
 */
export function scrubError(error: unknown, secrets: readonly string[], depth = 0): unknown {
  if (error === undefined || error === null || secrets.length === 0) return error;
  const scrubber = new SecretScrubber();
  scrubber.add(secrets);
  if (!isErrorLike(error)) return { type: typeof error, message: scrubber.scrub(printed(error)) };
  const code: unknown = (error as { code?: unknown }).code;
  return {
    type: typeof error.name === 'string' ? scrubber.scrub(error.name) : 'Error',
    // An Error's message can be set to anything: printed first, as anything thrown is.
    message: scrubber.scrub(printed(error.message)),
    stack: typeof error.stack === 'string' ? scrubber.scrub(error.stack) : undefined,
    code: typeof code === 'string' ? scrubber.scrub(code) : typeof code === 'number' ? code : undefined,
    cause: depth < 3 ? scrubError(error.cause, secrets, depth + 1) : undefined,
  };
}

function isErrorLike(value: unknown): value is Error {
  return value instanceof Error || (typeof value === 'object' && value !== null && typeof (value as { message?: unknown }).message === 'string');
}

/** A thrown value's text: a string as it is, anything else as JSON, or by type when it cannot be printed. */
function printed(value: unknown): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'bigint') return value.toString();
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return '[unprintable]';
  }
}
