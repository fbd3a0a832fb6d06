import { Agent, request } from 'node:http';
import { assertLoopback, MAX_SAMPLES } from './guard';

export interface SseOptions {
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  /** Requests to make in total (bounded), `concurrency` at a time. */
  readonly total: number;
  readonly concurrency: number;
  /** The whole run stops starting requests after this (bounded in time as well as in count). */
  readonly deadlineMs: number;
  readonly requestTimeoutMs: number;
  /** Events the upstream sends per stream; a stream that delivers fewer counts as an error. */
  readonly expectEvents: number;
}

export interface SseResult {
  readonly completed: number;
  readonly errors: number;
  readonly firstError: string | null;
  readonly elapsedMs: number;
  /** Time from request start to the first complete `data:` line, per completed request (ms). */
  readonly ttfeMs: number[];
  /** Time from request start to the end of the stream (ms). */
  readonly fullMs: number[];
}

const FIRST_DATA_LINE = /(?:^|\n)data:[^\n]*\n/;

/** Opens SSE streams over keep-alive connections and measures time to first event. */
export async function runSse(options: SseOptions): Promise<SseResult> {
  assertLoopback(options.url);
  const agent = new Agent({ keepAlive: true, maxSockets: options.concurrency });
  const ttfeMs: number[] = [];
  const fullMs: number[] = [];
  let started = 0;
  let errors = 0;
  let firstError: string | null = null;
  const begin = performance.now();
  const deadline = begin + options.deadlineMs;

  const worker = async () => {
    while (started < options.total && performance.now() < deadline && ttfeMs.length < MAX_SAMPLES) {
      started++;
      try {
        const { ttfe, full } = await oneStream(options, agent);
        ttfeMs.push(ttfe);
        fullMs.push(full);
      } catch (error) {
        errors++;
        firstError ??= (error as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  const elapsedMs = performance.now() - begin;
  agent.destroy();
  return { completed: ttfeMs.length, errors, firstError, elapsedMs, ttfeMs, fullMs };
}

function oneStream(options: SseOptions, agent: Agent): Promise<{ ttfe: number; full: number }> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let ttfe = Number.NaN;
    let body = '';
    const req = request(options.url, { agent, headers: { ...options.headers, accept: 'text/event-stream' } }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error(`status ${res.statusCode}`));
        return;
      }
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
        if (Number.isNaN(ttfe) && FIRST_DATA_LINE.test(body)) ttfe = performance.now() - start;
        if (body.length > 1024 * 1024) req.destroy(new Error('SSE body larger than 1 MiB'));
      });
      res.on('end', () => {
        const events = body.split('\ndata:').length - 1 + (body.startsWith('data:') ? 1 : 0);
        if (Number.isNaN(ttfe) || events < options.expectEvents) {
          reject(new Error(`stream ended after ${events} of ${options.expectEvents} events`));
        } else {
          resolve({ ttfe, full: performance.now() - start });
        }
      });
      res.on('error', reject);
    });
    req.setTimeout(options.requestTimeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}
