import { Writable } from 'node:stream';
import { expect } from 'vitest';
import { defineUpstream, type UpstreamDefinition } from '../../lib/core/config/load';
import { createLogger } from '../../lib/core/log/logger';
import { handleProxy, type ProxyDeps } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import type { DetectorInput } from '../../lib/core/detect/config';
import { freePort } from '../fixtures/app-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { bearerToken, sessionCookie, type TestIdentity } from '../fixtures/session';
import { leakForms } from '../fixtures/leak-forms';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

export { leakForms };

/** Origin the tests pretend Keyward is served from (also the allowed Origin for state-changing calls). */
export const APP_ORIGIN = 'https://app.keyward.test';
export const BASIC_USERNAME = 'svc-account';

export interface Harness {
  readonly runtime: Runtime;
  readonly upstream: TestUpstream;
  readonly env: Record<string, string>;
  /** Every secret in env (session secrets and upstream keys). */
  readonly secrets: readonly string[];
  readonly keys: { readonly header: string; readonly bearer: string; readonly basic: string; readonly query: string };
  /** Every log line the pipeline wrote. */
  readonly logs: string[];
  /** Cookie header for a signed-in user with roles ['user']. */
  readonly cookie: string;
  call(path: readonly string[], options?: CallOptions): Promise<CallResult>;
  close(): Promise<void>;
}

export interface CallOptions {
  upstream?: string;
  method?: string;
  headers?: Record<string, string>;
  body?: BodyInit | null;
  query?: string;
  /** false: no session at all; a string: this Cookie header instead of the default session. */
  cookie?: boolean | string;
  /** Adds X-Keyward-CSRF: 1 (default true). */
  csrf?: boolean;
  /** Adds Origin: APP_ORIGIN (default: for methods other than GET/HEAD/OPTIONS). */
  origin?: boolean;
  signal?: AbortSignal;
  /** Do not read the body (streaming tests read it themselves). */
  raw?: boolean;
  /** The pipeline's deps instead of the runtime (e.g. the runtime with decoys and a recording SecuritySignals). */
  deps?: ProxyDeps;
}

export interface CallResult {
  readonly response: Response;
  readonly text: string;
  json<T = unknown>(): T;
}

/** One upstream per auth type and a few special ones, all against the same recording test upstream. */
function definitions(origin: string, downOrigin: string): UpstreamDefinition[] {
  const routes = [
    { method: 'GET', path: '/items/:id', roles: ['user'] },
    { method: 'PUT', path: '/items/:id', roles: ['user'] },
    { method: 'POST', path: '/items', roles: ['user'], maxRequestBytes: 1024 },
    { method: 'GET', path: '/files/*' },
    { method: 'GET', path: '/admin/stats', roles: ['admin'] },
    { method: 'POST', path: '/upload', maxRequestBytes: 64 * 1024 * 1024 },
    { method: 'GET', path: '/download' },
    { method: 'GET', path: '/events' },
    { method: 'GET', path: '/redirect' },
    { method: 'GET', path: '/headers' },
  ] as const;
  const common = { baseUrl: `${origin}/v1/`, routes: routes.map((r) => ({ ...r, roles: 'roles' in r ? [...r.roles] : undefined })) };
  return [
    defineUpstream('echo', {
      ...common,
      auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
      responseHeaders: ['x-echo', 'x-upstream-note'],
      // Longer than vitest's test timeout: a stuck call fails the test instead of being ended by the deadline.
      timeoutMs: 120_000,
    }),
    defineUpstream('bearer', { ...common, auth: { type: 'bearer', secret: { env: 'BEARER_KEY' } } }),
    defineUpstream('basic', {
      ...common,
      auth: { type: 'basic', username: BASIC_USERNAME, secret: { env: 'BASIC_PASSWORD' } },
    }),
    defineUpstream('query', { ...common, auth: { type: 'query', name: 'api_key', secret: { env: 'QUERY_KEY' } } }),
    defineUpstream('slow', { ...common, auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } }, timeoutMs: 300 }),
    defineUpstream('down', {
      ...common,
      baseUrl: `${downOrigin}/v1/`,
      auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
      timeoutMs: 5_000,
    }),
  ];
}

export interface HarnessOptions {
  /** More upstreams, against the same test upstream (its origin given). */
  readonly upstreams?: (origin: string) => UpstreamDefinition[];
  /** More environment variables; every value is a secret (added to `secrets`). */
  readonly secretEnv?: Record<string, string>;
  /** The anomaly detector's rules (`createKeyward({ detector })`). */
  readonly detector?: DetectorInput;
}

export async function createHarness(options: HarnessOptions = {}): Promise<Harness> {
  const upstream = await startUpstream();
  // A port that was free a moment ago and has nothing listening on it: "upstream down".
  const downOrigin = `http://127.0.0.1:${await freePort()}`;
  const keys = {
    header: randomSecret('hdr'),
    bearer: randomSecret('brr'),
    basic: randomSecret('bas'),
    query: randomSecret('qry'),
  };
  const env: Record<string, string> = {
    ...testSessionSecrets(),
    ECHO_KEY: keys.header,
    BEARER_KEY: keys.bearer,
    BASIC_PASSWORD: keys.basic,
    QUERY_KEY: keys.query,
    KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
    // In-process store: test files run in parallel and must not share the default SQLite file.
    KEYWARD_STORE: 'memory',
    ...options.secretEnv,
  };
  const logs: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      logs.push(chunk.toString('utf8'));
      callback();
    },
  });
  const runtime = createRuntime({
    env,
    upstreams: [...definitions(upstream.origin, downOrigin), ...(options.upstreams?.(upstream.origin) ?? [])],
    logger: createLogger({ level: 'debug', destination }),
    detector: options.detector,
  });
  const cookie = await sessionCookie(env.AUTH_SECRET!, { roles: ['user'] });
  const secrets = [env.AUTH_SECRET!, env.KEYWARD_SESSION_SECRET!, keys.header, keys.bearer, keys.basic, keys.query, ...Object.values(options.secretEnv ?? {})];

  async function call(path: readonly string[], options: CallOptions = {}): Promise<CallResult> {
    const upstreamId = options.upstream ?? 'echo';
    const method = options.method ?? 'GET';
    const headers = new Headers(options.headers);
    if (options.cookie !== false) headers.set('cookie', typeof options.cookie === 'string' ? options.cookie : cookie);
    if (options.csrf !== false && !headers.has('x-keyward-csrf')) headers.set('x-keyward-csrf', '1');
    const stateChanging = !['GET', 'HEAD', 'OPTIONS'].includes(method);
    if ((options.origin ?? stateChanging) && !headers.has('origin')) headers.set('origin', APP_ORIGIN);
    const url = `${APP_ORIGIN}/api/proxy/${encodeURIComponent(upstreamId)}/${path.map(encodeURIComponent).join('/')}${options.query ?? ''}`;
    const init: RequestInit & { duplex?: 'half' } = { method, headers, signal: options.signal };
    if (options.body !== undefined && options.body !== null) {
      init.body = options.body;
      if (options.body instanceof ReadableStream) init.duplex = 'half';
    }
    const request = new Request(url, init);
    const response = await handleProxy(request, { upstream: upstreamId, path }, options.deps ?? runtime);
    const text = options.raw ? '' : await response.text();
    return { response, text, json: <T>() => JSON.parse(text) as T };
  }

  return {
    runtime,
    upstream,
    env,
    secrets,
    keys,
    logs,
    cookie,
    call,
    async close() {
      await upstream.close();
      const dispatcher = runtime.dispatcher as { close?: () => Promise<void> };
      await dispatcher.close?.().catch(() => {});
    },
  };
}

/** Asserts that no form of any secret appears in the response headers or the body text. */
export function expectNoSecrets(secrets: readonly string[], response: Response, text: string): void {
  const haystacks = [text];
  response.headers.forEach((value, name) => haystacks.push(`${name}: ${value}`));
  for (const secret of secrets) {
    for (const form of leakForms(secret)) {
      for (const haystack of haystacks) {
        expect(haystack.includes(form), `a secret leaked into the response`).toBe(false);
      }
    }
  }
}

/** Asserts the Keyward JSON error shape and that it carries no upstream URL, query, key or stack. */
export function expectKeywardError(result: CallResult, status: number, code: string, harness?: Harness): void {
  expect(result.response.status).toBe(status);
  expect(result.response.headers.get('content-type')).toMatch(/^application\/json/);
  expect(result.response.headers.get('cache-control')).toBe('private, no-store');
  const body = result.json<{ error: Record<string, unknown> }>();
  expect(Object.keys(body)).toEqual(['error']);
  expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'requestId']);
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.requestId).toMatch(/^[0-9a-f-]{36}$/);
  expect(result.text).not.toMatch(/127\.0\.0\.1|localhost|\/v1\/|\bat .+:\d+:\d+|Error:/);
  if (harness) {
    expect(result.text).not.toContain(harness.upstream.origin);
    expectNoSecrets(harness.secrets, result.response, result.text);
  }
}

/** Asserts nothing in the captured logs carries a secret. */
export function expectNoSecretsInLogs(harness: Harness): void {
  const all = harness.logs.join('');
  for (const secret of harness.secrets) {
    for (const form of leakForms(secret)) expect(all.includes(form), 'a secret leaked into the logs').toBe(false);
  }
}

export async function bearerFor(harness: Harness, identity: TestIdentity = {}, expiresIn = 3600): Promise<string> {
  return `Bearer ${await bearerToken(harness.env.KEYWARD_SESSION_SECRET!, identity, expiresIn)}`;
}

export async function cookieFor(harness: Harness, identity: TestIdentity = {}, maxAge = 3600): Promise<string> {
  return sessionCookie(harness.env.AUTH_SECRET!, identity, maxAge);
}
