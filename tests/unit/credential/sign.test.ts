import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../../lib/core/config/load';
import type { AuthConfig } from '../../../lib/core/config/schema';
import { awsCredential } from '../../../lib/core/credential/aws-sigv4';
import { hmacCanonicalString, hmacCredential } from '../../../lib/core/credential/hmac';
import { signRequest, type RequestSigner } from '../../../lib/core/credential/sign';
import { processFingerprints } from '../../../lib/core/keys/fingerprint';
import { verifySigV4 } from '../../fixtures/signature-verifiers';
import { expectKeywardError, rejected } from '../support';

const fingerprints = processFingerprints();

/** An upstream's auth as the schema outputs it (defaults applied). */
function authOf(auth: Record<string, unknown>): AuthConfig {
  const [definition] = parseConfig(
    { upstreams: { x: { baseUrl: 'https://api.example.com/', auth, routes: [{ method: 'POST', path: '/items' }] } } },
    'test',
  );
  return definition!.config.auth;
}

function hmacAuth(extra: Record<string, unknown> = {}) {
  const auth = authOf({ type: 'hmac', secret: { env: 'HMAC_SECRET' }, ...extra });
  if (auth.type !== 'hmac') throw new Error('expected hmac');
  return auth;
}

function awsAuth(extra: Record<string, unknown> = {}) {
  const auth = authOf({
    type: 'aws-sigv4',
    service: 'bedrock',
    region: 'us-west-2',
    accessKeyId: { env: 'K' },
    secret: { env: 'S' },
    ...extra,
  });
  if (auth.type !== 'aws-sigv4') throw new Error('expected aws-sigv4');
  return auth;
}

const awsKey = () => ({
  accessKeyId: `AKIA${randomBytes(8).toString('hex').toUpperCase()}`,
  secretAccessKey: randomBytes(30).toString('base64'),
});

function streamOf(...chunks: string[]): AsyncIterable<Uint8Array> {
  return (async function* () {
    for (const chunk of chunks) yield Buffer.from(chunk, 'utf8');
  })();
}

describe('hmac', () => {
  it('signs the documented canonical string (the README test vector)', async () => {
    const body = Buffer.from('{"name":"widget"}', 'utf8');
    expect(hmacCanonicalString('1767225600', 'POST', '/v1/items?page=2', body)).toBe(
      '1767225600\nPOST\n/v1/items?page=2\n256e2b36195d6c9d25b78bf0df70019cb60421b088cf96ca21e570fbfc34f6b2',
    );
    const credential = hmacCredential(
      hmacAuth({ keyId: 'k1' }),
      'keyward-example-secret',
      fingerprints,
      () => 1767225600_000 + 999,
    );
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    await credential.signer!.sign({
      method: 'POST',
      url: new URL('https://api.example.com/v1/items?page=2'),
      headers,
      body,
    });
    expect(headers).toEqual({
      'content-type': 'application/json',
      'x-timestamp': '1767225600',
      'x-signature': 'fef63ae578137fac8c8bd5c50a31abfd04a95409705cbe9ea96761ef702aea8c',
      'x-key-id': 'k1',
    });
  });

  it('hashes no body as the empty string, and leaves out "?" without a query', () => {
    expect(hmacCanonicalString('1', 'GET', '/v1/items', null)).toBe(
      '1\nGET\n/v1/items\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    );
  });

  it('reads a streamed body whole, signs it, and forwards those bytes', async () => {
    const credential = hmacCredential(hmacAuth(), 'keyward-example-secret', fingerprints, () => 1767225600_000);
    const headers: Record<string, string> = {};
    const url = new URL('https://api.example.com/v1/items?page=2');
    const body = await signRequest(credential.signer!, {
      method: 'POST',
      url,
      headers,
      body: streamOf('{"name":', '"widget"}'),
      declaredLength: '17',
    });
    expect(Buffer.isBuffer(body) && body.toString('utf8')).toBe('{"name":"widget"}');
    expect(headers['x-signature']).toBe('fef63ae578137fac8c8bd5c50a31abfd04a95409705cbe9ea96761ef702aea8c');
    // The length of a buffered body is undici's to write, from the buffer itself.
    expect(headers['content-length']).toBeUndefined();
  });

  it('a stream that fails while being read (over its cap) fails the signing, nothing signed', async () => {
    const credential = hmacCredential(hmacAuth(), 'keyward-example-secret', fingerprints);
    const failing = (async function* () {
      yield Buffer.from('part');
      throw new Error('over the cap');
    })();
    const headers: Record<string, string> = {};
    await expect(
      signRequest(credential.signer!, {
        method: 'POST',
        url: new URL('https://a.example/'),
        headers,
        body: failing,
        declaredLength: null,
      }),
    ).rejects.toThrow('over the cap');
    expect(headers).toEqual({});
  });
});

describe('aws-sigv4', () => {
  it('signs for the default https port: Host without a port, verified by aws4', async () => {
    const key = awsKey();
    const credential = awsCredential(awsAuth(), key, fingerprints);
    const url = new URL('https://bedrock-runtime.us-west-2.amazonaws.com/model/amazon.nova-micro-v1/converse');
    const headers: Record<string, string> = { 'content-type': 'application/json', 'user-agent': 'keyward' };
    const body = Buffer.from('{"messages":[]}');
    await credential.signer!.sign({ method: 'POST', url, headers, body });
    expect(headers.host).toBe('bedrock-runtime.us-west-2.amazonaws.com');
    expect(headers['content-length']).toBe(String(body.length));
    // user-agent is never signed (proxies rewrite it).
    expect(headers.authorization).not.toMatch(/SignedHeaders=[^,]*user-agent/);
    const verdict = verifySigV4(
      { method: 'POST', url: url.pathname + url.search, headers, body },
      { ...key, service: 'bedrock', region: 'us-west-2' },
    );
    expect(verdict).toEqual({ ok: true });
    expect(credential.secrets).toEqual([key.secretAccessKey, key.accessKeyId]);
    expect(credential.fingerprint).toBe(fingerprints.of(key.secretAccessKey));
  });

  it('replaces signature headers that were already there: its own payload hash, date and Authorization', async () => {
    const key = awsKey();
    const credential = awsCredential(awsAuth(), key, fingerprints);
    const headers: Record<string, string> = {
      authorization:
        'AWS4-HMAC-SHA256 Credential=AKIAOTHER/20000101/us-west-2/bedrock/aws4_request, SignedHeaders=host, Signature=00',
      'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
      'x-amz-date': '20000101T000000Z',
      'x-amz-security-token': 'stale',
    };
    const body = Buffer.from('signed bytes');
    await credential.signer!.sign({ method: 'PUT', url: new URL('https://a.amazonaws.com/x'), headers, body });
    expect(headers['x-amz-content-sha256']).toBe(createHash('sha256').update(body).digest('hex'));
    expect(headers['x-amz-date']).not.toBe('20000101T000000Z');
    expect(headers['x-amz-security-token']).toBeUndefined();
    expect(headers.authorization).toContain(`Credential=${key.accessKeyId}/`);
  });

  it('refuses presigned-URL query parameters in any spelling, without echoing them', async () => {
    const credential = awsCredential(awsAuth(), awsKey(), fingerprints);
    for (const query of [
      '?X-Amz-Signature=abc',
      '?x-amz-credential=evil',
      '?X-AMZ-DATE%00=1',
      '?X-Amz-Security-Token[]=t',
    ]) {
      const error = expectKeywardError(
        await rejected(
          credential.signer!.sign({
            method: 'GET',
            url: new URL(`https://a.amazonaws.com/x${query}`),
            headers: {},
            body: null,
          }),
        ),
        'bad_request',
      );
      expect(error.message).not.toMatch(/evil|abc/);
    }
  });

  it('S3, unsigned payload: the stream is passed on untouched, with the declared length', async () => {
    const credential = awsCredential(awsAuth({ service: 's3', payload: 'unsigned' }), awsKey(), fingerprints);
    const signer: RequestSigner = credential.signer!;
    expect(signer.streamedBody).toBe('unsigned');
    const stream = streamOf('abc', 'def');
    const headers: Record<string, string> = {};
    const url = new URL('https://bucket.s3.eu-west-1.amazonaws.com/a b/c!d');
    const body = await signRequest(signer, { method: 'PUT', url, headers, body: stream, declaredLength: '6' });
    expect(body).toBe(stream);
    expect(headers['content-length']).toBe('6');
    expect(headers['x-amz-content-sha256']).toBe('UNSIGNED-PAYLOAD');
    expect(url.pathname).toBe('/a%20b/c%21d');
  });

  it('S3, unsigned payload: without a usable declared length (none, not a number, a rebuilt body) the body is read whole and signed with its own', async () => {
    // S3 answers 411 to a body sent without a length: read whole (under the route's cap), it has one, and its hash.
    const credential = awsCredential(awsAuth({ service: 's3', payload: 'unsigned' }), awsKey(), fingerprints);
    for (const declaredLength of ['6, 6', '-1', '0x6', '', null]) {
      const headers: Record<string, string> = {};
      const body = await signRequest(credential.signer!, {
        method: 'PUT',
        url: new URL('https://s3.amazonaws.com/b/k'),
        headers,
        body: streamOf('abc', 'def'),
        declaredLength,
      });
      expect(Buffer.isBuffer(body) && body.toString(), String(declaredLength)).toBe('abcdef');
      expect(headers['content-length']).toBe('6');
      expect(headers['x-amz-content-sha256']).toBe(createHash('sha256').update('abcdef').digest('hex'));
    }
  });
});
