import { describe, expect, it, vi } from 'vitest';
import { UserKeys } from '../../../lib/core/credential/user-keys';
import { keyFingerprints } from '../../../lib/core/keys/fingerprint';
import { Vault } from '../../../lib/core/vault/seal';
import { MemoryStore } from '../../../lib/store/memory';
import { randomSecret } from '../../fixtures/secrets';

/** A user's own keys against the in-memory store, on one clock for both (the store expires entries by it). */
function setup() {
  const clock = { now: 1_800_000_000_000 };
  const store = new MemoryStore(() => clock.now);
  const keys = new UserKeys(
    store,
    new Vault(randomSecret('vault-secret-of-32-characters-or-more')),
    () => clock.now,
    keyFingerprints(randomSecret('server')),
  );
  return { clock, store, keys };
}

/** Lets the fire-and-forget "last used" writes land. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("a user's own key: its last use", () => {
  it('is recorded once a minute: one marker command a minute from this process, not one per call', async () => {
    const { clock, store, keys } = setup();
    await keys.put('openai', { userId: 'local:ada' }, randomSecret('own'));
    const setIfAbsent = vi.spyOn(store, 'setIfAbsent');
    for (let i = 0; i < 5; i++) await keys.use('openai', { userId: 'local:ada' });
    await settle();
    expect(setIfAbsent).toHaveBeenCalledTimes(1);
    const first = (await keys.describe('openai', { userId: 'local:ada' }))!.lastUsedAt;
    expect(first).toBe(new Date(clock.now).toISOString());
    clock.now += 61_000;
    await keys.use('openai', { userId: 'local:ada' });
    await settle();
    expect(setIfAbsent).toHaveBeenCalledTimes(2);
    expect((await keys.describe('openai', { userId: 'local:ada' }))!.lastUsedAt).toBe(new Date(clock.now).toISOString());
  });

  it('is not kept for good: deleted with the key or when the key is replaced, and expires 400 days after the last use', async () => {
    const { clock, store, keys } = setup();
    const first = await keys.put('openai', { userId: 'local:bo' }, randomSecret('own'));
    await keys.use('openai', { userId: 'local:bo' });
    await settle();
    const usedKey = `ukey-used:openai:local:bo:${first.fingerprint}`;
    expect(await store.get(usedKey)).not.toBeNull();
    expect(await keys.delete('openai', 'local:bo')).toBe(true);
    expect(await store.get(usedKey)).toBeNull();

    // Replaced: the old key's record goes with it.
    const second = await keys.put('openai', { userId: 'local:bo' }, randomSecret('own'));
    await keys.use('openai', { userId: 'local:bo' });
    await settle();
    const secondUsed = `ukey-used:openai:local:bo:${second.fingerprint}`;
    expect(await store.get(secondUsed)).not.toBeNull();
    const third = await keys.put('openai', { userId: 'local:bo' }, randomSecret('own'));
    expect(await store.get(secondUsed)).toBeNull();

    // Kept, it expires 400 days after the last use.
    clock.now += 61_000;
    await keys.use('openai', { userId: 'local:bo' });
    await settle();
    const thirdUsed = `ukey-used:openai:local:bo:${third.fingerprint}`;
    clock.now += 399 * 86_400_000;
    expect(await store.get(thirdUsed)).not.toBeNull();
    clock.now += 2 * 86_400_000;
    expect(await store.get(thirdUsed)).toBeNull();
  });
});
