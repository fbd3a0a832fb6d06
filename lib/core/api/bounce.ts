import { isLocalPath } from '../connect/connections';

/**
 * A page of this site that sends the browser on to `path` (a meta refresh, with a link if refresh is off). A
 * navigation back from another site (an OAuth provider's redirect) is cross-site and carries no `SameSite=Strict`
 * cookie; the one this page starts is same-origin, so the session cookie goes with it.
 */
export function bounceResponse(path: string, headers: Headers = new Headers()): Response {
  headers.set('content-type', 'text/html; charset=utf-8');
  headers.set('content-security-policy', "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
  headers.set('x-content-type-options', 'nosniff');
  headers.set('cache-control', 'private, no-store');
  headers.set('referrer-policy', 'no-referrer');
  // Only ever a path on this site (see isLocalPath); anything else goes home.
  const href = escapeHtml(isLocalPath(path) ? path : '/');
  const page = `<!doctype html><html><head><meta charset="utf-8"><meta name="referrer" content="no-referrer"><meta http-equiv="refresh" content="0;url=${href}"><title>Keyward</title></head><body><p><a href="${href}">Continue</a></p></body></html>`;
  return new Response(page, { status: 200, headers });
}

function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
