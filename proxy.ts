import { NextResponse, type NextRequest } from 'next/server';

/**
 * A Content-Security-Policy with a fresh nonce for every page (Next.js's guide "Content Security Policy"): Next.js
 * puts the nonce on the scripts it renders, so only those run, with what they load ('strict-dynamic'). A script
 * injected into a page (an XSS: markup, an inline event handler) does not run, so it cannot call /api/proxy as the
 * signed-in user. This is not where auth is checked: every route handler checks the session itself. API routes
 * answer JSON and run no scripts: left out, as are Next.js's static files, its image endpoint, the icon and the
 * router's prefetches (flight data, not HTML); anything else that answers HTML, a 404 for `/favicon.ico` too, gets
 * the nonce. What is left out gets next.config.ts's policy, whose `script-src 'none'` runs no script at all.
 */
export function proxy(request: NextRequest) {
  const nonce = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  // React's development build evaluates code (call stacks, fast refresh); production never does.
  const evaluate = process.env.NODE_ENV === 'development' ? " 'unsafe-eval'" : '';
  const policy = `script-src 'nonce-${nonce}' 'strict-dynamic'${evaluate}; object-src 'none'; base-uri 'none'; frame-ancestors 'none'`;
  // On the request, for Next.js to read the nonce from; on the response, for the browser.
  const headers = new Headers(request.headers);
  headers.set('content-security-policy', policy);
  const response = NextResponse.next({ request: { headers } });
  response.headers.set('content-security-policy', policy);
  return response;
}

export const config = {
  matcher: [
    {
      // Anchored: `/_next/imagex`, `/icon.svg/x` and the like are pages (a 404), and get the nonce.
      source: '/((?!api/|_next/static/|_next/image$|icon\\.svg$).*)',
      missing: [{ type: 'header', key: 'next-router-prefetch' }],
    },
  ],
};
