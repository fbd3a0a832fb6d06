import type { Context } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace-base';

/**
 * Span attributes that hold a request's URL or target (OTel's HTTP conventions, old and new names). Next's own
 * spans set `http.target` to the request URL with its query (an OAuth callback's `code` and `state`) and its fetch
 * spans `http.url` to the URL fetched; Keyward's spans never hold one.
 */
const URL_ATTRIBUTES = ['http.target', 'http.url', 'url.full', 'url.query'] as const;

/**
 * Drops the query and fragment of every URL attribute before a span is exported, whoever made the span: a query
 * may carry a credential, an authorization code or a user's input, and the collector is not a place for them.
 *
 * Either wraps the processor that exports (`new QueryStrippingProcessor(new BatchSpanProcessor(exporter))`), or,
 * given none, goes first in a provider's list of processors: a provider hands each ended span to its processors
 * in order, the same object to each, so those after it see the span stripped (README "OpenTelemetry traces":
 * an app that registers its own provider, e.g. `@vercel/otel`'s `registerOTel`, adds it so). It needs nothing
 * of the SDK at run time: the app's SDK, whichever version, is the one that calls it.
 */
export class QueryStrippingProcessor implements SpanProcessor {
  constructor(private readonly next?: SpanProcessor) {
    (globalThis as Record<symbol, unknown>)[MADE] = true;
  }

  onStart(span: Span, parentContext: Context): void {
    this.next?.onStart(span, parentContext);
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
    this.next?.onEnd(span);
  }

  forceFlush(): Promise<void> {
    return this.next?.forceFlush() ?? Promise.resolve();
  }

  shutdown(): Promise<void> {
    return this.next?.shutdown() ?? Promise.resolve();
  }
}

/** Set on the process's global object: the app's copy of this class may come from another bundle than Keyward's. */
const MADE = Symbol.for('keyward.queryStrippingProcessor');

/**
 * Whether a QueryStrippingProcessor was made in this process. registerTracing asks before it makes its own: a
 * true answer means the app made one for the provider it registered (README "OpenTelemetry traces"), or an
 * earlier call made Keyward's, which is then the one registered.
 */
export function queryStrippingMade(): boolean {
  return (globalThis as Record<symbol, unknown>)[MADE] === true;
}

/** Every absolute URL in a text without its query and fragment. */
function withoutUrlQueries(text: string): string {
  return text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^\s?#]*)[?#]\S*/gi, '$1');
}
