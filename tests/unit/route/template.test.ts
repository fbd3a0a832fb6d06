import { describe, expect, it } from 'vitest';
import { defineUpstream } from '../../../lib/core/config/load';
import {
  bySpecificity,
  captureParam,
  compileTemplate,
  templateParamNames,
  templateProblems,
  templateShape,
  type TemplateParam,
} from '../../../lib/core/route/template';

const GEMINI = '/models/{model}:generateContent';
const BEDROCK = '/model/{modelId:colon}/converse';

describe('templateProblems (the route path grammar)', () => {
  it.each([
    '/',
    '/items',
    '/items/:id',
    '/items/:id/tags/:tag',
    '/files/*',
    '/*',
    GEMINI,
    '/models/{model}:streamGenerateContent',
    '/v1beta/models/{model}:countTokens',
    BEDROCK,
    '/model/{modelId:colon}/converse-stream',
    '/images:annotate',
    '/projects/{project}/locations/{location}/models/{model}:predict',
    '/files/{name}.json',
    '/v1/{version}',
    '/x/pre-{id}-post',
    '/x/{v:colon}:x',
    '/issues/{issue_number:int}',
    '/issues/{n:int}/comments',
    '/v{n:int}.json',
    '/x/{n:int}:x',
  ])('accepts %s', (path) => {
    expect(templateProblems(path)).toEqual([]);
  });

  it.each([
    ['no leading slash', 'items'],
    ['":" opening a literal (not a :name)', '/:-generateContent'],
    ['":name" with a literal after it (ambiguous; write {name}:suffix)', '/models/:model:generateContent'],
    ['two :params in a segment', '/:a:b'],
    ['":" closing a literal', '/items:'],
    ['doubled ":"', '/a::b'],
    ['":" right before a {param}', '/models/:{model}'],
    ['":" closing the suffix', '/models/{model}:'],
    ['doubled ":" in the suffix', '/models/{model}::x'],
    ['special scheme before ":"', '/https:evil.example'],
    ['drive letter', '/C:x'],
    ['two {params} in one segment', '/{a}-{b}'],
    ['unclosed brace', '/{model'],
    ['stray closing brace', '/model}'],
    ['empty braces', '/{}'],
    ['a name that is not an identifier', '/{1x}'],
    ['unknown modifier', '/{model:any}'],
    ['unknown type', '/{n:integer}'],
    [':name with a type (types are braced only)', '/:n:int'],
    ['a type and :colon together', '/{n:int:colon}'],
    [':colon and a type together', '/{n:colon:int}'],
    ['an upper-case type', '/{n:INT}'],
    ['nested braces', '/{{model}}'],
    ['"%" in a literal', '/a%3Ab'],
    ['unicode colon', '/a\uFF1Ab'],
    ['"*" not last', '/*/x'],
    ['dot segment', '/a/../b'],
    ['empty segment', '/a//b'],
    ['a parameter declared twice', '/a/:id/b/{id}:x'],
  ])('refuses %s', (_label, path) => {
    expect(templateProblems(path).length).toBeGreaterThan(0);
  });

  it('names the offending segment by its position, never its text (a URL pasted from docs may carry a key), and the duplicate parameter', () => {
    expect(templateProblems('/models/:model:generateContent')[0]).toContain('segment 2 is not a literal');
    expect(templateProblems('/models/:model:generateContent')[0]).not.toContain('generateContent');
    const pasted = templateProblems('/data/2.5/forecast?appid=sk_live_pasted_by_mistake_0123');
    expect(pasted).toEqual(['segment 3 holds a "?" or "#": a route path has no query string or fragment (declare query parameters under "query")']);
    expect(templateProblems('/a/b c%zz/x').join(' ')).not.toContain('b c');
    expect(templateProblems('/a/:id/{id}')).toEqual(['parameter "id" is declared twice']);
    expect(templateProblems('/a/{n:int}/{n}')).toEqual(['parameter "n" is declared twice']);
    const unknownType = templateProblems('/a/{n:foo}');
    expect(unknownType).toHaveLength(1);
    expect(unknownType[0]).toContain('segment 2 is not a literal');
    expect(unknownType[0]).toContain('{param:int}');
    expect(unknownType[0]).not.toContain('foo');
  });

  it('orders templates most specific first: literal, {param} with text, :param, *; equal ranks as declared', () => {
    const paths = ['/files/*', '/repos/:owner/:repo/issues', '/models/{m}:generate', '/repos/acme/private/issues', '/models/:m', '/repos/:owner/:repo/pulls'];
    const sorted = paths.map((path) => ({ path, segments: compileTemplate(path) })).sort((a, b) => bySpecificity(a.segments, b.segments));
    expect(sorted.map((entry) => entry.path)).toEqual([
      '/repos/acme/private/issues',
      '/models/{m}:generate',
      '/models/:m',
      '/repos/:owner/:repo/issues',
      '/repos/:owner/:repo/pulls',
      '/files/*',
    ]);
    expect(bySpecificity(compileTemplate('/files/report'), compileTemplate('/files/*'))).toBeLessThan(0);
  });

  it('a {param:int} filling a segment comes after literals and text around a parameter, before an untyped :param', () => {
    const paths = ['/a/*', '/a/:x', '/a/{x}.json', '/a/{n:int}', '/a/v{n:int}.json', '/a/comments'];
    const sorted = paths.map((path) => ({ path, segments: compileTemplate(path) })).sort((a, b) => bySpecificity(a.segments, b.segments));
    // With text around it, a typed parameter comes before an untyped one too.
    expect(sorted.map((entry) => entry.path)).toEqual(['/a/comments', '/a/v{n:int}.json', '/a/{x}.json', '/a/{n:int}', '/a/:x', '/a/*']);
    expect(bySpecificity(compileTemplate('/a/{n:int}'), compileTemplate('/a/{m}'))).toBeLessThan(0);
    expect(bySpecificity(compileTemplate('/a/{n:int}'), compileTemplate('/a/{m:int}'))).toBe(0);
  });

  it('typed and untyped parameters are different shapes; two typed ones of one method are the same', () => {
    expect(templateShape('/a/{n:int}')).not.toBe(templateShape('/a/:x'));
    expect(templateShape('/a/{n:int}')).toBe(templateShape('/a/{m:int}'));
    expect(templateShape('/a/v{n:int}.json')).not.toBe(templateShape('/a/v{n}.json'));
    const define = (routes: Array<{ method: 'GET'; path: string }>) => () =>
      defineUpstream('g', { baseUrl: 'https://api.example.com/', auth: { type: 'bearer', secret: { env: 'K' } }, routes });
    expect(define([{ method: 'GET', path: '/a/{n:int}' }, { method: 'GET', path: '/a/:x' }])).not.toThrow();
    expect(define([{ method: 'GET', path: '/a/{n:int}' }, { method: 'GET', path: '/a/{m:int}' }])).toThrow(
      /routes\.1\.path: matches the same GET requests as routes\.0/,
    );
  });

  it('two routes of one method for the same requests (parameter names aside) stop start-up naming the later one', () => {
    const define = (routes: Array<{ method: 'GET' | 'DELETE'; path: string; roles?: string[] }>) => () =>
      defineUpstream('g', { baseUrl: 'https://api.example.com/', auth: { type: 'bearer', secret: { env: 'K' } }, routes });
    expect(define([{ method: 'DELETE', path: '/items/:id', roles: ['admin'] }, { method: 'DELETE', path: '/items/:item', roles: ['user'] }])).toThrow(
      /routes\.1\.path: matches the same DELETE requests as routes\.0: only one could serve/,
    );
    expect(define([{ method: 'GET', path: '/x/*' }, { method: 'GET', path: '/x/*' }])).toThrow(/routes\.1\.path/);
    // Other methods, or shapes that differ (a literal, text around a parameter), are separate routes.
    expect(define([{ method: 'GET', path: '/items/:id' }, { method: 'DELETE', path: '/items/:id' }, { method: 'GET', path: '/items/new' }, { method: 'GET', path: '/items/{id}.json' }])).not.toThrow();
  });

  it('is what the config schema applies: an invalid template stops start-up naming the field', () => {
    const define = (path: string) => () =>
      defineUpstream('g', {
        baseUrl: 'https://api.example.com/',
        auth: { type: 'bearer', secret: { env: 'K' } },
        routes: [{ method: 'POST', path }],
      });
    expect(define(GEMINI)).not.toThrow();
    expect(define(BEDROCK)).not.toThrow();
    expect(define('/models/{model}::x')).toThrow(/routes\.0\.path/);
  });
});

describe('compileTemplate', () => {
  it('compiles literals, whole and braced parameters, and a final *', () => {
    expect(compileTemplate('/')).toEqual([]);
    expect(compileTemplate('/images:annotate/:id/*')).toEqual([
      'images:annotate',
      { param: 'id', prefix: '', suffix: '', colons: false, int: false },
      { rest: true },
    ]);
    expect(compileTemplate(GEMINI)).toEqual([
      'models',
      { param: 'model', prefix: '', suffix: ':generateContent', colons: false, int: false },
    ]);
    expect(compileTemplate(BEDROCK)).toEqual([
      'model',
      { param: 'modelId', prefix: '', suffix: '', colons: true, int: false },
      'converse',
    ]);
    expect(compileTemplate('/x/pre-{id}-post')).toEqual([
      'x',
      { param: 'id', prefix: 'pre-', suffix: '-post', colons: false, int: false },
    ]);
  });

  it('throws on a template that was not validated', () => {
    expect(() => compileTemplate('/{a}{b}')).toThrow();
  });

  it('lists parameter names, braced ones included', () => {
    expect(templateParamNames('/p/{project}/m/{model}:predict/:id/*')).toEqual(['project', 'model', 'id']);
    expect(templateParamNames('/issues/{issue_number:int}/v{n:int}.json')).toEqual(['issue_number', 'n']);
  });

  it('compiles {param:int}, whole or with text around it', () => {
    expect(compileTemplate('/issues/{issue_number:int}/v{n:int}.json')).toEqual([
      'issues',
      { param: 'issue_number', prefix: '', suffix: '', colons: false, int: true },
      { param: 'n', prefix: 'v', suffix: '.json', colons: false, int: true },
    ]);
  });
});

describe('captureParam', () => {
  const gemini: TemplateParam = { param: 'model', prefix: '', suffix: ':generateContent', colons: false, int: false };
  const bedrock: TemplateParam = { param: 'modelId', prefix: '', suffix: '', colons: true, int: false };
  const plain: TemplateParam = { param: 'id', prefix: '', suffix: '', colons: false, int: false };
  const framed: TemplateParam = { param: 'id', prefix: 'pre-', suffix: '-post', colons: false, int: false };

  it('takes the value between the literal prefix and suffix', () => {
    expect(captureParam(gemini, 'gemini-2.0-flash:generateContent')).toBe('gemini-2.0-flash');
    expect(captureParam(framed, 'pre-42-post')).toBe('42');
    expect(captureParam(plain, '42')).toBe('42');
  });

  it('matches the literal text exactly (case-sensitive, whole suffix, non-empty value)', () => {
    for (const segment of [
      'gemini-2.0-flash:generatecontent',
      'gemini-2.0-flash:generateContentX',
      'gemini-2.0-flash:generate',
      'gemini-2.0-flash',
      ':generateContent',
      'generateContent',
    ]) {
      expect(captureParam(gemini, segment), segment).toBeNull();
    }
    expect(captureParam(framed, 'pre--post')).toBeNull();
  });

  it('a value never holds ":" unless the parameter allows it', () => {
    expect(captureParam(gemini, 'ab:cd:generateContent')).toBeNull();
    expect(captureParam(plain, 'localhost:80')).toBeNull();
    expect(captureParam(plain, 'anthropic.claude-3-5-sonnet-20240620-v1:0')).toBeNull();
    expect(captureParam(bedrock, 'anthropic.claude-3-5-sonnet-20240620-v1:0')).toBe(
      'anthropic.claude-3-5-sonnet-20240620-v1:0',
    );
    expect(captureParam(bedrock, 'us.anthropic.claude-3-7-sonnet-20250219-v1:0')).toBe(
      'us.anthropic.claude-3-7-sonnet-20250219-v1:0',
    );
  });

  it('a value that allows ":" still obeys the segment rules on its own', () => {
    const colonFramed: TemplateParam = { param: 'v', prefix: 'x', suffix: ':y', colons: true, int: false };
    expect(captureParam(colonFramed, 'xab:c:y')).toBe('ab:c');
    // The value alone would start with ":" or be a scheme or drive letter.
    expect(captureParam(colonFramed, 'x:a:y')).toBeNull();
    expect(captureParam({ param: 'v', prefix: 'p', suffix: '', colons: true, int: false }, 'pC:x')).toBeNull();
    expect(captureParam({ param: 'v', prefix: 'p', suffix: '', colons: true, int: false }, 'phttps:x')).toBeNull();
    expect(captureParam({ param: 'v', prefix: 'p', suffix: '', colons: false, int: false }, 'p..')).toBeNull();
  });

  it('{param:int} takes only an integer in canonical decimal within the 64-bit range: "0", or an optional "-" then digits without a leading zero', () => {
    const whole: TemplateParam = { param: 'n', prefix: '', suffix: '', colons: false, int: true };
    const json: TemplateParam = { param: 'n', prefix: 'v', suffix: '.json', colons: false, int: true };
    for (const value of ['0', '12', '-3', '9007199254740993', '9223372036854775807', '-9223372036854775808']) {
      expect(captureParam(whole, value), value).toBe(value);
      expect(captureParam(json, `v${value}.json`), value).toBe(value);
    }
    for (const value of ['comments', 'events', '-', '--1', '+1', '1.5', '1e3', '0x1f', '12a', 'a12', '1_000', '1,000', '١٢', 'Infinity', 'NaN', '12.', '007', '-0', '9223372036854775808', '-9223372036854775809', '123456789012345678901234567890']) {
      expect(captureParam(whole, value), value).toBeNull();
      expect(captureParam(json, `v${value}.json`), value).toBeNull();
    }
  });
});
