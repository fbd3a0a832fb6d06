import { KeywardError } from '../errors';

/**
 * Next.js decodes %2F, %5C, %00, %3F, %23 … inside catch-all params, so `..%2F..%2Fadmin` arrives as
 * `../../admin`. Every decoded segment must therefore be checked before it goes anywhere near a URL.
 * Allowed: RFC 3986 §2.3 unreserved characters, the §2.2 sub-delims, and ":" inside a segment (below), nothing
 * else. That refuses `/ \ ? # % @`, spaces, control bytes and all non-ASCII (fullwidth dots, homoglyphs, and
 * look-alike colons such as U+FF1A "：" or U+A789 "꞉"), and dot segments (`.`, `..`, `...`, `..;`: DOT_SEGMENT).
 */
const SAFE_SEGMENT = /^[A-Za-z0-9._~!$&'()*+,;=:-]+$/;

/**
 * ":" is a pchar (RFC 3986 §3.3), needed by Google's custom methods (`models/gemini-2.0-flash:generateContent`)
 * and by AWS Bedrock model ids (`anthropic.claude-3-5-sonnet-20240620-v1:0`). It is only ambiguous in the first
 * segment of a relative-path reference, where it would end a scheme (RFC 3986 §4.2); Keyward never resolves a
 * reference: segments are appended after the base path's "/" and the result is asserted (forward/url.ts). Still,
 * a segment is kept from looking like anything but a name: ":" never first, never last, never two in a row.
 */
const MISPLACED_COLON = /^:|:$|::/;

/**
 * Nor may the text before the first ":" be a scheme WHATWG URL parsers treat specially (`https:evil.example`
 * resolved against an `http:` base becomes `https://evil.example/`, WHATWG URL "special authority ignore
 * slashes" state), one a browser acts on if an upstream ever echoes the path into a link (`javascript:`,
 * `data:`, `blob:`, `vbscript:`), or a single letter (a Windows drive letter, `C:`, which file URLs and Windows
 * paths honour). Defence in depth only: none of them is ever resolved, but no API needs them either.
 */
const SCHEME_LIKE = /^(?:[A-Za-z]|https?|wss?|ftp|file|javascript|data|blob|vbscript):/i;

/**
 * A segment of dots only, or of dots before a `;`, is a dot segment to some server behind an upstream even when
 * it is not one to a URL parser: Tomcat and other Java stacks drop a segment's `;parameters` before resolving dots
 * (`..;` is `..`; Keyward forwards it as `..%3B`, which a lenient decoder turns back), and servers that strip
 * trailing dots from a name (IIS, Windows paths) read `...` as `..`. No API names a resource with dots alone, so
 * all of them are refused with `.` and `..`.
 */
const DOT_SEGMENT = /^\.+(?:;|$)/;

const MAX_SEGMENTS = 64;
const MAX_SEGMENT_LENGTH = 512;

export function isSafeSegment(segment: string): boolean {
  return (
    segment.length <= MAX_SEGMENT_LENGTH &&
    SAFE_SEGMENT.test(segment) &&
    !DOT_SEGMENT.test(segment) &&
    (!segment.includes(':') || (!MISPLACED_COLON.test(segment) && !SCHEME_LIKE.test(segment)))
  );
}

export function assertSafeSegments(segments: readonly string[]): void {
  if (segments.length > MAX_SEGMENTS) throw new KeywardError('bad_path');
  for (const segment of segments) {
    if (!isSafeSegment(segment)) throw new KeywardError('bad_path');
  }
}

/**
 * A path segment as the fast lane reads a request target (lib/node/proxy-path.ts) and the WebSocket ticket reads
 * its path: decoded once; invalid percent-encoding stays as written (the segment checks then refuse its `%`).
 */
export function decodeSegment(segment: string): string {
  if (!segment.includes('%')) return segment;
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}
