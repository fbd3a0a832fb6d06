import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import { fetch as undiciFetch } from 'undici';

export interface WebhookOptions {
  readonly url: string;
  readonly secret: string;
  readonly maxAttempts: number;
  readonly logger: Logger;
  readonly now?: () => number;
  /** Waits between attempts (tests pass one that does not sleep). */
  readonly sleep?: (ms: number) => Promise<void>;
  /**
   * Default: undici's own fetch, not the global one. Under `next start` the global fetch is Next's patched one,
   * which opens a span named after the full URL (`http.url`) for every call; with tracing exported, a token in
   * the webhook URL (a path or query secret, as Slack-style hooks have) would reach the OTLP collector.
   */
  readonly fetch?: typeof fetch;
}

/** First retry after 1 s, doubling up to 5 minutes. */
const FIRST_BACKOFF_MS = 1_000;
const MAX_BACKOFF_MS = 300_000;
const TIMEOUT_MS = 10_000;
/** Deliveries waiting or retrying at once; beyond this an alert is logged as not delivered (the dashboard still has it). */
const MAX_IN_FLIGHT = 100;

/**
 * Alerts POSTed as JSON to the deployment's webhook, signed as Stripe signs its webhooks (a scheme receivers
 * already know how to check): `Keyward-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. The
 * timestamp is signed with the body, so a receiver can refuse replays older than a few minutes
 * (`verifyWebhookSignature`). Network errors, 429 and 5xx are retried with exponential backoff; other answers
 * end the delivery. Deliveries live in memory: a restart drops those still retrying (each alert is also in the
 * store and on the dashboard).
 */
export class AlertWebhook {
  private inFlight = 0;
  private readonly idle = new Set<Promise<void>>();

  constructor(private readonly options: WebhookOptions) {}

  send(payload: object): void {
    if (this.inFlight >= MAX_IN_FLIGHT) {
      this.options.logger.warn({ webhook: 'dropped' }, 'alert webhook backlog full; alert not delivered');
      return;
    }
    this.inFlight++;
    const delivery = this.deliver(JSON.stringify(payload)).finally(() => {
      this.inFlight--;
      this.idle.delete(delivery);
    });
    this.idle.add(delivery);
  }

  /** Resolves when every delivery under way has ended (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.idle.size > 0) await Promise.allSettled([...this.idle]);
  }

  private async deliver(body: string): Promise<void> {
    const { url, secret, maxAttempts, logger } = this.options;
    const now = this.options.now ?? Date.now;
    const sleep = this.options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref()));
    const send = this.options.fetch ?? (undiciFetch as unknown as typeof fetch);
    for (let attempt = 1; attempt <= maxAttempts; attempt++) {
      const timestamp = Math.floor(now() / 1000);
      let status: number | null = null;
      try {
        const response = await send(url, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            'user-agent': 'keyward-webhook',
            'keyward-signature': signatureHeader(secret, timestamp, body),
          },
          body,
          redirect: 'manual',
          signal: AbortSignal.timeout(TIMEOUT_MS),
        });
        status = response.status;
        await response.body?.cancel();
      } catch {
        status = null;
      }
      if (status !== null && status >= 200 && status < 300) return;
      const retry = status === null || status === 429 || status >= 500;
      // The URL is configuration, not a secret, but it may carry a token in its query: log the status only.
      logger.warn({ webhook: 'failed', attempt, status }, retry && attempt < maxAttempts ? 'alert webhook failed; retrying' : 'alert webhook failed');
      if (!retry || attempt === maxAttempts) return;
      await sleep(Math.min(FIRST_BACKOFF_MS * 2 ** (attempt - 1), MAX_BACKOFF_MS));
    }
  }
}

export function signatureHeader(secret: string, timestamp: number, body: string): string {
  return `t=${timestamp},v1=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

/**
 * For receivers (and tests): whether `header` signs `body` with `secret`, within `toleranceSeconds` of `nowMs`.
 * Compared in constant time.
 */
export function verifyWebhookSignature(secret: string, header: string | null, body: string, nowMs: number, toleranceSeconds = 300): boolean {
  const match = /^t=(\d{1,12}),v1=([0-9a-f]{64})$/.exec(header ?? '');
  if (!match) return false;
  const timestamp = Number(match[1]);
  if (Math.abs(nowMs / 1000 - timestamp) > toleranceSeconds) return false;
  const expected = Buffer.from(signatureHeader(secret, timestamp, body).slice(-64), 'hex');
  return timingSafeEqual(expected, Buffer.from(match[2]!, 'hex'));
}
