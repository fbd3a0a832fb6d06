import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';

/**
 * lib/client is imported by client components, React Native and Node: bundled for the browser it must need no
 * Node built-in, no `server-only`, and nothing of lib/core at run time (its imports from there are types only).
 */
describe('lib/client is browser-safe', () => {
  it('bundles for the browser from lib/client and eventsource-parser alone', async () => {
    const result = await build({
      entryPoints: ['lib/client/index.ts'],
      bundle: true,
      platform: 'browser',
      format: 'esm',
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    const inputs = Object.keys(result.metafile.inputs);
    expect(inputs.filter((input) => !input.startsWith('lib/client/') && !input.startsWith('node_modules/eventsource-parser/'))).toEqual([]);
    const code = result.outputFiles[0]!.text;
    expect(code).not.toMatch(/server-only|node:|process\.env/);
  });
});
