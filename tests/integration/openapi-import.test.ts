import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readConfigFile } from '../../lib/core/config/load';
import { randomSecret } from '../fixtures/secrets';
import { createHarness, expectKeywardError, expectNoSecrets, expectNoSecretsInLogs, type Harness } from './harness';

/**
 * `npm run keyward -- import` as a real process (tsx, as `npm run keyward` runs it) on the trimmed Swagger
 * Petstore checked into tests/fixtures/openapi: non-interactive (`--operations`), written into a config file,
 * read back with the loader start-up uses, then served by the core pipeline against a real node:http upstream
 * (tests/integration/harness.ts): the contracts from the spec refuse what it does not declare, and the
 * credential from the environment reaches the upstream.
 */

const ROOT = resolve(import.meta.dirname, '../..');
const TSX = join(ROOT, 'node_modules/.bin/tsx');
const SCRIPT = join(ROOT, 'scripts/keyward.ts');
const PETSTORE = join(ROOT, 'tests/fixtures/openapi/petstore.yaml');
const OPERATIONS = 'GET /pet/findByStatus,findPetsByTags,getPetById,POST /pet,placeOrder';

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** The CLI's working directory: empty (no .env files), fresh for the file. */
const workDir = mkdtempSync(join(tmpdir(), 'keyward-import-'));

/**
 * Runs the CLI to completion with stdin closed (not a terminal). Synchronous, so it can run inside the
 * harness's `upstreams` callback, which is where the test upstream's origin is first known.
 */
function cli(args: readonly string[], cwd = workDir): Run {
  // A shell with none of Keyward's settings; tsx would look for tsconfig.json in the working directory.
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? tmpdir(),
    TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json'),
  };
  const result = spawnSync(TSX, ['--conditions=react-server', SCRIPT, ...args], {
    cwd,
    env: env as NodeJS.ProcessEnv,
    input: '',
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

let harness: Harness;
let first: Run;
const configFile = join(workDir, 'config/keyward.json');
const key = randomSecret('pet');

beforeAll(async () => {
  harness = await createHarness({
    secretEnv: { PETSTORE_API_KEY: key },
    upstreams: (origin) => {
      first = cli([
        'import',
        PETSTORE,
        '--upstream',
        'petstore',
        '--operations',
        OPERATIONS,
        '--auth',
        'api_key',
        '--base-url',
        `${origin}/api/v3`,
      ]);
      if (first.code !== 0) return [];
      return readConfigFile(configFile);
    },
  });
}, 120_000);

afterAll(async () => {
  await harness?.close();
});

describe('keyward import <spec> --upstream <id> --operations …', { timeout: 120_000 }, () => {
  it('writes the upstream into a new config file with $schema, and says what to set', () => {
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain(
      'keyward: wrote upstream "petstore" to config/keyward.json: 5 routes to http://127.0.0.1:',
    );
    expect(first.stdout).toContain('Credential: header "api_key", from PETSTORE_API_KEY');
    expect(first.stdout).toContain('set PETSTORE_API_KEY=… in .env.local');
    // The typed client's types are the step after check-config (README "Call it from the frontend").
    expect(first.stdout).toContain('  4. npm run keyward -- types --out keyward-api.d.ts');
    // Warnings go to stderr, each naming its operation.
    expect(first.stderr).toContain(
      '  - GET /pet/findByStatus: asks for petstore_auth; Keyward attaches "api_key" to every route of this upstream',
    );
    const written = JSON.parse(readFileSync(configFile, 'utf8')) as {
      $schema: string;
      upstreams: Record<string, { routes: unknown[]; auth: unknown }>;
    };
    expect(written.$schema).toBe('../keyward.schema.json');
    expect(Object.keys(written.upstreams)).toEqual(['petstore']);
    expect(written.upstreams.petstore!.auth).toEqual({
      type: 'header',
      name: 'api_key',
      secret: { env: 'PETSTORE_API_KEY' },
    });
    expect(written.upstreams.petstore!.routes).toHaveLength(5);
    expect(readFileSync(configFile, 'utf8')).not.toContain(key);
  });

  it("gives each route the success response's type: `keyward types` renders it for the typed client", () => {
    const written = JSON.parse(readFileSync(configFile, 'utf8')) as {
      upstreams: { petstore: { routes: Array<{ method: string; path: string; response?: unknown }> } };
    };
    const byId = written.upstreams.petstore.routes.find((r) => r.method === 'GET' && r.path === '/pet/{petId:int}')!;
    expect(byId.response).toMatchObject({ type: 'object', required: ['name', 'photoUrls'] });
    const types = cli(['types', '--config', configFile]);
    expect(types.code, types.stderr).toBe(0);
    const pet = types.stdout.slice(types.stdout.indexOf('"GET /pet/{petId:int}": {'));
    expect(pet).toMatch(
      /^"GET \/pet\/\{petId:int\}": \{\s+query: Record<string, never>;\s+body: never;\s+response: \{\s+"id"\?: number;\s+"name": string;/,
    );
    expect(pet).toContain('"photoUrls": string[];');
  });

  it('a valid query is forwarded with the key from the environment; an unknown or out-of-enum one is refused', async () => {
    const sent = harness.upstream.requests.length;
    const ok = await harness.call(['pet', 'findByStatus'], { upstream: 'petstore', query: '?status=sold' });
    expect(ok.response.status, ok.text).toBe(200);
    const received = harness.upstream.requests.at(-1)!;
    expect(received.url).toBe('/api/v3/pet/findByStatus?status=sold');
    expect(received.headers['api_key']).toBe(key);
    expectNoSecrets(harness.secrets, ok.response, ok.text);

    expectKeywardError(
      await harness.call(['pet', 'findByStatus'], { upstream: 'petstore', query: '?status=lost' }),
      400,
      'contract_violation',
      harness,
    );
    expectKeywardError(
      await harness.call(['pet', 'findByStatus'], { upstream: 'petstore', query: '?debug=1' }),
      400,
      'contract_violation',
      harness,
    );
    expect(harness.upstream.requests.length).toBe(sent + 1);

    const tags = await harness.call(['pet', 'findByTags'], { upstream: 'petstore', query: '?tags=a&tags=b' });
    expect(tags.response.status).toBe(200);
    expect(harness.upstream.requests.at(-1)!.url).toBe('/api/v3/pet/findByTags?tags=a&tags=b');
  });

  it('literal paths win over templates, and only the imported operations are routes', async () => {
    const pet = await harness.call(['pet', '12'], { upstream: 'petstore' });
    expect(pet.response.status).toBe(200);
    expect(harness.upstream.requests.at(-1)!.url).toBe('/api/v3/pet/12');
    // getPetById has no query parameters: its query contract is empty, so any query is refused.
    expectKeywardError(
      await harness.call(['pet', '12'], { upstream: 'petstore', query: '?status=sold' }),
      400,
      'contract_violation',
      harness,
    );
    // petId is an integer: another segment is no pet.
    expectKeywardError(await harness.call(['pet', 'cat'], { upstream: 'petstore' }), 404, 'route_not_found', harness);
    // DELETE /pet/{petId} was not selected.
    expectKeywardError(
      await harness.call(['pet', '12'], { upstream: 'petstore', method: 'DELETE' }),
      405,
      'method_not_allowed',
      harness,
    );
    expectKeywardError(
      await harness.call(['store', 'inventory'], { upstream: 'petstore' }),
      404,
      'route_not_found',
      harness,
    );
  });

  it('the JSON body contract: a valid pet is forwarded re-serialised, an undeclared field refused', async () => {
    const pet = { name: 'Rex', photoUrls: ['https://example.com/rex.png'], status: 'available' };
    const json = { 'content-type': 'application/json' };
    const ok = await harness.call(['pet'], {
      upstream: 'petstore',
      method: 'POST',
      headers: json,
      body: `{ "name": "Rex",\n "photoUrls": ${JSON.stringify(pet.photoUrls)}, "status": "available" }`,
    });
    expect(ok.response.status, ok.text).toBe(200);
    const received = harness.upstream.requests.at(-1)!;
    expect(received.url).toBe('/api/v3/pet');
    expect(JSON.parse(received.bodyPreview.toString('utf8'))).toEqual(pet);
    expect(received.bodyPreview.toString('utf8')).toBe(JSON.stringify(pet));

    const sent = harness.upstream.requests.length;
    expectKeywardError(
      await harness.call(['pet'], {
        upstream: 'petstore',
        method: 'POST',
        headers: json,
        body: JSON.stringify({ ...pet, owner: 'mallory' }),
      }),
      400,
      'contract_violation',
      harness,
    );
    expectKeywardError(
      await harness.call(['pet'], {
        upstream: 'petstore',
        method: 'POST',
        headers: json,
        body: JSON.stringify({ name: 'Rex' }),
      }),
      400,
      'contract_violation',
      harness,
    );
    expectKeywardError(
      await harness.call(['store', 'order'], {
        upstream: 'petstore',
        method: 'POST',
        headers: json,
        body: JSON.stringify({ status: 'lost' }),
      }),
      400,
      'contract_violation',
      harness,
    );
    expect(harness.upstream.requests.length).toBe(sent);
    expectNoSecretsInLogs(harness);
  });

  it('refuses to replace an upstream without --force; adds another beside it, keeping the file', () => {
    const again = cli(['import', PETSTORE, '--upstream', 'petstore', '--operations', 'getPetById']);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(
      'keyward: config/keyward.json already has an upstream "petstore": pass --force to replace it, or choose another --upstream\n',
    );
    const before = JSON.parse(readFileSync(configFile, 'utf8')) as { upstreams: Record<string, unknown> };

    const other = cli(['import', PETSTORE, '--upstream', 'petstore-admin', '--operations', 'DELETE /pet/{petId}']);
    expect(other.code, other.stderr).toBe(0);
    const after = JSON.parse(readFileSync(configFile, 'utf8')) as {
      $schema: string;
      upstreams: Record<string, unknown>;
    };
    expect(after.$schema).toBe('../keyward.schema.json');
    expect(Object.keys(after.upstreams)).toEqual(['petstore', 'petstore-admin']);
    expect(after.upstreams.petstore).toEqual(before.upstreams.petstore);
    expect(readConfigFile(configFile).map((definition) => definition.id)).toEqual(['petstore', 'petstore-admin']);

    const forced = cli(['import', PETSTORE, '--upstream', 'petstore', '--operations', 'getPetById', '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    const replaced = JSON.parse(readFileSync(configFile, 'utf8')) as {
      upstreams: Record<string, { routes: unknown[]; baseUrl: string }>;
    };
    expect(replaced.upstreams.petstore!.routes).toEqual([
      // petId is an integer: `/pet/{petId:int}` cannot serve the operations not chosen (findByStatus, findByTags).
      {
        method: 'GET',
        path: '/pet/{petId:int}',
        query: { properties: {} },
        response: expect.objectContaining({ type: 'object' }),
      },
    ]);
    expect(replaced.upstreams.petstore!.baseUrl).toBe('https://petstore3.swagger.io/api/v3/');
  });

  it('imports run at once into one file keep every upstream; a symbolic link stays one, and the file keeps its mode', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-import-race-'));
    mkdirSync(join(dir, 'config'));
    // The config kept elsewhere (a mounted secret, say), linked in, and readable by its owner only.
    const real = join(dir, 'shared.json');
    writeFileSync(real, '{"upstreams": {}}\n', { mode: 0o600 });
    symlinkSync(real, join(dir, 'config', 'keyward.json'));
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? tmpdir(), TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json') };
    const run = (id: string) =>
      new Promise<number | null>((done, fail) => {
        const child = spawn(TSX, ['--conditions=react-server', SCRIPT, 'import', PETSTORE, '--upstream', id, '--operations', 'getPetById'], {
          cwd: dir,
          env: env as NodeJS.ProcessEnv,
          stdio: ['ignore', 'ignore', 'ignore'],
        });
        child.on('error', fail);
        child.on('close', done);
      });
    const ids = ['up1', 'up2', 'up3', 'up4', 'up5', 'up6'];
    expect(await Promise.all(ids.map(run))).toEqual(ids.map(() => 0));
    expect(lstatSync(join(dir, 'config', 'keyward.json')).isSymbolicLink()).toBe(true);
    expect(statSync(real).mode & 0o777).toBe(0o600);
    const written = JSON.parse(readFileSync(real, 'utf8')) as { upstreams: Record<string, unknown> };
    expect(Object.keys(written.upstreams).sort()).toEqual(ids);
  }, 120_000);

  it('a small document whose shared $refs fan out past 16 MB of config is refused, naming why; nothing is written', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-import-fan-'));
    // Each level's ten properties all refer to the next level: 10^7 leaves per body, written in place.
    const schemas: Record<string, unknown> = { L7: { type: 'string' } };
    for (let level = 0; level < 7; level++) {
      const properties = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`p${i}`, { $ref: `#/components/schemas/L${level + 1}` }]));
      schemas[`L${level}`] = { type: 'object', properties };
    }
    const paths = Object.fromEntries(
      Array.from({ length: 30 }, (_, i) => [
        `/things${i}`,
        { post: { operationId: `make${i}`, requestBody: { content: { 'application/json': { schema: { $ref: '#/components/schemas/L0' } } } }, responses: { '204': { description: 'done' } } } },
      ]),
    );
    const spec = join(dir, 'fan.json');
    writeFileSync(spec, JSON.stringify({ openapi: '3.0.3', info: { title: 'Fan', version: '1' }, paths, components: { schemas } }));
    expect(readFileSync(spec).length).toBeLessThan(16 * 1024);
    const run = cli(['import', spec, '--upstream', 'fan', '--all', '--base-url', 'https://api.example.com/'], dir);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('write out to more than 16 MB of config');
    expect(existsSync(join(dir, 'config', 'keyward.json'))).toBe(false);
  }, 120_000);

  it('--all says which operations it could not import, and why', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-import-'));
    const ok = { responses: { '200': { description: 'ok' } } };
    const spec = join(dir, 'parts.json');
    writeFileSync(
      spec,
      JSON.stringify({
        openapi: '3.0.3',
        info: { title: 'Parts', version: '1' },
        paths: { '/items/{id}': { get: { operationId: 'getItem', ...ok } }, '/v/{ver}{ext}': { get: { operationId: 'getVersion', ...ok } } },
      }),
    );
    const run = cli(['import', spec, '--upstream', 'parts', '--all', '--base-url', 'https://api.example.com/'], dir);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/GET \/v\/\{ver\}\{ext\}: not imported: \S/);
    const written = JSON.parse(readFileSync(join(dir, 'config', 'keyward.json'), 'utf8')) as { upstreams: { parts: { routes: Array<{ path: string }> } } };
    expect(written.upstreams.parts.routes.map((route) => route.path)).toEqual(['/items/:id']);
  });

  it('without a terminal it needs --operations or --all (exit 2); nothing is written', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-import-'));
    const run = cli(['import', PETSTORE, '--upstream', 'petstore'], dir);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('no terminal to ask which operations to expose: pass --operations');
    expect(run.stderr).toContain('usage: npm run keyward -- import <openapi.json|yaml> --upstream <id>');
    expect(existsSync(join(dir, 'config'))).toBe(false);
    for (const args of [
      ['import'],
      ['import', PETSTORE],
      ['import', PETSTORE, '--upstream', 'Bad Id', '--all'],
      ['import', PETSTORE, '--upstream', 'p', '--all', '--operations', 'addPet'],
    ]) {
      const bad = cli(args, dir);
      expect(bad.code, args.join(' ')).toBe(2);
      expect(bad.stdout).toBe('');
    }
    expect(existsSync(join(dir, 'config'))).toBe(false);

    const all = cli(['import', PETSTORE, '--upstream', 'petstore', '--all', '--out', 'keyward.json'], dir);
    expect(all.code, all.stderr).toBe(0);
    const written = JSON.parse(readFileSync(join(dir, 'keyward.json'), 'utf8')) as {
      $schema: string;
      upstreams: { petstore: { routes: unknown[] } };
    };
    expect(written.$schema).toBe('keyward.schema.json');
    expect(written.upstreams.petstore.routes).toHaveLength(10);
  });

  it('--help lists the command and its options', () => {
    const help = cli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(
      /^ {2}import <spec> {2,}add an upstream \(--upstream <id>\) from an OpenAPI 3\.0\/3\.1 document/m,
    );
    for (const option of ['--operations <list> | --all', '--base-url <url>', '--auth <scheme>', '--force'])
      expect(help.stdout).toContain(`  ${option}  `);
  });

  it('a bad document exits 1 naming the JSON pointer of the problem', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-import-'));
    mkdirSync(join(dir, 'specs'));
    const spec = {
      openapi: '3.1.0',
      info: { title: 'Bad', version: '1' },
      servers: [{ url: 'https://api.example.com' }],
      paths: {
        '/things/{id}': {
          get: {
            parameters: [{ name: 'id', in: 'path', required: true, schema: { $ref: '#/components/schemas/Id' } }],
            responses: {},
          },
        },
      },
    };
    writeFileSync(join(dir, 'specs/bad.json'), JSON.stringify(spec));
    const run = cli(['import', 'specs/bad.json', '--upstream', 'bad', '--all'], dir);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe(
      'keyward: the OpenAPI document is invalid at #/paths/~1things~1{id}/get/parameters/0/schema/$ref: "#/components/schemas/Id" does not resolve to anything in the document\n',
    );
    expect(existsSync(join(dir, 'config'))).toBe(false);
    expect(cli(['import', 'specs/missing.yaml', '--upstream', 'bad', '--all'], dir).stderr).toBe(
      'keyward: cannot read specs/missing.yaml (ENOENT)\n',
    );
  });
});
