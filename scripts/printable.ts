/**
 * Text from a document or a store (an OpenAPI description, an OIDC subject, a route) with what a terminal or an
 * editor would act on written as `\uXXXX` escapes: control characters (a terminal's escape sequences among them)
 * and bidirectional overrides, isolates and marks, which can hide or reorder the text a person reads.
 */
export function printable(text: string): string {
  return text.replace(
    /[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}
