import { context, SpanKind, SpanStatusCode, trace, type Attributes, type Span } from '@opentelemetry/api';
import type { Logger } from 'pino';
import { getLogger } from '../log/logger';
import type { GenAiRoute, GenAiUsage } from './gen-ai';
import { clearTextOtlpWarning } from './otlp-env';

/**
 * One span per proxied call, made through the OpenTelemetry API: with no tracer provider registered
 * (instrumentation.ts registers one only when OTEL_EXPORTER_OTLP_ENDPOINT is set), the API hands back a
 * non-recording span and every call below does nothing. Attributes name Keyward's own values (upstream id, route
 * template, fingerprint) and never a URL, a query or a header value, which may carry credentials.
 */
const tracer = trace.getTracer('keyward');

/**
 * Registers OpenTelemetry tracing for this process when the SDK's own variables ask for it (an OTLP endpoint, and
 * not OTEL_SDK_DISABLED): instrumentation.ts does it for Next's process, server.ts for the fast lane's. The SDK is
 * loaded only then. Production warns once when the exporter's headers (a collector's API key) would travel in
 * clear text; createRuntime adds their values to the log scrubber.
 */
export async function registerTracingFromEnv(env: NodeJS.ProcessEnv, logger: Pick<Logger, 'warn'> = getLogger()): Promise<void> {
  if (!tracingWanted(env)) return;
  const clearText = clearTextOtlpWarning(env);
  if (clearText) logger.warn(clearText);
  (await import('./otel')).registerTracing({ env, logger });
}

/** An OTLP endpoint is set, and OTEL_SDK_DISABLED is not `true` (in any case, as the OTel spec reads booleans). */
export function tracingWanted(env: Readonly<Record<string, string | undefined>>): boolean {
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) && env.OTEL_SDK_DISABLED?.trim().toLowerCase() !== 'true';
}

/**
 * Exports the spans still waiting in the batch (the SDK's BatchSpanProcessor holds them up to 5 s) and stops the
 * exporter: each process calls it when it stops, so the calls it served last are not lost. Does nothing when no
 * provider was registered. The API keeps one provider per process (a global), so this finds it whichever bundle's
 * copy of registerTracingFromEnv registered it (Next's chunks register it in Next's process).
 */
export async function shutdownTracing(): Promise<void> {
  const provider = registeredTracerProvider() as { shutdown?(): Promise<void> };
  await provider.shutdown?.();
}

/** The provider registered in this process (the API's no-op one when none is). */
export function registeredTracerProvider(): unknown {
  const registered = trace.getTracerProvider() as { getDelegate?(): unknown };
  return registered.getDelegate?.() ?? registered;
}

/** Methods passed on as they are; any other becomes `_OTHER` (OTel HTTP semantic conventions, `http.request.method`). */
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE']);

export function methodLabel(method: string): string {
  const upper = method.toUpperCase();
  return KNOWN_METHODS.has(upper) ? upper : '_OTHER';
}

/** Starts the call's span, a child of whatever span is active (Next's request span under `next start`). */
export function startCallSpan(): Span {
  return tracer.startSpan('keyward.proxy', { kind: SpanKind.INTERNAL }, context.active());
}

/** What the call's record says, as the span's attributes; `upstream` is null for an id the registry does not hold. */
export interface CallSpanEnd {
  readonly upstream: string | null;
  readonly route: string | null;
  readonly method: string;
  readonly status: number;
  readonly outcome: string;
  readonly errorCode: string | null;
  readonly keyFingerprint: string | null;
}

/** Ends the span when the call is recorded: after the response body ended or was aborted, never at its headers. */
export function endCallSpan(span: Span, end: CallSpanEnd): void {
  if (!span.isRecording()) return;
  const upstream = end.upstream ?? '(unknown)';
  span.updateName(end.route ? `keyward.proxy ${upstream} ${end.route}` : `keyward.proxy ${upstream}`);
  const attributes: Attributes = {
    'keyward.upstream': upstream,
    'http.request.method': methodLabel(end.method),
    'http.response.status_code': end.status,
    'keyward.outcome': end.outcome,
  };
  if (end.route) {
    attributes['keyward.route'] = end.route;
    attributes['url.template'] = end.route;
  }
  if (end.keyFingerprint) attributes['keyward.key_fingerprint'] = end.keyFingerprint;
  if (end.errorCode) attributes['error.type'] = end.errorCode;
  span.setAttributes(attributes);
  if (end.status >= 500 || end.outcome === 'error') span.setStatus({ code: SpanStatusCode.ERROR });
  span.end();
}

/** GenAI request attributes (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/), set once the body was checked. */
export function setGenAiRequest(span: Span, genAi: GenAiRoute, model: string | null): void {
  span.setAttributes({
    // gen_ai.system is the older name of gen_ai.provider.name; both are set for backends that read either.
    'gen_ai.system': genAi.provider,
    'gen_ai.provider.name': genAi.provider,
    'gen_ai.operation.name': genAi.operation,
  });
  if (model) span.setAttribute('gen_ai.request.model', model);
}

/** The tokens the response reported (absent when it reported none, or the body was cut short). */
export function setGenAiUsage(span: Span, usage: GenAiUsage): void {
  if (usage.inputTokens !== null) span.setAttribute('gen_ai.usage.input_tokens', usage.inputTokens);
  if (usage.outputTokens !== null) span.setAttribute('gen_ai.usage.output_tokens', usage.outputTokens);
}
