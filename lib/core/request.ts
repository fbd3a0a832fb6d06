/**
 * What the core reads of a client's request: its method, URL, headers, body stream and abort signal. A WHATWG
 * `Request` (what route handlers receive) is one; the fast lane (lib/node/request.ts) builds just these five
 * fields over Node's `IncomingMessage`, because constructing a `Request` (validating and copying the headers
 * again, following the signal) cost it more than every other part of the translation (issue 12, measured with
 * `npm run bench -- --profile`).
 */
export type CoreRequest = Pick<Request, 'method' | 'url' | 'headers' | 'body' | 'signal'>;
