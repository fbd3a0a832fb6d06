import { describe, expect, it, vi } from 'vitest';
import { UserKeys } from '../../../lib/core/credential/user-keys';
import { keyFingerprints } from '../../../lib/core/keys/fingerprint';
import { Vault } from '../../../lib/core/vault/seal';
import { MemoryStore } from '../../../lib/store/memory';
import { capturingLogger, findLeak } from '../../fixtures/log-capture';
import { randomSecret } from '../../fixtures/secrets';

/** A user's own keys against the in-memory store, on one clock for both (the store expires entries by it). */
function setup() {
  const clock = { now: 1_800_000_000_000 };
  const store = new MemoryStore(() => clock.now);
  const { logger, lines } = capturingLogger();
  const fingerprints = keyFingerprints(randomSecret('server'));
  const keys = new UserKeys(
    store,
    new Vault(randomSecret('vault-secret-of-32-characters-or-more')),
    () => clock.now,
    fingerprints,
    logger,
  );
  return { clock, store, keys, lines, fingerprints };
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
    expect((await keys.describe('openai', { userId: 'local:ada' }))!.lastUsedAt).toBe(
      new Date(clock.now).toISOString(),
    );
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

describe("a local user's own key and the password it was stored under", () => {
  /** The name's first owner (ada as she signed in) and its next one (the same name, another passwordHash). */
  const first = { userId: 'local:ada', passwordVersion: 'pwv-first-owner-0000' };
  const next = { userId: 'local:ada', passwordVersion: 'pwv-next-owner-00000' };

  it("is no key for the name's next owner (as with none), kept in the store, and warned of once naming user and upstream", async () => {
    const { store, keys, lines, fingerprints } = setup();
    const firstKey = randomSecret('sk_first');
    await keys.put('openai', first, firstKey);
    const stored = await store.get('ukey:openai:local:ada');
    expect(JSON.parse(stored!)).toMatchObject({ passwordVersion: first.passwordVersion });

    expect(await keys.use('openai', next)).toBeNull();
    expect(await keys.use('openai', next)).toBeNull();
    expect(await keys.describe('openai', next)).toBeNull();
    expect(await keys.currentFingerprint('openai', next, fingerprints)).toBeNull();
    // Nothing deleted or rewritten: a rolling deploy or an admin's mistake must not destroy it.
    expect(await store.get('ukey:openai:local:ada')).toBe(stored);
    expect(await keys.use('openai', first)).toBe(firstKey);
    const warned = lines.filter((line) => line.includes('stored under an earlier password'));
    expect(warned).toHaveLength(1);
    expect(JSON.parse(warned[0]!)).toMatchObject({ level: 40, userId: 'local:ada', upstream: 'openai' });
    expect(findLeak(lines.join(''), [firstKey])).toBeNull();

    // The next owner stores a key of their own in its place; the first owner's is gone for good.
    const nextKey = randomSecret('sk_next');
    await keys.put('openai', next, nextKey);
    expect(await keys.use('openai', next)).toBe(nextKey);
    expect((await keys.describe('openai', next))!.last4).toBe(nextKey.slice(-4));
    expect(await keys.use('openai', first)).toBeNull();
  });

  it("can be deleted by the name's next owner", async () => {
    const { store, keys } = setup();
    await keys.put('openai', first, randomSecret('sk_first'));
    expect(await keys.delete('openai', next.userId)).toBe(true);
    expect(await store.get('ukey:openai:local:ada')).toBeNull();
  });

  it("stored before keys were stamped: taken as the owner's at its first use and stamped then, so a later password finds none", async () => {
    const { store, keys } = setup();
    const legacyKey = randomSecret('sk_legacy');
    // What a key stored before this change looks like: no password version in the record.
    await keys.put('openai', { userId: 'local:ada' }, legacyKey);
    expect(JSON.parse((await store.get('ukey:openai:local:ada'))!)).not.toHaveProperty('passwordVersion');
    expect(await keys.describe('openai', first)).not.toBeNull();

    expect(await keys.use('openai', first)).toBe(legacyKey);
    await settle();
    expect(JSON.parse((await store.get('ukey:openai:local:ada'))!)).toMatchObject({
      passwordVersion: first.passwordVersion,
    });
    expect(await keys.use('openai', first)).toBe(legacyKey);
    expect(await keys.use('openai', next)).toBeNull();
  });

  it('changes nothing for users of an identity provider: no stamp, whatever the session says', async () => {
    const { store, keys } = setup();
    const key = randomSecret('sk_oidc');
    await keys.put('openai', { userId: 'oidc:42', passwordVersion: null }, key);
    expect(JSON.parse((await store.get('ukey:openai:oidc:42'))!)).not.toHaveProperty('passwordVersion');
    expect(await keys.use('openai', { userId: 'oidc:42' })).toBe(key);
    await settle();
    expect(JSON.parse((await store.get('ukey:openai:oidc:42'))!)).not.toHaveProperty('passwordVersion');
  });
});
