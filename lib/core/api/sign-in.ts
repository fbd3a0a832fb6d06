import { clientIp } from '../client/ip';
import { KeywardError, errorResponse, toKeywardError } from '../errors';
import type { Runtime } from '../runtime';

/**
 * Limits local sign-in attempts (OWASP ASVS 2.2.1) before Auth.js checks the password: per client IP, and
 * per username so that spreading guesses over many addresses does not help. Returns a 429 (or 503 if the
 * store is down: fail closed) to send instead, or null to let the attempt through.
 */
export async function limitSignIn(request: Request, runtime: Pick<Runtime, 'limits' | 'settings'>): Promise<Response | null> {
  if (request.method !== 'POST' || !new URL(request.url).pathname.endsWith('/callback/credentials')) return null;
  let username: string | null = null;
  try {
    const value = (await request.clone().formData()).get('username');
    username = typeof value === 'string' && value.length > 0 && value.length <= 64 ? value : null;
  } catch {
    // Not a form: Auth.js refuses it; the IP limit still counts the attempt.
  }
  const { settings } = runtime;
  try {
    await runtime.limits.checkSignIn(
      clientIp(request.headers, settings.KEYWARD_TRUSTED_PROXY_HOPS),
      username,
      settings.KEYWARD_SIGNIN_MAX_ATTEMPTS,
      settings.KEYWARD_SIGNIN_WINDOW_SECONDS,
    );
    return null;
  } catch (error) {
    const keywardError = toKeywardError(error);
    if (!(error instanceof KeywardError)) throw error;
    return errorResponse(keywardError, crypto.randomUUID());
  }
}
