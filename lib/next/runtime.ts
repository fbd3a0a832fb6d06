import 'server-only';
import { createRuntime, type Runtime } from '@/lib/core/runtime';
import { upstreams } from '@/upstreams';

// Per bundle, on purpose: instrumentation.ts and the route handlers are separate bundles with their own copies
// of every class, so a runtime shared through globalThis would throw errors that the other bundle's
// `instanceof` checks (KeywardError, StoreUnavailableError) do not recognise, turning 503s into 500s.
let runtime: Runtime | undefined;

/**
 * The process-wide runtime, built on first use from process.env (validated once; a bad config throws a
 * ConfigError naming the field). instrumentation.ts calls this at server start so `next start` stops on
 * bad config instead of answering requests.
 */
export function getRuntime(): Runtime {
  runtime ??= createRuntime({ env: process.env, upstreams });
  return runtime;
}
