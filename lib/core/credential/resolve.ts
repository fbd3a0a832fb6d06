import 'server-only';
import { KeywardError } from '../errors';
import { guard } from '../store/guard';
import type { Session } from '../session/session';
import { credentialFor, type ResolvedCredential, type Upstream } from '../upstream/registry';
import type { KeyRings } from '../keys/rings';
import type { Connections } from '../connect/connections';
import type { OAuthTokenStore } from './oauth';
import type { UserKeys } from './user-keys';
import type { Store } from '../../store/types';

export interface CredentialSources {
  readonly userKeys: UserKeys | null;
  readonly oauthTokens: OAuthTokenStore | null;
  /** Versions of service keys (rotation, revocation, expiry); absent: the key from auth.secret is used as is. */
  readonly keyRings?: KeyRings | null;
  /** Connected accounts (`{"oauth": "<provider>"}` naming a connection provider); absent: none configured. */
  readonly connections?: Connections | null;
}

/**
 * A per-user credential's store reads (a user's own key, an OAuth token), for the call's one store round trip
 * (lib/core/store/round.ts) to make with the session's revocation: the key of the sealed secret, the key of a
 * mark that refuses the call when present (the user's suspension, for a user's own key), and how the credential
 * follows from the values read. Null for credentials read from no store (service keys come from their ring,
 * claim-mapped keys from the session).
 */
export interface PerUserReads {
  readonly store: Store;
  readonly refuseIfPresent: string | null;
  readonly secret: string;
  /** The credential from the values read at `refuseIfPresent` (null when not read) and `secret`. */
  resolve(mark: string | null, secret: string | null): Promise<ResolvedCredential>;
}

/** The keys a per-user credential reads, in this order: its refusing mark (when it has one), then the secret. */
export function perUserKeys(reads: PerUserReads): string[] {
  return reads.refuseIfPresent === null ? [reads.secret] : [reads.refuseIfPresent, reads.secret];
}

/** The credential from `values`, which hold what was read for `perUserKeys` from index `at` on. */
export function perUserCredentialFrom(reads: PerUserReads, values: ReadonlyArray<string | null | undefined>, at: number): Promise<ResolvedCredential> {
  const mark = reads.refuseIfPresent === null ? null : (values[at] ?? null);
  return reads.resolve(mark, values[reads.refuseIfPresent === null ? at : at + 1] ?? null);
}

export function perUserReads(upstream: Upstream, session: Session, sources: CredentialSources): PerUserReads | null {
  const plan = upstream.credential;
  if (plan.source === 'user-key') {
    const { userKeys } = sources;
    if (!userKeys) return null;
    const { store, suspension, secret } = userKeys.reads(upstream.id, session.userId);
    return {
      store,
      refuseIfPresent: suspension,
      secret,
      resolve: async (mark, raw) => userKeyCredential(upstream, await userKeys.opened(upstream.id, session, mark, raw)),
    };
  }
  if (plan.source !== 'oauth') return null;
  const { connections, oauthTokens } = sources;
  const tokens = connections?.has(plan.provider) ? connections : oauthTokens;
  if (!tokens) return null;
  const { store, secret } = tokens.reads(plan.provider, session.userId);
  return {
    store,
    refuseIfPresent: null,
    secret,
    // A connection provider: no (or an ended) connection is 403 connection_required, with the URL to connect.
    resolve: async (_mark, sealed) =>
      credentialFor(upstream.auth, await tokens.accessToken(plan.provider, session, sealed), upstream.fingerprints, plan.username),
  };
}

/**
 * Step 7: the credential for this user and this upstream. Service keys come from their key ring (versions
 * read at start-up or sealed in the store, state shared through the store); per-user
 * secrets come from the store, only ever for the session's own user id.
 */
export async function resolveCredential(upstream: Upstream, session: Session, sources: CredentialSources): Promise<ResolvedCredential> {
  const plan = upstream.credential;
  switch (plan.source) {
    case 'static':
      return sources.keyRings ? sources.keyRings.credential(upstream) : plan.credential;
    case 'claim': {
      const value = session.claims[plan.claim];
      const credential = value === undefined ? undefined : plan.byValue.get(value);
      if (!credential) throw new KeywardError('credential_missing');
      return credential;
    }
    case 'user-key':
    case 'oauth': {
      // The same reads as the call's round trip makes (lib/core/store/round.ts), made here on their own.
      const reads = perUserReads(upstream, session, sources);
      if (!reads) throw new KeywardError('credential_unavailable');
      const values = await guard(() => reads.store.getMany(perUserKeys(reads)));
      return perUserCredentialFrom(reads, values, 0);
    }
  }
}

function userKeyCredential(upstream: Upstream, key: string | null): ResolvedCredential {
  if (key === null) throw new KeywardError('credential_missing');
  const plan = upstream.credential;
  return credentialFor(upstream.auth, key, upstream.fingerprints, plan.source === 'user-key' ? plan.username : undefined);
}
