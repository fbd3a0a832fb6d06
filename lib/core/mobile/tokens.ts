import 'server-only';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { sealData } from 'iron-session';
import type { Logger } from 'pino';
import { KeywardError } from '../errors';
import type { SessionRevocations } from '../session/revocation';
import type { SessionIndex } from '../session/session-index';
import type { ProviderSessions } from '../session/provider-sessions';
import { guard } from '../store/guard';
import { capPerWindow } from '../store/window-cap';
import { authTimeClaims, type Session } from '../session/session';
import { MAX_ACCESS_TOKEN_LENGTH, unsealBearer, type BearerClaims } from '../session/verify';
import { currentLocalUser, localUsername, type LocalUsers } from '../users/file';
import type { Store } from '../../store/types';
import { callbackLocation, type AuthorizeRequest } from './authorize-request';
import { OAuthError } from './oauth-error';

export interface MobileSettings {
  readonly redirectUris: readonly string[];
  readonly accessTtlSeconds: number;
  readonly refreshTtlSeconds: number;
  /**
   * How long after a refresh the same refresh token may be presented again and get the same successor (a
   * response lost on the way, two requests refreshing at once); 0: every second use revokes the family.
   */
  readonly refreshGraceSeconds?: number;
  readonly sessionSecret: string;
  /**
   * Local users (KEYWARD_USERS_FILE): a local user's roles, claims and name are read from here at every
   * exchange and refresh, not kept from the sign-in, and a user no longer in it gets invalid_grant.
   */
  readonly localUsers?: LocalUsers | null;
}

interface Grant {
  sub: string;
  name: string | null;
  roles: string[];
  claims: Record<string, string>;
  /** Epoch ms of the original sign-in. */
  authTime: number;
  /** A local user's password version at sign-in (Session.passwordVersion); absent in older records. */
  pwv?: string | null;
}

interface CodeRecord extends Grant {
  challenge: string;
  redirectUri: string;
  /** The browser session that authorized the app: signing it out (or everywhere) voids the code. */
  sid?: string;
  /** The client_id of the authorize request (absent in records written before client ids were read). */
  clientId?: string | null;
}

/** What `mrt-used:<hash>` holds once a refresh token is spent: when, and its successor's hash and DPoP key. */
interface SpentRecord {
  at: number;
  next: string;
  jkt: string | null;
  /** How many times the grace issued the successor again (each one changes the mark: see `presentedAgain`). */
  regrants?: number;
}

/** `presentedAgain`'s answer when the mark changed under it: the refresh reads the token's state again. */
const READ_AGAIN = Symbol('read again');
/** How many times a refresh reads its token's state again before giving up (503): a race that loses each time. */
const MAX_READS = 3;

interface RefreshRecord extends Grant {
  family: string;
  /** When the family began (the code exchange, ms): it ends `refreshTtlSeconds` after, however often refreshed. */
  startedAt?: number;
  clientId?: string | null;
  /** The JWK thumbprint of the DPoP key the family is bound to (RFC 9449 §5); absent: not bound. */
  jkt?: string | null;
}

/** A token request for the authorization_code grant (RFC 6749 §4.1.3). */
export interface CodeExchange {
  readonly code: string;
  readonly verifier: string;
  readonly redirectUri: string;
  readonly clientId: string | null;
  /** The DPoP proof sent with the request, checked (its key's thumbprint: the tokens are bound to it): `ProofKey`. */
  readonly proofKey?: ProofKey;
}

/**
 * Checks the request's DPoP proof and gives its key's thumbprint (null without one). Called once the code or
 * refresh token is known to be held: recording a proof's jti is a store write, not for anyone to cause at will.
 */
export type ProofKey = () => Promise<string | null>;

export interface TokenResponse {
  access_token: string;
  /** `DPoP` for tokens bound to a key (RFC 9449 §5), else `Bearer`. */
  token_type: 'Bearer' | 'DPoP';
  expires_in: number;
  refresh_token: string;
}

const CODE_TTL_MS = 60_000;
/** How long a spent code is known by the family it made (a replay later than this is merely unknown). */
const SPENT_CODE_TTL_MS = 10 * 60_000;
/**
 * Bounds, per user, on what requests can make Keyward store (each code is kept a minute; each new sign-in and
 * each refresh keeps a refresh record for the refresh lifetime): far above what apps do (a sign-in now and then;
 * a refresh per access token lifetime, at least 60 s, per device), far below what a loop of requests piles up.
 */
export const MOBILE_CAPS = {
  codes: { max: 120, windowMs: CODE_TTL_MS },
  signIns: { max: 100, windowMs: 3_600_000 },
  refreshes: { max: 600, windowMs: 3_600_000 },
} as const;
const VERIFIER = /^[A-Za-z0-9._~-]{43,128}$/;

const NO_SUCH_USER = 'The user this grant was issued to no longer exists, or their password has changed since.';
const FAMILY_ENDED = 'This app sign-in is older than KEYWARD_MOBILE_REFRESH_TTL: sign in again in the app.';
const TOO_LONG = "This user's roles and claims do not fit in an app access token: map fewer of them into the session.";

const hash = (value: string) => createHash('sha256').update(value, 'utf8').digest('base64url');
const opaque = (prefix: string) => `${prefix}_${randomBytes(32).toString('base64url')}`;

/**
 * The token exchange for native apps (RFC 8252 pattern): the app opens the system browser on
 * /api/session/mobile/authorize with a PKCE challenge; a signed-in user is sent back to the app's registered
 * redirect URI with a one-time code; the app trades code + verifier at /api/session/token for a short-lived
 * sealed session token (iron-session) and a rotating refresh token.
 *
 * Refresh tokens rotate on every use and belong to a family (one per sign-in). Using a refresh token twice
 * means it was copied: the whole family is revoked at once, including its live access tokens, whose session
 * id is the family id (OAuth 2.0 Security BCP, RFC 9700 §4.14.2). Within `refreshGraceSeconds` of its use, and
 * while its successor is unused, the same token presented again (the app never got the answer, or two of its
 * requests refreshed at once) gets that same successor and a new access token: nothing new to copy or keep.
 */
export class MobileTokens {
  constructor(
    private readonly store: Store,
    private readonly revocations: SessionRevocations,
    private readonly settings: MobileSettings,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
    /** Where each new token family is listed for the admin pages (lib/core/session/session-index.ts). */
    private readonly sessionIndex: SessionIndex | null = null,
    /** Links each family to the OIDC provider session of its browser sign-in, for back-channel logout. */
    private readonly providerSessions: ProviderSessions | null = null,
  ) {}

  get enabled(): boolean {
    return this.settings.redirectUris.length > 0;
  }

  /**
   * Whether `uri` is one of KEYWARD_MOBILE_REDIRECT_URIS: compared exactly as text (RFC 8252 §8.4 / RFC 9700
   * §4.1.3), except that a loopback IP URI
   * (`http://127.0.0.1` or `http://[::1]`) matches with any port, as RFC 8252 §7.3 asks (a desktop app listens on
   * whatever port is free when it signs in). `localhost` is compared exactly (§8.3: not recommended).
   */
  isRegisteredRedirect(uri: string): boolean {
    if (this.settings.redirectUris.includes(uri)) return true;
    const asked = withoutLoopbackPort(uri);
    return asked !== null && this.settings.redirectUris.some((registered) => withoutLoopbackPort(registered) === asked);
  }

  /**
   * Issues the one-time code for the signed-in user and returns where to send the browser: the app's
   * redirect URI with `code`, `state` and `iss` (the issuer, null when the public origin is unknown).
   */
  async issueCode(session: Session, request: AuthorizeRequest, issuer: string | null): Promise<string> {
    await capPerWindow(this.store, `mcode:issued:${session.userId}`, {
      ...MOBILE_CAPS.codes,
      message: 'Too many app sign-ins were started in the last minute; try again shortly.',
    });
    const code = opaque('kwc');
    const record: CodeRecord = {
      ...grantOf(session),
      challenge: request.challenge,
      redirectUri: request.redirectUri,
      sid: session.sessionId,
      clientId: request.clientId,
    };
    await guard(() => this.store.set(`mcode:${hash(code)}`, JSON.stringify(record), CODE_TTL_MS));
    return callbackLocation(request, { code }, issuer);
  }

  async exchangeCode(exchange: CodeExchange): Promise<TokenResponse> {
    const codeHash = hash(exchange.code);
    const key = `mcode:${codeHash}`;
    const spentKey = `mcode-spent:${codeHash}`;
    const raw = await guard(() => this.store.get(key));
    if (!raw) {
      await this.codeUsedAgain(spentKey);
      throw new KeywardError('invalid_grant');
    }
    // Before the code is spent: a refused proof leaves it usable.
    const jkt = (await exchange.proofKey?.()) ?? null;
    const record = JSON.parse(raw) as CodeRecord;
    // Before the code is spent: a sign-in refused for the bound can be retried with the same code.
    await capPerWindow(this.store, `mfam:started:${record.sub}`, {
      ...MOBILE_CAPS.signIns,
      message: 'Too many app sign-ins for this account in the last hour; try again later.',
    });
    // One use only: whoever claims the code first owns it. The claim names the token family it is about to make
    // (kept for a while after the code's own minute), so another use, at the same moment or later, finds it.
    const family = opaque('kwf');
    if (!(await guard(() => this.store.setIfAbsent(spentKey, family, SPENT_CODE_TTL_MS)))) {
      await this.codeUsedAgain(spentKey);
      throw new KeywardError('invalid_grant');
    }
    if (!(await guard(() => this.store.delete(key)))) throw new KeywardError('invalid_grant');
    const { verifier } = exchange;
    if (record.redirectUri !== exchange.redirectUri || !VERIFIER.test(verifier) || hash(verifier) !== record.challenge) {
      throw new KeywardError('invalid_grant');
    }
    // RFC 6749 §4.1.3: the code was issued to this client_id (both absent counts as the same client).
    if ((record.clientId ?? null) !== exchange.clientId) {
      throw new KeywardError('invalid_grant', { message: 'The code was issued to another client_id.' });
    }
    // A code from a browser session that was signed out since, or from before "sign out everywhere", is void.
    if (await this.revocations.isRevoked({ sessionId: record.sid ?? '', userId: record.sub, authTime: record.authTime })) {
      throw new KeywardError('invalid_grant');
    }
    const grant = this.current(grantOnly(record));
    if (!grant) {
      this.logger.info({ userId: record.sub }, 'mobile code refused: local user no longer exists or has a new password');
      throw new KeywardError('invalid_grant', { message: NO_SUCH_USER });
    }
    const startedAt = this.now();
    const tokens = await this.issue(grant, family, exchange.clientId, jkt, startedAt);
    // A new family is a new sign-in of the app (a refresh continues one): listed once, by its id's hash.
    await this.sessionIndex?.record(grant.sub, {
      sessionId: family,
      kind: 'mobile',
      expiresAt: startedAt + this.settings.refreshTtlSeconds * 1000,
      authTime: grant.authTime,
      roles: grant.roles,
      passwordVersion: grant.pwv ?? null,
    });
    // A back-channel logout of the provider session the browser sign-in came from ends this family too.
    if (record.sid) await this.providerSessions?.recordDerived(record.sid, { sessionId: family, userId: grant.sub });
    return tokens;
  }

  /**
   * The refresh_token grant. `clientId`, when the request names one, must be the one the tokens were issued
   * to; a mismatch is refused before the token is spent (a confused client must not lose its sign-in).
   * `proofKey` checks the DPoP proof sent with the request (ProofKey): a bound family needs a proof with its own
   * key (RFC 9449 §5), refused before the token is spent too (whoever copied the token cannot burn it); an
   * unbound family refreshed with a proof is bound from then on.
   */
  async refresh(refreshToken: string, clientId: string | null = null, proofKey?: ProofKey): Promise<TokenResponse> {
    const tokenHash = hash(refreshToken);
    const raw = await guard(() => this.store.get(`mrt:${tokenHash}`));
    if (!raw) throw new KeywardError('invalid_grant');
    const jkt = (await proofKey?.()) ?? null;
    const record = JSON.parse(raw) as RefreshRecord;
    const familySession = { sessionId: record.family, userId: record.sub, authTime: record.authTime };
    if (await this.revocations.isRevoked(familySession)) throw new KeywardError('invalid_grant');
    // A record from before families had an end began no later than the sign-in it carries.
    const startedAt = record.startedAt ?? record.authTime;
    if (this.familyEnd(startedAt) <= this.now()) throw new KeywardError('invalid_grant', { message: FAMILY_ENDED });
    if (clientId !== null && clientId !== (record.clientId ?? null)) {
      throw new KeywardError('invalid_grant', { message: 'The refresh token was issued to another client_id.' });
    }
    const boundTo = record.jkt ?? null;
    if (boundTo !== null && boundTo !== jkt) {
      this.logger.info({ userId: record.sub, family: record.family }, 'refresh of a DPoP-bound token family refused: no proof with its key');
      throw new OAuthError(
        'invalid_dpop_proof',
        jkt === null
          ? 'This refresh token is bound to a DPoP key: send a DPoP proof signed with that key.'
          : 'The DPoP proof is signed with another key than the one this refresh token is bound to.',
      );
    }
    const successor = this.successorOf(refreshToken);
    const successorJkt = boundTo ?? jkt;
    const usedKey = `mrt-used:${tokenHash}`;
    let counted = false;
    for (let read = 0; read < MAX_READS; read++) {
      // A token used before is a copy, whatever the bound below says: its family ends now (unless within the grace).
      const spent = await guard(() => this.store.get(usedKey));
      if (spent !== null) {
        const again = await this.presentedAgain(usedKey, successor, record, spent, successorJkt, startedAt, counted);
        if (again !== READ_AGAIN) return again;
        continue;
      }
      // Counted before the token is spent (a refused refresh leaves it usable), once however often it is read.
      if (!counted) await this.countRefresh(record);
      counted = true;
      const mark = JSON.stringify({ at: this.now(), next: hash(successor), jkt: successorJkt } satisfies SpentRecord);
      // Lost to another use at the same moment: its mark is read at the top, as any use before this one.
      if (!(await guard(() => this.store.setIfAbsent(usedKey, mark, this.settings.refreshTtlSeconds * 1000)))) continue;
      try {
        return await this.rotate(successor, record, successorJkt, startedAt);
      } catch (error) {
        // Nothing was issued (the roles grew too long for a token, the store failed): the mark is taken back, so the
        // app's retry is a refresh, not a reuse that ends its sign-in. Only if nobody was given the successor in
        // the meantime: a grace re-issue changes the mark first, and then it stays (see presentedAgain).
        await this.store.deleteIfEquals(usedKey, mark).catch(() => false);
        throw error;
      }
    }
    throw new KeywardError('service_unavailable', { message: 'The refresh token changed state while it was read; try again.' });
  }

  /** One refresh of the user's app sign-ins, against MOBILE_CAPS.refreshes (429 past it). */
  private countRefresh(record: RefreshRecord): Promise<void> {
    return capPerWindow(this.store, `mrt:refreshes:${record.sub}`, {
      ...MOBILE_CAPS.refreshes,
      message: "This account's app sign-ins were refreshed too often in the last hour; try again later.",
    });
  }

  /** Issues a new access token and `successor`, the refresh token that follows the one presented (`successorOf`). */
  private async rotate(successor: string, record: RefreshRecord, jkt: string | null, startedAt: number): Promise<TokenResponse> {
    const grant = this.current(grantOnly(record));
    if (!grant) {
      // The user is gone: end the family everywhere, its live access token included, not just this refresh.
      await this.revokeFamily(record.family);
      this.logger.info({ userId: record.sub, family: record.family }, 'mobile refresh refused: local user no longer exists or has a new password; token family revoked');
      throw new KeywardError('invalid_grant', { message: NO_SUCH_USER });
    }
    return this.issue(grant, record.family, record.clientId ?? null, jkt, startedAt, successor);
  }

  /**
   * A spent refresh token presented again (`spent`: its SpentRecord; `successor`: what follows it). Within the
   * grace after its use, with the DPoP key its successor is bound to (or none, as then), and while that successor
   * is unused and the one its first use gave (the session secret may have changed since), it gets the same
   * successor again, with a new access token: an app whose answer was lost, or that refreshed twice at once,
   * keeps its sign-in. Anything else is a copy, and the family is revoked. `counted`: this refresh was counted
   * already (it lost the race to mark the token used), so it is not counted twice.
   */
  private async presentedAgain(
    usedKey: string,
    successor: string,
    record: RefreshRecord,
    spent: string,
    jkt: string | null,
    startedAt: number,
    counted: boolean,
  ): Promise<TokenResponse | typeof READ_AGAIN> {
    const graceMs = (this.settings.refreshGraceSeconds ?? 0) * 1000;
    const mark = parseSpent(spent); // null for a record written before the grace ('1'): a copy
    if (
      graceMs > 0 &&
      mark !== null &&
      this.now() - mark.at <= graceMs &&
      mark.next === hash(successor) &&
      mark.jkt === jkt &&
      (await guard(() => this.store.get(`mrt-used:${hash(successor)}`))) === null
    ) {
      // Claimed first, by changing the mark: a first use whose issue failed can then no longer take the mark back
      // (its compare-and-delete misses) and make the token unspent while this hands out its successor. A mark
      // that changed meanwhile (taken back, or claimed by another re-issue) is read again.
      const claimed = JSON.stringify({ ...mark, regrants: (mark.regrants ?? 0) + 1 } satisfies SpentRecord);
      if (!(await guard(() => this.store.replaceIfEquals(usedKey, spent, claimed)))) return READ_AGAIN;
      // Counted as any refresh: each one makes an access token.
      if (!counted) await this.countRefresh(record);
      this.logger.info({ userId: record.sub, family: record.family }, 'refresh token presented again within the grace: its successor issued again');
      try {
        return await this.rotate(successor, record, jkt, startedAt);
      } catch (error) {
        // Nothing issued here either: the claim is given back, as it was.
        await this.store.replaceIfEquals(usedKey, claimed, spent).catch(() => false);
        throw error;
      }
    }
    return this.reused(record);
  }

  /**
   * The refresh token that follows `refreshToken`: derived from it with the session secret (HMAC-SHA256), so
   * that a second use within the grace gets the same one without Keyward keeping any refresh token, even sealed.
   * Only whoever holds `refreshToken` and the secret can tell it; the store keeps its hash, like every other's.
   */
  private successorOf(refreshToken: string): string {
    const mac = createHmac('sha256', this.settings.sessionSecret).update(`keyward.mobile.refresh-successor:${refreshToken}`, 'utf8');
    return `kwr_${mac.digest('base64url')}`;
  }

  /**
   * A family ends `refreshTtlSeconds` after it began, not after its last refresh: what an OIDC user's tokens say
   * (roles from the provider at sign-in) is never older than that, and "sign out everywhere" marks, kept as long
   * as a family can live, outlast every family they revoke.
   */
  private familyEnd(startedAt: number): number {
    return startedAt + this.settings.refreshTtlSeconds * 1000;
  }

  /**
   * Token revocation (RFC 7009 §2.1): ends the sign-in (token family) a refresh token or an access token belongs
   * to, on every instance, as POST /api/session/logout does with the access token: the family's refresh token
   * and its live access tokens both stop working. Either kind is looked for, whatever `token_type_hint` said. A
   * token Keyward does not know, or one already expired or revoked, leaves nothing to do (§2.2: the caller is
   * told success all the same). A refresh or access token issued to another client_id than the one named is refused
   * and stays valid (§2.1: the server verifies the token was issued to the client asking).
   */
  async revoke(token: string, clientId: string | null): Promise<void> {
    const raw = await guard(() => this.store.get(`mrt:${hash(token)}`));
    if (raw !== null) {
      const record = JSON.parse(raw) as RefreshRecord;
      if (clientId !== null && clientId !== (record.clientId ?? null)) {
        throw new OAuthError('unauthorized_client', 'The token was issued to another client_id.');
      }
      await this.revokeFamily(record.family);
      return;
    }
    const claims = await unsealBearer(token, { 1: this.settings.sessionSecret });
    // Only a mobile access token names a family: anything else ends nothing. Nor does one past its `exp` (its seal
    // still opens for a minute: iron-session's clock skew), as the README says of an expired access token.
    if (typeof claims?.sid !== 'string' || !claims.sid.startsWith('kwf_')) return;
    if (typeof claims.exp !== 'number' || claims.exp * 1000 <= this.now()) return;
    // RFC 7009 §2.1, as for the refresh token. A token sealed before access tokens carried `client_id` (undefined)
    // is not checked: it expires within its access lifetime.
    if (clientId !== null && claims.client_id !== undefined && clientId !== claims.client_id) {
      throw new OAuthError('unauthorized_client', 'The token was issued to another client_id.');
    }
    await this.revokeFamily(claims.sid);
  }

  /** A refresh token presented a second time: it was copied, so its whole family is revoked. */
  private async reused(record: RefreshRecord): Promise<never> {
    await this.revokeFamily(record.family);
    this.logger.warn({ userId: record.sub, family: record.family }, 'refresh token reused: token family revoked');
    throw new KeywardError('invalid_grant');
  }

  /**
   * A code presented after another use claimed it was copied: the sign-in that use made (or is making: the
   * revocation holds for tokens issued after it too) ends, as RFC 9700 §4.2.4 / OAuth 2.1 §4.1.3 ask of a server
   * that sees a code used twice.
   */
  private async codeUsedAgain(spentKey: string): Promise<void> {
    const family = await guard(() => this.store.get(spentKey));
    if (family === null) return;
    await this.revokeFamily(family);
    this.logger.warn({ family }, 'authorization code used again: the token family it made is revoked');
  }

  private revokeFamily(family: string): Promise<void> {
    return this.revocations.revokeSession(family);
  }

  /**
   * The grant as it stands now, or null when its user no longer exists. A local user's roles, claims and
   * name come from the users file (as this instance loaded it) every time, so a changed role reaches the app
   * at its next refresh (not after 30 days), and a removed user's refresh fails, as does one whose password
   * changed since the sign-in the grant came from (currentLocalUser). Other users keep what
   * their identity provider said at sign-in: there is nothing to re-read until they sign in again.
   */
  private current(grant: Grant): Grant | null {
    const users = this.settings.localUsers;
    if (!users) return localUsername(grant.sub) === null ? grant : null;
    const now = currentLocalUser({ ...grant, userId: grant.sub, passwordVersion: grant.pwv ?? null }, users);
    return now && { ...grant, name: now.name, roles: [...now.roles], claims: { ...now.claims } };
  }

  /**
   * Tokens for the grant; with `jkt`, both bound to that DPoP key (the access token's `cnf.jkt`, RFC 9449 §6).
   * The refresh token is `refreshToken` when a refresh names its successor, else a new random one.
   */
  private async issue(
    grant: Grant,
    family: string,
    clientId: string | null,
    jkt: string | null,
    startedAt: number,
    refreshToken = opaque('kwr'),
  ): Promise<TokenResponse> {
    const now = this.now();
    // Never past the family's end (the caller checked it is ahead): "sign out everywhere" marks are kept as long
    // as a family lives, so an access token that outlived its family could outlive the mark that ends it.
    const lifetime = Math.max(1, Math.min(this.settings.accessTtlSeconds, Math.floor((this.familyEnd(startedAt) - now) / 1000)));
    const claims: BearerClaims = {
      typ: 'keyward.session',
      sub: grant.sub,
      name: grant.name,
      roles: grant.roles,
      sid: family,
      ...authTimeClaims(grant.authTime),
      claims: grant.claims,
      ...(grant.pwv ? { pwv: grant.pwv } : {}),
      client_id: clientId,
      exp: Math.floor(now / 1000) + lifetime,
      ...(jkt === null ? {} : { cnf: { jkt } }),
    };
    const accessToken = await sealData(claims, {
      password: { 1: this.settings.sessionSecret },
      ttl: lifetime,
    });
    if (accessToken.length > MAX_ACCESS_TOKEN_LENGTH) {
      // Nothing would accept it (Authorization header, revocation): refused rather than handed out broken.
      this.logger.warn(
        { userId: grant.sub, roles: grant.roles.length, claims: Object.keys(grant.claims).length, length: accessToken.length },
        'mobile token refused: the user\'s roles and claims make the access token too long',
      );
      throw new KeywardError('invalid_grant', { message: TOO_LONG });
    }
    const record: RefreshRecord = { ...grant, family, clientId, startedAt, ...(jkt === null ? {} : { jkt }) };
    // Each rotated refresh token lives to the family's end (at least 1 s: the caller checked it is ahead).
    await guard(() =>
      this.store.set(`mrt:${hash(refreshToken)}`, JSON.stringify(record), Math.max(this.familyEnd(startedAt) - now, 1_000)),
    );
    return {
      access_token: accessToken,
      token_type: jkt === null ? 'Bearer' : 'DPoP',
      expires_in: lifetime,
      refresh_token: refreshToken,
    };
  }
}

function grantOf(session: Session): Grant {
  return {
    sub: session.userId,
    name: session.name,
    roles: [...session.roles],
    claims: { ...session.claims },
    authTime: session.authTime || Date.now(),
    pwv: session.passwordVersion ?? null,
  };
}

function parseSpent(value: string): SpentRecord | null {
  try {
    const mark = JSON.parse(value) as Partial<SpentRecord> | null;
    return typeof mark?.at === 'number' && typeof mark.next === 'string' && (mark.jkt === null || typeof mark.jkt === 'string')
      ? { at: mark.at, next: mark.next, jkt: mark.jkt, ...(typeof mark.regrants === 'number' ? { regrants: mark.regrants } : {}) }
      : null;
  } catch {
    return null;
  }
}

function grantOnly(record: Grant): Grant {
  return { sub: record.sub, name: record.name, roles: record.roles, claims: record.claims, authTime: record.authTime, pwv: record.pwv ?? null };
}

/** An http URI on a loopback IP, as text, with the port (1–65535, as written: no leading zero) taken out. */
const LOOPBACK_IP_URI = /^http:\/\/(127\.0\.0\.1|\[::1\])(?::([1-9]\d{0,4}))?([/?][^#]*)?$/;

/** The URI without its port when it is an http URI on a loopback IP (RFC 8252 §7.3), else null. */
function withoutLoopbackPort(uri: string): string | null {
  const match = LOOPBACK_IP_URI.exec(uri);
  if (!match || (match[2] !== undefined && Number(match[2]) > 65_535)) return null;
  return `http://${match[1]}${match[3] ?? ''}`;
}
