import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { AlertWebhook, signatureHeader, verifyWebhookSignature } from '../../../lib/core/detect/webhook';
import { createLogger } from '../../../lib/core/log/logger';
import { randomSecret } from '../../fixtures/secrets';

/** The alert webhook against a real HTTP receiver on loopback: signature, retries with backoff, giving up. */
const logger = createLogger({ level: 'silent', destination: new Writable({ write: (_c, _e, cb) => cb() }) });
const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (closers.length > 0) await closers.pop()!();
});

async function receiver(statuses: number[]) {
  const received: Array<{ body: string; signature: string | null }> = [];
  const server = createServer((request: IncomingMessage, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      received.push({ body: Buffer.concat(chunks).toString('utf8'), signature: (request.headers['keyward-signature'] as string | undefined) ?? null });
      response.statusCode = statuses[received.length - 1] ?? 200;
      response.end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(() => new Promise((resolve) => server.close(() => resolve())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/keyward`, received };
}

describe('alert webhook', () => {
  it('signs the JSON body with HMAC-SHA256 over "<timestamp>.<body>", and retries 5xx with exponential backoff', async () => {
    const secret = randomSecret('whk');
    const { url, received } = await receiver([503, 500, 200]);
    const waits: number[] = [];
    const webhook = new AlertWebhook({ url, secret, maxAttempts: 6, logger, sleep: async (ms) => void waits.push(ms) });
    webhook.send({ type: 'keyward.alert', alert: { id: 'al_1', action: 'throttle' } });
    await webhook.settled();
    expect(received).toHaveLength(3);
    expect(waits).toEqual([1000, 2000]);
    for (const { body, signature } of received) {
      expect(JSON.parse(body)).toEqual({ type: 'keyward.alert', alert: { id: 'al_1', action: 'throttle' } });
      expect(verifyWebhookSignature(secret, signature, body, Date.now())).toBe(true);
      // The wrong secret, a changed body, or an old timestamp do not verify.
      expect(verifyWebhookSignature(randomSecret('other'), signature, body, Date.now())).toBe(false);
      expect(verifyWebhookSignature(secret, signature, body.replace('throttle', 'alert'), Date.now())).toBe(false);
      expect(verifyWebhookSignature(secret, signature, body, Date.now() + 10 * 60_000)).toBe(false);
    }
  });

  it('sends with undici’s own fetch, never the global one (under next start, Next’s, which traces the full URL)', async () => {
    const { url, received } = await receiver([200]);
    const tokenUrl = `${url}?token=${randomSecret('hooktoken')}`;
    const global = globalThis.fetch;
    const calls: string[] = [];
    globalThis.fetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
      calls.push(String(input));
      return global(input, init);
    }) as typeof fetch;
    try {
      const webhook = new AlertWebhook({ url: tokenUrl, secret: randomSecret('whk'), maxAttempts: 1, logger });
      webhook.send({ type: 'keyward.alert', alert: { id: 'al_3' } });
      await webhook.settled();
    } finally {
      globalThis.fetch = global;
    }
    expect(received).toHaveLength(1);
    expect(calls).toEqual([]);
  });

  it('gives up on a 4xx other than 429, and after maxAttempts otherwise', async () => {
    const secret = randomSecret('whk');
    const refused = await receiver([400]);
    const once = new AlertWebhook({ url: refused.url, secret, maxAttempts: 6, logger, sleep: async () => {} });
    once.send({ n: 1 });
    await once.settled();
    expect(refused.received).toHaveLength(1);

    const failing = await receiver([500, 429, 500, 500]);
    const waits: number[] = [];
    const limited = new AlertWebhook({ url: failing.url, secret, maxAttempts: 3, logger, sleep: async (ms) => void waits.push(ms) });
    limited.send({ n: 2 });
    await limited.settled();
    expect(failing.received).toHaveLength(3);
    expect(waits).toEqual([1000, 2000]);
  });

  it('writes the signature header a receiver can recompute', () => {
    expect(signatureHeader('s'.repeat(32), 1_700_000_000, '{}')).toMatch(/^t=1700000000,v1=[0-9a-f]{64}$/);
  });
});
