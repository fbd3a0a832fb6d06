import 'server-only';
import { KeywardError } from '../errors';
import type { Session } from '../session/session';
import { credentialFor, type ResolvedCredential, type Upstream } from '../upstream/registry';
import type { OAuthTokenStore } from './oauth';
import type { UserKeys } from './user-keys';

export interface CredentialSources {
  readonly userKeys: UserKeys | null;
  readonly oauthTokens: OAuthTokenStore | null;
}

/**
 * Step 7: the credential for this user and this upstream. Service keys were resolved at start-up; per-user
 * secrets come from the store, only ever for the session's own user id.
 */
export async function resolveCredential(upstream: Upstream, session: Session, sources: CredentialSources): Promise<ResolvedCredential> {
  const plan = upstream.credential;
  switch (plan.source) {
    case 'static':
      return plan.credential;
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
      return credentialFor(upstream.auth, key);
    }
    case 'oauth': {
      if (!sources.oauthTokens) throw new KeywardError('credential_unavailable');
      return credentialFor(upstream.auth, await sources.oauthTokens.accessToken(plan.provider, session.userId));
    }
  }
}
