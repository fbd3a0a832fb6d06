import 'server-only';
import { createHash, randomBytes } from 'node:crypto';
import { sealData } from 'iron-session';
import type { Logger } from 'pino';
import { KeywardError } from '../errors';
import type { SessionRevocations } from '../session/revocation';
import { guard } from '../store/guard';
import { authTimeClaims, type Session } from '../session/session';
import type { BearerClaims } from '../session/verify';
import type { LocalUsers } from '../users/file';
import type { Store } from '../../store/types';

export interface MobileSettings {
  readonly redirectUris: readonly string[];
  readonly accessTtlSeconds: number;
  readonly refreshTtlSeconds: number;
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
}

interface CodeRecord extends Grant {
  challenge: string;
  redirectUri: string;
  /** The browser session that authorized the app: signing it out (or everywhere) voids the code. */
  sid?: string;
}

interface RefreshRecord extends Grant {
  family: string;
}

export interface TokenResponse {
  access_token: string;
  token_type: 'Bearer';
  expires_in: number;
  refresh_token: string;
}

const CODE_TTL_MS = 60_000;
/** Local users' subjects (lib/next/auth.ts): `local:<username>`. */
const LOCAL_PREFIX = 'local:';
const VERIFIER = /^[A-Za-z0-9._~-]{43,128}$/;
const CHALLENGE = /^[A-Za-z0-9_-]{43}$/;

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
 * id is the family id (OAuth 2.0 Security BCP, RFC 9700 §4.14.2).
 */
export class MobileTokens {
  constructor(
    private readonly store: Store,
    private readonly revocations: SessionRevocations,
    private readonly settings: MobileSettings,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  get enabled(): boolean {
    return this.settings.redirectUris.length > 0;
  }

  /** Validates an authorize request and issues the one-time code for the signed-in user. */
  async issueCode(session: Session, params: URLSearchParams): Promise<string> {
    const redirectUri = params.get('redirect_uri') ?? '';
    if (!this.settings.redirectUris.includes(redirectUri)) {
      // Never redirect to an unregistered URI (an open redirector would leak the code).
      throw new KeywardError('bad_request', { message: 'redirect_uri is not registered for the mobile token exchange.' });
    }
    const challenge = params.get('code_challenge') ?? '';
    if (params.get('code_challenge_method') !== 'S256' || !CHALLENGE.test(challenge)) {
      throw new KeywardError('bad_request', { message: 'A PKCE code_challenge with code_challenge_method=S256 is required.' });
    }
    const state = params.get('state');
    const code = opaque('kwc');
    const record: CodeRecord = { ...grantOf(session), challenge, redirectUri, sid: session.sessionId };
    await guard(() => this.store.set(`mcode:${hash(code)}`, JSON.stringify(record), CODE_TTL_MS));
    const target = new URL(redirectUri);
    target.searchParams.set('code', code);
    if (state !== null) target.searchParams.set('state', state.slice(0, 512));
    return target.href;
  }

  async exchangeCode(code: string, verifier: string, redirectUri: string): Promise<TokenResponse> {
    const key = `mcode:${hash(code)}`;
    const raw = await guard(() => this.store.get(key));
    // One use only: whoever deletes the code first owns it.
    if (!raw || !(await guard(() => this.store.delete(key)))) throw new KeywardError('invalid_grant');
    const record = JSON.parse(raw) as CodeRecord;
    if (record.redirectUri !== redirectUri || !VERIFIER.test(verifier) || hash(verifier) !== record.challenge) {
      throw new KeywardError('invalid_grant');
    }
    // A code from a browser session that was signed out since, or from before "sign out everywhere", is void.
    if (await this.revocations.isRevoked({ sessionId: record.sid ?? '', userId: record.sub, authTime: record.authTime })) {
      throw new KeywardError('invalid_grant');
    }
    return this.issue(this.current(grantOnly(record)), opaque('kwf'));
  }

  async refresh(refreshToken: string): Promise<TokenResponse> {
    const tokenHash = hash(refreshToken);
    const raw = await guard(() => this.store.get(`mrt:${tokenHash}`));
    if (!raw) throw new KeywardError('invalid_grant');
    const record = JSON.parse(raw) as RefreshRecord;
    const familySession = { sessionId: record.family, userId: record.sub, authTime: record.authTime };
    if (await this.revocations.isRevoked(familySession)) throw new KeywardError('invalid_grant');
    const firstUse = await guard(() =>
      this.store.setIfAbsent(`mrt-used:${tokenHash}`, '1', this.settings.refreshTtlSeconds * 1000),
    );
    if (!firstUse) {
      await this.revocations.revokeSession(record.family, this.now() + this.settings.refreshTtlSeconds * 1000);
      this.logger.warn({ userId: record.sub, family: record.family }, 'refresh token reused: token family revoked');
      throw new KeywardError('invalid_grant');
    }
    return this.issue(this.current(grantOnly(record)), record.family);
  }

  /**
   * The grant as it stands now. A local user's roles, claims and name come from the users file every time,
   * so a changed role reaches the app at its next refresh (not after 30 days), and a removed user's
   * refresh fails. Other users keep what their identity provider said at sign-in (there is nothing to
   * re-read without them signing in again).
   */
  private current(grant: Grant): Grant {
    if (!grant.sub.startsWith(LOCAL_PREFIX)) return grant;
    const user = this.settings.localUsers?.find(grant.sub.slice(LOCAL_PREFIX.length)) ?? null;
    if (!user) {
      this.logger.info({ userId: grant.sub }, 'mobile grant refused: local user no longer exists');
      throw new KeywardError('invalid_grant');
    }
    return { ...grant, name: user.name, roles: [...user.roles], claims: { ...user.claims } };
  }

  private async issue(grant: Grant, family: string): Promise<TokenResponse> {
    const now = this.now();
    const claims: BearerClaims = {
      typ: 'keyward.session',
      sub: grant.sub,
      name: grant.name,
      roles: grant.roles,
      sid: family,
      ...authTimeClaims(grant.authTime),
      claims: grant.claims,
      exp: Math.floor(now / 1000) + this.settings.accessTtlSeconds,
    };
    const accessToken = await sealData(claims, {
      password: { 1: this.settings.sessionSecret },
      ttl: this.settings.accessTtlSeconds,
    });
    const refreshToken = opaque('kwr');
    const record: RefreshRecord = { ...grant, family };
    await guard(() =>
      this.store.set(`mrt:${hash(refreshToken)}`, JSON.stringify(record), this.settings.refreshTtlSeconds * 1000),
    );
    return { access_token: accessToken, token_type: 'Bearer', expires_in: this.settings.accessTtlSeconds, refresh_token: refreshToken };
  }
}

function grantOf(session: Session): Grant {
  return {
    sub: session.userId,
    name: session.name,
    roles: [...session.roles],
    claims: { ...session.claims },
    authTime: session.authTime || Date.now(),
  };
}

function grantOnly(record: Grant): Grant {
  return { sub: record.sub, name: record.name, roles: record.roles, claims: record.claims, authTime: record.authTime };
}
