import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Agent } from 'undici';
import { QueueDeadlineDispatcher } from '../../lib/core/forward/queue-deadline';
import { handleProxy } from '../../lib/core/pipeline';
import { APP_ORIGIN, createHarness, expectKeywardError, expectNoSecrets, expectNoSecretsInLogs, type Harness } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

/**
 * The upstream keeps `/v1/items/busy` streaming (a chunk every 100 ms, so neither of its call's deadlines fires)
 * until the returned release is called, or `atMostMs` passed; every other path is answered at once.
 */
function busyUntilReleased(atMostMs: number): () => void {
  let release = () => {};
  const released = new Promise<void>((resolve) => (release = resolve));
  setTimeout(release, atMostMs).unref();
  h.upstream.handle((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    if (req.url !== '/v1/items/busy') return void res.end('served');
    const beat = setInterval(() => res.write('.'), 100);
    void released.then(() => {
      clearInterval(beat);
      res.end('done');
    });
  });
  return () => release();
}

describe('method overrides are refused with 400 and no upstream call', () => {
  for (const header of ['x-http-method-override', 'x-http-method', 'x-method-override']) {
    it(header, async () => {
      const before = h.upstream.requests.length;
      const result = await h.call(['items', '1'], { headers: { [header]: 'DELETE' } });
      expectKeywardError(result, 400, 'method_override_refused', h);
      const post = await h.call(['items'], { method: 'POST', headers: { [header]: 'PUT' }, body: '{}' });
      expectKeywardError(post, 400, 'method_override_refused', h);
      expect(h.upstream.requests.length).toBe(before);
    });
  }

  it('the _method query parameter', async () => {
    const before = h.upstream.requests.length;
    const result = await h.call(['items', '1'], { query: '?_method=DELETE' });
    expectKeywardError(result, 400, 'method_override_refused', h);
    const post = await h.call(['items'], { method: 'POST', query: '?a=1&_method=PUT', body: '{}' });
    expectKeywardError(post, 400, 'method_override_refused', h);
    expect(h.upstream.requests.length).toBe(before);
  });
});

describe('refused methods', () => {
  // undici refuses to build a Request with TRACE, TRACK or CONNECT, but a plain Node adapter could hand
  // the core such a method: a Request whose `method` reads TRACE stands in for it.
  for (const method of ['TRACE', 'TRACK', 'CONNECT']) {
    it(`${method}: 405 and no upstream call`, async () => {
      // An undeclared path: only the early method refusal answers 405 here (route matching would say 404).
      const real = new Request(`${APP_ORIGIN}/api/proxy/echo/nowhere`, {
        headers: { cookie: h.cookie, 'x-keyward-csrf': '1' },
      });
      const request = new Proxy(real, {
        get(target, property) {
          if (property === 'method') return method;
          const value = Reflect.get(target, property, target) as unknown;
          return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
        },
      });
      const before = h.upstream.requests.length;
      const response = await handleProxy(request, { upstream: 'echo', path: ['nowhere'] }, h.runtime);
      const text = await response.text();
      expectKeywardError({ response, text, json: <T>() => JSON.parse(text) as T }, 405, 'method_not_allowed', h);
      expect(h.upstream.requests.length).toBe(before);
    });
  }
});

describe('bodiless upstream answers', () => {
  it('a 204 from the upstream is passed on without a body', async () => {
    h.upstream.handle(async (_req, res, record) => {
      await record.bodyDone;
      res.writeHead(204, { etag: '"v2"' });
      res.end();
    });
    const result = await h.call(['items', '1'], { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"a":1}' });
    expect(result.response.status).toBe(204);
    expect(result.text).toBe('');
    expect(result.response.headers.get('etag')).toBe('"v2"');
    expect(result.response.headers.get('cache-control')).toBe('private, no-store');
    expectNoSecrets(h.secrets, result.response, result.text);
  });
});

describe('upstream failures become Keyward JSON errors without upstream details', () => {
  it('an upstream that never answers: 504 upstream_timeout', async () => {
    h.upstream.handle(() => {
      // Never answers; the fixture closes the socket at teardown.
    });
    const result = await h.call(['items', '1'], { upstream: 'slow', query: '?q=private-query-value' });
    expectKeywardError(result, 504, 'upstream_timeout', h);
    expect(result.text).not.toContain('private-query-value');
    const seen = h.upstream.requests.at(-1)!;
    expect(seen.url).toBe('/v1/items/1?q=private-query-value');
    // Keyward gave up on the call: the upstream connection is closed, not left hanging.
    await seen.closed;
    expect(seen.closedEarly).toBe(true);
  });

  it('an upstream that sends headers and then stalls the body: the stream errors, nothing leaks', async () => {
    h.upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('partial ');
    });
    const result = await h.call(['items', '1'], { upstream: 'slow', raw: true });
    expect(result.response.status).toBe(200);
    const reader = result.response.body!.getReader();
    const first = await reader.read();
    expect(Buffer.from(first.value!).toString()).toBe('partial ');
    const failure = await reader.read().then(
      () => null,
      (error: unknown) => error as Error,
    );
    expect(failure).toBeInstanceOf(Error);
    expect(String(failure?.message)).not.toContain(h.upstream.origin);
    await h.upstream.requests.at(-1)!.closed;
    expect(h.upstream.requests.at(-1)!.closedEarly).toBe(true);
  });

  it('a call that waits for a free upstream connection longer than timeoutMs: 504 upstream_timeout, never sent', async () => {
    // One pooled connection stands in for 256 busy ones: the first call's stream keeps it (a chunk every 100 ms,
    // so neither of its own deadlines fires), and the second call queues behind it.
    const dispatcher = new QueueDeadlineDispatcher(new Agent({ connections: 1, pipelining: 1 }));
    // Without the deadline the second call waits for the release, then succeeds.
    const release = busyUntilReleased(3000);
    const deps = { ...h.runtime, dispatcher };
    const before = h.upstream.requests.length;
    try {
      const busy = h.call(['items', 'busy'], { upstream: 'slow', deps });
      await expect.poll(() => h.upstream.requests.length).toBe(before + 1);
      const queued = await h.call(['items', 'queued'], { upstream: 'slow', deps });
      expectKeywardError(queued, 504, 'upstream_timeout', h);
      expect(queued.json<{ error: { message: string } }>().error.message).toMatch(/busy/);
      release();
      expect((await busy).text).toMatch(/done$/);
      // The queued request reached the connection after its caller was answered: dropped, not sent.
      const after = await h.call(['items', 'after'], { upstream: 'slow', deps });
      expect(after.text).toBe('served');
      expect(h.upstream.requests.slice(before).map((request) => request.url)).toEqual(['/v1/items/busy', '/v1/items/after']);
    } finally {
      release();
      await dispatcher.close();
    }
  });

  it('a call whose client leaves while it waits for a free upstream connection ends then, not when one frees', async () => {
    // undici acts on an abort only once a request is on a connection; a call waiting in the pool's queue held its
    // in-flight slot until a connection freed or timeoutMs passed (two minutes here, up to ten) after its client left.
    const dispatcher = new QueueDeadlineDispatcher(new Agent({ connections: 1, pipelining: 1 }));
    const release = busyUntilReleased(5000);
    const deps = { ...h.runtime, dispatcher };
    const before = h.upstream.requests.length;
    try {
      let busyDone = false;
      const busy = h.call(['items', 'busy'], { deps }).finally(() => (busyDone = true));
      await expect.poll(() => h.upstream.requests.length).toBe(before + 1);
      const controller = new AbortController();
      const queued = h.call(['items', 'queued'], { deps, signal: controller.signal });
      setTimeout(() => controller.abort(), 50);
      // Answered as a client that left, while the busy call still holds the only connection.
      expectKeywardError(await queued, 400, 'bad_request', h);
      expect(busyDone).toBe(false);
      // A client gone before its call reached the dispatcher (during an earlier step) does not queue at all.
      const origin = new URL(h.upstream.origin).origin;
      const waiting = dispatcher.waitingFor(origin); // the call above, answered, until undici drops it unsent
      const gone = dispatcher.request({ origin, path: '/v1/items/gone', method: 'GET', headersTimeout: 60_000, signal: AbortSignal.abort() });
      await expect(gone).rejects.toMatchObject({ name: 'AbortError' });
      expect(busyDone).toBe(false);
      expect(dispatcher.waitingFor(origin)).toBe(waiting);
      release();
      expect((await busy).text).toMatch(/done$/);
      const after = await h.call(['items', 'after'], { deps });
      expect(after.text).toBe('served');
      expect(h.upstream.requests.slice(before).map((request) => request.url)).toEqual(['/v1/items/busy', '/v1/items/after']);
    } finally {
      release();
      await dispatcher.close();
    }
  });

  it('calls piling up behind busy connections are bounded: past the cap a call is refused at once, never queued', async () => {
    // undici cannot take a timed-out call out of its queue: it stays there, body and all, until a connection frees.
    // Two may wait here (1,024 in production); the third is answered without joining them.
    const dispatcher = new QueueDeadlineDispatcher(new Agent({ connections: 1, pipelining: 1 }), 2);
    const release = busyUntilReleased(5000);
    const deps = { ...h.runtime, dispatcher };
    const origin = new URL(h.upstream.origin).origin;
    const before = h.upstream.requests.length;
    try {
      const busy = h.call(['items', 'busy'], { upstream: 'slow', deps });
      await expect.poll(() => h.upstream.requests.length).toBe(before + 1);
      const timedOut = await Promise.all([1, 2].map((n) => h.call(['items', `queued-${n}`], { upstream: 'slow', deps })));
      for (const result of timedOut) expectKeywardError(result, 504, 'upstream_timeout', h);
      expect(dispatcher.waitingFor(origin)).toBe(2); // answered, but still in undici's queue
      const refused = await h.call(['items', 'refused'], { upstream: 'slow', deps });
      expectKeywardError(refused, 504, 'upstream_timeout', h);
      expect(dispatcher.waitingFor(origin)).toBe(2);
      release();
      expect((await busy).text).toMatch(/done$/);
      await expect.poll(() => dispatcher.waitingFor(origin)).toBe(0);
      const after = await h.call(['items', 'after'], { upstream: 'slow', deps });
      expect(after.text).toBe('served');
      expect(dispatcher.waitingFor(origin)).toBe(0);
      expect(h.upstream.requests.slice(before).map((request) => request.url)).toEqual(['/v1/items/busy', '/v1/items/after']);
    } finally {
      release();
      await dispatcher.close();
    }
  });

  it('an upstream that is down (closed port): 502 upstream_unreachable', async () => {
    const result = await h.call(['items', '1'], { upstream: 'down', query: '?token=private-query-value' });
    expectKeywardError(result, 502, 'upstream_unreachable', h);
    expect(result.text).not.toContain('private-query-value');
    expect(result.text).not.toMatch(/ECONNREFUSED|connect/i);
  });

  it('an upstream error status is passed through (scrubbed), not turned into a success', async () => {
    h.upstream.handle((req, res) => {
      res.writeHead(500, { 'content-type': 'application/json', 'set-cookie': 'a=b' });
      res.end(JSON.stringify({ error: 'boom', key: req.headers['x-api-key'] }));
    });
    const result = await h.call(['items', '1']);
    expect(result.response.status).toBe(500);
    expect(result.json<{ key: string }>().key).toBe('[REDACTED]');
    expect(result.response.headers.get('set-cookie')).toBeNull();
    expect(result.response.headers.get('cache-control')).toBe('private, no-store');
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('an upstream body with an unknown content-encoding: 502 upstream_bad_response', async () => {
    h.upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-encoding': 'zstd-unknown' });
      res.end('x'.repeat(1000));
    });
    const result = await h.call(['items', '1']);
    expectKeywardError(result, 502, 'upstream_bad_response', h);
  });
});

describe('request bodies over the route cap: 413', () => {
  it('declared by content-length: refused before anything is sent upstream', async () => {
    const before = h.upstream.requests.length;
    // Small chunks, so that a proxy which ignored the declared length would start forwarding them.
    let pulled = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (pulled >= 1100) return controller.close();
        pulled += 100;
        controller.enqueue(new Uint8Array(100).fill(0x61));
      },
    });
    const result = await h.call(['items'], {
      method: 'POST',
      headers: { 'content-length': '1100', 'content-type': 'application/json' },
      body,
    });
    expectKeywardError(result, 413, 'payload_too_large', h);
    expect(h.upstream.requests.length).toBe(before);
    expect(pulled).toBeLessThan(1100);
  });

  it('exactly at the cap passes (control)', async () => {
    const body = Buffer.alloc(1024, 0x61);
    const result = await h.call(['items'], { method: 'POST', headers: { 'content-length': '1024' }, body });
    expect(result.response.status).toBe(200);
    expect(h.upstream.requests.at(-1)!.bodyBytes).toBe(1024);
  });

  it('streamed without content-length: cut at the cap, the upstream never gets a complete body', async () => {
    const chunk = Buffer.alloc(300, 0x62);
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= 4000) {
          controller.close();
          return;
        }
        sent += chunk.length;
        controller.enqueue(new Uint8Array(chunk));
      },
    });
    const before = h.upstream.requests.length;
    const result = await h.call(['items'], { method: 'POST', body: stream });
    expectKeywardError(result, 413, 'payload_too_large', h);
    // Keyward stopped reading soon after the cap instead of consuming the whole body.
    expect(sent).toBeLessThan(4000);
    if (h.upstream.requests.length > before) {
      const seen = h.upstream.requests.at(-1)!;
      await seen.closed;
      expect(seen.bodyBytes).toBeLessThanOrEqual(1024);
      expect(seen.closedEarly).toBe(true);
    }
  });

  it('a lying content-length (smaller than the body) does not get past the cap', async () => {
    const chunk = Buffer.alloc(512, 0x63);
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= 4096) {
          controller.close();
          return;
        }
        sent += chunk.length;
        controller.enqueue(new Uint8Array(chunk));
      },
    });
    const result = await h.call(['items'], { method: 'POST', headers: { 'content-length': '10' }, body: stream });
    expectKeywardError(result, 413, 'payload_too_large', h);
  });
});
