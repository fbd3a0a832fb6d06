import { describe, expect, it } from 'vitest';
import { assertSafeSegments, isSafeSegment } from '../../../lib/core/route/segments';
import { expectKeywardError, thrown } from '../support';

// RFC 3986 §2.3 unreserved and §2.2 sub-delims are the only characters a segment may hold.
const ACCEPT = [
  'items',
  '42',
  'a-b_c.d~e',
  'v1.2.3',
  '.hidden',
  'file.',
  // GitHub's compare API names a range `base...head`: dots inside a name are fine.
  'main...feature',
  'a;b',
  'x;..',
  "!$&'()*+,;=",
  'A'.repeat(512),
  // ":" inside a segment (RFC 3986 §3.3 pchar): Google custom methods, AWS Bedrock model ids.
  'gemini-2.0-flash:generateContent',
  'anthropic.claude-3-5-sonnet-20240620-v1:0',
  'us.anthropic.claude-3-7-sonnet-20250219-v1:0',
  'ab:cd:ef',
  // Accepted here; a plain `:param` never captures it, so only a template that allows ":" lets it through.
  'localhost:80',
];

const REFUSE: Array<[string, string]> = [
  ['empty', ''],
  ['dot', '.'],
  ['dot-dot', '..'],
  // Dot segments to servers behind an upstream: IIS strips trailing dots, Java stacks drop `;parameters`.
  ['three dots', '...'],
  ['dot-dot with an empty path parameter (Tomcat)', '..;'],
  ['dot-dot with a path parameter (Tomcat)', '..;jsessionid=1'],
  ['dot with a path parameter', '.;x'],
  ['slash', 'a/b'],
  ['backslash', 'a\\b'],
  ['colon alone', ':'],
  ['two colons', '::'],
  ['leading colon', ':a'],
  ['leading colon (a template-like :name)', ':id'],
  ['trailing colon', 'a:'],
  ['trailing colon (drive letter)', 'C:'],
  ['trailing colon (scheme)', 'https:'],
  ['doubled colon', 'a::b'],
  ['IPv6-like', '::1'],
  ['special scheme before the colon', 'https:evil.example'],
  ['special scheme, upper case', 'HTTP:evil.example'],
  ['ws scheme', 'wss:evil.example'],
  ['file scheme', 'file:etc'],
  ['ftp scheme', 'ftp:x'],
  ['drive letter with a path', 'c:windows'],
  ['javascript scheme', 'javascript:alert(1)'],
  ['data scheme', 'Data:text'],
  ['encoded colon (still encoded after one decoding)', '%3A'],
  ['encoded colon inside', 'a%3Ab'],
  ['fullwidth colon U+FF1A', 'a\uFF1Ab'],
  ['modifier letter colon U+A789', 'a\uA789b'],
  ['ratio U+2236', 'a\u2236b'],
  ['modifier letter raised colon U+02F8', 'a\u02F8b'],
  ['presentation form colon U+FE13', 'a\uFE13b'],
  ['small colon U+FE55', 'a\uFE55b'],
  ['Armenian full stop U+0589', 'a\u0589b'],
  ['question mark', 'a?b'],
  ['hash', 'a#b'],
  ['percent', '%2e%2e'],
  ['encoded slash', '%2F'],
  ['at sign', 'user@host'],
  ['space', 'a b'],
  ['NUL', 'a\u0000'],
  ['CR LF', 'a\r\nb'],
  ['tab', '\t'],
  ['DEL', '\u007f'],
  ['fullwidth dot pair', '\uFF0E\uFF0E'],
  ['one dot leader pair', '\u2024\u2024'],
  ['non-ASCII letter', 'caf\u00e9'],
  ['Cyrillic homoglyph', '\u0430pi'],
  ['emoji', '\u{1F600}'],
  ['double quote', 'a"b'],
  ['angle brackets', '<script>'],
  ['square brackets', '[::1]'],
  ['braces', '{x}'],
  ['pipe', 'a|b'],
  ['caret', 'a^b'],
  ['backtick', 'a`b'],
  ['too long', 'A'.repeat(513)],
];

describe('isSafeSegment', () => {
  it.each(ACCEPT.map((s) => [s.length > 40 ? `${s.slice(0, 10)}…(${s.length})` : s, s]))('accepts %s', (_l, s) => {
    expect(isSafeSegment(s)).toBe(true);
  });

  it.each(REFUSE)('refuses %s', (_label, s) => {
    expect(isSafeSegment(s)).toBe(false);
  });
});

describe('assertSafeSegments', () => {
  it('accepts an empty list and a list of safe segments', () => {
    expect(() => assertSafeSegments([])).not.toThrow();
    expect(() => assertSafeSegments(ACCEPT)).not.toThrow();
  });

  it.each(REFUSE)('throws bad_path (400) when any segment is refused: %s', (_label, s) => {
    const error = expectKeywardError(
      thrown(() => assertSafeSegments(['ok', s, 'ok'])),
      'bad_path',
    );
    expect(error.status).toBe(400);
  });

  it('refuses more than 64 segments', () => {
    expect(() => assertSafeSegments(new Array<string>(64).fill('x'))).not.toThrow();
    expectKeywardError(
      thrown(() => assertSafeSegments(new Array<string>(65).fill('x'))),
      'bad_path',
    );
  });
});
