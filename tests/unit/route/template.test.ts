import { describe, expect, it } from 'vitest';
import { defineUpstream } from '../../../lib/core/config/load';
import {
  bySpecificity,
  captureParam,
  compileTemplate,
  templateParamNames,
  templateProblems,
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
      { param: 'id', prefix: '', suffix: '', colons: false },
      { rest: true },
    ]);
    expect(compileTemplate(GEMINI)).toEqual([
      'models',
      { param: 'model', prefix: '', suffix: ':generateContent', colons: false },
    ]);
    expect(compileTemplate(BEDROCK)).toEqual([
      'model',
      { param: 'modelId', prefix: '', suffix: '', colons: true },
      'converse',
    ]);
    expect(compileTemplate('/x/pre-{id}-post')).toEqual([
      'x',
      { param: 'id', prefix: 'pre-', suffix: '-post', colons: false },
    ]);
  });

  it('throws on a template that was not validated', () => {
    expect(() => compileTemplate('/{a}{b}')).toThrow();
  });

  it('lists parameter names, braced ones included', () => {
    expect(templateParamNames('/p/{project}/m/{model}:predict/:id/*')).toEqual(['project', 'model', 'id']);
  });
});

describe('captureParam', () => {
  const gemini: TemplateParam = { param: 'model', prefix: '', suffix: ':generateContent', colons: false };
  const bedrock: TemplateParam = { param: 'modelId', prefix: '', suffix: '', colons: true };
  const plain: TemplateParam = { param: 'id', prefix: '', suffix: '', colons: false };
  const framed: TemplateParam = { param: 'id', prefix: 'pre-', suffix: '-post', colons: false };

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
    const colonFramed: TemplateParam = { param: 'v', prefix: 'x', suffix: ':y', colons: true };
    expect(captureParam(colonFramed, 'xab:c:y')).toBe('ab:c');
    // The value alone would start with ":" or be a scheme or drive letter.
    expect(captureParam(colonFramed, 'x:a:y')).toBeNull();
    expect(captureParam({ param: 'v', prefix: 'p', suffix: '', colons: true }, 'pC:x')).toBeNull();
    expect(captureParam({ param: 'v', prefix: 'p', suffix: '', colons: true }, 'phttps:x')).toBeNull();
    expect(captureParam({ param: 'v', prefix: 'p', suffix: '', colons: false }, 'p..')).toBeNull();
  });
});
