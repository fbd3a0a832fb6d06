import 'server-only';
import { KeywardError } from '../errors';
import type { Session } from '../session/session';
import { credentialFor, type ResolvedCredential, type Upstream } from '../upstream/registry';
import type { KeyRings } from '../keys/rings';
import type { Connections } from '../connect/connections';
import type { OAuthTokenStore } from './oauth';
import type { UserKeys } from './user-keys';

export interface CredentialSources {
  readonly userKeys: UserKeys | null;
  readonly oauthTokens: OAuthTokenStore | null;
  /** Versions of service keys (rotation, revocation, expiry); absent: the key from auth.secret is used as is. */
  readonly keyRings?: KeyRings | null;
  /** Connected accounts (`{"oauth": "<provider>"}` naming a connection provider); absent: none configured. */
  readonly connections?: Connections | null;
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
    case 'user-key': {
      if (!sources.userKeys) throw new KeywardError('credential_unavailable');
      const key = await sources.userKeys.use(upstream.id, session.userId);
      if (key === null) throw new KeywardError('credential_missing');
      return credentialFor(upstream.auth, key, upstream.fingerprints);
    }
    case 'oauth': {
      // A connection provider: no (or an ended) connection is 403 connection_required, with the URL to connect.
      if (sources.connections?.has(plan.provider)) {
        return credentialFor(upstream.auth, await sources.connections.accessToken(plan.provider, session.userId), upstream.fingerprints);
      }
      if (!sources.oauthTokens) throw new KeywardError('credential_unavailable');
      return credentialFor(upstream.auth, await sources.oauthTokens.accessToken(plan.provider, session.userId), upstream.fingerprints);
    }
  }
}
