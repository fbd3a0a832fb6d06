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

  it('returns non-errors and errors without secrets to scrub unchanged', () => {
    const error = new Error('plain');
    expect(scrubError(error, [])).toBe(error);
    expect(scrubError('text', ['x'.repeat(10)])).toBe('text');
  });
});
