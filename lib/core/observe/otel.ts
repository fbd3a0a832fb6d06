import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, type ReadableSpan, type Span, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { Context } from '@opentelemetry/api';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';

/**
 * Registers the OpenTelemetry Node SDK's tracer provider, exporting over OTLP/HTTP in batches. The exporter reads
 * the standard variables itself (OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, …; OTEL_SERVICE_NAME and
 * OTEL_RESOURCE_ATTRIBUTES name the service); Keyward's spans and Next's own then go there.
 * https://opentelemetry.io/docs/specs/otel/protocol/exporter/
 */
export function registerTracing(): NodeTracerProvider {
  const resource = defaultResource()
    .merge(resourceFromAttributes({ 'service.name': 'keyward' }))
    .merge(detectResources({ detectors: [envDetector] }));
  const exported = new BatchSpanProcessor(new OTLPTraceExporter());
  const provider = new NodeTracerProvider({ resource, spanProcessors: [new QueryStrippingProcessor(exported)] });
  // Registers the AsyncLocalStorage context manager too, so a span's parent is the request it runs in.
  provider.register();
  return provider;
}

/**
 * Span attributes that hold a request's URL or target (OTel's HTTP conventions, old and new names). Next's own
 * spans set `http.target` to the request URL with its query (an OAuth callback's `code` and `state`) and its fetch
 * spans `http.url` to the URL fetched; Keyward's spans never hold one.
 */
const URL_ATTRIBUTES = ['http.target', 'http.url', 'url.full', 'url.query'] as const;

/**
 * Drops the query and fragment of every URL attribute before a span is exported, whoever made the span: a query
 * may carry a credential, an authorization code or a user's input, and the collector is not a place for them.
 */
export class QueryStrippingProcessor implements SpanProcessor {
  constructor(private readonly next: SpanProcessor) {}

  onStart(span: Span, parentContext: Context): void {
    this.next.onStart(span, parentContext);
  }

  onEnd(span: ReadableSpan): void {
    // An ended span's attributes can no longer be set through the API; the object itself is the span's own.
    const attributes = span.attributes as Record<string, unknown>;
    for (const key of URL_ATTRIBUTES) {
      const value = attributes[key];
      if (typeof value !== 'string') continue;
      if (key === 'url.query') delete attributes[key];
      else attributes[key] = value.replace(/[?#][\s\S]*$/, '');
    }
    // Next names its fetch spans `fetch <METHOD> <URL>`, the URL with its query, and copies that into
    // `next.span_name`: `?key=` of a server-side fetch (a Maps key) would reach the collector in the name.
    (span as unknown as { name: string }).name = withoutUrlQueries(span.name);
    const nextName = attributes['next.span_name'];
    if (typeof nextName === 'string') attributes['next.span_name'] = withoutUrlQueries(nextName);
    this.next.onEnd(span);
  }

  forceFlush(): Promise<void> {
    return this.next.forceFlush();
  }

  shutdown(): Promise<void> {
    return this.next.shutdown();
  }
}

/** Every absolute URL in a text without its query and fragment. */
function withoutUrlQueries(text: string): string {
  return text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^\s?#]*)[?#]\S*/gi, '$1');
}
