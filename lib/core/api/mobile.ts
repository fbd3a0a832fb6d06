import { KeywardError } from '../errors';
import type { Runtime } from '../runtime';
import { apiHandler, json, readJsonObject } from './guard';

/**
 * GET /api/session/mobile/authorize?redirect_uri&code_challenge&code_challenge_method=S256[&state]
 * Opened by the app in the system browser. Not signed in: off to the sign-in page and back here.
 */
export function handleMobileAuthorize(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (!runtime.mobile.enabled) throw new KeywardError('route_not_found');
    if (request.method !== 'GET') throw new KeywardError('method_not_allowed', { headers: { allow: 'GET' } });
    // A page on another site must not be able to start this for the user (Fetch Metadata).
    const site = request.headers.get('sec-fetch-site');
    if (site === 'cross-site' || site === 'same-site') throw new KeywardError('csrf_failed');
    const url = new URL(request.url);
    const session = await runtime.verifySession(request);
    if (!session || session.via !== 'cookie') {
      const back = `${url.pathname}${url.search}`;
      return redirect(`/api/auth/signin?callbackUrl=${encodeURIComponent(back)}`);
    }
    return redirect(await runtime.mobile.issueCode(session, url.searchParams));
  });
}

/**
 * POST /api/session/token (form-encoded or JSON):
 *   grant_type=authorization_code&code&code_verifier&redirect_uri  → first tokens
 *   grant_type=refresh_token&refresh_token                          → rotated tokens
 * Answers {access_token, token_type: "Bearer", expires_in, refresh_token} with Cache-Control: no-store.
 */
export function handleMobileToken(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (!runtime.mobile.enabled) throw new KeywardError('route_not_found');
    if (request.method !== 'POST') throw new KeywardError('method_not_allowed', { headers: { allow: 'POST' } });
    if (new URL(request.url).search) {
      throw new KeywardError('bad_request', { message: 'Send parameters in the body, never in the query string.' });
    }
    const params = await readParams(request);
    const text = (name: string) => {
      const value = params[name];
      if (typeof value !== 'string' || value.length === 0 || value.length > 4096) {
        throw new KeywardError('bad_request', { message: `${name} is required.` });
      }
      return value;
    };
    switch (params.grant_type) {
      case 'authorization_code':
        return json(await runtime.mobile.exchangeCode(text('code'), text('code_verifier'), text('redirect_uri')));
      case 'refresh_token':
        return json(await runtime.mobile.refresh(text('refresh_token')));
      default:
        throw new KeywardError('bad_request', { message: 'grant_type must be authorization_code or refresh_token.' });
    }
  });
}

async function readParams(request: Request): Promise<Record<string, unknown>> {
  const type = request.headers.get('content-type') ?? '';
  if (/^application\/x-www-form-urlencoded\b/i.test(type)) {
    const text = await request.text();
    if (text.length > 16 * 1024) throw new KeywardError('payload_too_large');
    return Object.fromEntries(new URLSearchParams(text));
  }
  return readJsonObject(request);
}

function redirect(location: string): Response {
  return new Response(null, { status: 302, headers: { location, 'cache-control': 'no-store', 'referrer-policy': 'no-referrer' } });
}
