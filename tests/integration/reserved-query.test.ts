import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createHarness, expectKeywardError, expectNoSecretsInLogs, type Harness } from './harness';

/**
 * Reserved query parameter names in the spellings a lenient upstream parser still reads as them. Each query
 * is sent exactly as the attack session sent it; before the fix these reached the upstream next to the key.
 */

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

async function expectRefused(upstream: string, query: string, status: number, code: string): Promise<void> {
  const before = h.upstream.requests.length;
  const result = await h.call(['items', '1'], { upstream, query });
  expectKeywardError(result, status, code, h);
  expect(h.upstream.requests.length).toBe(before);
}

describe("the credential's query parameter (query auth: api_key)", () => {
  it.each([
    '?api_key=mine',
    '?api_key%00=mine',
    '?api_key[]=mine',
    '?api_key%5B%5D=mine',
    '?api_key[0]=mine',
    '?API_KEY%20=mine',
    '?API_KEY+=mine',
    '?%20api_key=mine',
    '?API_KEY=mine',
    '?Api_Key=mine',
    '?api.key=mine',
    '?page=2&api_key%2500=mine',
  ])('%s → 400 bad_request, nothing sent upstream', async (query) => {
    await expectRefused('query', query, 400, 'bad_request');
  });

  it('other names, and the reserved name as a value, still pass (with the key appended once)', async () => {
    const result = await h.call(['items', '1'], { upstream: 'query', query: '?api_keys=1&my_api_key=2&q=api_key' });
    expect(result.response.status).toBe(200);
    const url = new URL(h.upstream.requests.at(-1)!.url, 'http://upstream.invalid');
    expect(url.searchParams.getAll('api_key')).toEqual([h.keys.query]);
    expect([...url.searchParams.keys()]).toEqual(['api_keys', 'my_api_key', 'q', 'api_key']);
  });
});

describe('_method (method override)', () => {
  it.each(['?_METHOD=DELETE', '?_method[]=DELETE', '?_method%00=DELETE', '?_Method%20=DELETE', '?.method=DELETE', '?a=1&_method%5B%5D=PUT'])(
    '%s → 400 method_override_refused, on every upstream',
    async (query) => {
      await expectRefused('echo', query, 400, 'method_override_refused');
      await expectRefused('query', query, 400, 'method_override_refused');
    },
  );
});

describe('access_token (tokens are not accepted in URLs)', () => {
  it.each(['?ACCESS_TOKEN=t', '?access_token[]=t', '?access_token%00=t', '?Access_Token+=t', '?access.token=t'])(
    '%s → 400 bad_request, nothing sent upstream',
    async (query) => {
      await expectRefused('echo', query, 400, 'bad_request');
    },
  );
});
