import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { scrubError } from '../../../lib/core/log/scrub';
import { randomSecret } from '../../fixtures/secrets';

describe('scrubError', () => {
  it('removes per-call secrets (raw and URL-encoded) from message, stack and causes', () => {
    const secret = `${randomSecret('user')}/+=`;
    const inner = new Error(`connect failed for https://api.example.com/x?key=${encodeURIComponent(secret)}`);
    const outer = new TypeError(`Headers: invalid value "${secret}"`, { cause: inner });
    const scrubbed = JSON.stringify(scrubError(outer, [secret]));
    expect(scrubbed).not.toContain(secret);
    expect(scrubbed).not.toContain(encodeURIComponent(secret));
    expect(scrubbed).toContain('[REDACTED]');
    expect(scrubbed).toContain('TypeError');
    expect(scrubbed).toContain('connect failed');
  });

  it('returns what was thrown unchanged when there are no secrets to scrub', () => {
    const error = new Error('plain');
    expect(scrubError(error, [])).toBe(error);
    expect(scrubError('text', [])).toBe('text');
    expect(scrubError(undefined, ['x'.repeat(10)])).toBeUndefined();
  });

  it('scrubs what was thrown that is not an Error: a string, a plain object, an error of another realm, a code', () => {
    const secret = randomSecret('user');
    const thrown: unknown[] = [
      `Bearer ${secret}`,
      { detail: { header: `Bearer ${secret}` } },
      runInNewContext(`new TypeError(${JSON.stringify(`bad header ${secret}`)})`),
      Object.assign(new Error('failed'), { code: `E_${secret}` }),
      new Error('outer', { cause: `inner ${secret}` }),
      Object.assign(new Error(), { message: { header: `Bearer ${secret}` } }),
    ];
    for (const value of thrown) {
      const scrubbed = JSON.stringify(scrubError(value, [secret]));
      expect(scrubbed).not.toContain(secret);
      expect(scrubbed).toContain('[REDACTED]');
    }
    // Unprintable values are described by type, not thrown over.
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(scrubError(cyclic, [secret])).toEqual({ type: 'object', message: '[unprintable]' });
    expect(scrubError(10n, [secret])).toEqual({ type: 'bigint', message: '10' });
  });
});
