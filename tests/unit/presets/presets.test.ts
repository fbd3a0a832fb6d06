import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ConfigError, defineUpstream, parseConfig } from '../../../lib/core/config/load';
import { anthropic, gemini, github, googleMaps, mergeUpstream, openai, PRESETS, stripe } from '../../../lib/core/presets';
import { matchRoute } from '../../../lib/core/route/match';
import { buildRegistry } from '../../../lib/core/upstream/registry';
import { randomSecret } from '../../fixtures/secrets';
import { expectKeywardError, thrown } from '../support';

/** The environment variables the presets read by default, each with a fresh value. */
const env = {
  OPENAI_API_KEY: randomSecret('oai'),
  ANTHROPIC_API_KEY: randomSecret('ant'),
  GITHUB_TOKEN: randomSecret('ghp'),
  GOOGLE_MAPS_API_KEY: randomSecret('gmp'),
  GEMINI_API_KEY: randomSecret('gem'),
  STRIPE_SECRET_KEY: randomSecret('sk'),
};

function configError(json: unknown): string {
  const error = thrown(() => parseConfig(json, 'KEYWARD_CONFIG'));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as ConfigError).message;
}

const routes = (definition: { config: { routes: readonly { method: string; path: string }[] } }) => definition.config.routes.map((r) => `${r.method} ${r.path}`);

describe('built-in presets', () => {
  it('each builds a valid upstream from its defaults alone, reading its key from the documented variable', () => {
    const definitions = [openai(), anthropic(), github(), googleMaps(), gemini(), stripe()];
    expect(definitions.map((d) => d.id)).toEqual(['openai', 'anthropic', 'github', 'google-maps', 'gemini', 'stripe']);
    const registry = buildRegistry(definitions, env);
    expect(registry.get('openai')!.auth).toMatchObject({ type: 'bearer', secret: { env: 'OPENAI_API_KEY' } });
    expect(registry.get('anthropic')!.auth).toMatchObject({ type: 'header', name: 'x-api-key', secret: { env: 'ANTHROPIC_API_KEY' } });
    expect(registry.get('github')!.auth).toMatchObject({ type: 'bearer', secret: { env: 'GITHUB_TOKEN' } });
    expect(registry.get('google-maps')!.auth).toMatchObject({ type: 'query', name: 'key', secret: { env: 'GOOGLE_MAPS_API_KEY' } });
    expect(registry.get('gemini')!.auth).toMatchObject({ type: 'header', name: 'x-goog-api-key', secret: { env: 'GEMINI_API_KEY' } });
    expect(registry.get('stripe')!.auth).toMatchObject({ type: 'bearer', secret: { env: 'STRIPE_SECRET_KEY' } });
    expect(registry.get('anthropic')!.defaultHeaders).toEqual([['anthropic-version', '2023-06-01']]);
    expect(routes(definitions[0]!)).toEqual(expect.arrayContaining(['POST /chat/completions', 'POST /responses', 'POST /embeddings', 'GET /models']));
  });

  it('a missing key stops start-up naming the variable, never a value', () => {
    const error = thrown(() => buildRegistry([openai()], {}));
    expect((error as Error).message).toContain('upstreams.openai.auth.secret: environment variable OPENAI_API_KEY is not set');
  });

  it('the JSON form and the TypeScript form describe the same upstream', () => {
    const fromJson = parseConfig(
      { upstreams: { ai: { preset: 'openai', models: ['gpt-test'], maxOutputTokens: 256, baseUrl: 'https://llm.example/v1/', timeoutMs: 5000 } } },
      'test',
    );
    const fromTs = openai({ id: 'ai', models: ['gpt-test'], maxOutputTokens: 256, baseUrl: 'https://llm.example/v1/', timeoutMs: 5000 });
    expect(fromJson[0]!.id).toBe('ai');
    expect(routes(fromJson[0]!)).toEqual(routes(fromTs));
    const { routes: jsonRoutes, ...jsonRest } = fromJson[0]!.config;
    const { routes: tsRoutes, ...tsRest } = fromTs.config;
    expect(jsonRest).toEqual(tsRest);
    expect(jsonRoutes.map((r) => r.caps)).toEqual(tsRoutes.map((r) => r.caps));
    expect(fromTs.config.baseUrl).toBe('https://llm.example/v1/');
    expect(fromTs.config.timeoutMs).toBe(5000);
  });

  it('a JSON file can mix presets with hand-written upstreams', () => {
    const defs = parseConfig(
      {
        upstreams: {
          claude: { preset: 'anthropic' },
          weather: { baseUrl: 'https://api.weather.example/', auth: { type: 'bearer', secret: { env: 'W' } }, routes: [{ method: 'GET', path: '/now' }] },
        },
      },
      'test',
    );
    expect(defs.map((d) => d.id)).toEqual(['claude', 'weather']);
    expect(routes(defs[0]!)).toContain('POST /v1/messages');
  });

  it('caps output tokens for every caller and stamps the caller as the identity field', () => {
    const chat = openai({ maxOutputTokens: 300 }).config.routes.find((r) => r.path === '/chat/completions')!;
    expect(chat.caps).toEqual({ '*': { 'body.max_completion_tokens': 300 } });
    expect(chat.identity).toEqual({ 'body.safety_identifier': 'userId', 'body.user': 'userId' });
    expect(chat.cost).toMatchObject({ reserveFrom: { field: 'body.max_completion_tokens' }, usage: { json: ['usage.completion_tokens'] } });
    expect(openai({ identity: 'user' }).config.routes[0]!.identity).toEqual({ 'body.user': 'userId' });
    expect(openai({ identity: 'none' }).config.routes[0]!.identity).toBeUndefined();
    // Embeddings and images take `user` only.
    expect(openai().config.routes.find((r) => r.path === '/embeddings')!.identity).toEqual({ 'body.user': 'userId' });
    const messages = anthropic().config.routes.find((r) => r.path === '/v1/messages')!;
    expect(messages.identity).toEqual({ 'body.metadata.user_id': 'userId' });
    expect(messages.caps).toEqual({ '*': { 'body.max_tokens': 4096 } });
  });

  it('with prices, routes the table cannot price are left out unless callPrice prices them per call', () => {
    const prices = { '*': { input: 1, output: 1 } };
    const priced = routes(openai({ prices }));
    expect(priced).toContain('POST /embeddings');
    for (const key of ['POST /images/generations', 'POST /audio/speech', 'POST /audio/transcriptions']) expect(priced).not.toContain(key);
    const perCall = openai({ prices, callPrice: 40_000 });
    // An image generation's `n` images are each priced as a call.
    expect(perCall.config.routes.find((r) => r.path === '/images/generations')!.cost).toEqual({
      reserve: 40_000,
      reserveFrom: { field: 'body.n', times: 40_000, plus: 0 },
    });
    expect(perCall.config.routes.find((r) => r.path === '/audio/transcriptions')!.cost).toEqual({ reserve: 40_000 });
    // Free (the routes offered beside a price table without charging them), or priced in large units: both start.
    expect(openai({ prices, callPrice: 0 }).config.routes.find((r) => r.path === '/images/generations')!.cost).toEqual({ reserve: 0 });
    const dear = openai({ prices, callPrice: 2_000_000 }).config.routes.find((r) => r.path === '/images/generations')!;
    expect(dear.cost).toMatchObject({ reserve: 2_000_000, reserveFrom: { field: 'body.n', times: 2_000_000 } });
  });

  it('GitHub: read-only unless asked, and pinned to the named repositories', () => {
    expect(routes(github()).every((key) => key.startsWith('GET '))).toBe(true);
    const pinned = routes(github({ repos: ['acme/widgets', 'acme/docs'], write: true }));
    expect(pinned).toContain('POST /repos/acme/widgets/issues');
    expect(pinned).toContain('GET /repos/acme/docs/contents/*');
    expect(pinned.some((key) => key.includes(':owner'))).toBe(false);
    expect(configError({ upstreams: { gh: { preset: 'github', repos: ['acme/../x'] } } })).toContain('upstreams.gh.repos.0: must be "owner/name"');
  });

  it("GitHub: an issue's or pull request's route takes only a number, so the repository-wide lists match no route", () => {
    const match = (definition: ReturnType<typeof github>, path: string) =>
      matchRoute(buildRegistry([definition], env).get(definition.id)!, 'GET', path.split('/').filter(Boolean));
    for (const definition of [
      github(),
      github({ repos: ['acme/widgets'] }),
      github({ repos: ['acme/widgets'], only: ['GET /repos/acme/widgets/issues/{issue_number:int}', 'GET /repos/acme/widgets/pulls/{pull_number:int}'] }),
    ]) {
      const issue = match(definition, '/repos/acme/widgets/issues/42');
      expect(issue.route.template).toMatch(/^\/repos\/.*\/issues\/\{issue_number:int\}$/);
      expect(issue.route.roles).toBeNull();
      expect(issue.params.issue_number).toBe('42');
      expect(match(definition, '/repos/acme/widgets/pulls/7').route.template).toMatch(/\/pulls\/\{pull_number:int\}$/);
      for (const list of ['issues/comments', 'issues/events', 'pulls/comments']) {
        expectKeywardError(thrown(() => match(definition, `/repos/acme/widgets/${list}`)), 'route_not_found');
      }
      // No route nobody may call is left in the preset.
      expect(definition.config.routes.filter((route) => route.roles?.length === 0)).toEqual([]);
    }
  });

  it('Maps: the key is a query parameter, and each user is rate-limited by default', () => {
    const maps = googleMaps({ perUserPerMinute: 10 });
    expect(maps.config.rateLimits).toEqual([{ by: 'user', limit: 10, windowSeconds: 60 }]);
    expect(googleMaps({ rateLimits: [] }).config.rateLimits).toEqual([]);
  });

  it('a service key gets a canary for rotation; a user\'s own key does not (key rings are for service keys)', () => {
    expect(openai().config.keys?.canary).toEqual({ method: 'GET', path: '/models' });
    const own = openai({ secret: { user: 'key' } });
    expect(own.config.keys).toBeUndefined();
    expect(own.config.auth.secret).toEqual({ user: 'key' });
  });

  it('`only` keeps the named routes; `roles` applies to every route that names none, replaced or added ones too', () => {
    const slim = openai({ only: ['POST /responses', 'GET /models'], roles: ['pro'] });
    expect(routes(slim)).toEqual(['POST /responses', 'GET /models']);
    expect(slim.config.routes.every((r) => r.roles?.join() === 'pro')).toBe(true);
    const extended = openai({ roles: ['pro'], routes: [{ method: 'GET', path: '/models' }, { method: 'GET', path: '/files/:id', roles: ['admin'] }] });
    expect(extended.config.routes.find((r) => r.path === '/models')!.roles).toEqual(['pro']);
    expect(extended.config.routes.find((r) => r.path === '/files/:id')!.roles).toEqual(['admin']);
    expect(configError({ upstreams: { ai: { preset: 'openai', only: ['GET /models', 'POST /completions'] } } })).toContain(
      'upstreams.ai.only.1: "POST /completions" is not a route of the "openai" preset',
    );
    // A long one is named by its index only: its path may hold a pasted key.
    const long = `GET /files/${randomSecret('pasted')}`;
    const message = configError({ upstreams: { ai: { preset: 'openai', only: [long] } } });
    expect(message).toContain('upstreams.ai.only.0: "(a name not shown)" is not a route of the "openai" preset');
    expect(message).not.toContain(long);
  });

  it('names the field of a bad option or override, and an unknown preset', () => {
    expect(configError({ upstreams: { ai: { preset: 'nope' } } })).toContain('upstreams.ai.preset: must be one of "openai"');
    expect(configError({ upstreams: { ai: { preset: '__proto__' } } })).toContain('upstreams.ai.preset: must be one of');
    expect(configError({ upstreams: { ai: { preset: 'openai', maxOutputTokens: 0 } } })).toContain('upstreams.ai.maxOutputTokens');
    expect(configError({ upstreams: { ai: { preset: 'openai', models: ['bad model'] } } })).toContain('upstreams.ai.models');
    expect(configError({ upstreams: { ai: { preset: 'openai', colour: 'red' } } })).toContain('upstreams.ai');
    expect(configError({ upstreams: { ai: { preset: 'openai', timeoutMs: 'soon' } } })).toContain('upstreams.ai.timeoutMs');
    expect(configError({ upstreams: { ai: { preset: 'openai', routes: 'all' } } })).toContain('upstreams.ai.routes');
    // A route given beside a preset is named by its own index in the file, not by where it lands among the preset's.
    for (const bad of [null, 7, 'GET /x', [], { method: 'GET' }]) {
      expect(configError({ upstreams: { ai: { preset: 'openai', routes: [{ method: 'GET', path: '/models/:model' }, bad] } } })).toContain('upstreams.ai.routes.1');
    }
    const replacing = configError({ upstreams: { ai: { preset: 'openai', routes: [{ method: 'GET', path: '/models', timeoutMs: 1 }] } } });
    expect(replacing).toContain('upstreams.ai.routes.0.timeoutMs');
    expect(configError({ upstreams: { ai: { preset: 'openai', secret: { env: 'NEXT_PUBLIC_OPENAI_KEY' } } } })).toContain('NEXT_PUBLIC_');
  });

  it('lists every preset by name', () => {
    expect([...PRESETS.keys()]).toEqual(expect.arrayContaining(['openai', 'anthropic', 'gemini', 'github', 'stripe', 'google-maps']));
  });
});

describe('overriding and extending a preset', () => {
  const base = openai().config;

  it('a route with the same method and path replaces the preset\'s; others are added', () => {
    const custom = openai({ routes: [{ method: 'GET', path: '/models', roles: ['admin'] }, { method: 'GET', path: '/files/:id' }] });
    const keys = routes(custom);
    expect(keys.filter((key) => key === 'GET /models')).toHaveLength(1);
    expect(custom.config.routes.find((r) => r.path === '/models')!.roles).toEqual(['admin']);
    expect(keys.at(-1)).toBe('GET /files/:id');
    expect(keys).toHaveLength(base.routes.length + 1);
  });

  it("a route that differs from the preset's only by a parameter's type stops start-up: it would not replace it", () => {
    // Written before the GitHub preset typed its numbers, such a route tightened the issue route; beside the typed
    // one it would only take what is not a number, and the preset's own would serve every issue.
    const json = {
      upstreams: {
        gh: { preset: 'github', routes: [{ method: 'GET', path: '/repos/:owner/:repo/issues/:issue_number', roles: ['triage'] }] },
      },
    };
    expect(configError(json)).toContain(
      "upstreams.gh.routes.0.path: the preset's own GET route for these requests types its parameters ({issue_number:int}): to replace it, give the preset's path as written",
    );
    expect(() => github({ routes: [{ method: 'GET', path: '/repos/:owner/:repo/pulls/{n}', roles: ['triage'] }] })).toThrow(/routes\.0\.path: the preset's own GET route for these requests types its parameters \(\{pull_number:int\}\)/);
    // The preset's path as written replaces it; another method, or another shape, is added.
    const replaced = github({ routes: [{ method: 'GET', path: '/repos/:owner/:repo/issues/{issue_number:int}', roles: ['triage'] }] });
    expect(replaced.config.routes.find((r) => r.path.endsWith('/issues/{issue_number:int}') && r.method === 'GET')!.roles).toEqual(['triage']);
    expect(() => github({ routes: [{ method: 'DELETE', path: '/repos/:owner/:repo/issues/:issue_number', roles: ['admin'] }] })).not.toThrow();
    expect(() => github({ routes: [{ method: 'GET', path: '/repos/:owner/:repo/issues/:issue_number/events' }] })).not.toThrow();
    // The other way round narrows: a typed route beside the preset's untyped one takes the integers first.
    const narrowed = openai({ routes: [{ method: 'GET', path: '/models/{model:int}', roles: ['admin'] }] });
    expect(narrowed.config.routes.filter((r) => r.method === 'GET' && r.path.startsWith('/models/')).map((r) => r.path).sort()).toEqual(['/models/:model', '/models/{model:int}']);
  });

  it('a route replacing the preset\'s keeps the fields it leaves out; identity and paramEquals merge by name, caps by role', () => {
    const base = {
      baseUrl: 'https://a.example/',
      auth: { type: 'bearer' as const, secret: { env: 'A' } },
      routes: [
        { method: 'POST' as const, path: '/x/:id', body: { type: 'object' as const, properties: {} }, maxRequestBytes: 1024, paramEquals: { id: 'userId' as const }, identity: { 'body.user': 'userId' as const }, caps: { '*': { 'body.n': 1 }, pro: { 'body.n': 5 } }, overCap: 'clamp' as const },
      ],
    };
    const [merged] = mergeUpstream(base, {
      routes: [{ method: 'POST', path: '/x/:id', body: { type: 'object', properties: { extra: { type: 'string' } } }, identity: { 'body.org': 'claims.org' }, caps: { '*': { 'body.n': 2 } }, overCap: undefined }],
    }).routes;
    expect(merged).toEqual({
      method: 'POST',
      path: '/x/:id',
      body: { type: 'object', properties: { extra: { type: 'string' } } },
      maxRequestBytes: 1024,
      paramEquals: { id: 'userId' },
      identity: { 'body.user': 'userId', 'body.org': 'claims.org' },
      caps: { '*': { 'body.n': 2 }, pro: { 'body.n': 5 } },
      overCap: 'clamp',
    });
  });

  it('a replacing route is checked with what it keeps; one the preset\'s route left out with `only` is added as given', () => {
    // formArrays alone applies to a form body: the preset's, kept.
    const brackets = stripe({ routes: [{ method: 'POST', path: '/checkout/sessions', formArrays: 'brackets' }] });
    expect(brackets.config.routes.find((r) => r.path === '/checkout/sessions')).toMatchObject({ bodyFormat: 'form', formArrays: 'brackets', identity: { 'body.customer': 'claims.stripeCustomerId', 'body.client_reference_id': 'userId' } });
    const own = stripe({ only: ['GET /prices'], routes: [{ method: 'GET', path: '/customers/:customer', roles: ['admin'] }] });
    expect(own.config.routes.find((r) => r.path === '/customers/:customer')).toEqual({ method: 'GET', path: '/customers/:customer', roles: ['admin'] });
    // Named by the given route's index, with the field it kept.
    expect(configError({ upstreams: { s: { preset: 'stripe', routes: [{ method: 'GET', path: '/prices' }, { method: 'POST', path: '/setup_intents', bodyFormat: 'json', formArrays: 'repeat' }] } } })).toContain(
      'upstreams.s.routes.1.formArrays: applies to form bodies only',
    );
  });

  it('default headers merge too', () => {
    const merged = mergeUpstream(
      { baseUrl: 'https://a.example/', auth: { type: 'bearer', secret: { env: 'A' } }, routes: [{ method: 'GET', path: '/x' }], defaultHeaders: { 'x-v': '1' } },
      { defaultHeaders: { 'x-w': '2' } },
    );
    expect(merged.defaultHeaders).toEqual({ 'x-v': '1', 'x-w': '2' });
  });

  it('pass-through header lists are joined, fixed headers merged, anything else replaced', () => {
    const merged = mergeUpstream(
      { baseUrl: 'https://a.example/', auth: { type: 'bearer', secret: { env: 'A' } }, routes: [{ method: 'GET', path: '/x' }], requestHeaders: ['x-a'], headers: { 'x-v': '1', 'x-w': '1' } },
      { requestHeaders: ['x-b'], headers: { 'x-w': '2' }, auth: { type: 'header', name: 'x-key', secret: { env: 'B' } } },
    );
    expect(merged.requestHeaders).toEqual(['x-a', 'x-b']);
    expect(merged.headers).toEqual({ 'x-v': '1', 'x-w': '2' });
    expect(merged.auth).toEqual({ type: 'header', name: 'x-key', secret: { env: 'B' } });
  });

  it('OpenAI-compatible APIs: another base URL and key variable', () => {
    const groq = openai({ id: 'groq', baseUrl: 'https://api.groq.com/openai/v1', secret: { env: 'GROQ_API_KEY' }, models: '*', identity: 'user' });
    expect(groq.config.baseUrl).toBe('https://api.groq.com/openai/v1/');
    expect(groq.config.auth).toMatchObject({ type: 'bearer', secret: { env: 'GROQ_API_KEY' } });
  });
});

describe('fixed and default request headers (`headers`, `defaultHeaders`)', () => {
  const upstream = (headers: Record<string, string>) => ({
    baseUrl: 'https://api.example.com/',
    auth: { type: 'header' as const, name: 'x-api-key', secret: { env: 'K' } },
    routes: [{ method: 'GET' as const, path: '/x' }],
    headers,
  });

  it('refuses credential, connection and Keyward\'s own headers, naming the field', () => {
    for (const name of ['Authorization', 'cookie', 'x-api-key', 'host', 'x-request-id', 'accept-encoding', 'content-length']) {
      const message = (thrown(() => defineUpstream('u', upstream({ [name]: 'v' }))) as Error).message;
      expect(message).toContain(`upstreams.u.headers.${name}`);
      const defaults = (thrown(() => defineUpstream('u', { ...upstream({}), defaultHeaders: { [name]: 'v' } })) as Error).message;
      expect(defaults).toContain(`upstreams.u.defaultHeaders.${name}`);
    }
  });

  it('refuses a value with a line break, without echoing it', () => {
    const message = (thrown(() => defineUpstream('u', upstream({ 'x-v': 'a\r\nx-evil: 1' }))) as Error).message;
    expect(message).toContain('upstreams.u.headers.x-v: must be printable ASCII');
    expect(message).not.toContain('x-evil');
  });
});

describe('the README\'s preset examples', () => {
  it('"One example each" parses as written: every preset, with its options', () => {
    const readme = readFileSync('README.md', 'utf8');
    const at = readme.indexOf('One example each');
    expect(at, 'README: the "One example each" block is gone').toBeGreaterThan(0);
    const start = readme.indexOf('```json', at) + '```json'.length;
    const block = readme.slice(start, readme.indexOf('```', start));
    const definitions = parseConfig(JSON.parse(block), 'README');
    expect(definitions.map((d) => d.id)).toEqual(['openai', 'claude', 'gemini', 'github', 'stripe', 'maps', 'bedrock', 'billing']);
    const presetsUsed = (JSON.parse(block) as { upstreams: Record<string, { preset: string }> }).upstreams;
    expect(new Set(Object.values(presetsUsed).map((u) => u.preset))).toEqual(new Set(PRESETS.keys()));
  });
});
