import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
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
  const provider = new NodeTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())] });
  // Registers the AsyncLocalStorage context manager too, so a span's parent is the request it runs in.
  provider.register();
  return provider;
}
