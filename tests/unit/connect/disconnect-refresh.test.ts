import { describe, expect, it } from 'vitest';
import { Connections, type ConnectionsDeps } from '../../../lib/core/connect/connections';
import { OAuthGrantError, OAuthTokenStore, type OAuthTokens, type TokenRefresher } from '../../../lib/core/credential/oauth';
import { Vault } from '../../../lib/core/vault/seal';
import { MemoryStore } from '../../../lib/store/memory';
import { randomSecret } from '../../fixtures/secrets';

/**
 * A disconnect while a refresh of the same grant is under way: the real token store, Connections, memory store and
 * vault, wired as lib/core/runtime.ts wires them. The provider is a stand-in (the refresher and the client's
 * revoke, with gates that hold each one until the test lets it go), so the two can be interleaved at the one
 * point that matters: the refresh has asked the provider and not yet saved, while the disconnect revokes.
 */
const USER = 'local:ada';
const expired: OAuthTokens = { accessToken: 'AT1', refreshToken: 'RT1', expiresAt: Date.now() - 1000 };

function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  let reach!: () => void;
  const reached = new Promise<void>((resolve) => (reach = resolve));
  return { open, reached, pass: async () => (reach(), opened) };
}

function setup(refresh: TokenRefresher, now: () => number = Date.now) {
  const store = new MemoryStore();
  const revoked: string[] = [];
  const audited: string[] = [];
  const webhooks: string[] = [];
  const revoking = gate();
  const client = {
    revoke: async (tokens: OAuthTokens) => {
      revoked.push(tokens.accessToken, tokens.refreshToken ?? '');
      await revoking.pass(); // revoked at the provider; the answer is on its way back
      return true;
    },
    revokeOwn: async (tokens: OAuthTokens) => (revoked.push(tokens.accessToken), true),
  };
  const tokens = new OAuthTokenStore(store, new Vault(randomSecret('vault')), new Map([['acme', refresh], ['beta', refresh]]), now, {
    refreshed: async (provider, userId, saved) => connections.refreshed(provider, userId, saved),
    ended: async (provider, userId) => connections.ended(provider, userId),
    orphaned: async (provider, userId, lost) => connections.orphaned(provider, userId, lost),
  });
  const noop = () => {};
  // Called only once a call is under way, after `connections` below is made (as in lib/core/runtime.ts).
  const connections: Connections = new Connections({
    providers: new Map([['acme', { id: 'acme', name: 'Acme' }], ['beta', { id: 'beta', name: 'Beta' }]]),
    clients: new Map([['acme', client], ['beta', client]]),
    store,
    vault: new Vault(randomSecret('vault')),
    tokens,
    revocations: {},
    audit: { recordAdmin: async (entry: { action: string }) => void audited.push(entry.action) },
    logger: { info: noop, warn: noop, error: noop, debug: noop },
    webhook: { send: (event: { type: string }) => void webhooks.push(event.type) },
    now,
  } as unknown as ConnectionsDeps);
  const link = async (provider = 'acme') => {
    await tokens.save(provider, { userId: USER }, expired);
    const record = { scopes: [], connectedAt: 1, lastRefreshAt: null, status: 'connected', statusAt: 1, refreshable: true };
    await store.set(`conn:${provider}:${USER}`, JSON.stringify(record));
  };
  return { store, tokens, connections, revoked, revoking, audited, webhooks, link };
}

describe('a disconnect racing a refresh', () => {
  it('revokes the tokens the refresh got too, not only those it read first', async () => {
    const asked = gate();
    const { store, tokens, connections, revoked, revoking, link } = setup(async () => {
      await asked.pass(); // the provider has issued AT2/RT2 (rotating RT1 out), not yet saved
      return { accessToken: 'AT2', refreshToken: 'RT2', expiresAt: Date.now() + 3_600_000 };
    });
    await link();
    const call = tokens.accessToken('acme', { userId: USER }).catch((error: unknown) => error);
    await asked.reached;
    const disconnect = connections.disconnect('acme', USER);
    asked.open(); // the refresh saves AT2/RT2
    await call;
    revoking.open();
    expect(await disconnect).toEqual({ revoked: true, shared: false });

    // RT1 was rotated out: at a provider that rotates refresh tokens, revoking it may leave the grant alive.
    expect(revoked).toEqual(expect.arrayContaining(['AT2', 'RT2']));
    expect(await store.get(`oauth:acme:${USER}`)).toBeNull();
    expect(await store.get(`conn:acme:${USER}`)).toBeNull();
  });

  it('does not report the connection as needing a reconnect when its revocation makes the refresh fail', async () => {
    const asked = gate();
    const { store, tokens, connections, revoked, revoking, audited, webhooks, link } = setup(async () => {
      await asked.pass();
      // The provider refuses RT1 once the disconnect has revoked it.
      if (revoked.includes('RT1')) throw new OAuthGrantError('invalid_grant');
      return { accessToken: 'AT2', refreshToken: 'RT2', expiresAt: Date.now() + 3_600_000 };
    });
    await link();
    const call = tokens.accessToken('acme', { userId: USER }).catch((error: unknown) => error);
    await asked.reached;
    const disconnect = connections.disconnect('acme', USER);
    await new Promise((resolve) => setTimeout(resolve, 20)); // the disconnect revokes now, unless it waits
    asked.open();
    await call;
    revoking.open();
    expect(await disconnect).toMatchObject({ revoked: true });

    expect(audited).toEqual(['connection.disconnect']);
    expect(webhooks).toEqual([]);
    expect(await store.get(`conn:acme:${USER}`)).toBeNull();
    expect(await store.get(`oauth:acme:${USER}`)).toBeNull();
  });

  it('gives up with 503 while a refresh holds the grant too long, and leaves the connection whole', async () => {
    let clock = Date.now();
    const { store, connections, revoked, audited, link } = setup(async () => {
      throw new Error('not called');
    }, () => clock);
    await link();
    // Another instance's refresh holds the lock (and its request to the provider has not answered).
    await store.setIfAbsent(`lock:oauth:acme:${USER}`, 'another instance', 45_000);
    const disconnect = connections.disconnect('acme', USER).catch((error: unknown) => error);
    await new Promise((resolve) => setTimeout(resolve, 60));
    clock += 16_000; // past the wait limit
    // The client is told when to try again: by then a refresh that is still answering has ended (RFC 9110 §10.2.3).
    expect(await disconnect).toMatchObject({ code: 'service_unavailable', status: 503, headers: { 'retry-after': '15' } });
    expect(revoked).toEqual([]);
    expect(audited).toEqual([]);
    expect(await store.get(`conn:acme:${USER}`)).not.toBeNull();
    expect(await store.get(`oauth:acme:${USER}`)).not.toBeNull();
  });

  it("a user's removal (disconnectAll) disconnects every other provider when one cannot be, then reports the failure", async () => {
    let clock = Date.now();
    const { store, connections, revoking, link } = setup(async () => {
      throw new Error('not called');
    }, () => clock);
    revoking.open();
    await link('acme');
    await link('beta');
    await store.setIfAbsent(`lock:oauth:acme:${USER}`, 'another instance', 45_000);
    const removal = connections.disconnectAll(USER, 'users-file').catch((error: unknown) => error);
    await new Promise((resolve) => setTimeout(resolve, 60));
    clock += 16_000;
    expect(await removal).toMatchObject({ code: 'service_unavailable' });
    expect(await store.get(`conn:beta:${USER}`)).toBeNull();
    expect(await store.get(`oauth:beta:${USER}`)).toBeNull();
    expect(await store.get(`conn:acme:${USER}`)).not.toBeNull();
  });
});
