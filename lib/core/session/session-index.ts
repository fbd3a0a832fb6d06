import { hashSessionId } from '../audit/audit';
import { guard } from '../store/guard';
import type { Store } from '../../store/types';
import { localSessionHolds, type LocalUsers } from '../users/file';
import { detectorRevocationKey, hashedRevocationKey, revokedBy, userRevocationKey } from './revocation';

/**
 * A small index of each user's recent sign-ins, for the admin dashboard's Users pages. Keyward's sessions are
 * stateless (a sealed cookie, a sealed bearer token), so nothing else lists them. Written at sign-in only (the
 * Auth.js sign-in and the mobile code exchange), never on a proxied call; read only by the admin pages.
 *
 * Bounded and TTL'd: each user has SLOTS entries in a ring (`sidx:<userId>:<slot>`, the slot chosen by an atomic
 * counter, so two sign-ins at once never overwrite each other), and each entry expires with its session. The
 * session id is never stored, only its hash (the audit trail's `sessionIdHash`, so a session's calls can be
 * found), so the index cannot be used to revoke, forge or look up anything.
 */

/** How many sign-ins are kept per user: the most recent ones. */
export const SESSION_SLOTS = 20;
/** Entries outlive their session by this much, so a just-expired session is still shown as expired. */
const GRACE_MS = 60_000;
/** Keys read per store round trip when listing many users. */
const READ_CHUNK = 1_000;

export type SessionKind = 'browser' | 'mobile';

export interface SessionEntry {
  /** SHA-256 of the session id, first 16 hex digits: the audit records' `sessionIdHash`. */
  readonly sessionIdHash: string;
  readonly kind: SessionKind;
  /** When this session was created (epoch ms): the sign-in, or the mobile code exchange. */
  readonly createdAt: number;
  /** When it expires as issued (epoch ms); a browser session Auth.js renews, or a refreshed mobile family, lasts longer. */
  readonly expiresAt: number;
  /** The sign-in time revocation compares with "sign out everywhere" (a mobile family keeps its browser sign-in's). */
  readonly authTime: number;
  /** The roles the session was given. */
  readonly roles: readonly string[];
}

/** What is stored: the entry, and a local user's password version at sign-in (never shown). */
interface StoredEntry extends SessionEntry {
  readonly passwordVersion?: string | null;
}

export interface SessionView extends SessionEntry {
  /**
   * Signed out, or ended by "sign out everywhere" / an admin's revocation (lib/core/session/revocation.ts), or, for
   * a local user, refused because the users file no longer has them or has given them a new password.
   */
  readonly revoked: boolean;
  readonly expired: boolean;
}

export interface NewSession {
  readonly sessionId: string;
  readonly kind: SessionKind;
  readonly expiresAt: number;
  readonly authTime: number;
  readonly roles: readonly string[];
  /** A local user's password version at sign-in (Session.passwordVersion). */
  readonly passwordVersion?: string | null;
}

export class SessionIndex {
  constructor(
    private readonly store: Store,
    /** The longest a session can live (the revocation marks' horizon): how long a user's slot counter is kept. */
    private readonly maxSessionAgeMs: number,
    private readonly now: () => number = Date.now,
    /** KEYWARD_USERS_FILE's users: a local user's session is listed as the calls judge it (currentLocalUser). */
    private readonly localUsers: Pick<LocalUsers, 'find'> | null = null,
  ) {}

  /** Records a new session in the user's ring (two store writes). A store failure is 503 `store_unavailable`. */
  async record(userId: string, session: NewSession): Promise<void> {
    const now = this.now();
    const entry: StoredEntry = {
      sessionIdHash: hashSessionId(session.sessionId),
      kind: session.kind,
      createdAt: now,
      expiresAt: session.expiresAt,
      authTime: session.authTime,
      roles: [...session.roles],
      ...(session.passwordVersion ? { passwordVersion: session.passwordVersion } : {}),
    };
    const count = await guard(() => this.store.increment(counterKey(userId), 1, this.maxSessionAgeMs));
    const slot = (((count - 1) % SESSION_SLOTS) + SESSION_SLOTS) % SESSION_SLOTS;
    const ttl = Math.max(session.expiresAt - now, 0) + GRACE_MS;
    // `seq` orders sign-ins of the same millisecond.
    await guard(() => this.store.set(slotKey(userId, slot), JSON.stringify({ ...entry, seq: count }), ttl));
  }

  /**
   * The latest sign-in time (`authTime`, epoch ms) among the user's indexed sessions, null when none is: what
   * "sign out everywhere" must reach (SessionRevocations.markTime). One store round trip.
   */
  async latestSignIn(userId: string): Promise<number | null> {
    const values = await this.readMany(slotKeys(userId));
    let latest: number | null = null;
    for (const value of values) {
      const parsed = parseEntry(value);
      if (parsed && (latest === null || parsed.entry.authTime > latest)) latest = parsed.entry.authTime;
    }
    return latest;
  }

  /** One user's indexed sessions, newest first, each with whether it was revoked. */
  async list(userId: string): Promise<SessionView[]> {
    return (await this.listMany([userId])).get(userId) ?? [];
  }

  /**
   * Several users' indexed sessions (newest first), in two store round trips per READ_CHUNK keys: the slots,
   * then the revocation marks of the sessions found.
   */
  async listMany(userIds: readonly string[]): Promise<Map<string, SessionView[]>> {
    const values = await this.readMany(userIds.flatMap(slotKeys));
    const found = new Map<string, StoredEntry[]>();
    userIds.forEach((userId, u) => {
      const entries: Array<{ entry: StoredEntry; seq: number }> = [];
      for (let slot = 0; slot < SESSION_SLOTS; slot++) {
        const parsed = parseEntry(values[u * SESSION_SLOTS + slot]);
        if (parsed) entries.push(parsed);
      }
      // Newest first.
      entries.sort((a, b) => b.entry.createdAt - a.entry.createdAt || b.seq - a.seq);
      found.set(userId, entries.map(({ entry }) => entry));
    });
    // Each user's `rev:user:` and `rev:det:` marks and each session's hashed `rev:sid` mark, read together.
    const markKeys: string[] = [];
    for (const [userId, entries] of found) {
      if (entries.length === 0) continue;
      markKeys.push(userRevocationKey(userId), detectorRevocationKey(userId), ...entries.map((entry) => hashedRevocationKey(entry.sessionIdHash)));
    }
    const marks = await this.readMany(markKeys);
    const now = this.now();
    const out = new Map<string, SessionView[]>();
    let next = 0;
    for (const [userId, entries] of found) {
      const byUser = entries.length > 0 ? marks[next++] : null;
      const byDetector = entries.length > 0 ? marks[next++] : null;
      const views = entries.map(({ passwordVersion, ...entry }) => ({
        ...entry,
        revoked:
          revokedBy({ sessionId: '', userId, authTime: entry.authTime }, [marks[next++], byUser, byDetector]) ||
          (this.localUsers !== null && !localSessionHolds(userId, passwordVersion ?? null, this.localUsers)),
        expired: entry.expiresAt <= now,
      }));
      out.set(userId, views);
    }
    return out;
  }

  private async readMany(keys: readonly string[]): Promise<(string | null)[]> {
    const out: (string | null)[] = [];
    for (let i = 0; i < keys.length; i += READ_CHUNK) {
      const chunk = keys.slice(i, i + READ_CHUNK);
      out.push(...(await guard(() => this.store.getMany(chunk))));
    }
    return out;
  }
}

function counterKey(userId: string): string {
  return `sidx:${userId}:n`;
}

function slotKey(userId: string, slot: number): string {
  return `sidx:${userId}:${slot}`;
}

/** Every slot of the user's ring. */
function slotKeys(userId: string): string[] {
  return Array.from({ length: SESSION_SLOTS }, (_, slot) => slotKey(userId, slot));
}

/** A stored entry and its sequence number, or null for an empty slot or anything else (a later version's format). */
function parseEntry(raw: string | null | undefined): { entry: StoredEntry; seq: number } | null {
  if (!raw) return null;
  try {
    const value = JSON.parse(raw) as Partial<StoredEntry> & { seq?: unknown };
    if (typeof value.sessionIdHash !== 'string' || (value.kind !== 'browser' && value.kind !== 'mobile')) return null;
    if (
      typeof value.createdAt !== 'number' ||
      typeof value.expiresAt !== 'number' ||
      typeof value.authTime !== 'number'
    )
      return null;
    const roles = Array.isArray(value.roles)
      ? value.roles.filter((role): role is string => typeof role === 'string')
      : [];
    return {
      entry: {
        sessionIdHash: value.sessionIdHash,
        kind: value.kind,
        createdAt: value.createdAt,
        expiresAt: value.expiresAt,
        authTime: value.authTime,
        roles,
        passwordVersion: typeof value.passwordVersion === 'string' ? value.passwordVersion : null,
      },
      seq: typeof value.seq === 'number' ? value.seq : 0,
    };
  } catch {
    return null;
  }
}
