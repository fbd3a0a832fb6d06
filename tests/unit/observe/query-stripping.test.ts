import { describe, expect, it } from 'vitest';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { QueryStrippingProcessor } from '../../../lib/core/observe/otel';
import { tracingWanted } from '../../../lib/core/observe/trace';

/** The processor registerTracing puts before the exporter, on the SDK's own provider and in-memory exporter. */
function tracing(strip: boolean) {
  const exporter = new InMemorySpanExporter();
  const simple = new SimpleSpanProcessor(exporter);
  const provider = new BasicTracerProvider({ spanProcessors: [strip ? new QueryStrippingProcessor(simple) : simple] });
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
