import { describe, expect, it } from 'vitest';
import { OAuthGrantError, OAuthTokenStore, type OAuthTokens, type TokenRefresher } from '../../../lib/core/credential/oauth';
import { Vault } from '../../../lib/core/vault/seal';
import { MemoryStore } from '../../../lib/store/memory';
import { StoreUnavailableError } from '../../../lib/store/types';
import { randomSecret } from '../../fixtures/secrets';

/**
 * A refresh racing a disconnect or a reconnect made elsewhere (another instance, which does not take the refresh
 * lock): what the user did last wins. The other instance is simulated inside the refresher, which runs while this
 * one holds the lock; the store and the vault are real.
 */
const USER = 'local:ada';
const expired: OAuthTokens = { accessToken: 'old-access', refreshToken: 'old-refresh', expiresAt: Date.now() - 1000 };

function setup(refresher: (tokens: OAuthTokenStore) => TokenRefresher) {
  const store = new MemoryStore();
  const ended: string[] = [];
  const orphaned: OAuthTokens[] = [];
  const refreshers = new Map<string, TokenRefresher>();
  const tokens = new OAuthTokenStore(store, new Vault(randomSecret('vault')), refreshers, Date.now, {
    ended: async (provider, userId) => void ended.push(`${provider}:${userId}`),
    orphaned: async (_provider, _userId, lost) => void orphaned.push(lost),
  });
  refreshers.set('github', refresher(tokens));
  return { tokens, ended, orphaned };
}

describe('a refresh racing the user', () => {
  it('does not bring back a connection disconnected while it ran, and hands its new tokens over to be revoked', async () => {
    const { tokens, orphaned } = setup((store) => async () => {
      await store.unlink('github', USER); // disconnected on another instance (which revoked the tokens it saw)
      return { accessToken: 'refreshed-access', refreshToken: 'refreshed-refresh', expiresAt: Date.now() + 3_600_000 };
    });
    await tokens.save('github', { userId: USER }, expired);
    await expect(tokens.accessToken('github', { userId: USER })).rejects.toMatchObject({ code: 'reauth_required' });
    expect(await tokens.load('github', USER)).toBeNull();
    // Issued after the disconnect revoked the old ones: nobody would revoke them otherwise.
    expect(orphaned).toMatchObject([{ accessToken: 'refreshed-access', refreshToken: 'refreshed-refresh' }]);
  });

  it('does not overwrite a reconnect made while it ran, and uses the new grant', async () => {
    const fresh: OAuthTokens = { accessToken: 'new-access', refreshToken: 'new-refresh', expiresAt: Date.now() + 3_600_000 };
    const { tokens, ended, orphaned } = setup((store) => async () => {
      await store.save('github', { userId: USER }, fresh); // reconnected on another instance
      return { accessToken: 'refreshed-access', refreshToken: 'refreshed-refresh', expiresAt: Date.now() + 3_600_000 };
    });
    await tokens.save('github', { userId: USER }, expired);
    expect(await tokens.accessToken('github', { userId: USER })).toBe('new-access');
    expect(await tokens.load('github', USER)).toMatchObject({ accessToken: 'new-access', refreshToken: 'new-refresh' });
    expect(ended).toEqual([]);
    // Not revoked: at a provider that revokes per grant (GitHub deletes the app's whole grant) that would end the new one.
    expect(orphaned).toEqual([]);
  });

  it('a refused refresh of the old grant neither deletes nor ends the grant that replaced it', async () => {
    const fresh: OAuthTokens = { accessToken: 'new-access', refreshToken: 'new-refresh', expiresAt: Date.now() + 3_600_000 };
    const { tokens, ended } = setup((store) => async () => {
      await store.save('github', { userId: USER }, fresh);
      throw new OAuthGrantError('invalid_grant');
    });
    await tokens.save('github', { userId: USER }, expired);
    await expect(tokens.accessToken('github', { userId: USER })).rejects.toMatchObject({ code: 'reauth_required' });
    expect(await tokens.load('github', USER)).toMatchObject({ accessToken: 'new-access' });
    expect(ended).toEqual([]);
  });

  it('a refused refresh with nothing changed ends the link, once', async () => {
    const { tokens, ended } = setup(() => async () => {
      throw new OAuthGrantError('invalid_grant');
    });
    await tokens.save('github', { userId: USER }, expired);
    await expect(tokens.accessToken('github', { userId: USER })).rejects.toMatchObject({ code: 'reauth_required' });
    expect(await tokens.load('github', USER)).toBeNull();
    expect(ended).toEqual([`github:${USER}`]);
  });
});

/** A real in-memory store whose first compare-and-set fails as an unreachable store does, and works after. */
function failingFirstWrite(): MemoryStore {
  const store = new MemoryStore();
  let failWrites = 1;
  const replaceIfEquals = store.replaceIfEquals.bind(store);
  store.replaceIfEquals = async (...args) => {
    if (failWrites-- > 0) throw new StoreUnavailableError('down');
    return replaceIfEquals(...args);
  };
  return store;
}

describe('a refresh the store fails to save', () => {
  it("is written by this process's next refresh of the grant, instead of presenting the rotated-out refresh token again", async () => {
    // A provider that rotates refresh tokens and refuses one presented twice (as Google, Okta or Auth0 do).
    let issued = 0;
    const live = new Set(['old-refresh']);
    const presented: string[] = [];
    const refreshers = new Map<string, TokenRefresher>([
      [
        'github',
        async (refreshToken) => {
          presented.push(refreshToken);
          if (!live.delete(refreshToken)) throw new OAuthGrantError('invalid_grant');
          issued++;
          live.add(`refresh-${issued}`);
          return { accessToken: `access-${issued}`, refreshToken: `refresh-${issued}`, expiresAt: Date.now() + 3_600_000 };
        },
      ],
    ]);
    // The store fails the one write that saves the refresh (Redis gone for a moment), and works again after.
    const store = failingFirstWrite();
    const refreshed: OAuthTokens[] = [];
    const ended: string[] = [];
    const tokens = new OAuthTokenStore(store, new Vault(randomSecret('vault')), refreshers, Date.now, {
      refreshed: async (_provider, _userId, saved) => void refreshed.push(saved),
      ended: async (provider, userId) => void ended.push(`${provider}:${userId}`),
    });
    await tokens.save('github', { userId: USER }, expired);

    await expect(tokens.accessToken('github', { userId: USER })).rejects.toMatchObject({ code: 'store_unavailable' });
    expect(await tokens.load('github', USER)).toMatchObject({ refreshToken: 'old-refresh' });
    // The store is back: the refresh it lost is saved and used, and the provider is not asked again.
    expect(await tokens.accessToken('github', { userId: USER })).toBe('access-1');
    expect(presented).toEqual(['old-refresh']);
    expect(await tokens.load('github', USER)).toMatchObject({ accessToken: 'access-1', refreshToken: 'refresh-1' });
    expect(refreshed).toMatchObject([{ refreshToken: 'refresh-1' }]);
    expect(ended).toEqual([]);
  });

  it('is dropped when the grant changed meanwhile (a reconnect wins), and never written over it', async () => {
    const refreshers = new Map<string, TokenRefresher>([
      ['github', async () => ({ accessToken: 'lost-access', refreshToken: 'lost-refresh', expiresAt: Date.now() - 1 })],
    ]);
    const store = failingFirstWrite();
    const tokens = new OAuthTokenStore(store, new Vault(randomSecret('vault')), refreshers);
    await tokens.save('github', { userId: USER }, expired);
    await expect(tokens.accessToken('github', { userId: USER })).rejects.toMatchObject({ code: 'store_unavailable' });
    await tokens.save('github', { userId: USER }, { accessToken: 'new-access', refreshToken: 'new-refresh', expiresAt: Date.now() + 3_600_000 });
    expect(await tokens.accessToken('github', { userId: USER })).toBe('new-access');
    expect(await tokens.load('github', USER)).toMatchObject({ accessToken: 'new-access', refreshToken: 'new-refresh' });
  });
});
