import 'server-only';
import { AsyncLocalStorage } from 'node:async_hooks';
import { KeywardError } from '@/lib/core/errors';

/**
 * Auth.js catches whatever its callbacks and events throw: with the store down, a session read would
 * answer "no session" and delete the session cookie, and a sign-out would end the cookie while the
 * server-side revocation was never written. Keyward's callbacks report a store failure here before
 * rethrowing it, and the route wrapper (lib/next/api-routes.ts) answers 503 `store_unavailable` instead of
 * whatever Auth.js made of it.
 */
const failures = new AsyncLocalStorage<{ error: KeywardError | null }>();

/** Runs one Auth.js request; `failure` is the store failure its callbacks hit, if any. */
export async function trackStoreFailures(handle: () => Promise<Response>): Promise<{ response: Response; failure: KeywardError | null }> {
  const slot: { error: KeywardError | null } = { error: null };
  const response = await failures.run(slot, handle);
  return { response, failure: slot.error };
}

/** For `.catch()` where an Auth.js callback touches the store: notes a store failure, then rethrows. */
export function storeFailed(error: unknown): never {
  const slot = failures.getStore();
  if (slot && error instanceof KeywardError && error.code === 'store_unavailable') slot.error ??= error;
  throw error;
}
