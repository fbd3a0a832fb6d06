import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as zod from 'zod';
import * as client from '../../lib/client';
import * as core from '../../lib/core/index';
import { parseConfig, type UpstreamDefinition } from '../../lib/core/config/load';
import { REDACTED } from '../../lib/core/log/scrub';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { createFastLane } from '../../lib/node/fast-lane';
import { capturingLogger, findLeak, responseText } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { typecheck } from '../fixtures/typecheck';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * README.md's "## Add an upstream" walkthrough, run as written: its code blocks are read from the README (so this
 * test breaks when the README drifts from the code) and used unchanged, except for what cannot run here:
 *  - `https://api.weather.example/v2/` does not exist: where Keyward must reach it, it is replaced by a loopback
 *    node:http upstream (tests/fixtures/upstream.ts) under the same `/v2/` prefix. The CLI steps get the block
 *    verbatim (they never call the upstream).
 *  - there is no browser: the page's `fetch` (which resolves `/api/proxy/…` against the page's origin and adds the
 *    session cookie, Origin and Fetch Metadata) is played by a wrapper around Node's fetch, installed as the
 *    global `fetch` while a README snippet runs, since both the snippets and lib/client call the global one.
 *  - the secrets are random values in place of `…your key…`.
 * Keyward itself is the fast lane (lib/node/fast-lane.ts, what `npm start` serves) on loopback, configured by
 * KEYWARD_CONFIG as the server is; the CLI is a real process (`npm run keyward`'s tsx command, as
 * tests/integration/cli.test.ts runs it) in a fresh directory that plays the project's root.
 */
const ROOT = resolve(import.meta.dirname, '../..');
const TSX = join(ROOT, 'node_modules/.bin/tsx');
const SCRIPT = join(ROOT, 'scripts/keyward.ts');
const START = '## Add an upstream';
const END = '## Call it from the frontend: the typed client';
/** The README's example upstream: what the loopback upstream stands in for. */
const README_BASE_URL = 'https://api.weather.example/v2/';
const PLACEHOLDER = '…your key…';

// ---------------------------------------------------------------------------------------------- the README

const section = readSection();
/** The section's prose with line breaks and runs of spaces as one space, for sentences that may be rewrapped. */
const prose = section.replace(/\s+/g, ' ');

function readSection(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf(`\n${START}\n`);
  const end = readme.indexOf(`\n${END}\n`, start);
  if (start < 0 || end < 0)
    throw new Error(
      `README.md: no section from "${START}" to "${END}": the walkthrough moved; update this test with it`,
    );
  return readme.slice(start, end);
}

/** The one fenced block of this language in the section that contains `marker`; fails naming what is missing. */
function block(lang: string, marker: string): string {
  const found = [...section.matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].filter(
    ([, tag, text]) => tag === lang && text!.includes(marker),
  );
  if (found.length !== 1) {
    throw new Error(
      `README.md "${START}": expected one \`\`\`${lang} block containing ${JSON.stringify(marker)}, found ${found.length}; the walkthrough changed, update this test with it`,
    );
  }
  return found[0]![2]!;
}

/** `npm run keyward -- <args>` as the README writes it (a trailing `# comment` dropped): the CLI's arguments. */
function keywardArgs(command: string): string[] {
  const match = /^npm run keyward -- (.+?)\s*(?:#.*)?$/.exec(command.trim());
  if (!match) throw new Error(`README.md "${START}": not an \`npm run keyward -- …\` command: ${command}`);
  return match[1]!.split(/\s+/);
}

/** The README's example URL replaced by the loopback upstream's, the one change the config needs to run here. */
function onLoopback(text: string): string {
  expect(text.split(README_BASE_URL).length - 1, `the block names ${README_BASE_URL} once`).toBe(1);
  return text.replace(README_BASE_URL, `${upstream.origin}/v2/`);
}

/** A `.env` block with the placeholder filled in; refuses a placeholder or line this test does not know. */
function dotenv(text: string, values: Readonly<Record<string, string>>): string {
  const lines = text.split('\n').filter((line) => line.trim() !== '');
  for (const line of lines) expect(line, 'each line of the .env block is NAME=value').toMatch(/^[A-Z][A-Z0-9_]*=\S/);
  const filled = lines.map((line) => {
    const name = line.slice(0, line.indexOf('='));
    return line.includes(PLACEHOLDER) ? `${name}=${values[name] ?? fail(`no value for ${name}`)}` : line;
  });
  expect(filled.join('\n')).not.toContain('…');
  return `${filled.join('\n')}\n`;
}

function fail(message: string): never {
  throw new Error(message);
}

/**
 * Runs a README TypeScript snippet: transpiled to CommonJS (types erased, nothing checked: typecheck() does that),
 * then evaluated in a function scope whose `require` serves only the modules named in `modules`. The snippet's
 * top-level `await` is valid in the async function's body. `result` is an expression evaluated after it.
 */
async function runSnippet(
  source: string,
  modules: Readonly<Record<string, unknown>>,
  result: string,
): Promise<unknown> {
  const { outputText } = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 },
  });
  const require = (name: string) =>
    Object.hasOwn(modules, name)
      ? modules[name]
      : fail(`the README snippet imports ${name}, which this test does not provide`);
  const AsyncFunction = (async () => {}).constructor as new (
    ...parameters: string[]
  ) => (...args: unknown[]) => Promise<unknown>;
  const exports: Record<string, unknown> = {};
  return new AsyncFunction('require', 'exports', `${outputText}\nreturn (${result});`)(require, exports);
}

// ------------------------------------------------------------------------------------------------ the setup

let upstream: TestUpstream;
/** The directory the CLI runs in: the project's root in the walkthrough (`config/keyward.json`, `.env.local`). */
let project: string;
/** The value given to WEATHER_API_KEY in place of `…your key…`. */
const weatherKey = randomSecret('weather');

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * `npm run keyward -- <args>` in the project directory. The command is package.json's (tsx with the react-server
 * condition), run directly since npm would run it in the checkout's root; the environment is a bare shell's, so
 * the settings come from `.env.local` as the README says, and NODE_ENV is unset: development.
 */
function keyward(args: readonly string[]): Promise<Run> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? tmpdir(),
    ...(process.env.TMPDIR ? { TMPDIR: process.env.TMPDIR } : {}),
    // tsx would look for tsconfig.json in the working directory.
    TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json'),
  };
  return new Promise((done, reject) => {
    const child = spawn(TSX, ['--conditions=react-server', SCRIPT, ...args], {
      cwd: project,
      env: env as NodeJS.ProcessEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', reject);
    child.on('close', (code) =>
      done({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') }),
    );
  });
}

/** Keyward as `npm start` serves it: the fast lane on loopback, with a signed-in user's cookie and the page's fetch. */
interface Site {
  readonly origin: string;
  readonly runtime: Runtime;
  readonly logs: string[];
  /** Every answer the page's fetch received (status, headers, body), for the leak check. */
  readonly answers: string[];
  /** `fetch` as a page on this site has it (see the file's comment). */
  readonly pageFetch: typeof fetch;
  close(): Promise<void>;
}

const nodeFetch = globalThis.fetch;

async function startSite(
  env: Readonly<Record<string, string>>,
  upstreams: readonly UpstreamDefinition[] = [],
): Promise<Site> {
  const server: Server = createServer();
  server.keepAliveTimeout = 1_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const secrets = testSessionSecrets();
  const { logger, lines } = capturingLogger();
  const runtime = createRuntime({
    env: { ...secrets, ...env, AUTH_URL: origin, KEYWARD_STORE: 'memory' },
    upstreams,
    logger,
  });
  server.on(
    'request',
    createFastLane({
      deps: runtime,
      origin: () => origin,
      // Next's place (pages): nothing here.
      next: (_req, res) => {
        res.writeHead(404);
        res.end();
      },
    }),
  );
  const cookie = await sessionCookie(secrets.AUTH_SECRET, { roles: ['user'] });
  const answers: string[] = [];
  const pageFetch: typeof fetch = async (input, init) => {
    const request = new Request(new URL(input instanceof Request ? input.url : String(input), origin), init);
    if (new URL(request.url).origin !== origin) return nodeFetch(input, init);
    // What a browser adds to a same-origin fetch with the default `credentials: 'same-origin'`
    // (https://fetch.spec.whatwg.org/#http-network-or-cache-fetch): the cookie, Origin on anything but GET/HEAD,
    // and Fetch Metadata (https://www.w3.org/TR/fetch-metadata/).
    const headers = new Headers(request.headers);
    headers.set('cookie', cookie);
    if (request.method !== 'GET' && request.method !== 'HEAD') headers.set('origin', origin);
    headers.set('sec-fetch-site', 'same-origin');
    headers.set('sec-fetch-mode', 'cors');
    const response = await nodeFetch(new Request(request, { headers }));
    answers.push((await responseText(response.clone())).text);
    return response;
  };
  return {
    origin,
    runtime,
    logs: lines,
    answers,
    pageFetch,
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close').catch(() => {});
      await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
      await runtime.store.close();
    },
  };
}

/** Runs `run` with the page's fetch as the global `fetch`, as in the browser tab the snippet would run in. */
async function inThePage<T>(site: Site, run: () => Promise<T>): Promise<T> {
  globalThis.fetch = site.pageFetch;
  try {
    return await run();
  } finally {
    globalThis.fetch = nodeFetch;
  }
}

/** What the loopback upstream's echo handler answers. */
interface Echo {
  readonly method: string;
  readonly url: string;
  readonly headers: Record<string, unknown>;
}

/** The README's claims: "any other path is 404, another method 405, an unknown or repeated query parameter 400". */
const REFUSED = [
  { what: 'another path', method: 'GET', path: '/history?city=Paris', status: 404 },
  { what: 'another method', method: 'POST', path: '/forecast?city=Paris', status: 405 },
  { what: 'an unknown query parameter', method: 'GET', path: '/forecast?city=Paris&units=metric', status: 400 },
  { what: 'a repeated query parameter', method: 'GET', path: '/forecast?city=Paris&city=Rome', status: 400 },
  { what: 'a repeated query parameter (days)', method: 'GET', path: '/forecast?city=Paris&days=3&days=4', status: 400 },
  // And the contract's own terms: city required, at most 80 characters; days an integer from 1 to 7.
  { what: 'no city', method: 'GET', path: '/forecast?days=3', status: 400 },
  { what: 'a city over 80 characters', method: 'GET', path: `/forecast?city=${'a'.repeat(81)}`, status: 400 },
  { what: 'days above 7', method: 'GET', path: '/forecast?city=Paris&days=8', status: 400 },
  { what: 'days not an integer', method: 'GET', path: '/forecast?city=Paris&days=2.5', status: 400 },
] as const;

/** Each refused call, as the page would send it: Keyward's JSON error, and nothing reaches the upstream. */
async function expectRefusals(site: Site): Promise<void> {
  const before = upstream.requests.length;
  for (const call of REFUSED) {
    const response = await site.pageFetch(`/api/proxy/weather${call.path}`, {
      method: call.method,
      headers: { 'x-keyward-csrf': '1', ...(call.method === 'POST' ? { 'content-type': 'application/json' } : {}) },
      ...(call.method === 'POST' ? { body: '{}' } : {}),
    });
    expect(response.status, call.what).toBe(call.status);
    const body = (await response.json()) as { error?: { code?: unknown; message?: unknown; requestId?: unknown } };
    expect(Object.keys(body.error ?? {}).sort(), call.what).toEqual(['code', 'message', 'requestId']);
  }
  expect(upstream.requests.length).toBe(before);
}

/** No secret (in any form) in anything the page received or Keyward logged. */
function expectNoLeak(site: Site): void {
  expect(site.answers.length).toBeGreaterThan(0);
  expect(findLeak([...site.answers, ...site.logs].join('\n'), [weatherKey])).toBeNull();
}

beforeAll(async () => {
  upstream = await startUpstream();
  project = mkdtempSync(join(tmpdir(), 'keyward-readme-'));
  mkdirSync(join(project, 'config'));
});

afterAll(async () => {
  await upstream?.close();
  if (project) rmSync(project, { recursive: true, force: true });
});

// ------------------------------------------------------------------------------------------------ the tests

describe('README "Add an upstream", run as written', { timeout: 60_000 }, () => {
  it('the preset block parses to the OpenAI upstream, whose key is the variable the README sets', async () => {
    const preset = JSON.parse(block('json', '"preset"')) as { $schema?: unknown };
    // `"$schema": "../keyward.schema.json"` from config/: the schema the repository ships.
    expect(preset.$schema).toBe('../keyward.schema.json');
    expect(readFileSync(resolve(ROOT, 'config', String(preset.$schema)), 'utf8')).toContain('"$schema"');
    const definitions = parseConfig(preset, 'README preset block');
    expect(definitions.map((d) => d.id)).toEqual(['openai']);
    const { config } = definitions[0]!;
    expect(config.routes.map((route) => `${route.method} ${route.path}`)).toEqual(
      expect.arrayContaining(['POST /chat/completions', 'POST /responses']),
    );

    const settings = block('bash', 'OPENAI_API_KEY=');
    const openaiKey = randomSecret('openai');
    const env = Object.fromEntries(
      dotenv(settings, { OPENAI_API_KEY: openaiKey })
        .trim()
        .split('\n')
        .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
    ) as Record<string, string>;
    expect(Object.keys(env)).toEqual(['OPENAI_API_KEY', 'KEYWARD_CONFIG']);
    expect(config.auth).toMatchObject({ secret: { env: 'OPENAI_API_KEY' } });
    // With the key set, start-up accepts it; without, it refuses naming the variable.
    const runtime = createRuntime({
      env: { ...testSessionSecrets(), OPENAI_API_KEY: openaiKey, KEYWARD_STORE: 'memory' },
      upstreams: definitions,
    });
    expect([...runtime.registry.keys()]).toEqual(['openai']);
    await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
    await runtime.store.close();
    expect(() =>
      createRuntime({ env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory' }, upstreams: definitions }),
    ).toThrow(/OPENAI_API_KEY/);
  });

  it('check-config, with the JSON config and the .env.local lines, prints what the README says', async () => {
    writeFileSync(join(project, 'config/keyward.json'), block('json', '"weather"'));
    writeFileSync(
      join(project, '.env.local'),
      dotenv(block('bash', 'WEATHER_API_KEY='), { WEATHER_API_KEY: weatherKey }),
    );
    // package.json's script is the command run here.
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.keyward).toMatch(/(^|&& )tsx --conditions=react-server scripts\/keyward\.ts$/);

    const claim = /Check it: `(npm run keyward -- [^`]+)` prints `([^`]+)`/.exec(prose);
    if (!claim)
      throw new Error(
        `README.md "${START}": the sentence "Check it: \`npm run keyward -- …\` prints \`…\`" is gone; update this test`,
      );
    const run = await keyward(keywardArgs(claim[1]!));
    expect(run.code, run.stderr).toBe(0);
    // "configuration is valid (… weather)": `…` stands for what comes before the id.
    const printed = new RegExp(
      claim[2]!
        .split('…')
        .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
        .join('.*'),
    );
    expect(run.stdout).toMatch(printed);
    // It read .env.local (the config's path and the key come from there).
    expect(run.stderr).toContain('keyward: settings also from .env.local');
    expect(findLeak(run.stdout + run.stderr, [weatherKey])).toBeNull();

    // "or names the field that is wrong": the same file with a typo in a field.
    const wrong = block('json', '"weather"').replace('"windowSeconds"', '"windowSecs"');
    writeFileSync(join(project, 'config/keyward.json'), wrong);
    const refused = await keyward(keywardArgs(claim[1]!));
    writeFileSync(join(project, 'config/keyward.json'), block('json', '"weather"'));
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/upstreams\.weather\.rateLimits\.0/);
  });

  it('types --out writes the KeywardApi the README client snippet compiles against', async () => {
    const command = block('bash', 'npm run keyward -- types').trim();
    expect(command.split('\n')).toHaveLength(1);
    const args = keywardArgs(command);
    const out = args[args.indexOf('--out') + 1] ?? fail('the types command has no --out');
    const run = await keyward(args);
    expect(run.code, run.stderr).toBe(0);
    const generated = readFileSync(join(project, out), 'utf8');
    expect(generated).toContain('export type KeywardApi');

    // The snippet imports `@/keyward-api`: the generated file, at the project's root, where `--out` put it.
    const snippet = block('ts', 'createKeywardClient<KeywardApi>()');
    const file = join(ROOT, 'readme-walkthrough-client.ts');
    const files = new Map([
      [join(ROOT, out), generated],
      [file, snippet],
    ]);
    expect(typecheck([file], files)).toEqual([]);
    // The check has teeth: a path the config does not declare, or a wrongly typed query value, does not compile.
    for (const broken of [snippet.replace("'/forecast'", "'/forcast'"), snippet.replace('days: 3', "days: '3'")]) {
      expect(broken).not.toBe(snippet);
      expect(typecheck([file], new Map([...files, [file, broken]]))).not.toEqual([]);
    }
  });

  describe('Keyward serving the JSON config (base URL on loopback)', () => {
    let site: Site;

    beforeAll(async () => {
      const config = join(project, 'config/keyward.loopback.json');
      writeFileSync(config, onLoopback(block('json', '"weather"')));
      site = await startSite({ KEYWARD_CONFIG: config, WEATHER_API_KEY: weatherKey });
    });

    afterAll(async () => {
      await site?.close();
    });

    it('the typed-client snippet calls GET /v2/forecast?city=Paris&days=3 with the key; the answer comes back scrubbed', async () => {
      const before = upstream.requests.length;
      const forecast = (await inThePage(site, () =>
        runSnippet(block('ts', 'createKeywardClient<KeywardApi>()'), { '@/lib/client': client }, 'forecast'),
      )) as Echo;
      expect(upstream.requests.length).toBe(before + 1);
      const received = upstream.requests.at(-1)!;
      expect(`${received.method} ${received.url}`).toBe('GET /v2/forecast?city=Paris&days=3');
      expect(received.headers['x-api-key']).toBe(weatherKey);
      // The upstream echoed the key back; the page got it scrubbed.
      expect(forecast.url).toBe('/v2/forecast?city=Paris&days=3');
      expect(forecast.headers['x-api-key']).toBe(REDACTED);
      expectNoLeak(site);
    });

    it('the plain-fetch snippet makes the same call and reads the same answer', async () => {
      const before = upstream.requests.length;
      const forecast = (await inThePage(site, () =>
        runSnippet(block('ts', "fetch('/api/proxy/weather/"), {}, 'forecast'),
      )) as Echo;
      expect(upstream.requests.length).toBe(before + 1);
      const received = upstream.requests.at(-1)!;
      expect(`${received.method} ${received.url}`).toBe('GET /v2/forecast?city=Paris&days=3');
      expect(received.headers['x-api-key']).toBe(weatherKey);
      expect(forecast.headers['x-api-key']).toBe(REDACTED);
      expectNoLeak(site);
    });

    it('another path is 404, another method 405, an unknown or repeated query parameter 400, none forwarded', async () => {
      expect(prose).toContain('any other path is 404, another method 405, an unknown or repeated query parameter 400');
      await expectRefusals(site);
      expectNoLeak(site);
    });
  });

  describe('the TypeScript upstreams/index.ts block', () => {
    const source = () => block('ts', "defineUpstream('weather'");
    const evaluate = async (text: string) =>
      (await runSnippet(text, { zod, 'keyward/core': core }, 'exports.upstreams')) as UpstreamDefinition[];

    it('typechecks as upstreams/index.ts, with the repository path aliases, and types the client by itself', () => {
      const file = join(ROOT, 'upstreams/index.ts');
      expect(typecheck([file], new Map([[file, source()]]))).toEqual([]);

      // "the typed client takes its types from the list itself (`createKeywardClient<typeof upstreams>()`, …)":
      // the README's client call, typed by this file instead of the generated one.
      const typeArgument = 'createKeywardClient<typeof upstreams>()';
      expect(prose).toContain(typeArgument);
      const call = block('ts', 'createKeywardClient<KeywardApi>()')
        .replace("import type { KeywardApi } from '@/keyward-api';", "import type { upstreams } from '@/upstreams';")
        .replace('createKeywardClient<KeywardApi>()', typeArgument);
      expect(call).toContain("from '@/upstreams'");
      const usage = join(ROOT, 'readme-walkthrough-upstreams-client.ts');
      const files = new Map([
        [file, source()],
        [usage, call],
      ]);
      expect(typecheck([usage], files)).toEqual([]);
      expect(typecheck([usage], new Map([...files, [usage, call.replace("'/forecast'", "'/forcast'")]]))).not.toEqual(
        [],
      );
    });

    it('defines what the JSON block defines: the same upstream, and a query contract that answers the same', async () => {
      const [fromTs, ...more] = await evaluate(source());
      expect(more).toEqual([]);
      const [fromJson] = parseConfig(JSON.parse(block('json', '"weather"')), 'README weather block');
      // Everything but the query contract (a zod schema on one side, a declarative spec on the other) is equal…
      const withoutQuery = (definition: UpstreamDefinition) => ({
        ...definition,
        config: {
          ...definition.config,
          routes: definition.config.routes.map((route) => ({ ...route, query: undefined })),
        },
      });
      expect(withoutQuery(fromTs!)).toEqual(withoutQuery(fromJson!));

      // …and the contracts answer the same calls the same way: the TypeScript upstream, served, on the matrix above.
      const [served] = await evaluate(onLoopback(source()));
      const site = await startSite({ WEATHER_API_KEY: weatherKey }, [served!]);
      try {
        const before = upstream.requests.length;
        const response = await site.pageFetch('/api/proxy/weather/forecast?city=Paris&days=3', {
          headers: { 'x-keyward-csrf': '1' },
        });
        expect(response.status).toBe(200);
        expect(((await response.json()) as Echo).headers['x-api-key']).toBe(REDACTED);
        expect(upstream.requests.length).toBe(before + 1);
        expect(upstream.requests.at(-1)!.url).toBe('/v2/forecast?city=Paris&days=3');
        expect(upstream.requests.at(-1)!.headers['x-api-key']).toBe(weatherKey);
        await expectRefusals(site);
        expectNoLeak(site);
      } finally {
        await site.close();
      }
    });
  });
});
