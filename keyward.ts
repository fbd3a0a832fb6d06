import { createKeyward } from 'keyward/next';
import { upstreams } from '@/upstreams';

/**
 * This app's Keyward: the route handlers in app/api, the pages and instrumentation.ts all take it from here
 * (README "Add Keyward to an existing Next.js app" shows the same file for any app). Upstreams come from
 * upstreams/index.ts and the JSON file named by KEYWARD_CONFIG; sign-in uses this app's own page, app/signin.
 */
export const keyward = createKeyward({ upstreams, pages: { signIn: '/signin', error: '/signin' } });
