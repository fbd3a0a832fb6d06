import nextVitals from 'eslint-config-next/core-web-vitals';
import nextTs from 'eslint-config-next/typescript';

const config = [
  ...nextVitals,
  ...nextTs,
  {
    ignores: ['.next/**', '.next-*/**', 'node_modules/**', 'next-env.d.ts', 'test-results/**', 'playwright-report/**', '.keyward/**', 'dist/**'],
  },
  {
    // lib/core is framework-free: only lib/next may import Next.js.
    files: ['lib/core/**', 'lib/store/**'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: ['next', 'next/*', 'next-auth', 'next-auth/*'], message: 'lib/core must not import Next.js; put the glue in lib/next.' }] }],
    },
  },
  {
    // lib/client runs in browsers and React Native: from the server side it may import types only.
    files: ['lib/client/**'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['**/core/**', '**/next/**', '**/node/**', '**/store/**', '@/*', 'server-only', 'node:*', 'next', 'next/*', 'zod'],
              allowTypeImports: true,
              message: 'lib/client is browser code: import server modules (and zod) with `import type` only.',
            },
          ],
        },
      ],
    },
  },
];

export default config;
