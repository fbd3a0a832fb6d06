import { describe, expect, it } from 'vitest';
import { buildCallUrl, buildQuery, expandPath } from '../../../lib/client/url';

describe('expandPath', () => {
  it('fills each parameter into one percent-encoded segment', () => {
    expect(expandPath('/items/:id', { id: 'a/b' })).toBe('/items/a%2Fb');
    expect(expandPath('/items/:id', { id: 'x?y#z%' })).toBe('/items/x%3Fy%23z%25');
    expect(expandPath('/users/:user/items/:id', { user: 'ada', id: 7 })).toBe('/users/ada/items/7');
    expect(expandPath('/items/:id', { id: 'ü' })).toBe('/items/%C3%BC');
  });

  it('keeps literal text as written, and a {param} inside its segment', () => {
    expect(expandPath('/models/{model}:generateContent', { model: 'gemini-2.0' })).toBe('/models/gemini-2.0:generateContent');
    expect(expandPath('/models/{model:colon}', { model: 'a:b' })).toBe('/models/a%3Ab');
    expect(expandPath('/v1/images:annotate', {})).toBe('/v1/images:annotate');
    // The root route is the upstream's own URL, without a trailing "/" (an empty segment, refused by the proxy).
    expect(expandPath('/', {})).toBe('');
    expect(buildCallUrl('/api/proxy', 'status', '/', undefined, undefined)).toBe('/api/proxy/status');
  });

  it('splits the final * on "/" (or takes an array), encoding each part alone', () => {
    expect(expandPath('/files/*', { '*': 'docs/a b.txt' })).toBe('/files/docs/a%20b.txt');
    expect(expandPath('/files/*', { '*': ['docs', 'a/b'] })).toBe('/files/docs/a%2Fb');
  });

  it('refuses what would change the path: missing, empty, "." and ".." values', () => {
    expect(() => expandPath('/items/:id', {})).toThrow(/"id" is missing/);
    expect(() => expandPath('/items/:id', { id: '' })).toThrow(TypeError);
    expect(() => expandPath('/items/:id', { id: '..' })).toThrow(/cannot be "\." or "\.\."/);
    expect(() => expandPath('/items/:id', { id: '.' })).toThrow(TypeError);
    expect(() => expandPath('/models/{model}', { model: '..' })).toThrow(TypeError);
    // Text around the value that finishes a dot segment: fetch would resolve it to another path.
    expect(() => expandPath('/files/{name}.', { name: '.' })).toThrow(/makes the segment "\.\."/);
    expect(() => expandPath('/config/.{name}', { name: '.' })).toThrow(TypeError);
    expect(expandPath('/files/{name}.', { name: 'a' })).toBe('/files/a.');
    expect(() => expandPath('/files/*', { '*': 'a/../b' })).toThrow(TypeError);
    expect(() => expandPath('/files/*', { '*': 'a//b' })).toThrow(TypeError);
    expect(() => expandPath('/items/:id', { id: Number.NaN })).toThrow(TypeError);
    expect(() => expandPath('items', {})).toThrow(/starts with "\/"/);
    // The path's own text too (a path built by concatenation): "/../admin" would leave /api/proxy/<upstream>.
    expect(() => expandPath('/../admin', {})).toThrow(/cannot be "\." or "\.\."/);
    expect(() => expandPath('/./x/:id', { id: 'q' })).toThrow(TypeError);
    expect(expandPath('/x/..y/:id', { id: 'q' })).toBe('/x/..y/q');
    // The text around a braced parameter is the path's own text too: encoded, never a query, fragment or escape.
    expect(expandPath('/x/a?{id}', { id: 'b' })).toBe('/x/a%3Fb');
    expect(expandPath('/x/{id}#', { id: 'b' })).toBe('/x/b%23');
    expect(expandPath('/x/%2E{id}', { id: '.' })).toBe('/x/%252E.');
    expect(expandPath('/models/{model}:generateContent', { model: 'gemini-2.5' })).toBe('/models/gemini-2.5:generateContent');
  });

  it('fills a {param:int}, whole or inside its segment, with an integer only (the proxy would answer 404)', () => {
    expect(expandPath('/issues/{number:int}', { number: 12 })).toBe('/issues/12');
    expect(expandPath('/issues/{number:int}', { number: '-3' })).toBe('/issues/-3');
    expect(expandPath('/reports/v{version:int}.json', { version: 3 })).toBe('/reports/v3.json');
    expect(expandPath('/issues/{number:int}', { number: -0 })).toBe('/issues/0');
    expect(expandPath('/issues/{number:int}', { number: Number.MAX_SAFE_INTEGER })).toBe('/issues/9007199254740991');
    // Not the number the proxy would match: another spelling (`007`, `-0`), or past the safe integers, where a
    // number is no longer the id it was written as (2^53 + 1 prints as 2^53).
    // A 64-bit id as a string (a snowflake id past 2^53).
    expect(expandPath('/issues/{number:int}', { number: '1790000000000000001' })).toBe('/issues/1790000000000000001');
    for (const number of ['comments', '1.5', ' 1', '+1', '1e3', '', '007', '-0', '9223372036854775808', 1.5, 1e21, 2 ** 53 + 2, Number.POSITIVE_INFINITY]) {
      expect(() => expandPath('/issues/{number:int}', { number }), String(number)).toThrow(TypeError);
      expect(() => expandPath('/reports/v{number:int}.json', { number }), String(number)).toThrow(TypeError);
    }
    expect(() => expandPath('/issues/{number:int}', { number: 'comments' })).toThrow('Path parameter "number" must be an integer in plain decimal');
    expect(() => expandPath('/issues/{number:int}', { number: 2 ** 53 + 2 })).toThrow('pass it as a string');
  });

  it('a parameter named like an Object property is only a parameter', () => {
    expect(() => expandPath('/x/:constructor', {})).toThrow(/"constructor" is missing/);
    expect(expandPath('/x/:__proto__', JSON.parse('{"__proto__": "p"}') as Record<string, string>)).toBe('/x/p');
  });
});

describe('buildQuery and buildCallUrl', () => {
  it('writes values as strings, repeats arrays, leaves out undefined and null', () => {
    expect(buildQuery({ q: 'a b&c', n: 3, on: true, tag: ['x', 'y'], none: undefined, nil: null })).toBe('q=a+b%26c&n=3&on=true&tag=x&tag=y');
    expect(buildQuery(new URLSearchParams([['a', '1']]))).toBe('a=1');
    expect(buildQuery(undefined)).toBe('');
  });

  it('puts it together under the base', () => {
    expect(buildCallUrl('/api/proxy', 'demo', '/items/:id', { id: 'a b' }, { v: 1 })).toBe('/api/proxy/demo/items/a%20b?v=1');
    expect(buildCallUrl('https://app.example.com/api/proxy', 'demo', '/events', undefined, {})).toBe('https://app.example.com/api/proxy/demo/events');
  });
});
