import { Agent, request } from 'node:http';
import { assertLoopback } from './guard';
import { rssMiB } from './proc';

export interface BigResult {
  readonly direction: 'upload' | 'download';
  readonly bytes: number;
  readonly seconds: number;
  readonly mibPerS: number;
  /** VmRSS of the serving process just before the transfer (MiB). */
  readonly rssBeforeMiB: number;
  /** Highest VmRSS sampled (every 100 ms) during the transfer (MiB). */
  readonly rssPeakMiB: number;
  readonly rssGrowthMiB: number;
  readonly ok: boolean;
  readonly error: string | null;
}

const CHUNK = Buffer.alloc(1024 * 1024, 'abcdefghijklmnopqrstuvwxyz0123456789\n');

/**
 * Streams `bytes` up (POST, from one reused 1 MiB buffer, with backpressure) or down (GET, counted and dropped),
 * never holding the body, and samples the server's RSS meanwhile. Bounded by `timeoutMs`.
 */
export function transfer(options: {
  direction: 'upload' | 'download';
  url: string;
  headers: Record<string, string>;
  bytes: number;
  pid: number;
  timeoutMs: number;
}): Promise<BigResult> {
  const url = assertLoopback(options.url);
  const rssBeforeMiB = rssMiB(options.pid);
  let rssPeakMiB = rssBeforeMiB;
  const sampler = setInterval(() => (rssPeakMiB = Math.max(rssPeakMiB, rssMiB(options.pid))), 100);
  const begin = performance.now();
  const agent = new Agent({ keepAlive: false });
  return new Promise<BigResult>((resolve) => {
    let settled = false;
    const finish = (ok: boolean, moved: number, error: string | null) => {
      if (settled) return;
      settled = true;
      clearInterval(sampler);
      clearTimeout(timer);
      agent.destroy();
      rssPeakMiB = Math.max(rssPeakMiB, rssMiB(options.pid));
      const seconds = (performance.now() - begin) / 1000;
      resolve({
        direction: options.direction,
        bytes: moved,
        seconds: Math.round(seconds * 100) / 100,
        mibPerS: Math.round(moved / 1024 / 1024 / seconds),
        rssBeforeMiB: Math.round(rssBeforeMiB),
        rssPeakMiB: Math.round(rssPeakMiB),
        rssGrowthMiB: Math.round(rssPeakMiB - rssBeforeMiB),
        ok,
        error,
      });
    };
    const upload = options.direction === 'upload';
    const req = request(
      url,
      {
        agent,
        method: upload ? 'POST' : 'GET',
        headers: upload
          ? { ...options.headers, 'content-type': 'application/octet-stream', 'content-length': String(options.bytes) }
          : options.headers,
      },
      (res) => {
        let received = 0;
        let text = '';
        res.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (upload && text.length < 4096) text += chunk.toString('utf8');
        });
        res.on('end', () => {
          if (res.statusCode !== 200) return finish(false, 0, `status ${res.statusCode}: ${text.slice(0, 300)}`);
          if (upload) {
            const counted = (JSON.parse(text) as { bytes?: number }).bytes ?? -1;
            finish(counted === options.bytes, counted, counted === options.bytes ? null : `upstream counted ${counted} bytes`);
          } else {
            finish(received === options.bytes, received, received === options.bytes ? null : `received ${received} bytes`);
          }
        });
        res.on('error', (error) => finish(false, received, error.message));
      },
    );
    const timer = setTimeout(() => req.destroy(new Error(`timeout after ${options.timeoutMs} ms`)), options.timeoutMs);
    req.on('error', (error) => finish(false, 0, error.message));
    if (!upload) {
      req.end();
      return;
    }
    let left = options.bytes;
    const pump = () => {
      while (left > 0) {
        const chunk = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
        left -= chunk.length;
        if (!req.write(chunk)) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}
