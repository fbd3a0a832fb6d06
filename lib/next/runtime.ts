import 'server-only';
import { createRuntime, type Runtime } from '@/lib/core/runtime';
import { upstreams } from '@/upstreams';

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
