import { inspect } from 'node:util';

/**
 * Test-side statement of what "scrubbed" means, written independently of lib/core/log/scrub.ts:
 * the forms a secret takes in transit, and a leftmost-longest whole-input replacement over bytes.
 */
export const MARKER_TEXT = '[REDACTED]';
const MARKER = Buffer.from(MARKER_TEXT, 'utf8');

/** Percent-encoding with lowercase hex digits, as .NET writes it. */
function lowerEscapes(text: string): string {
  return text.replace(/%[0-9A-F]{2}/g, (escape) => escape.toLowerCase());
}

/** The printable ASCII characters (! to ~) but those given: what the URL standard's percent-encode sets keep. */
function printableAsciiBut(escaped: string): string {
  return Array.from({ length: 0x7e - 0x21 + 1 }, (_, i) => String.fromCharCode(0x21 + i))
    .filter((c) => !escaped.includes(c))
    .join('');
}

/** Every UTF-16 unit as \uXXXX. */
function escapeAllUnits(text: string, upper: boolean): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const hex = text.charCodeAt(i).toString(16).padStart(4, '0');
    out += `\\u${upper ? hex.toUpperCase() : hex}`;
  }
  return out;
}

/**
 * The base64 characters that stay the same whatever bytes surround the secret when `offset` bytes precede it
 * in an encoded blob: found by encoding it between all-zero and between all-one neighbours and keeping the
 * run of characters where the two agree (any character that mixes in a neighbour bit differs).
 */
export function stableBase64(secret: string, offset: number): string {
  const bytes = Buffer.from(secret, 'utf8');
  const zeros = Buffer.concat([Buffer.alloc(offset, 0x00), bytes, Buffer.alloc(3, 0x00)]).toString('base64');
  const ones = Buffer.concat([Buffer.alloc(offset, 0xff), bytes, Buffer.alloc(3, 0xff)]).toString('base64');
  let start = 0;
  while (start < zeros.length && zeros[start] !== ones[start]) start++;
  let end = start;
  while (end < zeros.length && zeros[end] === ones[end]) end++;
  return zeros.slice(start, end);
}

/**
 * Each form with its name: raw; URL-encoded (encodeURIComponent) and form-encoded (URLSearchParams), with
 * upper- and lowercase hex, as Python's quote and Go's PathEscape write it, and as the WHATWG URL parser writes
 * it in a query and a fragment; JSON-escaped, also with "\/" for
 * "/", with non-ASCII as \uxxxx, as Go, as Gson and as
 * System.Text.Json write it (HTML-sensitive characters as \u escapes), as util.inspect quotes it, and with every unit as
 * \uXXXX (either case); hex (either case); base64 (padded and not), base64url (padded and not), and the
 * stable base64/base64url characters at byte offsets 0, 1 and 2 inside a larger blob (8 characters or more).
 * Shorter than 4 characters: not a form.
 */
export function expectedNamedForms(secret: string): [name: string, form: string][] {
  const bytes = Buffer.from(secret, 'utf8');
  const base64 = bytes.toString('base64');
  const url = (text: string) => text.replace(/\+/g, '-').replace(/\//g, '_');
  const json = JSON.stringify(secret).slice(1, -1);
  const asciiJson = [...json].map((c) => (c.charCodeAt(0) > 0x7f ? escapeAllUnits(c, false) : c)).join('');
  // Go's encoding/json: JSON.stringify's output with < > & U+2028 U+2029 as lowercase \u escapes.
  const goJson = [...json].map((c) => ('<>&\u2028\u2029'.includes(c) ? escapeAllUnits(c, false) : c)).join('');
  // ASP.NET Core's System.Text.Json: " & ' + < > ` controls and non-ASCII as uppercase \u escapes, \ as \\.
  const dotnet = Array.from({ length: secret.length }, (_, i) => {
    const c = secret[i]!;
    if (c === '\\') return '\\\\';
    const short = { '\b': '\\b', '\t': '\\t', '\n': '\\n', '\f': '\\f', '\r': '\\r' }[c];
    if (short) return short;
    const code = c.charCodeAt(0);
    return code < 0x20 || code > 0x7e || '"&\'+<>`'.includes(c) ? escapeAllUnits(c, true) : c;
  }).join('');
  // Gson (HTML-safe by default): Go's set plus = and ', lowercase.
  const gson = [...json].map((c) => ("<>&='\u2028\u2029".includes(c) ? escapeAllUnits(c, false) : c)).join('');
  const uri = encodeURIComponent(secret);
  const form = new URLSearchParams({ k: secret }).toString().slice(2);
  const keepOnly = (kept: string) =>
    [...Buffer.from(secret, 'utf8')]
      .map((byte) =>
        kept.includes(String.fromCharCode(byte))
          ? String.fromCharCode(byte)
          : `%${byte.toString(16).padStart(2, '0').toUpperCase()}`,
      )
      .join('');
  const alphanumeric = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const hex = bytes.toString('hex');
  const named: [string, string][] = [
    ['raw', secret],
    // Hex keys and UUIDs only (case-insensitive): another secret's other case is ordinary text.
    ...(/^[0-9a-f-]+$/i.test(secret)
      ? ([
          ['uppercase', secret.toUpperCase()],
          ['lowercase', secret.toLowerCase()],
        ] as [string, string][])
      : []),
    ['url-encoded', uri],
    ['url-encoded lowercase', lowerEscapes(uri)],
    ['form-encoded', form],
    ['form-encoded lowercase', lowerEscapes(form)],
    ['Python urllib.parse.quote', keepOnly(`${alphanumeric}_.-~/`)],
    ['Go url.PathEscape', keepOnly(`${alphanumeric}-_.~$&+:=@`)],
    ['WHATWG URL query', keepOnly(printableAsciiBut(`"#'<>`))],
    ['WHATWG URL fragment', keepOnly(printableAsciiBut('"<>`'))],
    ['every byte percent-encoded', keepOnly('')],
    ['every byte percent-encoded, lowercase', keepOnly('').toLowerCase()],
    ['JSON', json],
    ['JSON \\/', json.split('/').join('\\/')],
    ['JSON ASCII', asciiJson],
    ['JSON ASCII \\/', asciiJson.split('/').join('\\/')],
    ['JSON, Go (HTML-safe)', goJson],
    ['JSON, Gson (HTML-safe)', gson],
    ['JSON, System.Text.Json', dotnet],
    // Node's own printer is the statement of how `console` shows a string inside an object.
    ['util.inspect', inspect(secret).slice(1, -1)],
    ['\\u lowercase', escapeAllUnits(secret, false)],
    ['\\u uppercase', escapeAllUnits(secret, true)],
    ['hex lowercase', hex],
    ['hex uppercase', hex.toUpperCase()],
    ['base64', base64],
    ['base64 unpadded', base64.replace(/=+$/, '')],
    ['base64url', url(base64).replace(/=+$/, '')],
    ['base64url padded', url(base64)],
  ];
  for (const offset of [0, 1, 2]) {
    const stable = stableBase64(secret, offset);
    if (stable.length < 8) continue;
    named.push([`base64 at offset ${offset}`, stable], [`base64url at offset ${offset}`, url(stable)]);
  }
  const seen = new Set<string>();
  return named.filter(([, text]) => text.length >= 4 && !seen.has(text) && seen.add(text));
}

export function expectedForms(secret: string): string[] {
  return expectedNamedForms(secret).map(([, form]) => form);
}

export function formBuffers(secrets: readonly string[]): Buffer[] {
  const all = new Set<string>();
  for (const secret of secrets) for (const form of expectedForms(secret)) all.add(form);
  return [...all].map((form) => Buffer.from(form, 'utf8'));
}

/** Scans left to right; at each position replaces the longest form that starts there. */
export function referenceScrub(input: Buffer, forms: readonly Buffer[]): Buffer {
  const out: Buffer[] = [];
  const firstBytes = new Set(forms.map((form) => form[0]));
  let literalStart = 0;
  let i = 0;
  while (i < input.length) {
    if (!firstBytes.has(input[i])) {
      i++;
      continue;
    }
    let best = 0;
    for (const form of forms) {
      if (form.length > best && i + form.length <= input.length && input.compare(form, 0, form.length, i, i + form.length) === 0) {
        best = form.length;
      }
    }
    if (best > 0) {
      out.push(input.subarray(literalStart, i), MARKER);
      i += best;
      literalStart = i;
    } else {
      i++;
    }
  }
  out.push(input.subarray(literalStart));
  return Buffer.concat(out);
}

/**
 * The forms the log scrubber looks for: every form, and each as JSON.stringify writes it inside a string (a
 * log line is JSON, so a logged form with a backslash or a quote reaches it escaped once more).
 */
export function expectedLogForms(secret: string): string[] {
  const forms = expectedForms(secret);
  return [...new Set([...forms, ...forms.map((form) => JSON.stringify(form).slice(1, -1))])];
}

/** The same replacement on JS strings (UTF-16 code units, so lone surrogates survive), with the log forms. */
export function referenceScrubText(text: string, secrets: readonly string[]): string {
  const forms = [...new Set(secrets.flatMap(expectedLogForms))];
  let out = '';
  let i = 0;
  while (i < text.length) {
    let best = '';
    for (const form of forms) if (form.length > best.length && text.startsWith(form, i)) best = form;
    if (best) {
      out += MARKER_TEXT;
      i += best.length;
    } else {
      out += text[i];
      i++;
    }
  }
  return out;
}

/** True when some suffix of `data` is a proper prefix of a form: a streaming scrubber may hold it back. */
export function endsInPartialForm(data: Buffer, forms: readonly Buffer[]): boolean {
  for (const form of forms) {
    for (let length = Math.min(form.length - 1, data.length); length > 0; length--) {
      if (data.compare(form, 0, length, data.length - length, data.length) === 0) return true;
    }
  }
  return false;
}

/**
 * True when a form begins with the end of the marker or ends with its start (or contains it): the marker
 * next to input text can then spell the form, e.g. a secret ending in "[" followed by a replaced secret.
 * Such output holds no more of the secret than the input did, so the "no form in the output" check skips them.
 */
export function overlapsMarker(forms: readonly (string | Buffer)[]): boolean {
  return forms.some((f) => {
    const form = f.toString();
    if (form.includes(MARKER_TEXT)) return true;
    for (let k = 1; k < MARKER_TEXT.length; k++) {
      if (form.endsWith(MARKER_TEXT.slice(0, k)) || form.startsWith(MARKER_TEXT.slice(-k))) return true;
    }
    return false;
  });
}

export function containsAnyForm(data: Buffer, forms: readonly Buffer[]): boolean {
  return forms.some((form) => data.includes(form));
}

/** A secret whose forms are all different: every form listed above is a form of its own. */
export const EVERY_FORM_SECRET = '"?~>é/ (k0';

/** A secret with every character that means something in a regular expression. */
export const REGEX_SPECIAL_SECRET = 'a.b*c+d?e(f)[g]{h}|i^j$k\\l';
