/**
 * The Content-Security-Policy of every answer under /api/proxy: a document made of it runs in a sandbox (an opaque
 * origin: no script, no forms, no popups) and loads nothing, so an upstream answering HTML (an upload stored as
 * `text/html`, S3's `response-content-type`) cannot act as a page of the app, whose origin can call every route as
 * the signed-in user. `fetch` and `<img>` ignore a response's CSP: API clients see no difference. next.config.ts
 * writes the same policy for the route handlers' answers (its rule would otherwise replace the core's header).
 */
export const PROXIED_CONTENT_SECURITY_POLICY = "sandbox; default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** The path pattern next.config.ts gives that policy, and server.ts reads back for the fast lane. */
export const PROXIED_PATHS_SOURCE = '/api/proxy/:path*';
