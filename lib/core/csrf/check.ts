import { KeywardError } from '../errors';
import type { Session } from '../session/session';

export const CSRF_HEADER = 'x-keyward-csrf';
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * Cookie sessions only (a bearer token is not sent by the browser on its own, so it cannot be forged
 * cross-site). A custom header cannot be sent cross-origin without a CORS preflight, which Keyward never
 * grants; state-changing methods must also come from an allowed Origin (OWASP CSRF cheat sheet, "Verifying
 * origin with standard headers"), and Fetch Metadata must not say cross-site or same-site.
 */
export function checkCsrf(request: Request, session: Session, allowedOrigins: ReadonlySet<string> | null): void {
  if (session.via !== 'cookie') return;
  if (request.headers.get(CSRF_HEADER) !== '1') throw new KeywardError('csrf_failed');
  const fetchSite = request.headers.get('sec-fetch-site');
  if (fetchSite === 'cross-site' || fetchSite === 'same-site') throw new KeywardError('csrf_failed');
  if (SAFE_METHODS.has(request.method)) return;
  const origin = request.headers.get('origin');
  if (origin === null || origin === 'null') throw new KeywardError('csrf_failed');
  const allowed = allowedOrigins ?? new Set([new URL(request.url).origin]);
  if (!allowed.has(origin)) throw new KeywardError('csrf_failed');
}
