import { KeywardError } from '../errors';
import type { OriginPolicy } from '../origin/public-origin';
import type { Session } from '../session/session';
import type { CoreRequest } from '../request';

export const CSRF_HEADER = 'x-keyward-csrf';
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** Which check refused the call, in fixed text (never the header values): in the 403's message and the log. */
export const CSRF_FAILURES = {
  header: 'The X-Keyward-CSRF: 1 header is missing.',
  fetchSite: 'Sec-Fetch-Site says the request comes from another site.',
  originMissing: 'State-changing calls need an Origin header naming this site.',
  originRefused: 'The Origin header names a site that is not allowed to call.',
} as const;

function refuse(reason: keyof typeof CSRF_FAILURES): never {
  throw new KeywardError('csrf_failed', { message: `The request failed the cross-site request forgery check: ${CSRF_FAILURES[reason]}` });
}

/**
 * Cookie sessions only (a bearer token is not sent by the browser on its own, so it cannot be forged
 * cross-site). A custom header cannot be sent cross-origin without a CORS preflight, which Keyward never
 * grants; state-changing methods must also come from an allowed Origin (OWASP CSRF cheat sheet, "Verifying
 * origin with standard headers"), and Fetch Metadata must not say cross-site or same-site. The allowed
 * origins are the public origin (AUTH_URL, or the trusted Host) and KEYWARD_ALLOWED_ORIGINS, never
 * `request.url`'s internal localhost.
 */
export function checkCsrf(request: CoreRequest, session: Session, origins: OriginPolicy): void {
  if (session.via !== 'cookie') return;
  if (request.headers.get(CSRF_HEADER) !== '1') refuse('header');
  const fetchSite = request.headers.get('sec-fetch-site');
  if (fetchSite === 'cross-site' || fetchSite === 'same-site') refuse('fetchSite');
  if (SAFE_METHODS.has(request.method)) return;
  const origin = request.headers.get('origin');
  if (origin === null || origin === 'null') refuse('originMissing');
  if (!origins.allows(origin, request)) refuse('originRefused');
}
