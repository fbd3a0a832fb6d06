import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { DECOY_SHAPES, decoyId, mintDecoy, type DecoyShape } from '../../../lib/core/detect/mint';

/**
 * Each shape as the providers' keys look (and as secret scanners such as gitleaks match them): prefix, length
 * and alphabet. A decoy that a scanner would not take for a key of that provider would fool nobody.
 */
const SHAPES: Record<DecoyShape, { value: RegExp; length: number; secret?: RegExp }> = {
  openai: { value: /^sk-proj-[A-Za-z0-9_-]{74}T3BlbkFJ[A-Za-z0-9_-]{74}$/, length: 164 },
  anthropic: { value: /^sk-ant-api03-[A-Za-z0-9_-]{93}AA$/, length: 108 },
  stripe: { value: /^sk_live_51[A-Za-z0-9]{97}$/, length: 107 },
  github: { value: /^ghp_[A-Za-z0-9]{36}$/, length: 40 },
  google: { value: /^AIza[0-9A-Za-z_-]{35}$/, length: 39 },
  aws: { value: /^AKIA[A-Z2-7]{16}$/, length: 20, secret: /^[A-Za-z0-9/+]{40}$/ },
  generic: { value: /^[A-Za-z0-9]{40}$/, length: 40 },
};

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

describe('mintDecoy', () => {
  it.each(DECOY_SHAPES)("mints %s keys of the provider's shape", (shape) => {
    const expected = SHAPES[shape];
    for (let i = 0; i < 50; i++) {
      const decoy = mintDecoy(shape);
      expect(decoy.shape).toBe(shape);
      expect(decoy.value).toMatch(expected.value);
      expect(decoy.value).toHaveLength(expected.length);
      if (expected.secret) expect(decoy.secret).toMatch(expected.secret);
      else expect(decoy.secret).toBeUndefined();
    }
  });

  it.each(DECOY_SHAPES)('mints a different %s key every time', (shape) => {
    const values = new Set(Array.from({ length: 200 }, () => mintDecoy(shape).value));
    expect(values.size).toBe(200);
  });

  it('draws the random part from the whole alphabet (no character class is missing)', () => {
    const text = Array.from({ length: 40 }, () => mintDecoy('openai').value.slice(8, 82)).join('');
    expect(text).toMatch(/[A-Z]/);
    expect(text).toMatch(/[a-z]/);
    expect(text).toMatch(/[0-9]/);
    expect(text).toMatch(/[-_]/);
  });

  it('gives GitHub tokens a valid checksum: the last 6 characters are the CRC32 of the 30 before them, in base62', () => {
    for (let i = 0; i < 100; i++) {
      const { value } = mintDecoy('github');
      const random = value.slice(4, 34);
      let checksum = 0;
      for (const char of value.slice(34)) checksum = checksum * 62 + BASE62.indexOf(char);
      expect(checksum).toBe(crc32(random));
    }
  });

  it('names decoys with random ids that say nothing about the value', () => {
    const ids = new Set(Array.from({ length: 100 }, () => decoyId()));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id).toMatch(/^decoy_[0-9a-f]{12}$/);
  });
});
