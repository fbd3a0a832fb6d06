import { createRequire } from 'node:module';
import { trace } from '@opentelemetry/api';
import { describe, expect, it } from 'vitest';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { QueryStrippingProcessor } from '../../../lib/core/observe/otel';
import { tracingWanted } from '../../../lib/core/observe/trace';

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
