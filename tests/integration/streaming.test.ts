import { once } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { RecordedRequest } from '../fixtures/upstream';
import { createHarness, expectNoSecrets, expectNoSecretsInLogs, type Harness } from './harness';

const MiB = 1024 * 1024;
const TOTAL = 50 * MiB;
const CHUNK = 64 * 1024;
/** Growth allowed while 50 MiB pass through: a proxy that buffered the body would keep at least 50 MiB alive. */
const LIVE_BUDGET = 16 * MiB;
const RSS_BUDGET = 40 * MiB;
const RSS_AFTER_WARM_UP_BUDGET = 16 * MiB;

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});
beforeEach(() => h.upstream.reset());

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/**
 * Measures what the transfer keeps alive: a full GC, then heap + ArrayBuffer memory and RSS, against a
 * baseline taken the same way. Called every few MiB from inside the transfer, so whatever is buffered
 * anywhere in the chain (client, Keyward, upstream) at that moment counts; garbage does not.
 * RSS also carries a one-time warm-up (JIT code, allocator arenas, socket buffers), so besides its total
 * growth we check that it stops growing once the first 10 MiB went through: buffering grows with the bytes.
 */
function memoryProbe() {
  gc();
  const base = process.memoryUsage();
  const peak = { rss: 0, live: 0, samples: 0, rssAfterWarmUp: 0 };
  let warm: number | null = null;
  return {
    sample() {
      gc();
      const now = process.memoryUsage();
      peak.samples += 1;
      peak.rss = Math.max(peak.rss, now.rss - base.rss);
      peak.live = Math.max(peak.live, now.heapUsed + now.arrayBuffers - (base.heapUsed + base.arrayBuffers));
      if (peak.samples === WARM_UP_SAMPLES) warm = now.rss;
      if (warm !== null) peak.rssAfterWarmUp = Math.max(peak.rssAfterWarmUp, now.rss - warm);
    },
    stop() {
      return peak;
    },
  };
}

const SAMPLE_EVERY = 2 * MiB;
const WARM_UP_SAMPLES = 5; // 10 MiB

function expectBoundedMemory(peak: ReturnType<ReturnType<typeof memoryProbe>['stop']>): void {
  expect(peak.samples).toBeGreaterThanOrEqual(20);
  const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
  expect(peak.live, `live heap+ArrayBuffer growth ${mib(peak.live)}`).toBeLessThan(LIVE_BUDGET);
  expect(peak.rss, `RSS growth ${mib(peak.rss)}`).toBeLessThan(RSS_BUDGET);
  expect(peak.rssAfterWarmUp, `RSS growth after the first 10 MiB ${mib(peak.rssAfterWarmUp)}`).toBeLessThan(RSS_AFTER_WARM_UP_BUDGET);
}

function filler(size: number): Uint8Array {
  return new Uint8Array(size).fill(0x2e);
}

function requestNumber(): number {
  return h.upstream.requests.length + 1;
}

describe('large bodies stream through with bounded memory', () => {
  it('a 50 MiB upload (no content-length) reaches the upstream byte for byte while it is still being produced', async () => {
    h.upstream.handle(async (_req, res, record) => {
      const bytes = await record.bodyDone;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ bytes }));
    });
    const n = requestNumber();
    let produced = 0;
    let upstreamBytesWhenProducerResumed = -1;
    const probe = memoryProbe();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (produced >= TOTAL) {
          controller.close();
          return;
        }
        if (produced === 40 * MiB) {
          // Streaming proof: the last 10 MiB are produced only once the upstream already holds 20 MiB. A
          // proxy that buffered the whole body first would never get here (the test would time out).
          const record: RecordedRequest = await h.upstream.nthRequest(n);
          await record.waitForBytes(20 * MiB);
          upstreamBytesWhenProducerResumed = record.bodyBytes;
          probe.sample();
        }
        produced += CHUNK;
        if (produced % SAMPLE_EVERY === 0) probe.sample();
        controller.enqueue(filler(CHUNK));
      },
    });
    const result = await h.call(['upload'], { method: 'POST', body, headers: { 'content-type': 'application/octet-stream' } });
    const peak = probe.stop();
    expect(result.response.status).toBe(200);
    expect(result.json<{ bytes: number }>().bytes).toBe(TOTAL);
    const seen = h.upstream.requests[n - 1]!;
    expect(seen.bodyBytes).toBe(TOTAL);
    expect(seen.headers['content-length']).toBeUndefined();
    expect(upstreamBytesWhenProducerResumed).toBeGreaterThanOrEqual(20 * MiB);
    expect(upstreamBytesWhenProducerResumed).toBeLessThan(TOTAL);
    expectBoundedMemory(peak);
    expectNoSecrets(h.secrets, result.response, result.text);
  });

  it('a 50 MiB download reaches the client byte for byte while the upstream is still sending', async () => {
    let received = 0;
    let notify: (() => void) | null = null;
    const clientHas = (bytes: number) =>
      new Promise<void>((resolve) => {
        const check = () => (received >= bytes ? resolve() : (notify = check));
        check();
      });
    let clientBytesWhenUpstreamResumed = -1;
    h.upstream.handle(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(TOTAL) });
      let sent = 0;
      while (sent < TOTAL) {
        if (sent === 40 * MiB) {
          // Streaming proof for the response side: the last 10 MiB are sent only once the client has 20 MiB.
          await clientHas(20 * MiB);
          clientBytesWhenUpstreamResumed = received;
        }
        sent += CHUNK;
        if (!res.write(filler(CHUNK))) await once(res, 'drain');
      }
      res.end();
    });
    const probe = memoryProbe();
    const result = await h.call(['download'], { raw: true });
    expect(result.response.status).toBe(200);
    expect(result.response.headers.get('content-length')).toBeNull();
    const reader = result.response.body!.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const before = received;
      received += value.byteLength;
      if (Math.floor(received / SAMPLE_EVERY) !== Math.floor(before / SAMPLE_EVERY)) probe.sample();
      const pending = notify as (() => void) | null;
      notify = null;
      pending?.();
    }
    const peak = probe.stop();
    expect(received).toBe(TOTAL);
    expect(clientBytesWhenUpstreamResumed).toBeGreaterThanOrEqual(20 * MiB);
    expect(clientBytesWhenUpstreamResumed).toBeLessThan(TOTAL);
    expectBoundedMemory(peak);
    expectNoSecrets(h.secrets, result.response, '');
  });
});

describe('server-sent events', () => {
  it('the client receives the first event before the upstream sends the second', async () => {
    let releaseSecond!: () => void;
    const secondMayGo = new Promise<void>((resolve) => (releaseSecond = resolve));
    let secondSent = false;
    h.upstream.handle(async (req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.write(`id: 1\nevent: message\ndata: first ${String(req.headers['x-api-key'])}\n\n`);
      await secondMayGo;
      secondSent = true;
      res.write('id: 2\ndata: second\n\n');
      res.end();
    });
    const result = await h.call(['events'], { headers: { accept: 'text/event-stream', 'last-event-id': '0' }, raw: true });
    expect(result.response.status).toBe(200);
    expect(result.response.headers.get('content-type')).toBe('text/event-stream');
    expect(result.response.headers.get('cache-control')).toBe('private, no-store');
    expect(h.upstream.requests.at(-1)!.headers['last-event-id']).toBe('0');

    const reader = result.response.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    while (!text.includes('\n\n')) {
      const { value, done } = await reader.read();
      expect(done).toBe(false);
      text += decoder.decode(value, { stream: true });
    }
    // The first event is complete on the client while the upstream is still holding the second one back.
    expect(secondSent).toBe(false);
    expect(text).toBe('id: 1\nevent: message\ndata: first [REDACTED]\n\n');
    releaseSecond();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    expect(secondSent).toBe(true);
    expect(text).toBe('id: 1\nevent: message\ndata: first [REDACTED]\n\nid: 2\ndata: second\n\n');
    expectNoSecrets(h.secrets, result.response, text);
  });
});

describe('client abort', () => {
  it('aborting mid-stream closes the upstream request', async () => {
    h.upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: one\n\n');
      // Keeps the stream open: only the client's abort can end it.
    });
    const controller = new AbortController();
    const n = requestNumber();
    const result = await h.call(['events'], { signal: controller.signal, raw: true });
    expect(result.response.status).toBe(200);
    const requestId = result.response.headers.get('x-request-id');
    const reader = result.response.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toBe('data: one\n\n');
    const record = h.upstream.requests[n - 1]!;
    expect(record.closedEarly).toBe(false);

    controller.abort();
    await record.closed;
    expect(record.closedEarly).toBe(true);
    await reader.read().catch(() => undefined);
    // The usage record is still written for the aborted stream.
    await expect.poll(() => h.logs.some((line) => line.includes(String(requestId)) && /"outcome":"(aborted|error)"/.test(line))).toBe(true);
  });

  it('aborting before the upstream answered closes the upstream request', async () => {
    let arrived!: () => void;
    const upstreamHasRequest = new Promise<void>((resolve) => (arrived = resolve));
    h.upstream.handle(() => {
      arrived();
      // Never answers.
    });
    const controller = new AbortController();
    const n = requestNumber();
    const pending = h.call(['events'], { signal: controller.signal, raw: true });
    await upstreamHasRequest;
    controller.abort();
    const result = await pending;
    expect(result.response.status).toBeGreaterThanOrEqual(400);
    const record = h.upstream.requests[n - 1]!;
    await record.closed;
    expect(record.closedEarly).toBe(true);
  });

  it('cancelling the response body (the browser went away) closes the upstream request', async () => {
    h.upstream.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: one\n\n');
    });
    const n = requestNumber();
    const result = await h.call(['events'], { raw: true });
    const reader = result.response.body!.getReader();
    await reader.read();
    await reader.cancel();
    const record = h.upstream.requests[n - 1]!;
    await record.closed;
    expect(record.closedEarly).toBe(true);
  });
});
