import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../../lib/core/config/load';
import { CONNECTION_ID } from '../../../lib/core/connect/config';

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

  it('gives editors the id patterns the loader enforces: an upstream id it refuses is flagged, and the same for connection ids', () => {
    const schema = JSON.parse(readFileSync('keyward.schema.json', 'utf8')) as {
      properties: Record<string, { propertyNames: { $ref: string } }>;
      $defs: Record<string, { pattern?: string }>;
    };
    const idPattern = (section: string) => {
      const pattern = schema.$defs[schema.properties[section]!.propertyNames.$ref.split('/').pop()!]!.pattern;
      expect(pattern, section).toBeDefined();
      return new RegExp(pattern!, 'u');
    };
    const upstreamId = idPattern('upstreams');
    const upstream = { baseUrl: 'https://api.example.com/', auth: { type: 'header', name: 'x-api-key', secret: { env: 'K' } }, routes: [{ method: 'GET', path: '/x' }] };
    for (const id of ['api', 'my_api-2', '0', 'a'.repeat(63), 'a'.repeat(64), '-api', '_api', 'Api', 'my api', 'ä', '']) {
      let loads = true;
      try {
        parseConfig({ upstreams: { [id]: upstream } }, 't');
      } catch {
        loads = false;
      }
      expect(upstreamId.test(id), `upstream id ${JSON.stringify(id)}`).toBe(loads);
    }
    expect(idPattern('connections').source).toBe(CONNECTION_ID.source);
  });
});
