import { formsOfSecrets } from '../log/scrub';
import { PROXIED_CONTENT_SECURITY_POLICY } from '../respond/content-policy';

/**
 * Request headers Keyward forwards by default. An allow-list, not a block-list: hop-by-hop headers
 * (RFC 9110 §7.6.1), `Expect` (breaks undici), cookies, client credentials and `accept-encoding` (we ask
 * upstream for identity and decode ourselves) never pass. Upstreams may add names through `requestHeaders`.
 *
 * `Range` and `If-Range` are not among them: a client that chooses the byte ranges can cut a key the upstream
 * echoes into pieces that each pass the scrubber (which sees one response at a time), and join them. An upstream
 * whose answers never hold a key (a file store) may add them, with `content-range` and `accept-ranges`.
 */
export const DEFAULT_REQUEST_HEADERS: ReadonlySet<string> = new Set([
  'accept',
  'accept-language',
  'content-type',
  'content-language',
  'if-match',
  'if-none-match',
  'if-modified-since',
  'if-unmodified-since',
  'last-event-id',
  'idempotency-key',
]);

/** Response headers passed back by default; everything else (set-cookie, www-authenticate, …) is dropped. */
export const DEFAULT_RESPONSE_HEADERS: ReadonlySet<string> = new Set([
  'content-type',
  'content-language',
  'content-disposition',
  'etag',
  'last-modified',
  'retry-after',
  'ratelimit',
  'ratelimit-policy',
  'x-ratelimit-limit',
  'x-ratelimit-remaining',
  'x-ratelimit-reset',
]);

/**
 * Names a message's `Connection` header lists: hop-by-hop for that one connection, which a proxy MUST NOT
 * forward (RFC 9110 §7.6.1), even a name Keyward would otherwise pass. Null when there is none.
 */
export function connectionOptions(value: string | string[] | null | undefined): Set<string> | null {
  if (!value) return null;
  const names = new Set<string>();
  for (const line of Array.isArray(value) ? value : [value]) {
    for (const token of line.split(',')) {
      const name = token.trim().toLowerCase();
      if (name) names.add(name);
    }
  }
  return names;
}

/** Builds the upstream request headers from the client's, keeping only allow-listed names. */
export function filterRequestHeaders(incoming: Headers, extra: ReadonlySet<string>): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  const hopByHop = connectionOptions(incoming.get('connection'));
  incoming.forEach((value, name) => {
    // Headers iterates lowercased names.
    if ((DEFAULT_REQUEST_HEADERS.has(name) || extra.has(name)) && !hopByHop?.has(name)) out[name] = value;
  });
  return out;
}

/**
 * Keeps allow-listed upstream response headers. A header whose value contains a secret is dropped whole:
 * an upstream that echoes the key into a header must not hand it to the browser. Repeated lines of one name
 * reach the client as one value joined by ", " (RFC 9110 §5.3; fetch's Headers and node:http both join them),
 * so lines that each hold a piece of a key (`sk-abc` and `def123`) are checked joined as well, and the name
 * is dropped with all its lines when the join holds one (`containsSecret` also reads a value without its list
 * separators).
 *
 * `Link` is never passed as the upstream wrote it, even when `extra` names it: each line goes through
 * `rewriteLink` (lib/core/respond/links.ts), and what it returns is checked for secrets like any other value;
 * without `rewriteLink`, `Link` is dropped.
 */
export function filterResponseHeaders(
  upstreamHeaders: Record<string, string | string[] | undefined>,
  extra: ReadonlySet<string>,
  secrets: readonly string[],
  rewriteLink?: (value: string) => string | null,
): Headers {
  const out = new Headers();
  const hopByHop = connectionOptions(upstreamHeaders.connection ?? upstreamHeaders.Connection);
  // Kept lines by lowercased name: a raw object may hold one name in two cases, still one header to the client.
  const kept = new Map<string, string[]>();
  for (const name in upstreamHeaders) {
    const lower = name.toLowerCase();
    const link = lower === 'link';
    if ((link ? !rewriteLink : !DEFAULT_RESPONSE_HEADERS.has(lower) && !extra.has(lower)) || hopByHop?.has(lower)) continue;
    const raw = upstreamHeaders[name];
    if (raw === undefined) continue;
    const values = Array.isArray(raw) ? raw : [raw];
    for (const written of values) {
      const value = link ? rewriteLink!(written) : written;
      if (value === null || containsSecret(value, secrets)) continue;
      const lines = kept.get(lower);
      if (lines) lines.push(value);
      else kept.set(lower, [value]);
    }
  }
  for (const [name, lines] of kept) {
    if (lines.length > 1 && containsSecret(lines.join(', '), secrets)) continue;
    for (const line of lines) out.append(name, line);
  }
  return out;
}

/** A MIME type's `type/subtype`, each an RFC 9110 token. */
const MIME_ESSENCE = /^[!#$%&'*+.^_`|~0-9a-z-]+\/[!#$%&'*+.^_`|~0-9a-z-]+$/;

/**
 * Whether a browser may render the answer as a document that can carry markup or script. The value is read as
 * the Fetch standard's "extract a MIME type" reads it: a comma-separated list (two header lines arrive as one),
 * commas inside quoted parameters not splitting it, the last valid type winning, and no valid type at all
 * meaning the browser sniffs the body. So the answer is active when any listed valid type is (whichever one a
 * browser picks), or when none is valid. Written by hand: the `content-type` package parses one type and
 * throws on a list, and the split is these few lines.
 */
function isActiveContent(contentType: string | null): boolean {
  const essences = listItems(contentType ?? '')
    .map((item) => item.split(';')[0]!.replace(HTTP_WHITESPACE, '').toLowerCase())
    .filter((essence) => MIME_ESSENCE.test(essence) && essence !== '*/*');
  return essences.length === 0 || essences.some((essence) => isActiveEssence(essence) || SNIFFED.has(essence));
}

/** Leading and trailing HTTP whitespace (tab, line feed, carriage return, space): no other character is trimmed. */
const HTTP_WHITESPACE = /^[\t\n\r ]+|[\t\n\r ]+$/g;
// Types the MIME Sniffing standard treats as no type at all, so the browser sniffs the body. The any-type
// wildcard is skipped in a list (Fetch's "extract a MIME type"); these two may be the one a browser picks.
const SNIFFED = new Set(['unknown/unknown', 'application/unknown']);

/** A header value split at the commas outside quoted strings (with `\` escapes inside them), in one pass. */
function listItems(value: string): string[] {
  const items: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const char = value[i];
    if (quoted && char === '\\') i++;
    else if (char === '"') quoted = !quoted;
    else if (char === ',' && !quoted) {
      items.push(value.slice(start, i));
      start = i + 1;
    }
  }
  items.push(value.slice(start));
  return items;
}

/** Types a browser renders as a document that can carry markup or script: HTML, SVG, any XML. */
function isActiveEssence(essence: string): boolean {
  return (
    essence === 'text/html' ||
    essence === 'text/xml' ||
    essence === 'text/xsl' ||
    essence === 'application/xml' ||
    essence.endsWith('+xml') ||
    essence === 'multipart/x-mixed-replace'
  );
}

/**
 * Sets the sandboxing policy on a proxied answer, and makes an active type (`isActiveContent`) an attachment: a
 * link to it downloads a file rather than showing the upstream's markup under the app's address. Applied after the
 * upstream's headers are filtered, so an upstream's own policy or `inline` disposition cannot loosen it.
 */
export function guardActiveContent(headers: Headers): void {
  headers.set('content-security-policy', PROXIED_CONTENT_SECURITY_POLICY);
  if (isActiveContent(headers.get('content-type'))) headers.set('content-disposition', 'attachment');
}

/**
 * True if the value holds any form of a secret (`secretForms` in log/scrub.ts: raw, percent-encoded in either
 * case, JSON-escaped, `\u`-escaped, hex, base64 and base64url at every alignment), also once its percent escapes
 * are decoded (which catches any mix of letter cases and over-eager encoders that escape every byte). undici
 * reads header values as latin1, so a value with bytes above 0x7f is also read as the UTF-8 its sender wrote.
 * A value that is a list is also read with its separators taken out: a client splitting `sk-abc, def123` into
 * its items joins a key back.
 */
function containsSecret(value: string, secrets: readonly string[]): boolean {
  if (secrets.length === 0) return false;
  const readings = readingsOf(value);
  if (value.includes(',')) readings.push(...readingsOf(value.replace(LIST_SEPARATOR, '')));
  return formsOfSecrets(secrets).some((form) => readings.some((reading) => reading.includes(form)));
}

/** A comma between list items, with the optional whitespace around it (RFC 9110 §5.6.1). */
const LIST_SEPARATOR = /[\t ]*,[\t ]*/g;

function readingsOf(value: string): string[] {
  const readings = [value, decodePercentRuns(value)];
  if (/[^\x00-\x7f]/.test(value)) readings.push(Buffer.from(value, 'latin1').toString('utf8'));
  return readings;
}

/**
 * Decodes each run of %XX escapes on its own, so one stray "%" elsewhere in the value cannot stop an
 * encoded secret from being recognised (decodeURIComponent would throw on the whole value). Byte by byte as
 * UTF-8: an escape that is not UTF-8 next to the secret's (an RFC 5987 `ISO-8859-1''` filename's `%E9`, a stray
 * `%FF`) becomes U+FFFD instead of leaving the whole run undecoded, as decodeURIComponent would.
 */
function decodePercentRuns(value: string): string {
  return value.replace(/(?:%[0-9A-Fa-f]{2})+/g, (run) => Buffer.from(run.replaceAll('%', ''), 'hex').toString('utf8'));
}

const METHOD_OVERRIDE_HEADERS = ['x-http-method-override', 'x-http-method', 'x-method-override'];

export function hasMethodOverride(headers: Headers, search: URLSearchParams): boolean {
  return METHOD_OVERRIDE_HEADERS.some((name) => headers.has(name)) || search.has('_method');
}
