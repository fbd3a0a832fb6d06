import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { AlwaysOnSampler, BatchSpanProcessor, ParentBasedSampler, type Sampler } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import type { Logger } from 'pino';
import { QueryStrippingProcessor, queryStrippingMade } from './query-stripping';
import { registeredTracerProvider } from './trace';

type Env = Readonly<Record<string, string | undefined>>;

/**
 * Registers the OpenTelemetry Node SDK's tracer provider, exporting over OTLP/HTTP in batches. The exporter reads
 * the standard variables itself (OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, …; OTEL_SERVICE_NAME and
 * OTEL_RESOURCE_ATTRIBUTES name the service); Keyward's spans and Next's own then go there.
 * https://opentelemetry.io/docs/specs/otel/protocol/exporter/
 *
 * The API keeps one provider per process, the first registered: when the app registered its own before (e.g.
 * `@vercel/otel`'s registerOTel in instrumentation.ts), Keyward's would silently do nothing, and its
 * QueryStrippingProcessor would not see the spans the app's provider exports. Then Keyward's is dropped, and a
 * warning says how to add the processor to the app's, unless the app made one already. Returns null then.
 */
export function registerTracing(options: { env: Env; logger: Pick<Logger, 'warn'> }): NodeTracerProvider | null {
  const appStrips = queryStrippingMade();
  const resource = defaultResource()
    .merge(resourceFromAttributes({ 'service.name': 'keyward' }))
    .merge(detectResources({ detectors: [envDetector] }));
  const exported = new BatchSpanProcessor(new OTLPTraceExporter());
  const sampler = remoteParentIgnoringSampler(options.env);
  const provider = new NodeTracerProvider({
    resource,
    spanProcessors: [new QueryStrippingProcessor(exported)],
    ...(sampler ? { sampler } : {}),
  });
  // Registers the AsyncLocalStorage context manager too, so a span's parent is the request it runs in.
  provider.register();
  if (registeredTracerProvider() === provider) return provider;
  if (!appStrips) {
    options.logger.warn(
      "OpenTelemetry: a tracer provider was registered before Keyward's (e.g. @vercel/otel's registerOTel), so Keyward's spans go to it, " +
        "but Keyward's query stripping is not installed there: its spans may reach the collector with URL queries (an OAuth callback's code, " +
        "a key in a query). Put it first in that provider's span processors: `spanProcessors: [new QueryStrippingProcessor(), 'auto']`, " +
        "QueryStrippingProcessor from keyward/core (README \"OpenTelemetry traces\")",
    );
  }
  void provider.shutdown().catch(() => {});
  return null;
}

/**
 * Under `next start` and on Vercel, Next continues the trace a request's `traceparent` header names, and that
 * header is the client's to write: with the SDK's default sampler (`parentbased_always_on`) its sampled flag
 * decides, and a caller sending `-00` would keep its calls, Keyward's `keyward.proxy` spans included, out of the
 * traces. Keyward's default records a span whatever a remote parent decided (the trace id it joins is still the
 * client's: harmless, it only groups spans); a span whose parent is in this process follows it, as in the
 * default. OTEL_TRACES_SAMPLER, when set, is the operator's choice: none is given then, and the SDK reads it.
 * https://opentelemetry.io/docs/specs/otel/trace/sdk/#parentbased
 */
function remoteParentIgnoringSampler(env: Env): Sampler | undefined {
  if (env.OTEL_TRACES_SAMPLER?.trim()) return undefined;
  const always = new AlwaysOnSampler();
  return new ParentBasedSampler({ root: always, remoteParentSampled: always, remoteParentNotSampled: always });
}
