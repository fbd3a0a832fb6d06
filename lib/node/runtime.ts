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

/**
 * What the fast lane refuses on top of the runtime's own checks (server.ts exits on it, and `keyward
 * check-config` reports it): Next's handlers (sign-out, keys, mobile tokens) hold their own runtime, so with a
 * memory store a session revoked there would still be accepted here. Fail closed.
 */
export function fastLaneProblems(runtime: Pick<Runtime, 'store'>): string[] {
  if (runtime.store.kind !== 'memory') return [];
  return [
    '  - KEYWARD_STORE: "memory" cannot be shared between the fast lane and Next\'s handlers; use sqlite (the default) or redis, or `npm run start:next`',
  ];
}
