import { describe, expect, it, vi } from 'vitest';
import { OAuthTokenStore, type OAuthTokens } from '../../../lib/core/credential/oauth';
import { UserKeys } from '../../../lib/core/credential/user-keys';
import { keyFingerprints } from '../../../lib/core/keys/fingerprint';
import { Vault } from '../../../lib/core/vault/seal';
import { MemoryStore } from '../../../lib/store/memory';
import { randomSecret } from '../../fixtures/secrets';

/**
 * A sealed per-user secret opens only under the store entry it was sealed for. Someone who can write the store
 * (a shared Redis, its password leaked) but does not hold KEYWARD_VAULT_SECRET cannot read a victim's key, but
 * could copy the victim's sealed row into their own entry and have Keyward use it for their calls. The store,
 * the vault and both stores of secrets are the real ones.
 */
function setup() {
  const store = new MemoryStore();
  const vaultSecret = randomSecret('vault-secret-of-32-characters-or-more');
  const vault = new Vault(vaultSecret);
  const keys = new UserKeys(store, vault, Date.now, keyFingerprints(randomSecret('server')));
  const tokens = new OAuthTokenStore(store, vault, new Map(), Date.now);
  return { store, vault, vaultSecret, keys, tokens };
}

const grant = (label: string): OAuthTokens => ({ accessToken: randomSecret(`${label}-access`), refreshToken: randomSecret(`${label}-refresh`), expiresAt: Date.now() + 3_600_000 });

describe('a sealed secret copied to another entry of the store', () => {
  it("a user's own key copied to another user's entry, or to another upstream's, is refused (503), never used", async () => {
    const { store, keys } = setup();
    const aliceKey = randomSecret('alice-own');
    await keys.put('openai', { userId: 'local:alice' }, aliceKey);
    expect(await keys.use('openai', { userId: 'local:alice' })).toBe(aliceKey);
    const row = (await store.get('ukey:openai:local:alice'))!;
    for (const entry of ['ukey:openai:local:bob', 'ukey:anthropic:local:alice']) {
      await store.set(entry, row);
      const [upstream, user] = entry.slice('ukey:'.length).split(/:(.*)/s) as [string, string];
      await expect(keys.use(upstream, { userId: user })).rejects.toMatchObject({ code: 'credential_unavailable', status: 503 });
    }
    // The owner's own entry still opens.
    expect(await keys.use('openai', { userId: 'local:alice' })).toBe(aliceKey);
  });

  it("a user's OAuth tokens copied to another user's entry are refused (503), never used", async () => {
    const { store, tokens } = setup();
    const alice = grant('alice');
    await tokens.save('github', { userId: 'local:alice' }, alice);
    await store.set('oauth:github:local:bob', (await store.get('oauth:github:local:alice'))!);
    await expect(tokens.accessToken('github', { userId: 'local:bob' })).rejects.toMatchObject({ code: 'credential_unavailable' });
    await expect(tokens.load('github', 'local:bob')).rejects.toMatchObject({ code: 'credential_unavailable' });
    expect(await tokens.accessToken('github', { userId: 'local:alice' })).toBe(alice.accessToken);
  });
});

describe("a seal of another kind (the vault's own, not this entry's) copied to an entry", () => {
  it('is refused (503) where it lacks the secret the entry holds, never used as an empty key or token', async () => {
    const { store, vault, keys, tokens } = setup();
    // Sealed with the same vault secret, unbound and without a key (what a pending connect was sealed as).
    const other = await vault.seal({ provider: 'github', userId: 'local:mallory', state: 's', returnTo: '/' });
    await store.set('ukey:openai:local:bob', JSON.stringify({ sealed: other, fingerprint: 'x', last4: 'xxxx', createdAt: 0 }));
    await store.set('oauth:github:local:bob', other);
    await expect(keys.use('openai', { userId: 'local:bob' })).rejects.toMatchObject({ code: 'credential_unavailable', status: 503 });
    await expect(tokens.accessToken('github', { userId: 'local:bob' })).rejects.toMatchObject({ code: 'credential_unavailable', status: 503 });
    await expect(vault.openFor('e:1', other, 'key')).rejects.toMatchObject({ code: 'credential_unavailable' });
  });
});

describe('seals from before they named their entry', () => {
  it('open, are sealed again for the entry they are read under, and that seal does not open anywhere else', async () => {
    const { store, vault, keys, tokens } = setup();
    // Written as Keyward wrote them before: the value alone, sealed with the same vault secret.
    const ownKey = randomSecret('legacy-own');
    await store.set(
      'ukey:openai:local:carol',
      JSON.stringify({ sealed: await vault.seal({ key: ownKey }), fingerprint: 'legacy', last4: ownKey.slice(-4), createdAt: Date.now() }),
    );
    const carol = grant('carol');
    await store.set('oauth:github:local:carol', await vault.seal({ ...carol, refreshAt: carol.expiresAt - 60_000, savedAt: Date.now() }));
    const legacyKey = await store.get('ukey:openai:local:carol');
    const legacyToken = await store.get('oauth:github:local:carol');

    expect(await keys.use('openai', { userId: 'local:carol' })).toBe(ownKey);
    expect(await tokens.accessToken('github', { userId: 'local:carol' })).toBe(carol.accessToken);
    // Sealed again in the background, off the call's path.
    await vi.waitFor(async () => {
      expect(await store.get('ukey:openai:local:carol')).not.toBe(legacyKey);
      expect(await store.get('oauth:github:local:carol')).not.toBe(legacyToken);
    });

    await store.set('ukey:openai:local:mallory', (await store.get('ukey:openai:local:carol'))!);
    await store.set('oauth:github:local:mallory', (await store.get('oauth:github:local:carol'))!);
    await expect(keys.use('openai', { userId: 'local:mallory' })).rejects.toMatchObject({ code: 'credential_unavailable' });
    await expect(tokens.accessToken('github', { userId: 'local:mallory' })).rejects.toMatchObject({ code: 'credential_unavailable' });
    expect(await keys.use('openai', { userId: 'local:carol' })).toBe(ownKey);
    expect(await tokens.accessToken('github', { userId: 'local:carol' })).toBe(carol.accessToken);
  });

  it('Vault.openFor: bound to the entry, fresh only when bound and sealed with the current secret', async () => {
    const previous = randomSecret('vault-previous-secret-of-32-chars');
    const current = randomSecret('vault-current-secret-of-32-chars');
    const before = new Vault(previous);
    const vault = new Vault(current, previous);
    expect(await vault.openFor('e:1', await vault.sealFor('e:1', { v: '1' }), 'v')).toEqual({ value: { v: '1' }, fresh: true });
    expect(await vault.openFor('e:1', await before.sealFor('e:1', { v: '2' }), 'v')).toEqual({ value: { v: '2' }, fresh: false });
    expect(await vault.openFor('e:1', await vault.seal({ v: '3' }), 'v')).toEqual({ value: { v: '3' }, fresh: false });
    await expect(vault.openFor('e:2', await vault.sealFor('e:1', { v: '4' }), 'v')).rejects.toMatchObject({ code: 'credential_unavailable' });
  });
});
