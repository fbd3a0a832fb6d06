import 'server-only';
import { AsyncLocalStorage } from 'node:async_hooks';
import { KeywardError } from '@/lib/core/errors';

/**
 * What happened inside one Auth.js request that Auth.js's own answer hides, for the route wrapper
 * (lib/next/api-routes.ts) to answer better:
 * - a store failure. Auth.js catches whatever its callbacks and events throw: with the store down, a session read
 *   would answer "no session" and delete the session cookie, and a sign-out would end the cookie while the
 *   server-side revocation was never written. Keyward's callbacks report it here before rethrowing it, and the
 *   wrapper answers 503 `store_unavailable` instead of whatever Auth.js made of it;
 * - an `InvalidCheck` (lib/next/auth.ts's logger notes it): a sign-in callback without the cookies its flow set.
 *   Auth.js sends the browser to `?error=Configuration`, "not configured correctly on the server", which blames
 *   the wrong party; the wrapper names it SIGN_IN_EXPIRED instead;
 * - an identity provider that could not be reached (its discovery, token or userinfo request failed on the network):
 *   Auth.js says `Configuration` there too; the wrapper names it SIGN_IN_UNREACHABLE.
 */
interface AuthRequestSlot {
  error: KeywardError | null;
  invalidCheck: boolean;
  providerUnreachable: boolean;
}
const slots = new AsyncLocalStorage<AuthRequestSlot>();

export interface AuthRequestOutcome {
  readonly response: Response;
  /** The store failure its callbacks hit, if any. */
  readonly failure: KeywardError | null;
  /** Auth.js refused the sign-in callback for its check cookies (state, PKCE, nonce). */
  readonly invalidCheck: boolean;
  /** A request to the identity provider failed on the network. */
  readonly providerUnreachable: boolean;
}

/** Runs one Auth.js request, noting what its callbacks and logger report. */
export async function trackAuthRequest(handle: () => Promise<Response>): Promise<AuthRequestOutcome> {
  const slot: AuthRequestSlot = { error: null, invalidCheck: false, providerUnreachable: false };
  const response = await slots.run(slot, handle);
  return { response, failure: slot.error, invalidCheck: slot.invalidCheck, providerUnreachable: slot.providerUnreachable };
}

/** For `.catch()` where an Auth.js callback touches the store: notes a store failure, then rethrows. */
export function storeFailed(error: unknown): never {
  const slot = slots.getStore();
  if (slot && error instanceof KeywardError && error.code === 'store_unavailable') slot.error ??= error;
  throw error;
}

/** Auth.js's logger saw an `InvalidCheck` for the request under way. */
export function noteInvalidCheck(): void {
  const slot = slots.getStore();
  if (slot) slot.invalidCheck = true;
}

/** Auth.js's logger saw a request to the identity provider fail on the network, for the request under way. */
export function noteProviderUnreachable(): void {
  const slot = slots.getStore();
  if (slot) slot.providerUnreachable = true;
}
