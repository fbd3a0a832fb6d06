import 'server-only';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import * as oauth from 'oauth4webapi';
import type { AuditLog } from '../audit/audit';
import type { AlertWebhook } from '../detect/webhook';
import { KeywardError } from '../errors';
import type { EndReason, OAuthTokens, OAuthTokenStore } from '../credential/oauth';
import type { SessionRevocations } from '../session/revocation';
import type { Session } from '../session/session';
import { guard } from '../store/guard';
import { capPerWindow } from '../store/window-cap';
import type { Vault } from '../vault/seal';
import { localSessionHolds, type LocalUsers } from '../users/file';
import { ownerStamp, ownership, type Owner } from '../users/owner';
import type { Store } from '../../store/types';
import { ProviderClient, ProviderRefusedError } from './client';
import { SCOPE_TOKEN } from './config';
import type { ConnectionProvider } from './providers';

/**
 * Connected accounts: a signed-in user links an account at an OAuth provider (GitHub, Google …) and upstreams
 * call that provider with the user's token (`{"oauth": "<provider>"}`). The tokens are the OAuthTokenStore's
 * (sealed in the vault per user and provider, refreshed single-flight across instances); this class keeps what
 * may be shown about each connection beside them, in plain JSON (scopes, dates, status: never a token), runs the
 * authorization code flow, and turns a refresh the provider refused into `needs_reconnect`.
 *
 * Store keys: `conn:<provider>:<userId>` (the connection's metadata), `connidx:<provider>` (a counter hash whose
 * fields are the users with a connection: what the idle-grant keeper walks), `connacct:<provider>:<digest>` (the
 * users connected to one account at the provider, see `ConnectionRecord.account`), `connect:state:<sha256(state)>`
 * (a pending authorization, sealed, single use, 10 minutes).
 */

export type ConnectionStatus = 'connected' | 'needs_reconnect';

/** What `GET /api/connections` and the admin data show about one connection. Never a token. */
export interface ConnectionView {
  readonly provider: string;
  readonly name: string;
  readonly status: ConnectionStatus;
  readonly scopes: readonly string[];
  readonly connectedAt: string;
  readonly lastRefreshAt: string | null;
  /** When the provider refused a refresh (status needs_reconnect), else null. */
  readonly needsReconnectSince: string | null;
  /** Where the user (re)connects: `/api/connect/<provider>`. */
  readonly connectUrl: string;
}

/** What is stored beside the tokens (`conn:<provider>:<userId>`), in plain JSON: never a token. */
export interface ConnectionRecord {
  readonly scopes: readonly string[];
  readonly connectedAt: number;
  readonly lastRefreshAt: number | null;
  readonly status: ConnectionStatus;
  readonly statusAt: number;
  /** The grant came with a refresh token (the keeper refreshes it while idle). */
  readonly refreshable: boolean;
  /**
   * A digest of the account at the provider the tokens act as (ConnectedTokens.account), null when the provider
   * did not say. Two Keyward users may link one provider account; a provider such as GitHub or Google keeps one
   * grant per account and app, so revoking it for one would end the other's connection too (see disconnect).
   */
  readonly account?: string | null;
  /**
   * A local user's password version when they connected (users/owner.ts), as in the sealed tokens: a connection
   * stamped with another one is not listed for the name's next owner. Absent for other users, and in connections
   * made before they were stamped (stamped with the tokens at their first use).
   */
  readonly passwordVersion?: string | null;
}

/** A pending authorization, sealed in the store until the callback takes it (once). */
interface PendingConnect {
  readonly provider: string;
  readonly userId: string;
  readonly sessionId: string;
  readonly authTime: number;
  readonly sessionExpiresAt: number;
  /** A local user's password version at sign-in (Session.passwordVersion): a new password ends the connect too. */
  readonly passwordVersion?: string | null;
  /** SHA-256 of the browser binding cookie's value. */
  readonly bindingHash: string;
  readonly state: string;
  readonly codeVerifier: string | null;
  readonly nonce: string | null;
  readonly scopes: readonly string[];
  readonly returnTo: string;
  readonly redirectUri: string;
  readonly createdAt: number;
}

/** Why a connect did not complete, as the UI is told (`?connect_error=`): fixed words, never the provider's text. */
export type ConnectErrorCode = 'access_denied' | 'provider_error' | 'expired' | 'session_ended' | 'unavailable';

export type ConnectOutcome =
  | { readonly ok: true; readonly returnTo: string }
  | {
      readonly ok: false;
      readonly error: ConnectErrorCode;
      readonly returnTo: string;
      /**
       * True when no pending connect of this browser was used up (an unknown state, or another browser's): its
       * binding cookie is kept, so that a callback another site sends the browser to cannot cancel the real one.
       */
      readonly untouched?: true;
    };

/** How long a started connect may take (the provider's login and consent included). */
export const PENDING_TTL_MS = 10 * 60_000;
/**
 * Connects a user may start per PENDING_TTL_MS window: each stores a sealed pending record for that long, so an
 * unbounded loop of starts would fill the store. Far above what a person clicking "Connect" does.
 */
export const PENDING_STARTS_MAX = 30;
/**
 * The index hashes (`connidx:*`, `connacct:*`) are kept this long after their last write: every connect and every
 * keeper pass renews the fields of live connections, so only what a crash left behind expires.
 */
const INDEX_TTL_MS = 400 * 86_400_000;
const MAX_RETURN_TO = 512;
const MAX_EXTRA_SCOPES = 32;
/** Other users' records read to tell whether an account is shared: one is enough, a few cover stale index fields. */
const MAX_ACCOUNT_CHECKS = 16;
/** How often an upstream's 401 may have a connection's token checked at the provider (upstreamRefused). */
const TOKEN_CHECK_EVERY_MS = 60_000;
/** How long a disconnect's "shared" mark outlives it: longer than a refresh can take (three provider requests). */
const SHARED_MARK_TTL_MS = 5 * 60_000;

export interface ConnectionsDeps {
  readonly providers: ReadonlyMap<string, ConnectionProvider>;
  readonly clients: ReadonlyMap<string, ProviderClient>;
  readonly store: Store;
  readonly vault: Vault;
  readonly tokens: OAuthTokenStore;
  readonly revocations: SessionRevocations;
  readonly audit: AuditLog;
  readonly logger: Logger;
  /** The detector's webhook (README "Anomaly detection"), told when a connection needs reconnecting. */
  readonly webhook: AlertWebhook | null;
  /** KEYWARD_USERS_FILE's users: a local user removed, or with a new password, since the start cannot complete. */
  readonly localUsers?: Pick<LocalUsers, 'find'> | null;
  readonly now: () => number;
}

export class Connections {
  readonly providers: ReadonlyMap<string, ConnectionProvider>;

  constructor(private readonly deps: ConnectionsDeps) {
    this.providers = deps.providers;
  }

  has(provider: string): boolean {
    return this.deps.providers.has(provider);
  }

  /** The provider, or 404 `not_found`. */
  provider(id: string): ConnectionProvider {
    const provider = this.deps.providers.get(id);
    if (!provider)
      throw new KeywardError('not_found', { message: 'No connection provider with this id is configured.' });
    return provider;
  }

  client(id: string): ProviderClient {
    this.provider(id);
    return this.deps.clients.get(id)!;
  }

  /**
   * Starts a connect: the authorization URL to send the browser to, and the value of the browser binding cookie
   * that must come back with the callback. Scopes: the provider's, those the user already granted (a reconnect
   * keeps them), and `extraScopes` (incremental consent), each allowed by the configuration.
   */
  async begin(
    providerId: string,
    session: Session,
    input: { returnTo: string; extraScopes: readonly string[]; redirectUri: string },
  ): Promise<{ url: string; binding: string }> {
    const provider = this.provider(providerId);
    for (const scope of input.extraScopes) {
      if (!provider.allowedScopes.has(scope)) {
        throw new KeywardError('bad_request', {
          message: 'A scope asked for is not offered for this provider (its "scopes" and "optionalScopes").',
        });
      }
    }
    await capPerWindow(this.deps.store, startsKey(session.userId), {
      max: PENDING_STARTS_MAX,
      windowMs: PENDING_TTL_MS,
      message: 'Too many connects started in the last minutes; finish one, or try again later.',
    });
    const found = await this.record(providerId, session.userId);
    // A connection the name's last owner made grants this one nothing, not even its scopes.
    const existing = found && ownership(session, found.passwordVersion) !== 'other' ? found : null;
    const scopes = [
      ...new Set([
        ...provider.scopes,
        ...(existing?.scopes.filter((s) => provider.allowedScopes.has(s)) ?? []),
        ...input.extraScopes,
      ]),
    ];
    const request = await this.withProvider(() =>
      this.client(providerId).authorizationRequest(input.redirectUri, scopes),
    );
    const binding = randomBytes(32).toString('base64url');
    const pending: PendingConnect = {
      provider: providerId,
      userId: session.userId,
      sessionId: session.sessionId,
      authTime: session.authTime,
      sessionExpiresAt: session.expiresAt,
      passwordVersion: session.passwordVersion ?? null,
      bindingHash: sha256(binding),
      state: request.state,
      codeVerifier: request.codeVerifier,
      nonce: request.nonce,
      scopes,
      returnTo: input.returnTo,
      redirectUri: input.redirectUri,
      createdAt: this.deps.now(),
    };
    const sealed = await this.deps.vault.sealFor(pendingKey(request.state), pending);
    await guard(() => this.deps.store.set(pendingKey(request.state), sealed, PENDING_TTL_MS));
    return { url: request.url, binding };
  }

  /**
   * The callback: takes the pending authorization named by `state` (once: a replay finds nothing), checks it was
   * started in this browser (the binding cookie) by a session that is still valid (unexpired, not revoked, its
   * local user still in the users file with the same password), then exchanges the code and
   * saves the tokens. `session` is the session cookie when the browser sent it (a same-site callback); it must be
   * the same user. Provider errors come back as fixed codes.
   */
  async complete(
    providerId: string,
    input: { params: URLSearchParams; binding: string | null; session: Session | null },
  ): Promise<ConnectOutcome> {
    this.provider(providerId);
    const state = input.params.get('state');
    // Checked before it is used up: a callback from another browser (the wrong binding) cannot cancel it.
    const pending = state && input.binding ? await this.takePending(state, providerId, input.binding) : null;
    if (!pending) return { ok: false, error: 'expired', returnTo: '/', untouched: true };
    const { returnTo } = pending;
    const now = this.deps.now();
    if (pending.createdAt + PENDING_TTL_MS < now) return { ok: false, error: 'expired', returnTo };
    if (input.session && input.session.userId !== pending.userId)
      return { ok: false, error: 'session_ended', returnTo };
    const revocable = { sessionId: pending.sessionId, userId: pending.userId, authTime: pending.authTime };
    if (pending.sessionExpiresAt <= now || (await this.deps.revocations.isRevoked(revocable)))
      return { ok: false, error: 'session_ended', returnTo };
    // As verifySession would judge the session that started it: a local user removed from the users file, or
    // given a new password, since then has no session (the callback's own cookie may be absent or refused).
    const { localUsers } = this.deps;
    if (localUsers && !localSessionHolds(pending.userId, pending.passwordVersion ?? null, localUsers))
      return { ok: false, error: 'session_ended', returnTo };

    const client = this.client(providerId);
    let callback: URLSearchParams;
    try {
      callback = await client.validateCallback(input.params, pending.state);
    } catch (error) {
      if (error instanceof oauth.AuthorizationResponseError) {
        return { ok: false, error: error.error === 'access_denied' ? 'access_denied' : 'provider_error', returnTo };
      }
      this.deps.logger.warn({ provider: providerId, err: errorName(error) }, 'connect callback refused');
      return { ok: false, error: 'provider_error', returnTo };
    }
    let tokens;
    try {
      tokens = await client.exchangeCode(callback, pending.redirectUri, pending.codeVerifier, pending.nonce);
    } catch (error) {
      const refused = error instanceof ProviderRefusedError;
      this.deps.logger.warn(
        { provider: providerId, userId: pending.userId, err: refused ? error.error : errorName(error) },
        'connect code exchange failed',
      );
      return { ok: false, error: refused ? 'provider_error' : 'unavailable', returnTo };
    }
    const account = tokens.account === null ? null : accountDigest(providerId, tokens.account);
    // Stamped with the password version of the session that started it (checked above to be the file's still).
    const owner: Owner = { userId: pending.userId, passwordVersion: pending.passwordVersion ?? null };
    const stamp = ownerStamp(owner);
    const record: ConnectionRecord = {
      // RFC 6749 §5.1: no `scope` in the answer means the scopes asked for were granted.
      scopes: tokens.scopes ?? pending.scopes,
      connectedAt: now,
      lastRefreshAt: null,
      status: 'connected',
      statusAt: now,
      refreshable: tokens.refreshToken !== null,
      account,
      ...(stamp === null ? {} : { passwordVersion: stamp }),
    };
    // Under the grant's lock, as a refresh and a disconnect write it: a disconnect under way (revoking what it
    // read, then deleting) finishes first, so it never deletes this new grant without having revoked it.
    let replaced: { tokens: OAuthTokens; account: string | null } | null = null;
    try {
      await this.deps.tokens.exclusive(providerId, pending.userId, async () => {
        const [existing, previous] = await Promise.all([
          this.record(providerId, pending.userId),
          // Tokens that no longer open (a vault secret retired since) cannot be revoked anyway.
          this.deps.tokens.load(providerId, pending.userId).catch((error: unknown) => {
            if (error instanceof KeywardError && error.code === 'store_unavailable') throw error;
            return null;
          }),
        ]);
        if (previous && !sameGrant(previous, tokens)) replaced = { tokens: previous, account: existing?.account ?? null };
        await this.deps.tokens.save(providerId, owner, {
          accessToken: tokens.accessToken,
          refreshToken: tokens.refreshToken,
          expiresAt: tokens.expiresAt,
        });
        await this.saveRecord(providerId, pending.userId, record);
        // Written even when already there: a reconnect renews the index fields' expiry.
        await this.setField(indexKey(providerId), pending.userId, 1, true);
        if (existing?.account && existing.account !== account)
          await this.setField(accountKey(providerId, existing.account), pending.userId, 0);
        if (account) await this.setField(accountKey(providerId, account), pending.userId, 1, true);
      });
    } catch (error) {
      if (!(error instanceof KeywardError && error.code === 'service_unavailable')) throw error;
      // The lock stayed taken past the wait (LOCK_BUSY): the tokens are dropped, not revoked (see exchangeCode's
      // refusals above), and the user is asked to try again.
      this.deps.logger.warn({ provider: providerId, userId: pending.userId }, 'connect callback: the grant stayed locked; the new tokens were dropped');
      return { ok: false, error: 'unavailable', returnTo };
    }
    // Out of the store now, where only this reconnect saw them: revoked here, or by nobody.
    if (replaced) await this.revokeReplaced(providerId, pending.userId, replaced, account);
    this.deps.logger.info({ provider: providerId, userId: pending.userId, scopes: record.scopes }, 'account connected');
    await this.deps.audit.recordAdmin({
      action: 'connection.connect',
      actor: pending.userId,
      targetUser: pending.userId,
      outcome: providerId,
    });
    return { ok: true, returnTo };
  }

  /**
   * The owner's connections (every configured provider the user has connected, or must reconnect). One a local
   * user's name had under another password is not listed: calls cannot use it (users/owner.ts).
   */
  async list(owner: Owner): Promise<ConnectionView[]> {
    return (await this.listMany([owner])).get(owner.userId) ?? [];
  }

  /** Several users' connections, in one store round trip, by user id. */
  async listMany(owners: readonly Owner[]): Promise<Map<string, ConnectionView[]>> {
    const ids = [...this.deps.providers.keys()];
    const keys = owners.flatMap(({ userId }) => ids.map((provider) => recordKey(provider, userId)));
    const values = keys.length > 0 ? await guard(() => this.deps.store.getMany(keys)) : [];
    const out = new Map<string, ConnectionView[]>();
    owners.forEach((owner, u) => {
      const views: ConnectionView[] = [];
      ids.forEach((provider, p) => {
        const record = parseRecord(values[u * ids.length + p]);
        if (record && ownership(owner, record.passwordVersion) !== 'other') views.push(this.view(provider, record));
      });
      out.set(owner.userId, views);
    });
    return out;
  }

  /**
   * Tokens a refresh got after a disconnect deleted the link: revoked at the provider too (best effort), as the
   * disconnect revoked (only these tokens when it found the account shared: `sharedKey`).
   */
  async orphaned(providerId: string, userId: string, tokens: OAuthTokens): Promise<void> {
    let revoked = false;
    try {
      const shared = (await guard(() => this.deps.store.get(sharedKey(providerId, userId)))) !== null;
      revoked = await this.revokeAtProvider(providerId, tokens, shared);
    } catch (error) {
      this.deps.logger.warn({ provider: providerId, userId, err: errorName(error) }, 'revoking the tokens of a refresh that outlived a disconnect failed');
      return;
    }
    this.deps.logger.info({ provider: providerId, userId, revoked }, 'tokens of a refresh that outlived a disconnect revoked');
  }

  /**
   * The tokens a reconnect wrote over (another grant than the new one), revoked at the provider as a disconnect
   * revokes, best effort: a failure is logged and the reconnect stands. The whole grant only when it is another
   * account's than the new one and no other user is connected to that account; otherwise (the same account, or
   * one the provider did not name) it may be the very grant the new tokens belong to (GitHub and Google keep one
   * per account and app, and end it for any of its tokens), so only these tokens go, where the provider can
   * revoke one token alone (GitHub), and elsewhere nothing does.
   */
  private async revokeReplaced(
    providerId: string,
    userId: string,
    replaced: { tokens: OAuthTokens; account: string | null },
    account: string | null,
  ): Promise<void> {
    const { tokens, account: previous } = replaced;
    let revoked = false;
    let own = true;
    try {
      own = previous === null || account === null || previous === account || (await this.sharedWithOthers(providerId, previous, userId));
      revoked = await this.revokeAtProvider(providerId, tokens, own);
    } catch (error) {
      this.deps.logger.warn(
        { provider: providerId, userId, err: errorName(error) },
        'revoking the grant a reconnect replaced failed; the reconnect stands',
      );
      return;
    }
    this.deps.logger.info({ provider: providerId, userId, revoked, own }, 'the grant a reconnect replaced was revoked where it could be');
  }

  /**
   * Disconnects: revokes the grant at the provider where it can (best effort: the tokens are deleted even if the
   * provider cannot be reached), then deletes tokens and connection. `revoked`: true when the provider confirmed,
   * false when it failed or has no way to revoke. When another user is connected to the same account at the
   * provider (`shared`), the grant is theirs too: only these tokens are revoked where the provider can do that
   * (GitHub), and elsewhere nothing is, so their connection goes on.
   */
  async disconnect(providerId: string, userId: string, actor = userId): Promise<{ revoked: boolean; shared: boolean }> {
    this.provider(providerId);
    // Under the grant's refresh lock: a refresh finishing between the read and the delete would save tokens this
    // never revokes, or be refused for the token just revoked and mark the connection as needing a reconnect.
    const { revoked, shared } = await this.deps.tokens.exclusive(providerId, userId, async () => {
      const result = await this.revokeAndDelete(providerId, userId);
      // Still under the lock: a reconnect saved after it is indexed again, not dropped from the index by this.
      await this.forget(providerId, userId);
      return result;
    });
    this.deps.logger.info({ provider: providerId, userId, revoked, shared }, 'account disconnected');
    await this.deps.audit.recordAdmin({
      action: 'connection.disconnect',
      actor,
      targetUser: userId,
      outcome: `${providerId}:${revoked ? 'revoked' : 'deleted'}${shared ? ':shared' : ''}`,
    });
    return { revoked, shared };
  }

  /** Disconnect's work, holding the refresh lock: revokes what the store holds, then deletes tokens and record. */
  private async revokeAndDelete(providerId: string, userId: string): Promise<{ revoked: boolean; shared: boolean }> {
    const [record, tokens] = await Promise.all([
      this.record(providerId, userId),
      this.deps.tokens.load(providerId, userId),
    ]);
    if (!record && !tokens)
      throw new KeywardError('not_found', { message: 'You have no connection to this provider.' });
    const account = record?.account ?? null;
    // Unlinked before looking for others: of two linked users disconnecting at once, at least one then finds the
    // other gone and revokes (both finding each other would leave the grant at the provider with nobody on it).
    if (account) await this.setField(accountKey(providerId, account), userId, 0);
    let shared = false;
    let revoked = false;
    // Until the provider is asked to revoke, a failure leaves the connection whole: it is linked again below.
    let reversible = true;
    try {
      shared = account !== null && (await this.sharedWithOthers(providerId, account, userId));
      if (shared) {
        // A refresh that outlived its lock may still save tokens after this; `orphaned` must revoke them the same way.
        await guard(() => this.deps.store.set(sharedKey(providerId, userId), '1', SHARED_MARK_TTL_MS));
        this.deps.logger.info(
          { provider: providerId, userId },
          'another user is connected to the same account at the provider: its grant is left there',
        );
      }
      reversible = false;
      if (tokens) {
        try {
          revoked = await this.revokeAtProvider(providerId, tokens, shared);
        } catch (error) {
          this.deps.logger.warn(
            { provider: providerId, userId, err: errorName(error) },
            'revocation at the provider failed; the tokens are deleted anyway',
          );
        }
      }
      await this.deps.tokens.unlink(providerId, userId);
      await guard(() => this.deps.store.delete(recordKey(providerId, userId)));
    } catch (error) {
      // Failed before anything was revoked or deleted (a store that did not answer): linked again, best effort, so
      // another user's disconnect still sees the connection and leaves the grant it uses. Once revocation was
      // asked for, the grant may be gone: left unlinked, so nobody's later disconnect keeps a grant for it.
      if (account && reversible) await this.setField(accountKey(providerId, account), userId, 1).catch(() => {});
      throw error;
    }
    return { revoked, shared };
  }

  /**
   * Revokes tokens at the provider: the whole grant, or only these tokens when `own` (the grant may be another
   * user's, or another connection's, too: see ProviderClient.revokeOwn). True when the provider confirmed.
   */
  private async revokeAtProvider(providerId: string, tokens: OAuthTokens, own: boolean): Promise<boolean> {
    const client = this.client(providerId);
    return own ? client.revokeOwn(tokens) : client.revoke(tokens);
  }

  /**
   * Whether another user is connected to this account at the provider: the account's index names them, and their
   * own record still says this account (an index field outlives a reconnect to another account that raced it) and
   * is connected, not waiting to be reconnected.
   */
  private async sharedWithOthers(providerId: string, account: string, userId: string): Promise<boolean> {
    const [fields] = await guard(() => this.deps.store.readHashes([accountKey(providerId, account)]));
    const others = Object.entries(fields ?? {})
      .filter(([other, count]) => count > 0 && other !== userId)
      .map(([other]) => other)
      .slice(0, MAX_ACCOUNT_CHECKS);
    // One that needs reconnecting holds no grant worth keeping (the provider refused its refresh): it must connect
    // again anyway, and revoking ends what is left of its access too.
    return (await this.records(providerId, others)).some((record) => record?.account === account && record.status === 'connected');
  }

  /**
   * Disconnects every provider the user is connected to (a local user taken out of the users file: the name may
   * be given to someone else later, who must not inherit the accounts). `actor` is who the audit names. One
   * provider that cannot be disconnected (a store error, a refresh holding the lock) does not keep the others:
   * the first failure is thrown after every provider was tried.
   */
  async disconnectAll(userId: string, actor: string): Promise<void> {
    let failure: unknown;
    for (const providerId of this.deps.providers.keys()) {
      try {
        await this.disconnect(providerId, userId, actor);
      } catch (error) {
        if (!(error instanceof KeywardError && error.code === 'not_found')) failure ??= error;
      }
    }
    if (failure !== undefined) throw failure;
  }

  /** What `accessToken` reads first (OAuthTokenStore.reads), for the call's one store round trip. */
  reads(providerId: string, userId: string): { readonly store: Store; readonly secret: string } {
    return this.deps.tokens.reads(providerId, userId);
  }

  /**
   * The user's access token for a proxied call, refreshed first if it is about to expire. No connection, or one
   * that needs reconnecting: 403 `connection_required` with the URL to (re)connect. `known`: the sealed tokens
   * as the call's round trip read them (OAuthTokenStore.reads). A local user's connection made under another
   * password is none: the same 403, to connect (not reconnect).
   */
  async accessToken(providerId: string, owner: Owner, known?: string | null): Promise<string> {
    try {
      return await this.deps.tokens.accessToken(providerId, owner, known);
    } catch (error) {
      if (!(error instanceof KeywardError) || (error.code !== 'credential_missing' && error.code !== 'reauth_required'))
        throw error;
      const record = await this.record(providerId, owner.userId);
      const ended = record?.status === 'needs_reconnect' && ownership(owner, record.passwordVersion) !== 'other';
      throw connectionRequired(this.provider(providerId), ended);
    }
  }

  /**
   * An upstream answered 401 to a call that carried this connection's access token. A grant whose token never
   * expires (a GitHub OAuth app's) is never refreshed, so nothing else would find out that the user revoked it at
   * the provider: where the provider can tell (GitHub's GET /user, with the token), it is asked, and a token it no longer
   * knows ends the connection as a refused refresh does (needs_reconnect: calls answer 403 connection_required).
   * At most one check per connection per TOKEN_CHECK_EVERY_MS, whatever the upstream answers meanwhile.
   */
  async upstreamRefused(providerId: string, userId: string, accessToken: string): Promise<void> {
    if (!this.has(providerId)) return;
    const client = this.client(providerId);
    if (!client.checksTokens) return;
    if (!(await guard(() => this.deps.store.setIfAbsent(tokenCheckKey(providerId, userId), '1', TOKEN_CHECK_EVERY_MS)))) return;
    await this.deps.tokens.endIfRevoked(providerId, userId, accessToken, (token) => client.revokedAtProvider(token));
  }

  /** The token store's report of a saved refresh (see runtime.ts): the connection's lastRefreshAt. */
  async refreshed(
    providerId: string,
    userId: string,
    tokens: OAuthTokens & { scopes?: readonly string[] | null; passwordVersion?: string },
  ): Promise<void> {
    if (!this.has(providerId)) return;
    const record = await this.record(providerId, userId).catch(() => null);
    if (!record) return;
    const now = this.deps.now();
    const passwordVersion = record.passwordVersion ?? tokens.passwordVersion ?? null;
    await this.saveRecord(providerId, userId, {
      ...record,
      scopes: tokens.scopes ?? record.scopes,
      lastRefreshAt: now,
      refreshable: tokens.refreshToken !== null,
      ...(passwordVersion === null ? {} : { passwordVersion }),
    }).catch(() => {});
  }

  /**
   * The token store's report that tokens saved before they were stamped were stamped at their first use: the
   * connection is stamped too (compare-and-set, only if it has no stamp yet), so that it is listed as the calls
   * judge it. Best effort.
   */
  async stamped(providerId: string, userId: string, passwordVersion: string): Promise<void> {
    if (!this.has(providerId)) return;
    const key = recordKey(providerId, userId);
    const raw = await this.deps.store.get(key);
    const record = parseRecord(raw);
    if (!raw || !record || record.passwordVersion) return;
    await this.deps.store.replaceIfEquals(key, raw, JSON.stringify({ ...record, passwordVersion }));
  }

  /**
   * The token store's question before a local user's call takes tokens saved without a stamp as theirs: the
   * password version the connection record is stamped with (null: none, or no connection of this provider).
   */
  async stampOf(providerId: string, userId: string): Promise<string | null> {
    if (!this.has(providerId)) return null;
    return (await this.record(providerId, userId))?.passwordVersion ?? null;
  }

  /**
   * The token store's report that a grant ended (`reason`: the provider refused the refresh, the token expired with
   * no refresh token, or an upstream refused a token that never expires and the provider confirmed it dead): the
   * connection needs reconnecting. Shown to the user and the admin data, logged, audited (the outcome ends in
   * `:expired` or `:revoked` for the last two), and sent to the detector's webhook.
   */
  async ended(providerId: string, userId: string, reason: EndReason = 'refused'): Promise<void> {
    if (!this.has(providerId)) return;
    const now = this.deps.now();
    const record = await this.record(providerId, userId).catch(() => null);
    const next: ConnectionRecord = record
      ? { ...record, status: 'needs_reconnect', statusAt: now }
      : {
          scopes: [],
          connectedAt: now,
          lastRefreshAt: null,
          status: 'needs_reconnect',
          statusAt: now,
          refreshable: false,
        };
    await this.saveRecord(providerId, userId, next).catch(() => {});
    this.deps.logger.warn(
      { provider: providerId, userId, reason },
      reason === 'expired'
        ? 'connection needs reconnecting: its token expired, and the provider gave no refresh token'
        : reason === 'revoked'
          ? 'connection needs reconnecting: an upstream refused its token, and the provider says it is no longer valid'
          : 'connection needs reconnecting: the provider refused to refresh it',
    );
    const outcome = reason === 'refused' ? providerId : `${providerId}:${reason}`;
    await this.deps.audit
      .recordAdmin({ action: 'connection.needs_reconnect', actor: 'keyward', targetUser: userId, outcome })
      .catch(() => {});
    this.deps.webhook?.send({
      type: 'keyward.connection.needs_reconnect',
      connection: { provider: providerId, userId, at: new Date(now).toISOString() },
    });
  }

  /** Users with a connection to this provider (the keeper's walk), as the index has them. */
  async indexedUsers(providerId: string): Promise<string[]> {
    const [fields] = await guard(() => this.deps.store.readHashes([indexKey(providerId)]));
    return Object.entries(fields ?? {})
      .filter(([, count]) => count > 0)
      .map(([userId]) => userId);
  }

  /** Connection records of these users for one provider, in one round trip (null where there is none). */
  async records(providerId: string, userIds: readonly string[]): Promise<(ConnectionRecord | null)[]> {
    if (userIds.length === 0) return [];
    const values = await guard(() => this.deps.store.getMany(userIds.map((userId) => recordKey(providerId, userId))));
    return values.map((value) => parseRecord(value));
  }

  /**
   * Drops a user the index lists without a connection (a disconnect that raced a connect). Reads the user's
   * field alone: every disconnect comes here, and the index has a field per connected user.
   */
  async forget(providerId: string, userId: string): Promise<void> {
    await this.setField(indexKey(providerId), userId, 0);
  }

  /**
   * Renews the index fields of connections the keeper found alive (`connidx` and, where the record names one, the
   * provider account's `connacct`), in one write: a connection kept for years, never reconnected (GitHub's tokens
   * do not expire), must not drop out of the indexes, or its disconnect would revoke a grant another user shares.
   */
  async renewIndexes(providerId: string, live: readonly { userId: string; record: ConnectionRecord }[]): Promise<void> {
    if (live.length === 0) return;
    const expiresAt = this.deps.now() + INDEX_TTL_MS;
    const renewals = live.flatMap(({ userId, record }) => [
      { key: indexKey(providerId), field: userId, by: 0, expiresAt },
      ...(record.account ? [{ key: accountKey(providerId, record.account), field: userId, by: 0, expiresAt }] : []),
    ]);
    await guard(() => this.deps.store.incrementHashes(renewals));
  }

  get tokens(): OAuthTokenStore {
    return this.deps.tokens;
  }

  private view(provider: string, record: ConnectionRecord): ConnectionView {
    return {
      provider,
      name: this.deps.providers.get(provider)!.name,
      status: record.status,
      scopes: [...record.scopes],
      connectedAt: new Date(record.connectedAt).toISOString(),
      lastRefreshAt: record.lastRefreshAt === null ? null : new Date(record.lastRefreshAt).toISOString(),
      needsReconnectSince: record.status === 'needs_reconnect' ? new Date(record.statusAt).toISOString() : null,
      connectUrl: connectPath(provider),
    };
  }

  private async record(providerId: string, userId: string): Promise<ConnectionRecord | null> {
    return parseRecord(await guard(() => this.deps.store.get(recordKey(providerId, userId))));
  }

  private async saveRecord(providerId: string, userId: string, record: ConnectionRecord): Promise<void> {
    await guard(() => this.deps.store.set(recordKey(providerId, userId), JSON.stringify(record)));
  }

  /**
   * Sets a counter-hash field to `value` (the stores add, so: read, then add the difference). `renew` writes even
   * when the field already holds it, which renews the hash's expiry (the field's, in SQLite).
   */
  private async setField(key: string, field: string, value: number, renew = false): Promise<void> {
    const by = value - (await guard(() => this.deps.store.readHashField(key, field)));
    if (by === 0 && !renew) return;
    const expiresAt = this.deps.now() + INDEX_TTL_MS;
    await guard(() => this.deps.store.incrementHashes([{ key, field, by, expiresAt }]));
  }

  /**
   * The pending authorization for this provider and browser (its binding), deleted in one step that only one
   * caller can win (single use). One for another provider or browser is left as it is.
   */
  private async takePending(state: string, providerId: string, binding: string): Promise<PendingConnect | null> {
    const key = pendingKey(state);
    const sealed = await guard(() => this.deps.store.get(key));
    if (!sealed) return null;
    let pending: PendingConnect;
    try {
      pending = (await this.deps.vault.openFor<PendingConnect>(key, sealed, 'state')).value;
    } catch {
      return null;
    }
    if (pending.provider !== providerId || !sameHash(pending.bindingHash, sha256(binding))) return null;
    return (await guard(() => this.deps.store.deleteIfEquals(key, sealed))) ? pending : null;
  }

  /** The provider could not be reached (discovery): 503, logged without its URL. */
  private async withProvider<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      if (error instanceof KeywardError) throw error;
      throw new KeywardError('service_unavailable', {
        message: 'The provider cannot be reached right now; try again shortly.',
        cause: error,
      });
    }
  }
}

/** `/api/connect/<provider>`: where a user connects (or reconnects). */
export function connectPath(provider: string): string {
  return `/api/connect/${encodeURIComponent(provider)}`;
}

/** 403 `connection_required`, with the URL to connect (or reconnect) in the error's `connectUrl`. */
export function connectionRequired(provider: ConnectionProvider, reconnect: boolean): KeywardError {
  return new KeywardError('connection_required', {
    message: reconnect
      ? `Your ${provider.name} connection has ended; reconnect it to continue (connectUrl).`
      : `Connect your ${provider.name} account first (connectUrl).`,
    connectUrl: connectPath(provider.id),
  });
}

/**
 * `returnTo` as given to /api/connect: a path on this site only (no scheme, no `//host`, no backslash or
 * control character), at most 512 characters; anything else is the home page. Never an absolute URL: no open redirect.
 */
export function safeReturnTo(value: string | null): string {
  if (
    !value ||
    value.length > MAX_RETURN_TO ||
    !value.startsWith('/') ||
    value.startsWith('//') ||
    /[\\\x00-\x1f\x7f]/.test(value)
  )
    return '/';
  try {
    // `/\t/evil.com` and the like are caught above; this catches what a URL parser would still move off-site.
    const url = new URL(value, 'https://keyward.invalid');
    if (url.origin !== 'https://keyward.invalid') return '/';
    const path = `${url.pathname}${url.search}${url.hash}`;
    // Normalising can make a path that begins with `//` (`/.//evil.example`): that is another host. Checked again.
    return isLocalPath(path) ? path : '/';
  } catch {
    return '/';
  }
}

/** A path on this site: one leading slash, not two (`//host` is another site), no backslash (browsers read it as `/`). */
export function isLocalPath(path: string): boolean {
  return path.startsWith('/') && !path.startsWith('//') && !path.includes('\\') && !/[\x00-\x1f\x7f]/.test(path);
}

/** `?scope=` on /api/connect: space-separated scope tokens, bounded. */
export function parseExtraScopes(value: string | null): string[] {
  if (!value) return [];
  const scopes = [...new Set(value.split(' ').filter(Boolean))];
  if (scopes.length > MAX_EXTRA_SCOPES || scopes.some((scope) => !SCOPE_TOKEN.test(scope))) {
    throw new KeywardError('bad_request', { message: 'scope must be space-separated OAuth scopes.' });
  }
  return scopes;
}

function recordKey(provider: string, userId: string): string {
  return `conn:${provider}:${userId}`;
}

function indexKey(provider: string): string {
  return `connidx:${provider}`;
}

/** The users connected to one account at the provider (fields: user ids), by the account's digest. */
function accountKey(provider: string, account: string): string {
  return `connacct:${provider}:${account}`;
}

/** Set by a disconnect that found the account shared, for a refresh that outlives it (see orphaned). */
function sharedKey(provider: string, userId: string): string {
  return `connshared:${provider}:${userId}`;
}

/** An account id at a provider, as stored: a digest (ids are not secret; the store need not hold them as they are). */
function accountDigest(provider: string, account: string): string {
  return createHash('sha256').update(`${provider}\0${account}`, 'utf8').digest('base64url');
}

/** Set for TOKEN_CHECK_EVERY_MS when an upstream's 401 had the connection's token checked at the provider. */
function tokenCheckKey(provider: string, userId: string): string {
  return `conncheck:${provider}:${userId}`;
}

/** How many connects the user started in the current PENDING_TTL_MS window (a counter that expires with it). */
function startsKey(userId: string): string {
  return `connect:starts:${userId}`;
}

function pendingKey(state: string): string {
  return `connect:state:${sha256(state)}`;
}

function sha256(value: string): string {
  return createHash('sha256').update(value, 'utf8').digest('hex');
}

function sameHash(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

/** An error's class name only: messages of fetch and URL errors can carry URLs with queries. */
function errorName(error: unknown): string {
  return error instanceof Error ? error.name : 'unknown';
}

/**
 * Whether a connect's tokens belong to the grant already stored: the provider gave back the same refresh token
 * (one that does not rotate, handed out again) or the same access token.
 */
function sameGrant(stored: OAuthTokens, next: OAuthTokens): boolean {
  return (stored.refreshToken !== null && stored.refreshToken === next.refreshToken) || stored.accessToken === next.accessToken;
}

function parseRecord(raw: string | null | undefined): ConnectionRecord | null {
  if (!raw) return null;
  try {
    const value = JSON.parse(raw) as Partial<ConnectionRecord>;
    if (value.status !== 'connected' && value.status !== 'needs_reconnect') return null;
    if (typeof value.connectedAt !== 'number' || typeof value.statusAt !== 'number') return null;
    return {
      scopes: Array.isArray(value.scopes) ? value.scopes.filter((s): s is string => typeof s === 'string') : [],
      connectedAt: value.connectedAt,
      lastRefreshAt: typeof value.lastRefreshAt === 'number' ? value.lastRefreshAt : null,
      status: value.status,
      statusAt: value.statusAt,
      refreshable: value.refreshable === true,
      account: typeof value.account === 'string' ? value.account : null,
      ...(typeof value.passwordVersion === 'string' ? { passwordVersion: value.passwordVersion } : {}),
    };
  } catch {
    return null;
  }
}
