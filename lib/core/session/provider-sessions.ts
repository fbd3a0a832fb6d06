import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { decodeSegment } from '../route/segments';
import { guard } from '../store/guard';
import type { Store } from '../../store/types';
import type { LogoutClaims } from './logout-token';
import type { SessionRevocations } from './revocation';

/**
 * Which Keyward sessions came from which session at the OpenID provider, for OIDC Back-Channel Logout 1.0
 * (§2.7: a logout token with `sid` ends the sessions of that provider session; with only `sub`, every session
 * of that user).
 *
 * Written at sign-in only, never read by a proxied call: a call is still checked against the existing
 * `rev:sid:` / `rev:user:` marks alone (lib/core/session/revocation.ts), in its one store round trip. At
 * logout the sessions recorded for the provider sid are looked up here and a `rev:sid:` mark is written for
 * each, so every instance refuses them on their next call.
 *  - An OIDC sign-in whose ID token carries `sid` records its Keyward session id in a ring under that
 *    provider session (`psess:<h>:<slot>`, h = SHA-256 of issuer and sid; SLOTS entries, the slot chosen by
 *    an atomic counter `psess:<h>:n`), and a link from the Keyward session to the ring (`psess-of:<id>`).
 *  - A mobile token family minted from such a browser session (the code exchange) is added to the same ring
 *    through that link, so a sid logout ends the app's tokens too.
 * A logout marks the provider session ended (`psess:<h>:ended`) before reading its ring, and a session added
 * to a ring checks that mark after adding itself, so a sign-in racing the logout is ended all the same.
 * Everything expires with the longest a session or token family can live (the revocation marks' horizon).
 * If a ring overflowed (more than SLOTS sign-ins in one provider session), entries were overwritten: that
 * logout falls back to "sign out everywhere" for the users it names, so it never ends fewer sessions than asked.
 */

/** Keyward sessions remembered per provider session. One sign-in each; re-authenticating at the app adds one. */
export const PROVIDER_SESSION_SLOTS = 32;

/**
 * A user id as the admin API and pages take one: `local:<username>` or `oidc:<sub>`, where an OpenID Connect
 * `sub` is up to 255 ASCII characters of the provider's choosing (Core §2: a URL at some providers, with `/`,
 * `+`, `=` or spaces), so any printable ASCII is accepted.
 */
export const USER_ID = /^[\x20-\x7e]{1,300}$/;

/** OIDC Core §2: a `sub` is at most 255 ASCII characters. */
const MAX_SUB_LENGTH = 255;

/**
 * Whether a provider's account id (an OIDC `sub`) makes a user id Keyward signs in: OIDC Core's rule (printable
 * ASCII here, 1 to 255 characters), so that `<provider>:<sub>` is one the admin API and pages take (USER_ID).
 */
export function isAcceptedAccountId(provider: string, accountId: string): boolean {
  return accountId.length > 0 && accountId.length <= MAX_SUB_LENGTH && USER_ID.test(`${provider}:${accountId}`);
}

/**
 * A user id from a path segment a page was given (`/admin/users/<id>`), decoded once more only while it still
 * looks percent-encoded. Every user id holds a `:` (`local:…`, `oidc:…`), which an encoded one carries as `%3A`;
 * a decoded one may hold a `%` of its own (a sub is any printable ASCII), and decoding that again would name
 * another user.
 */
export function userIdFromSegment(segment: string): string {
  return segment.includes(':') ? segment : decodeSegment(segment);
}

/** Auth.js's OIDC provider id in lib/next/auth.ts: its users are `oidc:<sub>`. */
export function oidcUserId(sub: string): string {
  return `oidc:${sub}`;
}

export interface LinkedSession {
  readonly sessionId: string;
  readonly userId: string;
}

/** What a back-channel logout ended (counts only: the ids stay out of logs). */
export interface LogoutOutcome {
  /** Sessions and token families revoked one by one (`rev:sid:`). */
  readonly sessions: number;
  /** Users revoked everywhere (`rev:user:`). */
  readonly users: number;
  /** Why users were revoked everywhere: the token had no sid, or the sid's ring could not say exactly. */
  readonly everywhere: 'sub' | 'unmatched-sid' | 'overflow' | null;
}

export class ProviderSessions {
  constructor(
    private readonly store: Store,
    private readonly revocations: SessionRevocations,
    /** The longest a session or token family lives (the revocation marks' horizon): how long links are kept. */
    private readonly horizonMs: number,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** At an OIDC sign-in whose ID token had `sid` (`iss` from the same ID token). */
  async recordSignIn(issuer: string, providerSid: string, session: LinkedSession): Promise<void> {
    const ring = ringId(issuer, providerSid);
    await guard(() => this.store.set(linkKey(session.sessionId), ring, this.horizonMs));
    await this.add(ring, session);
  }

  /**
   * At a mobile code exchange: `session` (a token family) was minted from browser session `parentSessionId`.
   * Recorded only when the parent came from a provider session (one store read otherwise).
   */
  async recordDerived(parentSessionId: string, session: LinkedSession): Promise<void> {
    const ring = await guard(() => this.store.get(linkKey(parentSessionId)));
    if (ring) await this.add(ring, session);
  }

  /**
   * Marks a logout token's `jti` as seen (atomic, shared by every instance): false if it was seen before.
   * Kept as long as the token could pass the `iat` check.
   */
  firstUse(claims: LogoutClaims, ttlMs: number): Promise<boolean> {
    return guard(() => this.store.setIfAbsent(jtiKey(claims.issuer, claims.jti), '1', ttlMs));
  }

  /** Forgets a `jti` again, when its logout could not be carried out, so the provider's retry is not a "replay". */
  async forget(claims: LogoutClaims): Promise<void> {
    await guard(() => this.store.delete(jtiKey(claims.issuer, claims.jti)));
  }

  /**
   * Ends what a verified logout token names (§2.7): with `sid`, the sessions recorded for that provider session
   * (those of `sub` only, when it is given too); with only `sub`, every session of that user.
   */
  async end(claims: LogoutClaims): Promise<LogoutOutcome> {
    const user = claims.sub === null ? null : oidcUserId(claims.sub);
    if (claims.sid === null) {
      // Marked at the time the logout is carried out (revokeUser), not at the token's `iat`: the mark is compared
      // with Keyward's own sign-in times (taken as the code exchange completes, on Keyward's clock), and `iat`, on
      // the provider's clock and up to MAX_AGE_SECONDS earlier, would keep the sessions signed in meanwhile,
      // which may come from the provider session that ended. A sign-in completing after this is kept: without a
      // sid there is nothing like the ring's end mark, and no provider time recorded to compare with `iat`.
      await this.revocations.revokeUser(user!);
      return { sessions: 0, users: 1, everywhere: 'sub' };
    }
    const ring = ringId(claims.issuer, claims.sid);
    // Ended first, read second: a session added to the ring after this read sees the mark (add()) and ends itself.
    await guard(() => this.store.set(endedKey(ring), '1', this.horizonMs));
    const { entries, overflowed } = await this.read(ring);
    const matching = entries.filter((entry) => user === null || entry.userId === user);
    await Promise.all(matching.map((entry) => this.revocations.revokeSession(entry.sessionId)));
    let everywhere: LogoutOutcome['everywhere'] = null;
    let users: string[] = [];
    if (overflowed) {
      // Some sessions of this provider session were overwritten in the ring: their users are signed out everywhere.
      everywhere = 'overflow';
      users = user ? [user] : [...new Set(entries.map((entry) => entry.userId))];
    } else if (matching.length === 0 && user) {
      // Nothing recorded (signed in before this was recorded, or a provider that put no sid in the ID token):
      // the provider says this user's session there ended, so end theirs here rather than keep any.
      everywhere = 'unmatched-sid';
      users = [user];
    }
    await Promise.all(users.map((id) => this.revocations.revokeUser(id)));
    if (everywhere) this.logger.info({ reason: everywhere, users: users.length }, 'back-channel logout: users signed out everywhere');
    return { sessions: matching.length, users: users.length, everywhere };
  }

  /**
   * Adds a session to a provider session's ring, then checks that provider session has not ended meanwhile:
   * a sign-in or code exchange that raced its back-channel logout (and so was not in the ring the logout
   * read) is revoked here instead of outliving it.
   */
  private async add(ring: string, session: LinkedSession): Promise<void> {
    const count = await guard(() => this.store.increment(counterKey(ring), 1, this.horizonMs));
    const slot = (count - 1) % PROVIDER_SESSION_SLOTS;
    await guard(() => this.store.set(slotKey(ring, slot), JSON.stringify(session), this.horizonMs));
    if (await guard(() => this.store.get(endedKey(ring)))) {
      await this.revocations.revokeSession(session.sessionId);
    }
  }

  /** The ring's entries, and whether more were written than it holds; one store round trip. */
  private async read(ring: string): Promise<{ entries: LinkedSession[]; overflowed: boolean }> {
    const keys = [counterKey(ring), ...Array.from({ length: PROVIDER_SESSION_SLOTS }, (_, slot) => slotKey(ring, slot))];
    const [count, ...slots] = await guard(() => this.store.getMany(keys));
    const entries = slots.flatMap((raw) => parseEntry(raw));
    return { entries, overflowed: Number(count ?? 0) > PROVIDER_SESSION_SLOTS };
  }
}

/** The ring of one provider session: its issuer and sid, hashed (fixed length, any characters). */
function ringId(issuer: string, providerSid: string): string {
  return createHash('sha256').update(`${issuer}\n${providerSid}`, 'utf8').digest('base64url');
}

function counterKey(ring: string): string {
  return `psess:${ring}:n`;
}

function slotKey(ring: string, slot: number): string {
  return `psess:${ring}:${slot}`;
}

/** Set by the provider session's back-channel logout. */
function endedKey(ring: string): string {
  return `psess:${ring}:ended`;
}

function linkKey(sessionId: string): string {
  return `psess-of:${sessionId}`;
}

function jtiKey(issuer: string, jti: string): string {
  return `bcl-jti:${createHash('sha256').update(`${issuer}\n${jti}`, 'utf8').digest('base64url')}`;
}

function parseEntry(raw: string | null | undefined): LinkedSession[] {
  if (!raw) return [];
  try {
    const value = JSON.parse(raw) as Partial<LinkedSession>;
    return typeof value.sessionId === 'string' && typeof value.userId === 'string'
      ? [{ sessionId: value.sessionId, userId: value.userId }]
      : [];
  } catch {
    return [];
  }
}
