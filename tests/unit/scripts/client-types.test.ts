import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../../lib/core/config/load';
import { renderClientTypes } from '../../../scripts/client-types';
import { typecheck, withoutExpectErrors } from '../../fixtures/typecheck';

/**
 * `npm run keyward -- types`: run as a real process on a JSON config, then the `.d.ts` it wrote is compiled with a
 * small program that uses it, whose `@ts-expect-error` lines must be errors (and are checked once more with the
 * directives disabled, so each must fail on its own line for the test to pass). The generated types must also be
 * exactly what inference gives a TypeScript adapter declaring the same routes.
 */
const ROOT = resolve(import.meta.dirname, '../../..');

const weather = {
  baseUrl: 'https://api.weather.example/v2/',
  auth: { type: 'header', name: 'x-api-key', secret: { env: 'WEATHER_API_KEY' } },
  routes: [
    {
      method: 'GET',
      path: '/forecast',
      query: {
        required: ['city'],
        properties: {
          city: { type: 'string', maxLength: 80, description: 'City name; a "*/" here must not end the comment' },
          days: { type: 'integer', minimum: 1, maximum: 7 },
          units: { type: 'string', enum: ['metric', 'imperial'] },
        },
      },
      response: {
        type: 'object',
        required: ['city', 'days'],
        properties: {
          city: { type: 'string' },
          days: {
            type: 'array',
            items: { type: 'object', required: ['temp'], properties: { temp: { type: 'number' }, sky: { type: 'string', enum: ['clear', 'cloudy'] } } },
          },
        },
      },
    },
    {
      method: 'POST',
      path: '/alerts/:region',
      body: {
        type: 'object',
        required: ['level'],
        properties: {
          level: { type: 'integer', enum: [1, 2, 3] },
          note: { type: 'string' },
          channels: { type: 'array', items: { type: 'string', enum: ['sms', 'email'] } },
          quiet: { type: 'boolean' },
          extra: { type: 'object' },
        },
      },
    },
    { method: 'DELETE', path: '/alerts/:region/:id' },
    { method: 'GET', path: '/maps/*' },
  ],
};
const config = {
  upstreams: {
    weather,
    echo: { baseUrl: 'https://echo.example/', auth: { type: 'bearer', secret: { env: 'ECHO_KEY' } }, routes: [{ method: 'PUT', path: '/things/:id', body: { type: 'string' } }] },
    files: {
      baseUrl: 'https://files.s3.eu-west-1.amazonaws.com/',
      auth: { type: 'aws-sigv4', service: 's3', region: 'eu-west-1', accessKeyId: { env: 'FILES_KEY_ID' }, secret: { env: 'FILES_SECRET' } },
      routes: [
        { method: 'GET', path: '/objects/*' },
        { method: 'GET', path: '/versions/*', query: { properties: { versionId: { type: 'string' } } } },
      ],
    },
  },
};

/** Uses the generated KeywardApi; compared with what inference gives `defineUpstream` for the same routes. */
const USAGE = `import { expectTypeOf } from 'vitest';
import { createKeywardClient, type ApiOf } from '../../lib/client';
import { defineUpstream } from '../../lib/core/config/load';
import type { KeywardApi } from './keyward-api.generated';

const kw = createKeywardClient<KeywardApi>();

export async function calls(): Promise<void> {
  const forecast = await kw.weather.get('/forecast', { query: { city: 'Paris', days: 3, units: 'metric' } });
  expectTypeOf(forecast).toEqualTypeOf<{ city: string; days: { temp: number; sky?: 'clear' | 'cloudy' }[] }>();
  await kw.weather.post('/alerts/:region', { params: { region: 'eu' }, body: { level: 2, channels: ['sms'], extra: {} } });
  await kw.weather.delete('/alerts/:region/:id', { params: { region: 'eu', id: 7 } });
  await kw.weather.get('/maps/*', { params: { '*': 'tiles/3/4' } });
  await kw.echo.put('/things/:id', { params: { id: 'x' }, body: 'text' });
  // @ts-expect-error -- no such path
  await kw.weather.get('/forcast', { query: { city: 'Paris' } });
  // @ts-expect-error -- no POST route for /forecast
  await kw.weather.post('/forecast', {});
  // @ts-expect-error -- city is required
  await kw.weather.get('/forecast', { query: { days: 3 } });
  // @ts-expect-error -- units is one of the enum's values
  await kw.weather.get('/forecast', { query: { city: 'Paris', units: 'kelvin' } });
  // @ts-expect-error -- days is a number
  await kw.weather.get('/forecast', { query: { city: 'Paris', days: '3' } });
  // @ts-expect-error -- level is 1, 2 or 3
  await kw.weather.post('/alerts/:region', { params: { region: 'eu' }, body: { level: 4 } });
  // @ts-expect-error -- a body field the contract does not declare
  await kw.weather.post('/alerts/:region', { params: { region: 'eu' }, body: { level: 1, colour: 'red' } });
  // @ts-expect-error -- an object spec without properties takes no field
  await kw.weather.post('/alerts/:region', { params: { region: 'eu' }, body: { level: 1, extra: { any: 1 } } });
  // @ts-expect-error -- a parameter name the template does not have
  await kw.weather.delete('/alerts/:region/:id', { params: { region: 'eu', alertId: 7 } });
  // @ts-expect-error -- DELETE is forwarded without a body
  await kw.weather.delete('/alerts/:region/:id', { params: { region: 'eu', id: 7 }, body: {} });
  // @ts-expect-error -- the body is a string
  await kw.echo.put('/things/:id', { params: { id: 'x' }, body: 1 });
  // @ts-expect-error -- a body contract closes the query (servers merge the two)
  await kw.weather.post('/alerts/:region', { params: { region: 'eu' }, body: { level: 1 }, query: { level: 3 } });
  // @ts-expect-error -- an AWS route takes only the query its contract declares, so none without one
  await kw.files.get('/objects/*', { params: { '*': 'a/b.txt' }, query: { acl: '' } });
  await kw.files.get('/objects/*', { params: { '*': 'a/b.txt' } });
  await kw.files.get('/versions/*', { params: { '*': 'a/b.txt' }, query: { versionId: '3' } });
  // @ts-expect-error -- no such upstream
  await kw.nope.get('/forecast');
}

const inferred = defineUpstream('weather', ${JSON.stringify(weather)});
type Fields<T> = { -readonly [K in keyof T]: T[K] extends { query: infer Q; body: infer B; response: infer R } ? { query: Q; body: B; response: R } : never };
expectTypeOf<Fields<KeywardApi['weather']>>().toEqualTypeOf<Fields<ApiOf<[typeof inferred]>['weather']>>();
`;

const USAGE_PATH = join(ROOT, 'tests/types/generated-usage.ts');
const GENERATED_PATH = join(ROOT, 'tests/types/keyward-api.generated.d.ts');

/** `npm run keyward -- …` as a process, in an empty directory (no .env files), with only PATH set. */
function cli(args: readonly string[], cwd: string) {
  const env: Record<string, string> = { PATH: process.env.PATH ?? '', TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json') };
  return spawnSync(join(ROOT, 'node_modules/.bin/tsx'), ['--conditions=react-server', join(ROOT, 'scripts/keyward.ts'), ...args], {
    cwd,
    env: env as NodeJS.ProcessEnv,
    encoding: 'utf8',
  });
}

describe('npm run keyward -- types', { timeout: 120_000 }, () => {
  // The real path: the CLI's working directory is reported as one (macOS's /tmp is a link).
  const dir = realpathSync(mkdtempSync(join(tmpdir(), 'keyward-types-')));
  const configPath = join(dir, 'keyward.json');
  writeFileSync(configPath, JSON.stringify(config));
  const out = join(dir, 'keyward-api.d.ts');
  let run: ReturnType<typeof cli>;
  let generated = '';
  beforeAll(() => {
    run = cli(['types', '--config', configPath, '--out', out], dir);
    generated = readFileSync(out, 'utf8');
  });

  it('writes KeywardApi for the JSON config, read with the runtime loader', () => {
    expect(run.stderr).toContain(`wrote KeywardApi (weather, echo, files) to ${out}`);
    expect(run.status).toBe(0);
    // Named relative to the working directory, so the file is the same on every machine.
    expect(generated).toBe(renderClientTypes(parseConfig(config, configPath), 'keyward.json'));
    expect(generated).toContain('export type KeywardApi = {');
    expect(generated).toContain('"GET /forecast": {');
    expect(generated).toContain('/** City name; a "*\\/" here must not end the comment */');
    // Without --out it prints the same.
    expect(cli(['types', '--config', configPath], dir).stdout).toBe(generated);
  });

  it('compiles, and types calls: every @ts-expect-error line is an error, and exactly those', () => {
    const files = new Map([
      [USAGE_PATH, USAGE],
      [GENERATED_PATH, generated],
    ]);
    expect(typecheck([USAGE_PATH, GENERATED_PATH], files)).toEqual([]);
    const { text, expectedLines } = withoutExpectErrors(USAGE);
    expect(expectedLines).toHaveLength(14);
    const problems = typecheck([USAGE_PATH], new Map([...files, [USAGE_PATH, text]]));
    expect([...new Set(problems.map((problem) => problem.line))].sort((a, b) => a - b)).toEqual(expectedLines);
  });

  it('an invalid config fails as start-up would, naming the field; a bad option is the usage', () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ upstreams: { weather: { ...weather, routes: [{ method: 'GET', path: 'forecast' }] } } }));
    const run = cli(['types', '--config', bad], dir);
    expect(run.status).toBe(1);
    expect(run.stderr).toContain('upstreams.weather.routes.0.path');
    expect(run.stdout).toBe('');
    const usage = cli(['types', '--bogus'], dir);
    expect(usage.status).toBe(2);
    expect(usage.stderr).toContain('usage: npm run keyward -- types [--out <file>] [--config <file>]');
  });
});

describe('renderClientTypes', () => {
  it("names where createKeywardClient comes from in both layouts: the package's keyward/client and a checkout's lib/client", () => {
    const header = renderClientTypes([], 'config/keyward.json').split(' */')[0]!;
    expect(header).toContain('`keyward/client`');
    expect(header).toContain('`@/lib/client` in a Keyward checkout');
    expect(header).not.toContain('(lib/client)');
  });

  it('renders zod contracts (presets) through their JSON Schema, and what has no TypeScript reading as unknown', async () => {
    const { z } = await import('zod');
    const { defineUpstream } = await import('../../../lib/core/config/load');
    const upstream = defineUpstream('zod', {
      baseUrl: 'https://zod.example/',
      auth: { type: 'bearer', secret: { env: 'ZOD_KEY' } },
      routes: [
        {
          method: 'POST',
          path: '/a',
          body: z.object({ name: z.string(), count: z.number().int().optional(), kind: z.enum(['x', 'y']), tags: z.array(z.union([z.string(), z.number()])), when: z.date().optional() }),
          response: z.object({ ok: z.boolean(), map: z.record(z.string(), z.number()), value: z.string().nullable() }),
        },
      ],
    });
    const text = renderClientTypes([upstream], 'test');
    expect(text).toContain('"name": string;');
    expect(text).toContain('"count"?: number;');
    expect(text).toContain('"kind": "x" | "y";');
    expect(text).toContain('"tags": (string | number)[];');
    expect(text).toContain('"when"?: unknown;');
    expect(text).toContain('[key: string]: number;');
    expect(text).toContain('"value": string | null;');
  });

  it('writes descriptions with control characters and bidirectional overrides as escapes', () => {
    const hostile = 'Safe.\u202e;)(lave\u202c \u2066hidden\u2069 \u200fx\u200e \x1b[2J\x1b]8;;https://evil.example\x07link \x85\x7f\x00end';
    const definitions = parseConfig(
      {
        upstreams: {
          docs: {
            baseUrl: 'https://docs.example/',
            auth: { type: 'bearer', secret: { env: 'DOCS_KEY' } },
            routes: [{ method: 'GET', path: '/search', query: { properties: { q: { type: 'string', description: hostile } } } }],
          },
        },
      },
      'test',
    );
    const text = renderClientTypes(definitions, 'keyward.json');
    expect(text).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]/);
    expect(text).toContain(
      '/** Safe.\\u202e;)(lave\\u202c \\u2066hidden\\u2069 \\u200fx\\u200e \\u001b[2J\\u001b]8;;https://evil.example\\u0007link \\u0085\\u007f\\u0000end */',
    );
  });

  it('leaves out an optional request field named as an Object.prototype member (TypeScript would refuse every call), and says so', () => {
    const definitions = parseConfig(
      {
        upstreams: {
          api: {
            baseUrl: 'https://api.example/',
            auth: { type: 'bearer', secret: { env: 'API_KEY' } },
            routes: [
              { method: 'GET', path: '/items', query: { properties: { constructor: { type: 'string' }, q: { type: 'string' } } } },
              {
                method: 'POST',
                path: '/items',
                body: {
                  type: 'object',
                  required: ['valueOf'],
                  properties: { valueOf: { type: 'integer' }, meta: { type: 'object', properties: { toString: { type: 'string' }, tag: { type: 'string' } } } },
                },
                response: { type: 'object', properties: { constructor: { type: 'string' } } },
              },
            ],
          },
        },
      },
      'test',
    );
    const warnings: string[] = [];
    const text = renderClientTypes(definitions, 'keyward.json', (message) => warnings.push(message));
    expect(warnings).toEqual([
      'api GET /items: the optional field query.constructor is left out of the typed client\'s types (TypeScript reads an optional field of that name from Object.prototype, and would refuse every call to the route)',
      'api POST /items: the optional field body.meta.toString is left out of the typed client\'s types (TypeScript reads an optional field of that name from Object.prototype, and would refuse every call to the route)',
    ]);
    // A required one, and one in a response, are kept.
    expect(text).toContain('"valueOf": number;');
    expect(text).toContain('"constructor"?: string;');
    const usage = `import { createKeywardClient } from '../../lib/client';
import type { KeywardApi } from './keyward-api.generated';

const kw = createKeywardClient<KeywardApi>();

export async function calls(): Promise<void> {
  await kw.api.get('/items', { query: { q: 'x' } });
  await kw.api.post('/items', { body: { valueOf: 1, meta: { tag: 't' } } });
}
`;
    expect(typecheck([USAGE_PATH, GENERATED_PATH], new Map([[USAGE_PATH, usage], [GENERATED_PATH, text]]))).toEqual([]);
    // `types` says so on stderr.
    const dir = realpathSync(mkdtempSync(join(tmpdir(), 'keyward-types-')));
    const file = join(dir, 'keyward.json');
    writeFileSync(file, JSON.stringify({ upstreams: { api: definitions[0]!.config } }));
    const run = cli(['types', '--config', file], dir);
    expect(run.status, run.stderr).toBe(0);
    expect(run.stderr).toContain(`keyward: warning: ${warnings[0]}`);
  });
});
