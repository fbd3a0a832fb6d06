/**
 * `npm run build` (after `next build`): bundles server.ts, the fast lane, into `<distDir>/keyward-server.mjs`,
 * which `npm start` runs (scripts/start.mjs), and next-server.ts, the Next.js process it starts, into
 * `<distDir>/keyward-next.mjs`, and scripts/keyward.ts, the command line, into `<distDir>/keyward-cli.mjs`. Bundled because lib/ is TypeScript with extensionless imports,
 * `@/` and `keyward/…` aliases and `import 'server-only'` (which only resolves under the `react-server`
 * condition): plain Node cannot load it, and tsx is a devDependency. Packages stay external (loaded from
 * node_modules at run time, so `npm ci --omit=dev` after the build is enough), except `server-only`, resolved here
 * to its empty module.
 * distDir follows next.config.ts: KEYWARD_DIST_DIR, else `.next`.
 */
import { build } from 'esbuild';
import { join } from 'node:path';

const distDir = process.env.KEYWARD_DIST_DIR || '.next';

await build({
  // The fast lane, and the Next.js process it starts for everything outside /api/proxy; the operators' command line
  // (scripts/keyward.ts), for a production host or image that has no tsx: `node .next/keyward-cli.mjs <command>`.
  entryPoints: { 'keyward-server': 'server.ts', 'keyward-next': 'next-server.ts', 'keyward-cli': 'scripts/keyward.ts' },
  outdir: distDir,
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node22',
  conditions: ['react-server'],
  tsconfig: 'tsconfig.json',
  logLevel: 'warning',
  legalComments: 'none',
  // keyward-server.mjs.map beside it, not referenced from the bundle: `npm run bench -- --profile` maps the fast
  // lane's frames to lib/ with it (as it does Next's chunks); `node --enable-source-maps` can use it too.
  sourcemap: 'external',
  plugins: [
    {
      name: 'keyward-externals',
      setup(builder) {
        // Bare package imports (not `@/…`, not relative, not server-only) are loaded from node_modules at run time.
        // `keyward/…` is this repository's own library (tsconfig.json `paths` map it to lib/), so it is bundled.
        const bundled = (path) => path === 'server-only' || path.startsWith('@/') || path.startsWith('keyward/');
        builder.onResolve({ filter: /^[^./]/ }, (args) => {
          if (bundled(args.path)) return undefined;
          return { path: args.path, external: true };
        });
      },
    },
  ],
});
console.log(`Fast lane bundled into ${join(distDir, 'keyward-server.mjs')} (and keyward-next.mjs, keyward-cli.mjs)`);
