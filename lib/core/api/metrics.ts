import 'server-only';
import { createHash, timingSafeEqual } from 'node:crypto';
import { KeywardError, endpointOff } from '../errors';
import type { KeyExpiry } from '../observe/metrics';
import type { Runtime } from '../runtime';
import { apiHandler, requireRead } from './guard';

export type MetricsRuntime = Pick<Runtime, 'settings' | 'metrics' | 'keyRings' | 'logger'>;

/**
 * GET /api/metrics: the Prometheus text exposition, for a scraper holding KEYWARD_METRICS_TOKEN as a bearer token
 * (RFC 6750 §2.1). Without the setting the endpoint does not exist (404); a missing or wrong token is 401.
 */
export function handleMetrics(request: Request, runtime: MetricsRuntime): Promise<Response> {
  return apiHandler(runtime, async () => {
    const expected = runtime.settings.KEYWARD_METRICS_TOKEN;
    if (!expected) throw endpointOff('The metrics endpoint', 'KEYWARD_METRICS_TOKEN');
    requireRead(request);
    if (!tokenMatches(request.headers.get('authorization'), expected)) {
      throw new KeywardError('unauthenticated', {
        message: 'Send the metrics token: Authorization: Bearer <KEYWARD_METRICS_TOKEN>.',
        headers: { 'www-authenticate': 'Bearer realm="keyward-metrics"' },
      });
    }
    await refreshKeyExpiries(runtime);
    const text = await runtime.metrics.scrape();
    return new Response(text, {
      headers: { 'content-type': runtime.metrics.contentType, 'cache-control': 'private, no-store', 'x-content-type-options': 'nosniff' },
    });
  });
}

/**
 * `Bearer <token>`, the scheme case-insensitive (RFC 9110 §11.1), compared in constant time: both sides are
 * hashed first, so neither the comparison's time nor an early length check tells how much of a guess was right.
 */
function tokenMatches(header: string | null, expected: string): boolean {
  const match = header ? /^Bearer +(\S+) *$/i.exec(header) : null;
  const given = match?.[1] ?? '';
  const equal = timingSafeEqual(sha256(given), sha256(expected));
  return equal && given.length > 0;
}

function sha256(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

/**
 * The key-expiry gauge is read from the key rings at scrape time (they live in the store). A store that cannot
 * answer leaves the last values in place, counts a store error, and the rest of the scrape is still served.
 */
async function refreshKeyExpiries(runtime: MetricsRuntime): Promise<void> {
  try {
    const rings = await runtime.keyRings.list();
    const expiries: KeyExpiry[] = rings.flatMap(({ upstream, versions }) =>
      versions
        .filter((version) => version.expiresAt !== null && version.state !== 'revoked')
        .map((version) => ({ upstream, version: version.fingerprint, expiresAt: version.expiresAt! })),
    );
    runtime.metrics.setKeyExpiries(expiries, Date.now());
  } catch (error) {
    runtime.metrics.countStoreError();
    runtime.logger.warn({ err: error }, 'metrics: key expiries could not be read');
  }
}
