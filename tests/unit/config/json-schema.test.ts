import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../../lib/core/config/load';

describe('keyward.schema.json', () => {
  it('is what `npm run schema` generates from the zod schema (regenerate it when the schema changes)', () => {
    const generated = execFileSync(process.execPath, ['node_modules/tsx/dist/cli.mjs', '--conditions=react-server', 'scripts/keyward.ts', 'schema'], {
      encoding: 'utf8',
    });
    expect(JSON.parse(readFileSync('keyward.schema.json', 'utf8'))).toEqual(JSON.parse(generated));
  });

  it('accepts the shipped demo config, which points editors at it through $schema', () => {
    const demo = JSON.parse(readFileSync('config/demo.json', 'utf8')) as { $schema: string };
    expect(demo.$schema).toBe('../keyward.schema.json');
    expect(parseConfig(demo, 'config/demo.json').map((u) => u.id)).toEqual(['demo', 'demo-own']);
  });
});
