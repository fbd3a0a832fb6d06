import 'server-only';
import { createRuntime, type Runtime } from '@/lib/core/runtime';
import { upstreams } from '@/upstreams';

/**
 * The fast lane's runtime, built from exactly what the route handlers' is built from (lib/next/runtime.ts:
 * process.env and the upstreams declared in TypeScript), so it has the same config, sessions, limits and audit.
 *
 * It is its own instance, never the one Next's bundles hold: each bundle has its own copy of every class, and a
 * KeywardError thrown by one copy is not `instanceof` the other's (a 429 would render as a 500). The two share
 * state as two instances of Keyward do, through the store; a memory store cannot be shared, so server.ts
 * refuses it.
 */
export function createFastLaneRuntime(): Runtime {
  return createRuntime({ env: process.env, upstreams });
}
