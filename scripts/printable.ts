/**
 * What a terminal or an editor would act on in text from a document or a store: control characters (a terminal's
 * escape sequences among them, C1's one-byte CSI too) and the bidirectional controls (overrides, isolates and
 * marks, Unicode's Bidi_Control), which can hide or reorder the text a person reads; and the line and paragraph
 * separators, which some editors break lines at.
 */
const ACTIVE = /[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
/** The same, but for what JSON.stringify already writes as an escape (U+0000 to U+001F). */
const ACTIVE_IN_JSON = /[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

const escaped = (c: string) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

/** Text (an OpenAPI description, an OIDC subject, a route) with those characters written as `\uXXXX` escapes. */
export function printable(text: string): string {
  return text.replace(ACTIVE, escaped);
}

/**
 * `value` as JSON for a terminal (`--json`, `audit export`): JSON.stringify's text with those characters written
 * as `\uXXXX` escapes too, which is the same JSON (they can only stand inside its strings).
 */
export function printableJson(value: unknown, space?: number): string {
  return JSON.stringify(value, null, space).replace(ACTIVE_IN_JSON, escaped);
}
