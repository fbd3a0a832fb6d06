import { KeywardError } from '../errors';

/**
 * Next.js decodes %2F, %5C, %00, %3F, %23 … inside catch-all params, so `..%2F..%2Fadmin` arrives as
 * `../../admin`. Every decoded segment must therefore be checked before it goes anywhere near a URL.
 * Allowed: RFC 3986 §2.3 unreserved characters and the §2.2 sub-delims, nothing else. That refuses
 * `/ \ : ? # % @`, spaces, control bytes and all non-ASCII (fullwidth dots, homoglyphs), and `.`/`..`.
 */
const SAFE_SEGMENT = /^[A-Za-z0-9._~!$&'()*+,;=-]+$/;
const MAX_SEGMENTS = 64;
const MAX_SEGMENT_LENGTH = 512;

export function isSafeSegment(segment: string): boolean {
  return (
    segment.length <= MAX_SEGMENT_LENGTH && SAFE_SEGMENT.test(segment) && segment !== '.' && segment !== '..'
  );
}

export function assertSafeSegments(segments: readonly string[]): void {
  if (segments.length > MAX_SEGMENTS) throw new KeywardError('bad_path');
  for (const segment of segments) {
    if (!isSafeSegment(segment)) throw new KeywardError('bad_path');
  }
}
