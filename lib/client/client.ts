import { UpstreamError } from './errors';
import { createKeywardFetch, type KeywardClientOptions, type KeywardFetch } from './fetch';
import { readEvents } from './sse';
import type { AnyApi, ApiOf, KeywardClient, LooseQuery, ParamValue, RestValue, ServerSentEvent } from './types';
import { buildCallUrl } from './url';

/**
 * `createKeywardClient<typeof upstreams>()`: `kw.<upstream>.<method>(path, { params, query, body })`, typed per
 * route (lib/client/types.ts) and checked by Keyward again on the server. What a call resolves with is the
 * answer's JSON (or text, or undefined for no content); what it throws is a `KeywardError` (Keyward refused or
 * failed the call), an `UpstreamError` (the upstream answered non-2xx), or what `fetch` throws (network, abort).
 */
export function createKeywardClient<U = AnyApi>(options: KeywardClientOptions = {}): KeywardClient<ApiOf<U>> {
  // The proxy's path; createKeywardFetch puts it under `baseUrl`.
  const base = '/api/proxy';
  const send = createKeywardFetch(options);
  const upstreams = new Map<string, RuntimeUpstreamClient>();
  // The ids are only known to the types, so each `kw.<id>` is made on first use. A Proxy over an object without
  // a prototype: `kw.constructor` is an upstream like any other, never Object's.
  return new Proxy(Object.create(null) as object, {
    get(_target, property) {
      // Not an upstream id (symbols, `toJSON`, `$$typeof`…), or `then`: a client returned from an async function
      // must not look like a promise.
      if (typeof property !== 'string' || !UPSTREAM_ID.test(property) || property === 'then') return undefined;
      let client = upstreams.get(property);
      if (!client) {
        client = upstreamClient(send, base, property);
        upstreams.set(property, client);
      }
      return client;
    },
  }) as KeywardClient<ApiOf<U>>;
}

/** lib/core/config/schema.ts's UPSTREAM_ID, copied: importing the schema would bring zod into browser bundles. */
const UPSTREAM_ID = /^[a-z0-9][a-z0-9_-]{0,62}$/;

interface RuntimeOptions {
  readonly params?: Readonly<Record<string, ParamValue | RestValue>>;
  readonly query?: LooseQuery;
  readonly body?: unknown;
  readonly headers?: HeadersInit;
  readonly signal?: AbortSignal | null;
}

type RuntimeCall<T> = (method: string, path: string, options?: RuntimeOptions) => T;

interface RuntimeUpstreamClient {
  readonly [method: string]: unknown;
  readonly request: RuntimeCall<Promise<unknown>>;
  readonly raw: RuntimeCall<Promise<Response>>;
  readonly sse: RuntimeCall<AsyncGenerator<ServerSentEvent, void, undefined>>;
}

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

function upstreamClient(send: KeywardFetch, base: string, upstream: string): RuntimeUpstreamClient {
  const call: RuntimeCall<Promise<Response>> = async (method, path, options = {}) => {
    const headers = new Headers(options.headers);
    const body = encodeBody(options.body, headers);
    // fetch upper-cases only some methods itself (Fetch Standard, "normalize a method"): PATCH stays as given.
    const init: RequestInit & { duplex?: 'half' } = { method: method.toUpperCase(), headers, body, signal: options.signal };
    // A streamed request body needs half duplex (Fetch Standard, RequestInit.duplex).
    if (typeof ReadableStream !== 'undefined' && body instanceof ReadableStream) init.duplex = 'half';
    const response = await send(buildCallUrl(base, upstream, path, options.params, options.query), init);
    if (!response.ok) throw await upstreamError(response);
    return response;
  };
  const request: RuntimeCall<Promise<unknown>> = async (method, path, options) => readAnswer(await call(method, path, options), method);
  const client: Record<string, unknown> = {
    request,
    raw: call,
    sse: async function* (method: string, path: string, options: RuntimeOptions = {}) {
      const headers = new Headers(options.headers);
      if (!headers.has('accept')) headers.set('accept', 'text/event-stream');
      yield* readEvents(await call(method, path, { ...options, headers }));
    },
  };
  for (const method of METHODS) client[method.toLowerCase()] = (path: string, options?: RuntimeOptions) => request(method, path, options);
  return client as RuntimeUpstreamClient;
}

/**
 * A body the browser knows how to send (FormData, URLSearchParams, Blob, bytes, a stream) goes as it is, with
 * fetch's own content type; anything else is JSON.
 */
function encodeBody(body: unknown, headers: Headers): BodyInit | undefined {
  if (body === undefined) return undefined;
  if (isBodyInit(body)) return body;
  if (!headers.has('content-type')) headers.set('content-type', 'application/json');
  return JSON.stringify(body);
}

function isBodyInit(value: unknown): value is BodyInit {
  return (
    value instanceof URLSearchParams ||
    value instanceof ArrayBuffer ||
    ArrayBuffer.isView(value) ||
    (typeof Blob !== 'undefined' && value instanceof Blob) ||
    (typeof FormData !== 'undefined' && value instanceof FormData) ||
    (typeof ReadableStream !== 'undefined' && value instanceof ReadableStream)
  );
}

const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\b/i;

/** The answer's JSON (`application/json`, `…+json`), its text otherwise, undefined when there is no content. */
async function readAnswer(response: Response, method: string): Promise<unknown> {
  if (method.toUpperCase() === 'HEAD' || response.status === 204 || response.status === 205) {
    await response.body?.cancel().catch(() => {});
    return undefined;
  }
  const text = await response.text();
  if (!JSON_TYPE.test(response.headers.get('content-type') ?? '')) return text;
  return text === '' ? undefined : (JSON.parse(text) as unknown);
}

async function upstreamError(response: Response): Promise<UpstreamError> {
  const text = await response.text().catch(() => '');
  let body: unknown = text;
  if (JSON_TYPE.test(response.headers.get('content-type') ?? '') && text !== '') {
    try {
      body = JSON.parse(text);
    } catch {
      // Kept as text: an error body that claims JSON and is not is still worth showing.
    }
  }
  return new UpstreamError({ status: response.status, body, headers: response.headers });
}
