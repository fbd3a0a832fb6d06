import type { UpstreamDefinition } from '@/lib/core/config/load';

/**
 * Upstreams declared in TypeScript. Add an adapter with `defineUpstream` (see README, "Add an upstream")
 * and list it here; upstreams from the JSON file named by KEYWARD_CONFIG are added to these.
 *
 *   import { defineUpstream } from '@/lib/core/config/load';
 *   export const openai = defineUpstream('openai', {
 *     baseUrl: 'https://api.openai.com/v1/',
 *     auth: { type: 'bearer', secret: { env: 'OPENAI_API_KEY' } },
 *     routes: [{ method: 'POST', path: '/chat/completions', roles: ['user'] }],
 *   });
 */
export const upstreams: UpstreamDefinition[] = [];
