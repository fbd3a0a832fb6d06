import { createHash } from 'node:crypto';
import { parse as parseQueryString } from 'node:querystring';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { capturingLogger, claimsSessionCookie, findLeak, type SessionIdentity } from '../fixtures/claims-session';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { startUpstream, type RecordedRequest, type TestUpstream, type UpstreamHandler } from '../fixtures/upstream';

/**
 * Form (Stripe-style) and multipart contracts end to end: a real pipeline, a real node:http upstream that keeps
 * every byte it received and whether the request arrived complete, real session cookies. Checks what the
 * upstream actually read, that uploads stream through, and that a body refused mid-stream never reaches the
 * upstream as a complete request.
 */

const APP_ORIGIN = 'https://app.keyward.test';
const MiB = 1024 * 1024;

let upstream: TestUpstream;
let runtime: Runtime;
let env: Record<string, string>;
let apiKey: string;
const log = capturingLogger();

beforeAll(async () => {
  upstream = await startUpstream();
  apiKey = randomSecret('bdy');
  env = { ...testSessionSecrets(), BODY_KEY: apiKey, KEYWARD_ALLOWED_ORIGINS: APP_ORIGIN, KEYWARD_STORE: 'memory' };
  runtime = createRuntime({
    env,
    logger: log.logger,
    upstreams: [
      defineUpstream('pay', {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'bearer', secret: { env: 'BODY_KEY' } },
        timeoutMs: 60_000,
        routes: [
          {
            method: 'POST',
            path: '/payment_intents',
            bodyFormat: 'form',
            body: {
              type: 'object',
              required: ['currency'],
              properties: {
                amount: { type: 'integer', minimum: 1 },
                currency: { type: 'string', enum: ['eur', 'usd'] },
                metadata: {
                  type: 'object',
                  properties: { order_id: { type: 'string', maxLength: 32 }, user_id: { type: 'string' } },
                },
                items: {
                  type: 'array',
                  maxItems: 10,
                  items: {
                    type: 'object',
                    required: ['price'],
                    properties: { price: { type: 'string' }, quantity: { type: 'integer' } },
                  },
                },
                expand: { type: 'array', items: { type: 'string' } },
                capture: { type: 'boolean' },
              },
            },
            caps: { free: { 'body.amount': 5000 } },
            identity: { 'body.metadata.user_id': 'userId' },
          },
          {
            // An upstream that reads a list from repeated names (Django, Flask, Go, Spring).
            method: 'POST',
            path: '/search',
            bodyFormat: 'form',
            formArrays: 'repeat',
            body: {
              type: 'object',
              properties: { tag: { type: 'array', minItems: 2, items: { type: 'string' } }, q: { type: 'string' } },
            },
          },
        ],
      }),
      defineUpstream('speech', {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'bearer', secret: { env: 'BODY_KEY' } },
        timeoutMs: 60_000,
        routes: [
          {
            method: 'POST',
            path: '/audio/transcriptions',
            bodyFormat: 'multipart',
            maxRequestBytes: 8 * MiB,
            body: {
              type: 'object',
              required: ['model', 'file'],
              properties: {
                model: { type: 'string', enum: ['whisper-1'] },
                language: { type: 'string', maxLength: 8 },
                max_seconds: { type: 'integer', minimum: 1 },
                user: { type: 'string' },
                file: { type: 'file', maxBytes: 6 * MiB, contentTypes: ['audio/mpeg'] },
              },
            },
            caps: { free: { 'body.max_seconds': 600 } },
            identity: { 'body.user': 'userId' },
          },
        ],
      }),
    ],
  });
});

afterAll(async () => {
  expect(findLeak(log.lines.join(''), [apiKey, env.AUTH_SECRET!, env.KEYWARD_SESSION_SECRET!])).toBeNull();
  await upstream.close();
  await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
  await runtime.store.close();
});

/** What the upstream read: every byte, and whether the request arrived whole (Node's `complete`). */
interface Received {
  bytes: Buffer;
  complete: boolean;
}

const received = new Map<RecordedRequest, Promise<Received>>();

/** Keeps the whole body (bodies here are at most a few MiB) and answers 200 only once the request ended. */
const keepBody: UpstreamHandler = (req, res, record) => {
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"ok":true}');
  });
  received.set(
    record,
    new Promise((resolve) => req.on('close', () => resolve({ bytes: Buffer.concat(chunks), complete: req.complete }))),
  );
};

beforeEach(() => upstream.handle(keepBody));

const FREE: SessionIdentity = { sub: 'local:fay', roles: ['free'] };

interface Call {
  status: number;
  text: string;
  /** The upstream's request and what it read, or null when it was never called. */
  seen: { record: RecordedRequest; body: Received } | null;
}

/**
 * One proxied call. `reached`: the upstream must have been sent (part of) the request; a call cut off mid-stream
 * can answer before the upstream's server has even read the request head, so its record is waited for.
 */
async function call(
  target: { upstream: string; path: string[] },
  body: BodyInit,
  contentType: string | null,
  options: { identity?: SessionIdentity; reached?: boolean } = {},
): Promise<Call> {
  const identity = options.identity ?? FREE;
  const headers = new Headers({
    cookie: await claimsSessionCookie(env.AUTH_SECRET!, identity),
    'x-keyward-csrf': '1',
    origin: APP_ORIGIN,
  });
  if (contentType !== null) headers.set('content-type', contentType);
  const url = `${APP_ORIGIN}/api/proxy/${target.upstream}/${target.path.join('/')}`;
  const before = upstream.requests.length;
  const init: RequestInit & { duplex?: 'half' } = { method: 'POST', headers, body };
  if (body instanceof ReadableStream) init.duplex = 'half';
  const response = await handleProxy(new Request(url, init), target, runtime);
  const text = await response.text();
  if (options.reached) await upstream.nthRequest(before + 1);
  expect(upstream.requests.length - before, 'at most one upstream request per call').toBeLessThanOrEqual(1);
  const record = upstream.requests[before];
  return { status: response.status, text, seen: record ? { record, body: await received.get(record)! } : null };
}

function expectError(c: Call, status: number, code: string): string {
  expect(c.status).toBe(status);
  const { error } = JSON.parse(c.text) as { error: { code: string; message: string } };
  expect(error.code).toBe(code);
  expect(c.text).not.toContain(upstream.origin);
  expect(c.text).not.toContain(apiKey);
  return error.message;
}

const PAY = { upstream: 'pay', path: ['payment_intents'] };
const SPEECH = { upstream: 'speech', path: ['audio', 'transcriptions'] };
const FORM = 'application/x-www-form-urlencoded';

describe('form contracts (Stripe bracket notation)', () => {
  it('forwards the re-serialised body: nested fields, arrays, typed values, the identity field written from the session', async () => {
    const sent =
      'currency=eur&amount=4200&metadata[order_id]=6735&metadata[user_id]=local%3Amallory&items[0][price]=price_1' +
      '&items[0][quantity]=2&items[1][price]=price_2&expand[]=customer&expand[]=latest_charge&capture=true';
    const c = await call(PAY, sent, `${FORM}; charset=UTF-8`);
    expect(c.status).toBe(200);
    // The fields Keyward writes first (the cap, then the identity), then the rest in the contract's order.
    const expected =
      'amount=4200&metadata%5Buser_id%5D=local%3Afay&currency=eur&metadata%5Border_id%5D=6735' +
      '&items%5B0%5D%5Bprice%5D=price_1&items%5B0%5D%5Bquantity%5D=2&items%5B1%5D%5Bprice%5D=price_2' +
      '&expand%5B0%5D=customer&expand%5B1%5D=latest_charge&capture=true';
    expect(c.seen!.body.bytes.toString('utf8')).toBe(expected);
    expect(c.seen!.body.complete).toBe(true);
    expect(c.seen!.record.headers['content-type']).toBe(FORM);
    expect(c.seen!.record.headers['content-length']).toBe(String(expected.length));
    expect(c.seen!.record.headers.authorization).toBe(`Bearer ${apiKey}`);
  });

  it("sends arrays of values as the route's formArrays says, whatever notation the client used", async () => {
    const search = { upstream: 'pay', path: ['search'] };
    for (const sent of ['q=x&tag[]=a&tag[]=b', 'q=x&tag[1]=b&tag[0]=a', 'q=x&tag=a&tag=b']) {
      const c = await call(search, sent, FORM);
      expect(c.status).toBe(200);
      expect(c.seen!.body.bytes.toString()).toBe('tag=a&tag=b&q=x');
    }
    // What was checked (two tags at least) is what a repeated-name parser reads.
    expect(expectError(await call(search, 'tag[]=a', FORM), 400, 'contract_violation')).toContain('body.tag');
  });

  it('applies the caller’s cap: a missing amount is set to it, a larger one is refused before the upstream', async () => {
    const capped = await call(PAY, 'currency=usd', FORM);
    expect(capped.status).toBe(200);
    expect(capped.seen!.body.bytes.toString()).toBe('amount=5000&metadata%5Buser_id%5D=local%3Afay&currency=usd');
    const refused = await call(PAY, 'currency=usd&amount=5001', FORM);
    expect(refused.seen).toBeNull();
    expect(expectError(refused, 400, 'contract_violation')).toContain(
      'body.amount: must be at most 5000 for your role',
    );
    const pro = await call(PAY, 'currency=usd&amount=90000', FORM, { identity: { sub: 'local:paul', roles: ['pro'] } });
    expect(pro.seen!.body.bytes.toString()).toBe('amount=90000&metadata%5Buser_id%5D=local%3Apaul&currency=usd');
  });

  it("a long array cannot push the cap or the identity past the 1,000 fields node:querystring, qs and PHP read", async () => {
    const padded = `currency=eur&${Array.from({ length: 998 }, () => 'expand[]=x').join('&')}`;
    const c = await call(PAY, padded, FORM);
    expect(c.status).toBe(200);
    const read = parseQueryString(c.seen!.body.bytes.toString('utf8'));
    expect(read.amount).toBe('5000');
    expect(read['metadata[user_id]']).toBe('local:fay');
  });

  it('refuses unknown fields, conflicting shapes and repeated names before the upstream, without echoing client names', async () => {
    const keyish = 'sk_live_51H8xQ2eZvKYlo2C';
    for (const [body, expected] of [
      [`currency=eur&amount=1&${keyish}=1`, 'body: unknown field'],
      [`currency=eur&amount=1&metadata[${keyish}]=1`, 'body.metadata: unknown field'],
      ['currency=eur&amount=1&amount=2', 'body.amount: given more than once'],
      ['currency=eur&amount=1&metadata=x&metadata[order_id]=1', 'body.metadata: given both'],
      [
        'currency=eur&amount=1&items[0][price]=a&items[2][price]=b',
        'body.items: array indexes must run from 0 without gaps',
      ],
    ]) {
      const c = await call(PAY, body!, FORM);
      expect(c.seen).toBeNull();
      const message = expectError(c, 400, 'contract_violation');
      expect(message).toContain(expected);
      expect(message).not.toContain(keyish);
    }
  });

  it('refuses other media types and charsets (415)', async () => {
    for (const type of ['application/json', `${FORM}; charset=iso-8859-1`, 'multipart/form-data; boundary=x', null]) {
      const c = await call(PAY, 'currency=eur&amount=1', type);
      expect(c.seen).toBeNull();
      expect(expectError(c, 415, 'unsupported_media_type')).toContain('application/x-www-form-urlencoded');
    }
  });
});

/** Deterministic bytes that are not one repeated value (a byte-for-byte check must notice any shift). */
function bytesOf(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let state = seed;
  for (let i = 0; i < size; i += 1) {
    state = (state * 1_103_515_245 + 12_345) >>> 0;
    out[i] = state >>> 24;
  }
  return out;
}

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');
const BOUNDARY = 'client-boundary-7MA4YWxkTrZu0gW';
const MULTIPART = `multipart/form-data; boundary=${BOUNDARY}`;

const textPart = (name: string, value: string) =>
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`;
const fileHead = (name: string, filename: string, type = 'audio/mpeg') =>
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="${name}"; filename="${filename}"\r\nContent-Type: ${type}\r\nX-Client-Note: ignored\r\n\r\n`;
const CLOSE = `--${BOUNDARY}--\r\n`;

/**
 * The client's body as a stream of 64 KiB chunks. `pauseAt`: before sending that byte, wait until `waitFor`
 * resolves (e.g. until the upstream has read part of the file): a proxy that buffered the body would never get
 * there, and the test would time out instead of passing.
 */
function clientStream(
  bytes: Buffer,
  pauseAt = Infinity,
  waitFor: () => Promise<void> = async () => {},
): ReadableStream<Uint8Array> {
  let offset = 0;
  let paused = false;
  return new ReadableStream({
    async pull(controller) {
      if (!paused && offset >= pauseAt) {
        paused = true;
        await waitFor();
      }
      if (offset >= bytes.length) return controller.close();
      const end = Math.min(offset + 64 * 1024, bytes.length, paused ? Infinity : pauseAt);
      controller.enqueue(new Uint8Array(bytes.subarray(offset, end)));
      offset = end;
    },
  });
}

/** The upstream's body read back with an independent parser (undici's Response.formData). */
async function formOf(c: Call): Promise<FormData> {
  return new Response(new Uint8Array(c.seen!.body.bytes), {
    headers: { 'content-type': c.seen!.record.headers['content-type']! },
  }).formData();
}

describe('multipart contracts', () => {
  it('streams a 5 MiB file part through: the upstream reads it before the client has sent it all, byte for byte', async () => {
    const audio = bytesOf(5 * MiB, 11);
    const head = Buffer.from(
      textPart('model', 'whisper-1') + textPart('user', 'local:mallory') + fileHead('file', 'talk.mp3'),
    );
    const body = Buffer.concat([head, audio, Buffer.from(`\r\n${textPart('language', 'en')}${CLOSE}`)]);
    const n = upstream.requests.length + 1;
    // The client stops after 2 MiB of the file until the upstream has read 1 MiB of it.
    const stream = clientStream(body, head.length + 2 * MiB, async () => {
      const record = await upstream.nthRequest(n);
      await record.waitForBytes(head.length + MiB);
    });
    const c = await call(SPEECH, stream, MULTIPART);
    expect(c.status).toBe(200);
    expect(c.seen!.body.complete).toBe(true);
    expect(c.seen!.record.headers['content-type']).toMatch(
      /^multipart\/form-data; boundary=keyward-[A-Za-z0-9_-]{24}$/,
    );
    expect(c.seen!.record.headers['content-type']).not.toContain(BOUNDARY);
    // Streamed: no length known in advance.
    expect(c.seen!.record.headers['transfer-encoding']).toBe('chunked');
    const form = await formOf(c);
    // Client order; the client's `user` written over from the session; the cap the client did not send added last.
    expect([...form.keys()]).toEqual(['model', 'user', 'file', 'language', 'max_seconds']);
    expect(form.get('user')).toBe('local:fay');
    expect(form.get('max_seconds')).toBe('600');
    const file = form.get('file') as File;
    expect(file.name).toBe('talk.mp3');
    expect(file.type).toBe('audio/mpeg');
    expect(file.size).toBe(audio.length);
    expect(sha256(new Uint8Array(await file.arrayBuffer()))).toBe(sha256(audio));
    expect(c.seen!.body.bytes.toString('latin1')).not.toContain('X-Client-Note');
  });

  it('refuses a file part over its cap with 413; the upstream never gets a complete request', async () => {
    const body = Buffer.concat([
      Buffer.from(textPart('model', 'whisper-1') + fileHead('file', 'long.mp3')),
      bytesOf(6 * MiB + 1, 5),
      Buffer.from(`\r\n${CLOSE}`),
    ]);
    const c = await call(SPEECH, clientStream(body), MULTIPART, { reached: true });
    expect(expectError(c, 413, 'payload_too_large')).toBe(
      'The file part "file" is larger than this route allows (6291456 bytes).',
    );
    expect(c.seen!.body.complete).toBe(false);
    expect(c.seen!.body.bytes.length).toBeLessThan(6 * MiB + 1);
    expect(c.seen!.body.bytes.toString('latin1')).not.toMatch(/--keyward-[A-Za-z0-9_-]{24}--/);
  });

  it('refuses a bad text field that comes after the file part with 400; the upstream request is cut off', async () => {
    const audio = bytesOf(MiB, 3);
    const body = Buffer.concat([
      Buffer.from(textPart('model', 'whisper-1') + fileHead('file', 'talk.mp3')),
      audio,
      Buffer.from(`\r\n${textPart('language', 'far-too-long')}${CLOSE}`),
    ]);
    const c = await call(SPEECH, clientStream(body), MULTIPART, { reached: true });
    expect(expectError(c, 400, 'contract_violation')).toContain('body.language');
    // The file was on its way; the request never ended.
    expect(c.seen!.body.complete).toBe(false);
    expect(c.seen!.body.bytes.toString('latin1')).not.toMatch(/--keyward-[A-Za-z0-9_-]{24}--/);
  });

  it('refuses a cap exceeded after the file part, and a body over maxRequestBytes, mid-stream', async () => {
    const late = Buffer.concat([
      Buffer.from(textPart('model', 'whisper-1') + fileHead('file', 'talk.mp3')),
      bytesOf(1000, 1),
      Buffer.from(`\r\n${textPart('max_seconds', '601')}${CLOSE}`),
    ]);
    const capped = await call(SPEECH, clientStream(late), MULTIPART, { reached: true });
    expect(expectError(capped, 400, 'contract_violation')).toContain(
      'body.max_seconds: must be at most 600 for your role',
    );
    expect(capped.seen!.body.complete).toBe(false);

    const huge = Buffer.concat([
      Buffer.from(textPart('model', 'whisper-1') + fileHead('file', 'a.mp3')),
      bytesOf(9 * MiB, 2),
    ]);
    const over = await call(SPEECH, clientStream(huge), MULTIPART, { reached: true });
    expectError(over, 413, 'payload_too_large');
    expect(over.seen!.body.complete).toBe(false);
  });

  it('refuses, before the upstream, unknown parts, a file of another media type, and a body without file or boundary', async () => {
    const unknown = await call(SPEECH, textPart('model', 'whisper-1') + textPart('prompt', 'x') + CLOSE, MULTIPART);
    expect(unknown.seen).toBeNull();
    expect(expectError(unknown, 400, 'contract_violation')).toContain('body: unknown field');

    const png = await call(
      SPEECH,
      `${textPart('model', 'whisper-1')}${fileHead('file', 'a.png', 'image/png')}x\r\n${CLOSE}`,
      MULTIPART,
    );
    expect(png.seen).toBeNull();
    expect(expectError(png, 415, 'unsupported_media_type')).toBe(
      'The file part "file" has a media type this route does not accept.',
    );

    const noFile = await call(SPEECH, textPart('model', 'whisper-1') + CLOSE, MULTIPART);
    expect(noFile.seen).toBeNull();
    expect(expectError(noFile, 400, 'contract_violation')).toContain('body.file');

    const json = await call(SPEECH, '{"model":"whisper-1"}', 'application/json');
    expect(json.seen).toBeNull();
    expect(expectError(json, 415, 'unsupported_media_type')).toContain('multipart/form-data');

    const noBoundary = await call(SPEECH, textPart('model', 'whisper-1') + CLOSE, 'multipart/form-data');
    expect(noBoundary.seen).toBeNull();
    expectError(noBoundary, 400, 'contract_violation');
  });

  it('accepts what browsers send (FormData through fetch)', async () => {
    const form = new FormData();
    form.append('model', 'whisper-1');
    form.append('file', new Blob([new Uint8Array(bytesOf(1234, 9))], { type: 'audio/mpeg' }), 'voice note.mp3');
    const request = new Request('https://app.keyward.test/', { method: 'POST', body: form });
    const c = await call(SPEECH, await request.arrayBuffer(), request.headers.get('content-type'));
    expect(c.status).toBe(200);
    const forwarded = await formOf(c);
    expect([...forwarded.keys()]).toEqual(['model', 'file', 'max_seconds', 'user']);
    expect((forwarded.get('file') as File).name).toBe('voice note.mp3');
    expect(sha256(new Uint8Array(await (forwarded.get('file') as File).arrayBuffer()))).toBe(sha256(bytesOf(1234, 9)));
  });
});
