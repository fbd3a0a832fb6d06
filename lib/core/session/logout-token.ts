import 'server-only';
import { createLocalJWKSet, createRemoteJWKSet, errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import * as oauth from 'oauth4webapi';
import { isLoopbackHost } from '../config/schema';
import { isAcceptedAccountId } from './provider-sessions';

/**
 * Verifies OIDC Back-Channel Logout tokens (OpenID Connect Back-Channel Logout 1.0 §2.4 and §2.6) from the
 * sign-in provider configured by KEYWARD_OIDC_*, with jose:
 *  - a JWS (an encrypted token is refused: Keyward registers no ID token encryption), signed with an
 *    asymmetric algorithm the provider advertises, never `none` or a MAC, by a key of the provider's JWKS
 *    (its `jwks_uri`, discovered from the issuer's metadata, which is held for METADATA_TTL_MS; the keys are
 *    held for KEYS_MAX_AGE_MS, and fetched again when a token names a key they lack: ProviderKeys). Metadata
 *    and keys past their age are fetched again behind the post that finds them so, which is verified with what
 *    is held (keys only until KEYS_GRACE_MS, then the post waits): a provider slow to answer does not hold up a
 *    logout, and one that cannot answer does not make logouts fail while its keys are recent;
 *  - header `typ` is `logout+jwt` when present (RFC 8417 §2.3 explicit typing; absent is accepted for
 *    providers that predate it);
 *  - `iss` is the issuer, `aud` names Keyward's client id, `iat` is present and at most MAX_AGE_SECONDS old
 *    (and not in the future, SKEW_SECONDS allowed either way), `exp` is present (REQUIRED in
 *    Back-Channel Logout 1.0 final) and in the future;
 *  - `jti` is present (the replay check keeps it until the token is too old anyway: §2.6 step 8);
 *  - `events` is an object whose http://schemas.openid.net/event/backchannel-logout member is an object;
 *  - `sub` or `sid` or both; and no `nonce` (§2.4: what keeps a logout token from passing as an ID token).
 * Any failure is an InvalidLogoutToken whose reason is for the server log only; the endpoint answers 400
 * without it. A provider that cannot be reached (discovery, JWKS) is a LogoutProviderUnavailable instead.
 */

export const BACKCHANNEL_LOGOUT_EVENT = 'http://schemas.openid.net/event/backchannel-logout';
/** Tokens older than this (by `iat`) are refused: providers send them at once (oidc-provider: exp = iat + 120 s). */
export const MAX_AGE_SECONDS = 300;
/** Clock difference allowed between the provider and Keyward, either way. */
export const SKEW_SECONDS = 60;
/** A logout token is a few hundred bytes; anything near this is not one. */
const MAX_TOKEN_CHARS = 8 * 1024;
/** The longest `sub`, `sid` or `jti` taken (OIDC Core §2 caps `sub` at 255 ASCII characters). */
const MAX_ID_CHARS = 255;
/** Asymmetric JWS algorithms (RFC 7518 §3.1, RFC 8037): the provider signs, only its public keys verify. */
const ASYMMETRIC = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'];
const DISCOVERY_TIMEOUT_MS = 5_000;
/**
 * The provider's metadata (its JWKS location and signing algorithms) is fetched again after this long, so a
 * provider that moves its keys or changes algorithms is followed without a restart. The refetch runs behind
 * the post that starts it (which is verified with the metadata held); one that fails keeps the metadata held
 * (logouts go on being verified) and is tried again after DISCOVERY_RETRY_MS.
 */
export const METADATA_TTL_MS = 24 * 60 * 60_000;
/**
 * After a failed discovery, posts are answered 503 from memory for this long instead of each fetching the
 * provider's metadata again: the endpoint is open to anyone, and a stream of posts must not become a stream of
 * requests to a provider that is down.
 */
export const DISCOVERY_RETRY_MS = 10_000;
/** The provider's keys are fetched again, behind the post that finds them older than this (jose's default). */
export const KEYS_MAX_AGE_MS = 10 * 60_000;
/**
 * Keys last fetched longer ago than this are not trusted without asking again: the post waits for the refetch,
 * and fails (503) if the provider cannot answer. This bounds how long a key the provider removed (a rotation,
 * a compromise) can still verify a logout token, however the refetches behind the posts went.
 */
export const KEYS_GRACE_MS = 2 * KEYS_MAX_AGE_MS;

/** What a valid logout token says: who to sign out. `sub` or `sid` is set, or both. */
export interface LogoutClaims {
  readonly issuer: string;
  readonly jti: string;
  readonly sub: string | null;
  readonly sid: string | null;
  /** Seconds since the epoch. */
  readonly iat: number;
}

/** The token is not a valid logout token. `reason` goes to the server log, never into a response. */
export class InvalidLogoutToken extends Error {
  override readonly name = 'InvalidLogoutToken';
  constructor(readonly reason: string) {
    super('invalid logout token');
  }
}

/** The provider's metadata or keys could not be fetched: nothing can be verified right now. */
export class LogoutProviderUnavailable extends Error {
  override readonly name = 'LogoutProviderUnavailable';
  constructor(cause: unknown) {
    super('the OpenID provider could not be reached', { cause });
  }
}

interface Provider {
  readonly issuer: string;
  readonly keys: ProviderKeys;
  readonly algorithms: string[];
}

export class LogoutTokenVerifier {
  /** The metadata last fetched, and when (this.now()). */
  private held: { readonly provider: Provider; readonly at: number } | undefined;
  /** The discovery under way, shared by the posts that wait for it. */
  private fetching: Promise<Provider> | undefined;
  /** When the last discovery failed (this.now()), and why. */
  private failed: { readonly at: number; readonly error: LogoutProviderUnavailable } | undefined;

  constructor(
    private readonly issuer: string,
    private readonly clientId: string,
    private readonly now: () => number = Date.now,
  ) {}

  async verify(token: string): Promise<LogoutClaims> {
    // A compact JWS is three base64url parts; a JWE (five) or anything else is refused before any fetch.
    if (token.length > MAX_TOKEN_CHARS || !/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token)) {
      throw new InvalidLogoutToken('not a compact JWS');
    }
    const provider = await this.discover();
    let payload: JWTPayload;
    let typ: string | undefined;
    try {
      const result = await jwtVerify(token, provider.keys.getKey, {
        issuer: provider.issuer,
        audience: this.clientId,
        algorithms: provider.algorithms,
        // exp is REQUIRED in Back-Channel Logout 1.0 (final); jose checks it when present.
        requiredClaims: ['iat', 'exp', 'jti', 'events'],
        maxTokenAge: MAX_AGE_SECONDS,
        clockTolerance: SKEW_SECONDS,
        currentDate: new Date(this.now()),
      });
      payload = result.payload;
      typ = result.protectedHeader.typ;
    } catch (error) {
      if (error instanceof LogoutProviderUnavailable) throw error;
      throw new InvalidLogoutToken(error instanceof errors.JOSEError ? `${error.code}: ${error.message}` : 'unreadable token');
    }
    return logoutClaims(payload, typ, provider.issuer);
  }

  /** Settles once no fetch of the provider's metadata or keys is under way (tests: refetches run behind the posts). */
  async idle(): Promise<void> {
    await this.fetching?.catch(() => {});
    await this.held?.provider.keys.idle();
  }

  /**
   * The issuer's metadata: fetched once, then again after METADATA_TTL_MS, behind the post that finds it old
   * (that post uses the metadata held). After a failure, nothing is fetched for DISCOVERY_RETRY_MS: the
   * metadata held (if any) is used, else the failure is answered again.
   */
  private discover(): Promise<Provider> {
    const now = this.now();
    const { held, failed } = this;
    const backingOff = failed !== undefined && now - failed.at < DISCOVERY_RETRY_MS;
    if (held && (now - held.at < METADATA_TTL_MS || backingOff)) return Promise.resolve(held.provider);
    if (backingOff) return Promise.reject(failed.error);
    this.fetching ??= this.fetchProvider()
      .then(
        (provider) => {
          this.held = { provider, at: this.now() };
          this.failed = undefined;
          return provider;
        },
        (error: unknown) => {
          const unavailable = error instanceof LogoutProviderUnavailable ? error : new LogoutProviderUnavailable(error);
          this.failed = { at: this.now(), error: unavailable };
          if (this.held) return this.held.provider;
          throw unavailable;
        },
      )
      .finally(() => {
        this.fetching = undefined;
      });
    // A refetch never rejects while metadata is held (it answers with that): nothing here goes unhandled.
    return held ? Promise.resolve(held.provider) : this.fetching;
  }

  private async fetchProvider(): Promise<Provider> {
    const issuerUrl = new URL(this.issuer);
    // Plain http only on loopback (development and tests), as for the refresh grant (lib/core/credential/oauth.ts).
    const insecure = issuerUrl.protocol === 'http:' && isLoopbackHost(issuerUrl.hostname);
    const options = {
      ...(insecure ? { [oauth.allowInsecureRequests]: true } : {}),
      signal: AbortSignal.timeout(DISCOVERY_TIMEOUT_MS),
    };
    const response = await oauth.discoveryRequest(issuerUrl, { ...options, algorithm: 'oidc' });
    // Checks that the metadata's `issuer` is the configured one (OIDC Discovery §4.3).
    const metadata = await oauth.processDiscoveryResponse(issuerUrl, response);
    if (!metadata.jwks_uri) throw new Error('the issuer metadata has no jwks_uri');
    const jwksUrl = new URL(metadata.jwks_uri);
    if (jwksUrl.protocol !== 'https:' && !(jwksUrl.protocol === 'http:' && isLoopbackHost(jwksUrl.hostname))) {
      throw new Error('the issuer metadata names a jwks_uri that is not https');
    }
    const advertised = metadata.id_token_signing_alg_values_supported;
    // Logout tokens are signed as ID tokens are (§2.6 step 3): the algorithms the provider uses for those.
    const algorithms = advertised ? ASYMMETRIC.filter((alg) => advertised.includes(alg)) : ['RS256'];
    if (algorithms.length === 0) throw new Error('the issuer signs ID tokens with no asymmetric algorithm');
    return { issuer: metadata.issuer, keys: await ProviderKeys.fetch(jwksUrl, this.now), algorithms };
  }
}

/** The checks jose does not make (§2.4, §2.6 steps 5–7, RFC 8417 §2.3), on a verified payload. */
export function logoutClaims(payload: JWTPayload, typ: string | undefined, issuer: string): LogoutClaims {
  // `logout+jwt` (§2.4's explicit typing), or the generic `JWT` some providers put on every token they sign: the
  // `events` claim and the absence of `nonce` below keep an ID token from passing. Any other type (an access
  // token's `at+jwt`) is another kind of token.
  if (typ !== undefined && !/^(application\/)?(logout\+jwt|jwt)$/i.test(typ)) throw new InvalidLogoutToken('typ is not logout+jwt');
  if ('nonce' in payload) throw new InvalidLogoutToken('nonce present');
  const events = payload.events;
  if (!isObject(events) || !isObject((events as Record<string, unknown>)[BACKCHANNEL_LOGOUT_EVENT])) {
    throw new InvalidLogoutToken('events has no back-channel logout event');
  }
  const jti = identifier(payload.jti, 'jti');
  const sub = payload.sub === undefined ? null : identifier(payload.sub, 'sub');
  // As at sign-in (isAcceptedAccountId): no session was ever made for another `sub`, and the audit trail, the CLI
  // and the pages show it, where a control character or a bidi override would act on a terminal or hide text.
  if (sub !== null && !isAcceptedAccountId('oidc', sub)) throw new InvalidLogoutToken('sub is not printable ASCII');
  const sid = payload.sid === undefined ? null : identifier(payload.sid, 'sid');
  if (sub === null && sid === null) throw new InvalidLogoutToken('neither sub nor sid');
  return { issuer, jti, sub, sid, iat: payload.iat! };
}

function identifier(value: unknown, name: string): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_ID_CHARS) {
    throw new InvalidLogoutToken(`${name} is not a string of 1 to ${MAX_ID_CHARS} characters`);
  }
  return value;
}

function isObject(value: unknown): boolean {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

type RemoteKeys = ReturnType<typeof createRemoteJWKSet>;

/** Waits for a refetch of the keys; none allowed yet (one was tried in the last 10 s), or a failed one: 503. */
async function settled(refreshing: Promise<void> | null): Promise<void> {
  if (!refreshing) throw new LogoutProviderUnavailable(new Error('the keys were asked for less than 10 s ago'));
  try {
    await refreshing;
  } catch (failure) {
    throw new LogoutProviderUnavailable(failure);
  }
}

/**
 * The provider's signing keys (its JWKS), fetched with its metadata and then held. jose's createRemoteJWKSet
 * fetches them (timeout, checks of the answer), but its own per-token lookup is not used: once its cache is
 * 10 minutes old it makes the post wait for a refetch, and fails the post if the provider cannot answer,
 * although the keys held are still the provider's. Here, keys older than KEYS_MAX_AGE_MS are fetched again
 * behind the post, which is verified with the keys held, until they are KEYS_GRACE_MS old: then the post waits
 * for the refetch (and fails if the provider cannot answer), so a removed key is not trusted for longer. A token
 * naming a key the held set lacks (a provider that rotated its keys) waits for a refetch. Refetches go out at
 * most once per DISCOVERY_RETRY_MS, whatever posts arrive, since the endpoint is open to anyone; a post that
 * needs one sooner gets 503, which the provider may retry (a 400 it would not).
 */
class ProviderKeys {
  private local: JWTVerifyGetKey;
  private fetchedAt: number;
  private triedAt: number;
  private pending: Promise<void> | undefined;

  private constructor(
    private readonly remote: RemoteKeys,
    private readonly now: () => number,
  ) {
    this.local = createLocalJWKSet(remote.jwks()!);
    this.fetchedAt = this.triedAt = now();
  }

  static async fetch(url: URL, now: () => number): Promise<ProviderKeys> {
    const remote = createRemoteJWKSet(url, { timeoutDuration: DISCOVERY_TIMEOUT_MS });
    await remote.reload();
    return new ProviderKeys(remote, now);
  }

  /** jwtVerify's key lookup. A provider that cannot be reached when a key must be fetched: LogoutProviderUnavailable. */
  readonly getKey: JWTVerifyGetKey = async (header, token) => {
    const age = this.now() - this.fetchedAt;
    if (age >= KEYS_GRACE_MS) await settled(this.refresh());
    else if (age >= KEYS_MAX_AGE_MS) this.refresh()?.catch(() => {});
    try {
      return await this.local(header, token);
    } catch (error) {
      // No key for this token: the held keys may be older than the provider's. Anything else is the token's.
      if (!(error instanceof errors.JWKSNoMatchingKey)) throw error;
      await settled(this.refresh());
      return this.local(header, token);
    }
  };

  /** Settles once no refetch is under way. */
  async idle(): Promise<void> {
    await this.pending?.catch(() => {});
  }

  /** A refetch (or the one under way); null when one was tried less than DISCOVERY_RETRY_MS ago. */
  private refresh(): Promise<void> | null {
    if (this.pending) return this.pending;
    const now = this.now();
    if (now - this.triedAt < DISCOVERY_RETRY_MS) return null;
    this.triedAt = now;
    this.pending = this.remote
      .reload()
      .then(() => {
        this.local = createLocalJWKSet(this.remote.jwks()!);
        this.fetchedAt = this.now();
      })
      .finally(() => {
        this.pending = undefined;
      });
    return this.pending;
  }
}
