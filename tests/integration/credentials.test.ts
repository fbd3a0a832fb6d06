import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BASIC_USERNAME, createHarness, expectNoSecrets, expectNoSecretsInLogs, expectKeywardError, type Harness } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

function headerCount(raw: readonly string[], name: string): number {
  let count = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) count += 1;
  return count;
}

describe('the server-held key is attached upstream', () => {
  it('header auth: x-api-key carries the key, under the fixed base path', async () => {
    const before = h.upstream.requests.length;
    const result = await h.call(['items', '42']);
    expect(result.response.status).toBe(200);
    expect(h.upstream.requests.length).toBe(before + 1);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.method).toBe('GET');
    expect(seen.url).toBe('/v1/items/42');
    expect(seen.headers['x-api-key']).toBe(h.keys.header);
    expect(headerCount(seen.rawHeaders, 'x-api-key')).toBe(1);
    expect(seen.headers.authorization).toBeUndefined();
    // The upstream echoed the key in its body: the scrubber must have removed it.
    expect(result.text).toContain('[REDACTED]');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('bearer auth: Authorization: Bearer <key>', async () => {
    const result = await h.call(['items', '1'], { upstream: 'bearer' });
    expect(result.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.headers.authorization).toBe(`Bearer ${h.keys.bearer}`);
    expect(headerCount(seen.rawHeaders, 'authorization')).toBe(1);
    expect(seen.headers['x-api-key']).toBeUndefined();
    expect(result.text).toContain('[REDACTED]');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('basic auth: Authorization: Basic base64(username:password)', async () => {
    const result = await h.call(['items', '1'], { upstream: 'basic' });
    expect(result.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    const expected = Buffer.from(`${BASIC_USERNAME}:${h.keys.basic}`, 'utf8').toString('base64');
    expect(seen.headers.authorization).toBe(`Basic ${expected}`);
    expect(headerCount(seen.rawHeaders, 'authorization')).toBe(1);
    expect(result.text).toContain('[REDACTED]');
    expect(result.text).not.toContain(expected);
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('query auth: the key is appended as ?api_key=, after the client query', async () => {
    const result = await h.call(['items', '1'], { upstream: 'query', query: '?page=2&q=a%20b' });
    expect(result.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    const url = new URL(seen.url, 'http://upstream.invalid');
    expect(url.pathname).toBe('/v1/items/1');
    expect(url.searchParams.getAll('api_key')).toEqual([h.keys.query]);
    expect(url.searchParams.get('page')).toBe('2');
    expect(url.searchParams.get('q')).toBe('a b');
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers['x-api-key']).toBeUndefined();
    expect(result.text).toContain('[REDACTED]');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('query auth: the request log names the upstream origin and path, never the query that carries the key', async () => {
    const result = await h.call(['items', '3'], { upstream: 'query', query: '?page=9' });
    expect(result.response.status).toBe(200);
    await result.response.text().catch(() => undefined);
    const line = h.logs
      .flatMap((chunk) => chunk.split('\n'))
      .filter(Boolean)
      .map((text) => JSON.parse(text) as { proxy?: { requestId: string; target: string | null; route: string | null } })
      .find((entry) => entry.proxy?.requestId === result.response.headers.get('x-request-id'));
    expect(line?.proxy?.route).toBe('/items/:id');
    expect(line?.proxy?.target).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1\/items\/3$/);
    expect(JSON.stringify(line)).not.toContain('page=9');
    expect(JSON.stringify(line)).not.toContain('api_key');
  });

  it('query auth: a client query parameter named like the credential is refused, nothing sent upstream', async () => {
    const before = h.upstream.requests.length;
    const result = await h.call(['items', '1'], { upstream: 'query', query: '?api_key=client-chosen-value' });
    expectKeywardError(result, 400, 'bad_request', h);
    expect(h.upstream.requests.length).toBe(before);
  });
});

describe('client credentials and hop-by-hop headers never reach the upstream', () => {
  it('Authorization, Cookie, X-Api-Key and Proxy-Authorization from the client are dropped; the key wins', async () => {
    const result = await h.call(['items', '7'], {
      headers: {
        authorization: 'Bearer client-supplied-token',
        'x-api-key': 'client-supplied-key',
        'proxy-authorization': 'Basic Y2xpZW50OnByb3h5',
        cookie: `${h.cookie}; other=client-cookie`,
        accept: 'application/json',
        'idempotency-key': 'abc-123',
      },
    });
    expect(result.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.headers['x-api-key']).toBe(h.keys.header);
    expect(headerCount(seen.rawHeaders, 'x-api-key')).toBe(1);
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers['proxy-authorization']).toBeUndefined();
    expect(seen.headers.cookie).toBeUndefined();
    expect(JSON.stringify(seen.rawHeaders)).not.toMatch(/client-supplied|client-cookie|keyward\.session|Y2xpZW50OnByb3h5/);
    // Allow-listed headers still pass, so the filter is not simply dropping everything.
    expect(seen.headers.accept).toBe('application/json');
    expect(seen.headers['idempotency-key']).toBe('abc-123');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('headers the client lists in Connection are hop-by-hop: not forwarded, even allow-listed ones (RFC 9110 §7.6.1)', async () => {
    const result = await h.call(['items', '7'], {
      headers: { connection: 'keep-alive, Idempotency-Key ,if-none-match', accept: 'application/json', 'idempotency-key': 'abc-123', 'if-none-match': '"v1"' },
    });
    expect(result.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.headers['idempotency-key']).toBeUndefined();
    expect(seen.headers['if-none-match']).toBeUndefined();
    expect(seen.headers.accept).toBe('application/json');
  });

  it('a client Authorization header cannot replace the bearer key', async () => {
    const result = await h.call(['items', '7'], {
      upstream: 'bearer',
      headers: { authorization: 'Bearer client-supplied-token' },
    });
    expect(result.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.headers.authorization).toBe(`Bearer ${h.keys.bearer}`);
    expect(headerCount(seen.rawHeaders, 'authorization')).toBe(1);
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('a client Authorization header cannot replace the basic credential', async () => {
    const result = await h.call(['items', '7'], {
      upstream: 'basic',
      headers: { authorization: 'Basic Y2xpZW50OmNsaWVudA==' },
    });
    expect(result.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.headers.authorization).toBe(`Basic ${Buffer.from(`${BASIC_USERNAME}:${h.keys.basic}`).toString('base64')}`);
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('hop-by-hop headers (Connection, Keep-Alive, TE, Upgrade, Transfer-Encoding, Expect) and accept-encoding are not forwarded', async () => {
    const hopByHop = {
      connection: 'x-smuggle, close',
      'x-smuggle': 'yes',
      'keep-alive': 'timeout=600',
      te: 'trailers',
      upgrade: 'websocket',
      'transfer-encoding': 'chunked',
      expect: '100-continue',
      'accept-encoding': 'gzip, br',
      'content-type': 'application/json',
    };
    const body = JSON.stringify({ name: 'widget' });
    const result = await h.call(['items'], { method: 'POST', headers: hopByHop, body });
    expect(result.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.method).toBe('POST');
    expect(seen.bodyBytes).toBe(Buffer.byteLength(body));
    expect(seen.bodyPreview.toString('utf8')).toBe(body);
    expect(seen.headers['x-smuggle']).toBeUndefined();
    expect(seen.headers['keep-alive']).toBeUndefined();
    expect(seen.headers.te).toBeUndefined();
    expect(seen.headers.upgrade).toBeUndefined();
    expect(seen.headers.expect).toBeUndefined();
    expect(seen.headers.connection ?? 'keep-alive').toBe('keep-alive');
    // Keyward asks for identity and decodes itself; the browser's accept-encoding is not passed on.
    expect(seen.headers['accept-encoding']).toBe('identity');
    expect(seen.headers['content-type']).toBe('application/json');
    expect(seen.headers['x-api-key']).toBe(h.keys.header);
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('a client Host header does not redirect the call', async () => {
    const result = await h.call(['items', '9'], { headers: { host: 'evil.example' } });
    expect(result.response.status).toBe(200);
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.headers.host).toBe(`127.0.0.1:${h.upstream.port}`);
    expectNoSecrets(h.secrets, result.response, result.text);
  });
});
