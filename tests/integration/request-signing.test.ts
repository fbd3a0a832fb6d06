import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineUpstream } from '../../lib/core/config/load';
import { aws as awsPreset } from '../../lib/core/presets';
import { rawRequest } from '../fixtures/raw-http';
import { randomSecret } from '../fixtures/secrets';
import {
  verifyHmac,
  verifySigV4,
  verifyingUpstream,
  type HmacKey,
  type ReceivedRequest,
  type SigV4Key,
  type VerifyingUpstream,
} from '../fixtures/signature-verifiers';
import {
  createHarness,
  expectKeywardError,
  expectNoSecrets,
  expectNoSecretsInLogs,
  type CallResult,
  type Harness,
} from './harness';

/**
 * Request signing against a real upstream that verifies every request with an independent implementation
 * (tests/fixtures/signature-verifiers.ts): SigV4 recomputed with `aws4`, HMAC recomputed with node:crypto from
 * the canonical string in the README. A verifier that answers 403 fails the test that expected 200.
 */

// AWS secret access keys and session tokens are base64-like: "/" and "+" included, as real ones have them.
const aws = {
  accessKeyId: `AKIA${randomBytes(12).toString('hex').toUpperCase()}`,
  secretAccessKey: randomBytes(30).toString('base64'),
  sessionToken: `IQoJb3JpZ2lu${randomBytes(96).toString('base64')}`,
};
const hmacSecret = randomSecret('hmac');
const hmacSecret512 = randomSecret('hm512');
const hmacRingSecret = randomSecret('ring');

const bedrockKey: SigV4Key = {
  accessKeyId: aws.accessKeyId,
  secretAccessKey: aws.secretAccessKey,
  service: 'bedrock',
  region: 'us-east-1',
};
const temporaryKey: SigV4Key = {
  ...bedrockKey,
  service: 'execute-api',
  region: 'eu-west-1',
  sessionToken: aws.sessionToken,
};
const s3Key: SigV4Key = { ...bedrockKey, service: 's3', region: 'eu-central-1', allowUnsignedPayload: true };
const hmacKey: HmacKey = { secret: hmacSecret, keyId: 'inhouse-2026' };
const hmac512Key: HmacKey = {
  secret: hmacSecret512,
  algorithm: 'sha512',
  encoding: 'base64',
  header: 'x-hub-signature',
  prefix: 'sha512=',
  timestampHeader: 'x-hub-time',
};

const converseBody = z.object({
  messages: z
    .array(z.object({ role: z.enum(['user', 'assistant']), content: z.array(z.object({ text: z.string() })) }))
    .min(1),
  inferenceConfig: z.object({ maxTokens: z.number().int().max(4096) }).optional(),
});

let h: Harness;
beforeAll(async () => {
  h = await createHarness({
    secretEnv: {
      AWS_KEY_ID: aws.accessKeyId,
      AWS_SECRET: aws.secretAccessKey,
      AWS_TOKEN: aws.sessionToken,
      HMAC_SECRET: hmacSecret,
      HMAC_SECRET_512: hmacSecret512,
      HMAC_RING_SECRET: hmacRingSecret,
      KEYWARD_VAULT_SECRET: randomSecret('vault-secret-at-least-32-characters'),
    },
    upstreams: (origin) => {
      const base = `${origin}/v1/`;
      const credentials = { accessKeyId: { env: 'AWS_KEY_ID' }, secret: { env: 'AWS_SECRET' } };
      return [
        defineUpstream('bedrock', {
          baseUrl: base,
          auth: { type: 'aws-sigv4', service: 'bedrock', region: 'us-east-1', ...credentials },
          routes: [
            { method: 'POST', path: '/model/:model/converse', body: converseBody },
            { method: 'POST', path: '/model/:model/invoke', maxRequestBytes: 4096 },
            {
              method: 'GET',
              path: '/items/:id',
              // An AWS route takes only the query it declares (the query chooses the operation on S3 and the Query APIs).
              query: {
                properties: {
                  q: { type: 'string' },
                  tag: { type: 'array', items: { type: 'string' } },
                  empty: { type: 'string' },
                  star: { type: 'string' },
                  uni: { type: 'string' },
                  page: { type: 'integer' },
                },
              },
            },
            { method: 'GET', path: '/files/*' },
            { method: 'DELETE', path: '/items/:id' },
            {
              method: 'GET',
              path: '/presign/:id',
              query: { properties: { 'X-Amz-Signature': { type: 'string' }, 'x-amz-credential': { type: 'string' } } },
            },
          ],
          responseHeaders: ['x-amzn-requestid'],
          timeoutMs: 120_000,
        }),
        defineUpstream('aws-temp', {
          baseUrl: base,
          auth: {
            type: 'aws-sigv4',
            service: 'execute-api',
            region: 'eu-west-1',
            ...credentials,
            sessionToken: { env: 'AWS_TOKEN' },
          },
          routes: [{ method: 'GET', path: '/items/:id' }],
          timeoutMs: 120_000,
        }),
        defineUpstream('s3', {
          baseUrl: `${origin}/bucket/`,
          auth: { type: 'aws-sigv4', service: 's3', region: 'eu-central-1', payload: 'unsigned', ...credentials },
          routes: [
            { method: 'PUT', path: '/*', maxRequestBytes: 1024 * 1024 },
            { method: 'GET', path: '/*', query: { properties: { versionId: { type: 'string', maxLength: 1024 } } } },
            { method: 'DELETE', path: '/*' },
          ],
          timeoutMs: 120_000,
        }),
        defineUpstream('inhouse', {
          baseUrl: base,
          auth: { type: 'hmac', secret: { env: 'HMAC_SECRET' }, keyId: 'inhouse-2026' },
          routes: [
            {
              method: 'POST',
              path: '/items',
              body: { type: 'object', properties: { name: { type: 'string' }, count: { type: 'integer' } } },
            },
            { method: 'POST', path: '/upload', maxRequestBytes: 4096 },
            { method: 'GET', path: '/items/:id' },
            { method: 'GET', path: '/files/*' },
          ],
          timeoutMs: 120_000,
        }),
        defineUpstream('inhouse-512', {
          baseUrl: base,
          auth: {
            type: 'hmac',
            secret: { env: 'HMAC_SECRET_512' },
            algorithm: 'sha512',
            encoding: 'base64',
            header: 'X-Hub-Signature',
            prefix: 'sha512=',
            timestampHeader: 'x-hub-time',
          },
          routes: [{ method: 'POST', path: '/upload' }],
          timeoutMs: 120_000,
        }),
        // The aws preset, pointed at the test upstream: Bedrock model ids with ":" (lib/core/route/template.ts).
        awsPreset({
          id: 'bedrock-preset',
          baseUrl: `${origin}/`,
          ...credentials,
          models: ['amazon.nova-micro-v1:0'],
          maxOutputTokens: 512,
        }),
        awsPreset({ id: 'bedrock-any', baseUrl: `${origin}/`, ...credentials, models: '*' }),
        defineUpstream('inhouse-ring', {
          baseUrl: base,
          auth: { type: 'hmac', secret: { env: 'HMAC_RING_SECRET' } },
          routes: [{ method: 'GET', path: '/items/:id' }],
          keys: { canary: { method: 'GET', path: '/items/canary' } },
          timeoutMs: 120_000,
        }),
      ];
    },
  });
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

/** Installs a verifying upstream for the test. */
function verifying(verify: (request: ReceivedRequest) => ReturnType<typeof verifySigV4>): VerifyingUpstream {
  const upstream = verifyingUpstream(verify);
  h.upstream.handle(upstream.handler);
  return upstream;
}

/** The call passed the upstream's verifier: 200 from it, and its verdict was ok. */
function expectVerified(result: CallResult, upstream: VerifyingUpstream): ReceivedRequest {
  const seen = upstream.received.at(-1);
  expect(seen?.verdict).toEqual({ ok: true });
  expect(result.response.status).toBe(200);
  expect(result.json<{ verified: boolean }>().verified).toBe(true);
  expectNoSecrets(h.secrets, result.response, result.text);
  return seen!;
}

const json = (value: unknown) => ({ headers: { 'content-type': 'application/json' }, body: JSON.stringify(value) });

/** A request as received, sent again to the upstream with some part changed. */
async function replay(
  seen: ReceivedRequest,
  change: { path?: string; body?: string; headers?: Record<string, string> } = {},
) {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(seen.headers)) {
    if (value === undefined || name === 'connection' || name === 'transfer-encoding') continue;
    headers[name] = Array.isArray(value) ? value.join(',') : value;
  }
  const body = change.body ?? seen.body.toString('utf8');
  if (body.length > 0 || headers['content-length'] !== undefined)
    headers['content-length'] = String(Buffer.byteLength(body));
  Object.assign(headers, change.headers);
  return rawRequest(h.upstream.port, seen.method, change.path ?? seen.url, headers, body);
}

/** An X-Amz-Date (`20260101T120000Z`) one second earlier. */
function secondEarlier(amzDate: string): string {
  const iso = amzDate.replace(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/, '$1-$2-$3T$4:$5:$6Z');
  return new Date(Date.parse(iso) - 1000).toISOString().replace(/[-:]|\.\d{3}/g, '');
}

describe('aws-sigv4: every call is signed with @smithy/signature-v4 and verifies with aws4', () => {
  it('a GET with a query string: the query is sent in SigV4 encoding and signed', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const result = await h.call(['items', 'model.v1-x_y~z'], {
      upstream: 'bedrock',
      query: '?q=a%20b%2Bc&tag=y&tag=x&empty=&star=*&uni=%C3%A9',
    });
    const seen = expectVerified(result, upstream);
    // Spaces as %20, a plus sign as %2B, "*" escaped, non-ASCII as UTF-8 escapes: how AWS reads and signs them.
    expect(seen.url).toBe('/v1/items/model.v1-x_y~z?q=a%20b%2Bc&tag=y&tag=x&empty=&star=%2A&uni=%C3%A9');
    expect(seen.headers.authorization).toMatch(
      /^AWS4-HMAC-SHA256 Credential=AKIA[0-9A-F]+\/\d{8}\/us-east-1\/bedrock\/aws4_request, SignedHeaders=\S+, Signature=[0-9a-f]{64}$/,
    );
    expect(seen.headers.host).toBe(`127.0.0.1:${h.upstream.port}`);
    expect(seen.headers['x-amz-content-sha256']).toBe(
      'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    );
    // Keyward's own headers are part of what is signed.
    const signed = /SignedHeaders=([^,]+)/.exec(seen.headers.authorization!)![1]!.split(';');
    expect(signed).toEqual(
      expect.arrayContaining(['host', 'x-amz-date', 'x-amz-content-sha256', 'x-request-id', 'accept-encoding']),
    );
    // The echo carried the access key id in the Authorization header: the scrubber removed it.
    expect(result.text).toContain('[REDACTED]');
    expect(result.text).not.toContain(aws.accessKeyId);
  });

  it('a POST with a JSON contract body: the re-serialised body is what is hashed, signed and sent', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const body = {
      messages: [{ role: 'user', content: [{ text: 'Hello, Bedrock' }] }],
      inferenceConfig: { maxTokens: 256 },
    };
    const result = await h.call(['model', 'anthropic.claude-3-5-haiku-20241022-v1', 'converse'], {
      upstream: 'bedrock',
      method: 'POST',
      headers: { 'content-type': 'application/json; charset=utf-8' },
      // Spaces the contract's re-serialisation removes: the signature covers the bytes sent, not these.
      body: JSON.stringify(body, null, 2),
    });
    const seen = expectVerified(result, upstream);
    expect(seen.url).toBe('/v1/model/anthropic.claude-3-5-haiku-20241022-v1/converse');
    expect(seen.body.toString('utf8')).toBe(JSON.stringify(body));
    expect(seen.headers['content-type']).toBe('application/json');
    expect(seen.headers['content-length']).toBe(String(seen.body.length));
    const signed = /SignedHeaders=([^,]+)/.exec(seen.headers.authorization!)![1]!.split(';');
    expect(signed).toEqual(expect.arrayContaining(['content-type', 'content-length']));
  });

  it('a streamed body is read whole under the route cap, then signed and sent with its length', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const payload = JSON.stringify({
      anthropic_version: 'bedrock-2023-05-31',
      max_tokens: 64,
      messages: [{ role: 'user', content: 'x'.repeat(1500) }],
    });
    const chunks = [payload.slice(0, 700), payload.slice(700, 1400), payload.slice(1400)];
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = chunks.shift();
        if (next === undefined) controller.close();
        else controller.enqueue(new TextEncoder().encode(next));
      },
    });
    const result = await h.call(['model', 'meta.llama3-8b-instruct-v1', 'invoke'], {
      upstream: 'bedrock',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: stream,
    });
    const seen = expectVerified(result, upstream);
    expect(seen.body.toString('utf8')).toBe(payload);
    expect(seen.headers['content-length']).toBe(String(Buffer.byteLength(payload)));
    expect(seen.headers['transfer-encoding']).toBeUndefined();
  });

  it('a streamed body over the route cap is refused (413) before anything is signed or sent', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const result = await h.call(['model', 'meta.llama3-8b-instruct-v1', 'invoke'], {
      upstream: 'bedrock',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'y'.repeat(5000) }),
    });
    expectKeywardError(result, 413, 'payload_too_large', h);
    expect(upstream.received).toHaveLength(0);
  });

  it('path segments with sub-delimiters are signed as sent (double-encoded in the canonical request)', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const result = await h.call(['files', "a!b$c&d'e(f)g*h+i,j;k=l", 'v1.2~x'], { upstream: 'bedrock' });
    const seen = expectVerified(result, upstream);
    expect(seen.url).toBe(`/v1/files/${encodeURIComponent("a!b$c&d'e(f)g*h+i,j;k=l")}/v1.2~x`);
  });

  it('a DELETE (no body) is signed with the empty payload hash', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const result = await h.call(['items', '7'], { upstream: 'bedrock', method: 'DELETE' });
    const seen = expectVerified(result, upstream);
    expect(seen.method).toBe('DELETE');
    expect(seen.body.length).toBe(0);
  });

  it('temporary credentials: the session token is sent as X-Amz-Security-Token, signed, and scrubbed from the response', async () => {
    const upstream = verifying((request) => verifySigV4(request, temporaryKey));
    const result = await h.call(['items', '1'], { upstream: 'aws-temp' });
    const seen = expectVerified(result, upstream);
    expect(seen.headers['x-amz-security-token']).toBe(aws.sessionToken);
    expect(seen.headers.authorization).toContain('/eu-west-1/execute-api/aws4_request');
    expect(result.text).not.toContain(aws.sessionToken);
  });

  it('S3 with payload "unsigned": a streamed body goes through as UNSIGNED-PAYLOAD with the declared length', async () => {
    const upstream = verifying((request) => verifySigV4(request, s3Key));
    const content = 'z'.repeat(200_000);
    const result = await h.call(['reports', 'q1(final)!.csv'], {
      upstream: 's3',
      method: 'PUT',
      headers: { 'content-type': 'text/csv', 'content-length': String(content.length) },
      body: content,
    });
    const seen = expectVerified(result, upstream);
    expect(seen.headers['x-amz-content-sha256']).toBe('UNSIGNED-PAYLOAD');
    expect(seen.headers['content-length']).toBe(String(content.length));
    expect(seen.body.length).toBe(content.length);
    // S3 signs its decoded path encoded once: the path is sent in exactly that encoding.
    expect(seen.url).toBe('/bucket/reports/q1%28final%29%21.csv');
  });

  it('S3: a body-less GET carries the empty payload hash, which S3 requires', async () => {
    const upstream = verifying((request) => verifySigV4(request, s3Key));
    const result = await h.call(['reports', 'q1.csv'], { upstream: 's3', query: '?versionId=3%2F4' });
    const seen = expectVerified(result, upstream);
    expect(seen.url).toBe('/bucket/reports/q1.csv?versionId=3%2F4');
    expect(seen.headers['x-amz-content-sha256']).toBe(
      'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    );
  });

  it('S3: a query the route does not declare is refused, nothing signed or sent (it would pick another operation)', async () => {
    const upstream = verifying((request) => verifySigV4(request, s3Key));
    const attempts: { method: string; query: string }[] = [
      // PutObjectAcl (`x-amz-acl: public-read` is not forwarded, but an ACL body is), PutObjectTagging, retention…
      { method: 'PUT', query: '?acl' },
      { method: 'PUT', query: '?tagging' },
      { method: 'PUT', query: '?retention' },
      { method: 'PUT', query: '?legal-hold=' },
      { method: 'PUT', query: '?partNumber=1&uploadId=abc' },
      // AbortMultipartUpload, DeleteObjectTagging: a DELETE of one object turned into another operation.
      { method: 'DELETE', query: '?uploadId=abc' },
      { method: 'DELETE', query: '?tagging' },
      // S3 honours these on signed requests only: the stored file served as an HTML page.
      { method: 'GET', query: '?response-content-type=text%2Fhtml' },
      { method: 'GET', query: '?versionId=1&response-content-disposition=inline' },
      { method: 'GET', query: '?acl' },
    ];
    for (const { method, query } of attempts) {
      const result = await h.call(['uploads', 'page.html'], { upstream: 's3', method, query, ...(method === 'PUT' ? { body: 'x', headers: { 'content-type': 'text/plain' } } : {}) });
      expect(result.response.status, `${method} ${query}`).toBe(400);
      expect((JSON.parse(result.text) as { error: { code: string } }).error.code, `${method} ${query}`).toBe('contract_violation');
    }
    expect(upstream.received).toHaveLength(0);
    const acl = await h.call(['uploads', 'page.html'], { upstream: 's3', method: 'PUT', query: '?acl', body: 'x', headers: { 'content-type': 'text/plain' } });
    expect((JSON.parse(acl.text) as { error: { message: string } }).error.message).toContain('query: unknown field');
    // What the routes declare still goes through: a plain upload, a plain delete, a declared version id.
    expectVerified(await h.call(['uploads', 'page.txt'], { upstream: 's3', method: 'PUT', body: 'x', headers: { 'content-type': 'text/plain' } }), upstream);
    expectVerified(await h.call(['uploads', 'page.txt'], { upstream: 's3', method: 'DELETE' }), upstream);
    expect(expectVerified(await h.call(['uploads', 'page.txt'], { upstream: 's3', query: '?versionId=7' }), upstream).url).toBe('/bucket/uploads/page.txt?versionId=7');
  });

  it('any AWS service: a route without a query contract takes no query (the Query APIs read the operation from `Action`)', async () => {
    const upstream = verifying((request) => verifySigV4(request, temporaryKey));
    const result = await h.call(['items', '1'], { upstream: 'aws-temp', query: '?Action=DeleteQueue' });
    expectKeywardError(result, 400, 'contract_violation', h);
    expect(upstream.received).toHaveLength(0);
  });

  it('the client cannot supply or override the signature headers', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const result = await h.call(['items', '3'], {
      upstream: 'bedrock',
      headers: {
        authorization:
          'AWS4-HMAC-SHA256 Credential=AKIACLIENTCHOSEN/20000101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00',
        'x-amz-date': '20000101T000000Z',
        'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
        'x-amz-security-token': 'client-chosen-token',
        date: 'Sat, 01 Jan 2000 00:00:00 GMT',
      },
    });
    const seen = expectVerified(result, upstream);
    expect(JSON.stringify(seen.headers)).not.toMatch(
      /CLIENTCHOSEN|client-chosen-token|20000101|UNSIGNED-PAYLOAD|2000 00:00/,
    );
  });

  it('presigned-URL query parameters from the client are refused, nothing sent upstream', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    // Undeclared, as any parameter a route does not declare.
    for (const query of ['?X-Amz-Signature=00', '?x-amz-credential=AKIAEVIL%2F20000101', '?X-Amz-Security-Token[]=t']) {
      const result = await h.call(['items', '3'], { upstream: 'bedrock', query });
      expectKeywardError(result, 400, 'contract_violation', h);
    }
    // Declared by a route's contract (a mistake): still never signed or sent.
    for (const query of ['?X-Amz-Signature=00', '?x-amz-credential=AKIAEVIL%2F20000101']) {
      const result = await h.call(['presign', '3'], { upstream: 'bedrock', query });
      expectKeywardError(result, 400, 'bad_request', h);
    }
    expect(upstream.received).toHaveLength(0);
  });

  it('a tampered request fails verification: body, path, query, a signed header, the date', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const body = { messages: [{ role: 'user', content: [{ text: 'transfer 10' }] }] };
    expectVerified(
      await h.call(['model', 'm1', 'converse'], { upstream: 'bedrock', method: 'POST', ...json(body) }),
      upstream,
    );
    const post = upstream.received.at(-1)!;
    expectVerified(await h.call(['items', '5'], { upstream: 'bedrock', query: '?page=1' }), upstream);
    const get = upstream.received.at(-1)!;

    // The replay itself is faithful: unchanged, it verifies (replays are the verifier's business, see README).
    expect((await replay(get)).status).toBe(200);
    const tampered = [
      await replay(post, {
        body: JSON.stringify({ messages: [{ role: 'user', content: [{ text: 'transfer 99' }] }] }),
      }),
      await replay(post, { path: '/v1/model/m2/converse' }),
      await replay(get, { path: '/v1/items/5?page=2' }),
      await replay(get, { path: '/v1/items/6?page=1' }),
      await replay(get, { headers: { 'x-request-id': '00000000-0000-4000-8000-000000000000' } }),
      await replay(get, { headers: { 'accept-encoding': 'gzip' } }),
      await replay(get, { headers: { 'x-amz-date': secondEarlier(String(get.headers['x-amz-date'])) } }),
    ];
    expect(tampered.map((response) => response.status)).toEqual(tampered.map(() => 403));
    expect(upstream.received.slice(-tampered.length).every((r) => !r.verdict.ok)).toBe(true);
  });

  it("the upstream's refusal (403 naming the key) is passed on scrubbed: no access key id, secret or token", async () => {
    // The verifier expects another secret: every signature is wrong, and its error repeats Authorization.
    const upstream = verifying((request) =>
      verifySigV4(request, { ...temporaryKey, secretAccessKey: randomBytes(30).toString('base64') }),
    );
    const result = await h.call(['items', '9'], { upstream: 'aws-temp' });
    expect(result.response.status).toBe(403);
    expect(upstream.received.at(-1)?.verdict).toEqual({ ok: false, reason: 'signature mismatch' });
    expect(result.text).toContain('[REDACTED]');
    expect(result.text).not.toContain(aws.accessKeyId);
    expectNoSecrets(h.secrets, result.response, result.text);
  });
});

describe('hmac: the documented canonical string, recomputed by the upstream with node:crypto', () => {
  it('a GET with a query: timestamp, method, path with query and the empty body hash are signed; the key id is sent', async () => {
    const upstream = verifying((request) => verifyHmac(request, hmacKey));
    const result = await h.call(['items', '42'], { upstream: 'inhouse', query: '?page=2&q=a%20b' });
    const seen = expectVerified(result, upstream);
    expect(seen.url).toBe('/v1/items/42?page=2&q=a+b');
    expect(seen.headers['x-signature']).toMatch(/^[0-9a-f]{64}$/);
    expect(seen.headers['x-timestamp']).toMatch(/^\d{10}$/);
    expect(seen.headers['x-key-id']).toBe('inhouse-2026');
  });

  it('a POST with a JSON contract body: the signature covers the re-serialised body', async () => {
    const upstream = verifying((request) => verifyHmac(request, hmacKey));
    const result = await h.call(['items'], {
      upstream: 'inhouse',
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{ "name": "widget",  "count": 2 }',
    });
    const seen = expectVerified(result, upstream);
    expect(seen.body.toString('utf8')).toBe('{"name":"widget","count":2}');
  });

  it('a streamed body is read whole (under the cap) and signed', async () => {
    const upstream = verifying((request) => verifyHmac(request, hmacKey));
    const parts = ['first chunk;', 'second chunk;', 'third'];
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = parts.shift();
        if (next === undefined) controller.close();
        else controller.enqueue(new TextEncoder().encode(next));
      },
    });
    const result = await h.call(['upload'], {
      upstream: 'inhouse',
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: stream,
    });
    const seen = expectVerified(result, upstream);
    expect(seen.body.toString('utf8')).toBe('first chunk;second chunk;third');
    expect(seen.headers['content-length']).toBe(String(seen.body.length));
    expect(seen.headers['transfer-encoding']).toBeUndefined();
  });

  it('SHA-512, base64, a prefix and other header names', async () => {
    const upstream = verifying((request) => verifyHmac(request, hmac512Key));
    const result = await h.call(['upload'], {
      upstream: 'inhouse-512',
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: 'payload',
    });
    const seen = expectVerified(result, upstream);
    expect(seen.headers['x-hub-signature']).toMatch(/^sha512=[A-Za-z0-9+/]{86}==$/);
    expect(seen.headers['x-signature']).toBeUndefined();
    expect(seen.headers['x-key-id']).toBeUndefined();
  });

  it('path segments with sub-delimiters: the path is signed exactly as on the request line', async () => {
    const upstream = verifying((request) => verifyHmac(request, hmacKey));
    const result = await h.call(['files', "a!b$c&d'e(f)*+,;=~"], { upstream: 'inhouse' });
    const seen = expectVerified(result, upstream);
    expect(seen.url).toBe(`/v1/files/${encodeURIComponent("a!b$c&d'e(f)*+,;=~")}`);
  });

  it('the client cannot supply or override the signature, timestamp or key id', async () => {
    const upstream = verifying((request) => verifyHmac(request, hmacKey));
    const result = await h.call(['items', '1'], {
      upstream: 'inhouse',
      headers: {
        'x-signature': 'client-chosen-signature',
        'x-timestamp': '946684800',
        'x-key-id': 'client-chosen-key',
      },
    });
    const seen = expectVerified(result, upstream);
    expect(JSON.stringify(seen.headers)).not.toMatch(/client-chosen|946684800/);
  });

  it('a tampered request fails verification: body, path, query, timestamp, signature from another key', async () => {
    const upstream = verifying((request) => verifyHmac(request, hmacKey));
    expectVerified(
      await h.call(['items'], { upstream: 'inhouse', method: 'POST', ...json({ name: 'a', count: 1 }) }),
      upstream,
    );
    const post = upstream.received.at(-1)!;
    expectVerified(await h.call(['items', '8'], { upstream: 'inhouse', query: '?page=1' }), upstream);
    const get = upstream.received.at(-1)!;

    expect((await replay(post)).status).toBe(200);
    const tampered = [
      await replay(post, { body: JSON.stringify({ name: 'a', count: 9 }) }),
      await replay(post, { path: '/v1/items?admin=1' }),
      await replay(get, { path: '/v1/items/8?page=2' }),
      await replay(get, { path: '/v1/items/9?page=1' }),
      await replay(get, { headers: { 'x-timestamp': String(Number(get.headers['x-timestamp']) - 1) } }),
    ];
    expect(tampered.map((response) => response.status)).toEqual(tampered.map(() => 403));
    // Signed with a key the verifier does not hold.
    const other = verifying((request) => verifyHmac(request, { ...hmacKey, secret: randomSecret('other') }));
    const refused = await h.call(['items', '8'], { upstream: 'inhouse' });
    expect(refused.response.status).toBe(403);
    expect(other.received.at(-1)?.verdict).toEqual({ ok: false, reason: 'signature mismatch' });
    expectNoSecrets(h.secrets, refused.response, refused.text);
  });
});

describe('key rings', () => {
  it('an hmac key rotates like any service key: the canary is signed with the new key, then every call is', async () => {
    const fresh = randomSecret('ring-next');
    const upstream = verifying((request) => verifyHmac(request, { secret: hmacRingSecret }));
    expectVerified(await h.call(['items', '1'], { upstream: 'inhouse-ring' }), upstream);

    const next = verifying((request) => verifyHmac(request, { secret: fresh }));
    const rotation = await h.runtime.keyRings.rotate('inhouse-ring', fresh, { actor: 'local:root' });
    expect(rotation).toMatchObject({ state: 'switched', canaryStatus: 200 });
    expect(next.received[0]).toMatchObject({ url: '/v1/items/canary', verdict: { ok: true } });
    const result = await h.call(['items', '2'], { upstream: 'inhouse-ring' });
    expectVerified(result, next);
    expectNoSecrets([fresh], result.response, result.text);
    expect(h.logs.join('')).not.toContain(fresh);
  });

  it('an AWS key cannot be rotated through the ring (it is a pair): refused, nothing changes', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const error = await h.runtime.keyRings
      .rotate('bedrock', randomBytes(30).toString('base64'), { actor: 'local:root', skipCanary: true })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({
      code: 'bad_request',
      message: 'An AWS key is a pair: rotate it by replacing both of its environment variables.',
    });
    expectVerified(await h.call(['items', '1'], { upstream: 'bedrock' }), upstream);
  });
});

describe('the aws preset: Bedrock model ids with ":" are signed as sent', () => {
  const converse = {
    messages: [{ role: 'user', content: [{ text: 'Hi' }] }],
    requestMetadata: { keyward_user: 'someone-else' },
  };

  it('an allowed model (a literal route): the ":" is sent as the template writes it, the cap and the caller filled in', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const result = await h.call(['model', 'amazon.nova-micro-v1:0', 'converse'], {
      upstream: 'bedrock-preset',
      method: 'POST',
      ...json(converse),
    });
    const seen = expectVerified(result, upstream);
    expect(seen.url).toBe('/model/amazon.nova-micro-v1:0/converse');
    expect(JSON.parse(seen.body.toString('utf8'))).toMatchObject({
      inferenceConfig: { maxTokens: 512 },
      requestMetadata: { keyward_user: 'local:alice' },
    });
  });

  it('any model ("*"): the caller\'s ":" is sent as %3A and signed as %253A, as AWS SDKs do', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const result = await h.call(['model', 'anthropic.claude-3-5-sonnet-20240620-v1:0', 'converse-stream'], {
      upstream: 'bedrock-any',
      method: 'POST',
      ...json(converse),
    });
    const seen = expectVerified(result, upstream);
    expect(seen.url).toBe('/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream');
  });

  it('a model outside the allow-list is refused, nothing signed or sent', async () => {
    const upstream = verifying((request) => verifySigV4(request, bedrockKey));
    const result = await h.call(['model', 'anthropic.claude-opus-4-v1:0', 'converse'], {
      upstream: 'bedrock-preset',
      method: 'POST',
      ...json(converse),
    });
    expect(result.response.status).toBe(404);
    expect(upstream.received).toHaveLength(0);
  });
});
