import { createRequire } from 'node:module';
import { Writable } from 'node:stream';
import { context, propagation, ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import type { Logger } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { createLogger } from '../../../lib/core/log/logger';
import { QueryStrippingProcessor } from '../../../lib/core/observe/query-stripping';
import { clearTextOtlpWarning } from '../../../lib/core/observe/otlp-env';
import { registerTracingFromEnv, shutdownTracing, tracingWanted } from '../../../lib/core/observe/trace';
import { startOtlpCollector } from '../../fixtures/otlp-collector';

/** The processor registerTracing puts before the exporter, on the SDK's own provider and in-memory exporter. */
function tracing(strip: boolean, global = false) {
  const exporter = new InMemorySpanExporter();
  const simple = new SimpleSpanProcessor(exporter);
  const provider = new BasicTracerProvider({ spanProcessors: [strip ? new QueryStrippingProcessor(simple) : simple] });
  // As registerTracing registers it: what Next's own tracer (@opentelemetry/api's global) then uses.
  if (global) trace.setGlobalTracerProvider(provider);
  return { tracer: provider.getTracer('test'), exporter };
}

describe('spans are exported without the query of any URL they name (whoever made them: Next, fetch, Keyward)', () => {
  it("Next's request span (http.target) and fetch spans (http.url, url.full); url.query is dropped", () => {
    const { tracer, exporter } = tracing(true);
    const span = tracer.startSpan('GET', {
      attributes: {
        'http.method': 'GET',
        'http.target': '/api/connect/github/callback?code=an-authorization-code&state=xyz',
        'http.url': 'https://api.example.com/v1/items?key=a-query-key#frag',
        'url.full': 'https://api.example.com/v1/items?key=a-query-key',
        'url.query': 'key=a-query-key',
      },
    });
    span.setAttribute('http.route', '/api/connect/[provider]/callback');
    span.end();
    const [exported] = exporter.getFinishedSpans();
    expect(exported!.attributes).toEqual({
      'http.method': 'GET',
      'http.target': '/api/connect/github/callback',
      'http.url': 'https://api.example.com/v1/items',
      'url.full': 'https://api.example.com/v1/items',
      'http.route': '/api/connect/[provider]/callback',
    });
  });

  it("the URL in a span's name too: Next names a server-side fetch span `fetch GET <URL>` (and next.span_name), query and all", async () => {
    const { exporter } = tracing(true, true);
    try {
      // Next's own patched fetch (what a route handler or server component calls), over a stand-in network.
      const require = createRequire(import.meta.url);
      const { createPatchedFetcher } = require('next/dist/server/lib/patch-fetch');
      const { workAsyncStorage } = require('next/dist/server/app-render/work-async-storage.external');
      const { workUnitAsyncStorage } = require('next/dist/server/app-render/work-unit-async-storage.external');
      const network = async () => new Response('{}', { headers: { 'content-type': 'application/json' } });
      const patched = createPatchedFetcher(network, { workAsyncStorage, workUnitAsyncStorage });
      await (await patched('https://maps.googleapis.com/maps/api/geocode/json?address=x&key=AIzaSy-a-server-key#f')).text();
    } finally {
      trace.disable();
    }
    const spans = exporter.getFinishedSpans();
    const fetchSpan = spans.find((span) => span.name.startsWith('fetch '));
    expect(fetchSpan?.name).toBe('fetch GET https://maps.googleapis.com/maps/api/geocode/json');
    expect(fetchSpan!.attributes['next.span_name']).toBe('fetch GET https://maps.googleapis.com/maps/api/geocode/json');
    expect(JSON.stringify(spans.map((span) => [span.name, span.attributes]))).not.toContain('AIzaSy');
  });

  it('without it, the code would reach the collector (control)', () => {
    const { tracer, exporter } = tracing(false);
    tracer.startSpan('GET', { attributes: { 'http.target': '/cb?code=an-authorization-code' } }).end();
    expect(JSON.stringify(exporter.getFinishedSpans()[0]!.attributes)).toContain('an-authorization-code');
  });
});

describe('tracing is registered when an OTLP endpoint is set, unless OTEL_SDK_DISABLED says true (in any case)', () => {
  it('reads the variables as the OTel SDK does', () => {
    const endpoint = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' };
    expect(tracingWanted({})).toBe(false);
    expect(tracingWanted(endpoint)).toBe(true);
    expect(tracingWanted({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:4318/v1/traces' })).toBe(true);
    for (const disabled of ['true', 'TRUE', 'True', ' true ']) expect(tracingWanted({ ...endpoint, OTEL_SDK_DISABLED: disabled }), disabled).toBe(false);
    for (const other of ['false', '', '1']) expect(tracingWanted({ ...endpoint, OTEL_SDK_DISABLED: other }), other).toBe(true);
  });
});

describe('QueryStrippingProcessor for a provider of the app (README "OpenTelemetry traces")', () => {
  it('given no processor of its own, it strips the span for the processors after it in the list', () => {
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new QueryStrippingProcessor(), new SimpleSpanProcessor(exporter)] });
    provider.getTracer('next.js').startSpan('GET', { attributes: { 'http.target': '/api/auth/callback/oidc?code=an-authorization-code' } }).end();
    expect(exporter.getFinishedSpans()[0]!.attributes).toEqual({ 'http.target': '/api/auth/callback/oidc' });
  });
});

/** A pino logger (Keyward's own) whose lines are kept. */
function keptLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const destination = new Writable({ write: (chunk, _encoding, callback) => (lines.push(String(chunk)), callback()) });
  return { logger: createLogger({ level: 'info', destination }), lines };
}

/** Undoes what a provider's register() set: the API's globals (provider, context manager, propagator). */
async function unregister(): Promise<void> {
  // A collector already gone (or never there) fails the last export: nothing to check here.
  await shutdownTracing().catch(() => {});
  trace.disable();
  context.disable();
  propagation.disable();
}

describe('registerTracing', () => {
  let otel: typeof import('../../../lib/core/observe/otel');
  let calls: typeof import('../../../lib/core/observe/trace');

  // As in a fresh process. No QueryStrippingProcessor made yet (the tests above made some); and Keyward's modules
  // loaded anew: trace.ts takes its tracer when it loads, from the API's provider of the time, which the API's
  // disable() (after each test here) replaces.
  beforeEach(async () => {
    delete (globalThis as Record<symbol, unknown>)[Symbol.for('keyward.queryStrippingProcessor')];
    vi.resetModules();
    otel = await import('../../../lib/core/observe/otel');
    calls = await import('../../../lib/core/observe/trace');
  });

  afterEach(async () => {
    await unregister();
    vi.unstubAllEnvs();
  });

  /**
   * A request span as Next makes one under `next start`: the context extracted from the request's headers
   * (its `traceparent`), then Keyward's call span inside it.
   */
  function callUnderTraceparent(traceparent: string): { recording: boolean; traceId: string } {
    const remote = propagation.extract(ROOT_CONTEXT, { traceparent });
    const request = trace.getTracer('next.js').startSpan('GET /api/proxy/[upstream]/[[...path]]', { kind: SpanKind.SERVER }, remote);
    const span = context.with(trace.setSpan(remote, request), () => calls.startCallSpan());
    const recording = span.isRecording();
    calls.endCallSpan(span, { upstream: 'echo', route: '/items/:id', method: 'GET', status: 200, outcome: 'complete', errorCode: null, keyFingerprint: null });
    request.end();
    return { recording, traceId: span.spanContext().traceId };
  }

  const NOT_SAMPLED = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00';

  it("records and exports a call whose client sent a traceparent flagged not sampled (a client's header does not decide)", async () => {
    const collector = await startOtlpCollector();
    try {
      vi.stubEnv('OTEL_EXPORTER_OTLP_ENDPOINT', collector.endpoint);
      const { logger, lines } = keptLogger();
      expect(otel.registerTracing({ env: process.env, logger })).not.toBeNull();
      // Still in the client's trace (it only groups spans), but recorded.
      expect(callUnderTraceparent(NOT_SAMPLED)).toEqual({ recording: true, traceId: '0af7651916cd43dd8448eb211c80319c' });
      await shutdownTracing();
      expect(collector.spans().map((s) => s.name)).toEqual(['keyward.proxy echo /items/:id', 'GET /api/proxy/[upstream]/[[...path]]']);
      expect(lines).toEqual([]);
    } finally {
      collector.close();
    }
  });

  it('follows the parent when OTEL_TRACES_SAMPLER says so: the operator chose', () => {
    vi.stubEnv('OTEL_EXPORTER_OTLP_ENDPOINT', 'http://127.0.0.1:9');
    vi.stubEnv('OTEL_TRACES_SAMPLER', 'parentbased_always_on');
    otel.registerTracing({ env: process.env, logger: keptLogger().logger });
    expect(callUnderTraceparent(NOT_SAMPLED).recording).toBe(false);
  });

  it("warns once when the app registered a provider first, whose spans would go out with their queries", async () => {
    vi.stubEnv('OTEL_EXPORTER_OTLP_ENDPOINT', 'http://127.0.0.1:9');
    const appExporter = new InMemorySpanExporter();
    // The app's own registration (what @vercel/otel's registerOTel does in instrumentation.ts), before Keyward's.
    const app = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(appExporter)] });
    app.register();
    const { logger, lines } = keptLogger();
    expect(otel.registerTracing({ env: process.env, logger })).toBeNull();
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 40, msg: expect.stringContaining('new QueryStrippingProcessor()') });
    // The app's provider is still the one that exports (Keyward's spans too), and it is left as it was.
    trace.getTracer('next.js').startSpan('GET', { attributes: { 'http.target': '/cb?code=an-authorization-code' } }).end();
    expect(appExporter.getFinishedSpans().map((span) => span.attributes['http.target'])).toEqual(['/cb?code=an-authorization-code']);
  });

  it('says nothing when the app put a QueryStrippingProcessor in its provider, and its spans go out without queries', () => {
    vi.stubEnv('OTEL_EXPORTER_OTLP_ENDPOINT', 'http://127.0.0.1:9');
    const appExporter = new InMemorySpanExporter();
    new NodeTracerProvider({ spanProcessors: [new QueryStrippingProcessor(), new SimpleSpanProcessor(appExporter)] }).register();
    const { logger, lines } = keptLogger();
    expect(otel.registerTracing({ env: process.env, logger })).toBeNull();
    expect(lines).toEqual([]);
    trace.getTracer('next.js').startSpan('GET', { attributes: { 'http.target': '/cb?code=an-authorization-code' } }).end();
    expect(appExporter.getFinishedSpans()[0]!.attributes['http.target']).toBe('/cb');
  });
});

describe("the collector's credentials in clear text: one warning at start-up in production, never the values", () => {
  const key = 'hc-team-key-7f3a9c';
  const basic = Buffer.from('grafana:collector-password').toString('base64');
  const headers = `x-honeycomb-team=${key},authorization=Basic%20${basic}`;
  const production = { NODE_ENV: 'production' as const, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://otel-collector.internal:4318', OTEL_EXPORTER_OTLP_HEADERS: headers };

  it('warns for headers sent over plain http to another host, naming the variables', () => {
    const warning = clearTextOtlpWarning(production);
    expect(warning).toContain('OTEL_EXPORTER_OTLP_HEADERS');
    expect(warning).toContain('OTEL_EXPORTER_OTLP_ENDPOINT');
    for (const value of [key, basic, headers]) expect(warning).not.toContain(value);
    // The traces-specific variables are read the same way (the traces endpoint first: the exporter uses it).
    const traces = { NODE_ENV: 'production', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://10.0.0.7:4318/v1/traces', OTEL_EXPORTER_OTLP_TRACES_HEADERS: `api-key=${key}` };
    expect(clearTextOtlpWarning(traces)).toContain('OTEL_EXPORTER_OTLP_TRACES_HEADERS');
    expect(clearTextOtlpWarning(traces)).toContain('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  });

  it('says nothing over https, to this machine, without headers, or outside production', () => {
    for (const env of [
      { ...production, OTEL_EXPORTER_OTLP_ENDPOINT: 'https://otel-collector.internal:4318' },
      { ...production, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://otel-collector.internal:4318/v1/traces' },
      { ...production, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' },
      { ...production, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://localhost:4318' },
      { ...production, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://[::1]:4318' },
      { ...production, OTEL_EXPORTER_OTLP_HEADERS: '' },
      { ...production, NODE_ENV: 'development' },
    ]) {
      expect(clearTextOtlpWarning(env), JSON.stringify(env)).toBeNull();
    }
  });

  it('registerTracingFromEnv logs it once, through the logger, when tracing is on', async () => {
    const { logger, lines } = keptLogger();
    try {
      await registerTracingFromEnv(production, logger);
    } finally {
      await unregister();
    }
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 40, msg: expect.stringContaining('clear text') });
    for (const value of [key, basic, encodeURIComponent(`Basic ${basic}`)]) expect(lines[0]).not.toContain(value);
    // Tracing off (OTEL_SDK_DISABLED): nothing is sent, nothing to say.
    await registerTracingFromEnv({ ...production, OTEL_SDK_DISABLED: 'true' }, logger);
    expect(lines).toHaveLength(1);
  });
});
