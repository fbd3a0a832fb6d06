import type { UpstreamDefinition } from 'keyward/core';

/**
 * Upstreams declared in TypeScript. Add an adapter with `defineUpstream` (see README, "Add an upstream")
 * and list it here; upstreams from the JSON file named by KEYWARD_CONFIG are added to these. keyward.ts passes
 * them to `createKeyward` (the route handlers), server.ts to the fast lane.
 *
 *   import { defineUpstream } from 'keyward/core';
 *   export const openai = defineUpstream('openai', {
 *     baseUrl: 'https://api.openai.com/v1/',
 *     auth: { type: 'bearer', secret: { env: 'OPENAI_API_KEY' } },
 *     routes: [{ method: 'POST', path: '/chat/completions', roles: ['user'] }],
 *   });
 */
// `satisfies`, not an annotation: the list keeps each upstream's literal id and routes, which the typed client
// reads from `createKeywardClient<typeof upstreams>()` (README "Call it from the frontend: the typed client").
export const upstreams = [] satisfies UpstreamDefinition[];
