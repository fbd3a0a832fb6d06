import { describe, expect, it } from 'vitest';
import { Connections, type ConnectionsDeps } from '../../../lib/core/connect/connections';
import { MemoryStore } from '../../../lib/store/memory';
import { StoreUnavailableError, type Store } from '../../../lib/store/types';

/**
 * Connections.disconnect against a store that fails once (the memory store, wrapped): what a half-done disconnect
 * leaves in the account index. The provider client and the token store are stand-ins that record what was asked
 * (the OAuth round trips are covered end to end in tests/integration/connections.test.ts, which cannot make Redis
 * fail at one chosen read).
 */
describe('a disconnect that fails part-way', () => {
  function setup() {
    const memory = new MemoryStore();
    const fail = { readHashes: 0, deleteRecord: 0 };
    const store = new Proxy(memory, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (prop === 'readHashes') {
          return async (...args: Parameters<Store['readHashes']>) => {
            if (fail.readHashes-- > 0) throw new StoreUnavailableError('the store did not answer');
            return target.readHashes(...args);
          };
        }
        if (prop === 'delete') {
          return async (key: string) => {
            if (key.startsWith('conn:') && fail.deleteRecord-- > 0) throw new StoreUnavailableError('the store did not answer');
            return target.delete(key);
          };
        }
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const asked: string[] = [];
    const client = {
      revoke: async () => (asked.push('revoke the grant'), true),
      revokeOwn: async () => (asked.push('revoke own token'), true),
    };
    const noop = () => {};
    const deps = {
      providers: new Map([['acme', { id: 'acme', name: 'Acme' }]]),
      clients: new Map([['acme', client]]),
      store,
      vault: {},
      tokens: {
        load: async () => ({ accessToken: 'at', refreshToken: 'rt', expiresAt: 0 }),
        unlink: async () => {},
        // No refresh runs here: the refresh lock is left to tests/unit/connect/disconnect-refresh.test.ts.
        exclusive: async <T>(_provider: string, _userId: string, task: () => Promise<T>) => task(),
      },
      revocations: {},
      audit: { recordAdmin: async () => {} },
      logger: { info: noop, warn: noop, error: noop, debug: noop },
      webhook: null,
      now: Date.now,
    } as unknown as ConnectionsDeps;
    const link = async (user: string) => {
      const record = JSON.stringify({ scopes: [], connectedAt: 1, lastRefreshAt: null, status: 'connected', statusAt: 1, refreshable: true, account: 'acct' });
      await memory.set(`conn:acme:${user}`, record);
      await memory.incrementHashes([
        { key: 'connacct:acme:acct', field: user, by: 1, expiresAt: Date.now() + 86_400_000 },
        { key: 'connidx:acme', field: user, by: 1, expiresAt: Date.now() + 86_400_000 },
      ]);
    };
    return { memory, fail, asked, link, connections: new Connections(deps) };
  }

  it('before anything was revoked: leaves the user linked, so the other linked user\'s disconnect still leaves the grant', async () => {
    const { memory, fail, asked, link, connections } = setup();
    await link('ada');
    await link('bob');
    fail.readHashes = 1; // at ada's look for others
    await expect(connections.disconnect('acme', 'ada')).rejects.toMatchObject({ code: 'store_unavailable' });
    expect(await memory.get('conn:acme:ada')).not.toBeNull();
    expect((await memory.readHashes(['connacct:acme:acct']))[0]).toEqual({ ada: 1, bob: 1 });
    expect(asked).toEqual([]);

    // Ada is still connected: bob's disconnect leaves the grant to her.
    expect(await connections.disconnect('acme', 'bob')).toEqual({ revoked: true, shared: true });
    expect(asked).toEqual(['revoke own token']);
  });

  it('after the grant was revoked: leaves the user unlinked, so a later linked user\'s disconnect revokes its own grant', async () => {
    const { memory, fail, asked, link, connections } = setup();
    await link('ada');
    fail.deleteRecord = 1; // the last step: the grant is revoked and the tokens are deleted by then
    await expect(connections.disconnect('acme', 'ada')).rejects.toMatchObject({ code: 'store_unavailable' });
    expect(asked).toEqual(['revoke the grant']);
    expect((await memory.readHashes(['connacct:acme:acct']))[0]).toEqual({ ada: 0 });

    // Bob links the same account later (a new grant): nobody else holds it, so his disconnect revokes it.
    await link('bob');
    expect(await connections.disconnect('acme', 'bob')).toEqual({ revoked: true, shared: false });
    expect(asked).toEqual(['revoke the grant', 'revoke the grant']);
  });
});
