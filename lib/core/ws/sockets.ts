import type { OAuthTokenStore } from '../credential/oauth';
import { KeywardError } from '../errors';
import type { UserKeys } from '../credential/user-keys';
import type { KeyRings } from '../keys/rings';
import type { SessionRevocations } from '../session/revocation';
import type { Session } from '../session/session';
import type { Upstream } from '../upstream/registry';
import { currentLocalUser, type LocalUsers } from '../users/file';

/**
 * Close codes Keyward sends on a proxied WebSocket (RFC 6455 §7.4.2: 4000–4999 are for applications), mirrored
 * on HTTP statuses. The close reason is fixed text, never a value.
 */
export const CLOSE = {
  /** The session was signed out, revoked or expired, or its local user removed from the users file. */
  sessionEnded: { code: 4401, reason: 'session ended' },
  /** A local user's roles or claims changed in the users file: reconnect to be authorized as they are now. */
  sessionChanged: { code: 4401, reason: 'session changed' },
  /**
   * The key this socket's upstream handshake used was revoked or expired (key ring), or its owner deleted or
   * replaced it, or the OAuth grant it came from was disconnected or ended.
   */
  keyRevoked: { code: 4403, reason: 'credential revoked' },
  /** No message either way for the route's idleTimeoutMs. */
  idle: { code: 4408, reason: 'idle timeout' },
  /** The server is stopping (RFC 6455 §7.4.1: going away). */
  shutdown: { code: 1001, reason: 'server shutting down' },
  /** Revocation could not be read from the store: fail closed. */
  storeUnavailable: { code: 4503, reason: 'store unavailable' },
} as const;

export type CloseCause = keyof typeof CLOSE;

/** The answer to an upgrade the server's stop ended before its socket opened. */
export const STOPPING = () => new KeywardError('service_unavailable', { message: 'Keyward is stopping; connect again in a moment.' });

/** An open proxied socket, as the registry sees it. */
export interface OpenSocket {
  readonly session: Session;
  readonly upstream: Upstream;
  /** Fingerprint of the key used on the upstream handshake. */
  readonly fingerprint: string;
  close(cause: CloseCause): void;
}

/**
 * Every proxied WebSocket open in this process, re-checked on an interval (default 1 s) so that a sign-out, an
 * admin's revocation, a session's expiry, a revoked service key, a user's own key deleted or replaced, or an
 * OAuth grant disconnected or ended closes its sockets within about a second, on every instance (the state is
 * read from the shared store, as each call reads it). One revocation read per distinct session, one key-ring read
 * per tick, and one read per user and upstream with an own key or an OAuth token, however many sockets share
 * them; no timer while none is open. A grant revoked at the provider itself is not seen (that would take a
 * token refresh or an introspection call a second), nor is a grant replaced by reconnecting: the socket keeps the
 * token it was opened with until the provider ends it.
 */
export class OpenSockets {
  private readonly open = new Set<OpenSocket>();
  private timer: ReturnType<typeof setInterval> | null = null;
  private checking = false;
  private readonly stopping = new AbortController();

  constructor(
    private readonly sources: {
      readonly revocations: SessionRevocations;
      readonly keyRings?: KeyRings | null;
      readonly userKeys?: Pick<UserKeys, 'currentFingerprint'> | null;
      readonly oauthTokens?: Pick<OAuthTokenStore, 'hasGrant'> | null;
      /** KEYWARD_USERS_FILE's users: a local user removed, or given other roles or claims, closes their sockets. */
      readonly users?: Pick<LocalUsers, 'find'> | null;
    },
    private readonly now: () => number = Date.now,
    private readonly intervalMs = 1_000,
  ) {}

  get size(): number {
    return this.open.size;
  }

  /**
   * Aborted by closeAll (the server is stopping): an upgrade still being authorized or in its upstream handshake
   * stops there and is answered 503 (lib/node/websocket.ts), instead of opening a socket after the rest were closed.
   */
  get closing(): AbortSignal {
    return this.stopping.signal;
  }

  /**
   * Registers a socket; returns the function that removes it (call it when the socket closes). Once closeAll has
   * run, a socket registered (its handshake was completing) is closed as the others were, once `add` has returned
   * (its caller may not have the function that removes it yet).
   */
  add(socket: OpenSocket): () => void {
    if (this.stopping.signal.aborted) {
      queueMicrotask(() => socket.close('shutdown'));
      return () => {};
    }
    this.open.add(socket);
    if (!this.timer) {
      this.timer = setInterval(() => void this.check(), this.intervalMs);
      this.timer.unref?.();
    }
    return () => {
      this.open.delete(socket);
      if (this.open.size === 0 && this.timer) {
        clearInterval(this.timer);
        this.timer = null;
      }
    };
  }

  /**
   * Closes every open socket (server shutdown), so each is recorded before the process goes, and ends the
   * upgrades under way (`closing`).
   */
  closeAll(): void {
    this.stopping.abort(STOPPING());
    for (const socket of [...this.open]) socket.close('shutdown');
  }

  /** One pass: closes every socket whose session or key is no longer valid. Exposed for tests. */
  async check(): Promise<void> {
    if (this.checking) return; // a slow store: the next tick starts when this one is done
    this.checking = true;
    try {
      await Promise.all([this.checkSessions(), this.checkKeys(), this.checkUserKeys(), this.checkGrants()]);
    } finally {
      this.checking = false;
    }
  }

  private async checkSessions(): Promise<void> {
    const bySession = group(this.open, (socket) => socket.session.sessionId);
    const now = this.now();
    await Promise.all(
      [...bySession.values()].map(async (all) => {
        // Each socket ends with the cookie or token it was opened with: one session renews its cookie, and an app's
        // token family refreshes its access token (same session id, later expiry). An expired one costs no read.
        const sockets = all.filter((socket) => {
          if (socket.session.expiresAt > now) return true;
          socket.close('sessionEnded');
          return false;
        });
        if (sockets.length === 0) return;
        const { session } = sockets[0]!;
        const current = this.sources.users ? currentLocalUser(session, this.sources.users) : session;
        let cause: CloseCause | null = null;
        if (current === null) cause = 'sessionEnded';
        else {
          try {
            if (await this.sources.revocations.isRevoked(session)) cause = 'sessionEnded';
          } catch {
            cause = 'storeUnavailable';
          }
        }
        for (const socket of sockets) {
          // Each socket against the file as it is now: sockets of one session may have been opened under other roles.
          const changed = current !== null && !sameAccess(socket.session, current);
          if (cause || changed) socket.close(cause ?? 'sessionChanged');
        }
      }),
    );
  }

  /** Service keys only: the key ring says whether a fingerprint's version was revoked or has expired. */
  private async checkKeys(): Promise<void> {
    const rings = this.sources.keyRings;
    if (!rings) return;
    const serviceKeyed = [...this.open].filter((socket) => socket.upstream.credential.source === 'static');
    if (serviceKeyed.length === 0) return;
    let states: Map<string, Set<string>>;
    try {
      // By the fingerprint the socket's credential carries, which the ring's own list may show otherwise.
      states = await rings.retiredFingerprints();
    } catch {
      for (const socket of serviceKeyed) socket.close('storeUnavailable');
      return;
    }
    for (const socket of serviceKeyed) {
      if (states.get(socket.upstream.id)?.has(socket.fingerprint)) socket.close('keyRevoked');
    }
  }

  /** Users' own keys: a socket closes once its owner's stored key is gone or is another key. */
  private async checkUserKeys(): Promise<void> {
    const userKeys = this.sources.userKeys;
    if (!userKeys) return;
    await this.checkOwned(
      'user-key',
      ({ upstream, session }) => userKeys.currentFingerprint(upstream.id, session, upstream.fingerprints),
      (current, socket) => socket.fingerprint === current,
    );
  }

  /** Users' OAuth tokens (`{"oauth": …}`): a socket closes once the user's grant is gone (disconnected or ended). */
  private async checkGrants(): Promise<void> {
    const tokens = this.sources.oauthTokens;
    if (!tokens) return;
    await this.checkOwned(
      'oauth',
      async ({ upstream: { credential }, session }) =>
        credential.source === 'oauth' && (await tokens.hasGrant(credential.provider, session.userId)),
      (held) => held,
    );
  }

  /**
   * The sockets on a per-user credential of one kind: `read` once per user and upstream, and each socket closed
   * unless `valid` (4403); a store that cannot answer closes them (fail closed).
   */
  private async checkOwned<T>(
    source: 'user-key' | 'oauth',
    read: (socket: OpenSocket) => Promise<T>,
    valid: (current: T, socket: OpenSocket) => boolean,
  ): Promise<void> {
    const owned = [...this.open].filter((socket) => socket.upstream.credential.source === source);
    const byOwner = group(owned, (socket) => `${socket.upstream.id}\u0000${socket.session.userId}`);
    await Promise.all(
      [...byOwner.values()].map(async (sockets) => {
        let current: T;
        try {
          current = await read(sockets[0]!);
        } catch {
          for (const socket of sockets) socket.close('storeUnavailable');
          return;
        }
        for (const socket of sockets) if (!valid(current, socket)) socket.close('keyRevoked');
      }),
    );
  }
}

function group<T>(items: Iterable<T>, by: (item: T) => string): Map<string, T[]> {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const name = by(item);
    const list = groups.get(name);
    if (list) list.push(item);
    else groups.set(name, [item]);
  }
  return groups;
}

/** The same roles (in any order) and claims: what authorizes a call and chooses its key; a name may differ. */
function sameAccess(a: Pick<Session, 'roles' | 'claims'>, b: Pick<Session, 'roles' | 'claims'>): boolean {
  const roles = new Set(a.roles);
  if (roles.size !== new Set(b.roles).size || !b.roles.every((role) => roles.has(role))) return false;
  const names = Object.keys(a.claims);
  return (
    names.length === Object.keys(b.claims).length &&
    names.every((name) => Object.hasOwn(b.claims, name) && a.claims[name] === b.claims[name])
  );
}
