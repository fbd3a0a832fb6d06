import { describe, expect, it } from 'vitest';
import { HeldSecrets } from '../../../lib/core/respond/held-secrets';

describe('HeldSecrets', () => {
  it('the same frozen list until a secret not held yet is added, then a new one with it', () => {
    const held = new HeldSecrets(['first-secret', 'first-secret']);
    const before = held.current();
    expect(before).toEqual(['first-secret']);
    expect(Object.isFrozen(before)).toBe(true);
    held.add(['first-secret']);
    expect(held.current()).toBe(before);
    held.add(['second-secret', 'second-secret']);
    const after = held.current();
    expect(after).not.toBe(before);
    expect(after).toEqual(['first-secret', 'second-secret']);
    expect(Object.isFrozen(after)).toBe(true);
    // The list handed out before is left as it was (it keys caches by identity).
    expect(before).toEqual(['first-secret']);
  });
});
