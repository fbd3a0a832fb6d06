import 'server-only';
import type { UpstreamDefinition } from '@/lib/core/config/load';
import { createRuntime, type Runtime } from '@/lib/core/runtime';

/**
 * The fast lane's runtime, built from exactly what the route handlers' is built from (process.env and the
 * upstreams the app passes to `createKeyward`), so it has the same config, sessions, limits and audit.
 *
 * It is its own instance, never the one Next's bundles hold: each bundle has its own copy of every class, and a
 * KeywardError thrown by one copy is not `instanceof` the other's (a 429 would render as a 500). The two share
 * state as two instances of Keyward do, through the store; a memory store cannot be shared, so server.ts
 * refuses it.
 */
export function createFastLaneRuntime(upstreams: readonly UpstreamDefinition[] = []): Runtime {
  return createRuntime({ env: process.env, upstreams });
}
