import 'server-only';
import type { UpstreamDefinition } from '@/lib/core/config/load';
import { createRuntime, type Runtime, type RuntimeOptions } from '@/lib/core/runtime';

/**
 * The runtime of one `createKeyward` (lib/next/keyward.ts), built on first use from process.env and the
 * upstreams the app passed in (validated once; a bad config throws a ConfigError naming the field). The app's
 * instrumentation.ts builds it at server start, so `next start` stops on bad config instead of answering requests.
 *
 * Per bundle, on purpose: instrumentation.ts and the route handlers are separate bundles, each evaluating the
 * app's `createKeyward` with its own copies of every class, so a runtime shared through globalThis would throw
 * errors that the other bundle's `instanceof` checks (KeywardError, StoreUnavailableError) do not recognise,
 * turning 503s into 500s.
 */
export function lazyRuntime(upstreams: readonly UpstreamDefinition[], more: Pick<RuntimeOptions, 'connections'> = {}): () => Runtime {
  let runtime: Runtime | undefined;
  return () => {
    runtime ??= createRuntime({ env: process.env, upstreams, ...more });
    return runtime;
  };
}
