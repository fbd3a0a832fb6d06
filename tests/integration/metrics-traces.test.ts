import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { trace } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handleMetrics } from '../../lib/core/api/metrics';
import { defineUpstream } from '../../lib/core/config/load';
import { keyFingerprints } from '../../lib/core/keys/fingerprint';
import { createLogger } from '../../lib/core/log/logger';
import { ProxyMetrics } from '../../lib/core/observe/metrics';
import { handleProxy, type ProxyEvent } from '../../lib/core/pipeline';
import { openai } from '../../lib/core/presets';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { createFastLane } from '../../lib/node/fast-lane';
import { freePort } from '../fixtures/app-server';
import { leakForms } from '../fixtures/leak-forms';
import { rawRequest } from '../fixtures/raw-http';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * Metrics and traces through the real pipeline against a node:http upstream: calls move the counters, the
 * histogram and the refusal counter; GET /api/metrics answers only with the token; every call is one span with
 * Keyward's attributes (GenAI ones for an OpenAI-preset call that reports usage), and neither the scrape nor any
 * span attribute carries a secret, a query or a raw path.
 */
const APP_ORIGIN = 'https://app.keyward.test';
const keys = { echo: randomSecret('hdr'), openai: randomSecret('oai'), gone: randomSecret('gone'), down: randomSecret('down') };
const metricsToken = randomSecret('metrics-token-'.padEnd(24, 'x'));
const sessionSecrets = testSessionSecrets();
const secrets = [...Object.values(keys), ...Object.values(sessionSecrets), metricsToken];
/** A marker sent in queries and unknown paths: it must never reach a metric or a span. */
const QUERY_MARKER = 'qmarker7c1e';
const PATH_MARKER = 'pmarker93ab';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
let upstream: TestUpstream;
let runtime: Runtime;
let metrics: ProxyMetrics;
let cookie: string;
const events: ProxyEvent[] = [];

beforeAll(async () => {
  trace.setGlobalTracerProvider(provider);
  upstream = await startUpstream();
  const downOrigin = `http://127.0.0.1:${await freePort()}`;
  metrics = new ProxyMetrics();
  runtime = createRuntime({
    env: {
      ...sessionSecrets,
      ECHO_KEY: keys.echo,
      OPENAI_API_KEY: keys.openai,
      GONE_KEY: keys.gone,
      DOWN_KEY: keys.down,
      KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN,
      KEYWARD_STORE: 'memory',
      KEYWARD_METRICS_TOKEN: metricsToken,
    },
    upstreams: [
      defineUpstream('echo', {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
        routes: [
          { method: 'GET', path: '/items/:id' },
          { method: 'GET', path: '/limited', rateLimits: [{ by: 'user', limit: 1, windowSeconds: 3600 }] },
        ],
      }),
      openai({ baseUrl: `${upstream.origin}/openai/v1/`, models: ['gpt-test'], maxOutputTokens: 500 }),
      // Its only key version gets revoked (below): Keyward has no credential to send, its own 503.
      defineUpstream('gone', {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'GONE_KEY' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
      // Nothing listens there: the upstream's failure, 502.
      defineUpstream('down', {
        baseUrl: `${downOrigin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'DOWN_KEY' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
    ],
    metrics,
    logger: createLogger({ level: 'silent', destination: new Writable({ write: (_c, _e, cb) => cb() }) }),
  });
  const onComplete = runtime.onComplete;
  (runtime as { onComplete?: (event: ProxyEvent) => void }).onComplete = (event) => {
    onComplete?.(event);
    events.push(event);
  };
  cookie = await sessionCookie(sessionSecrets.AUTH_SECRET, { sub: 'local:ada', roles: ['user'] });
});

afterAll(async () => {
  await upstream.close();
  await (runtime.dispatcher as { close?: () => Promise<void> }).close?.();
  await runtime.store.close();
  trace.disable();
  await provider.shutdown();
});

beforeEach(() => {
  upstream.reset();
  exporter.reset();
});

async function call(upstreamId: string, path: string, init: { body?: unknown } = {}): Promise<{ status: number; text: string }> {
  const method = init.body === undefined ? 'GET' : 'POST';
  const headers = new Headers({ cookie, 'x-keyward-csrf': '1', origin: APP_ORIGIN });
  if (init.body !== undefined) headers.set('content-type', 'application/json');
  const url = new URL(`${APP_ORIGIN}/api/proxy/${upstreamId}${path}`);
  const request = new Request(url, { method, headers, body: init.body === undefined ? undefined : JSON.stringify(init.body) });
  const response = await handleProxy(request, { upstream: upstreamId, path: url.pathname.split('/').slice(4).map(decodeURIComponent) }, runtime);
  return { status: response.status, text: await response.text() };
}

async function scrape(authorization?: string): Promise<Response> {
  const headers = authorization ? { authorization } : undefined;
  return handleMetrics(new Request(`${APP_ORIGIN}/api/metrics`, { headers }), runtime);
}

/** The value of one sample line of the exposition (0 when absent). */
function sample(text: string, name: string, labels: Record<string, string>): number {
  const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (wanted.every((pair) => line.includes(pair))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

function expectNoSecretOrQuery(haystack: string): void {
  for (const secret of secrets) for (const form of leakForms(secret)) expect(haystack.includes(form), 'a secret in metrics or spans').toBe(false);
  expect(haystack).not.toContain(QUERY_MARKER);
  expect(haystack).not.toContain(PATH_MARKER);
  expect(haystack).not.toContain(upstream.origin);
}

describe('GET /api/metrics', () => {
  it('is 401 in Keyward\'s error format without the token, or with a wrong one', async () => {
    for (const authorization of [undefined, 'Bearer wrong-token', `Basic ${metricsToken}`, `Bearer ${metricsToken}x`]) {
      const response = await scrape(authorization);
      expect(response.status).toBe(401);
      expect(response.headers.get('www-authenticate')).toMatch(/^Bearer /);
      const body = (await response.json()) as { error: { code: string } };
      expect(body.error.code).toBe('unauthenticated');
    }
  });

  it('does not exist (404) when KEYWARD_METRICS_TOKEN is not set', async () => {
    const response = await handleMetrics(new Request(`${APP_ORIGIN}/api/metrics`, { headers: { authorization: `Bearer ${metricsToken}` } }), {
      ...runtime,
      settings: { ...runtime.settings, KEYWARD_METRICS_TOKEN: undefined },
    });
    expect(response.status).toBe(404);
    // The setting is named, so whoever set the deployment up sees what is missing (not "this upstream…").
    expect(((await response.json()) as { error: { message: string } }).error.message).toContain('KEYWARD_METRICS_TOKEN');
  });

  it('counts calls, durations, errors and limit refusals, bounded to upstream ids and route templates', async () => {
    const before = await (await scrape(`Bearer ${metricsToken}`)).text();
    const calls = (labels: Record<string, string>, text: string) => sample(text, 'keyward_proxy_calls_total', labels);

    expect((await call('echo', `/items/42?note=${QUERY_MARKER}`)).status).toBe(200);
    expect((await call('echo', '/items/43')).status).toBe(200);
    expect((await call('echo', '/limited')).status).toBe(200);
    expect((await call('echo', '/limited')).status).toBe(429);
    expect((await call(`nope-${PATH_MARKER}`, '/x')).status).toBe(404);
    expect((await call('echo', `/${PATH_MARKER}`)).status).toBe(404);

    const response = await scrape(`bearer ${metricsToken}`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const after = await response.text();
    const ok = { upstream: 'echo', route: '/items/:id', method: 'GET', status_class: '2xx', outcome: 'complete' };
    expect(calls(ok, after) - calls(ok, before)).toBe(2);
    const durationCount = (text: string) => sample(text, 'keyward_proxy_duration_seconds_count', { upstream: 'echo', route: '/items/:id' });
    expect(durationCount(after) - durationCount(before)).toBe(2);
    expect(sample(after, 'keyward_proxy_duration_seconds_bucket', { upstream: 'echo', route: '/items/:id', le: '+Inf' })).toBe(durationCount(after));
    expect(sample(after, 'keyward_limit_refusals_total', { upstream: 'echo', kind: 'rate_limited' })).toBe(1);
    expect(sample(after, 'keyward_proxy_errors_total', { upstream: 'echo', route: '/limited', code: 'rate_limited' })).toBe(1);
    expect(calls({ upstream: '(unknown)', route: '(none)', status_class: '4xx', outcome: 'refused' }, after)).toBeGreaterThanOrEqual(1);
    expect(sample(after, 'keyward_proxy_errors_total', { upstream: 'echo', route: '(none)', code: 'route_not_found' })).toBe(1);
    // The echo upstream sends the key back: the scrubber replaced it, and the metric says so.
    expect(sample(after, 'keyward_scrubber_hits_total', { upstream: 'echo' })).toBeGreaterThanOrEqual(2);
    expect(after).toContain('keyward_store_errors_total 0');
    expectNoSecretOrQuery(after);
  });
  it("tells Keyward's own unavailability (outcome unavailable) from the upstream's failure (outcome upstream_error)", async () => {
    await runtime.keyRings.revoke(keyFingerprints(sessionSecrets.KEYWARD_SESSION_SECRET).of(keys.gone));
    const before = await (await scrape(`Bearer ${metricsToken}`)).text();
    const sent = upstream.requests.length;
    const calls = (labels: Record<string, string>, text: string) => sample(text, 'keyward_proxy_calls_total', labels) - sample(before, 'keyward_proxy_calls_total', labels);
    const gone = await call('gone', '/items/1');
    expect(gone.status).toBe(503);
    expect(JSON.parse(gone.text)).toMatchObject({ error: { code: 'credential_unavailable' } });
    const down = await call('down', '/items/1');
    expect(down.status).toBe(502);
    expect(JSON.parse(down.text)).toMatchObject({ error: { code: 'upstream_unreachable' } });
    expect(upstream.requests).toHaveLength(sent); // the revoked key was sent nowhere

    const after = await (await scrape(`Bearer ${metricsToken}`)).text();
    const of = (id: string, outcome: string) => ({ upstream: id, route: '/items/:id', method: 'GET', status_class: '5xx', outcome });
    expect(calls(of('gone', 'unavailable'), after)).toBe(1);
    expect(calls(of('gone', 'upstream_error'), after)).toBe(0);
    expect(calls(of('down', 'upstream_error'), after)).toBe(1);
    expect(calls(of('down', 'unavailable'), after)).toBe(0);
    expect(events.slice(-2).map(({ upstream: id, status, outcome, errorCode }) => ({ id, status, outcome, errorCode }))).toEqual([
      { id: 'gone', status: 503, outcome: 'unavailable', errorCode: 'credential_unavailable' },
      { id: 'down', status: 502, outcome: 'upstream_error', errorCode: 'upstream_unreachable' },
    ]);
    const spans = exporter.getFinishedSpans().map((span) => [span.attributes['keyward.upstream'], span.attributes['keyward.outcome']]);
    expect(spans).toEqual([
      ['gone', 'unavailable'],
      ['down', 'upstream_error'],
    ]);
  });

  it('the fast lane answers it in absolute form too (`GET http://host/api/metrics`), with the calls it served', async () => {
    // As server.ts assembles it, Next's place taken by a stand-in: a scrape handed to Next would be answered by
    // Next's process, which neither serves nor counts the proxied calls.
    const lane = createServer(
      createFastLane({ deps: runtime, metrics: runtime, origin: () => APP_ORIGIN, next: (_req, res) => res.writeHead(418).end() }),
    );
    await new Promise<void>((resolve) => lane.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = lane.address() as AddressInfo;
      expect((await rawRequest(port, 'GET', '/api/proxy/echo/items/5', { cookie, 'x-keyward-csrf': '1' })).status).toBe(200);
      const authorization = `Bearer ${metricsToken}`;
      const ok = { upstream: 'echo', route: '/items/:id', method: 'GET', status_class: '2xx', outcome: 'complete' };
      const originForm = await rawRequest(port, 'GET', '/api/metrics', { authorization });
      expect(originForm.status).toBe(200);
      for (const target of [`http://127.0.0.1:${port}/api/metrics`, `http://app.keyward.test/api/metrics?x=${QUERY_MARKER}`]) {
        const absolute = await rawRequest(port, 'GET', target, { authorization });
        expect([target, absolute.status]).toEqual([target, 200]);
        expect(sample(absolute.body, 'keyward_proxy_calls_total', ok)).toBe(sample(originForm.body, 'keyward_proxy_calls_total', ok));
        expectNoSecretOrQuery(absolute.body);
      }
      expect(sample(originForm.body, 'keyward_proxy_calls_total', ok)).toBeGreaterThanOrEqual(1);
      // Still the token's door: no scrape without it.
      expect((await rawRequest(port, 'GET', `http://127.0.0.1:${port}/api/metrics`, {})).status).toBe(401);
    } finally {
      await new Promise((resolve) => lane.close(resolve));
    }
  });
});

describe('traces', () => {
  it('makes one span per call, ended with the record, with Keyward\'s attributes and no URL, query or secret', async () => {
    expect((await call('echo', `/items/7?note=${QUERY_MARKER}`)).status).toBe(200);
    expect((await call('echo', '/limited')).status).toBe(429);
    expect((await call(`nope-${PATH_MARKER}`, '/x')).status).toBe(404);
    const spans = exporter.getFinishedSpans();
    expect(spans).toHaveLength(3);
    const [ok, limited, unknown] = spans as [ReadableSpan, ReadableSpan, ReadableSpan];
    expect(ok.name).toBe('keyward.proxy echo /items/:id');
    const fingerprint = events.at(-3)!.keyFingerprint;
    expect(fingerprint).toBeTruthy();
    expect(ok.attributes).toEqual({
      'keyward.upstream': 'echo',
      'keyward.route': '/items/:id',
      'url.template': '/items/:id',
      'http.request.method': 'GET',
      'http.response.status_code': 200,
      'keyward.outcome': 'complete',
      'keyward.key_fingerprint': fingerprint,
    });
    expect(limited.attributes['http.response.status_code']).toBe(429);
    expect(limited.attributes['error.type']).toBe('rate_limited');
    expect(unknown.name).toBe('keyward.proxy (unknown)');
    expect(unknown.attributes['keyward.upstream']).toBe('(unknown)');
    for (const span of spans) {
      expect(Object.keys(span.attributes).filter((name) => /^url\.(full|query|path)$|header/.test(name))).toEqual([]);
      expectNoSecretOrQuery(JSON.stringify({ name: span.name, attributes: span.attributes }));
    }
  });

  it('ends the span when the response body ends, not when its headers are sent', async () => {
    const method = 'GET';
    const request = new Request(`${APP_ORIGIN}/api/proxy/echo/items/9`, { method, headers: { cookie, 'x-keyward-csrf': '1' } });
    const response = await handleProxy(request, { upstream: 'echo', path: ['items', '9'] }, runtime);
    expect(response.status).toBe(200);
    expect(exporter.getFinishedSpans()).toHaveLength(0);
    await response.text();
    expect(exporter.getFinishedSpans()).toHaveLength(1);
  });

  it('adds the GenAI attributes for an OpenAI-preset call that reports usage', async () => {
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: 'c1', choices: [], usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 } }));
    });
    const result = await call('openai', '/chat/completions', { body: { model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }] } });
    expect(result.status).toBe(200);
    const [span] = exporter.getFinishedSpans();
    expect(span!.name).toBe('keyward.proxy openai /chat/completions');
    expect(span!.attributes).toMatchObject({
      'gen_ai.system': 'openai',
      'gen_ai.provider.name': 'openai',
      'gen_ai.operation.name': 'chat',
      'gen_ai.request.model': 'gpt-test',
      'gen_ai.usage.input_tokens': 11,
      'gen_ai.usage.output_tokens': 7,
      'keyward.route': '/chat/completions',
    });
    expectNoSecretOrQuery(JSON.stringify(span!.attributes));
  });

  it('reads the tokens from the last event of a stream', async () => {
    upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"choices":[{"delta":{"content":"hi"}}]}\n\n');
      res.end('data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\ndata: [DONE]\n\n');
    });
    const body = { model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } };
    expect((await call('openai', '/chat/completions', { body })).status).toBe(200);
    const [span] = exporter.getFinishedSpans();
    expect(span!.attributes['gen_ai.usage.input_tokens']).toBe(5);
    expect(span!.attributes['gen_ai.usage.output_tokens']).toBe(3);
  });
});
