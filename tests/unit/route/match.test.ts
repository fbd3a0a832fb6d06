import { describe, expect, it } from 'vitest';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import { matchRoute } from '../../../lib/core/route/match';
import { expectKeywardError, makeUpstream, thrown } from '../support';

const routes: UpstreamInput['routes'] = [
  { method: 'GET', path: '/' },
  { method: 'GET', path: '/items' },
  { method: 'POST', path: '/items' },
  { method: 'GET', path: '/items/:id' },
  { method: 'DELETE', path: '/items/:id' },
  { method: 'GET', path: '/items/special' },
  { method: 'PUT', path: '/items/:id/tags/:tag' },
  { method: 'GET', path: '/files/*' },
  { method: 'GET', path: '/proto/:__proto__' },
  { method: 'GET', path: '/ctor/:constructor/:toString' },
];
const { upstream } = makeUpstream({ routes });

function allowOf(error: unknown): string[] {
  const e = expectKeywardError(error, 'method_not_allowed');
  expect(e.status).toBe(405);
  return e.headers.allow!.split(',').map((m) => m.trim());
}

describe('matchRoute', () => {
  it('matches literal templates, including the root', () => {
    expect(matchRoute(upstream, 'GET', []).route.template).toBe('/');
    expect(matchRoute(upstream, 'GET', ['items']).route.template).toBe('/items');
    expect(matchRoute(upstream, 'POST', ['items']).route.template).toBe('/items');
  });

  it('the most specific route serves, wherever it is declared: a literal path declared after a :param route that covers it', () => {
    expect(matchRoute(upstream, 'GET', ['items', 'special']).route.template).toBe('/items/special');
    expect(matchRoute(upstream, 'GET', ['items', 'other']).route.template).toBe('/items/:id');
    // A preset's broad route with an operator's narrower one added after it (mergeUpstream appends): the
    // narrower one's roles apply. Before, the first declared route served, and the roles were silently not applied.
    const { upstream: github } = makeUpstream({
      routes: [
        { method: 'GET', path: '/repos/:owner/:repo/issues' },
        { method: 'GET', path: '/repos/acme/hr-private/issues', roles: ['hr'] },
        { method: 'GET', path: '/files/*' },
        { method: 'GET', path: '/files/:name' },
      ],
    });
    const hr = matchRoute(github, 'GET', ['repos', 'acme', 'hr-private', 'issues']).route;
    expect(hr.template).toBe('/repos/acme/hr-private/issues');
    expect([...hr.roles!]).toEqual(['hr']);
    expect(matchRoute(github, 'GET', ['repos', 'acme', 'web', 'issues']).route.roles).toBeNull();
    expect(matchRoute(github, 'GET', ['files', 'a']).route.template).toBe('/files/:name');
    expect(matchRoute(github, 'GET', ['files', 'a', 'b']).route.template).toBe('/files/*');
  });

  it('a broader route does not serve a path a narrower one matches but for letter case (a case-blind upstream reads it as the narrower)', () => {
    const { upstream: github } = makeUpstream({
      routes: [
        { method: 'GET', path: '/repos/:owner/:repo/issues' },
        { method: 'GET', path: '/repos/acme/hr-private/issues', roles: ['hr'] },
      ],
    });
    for (const path of [
      ['repos', 'ACME', 'HR-Private', 'issues'],
      ['repos', 'acme', 'HR-PRIVATE', 'issues'],
    ]) {
      const error = expectKeywardError(
        thrown(() => matchRoute(github, 'GET', path)),
        'bad_path',
      );
      expect(error.message).toContain('letter case');
    }
    // Other repositories still go to the broad route, in any case; the narrow one as declared is served.
    expect(matchRoute(github, 'GET', ['repos', 'Acme', 'Web', 'issues']).route.roles).toBeNull();
    expect(matchRoute(github, 'GET', ['repos', 'acme', 'hr-private', 'issues']).route.roles).not.toBeNull();
  });

  it('the same for a narrower route whose segment has text around a parameter (`hr-{repo}`, `{id}.json`)', () => {
    const { upstream: github } = makeUpstream({
      routes: [
        { method: 'GET', path: '/repos/:owner/:repo/issues' },
        { method: 'GET', path: '/repos/acme/hr-{repo}/issues', roles: ['hr'] },
        { method: 'GET', path: '/reports/:name' },
        { method: 'GET', path: '/reports/{year}-Q4.json', roles: ['finance'] },
      ],
    });
    for (const path of [
      ['repos', 'acme', 'HR-payroll', 'issues'],
      ['repos', 'ACME', 'Hr-payroll', 'issues'],
      ['reports', '2026-q4.JSON'],
    ]) {
      const error = expectKeywardError(thrown(() => matchRoute(github, 'GET', path)), 'bad_path');
      expect(error.message).toContain('letter case');
    }
    // The value's own case is the caller's: as declared around it, the narrow route serves it as sent.
    const hr = matchRoute(github, 'GET', ['repos', 'acme', 'hr-PayRoll', 'issues']);
    expect([...hr.route.roles!]).toEqual(['hr']);
    expect(hr.params.repo).toBe('PayRoll');
    expect([...matchRoute(github, 'GET', ['reports', '2026-Q4.json']).route.roles!]).toEqual(['finance']);
    // Segments the narrow template cannot take in any case still go to the broad route.
    expect(matchRoute(github, 'GET', ['repos', 'acme', 'web', 'issues']).route.roles).toBeNull();
    expect(matchRoute(github, 'GET', ['reports', '2026-q3.json']).route.roles).toBeNull();
  });

  it('the same for a path a narrower route matches but for dots at the end of a segment (IIS strips them)', () => {
    const { upstream: api } = makeUpstream({
      routes: [
        { method: 'GET', path: '/items/:id' },
        { method: 'GET', path: '/items/secret', roles: ['admin'] },
        { method: 'GET', path: '/files/{name}.txt', roles: ['admin'] },
        { method: 'GET', path: '/files/:file' },
      ],
    });
    for (const path of [['items', 'secret.'], ['items', 'Secret..'], ['files', 'a.txt.']]) {
      const error = expectKeywardError(thrown(() => matchRoute(api, 'GET', path)), 'bad_path');
      expect(error.message).toContain('trailing dots');
    }
    expect(matchRoute(api, 'GET', ['items', 'other.']).route.roles).toBeNull();
    expect(matchRoute(api, 'GET', ['items', 'secret']).route.roles).not.toBeNull();
  });

  it('the same for a path a narrower route matches but for a format suffix on its last segment (Rails, Spring MVC strip it)', () => {
    const { upstream: api } = makeUpstream({
      routes: [
        { method: 'GET', path: '/repos/:owner/:repo' },
        { method: 'GET', path: '/repos/acme/secret', roles: ['admin'] },
        { method: 'GET', path: '/files/{name}.txt', roles: ['admin'] },
        { method: 'GET', path: '/files/:file' },
      ],
    });
    for (const path of [['repos', 'acme', 'secret.json'], ['repos', 'acme', 'Secret.xml'], ['repos', 'acme', 'secret.json.'], ['files', 'a.txt.json']]) {
      const error = expectKeywardError(thrown(() => matchRoute(api, 'GET', path)), 'bad_path');
      expect(error.message).toContain('format suffix');
    }
    // Other names, with or without a suffix, go to the broad route; the narrow one as declared is served.
    expect(matchRoute(api, 'GET', ['repos', 'acme', 'web.json']).route.roles).toBeNull();
    expect(matchRoute(api, 'GET', ['repos', 'acme', '.secret']).route.roles).toBeNull();
    expect(matchRoute(api, 'GET', ['repos', 'acme', 'secret']).route.roles).not.toBeNull();
    expect(matchRoute(api, 'GET', ['files', 'a.txt']).route.roles).not.toBeNull();
    expect(matchRoute(api, 'GET', ['files', 'a.json']).route.roles).toBeNull();
  });

  it('binds :param segments into a prototype-less params object', () => {
    const { route, params } = matchRoute(upstream, 'PUT', ['items', '42', 'tags', 'red']);
    expect(route.template).toBe('/items/:id/tags/:tag');
    expect({ ...params }).toEqual({ id: '42', tag: 'red' });
    expect(Object.getPrototypeOf(params)).toBeNull();
  });

  it('treats a parameter called __proto__ as a plain key and pollutes nothing', () => {
    const { params } = matchRoute(upstream, 'GET', ['proto', 'polluted']);
    expect(Object.getPrototypeOf(params)).toBeNull();
    expect(Object.keys(params)).toEqual(['__proto__']);
    expect(Object.getOwnPropertyDescriptor(params, '__proto__')?.value).toBe('polluted');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty('polluted');
  });

  it('treats constructor / toString parameters as plain keys', () => {
    const { params } = matchRoute(upstream, 'GET', ['ctor', 'a', 'b']);
    expect(Object.getOwnPropertyDescriptor(params, 'constructor')?.value).toBe('a');
    expect(Object.getOwnPropertyDescriptor(params, 'toString')?.value).toBe('b');
  });

  it('a final * takes one or more remaining segments, joined with "/"', () => {
    expect(matchRoute(upstream, 'GET', ['files', 'a']).params['*']).toBe('a');
    expect(matchRoute(upstream, 'GET', ['files', 'a', 'b', 'c']).params['*']).toBe('a/b/c');
    expectKeywardError(
      thrown(() => matchRoute(upstream, 'GET', ['files'])),
      'route_not_found',
    );
  });

  it('a template without * needs the exact number of segments', () => {
    expectKeywardError(
      thrown(() => matchRoute(upstream, 'GET', ['items', '42', 'extra'])),
      'route_not_found',
    );
    expectKeywardError(
      thrown(() => matchRoute(upstream, 'PUT', ['items', '42', 'tags'])),
      'route_not_found',
    );
  });

  it('literals are compared exactly (case-sensitive)', () => {
    expectKeywardError(
      thrown(() => matchRoute(upstream, 'GET', ['Items'])),
      'route_not_found',
    );
  });

  it('an undeclared path is 404 route_not_found without an allow header', () => {
    const error = expectKeywardError(
      thrown(() => matchRoute(upstream, 'GET', ['admin'])),
      'route_not_found',
    );
    expect(error.status).toBe(404);
    expect(error.headers).not.toHaveProperty('allow');
  });

  it('a declared path under another method is 405 with the declared methods in allow', () => {
    expect(allowOf(thrown(() => matchRoute(upstream, 'PATCH', ['items']))).sort()).toEqual(['GET', 'POST']);
    expect(allowOf(thrown(() => matchRoute(upstream, 'POST', []))).sort()).toEqual(['GET']);
    expect(allowOf(thrown(() => matchRoute(upstream, 'GET', ['items', '1', 'tags', 'x']))).sort()).toEqual(['PUT']);
  });

  it('lists each allowed method once, even when several routes match the path', () => {
    // `/items/special` matches both GET /items/:id and GET /items/special, and DELETE /items/:id.
    expect(allowOf(thrown(() => matchRoute(upstream, 'POST', ['items', 'special']))).sort()).toEqual([
      'DELETE',
      'GET',
    ]);
  });

  it('HEAD is not implied by GET: only declared methods are forwarded', () => {
    expect(allowOf(thrown(() => matchRoute(upstream, 'HEAD', ['items'])))).not.toContain('HEAD');
  });
});

describe('matchRoute with {param:int}', () => {
  const { upstream: typed } = makeUpstream({
    routes: [
      { method: 'GET', path: '/repos/:owner/:repo/issues/{issue_number:int}' },
      { method: 'GET', path: '/repos/:owner/:repo/issues/{issue_number:int}/comments' },
      { method: 'GET', path: '/items/:name' },
      { method: 'GET', path: '/items/{id:int}', roles: ['admin'] },
      { method: 'GET', path: '/reports/v{version:int}.json' },
    ],
  });

  it('serves an integer and nothing else: another segment of that shape matches no route', () => {
    const issue = matchRoute(typed, 'GET', ['repos', 'acme', 'widgets', 'issues', '12']);
    expect(issue.route.template).toBe('/repos/:owner/:repo/issues/{issue_number:int}');
    expect({ ...issue.params }).toEqual({ owner: 'acme', repo: 'widgets', issue_number: '12' });
    expect(matchRoute(typed, 'GET', ['reports', 'v3.json']).params.version).toBe('3');
    for (const path of [
      ['repos', 'acme', 'widgets', 'issues', 'comments'],
      ['repos', 'acme', 'widgets', 'issues', 'events'],
      ['repos', 'acme', 'widgets', 'issues', 'comments', 'comments'],
      ['repos', 'acme', 'widgets', 'issues', 'latest'],
      ['reports', 'vlatest.json'],
    ]) {
      expectKeywardError(thrown(() => matchRoute(typed, 'GET', path)), 'route_not_found');
    }
  });

  it('comes before an untyped :param of the same place, wherever either is declared', () => {
    expect([...matchRoute(typed, 'GET', ['items', '42']).route.roles!]).toEqual(['admin']);
    expect(matchRoute(typed, 'GET', ['items', '-1']).route.template).toBe('/items/{id:int}');
    const other = matchRoute(typed, 'GET', ['items', 'widget']);
    expect(other.route.template).toBe('/items/:name');
    expect(other.route.roles).toBeNull();
  });

  it('an integer with dots at its end is not served by the untyped route (IIS strips them)', () => {
    const error = expectKeywardError(thrown(() => matchRoute(typed, 'GET', ['items', '42.'])), 'bad_path');
    expect(error.message).toContain('trailing dots');
  });

  it('a value an upstream may read as an integer but that is not one in canonical form is refused (400), never served by the untyped route', () => {
    // Java's Long.valueOf and Go's Atoi read `+42` as 42, Spring's Long.decode `0x2a`, parseInt and Rails `42abc`,
    // Python `4_2`, JS's Number `42.0`; leading zeros and `-0` are other spellings of a number the typed route serves.
    for (const value of ['+42', '42abc', '0x2a', '4_2', '42.0', '007', '-0', '9223372036854775808']) {
      const error = expectKeywardError(thrown(() => matchRoute(typed, 'GET', ['items', value])), 'bad_path');
      expect(error.message, value).toContain('integer');
    }
    expect(matchRoute(typed, 'GET', ['items', '0']).route.template).toBe('/items/{id:int}');
    expect(matchRoute(typed, 'GET', ['items', '1790000000000000001']).route.template).toBe('/items/{id:int}');
    // Not a number in any reading: the untyped route, as declared.
    expect(matchRoute(typed, 'GET', ['items', 'widget-2']).route.template).toBe('/items/:name');
  });

  it('nor with letter case or trailing dots read loosely as well (`/USERS/07/secret.` is /users/7/secret to some upstreams)', () => {
    const { upstream: loose } = makeUpstream({
      routes: [
        { method: 'GET', path: '/users/{id:int}/secret', roles: ['admin'] },
        { method: 'GET', path: '/:col/:id/:x' },
        { method: 'GET', path: '/reports/v{n:int}.json', roles: ['admin'] },
        { method: 'GET', path: '/reports/:file' },
      ],
    });
    for (const path of [
      ['USERS', '07', 'secret'],
      ['users', '07', 'SECRET'],
      ['users', '07', 'secret.'],
      ['reports', 'V07.json'],
      ['reports', 'V+7.json'],
    ]) {
      expectKeywardError(thrown(() => matchRoute(loose, 'GET', path)), 'bad_path');
    }
    expect(matchRoute(loose, 'GET', ['users', 'abc', 'secret']).route.template).toBe('/:col/:id/:x');
  });

  it('a literal with stricter roles is not reached around by another spelling of its number', () => {
    const { upstream: docs } = makeUpstream({
      routes: [
        { method: 'GET', path: '/docs/7', roles: ['admin'] },
        { method: 'GET', path: '/docs/{id:int}' },
      ],
    });
    expect([...matchRoute(docs, 'GET', ['docs', '7']).route.roles!]).toEqual(['admin']);
    for (const value of ['007', '+7', '7.0']) expectKeywardError(thrown(() => matchRoute(docs, 'GET', ['docs', value])), 'bad_path');
  });

  it('a literal later in the path outranks a typed parameter earlier on: types only break ties', () => {
    const { upstream: users } = makeUpstream({
      routes: [
        { method: 'GET', path: '/users/{id:int}/:field' },
        { method: 'GET', path: '/users/:id/password', roles: ['admin'] },
      ],
    });
    const password = matchRoute(users, 'GET', ['users', '5', 'password']).route;
    expect(password.template).toBe('/users/:id/password');
    expect([...password.roles!]).toEqual(['admin']);
    expect(matchRoute(users, 'GET', ['users', '5', 'email']).route.template).toBe('/users/{id:int}/:field');
  });
});

describe('matchRoute with ":" in segments (Gemini custom methods, Bedrock model ids)', () => {
  const { upstream: colons } = makeUpstream({
    routes: [
      { method: 'POST', path: '/models/{model}:generateContent' },
      { method: 'POST', path: '/models/{model}:countTokens' },
      { method: 'GET', path: '/models/:model' },
      { method: 'POST', path: '/model/{modelId:colon}/converse' },
      { method: 'POST', path: '/v1/images:annotate' },
      { method: 'GET', path: '/files/*' },
    ],
  });
  const match = (method: string, segments: string[]) => matchRoute(colons, method, segments);

  it('a braced parameter with a literal suffix: the suffix picks the route, the value is what is before it', () => {
    const generate = match('POST', ['models', 'gemini-2.0-flash:generateContent']);
    expect(generate.route.template).toBe('/models/{model}:generateContent');
    expect({ ...generate.params }).toEqual({ model: 'gemini-2.0-flash' });
    expect(match('POST', ['models', 'gemini-2.0-flash:countTokens']).route.template).toBe('/models/{model}:countTokens');
    expect(match('GET', ['models', 'gemini-2.0-flash']).params.model).toBe('gemini-2.0-flash');
  });

  it('{name:colon} takes a value with ":" (a Bedrock model id)', () => {
    const { route, params } = match('POST', ['model', 'anthropic.claude-3-5-sonnet-20240620-v1:0', 'converse']);
    expect(route.template).toBe('/model/{modelId:colon}/converse');
    expect(params.modelId).toBe('anthropic.claude-3-5-sonnet-20240620-v1:0');
    expect(match('POST', ['model', 'amazon.titan-text-express-v1', 'converse']).params.modelId).toBe('amazon.titan-text-express-v1');
  });

  it('a literal segment with ":" is compared exactly', () => {
    expect(match('POST', ['v1', 'images:annotate']).route.template).toBe('/v1/images:annotate');
    expectKeywardError(thrown(() => match('POST', ['v1', 'images:Annotate'])), 'route_not_found');
  });

  it.each([
    ['an unknown custom method', 'POST', ['models', 'gemini-2.0-flash:deleteEverything']],
    ['":" in a value whose parameter does not allow it', 'POST', ['models', 'ab:cd:generateContent']],
    ['host:port in a plain :param', 'GET', ['models', 'localhost:80']],
    ['a Bedrock id in a plain :param', 'GET', ['models', 'anthropic.claude-3-5-sonnet-20240620-v1:0']],
  ])('%s, where another route has a ":": 404 route_not_found', (_label, method, segments) => {
    expectKeywardError(thrown(() => match(method, segments)), 'route_not_found');
  });

  it.each([
    ['":" in a * segment', 'GET', ['files', 'a', 'b:c']],
    ['":" where no route has one', 'GET', ['x:y']],
    ['":" one segment past the route\'s', 'POST', ['model', 'anthropic.claude-3-5-sonnet-20240620-v1:0', 'converse:x']],
  ])('%s: 400 bad_path (a ":" only where a template can put one)', (_label, method, segments) => {
    const error = expectKeywardError(thrown(() => match(method, segments)), 'bad_path');
    expect(error.status).toBe(400);
    expect(error.message).not.toContain(segments.at(-1)!);
  });

  it('an upstream that declares no ":" refuses every ":" segment as before: 400 bad_path', () => {
    expectKeywardError(thrown(() => matchRoute(upstream, 'GET', ['items', 'localhost:80'])), 'bad_path');
    expectKeywardError(thrown(() => matchRoute(upstream, 'GET', ['items', 'evil.example:443'])), 'bad_path');
    expectKeywardError(thrown(() => matchRoute(upstream, 'GET', ['files', 'a:b'])), 'bad_path');
  });

  it('the same paths without ":" are 404 route_not_found', () => {
    expectKeywardError(thrown(() => match('GET', ['nothing', 'here'])), 'route_not_found');
  });

  it('a declared ":" path under another method: 405 with Allow', () => {
    expect(allowOf(thrown(() => match('GET', ['models', 'gemini-2.0-flash:generateContent'])))).toEqual(['POST']);
    expect(allowOf(thrown(() => match('GET', ['model', 'anthropic.claude-3-5-sonnet-20240620-v1:0', 'converse'])))).toEqual(['POST']);
  });
});
