import { describe, expect, it } from 'vitest';
import { printable, printableJson } from '../../../scripts/printable';

/** What a terminal or an editor acts on: C0 and C1 controls (C1's one-byte CSI, U+009B), and Unicode's Bidi_Control set. */
const ACTIVE = ['\u0007', '\u001b', '\u007f', '\u009b', '\u061c', '\u200e', '\u200f', '\u2028', '\u2029', '\u202a', '\u202e', '\u2066', '\u2069'];

describe('printable and printableJson (the CLI, on what a user or an upstream chose)', () => {
  it('write every active character as an escape, and leave other text alone', () => {
    for (const c of ACTIVE) {
      expect(printable(`a${c}b`), c.charCodeAt(0).toString(16)).toBe(`a\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}b`);
    }
    expect(printable('café ☕ 東京')).toBe('café ☕ 東京');
  });

  it('JSON: none reaches the terminal raw, and the text is the same JSON', () => {
    const record = { targetUser: `oidc:victim${ACTIVE.join('')}`, nested: [{ path: '/a\u202eb' }], plain: 'café' };
    const text = printableJson(record, 2);
    for (const c of ACTIVE) expect(text.includes(c), c.charCodeAt(0).toString(16)).toBe(false);
    expect(JSON.parse(text)).toEqual(record);
    expect(JSON.parse(printableJson(record))).toEqual(record);
    expect(text).toContain('café');
  });
});
