import { describe, expect, it, vi } from 'vitest';
import { Connections, type ConnectionsDeps } from '../../../lib/core/connect/connections';
import { OAuthTokenStore, type OAuthTokens, type TokenRefresher } from '../../../lib/core/credential/oauth';
import { OtherOwnerWarnings } from '../../../lib/core/users/owner';
import { Vault } from '../../../lib/core/vault/seal';
import { MemoryStore } from '../../../lib/store/memory';
import { capturingLogger, findLeak } from '../../fixtures/log-capture';
import { randomSecret } from '../../fixtures/secrets';

/**
 * A local user's connected account and the password it was connected under (lib/core/users/owner.ts): the real
 * token store, vault and Connections on the in-memory store, wired as the runtime wires them; the provider client
 * is never reached (the connect flow itself is in tests/integration/connections.test.ts).
 */
function setup(refreshers: ReadonlyMap<string, TokenRefresher> = new Map(), store = new MemoryStore()) {
  const vault = new Vault(randomSecret('vault-secret-of-32-characters-or-more'));
  const { logger, lines } = capturingLogger();
  const otherOwners = new OtherOwnerWarnings(logger);
  let connections: Connections | null = null;
  const tokens = new OAuthTokenStore(store, vault, refreshers, Date.now, {
    refreshed: async (provider, userId, saved) => connections?.refreshed(provider, userId, saved),
    otherOwner: (provider, userId) => otherOwners.warn(userId, { provider }),
    stamped: async (provider, userId, passwordVersion) => connections?.stamped(provider, userId, passwordVersion),
    connectionStamp: async (provider, userId) => connections?.stampOf(provider, userId) ?? null,
  });
  connections = new Connections({
    providers: new Map([['acme', { id: 'acme', name: 'Acme' }]]),
    clients: new Map(),
    store,
    vault,
    tokens,
    revocations: {},
    audit: { recordAdmin: async () => {} },
    logger,
    webhook: null,
    now: Date.now,
  } as unknown as ConnectionsDeps);
  /** A connection as a connect completes it: its record and tokens, stamped with `passwordVersion` (or not). */
  const connect = async (owner: { userId: string; passwordVersion?: string }, grant: OAuthTokens) => {
    const record = {
      scopes: ['read'],
      connectedAt: 1,
      lastRefreshAt: null,
      status: 'connected',
      statusAt: 1,
      refreshable: true,
      account: null,
    };
    await store.set(
      `conn:acme:${owner.userId}`,
      JSON.stringify({ ...record, ...(owner.passwordVersion ? { passwordVersion: owner.passwordVersion } : {}) }),
    );
    await tokens.save('acme', owner, grant);
  };
  return { store, tokens, connections, connect, lines };
}

const grant = (label: string): OAuthTokens => ({
  accessToken: randomSecret(`${label}-access`),
  refreshToken: randomSecret(`${label}-refresh`),
  expiresAt: Date.now() + 3_600_000,
});
/** Lets the fire-and-forget stamping writes land. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 20));

/** The in-memory store, holding back the first compare-and-set of a grant's tokens until `release()`. */
class HoldingStore extends MemoryStore {
  private holding = true;
  release: () => void = () => {};

  override async replaceIfEquals(key: string, expected: string, next: string): Promise<boolean> {
    if (this.holding && key.startsWith('oauth:')) {
      this.holding = false;
      await new Promise<void>((resolve) => (this.release = resolve));
    }
    return super.replaceIfEquals(key, expected, next);
  }
}

const recordStamp = async (store: MemoryStore) =>
  (JSON.parse((await store.get('conn:acme:local:ada'))!) as { passwordVersion?: string }).passwordVersion;

const first = { userId: 'local:ada', passwordVersion: 'pwv-first-owner-0000' };
const next = { userId: 'local:ada', passwordVersion: 'pwv-next-owner-00000' };

describe("a local user's connected account and the password it was connected under", () => {
  it("is no connection for the name's next owner: 403 connection_required to connect, not listed, kept in the store, warned of once", async () => {
    const { store, tokens, connections, connect, lines } = setup();
    const firstGrant = grant('first');
    await connect(first, firstGrant);
    const sealed = await store.get('oauth:acme:local:ada');

    for (let i = 0; i < 2; i++) {
      const refused = await connections.accessToken('acme', next).catch((error: unknown) => error);
      expect(refused).toMatchObject({ code: 'connection_required', connectUrl: '/api/connect/acme' });
      expect((refused as Error).message).toContain('Connect your Acme account');
    }
    expect(await connections.list(next)).toEqual([]);
    // Nothing deleted or rewritten.
    expect(await store.get('oauth:acme:local:ada')).toBe(sealed);
    expect(await tokens.load('acme', 'local:ada')).toMatchObject({ accessToken: firstGrant.accessToken });
    expect(await connections.accessToken('acme', first)).toBe(firstGrant.accessToken);
    expect(await connections.list(first)).toMatchObject([{ provider: 'acme', status: 'connected' }]);
    const warned = lines.filter((line) => line.includes('stored under an earlier password'));
    expect(warned).toHaveLength(1);
    expect(JSON.parse(warned[0]!)).toMatchObject({ level: 40, userId: 'local:ada', provider: 'acme' });
    expect(findLeak(lines.join(''), [firstGrant.accessToken, firstGrant.refreshToken!])).toBeNull();

    // The next owner connects: their own grant takes its place.
    const nextGrant = grant('next');
    await connect(next, nextGrant);
    expect(await connections.accessToken('acme', next)).toBe(nextGrant.accessToken);
    expect(await connections.list(next)).toMatchObject([{ provider: 'acme', status: 'connected' }]);
    await expect(connections.accessToken('acme', first)).rejects.toMatchObject({ code: 'connection_required' });
  });

  it('keeps its stamp through a refresh', async () => {
    const refreshed = grant('refreshed');
    const { connections, connect } = setup(new Map([['acme', async () => refreshed]]));
    await connect(first, { ...grant('due'), expiresAt: Date.now() - 1_000 });
    expect(await connections.accessToken('acme', first)).toBe(refreshed.accessToken);
    await expect(connections.accessToken('acme', next)).rejects.toMatchObject({ code: 'connection_required' });
    expect(await connections.accessToken('acme', first)).toBe(refreshed.accessToken);
  });

  it("connected before connections were stamped: taken as the owner's at its first use, tokens and record stamped then", async () => {
    const { store, connections, connect } = setup();
    const legacy = grant('legacy');
    await connect({ userId: 'local:ada' }, legacy);
    expect(JSON.parse((await store.get('conn:acme:local:ada'))!)).not.toHaveProperty('passwordVersion');
    expect(await connections.list(next)).toHaveLength(1);

    expect(await connections.accessToken('acme', first)).toBe(legacy.accessToken);
    await settle();
    expect(JSON.parse((await store.get('conn:acme:local:ada'))!)).toMatchObject({
      passwordVersion: first.passwordVersion,
    });
    expect(await connections.accessToken('acme', first)).toBe(legacy.accessToken);
    await expect(connections.accessToken('acme', next)).rejects.toMatchObject({ code: 'connection_required' });
    expect(await connections.list(next)).toEqual([]);
  });

  it('changes nothing for users of an identity provider', async () => {
    const { store, connections, connect } = setup();
    const oidc = grant('oidc');
    await connect({ userId: 'oidc:42' }, oidc);
    expect(await connections.accessToken('acme', { userId: 'oidc:42', passwordVersion: null })).toBe(oidc.accessToken);
    await settle();
    expect(JSON.parse((await store.get('conn:acme:oidc:42'))!)).not.toHaveProperty('passwordVersion');
    expect(await connections.list({ userId: 'oidc:42' })).toHaveLength(1);
  });

  it("stays with the first user whose use stamped it while the next owner's refresh of it was under way", async () => {
    const store = new HoldingStore();
    const refreshed = grant('refreshed');
    let firstCall: Promise<unknown> = Promise.resolve();
    const { tokens, connections, connect } = setup(
      new Map([
        [
          'acme',
          async () => {
            // While the next owner's refresh runs, the first user's first call stamps the connection as theirs.
            firstCall = connections.accessToken('acme', first).catch((error: unknown) => error);
            await vi.waitFor(async () => expect(await recordStamp(store)).toBe(first.passwordVersion));
            return refreshed;
          },
        ],
      ]),
      store,
    );
    // Connected before connections were stamped, and due for a refresh. The next owner's call stamps it for
    // them too, but that write is held back until the end: the first user's lands first.
    await connect({ userId: 'local:ada' }, { ...grant('legacy'), expiresAt: Date.now() - 1_000 });

    await expect(connections.accessToken('acme', next)).rejects.toMatchObject({ code: 'connection_required' });
    store.release();
    expect(await firstCall).toBe(refreshed.accessToken);
    // The refresh was saved, under the first user's stamp: tokens and record agree.
    expect(await tokens.load('acme', 'local:ada')).toMatchObject({
      accessToken: refreshed.accessToken,
      passwordVersion: first.passwordVersion,
    });
    expect(await recordStamp(store)).toBe(first.passwordVersion);
    expect(await connections.list(first)).toMatchObject([{ provider: 'acme', status: 'connected' }]);
    expect(await connections.list(next)).toEqual([]);
    expect(await connections.accessToken('acme', first)).toBe(refreshed.accessToken);
    await expect(connections.accessToken('acme', next)).rejects.toMatchObject({ code: 'connection_required' });
  });

  it('refreshed without its stamp (by an instance of the version before stamps): stays with the owner its connection record names', async () => {
    let refreshes = 0;
    const refreshed = grant('refreshed');
    const { store, tokens, connections, connect, lines } = setup(
      new Map([['acme', async () => (refreshes++, refreshed)]]),
    );
    await connect(first, grant('first'));
    // As that version saved a refresh: the tokens without their stamp, the record left as it was.
    await tokens.save('acme', { userId: 'local:ada' }, { ...grant('unstamped'), expiresAt: Date.now() - 1_000 });
    const sealed = await store.get('oauth:acme:local:ada');

    for (let i = 0; i < 2; i++)
      await expect(connections.accessToken('acme', next)).rejects.toMatchObject({ code: 'connection_required' });
    expect(await connections.list(next)).toEqual([]);
    await settle();
    // Neither refreshed nor stamped for the next owner; said once.
    expect(refreshes).toBe(0);
    expect(await store.get('oauth:acme:local:ada')).toBe(sealed);
    expect(lines.filter((line) => line.includes('stored under an earlier password'))).toHaveLength(1);

    expect(await connections.accessToken('acme', first)).toBe(refreshed.accessToken);
    expect(await tokens.load('acme', 'local:ada')).toMatchObject({ passwordVersion: first.passwordVersion });
    expect(await recordStamp(store)).toBe(first.passwordVersion);
  });
  it("waiting for another instance's refresh: unstamped tokens that refresh saved are not taken while the record names another owner", async () => {
    const store = new HoldingStore();
    const { tokens, connections, connect } = setup(new Map(), store);
    // Connected before connections were stamped, and due for a refresh, which an instance of the version before
    // stamps holds the lock for. The next owner's first use stamps the tokens for them: held back (HoldingStore).
    await connect({ userId: 'local:ada' }, { ...grant('legacy'), expiresAt: Date.now() - 1_000 });
    await store.set('lock:oauth:acme:local:ada', 'the-earlier-instance');
    const waiting = connections.accessToken('acme', next).catch((error: unknown) => error);
    await settle();

    // Meanwhile the first user's use stamped the record as theirs, and the earlier instance saved its refresh
    // without a stamp.
    const record = JSON.parse((await store.get('conn:acme:local:ada'))!) as Record<string, unknown>;
    await store.set('conn:acme:local:ada', JSON.stringify({ ...record, passwordVersion: first.passwordVersion }));
    const refreshed = grant('refreshed');
    await tokens.save('acme', { userId: 'local:ada' }, refreshed);

    expect(await waiting).toMatchObject({ code: 'connection_required' });
    store.release();
    await store.delete('lock:oauth:acme:local:ada');
    expect(await connections.accessToken('acme', first)).toBe(refreshed.accessToken);
    await expect(connections.accessToken('acme', next)).rejects.toMatchObject({ code: 'connection_required' });
  });
  it("refreshing, and finding another instance's unstamped refresh saved meanwhile: not taken while the record names another owner", async () => {
    const store = new HoldingStore();
    const theirs = grant('theirs');
    let tokens: OAuthTokenStore | null = null;
    const { connections, connect, tokens: tokenStore } = setup(
      new Map([
        [
          'acme',
          async () => {
            // While the next owner's refresh runs: the first user's use stamped the record as theirs, and an
            // instance of the version before stamps saved its own refresh of the grant, unstamped.
            const record = JSON.parse((await store.get('conn:acme:local:ada'))!) as Record<string, unknown>;
            await store.set('conn:acme:local:ada', JSON.stringify({ ...record, passwordVersion: first.passwordVersion }));
            await tokens!.save('acme', { userId: 'local:ada' }, theirs);
            return grant('refreshed');
          },
        ],
      ]),
      store,
    );
    tokens = tokenStore;
    // Connected before connections were stamped, and due: the next owner's call adopts it (that stamping write held
    // back) and refreshes it.
    await connect({ userId: 'local:ada' }, { ...grant('legacy'), expiresAt: Date.now() - 1_000 });
    await expect(connections.accessToken('acme', next)).rejects.toMatchObject({ code: 'connection_required' });
    store.release();
    expect(await connections.accessToken('acme', first)).toBe(theirs.accessToken);
  });
});
