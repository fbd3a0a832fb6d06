import { Readable, Writable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import zlib from 'node:zlib';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { createLogger } from '../../lib/core/log/logger';
import { handleProxy, type ProxyDeps, type ProxyEvent } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { rawResponse, type RecordedRequest } from '../fixtures/upstream';
import { APP_ORIGIN, createHarness, expectKeywardError, expectNoSecrets, expectNoSecretsInLogs, type Harness } from './harness';

/**
 * Upstream answers a careful server never sends, replayed from the attack session against a real node:http
 * upstream: statuses a Response cannot carry, 205 with a body, unasked-for 1xx, raw deflate, and a brotli bomb.
 */

const MiB = 1024 * 1024;

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

/** The proxy log line of one call (the `proxy` event), by its request id. */
function proxyEvent(logs: readonly string[], requestId: string | null): ProxyEvent | undefined {
  return logs
    .flatMap((chunk) => chunk.split('\n'))
    .filter(Boolean)
    .map((line) => JSON.parse(line) as { proxy?: ProxyEvent })
    .find((entry) => entry.proxy?.requestId === requestId)?.proxy;
}

/** Reads a body to its end or its error, counting bytes (never holding them). */
async function drain(response: Response): Promise<{ bytes: number; error: unknown }> {
  const reader = response.body!.getReader();
  let bytes = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { bytes, error: null };
      bytes += value.byteLength;
    }
  } catch (error) {
    return { bytes, error };
  }
}

/** The request the upstream received last, once its connection or response has closed. */
async function lastUpstreamRequest(): Promise<RecordedRequest> {
  const seen = h.upstream.requests.at(-1)!;
  await seen.closed;
  return seen;
}

describe('statuses a Response cannot carry', () => {
  it.each([600, 999])('%i: 502 upstream_bad_response, and the upstream body is released', async (status) => {
    h.upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.write('a body that never ends'); // only Keyward letting go closes this connection
    });
    const result = await h.call(['items', '1']);
    expectKeywardError(result, 502, 'upstream_bad_response', h);
    const seen = await lastUpstreamRequest();
    expect(seen.closedEarly).toBe(true);
    expect(proxyEvent(h.logs, result.response.headers.get('x-request-id'))).toMatchObject({
      status: 502,
      outcome: 'upstream_error',
      errorCode: 'upstream_bad_response',
    });
  });

  it('205 Reset Content is passed on as 205 without its body (RFC 9110 §15.3.6); the body is released', async () => {
    h.upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(205, { 'content-type': 'text/plain', 'x-echo': 'reset' });
      res.write('content a 205 must not have');
    });
    const result = await h.call(['items', '1']);
    expect(result.response.status).toBe(205);
    expect(result.text).toBe('');
    expect(result.response.headers.get('x-echo')).toBe('reset');
    expect(result.response.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect((await lastUpstreamRequest()).closedEarly).toBe(true);
    expect(proxyEvent(h.logs, result.response.headers.get('x-request-id'))).toMatchObject({ status: 205, outcome: 'complete', errorCode: null });
  });

  it('103 Early Hints before the answer: the final 200 is passed on (undici consumes the 1xx)', async () => {
    h.upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
    });
    const result = await h.call(['items', '1']);
    expect(result.response.status).toBe(200);
    expect(result.json()).toEqual({ ok: true });
  });

  it.each([
    ['an unasked-for 101', 'HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n'],
    ['a bare 100', 'HTTP/1.1 100 Continue\r\n\r\n'],
    ['status 1000', 'HTTP/1.1 1000 Odd\r\nContent-Length: 2\r\n\r\nhi'],
    ['status 42', 'HTTP/1.1 42 Odd\r\nContent-Length: 2\r\n\r\nhi'],
    // Past undici's header size limit (Node's 16 KiB default): an answer that cannot be read, not an outage.
    ['a 64 KiB header', `HTTP/1.1 200 OK\r\nX-Huge: ${'h'.repeat(64 * 1024)}\r\nContent-Length: 2\r\n\r\nhi`],
  ])('%s: 502 upstream_bad_response', async (_name, raw) => {
    h.upstream.handle(rawResponse(raw));
    const result = await h.call(['items', '1']);
    expectKeywardError(result, 502, 'upstream_bad_response', h);
  });
});

describe('a transfer coding other than chunked (never asked for: Keyward sends no TE)', () => {
  it.each([['gzip, chunked'], ['gzip']])('Transfer-Encoding: %s: 502 upstream_bad_response, nothing of the body passed on', async (coding) => {
    h.upstream.handle(async (req) => {
      // The compressed bytes hold the echoed key, which the scrubber could not see.
      const body = zlib.gzipSync(Buffer.from(JSON.stringify({ echo: req.headers['x-api-key'] })));
      const chunked = coding.endsWith('chunked') ? `${body.length.toString(16)}\r\n${body.toString('latin1')}\r\n0\r\n\r\n` : body.toString('latin1');
      req.socket.end(Buffer.from(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: ${coding}\r\nConnection: close\r\n\r\n${chunked}`, 'latin1'));
    });
    const result = await h.call(['items', '1']);
    expectKeywardError(result, 502, 'upstream_bad_response', h);
  });
});

describe('Content-Encoding: deflate, in both forms browsers accept', () => {
  const answer = (encode: (data: Buffer) => Buffer) =>
    h.upstream.handle(async (req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'deflate' });
      // The upstream echoes the key: the scrubber must see the decoded text to remove it.
      res.end(encode(Buffer.from(JSON.stringify({ ok: true, echo: req.headers['x-api-key'], pad: 'x'.repeat(50_000) }))));
    });

  it.each([
    ['raw deflate (no zlib wrapper)', zlib.deflateRawSync],
    ['zlib-wrapped deflate', zlib.deflateSync],
  ])('%s is decoded and scrubbed', async (_name, encode) => {
    answer((data) => encode(data));
    const result = await h.call(['items', '1']);
    expect(result.response.status).toBe(200);
    expect(result.response.headers.get('content-encoding')).toBeNull();
    expect(result.json()).toMatchObject({ ok: true, echo: '[REDACTED]' });
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('bytes after the end of the deflate stream: the body still ends, and the call is recorded', async () => {
    answer((data) => Buffer.concat([zlib.deflateSync(data), Buffer.from('\n')]));
    const result = await h.call(['items', '1']);
    expect(result.response.status).toBe(200);
    expect(result.json()).toMatchObject({ ok: true, echo: '[REDACTED]' });
    await expect.poll(() => proxyEvent(h.logs, result.response.headers.get('x-request-id'))?.outcome).toBe('complete');
  });

  it('data that is neither: 502 upstream_bad_response before any status goes out, recorded once', async () => {
    answer(() => Buffer.from('this is not deflate data in either form'));
    const result = await h.call(['items', '1']);
    expectKeywardError(result, 502, 'upstream_bad_response', h);
    const requestId = result.response.headers.get('x-request-id');
    expect(proxyEvent(h.logs, requestId)).toMatchObject({ status: 502, outcome: 'upstream_error', errorCode: 'upstream_bad_response' });
    expect(h.logs.join('').split(requestId!).length - 1).toBe(1);
  });
});

describe('a compressed body that breaks after its first bytes', () => {
  it('gzip cut short: the status (200) and the first bytes went out, then the stream is cut and recorded as upstream_bad_response', async () => {
    const whole = zlib.gzipSync(Buffer.from(JSON.stringify({ pad: 'y'.repeat(200_000) })));
    h.upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      res.end(Buffer.concat([whole.subarray(0, whole.length - 40), Buffer.from('garbage after a valid start')]));
    });
    const result = await h.call(['items', '1'], { raw: true });
    expect(result.response.status).toBe(200);
    const { bytes, error } = await drain(result.response);
    expect(bytes).toBeGreaterThan(0);
    expect(error).toBeTruthy();
    await expect
      .poll(() => proxyEvent(h.logs, result.response.headers.get('x-request-id')))
      .toMatchObject({ status: 200, outcome: 'error', errorCode: 'upstream_bad_response' });
  });
});

describe('the decoded-size cap (maxDecodedResponseBytes)', () => {
  const logs: string[] = [];
  const events: ProxyEvent[] = [];
  let runtime: Runtime;
  let deps: ProxyDeps;
  let bomb: Buffer;

  beforeAll(async () => {
    // 100 MiB of zeros, compressed 1 MiB at a time: ~200 bytes of brotli, never 100 MiB in memory.
    const zeros = Buffer.alloc(MiB);
    const source = Readable.from((function* () { for (let i = 0; i < 100; i++) yield zeros; })());
    bomb = await buffer(source.pipe(zlib.createBrotliCompress({ params: { [zlib.constants.BROTLI_PARAM_QUALITY]: 5 } })));
    runtime = createRuntime({
      env: h.env,
      upstreams: [
        defineUpstream('capped', {
          baseUrl: `${h.upstream.origin}/capped/`,
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
          maxDecodedResponseBytes: MiB,
          timeoutMs: 120_000,
          routes: [
            { method: 'GET', path: '/small' },
            { method: 'GET', path: '/roomy', maxDecodedResponseBytes: 4 * MiB },
          ],
        }),
      ],
      logger: createLogger({
        level: 'debug',
        destination: new Writable({
          write(chunk: Buffer, _encoding, callback) {
            logs.push(chunk.toString('utf8'));
            callback();
          },
        }),
      }),
    });
    deps = { ...runtime, onComplete: (event) => events.push(event) };
  });
  afterAll(async () => {
    await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
  });

  function call(path: string): Promise<Response> {
    const request = new Request(`${APP_ORIGIN}/api/proxy/capped/${path}`, { headers: { cookie: h.cookie, 'x-keyward-csrf': '1' } });
    return handleProxy(request, { upstream: 'capped', path: [path] }, deps);
  }

  function answerWith(encoding: string, body: Buffer, end: boolean) {
    h.upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-encoding': encoding });
      if (end) res.end(body);
      else res.write(body); // the connection stays open: only Keyward letting go closes it
    });
  }

  it('a brotli bomb (~200 bytes → 100 MiB) is cut after 1 MiB: the client stream errors, the upstream is let go, the event says why', async () => {
    expect(bomb.length).toBeLessThan(4096);
    answerWith('br', bomb, false);
    const response = await call('small');
    expect(response.status).toBe(200);
    const { bytes, error } = await drain(response);
    expect(error).toBeTruthy();
    expect(bytes).toBeGreaterThan(0);
    expect(bytes).toBeLessThanOrEqual(MiB);
    expect((await lastUpstreamRequest()).closedEarly).toBe(true);

    const requestId = response.headers.get('x-request-id');
    const event = events.find((e) => e.requestId === requestId);
    expect(event).toMatchObject({ status: 200, outcome: 'error', errorCode: 'upstream_bad_response', bytesOut: bytes });
    expect(proxyEvent(logs, requestId)).toMatchObject({ outcome: 'error', errorCode: 'upstream_bad_response' });
    const warning = logs
      .flatMap((chunk) => chunk.split('\n'))
      .filter(Boolean)
      .map((line) => JSON.parse(line) as { level: number; msg: string; requestId?: string; code?: string })
      .find((line) => line.requestId === requestId && line.level === 40);
    expect(warning).toMatchObject({ code: 'upstream_bad_response' });
    expect(warning!.msg).toContain('maxDecodedResponseBytes');
  });

  it("a route's own cap wins: 2 MiB of gzip passes on /roomy (4 MiB) and is cut on /small (1 MiB)", async () => {
    const twoMiB = zlib.gzipSync(Buffer.alloc(2 * MiB, 0x61));
    answerWith('gzip', twoMiB, true);
    const roomy = await drain(await call('roomy'));
    expect(roomy).toEqual({ bytes: 2 * MiB, error: null });
    answerWith('gzip', twoMiB, true);
    const small = await drain(await call('small'));
    expect(small.error).toBeTruthy();
    expect(small.bytes).toBeLessThanOrEqual(MiB);
  });

  it('an identity body is not capped (it costs the upstream every byte): 3 MiB pass under the 1 MiB cap', async () => {
    h.upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(Buffer.alloc(3 * MiB, 0x62));
    });
    const response = await call('small');
    expect(await drain(response)).toEqual({ bytes: 3 * MiB, error: null });
    expect(events.find((e) => e.requestId === response.headers.get('x-request-id'))).toMatchObject({ outcome: 'complete', errorCode: null });
  });
});
