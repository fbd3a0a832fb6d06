import { isAbsolute, relative, resolve } from 'node:path';
import type { NextConfig } from 'next';

/**
 * Files Keyward reads at run time by path (the upstreams config, the decoys file), which Next's file tracing
 * cannot see: name them here so `output: 'standalone'` (and Vercel's functions) carry them, at the same path
 * relative to the app. Only a file inside the project can be traced; an absolute path elsewhere is the
 * deployment's to provide. The users file (KEYWARD_USERS_FILE) is left out on purpose: it holds password hashes,
 * which do not belong in a build artifact (README "Standalone output": mount it).
 */
const RUNTIME_FILES = ['KEYWARD_CONFIG', 'KEYWARD_DECOYS_FILE'] as const;

function tracedRuntimeFiles(): string[] {
  return RUNTIME_FILES.flatMap((name) => {
    const configured = process.env[name];
    if (!configured) return [];
    const path = relative(process.cwd(), resolve(configured));
    // Outside the project, or the project itself (a value such as "."), is not a file to trace.
    return path === '' || path.startsWith('..') || isAbsolute(path) ? [] : [`./${path}`];
  });
}

const nextConfig: NextConfig = {
  // `npm run check:leaks` builds into its own folder so it never disturbs a regular build.
  distDir: process.env.KEYWARD_DIST_DIR || '.next',
  // `NEXT_OUTPUT=standalone npm run build` builds .next/standalone/server.js for container deploys.
  output: process.env.NEXT_OUTPUT === 'standalone' ? 'standalone' : undefined,
  outputFileTracingIncludes: { '/**': tracedRuntimeFiles() },
  // Proxied responses are streamed as the upstream sends them. Next's gzip would buffer SSE events
  // and cost ~13 % on small JSON; compression belongs to the edge (Vercel, nginx) in front of Keyward.
  compress: false,
  poweredByHeader: false,
  // No source maps are shipped to browsers (they would widen what a leak scan must cover).
  productionBrowserSourceMaps: false,
  serverExternalPackages: ['pino', 'oidc-provider'],
  async headers() {
    return [
      {
        source: '/:path*',
        headers: [
          { key: 'X-Content-Type-Options', value: 'nosniff' },
          { key: 'Referrer-Policy', value: 'no-referrer' },
          { key: 'X-Frame-Options', value: 'DENY' },
          // What a page never needs, whatever it renders: being framed, a <base> that moves its relative URLs, plugins.
          // Pages get these and a script-src with a per-request nonce from proxy.ts, whose header replaces this one;
          // anything else (JSON, Auth.js's form pages, a 404 page under /api/) runs no script at all.
          { key: 'Content-Security-Policy', value: "script-src 'none'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'" },
        ],
      },
      {
        // Proxied answers hold what upstreams sent, HTML included: sandboxed. The core sets the same policy on them
        // (lib/core/respond/content-policy.ts; written out here because a container copies this file without lib/,
        // and tests/integration/fast-lane.test.ts checks both lanes send the core's). Later rules win for the same
        // header, and Next's rule replaces a route handler's own.
        source: '/api/proxy/:path*',
        headers: [{ key: 'Content-Security-Policy', value: "sandbox; default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'" }],
      },
    ];
  },
};

export default nextConfig;
