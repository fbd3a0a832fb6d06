import { describe, expect, it } from 'vitest';
import { hasQueryParam, queryParamKey } from '../../../lib/core/forward/query';

const params = (search: string) => new URLSearchParams(search);

describe('queryParamKey: the name a lenient upstream parser could read', () => {
  it.each([
    ['key', 'key'],
    ['KEY', 'key'],
    ['Api_Key', 'api_key'],
    ['key\0', 'key'],
    ['key\0junk', 'key'],
    [' key ', 'key'],
    ['\tkey\r\n', 'key'],
    ['key\x7f', 'key'],
    ['key\u00a0', 'key'],
    ['key[]', 'key'],
    ['key[0]', 'key'],
    ['key[a][b]', 'key'],
    ['KEY [] ', 'key'],
    ['key%00', 'key'],
    ['key%5B%5D', 'key'],
    ['api.key', 'api_key'],
    ['api key', 'api_key'],
    ['api[key', 'api_key'],
    ['_METHOD', '_method'],
    ['ACCESS_TOKEN', 'access_token'],
    ['acce\u017f\u017f_token', 'access_token'],
    ['api_\u212aey', 'api_key'],
    ['\uff41pi_key', 'api_key'],
    // qs (Express's req.query) reads `[name]` as `name`; Rack 2 skips leading brackets and ends a name at `]`.
    ['[access_token]', 'access_token'],
    ['%5B_method%5D', '_method'],
    ['[api_key][x]', 'api_key'],
    [']api_key', 'api_key'],
    ['[[key', 'key'],
    ['key]', 'key'],
    ['key]junk', 'key'],
  ])('%j → %j', (name, key) => {
    expect(queryParamKey(name)).toBe(key);
  });

  it('keeps distinct names distinct', () => {
    expect(queryParamKey('keys')).toBe('keys');
    expect(queryParamKey('my_key')).toBe('my_key');
    expect(queryParamKey('a[key]')).toBe('a');
    expect(queryParamKey('%zz')).toBe('%zz');
  });
});

describe('hasQueryParam', () => {
  // The attack session's spellings, as a client sends them on the query string.
  it.each(['key=x', 'key%00=x', 'key[]=x', 'key%5B%5D=x', 'KEY%20=x', 'KEY+=x', 'a=1&%20key=x', 'Key[0]=x', 'key%2500=x'])(
    'finds the reserved "key" in ?%s',
    (search) => {
      expect(hasQueryParam(params(search), 'key')).toBe(true);
    },
  );

  it.each(['_METHOD=PUT', '_method[]=PUT', '_method%00=PUT', '.method=PUT', '%20_method=PUT'])('finds _method in ?%s', (search) => {
    expect(hasQueryParam(params(search), '_method')).toBe(true);
  });

  it.each(['ACCESS_TOKEN=t', 'access_token[]=t', 'access_token%00=t', 'access.token=t', 'Access_Token%20=t'])(
    'finds access_token in ?%s',
    (search) => {
      expect(hasQueryParam(params(search), 'access_token')).toBe(true);
    },
  );

  it('finds nothing in other names, values, or an empty query', () => {
    expect(hasQueryParam(params(''), 'key')).toBe(false);
    expect(hasQueryParam(params('keys=1&monkey=2&x=key&y=_method'), 'key')).toBe(false);
    expect(hasQueryParam(params('method=PUT&x=_method'), '_method')).toBe(false);
    expect(hasQueryParam(params('token=1&access=2'), 'access_token')).toBe(false);
  });

  it('normalises the reserved name too (a credential named api.key is read as api_key)', () => {
    expect(hasQueryParam(params('api_key=x'), 'api.key')).toBe(true);
    expect(hasQueryParam(params('API_KEY=x'), 'api_key')).toBe(true);
  });
});
