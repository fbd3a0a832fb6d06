import { readKeywardError } from './errors';

/** How the client reaches Keyward and says who is calling. */
export interface KeywardClientOptions {
  /**
   * Where Keyward is served, without the trailing "/": '' (the default) is the page's own origin, which browsers
   * resolve; React Native, Node and other origins give an absolute URL (`https://app.example.com`, or with Next's
   * `basePath`: `https://app.example.com/base`). Calls go to `<baseUrl>/api/proxy/<upstream>/<path>`.
   */
  readonly baseUrl?: string;
  /** The `fetch` to use (default: the global one, looked up at each call). */
  readonly fetch?: typeof fetch;
  /**
   * Headers sent with every call, or a function returning them (called per call): to Keyward only, as the token
   * is (a Node script's `cookie` among them). A call to any other URL throws a TypeError before a request is made.
   */
  readonly headers?: HeadersInit | (() => HeadersInit | Promise<HeadersInit>);
  /**
   * For cookie-less clients (mobile apps, scripts): returns the access token from the token exchange (README
   * "Mobile apps and other cookie-less clients"). It is sent as `Authorization: Bearer …` with no cookie
   * (`credentials: 'omit'`) and no CSRF header, which bearer calls do not need. Absent: the session cookie.
   */
  readonly token?: () => string | null | undefined | Promise<string | null | undefined>;
}

/** `fetch`'s signature: what `keywardFetch` is. */
export type KeywardFetch = (input: RequestInfo | URL, init?: RequestInit) => Promise<Response>;

/** The header a cookie session must send on every proxied call (README "HTTP contract", CSRF). */
export const CSRF_HEADER = 'x-keyward-csrf';

/**
 * `fetch` for Keyward's endpoints: adds the CSRF header and same-origin credentials (or the bearer token), and
 * throws Keyward's own JSON errors as `KeywardError`. Any other answer, upstream errors included, is returned as
 * the `Response` it is. A path (`/api/proxy/…`) is taken under `baseUrl`.
 */
export function createKeywardFetch(options: KeywardClientOptions = {}): KeywardFetch {
  const base = (options.baseUrl ?? '').replace(/\/+$/, '');
  return async (given, init = {}) => {
    // A path is Keyward's; `//host/…` is not a path but a URL of another host.
    const input = typeof given === 'string' && given.startsWith('/') && !given.startsWith('//') ? `${base}${given}` : given;
    if ((options.token || options.headers) && !toKeyward(input, base)) {
      const what = options.token ? 'bearer token' : 'headers';
      throw new TypeError(`This fetch sends its ${what} to Keyward only: give a path ("/api/proxy/…") or a URL under baseUrl.`);
    }
    const headers = new Headers(input instanceof Request ? input.headers : undefined);
    const extra = typeof options.headers === 'function' ? await options.headers() : options.headers;
    new Headers(extra).forEach((value, name) => headers.set(name, value));
    new Headers(init.headers).forEach((value, name) => headers.set(name, value));
    const token = options.token ? await options.token() : undefined;
    if (token) headers.set('authorization', `Bearer ${token}`);
    else if (!options.token) headers.set(CSRF_HEADER, '1');
    // Looked up per call, unbound: `window.fetch` called as a method of another object throws "Illegal invocation".
    const send = options.fetch ?? globalThis.fetch;
    const response = await send(input, { ...init, headers, credentials: options.token ? 'omit' : 'same-origin' });
    const error = await readKeywardError(response);
    if (error) {
      await response.body?.cancel().catch(() => {});
      throw error;
    }
    return response;
  };
}

/**
 * Whether a call goes to Keyward: under baseUrl (its origin, and its path when it has one: an app under Next's
 * `basePath` may share its host with others), or with no baseUrl, to the page's origin. The token, and the
 * `headers` option (a script's cookie), are never sent anywhere else, whatever URL or Request the fetch is handed
 * (code that follows a link from a response, say). Dot segments, `%2e` ones too, are resolved before the path is compared, as the request will resolve them.
 */
function toKeyward(input: RequestInfo | URL, base: string): boolean {
  const text = input instanceof Request ? input.url : String(input);
  const home = base || (globalThis as { location?: { origin?: string } }).location?.origin;
  if (!home) return !/^[A-Za-z][A-Za-z0-9+.-]*:|^\/\//.test(text); // no origin to compare: paths only
  try {
    const target = new URL(text, home);
    const root = new URL(home);
    const prefix = root.pathname.replace(/\/+$/, '');
    return target.origin === root.origin && (prefix === '' || target.pathname === prefix || target.pathname.startsWith(`${prefix}/`));
  } catch {
    return false;
  }
}

/** `createKeywardFetch()` for the page's own origin and session cookie. */
export const keywardFetch: KeywardFetch = createKeywardFetch();
