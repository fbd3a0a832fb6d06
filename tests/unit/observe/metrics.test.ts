import { describe, expect, it } from 'vitest';
import { ProxyMetrics, processMetrics } from '../../../lib/core/observe/metrics';
import type { ProxyEvent } from '../../../lib/core/pipeline';

function event(overrides: Partial<ProxyEvent> = {}): ProxyEvent {
  return {
    requestId: 'r',
    userId: 'u',
    sessionId: 's',
    upstream: 'echo',
    route: '/items/:id',
    target: 'http://127.0.0.1:1/v1/items/1',
    method: 'GET',
    status: 200,
    keyFingerprint: 'fp',
    bytesIn: 0,
    bytesOut: 10,
    durationMs: 12,
    outcome: 'complete',
    errorCode: null,
    clientIp: null,
    units: 0,
    scrubberHits: 0,
    ...overrides,
  };
}

describe('ProxyMetrics', () => {
  it('counts calls by upstream, route, method, status class and outcome, and their durations', async () => {
    const metrics = new ProxyMetrics();
    metrics.observe(event(), true);
    metrics.observe(event({ durationMs: 3000 }), true);
    metrics.observe(event({ status: 502, outcome: 'upstream_error', errorCode: 'upstream_unreachable' }), true);
    const text = await metrics.scrape();
    expect(text).toContain('keyward_proxy_calls_total{upstream="echo",route="/items/:id",method="GET",status_class="2xx",outcome="complete"} 2');
    expect(text).toContain('keyward_proxy_calls_total{upstream="echo",route="/items/:id",method="GET",status_class="5xx",outcome="upstream_error"} 1');
    expect(text).toContain('keyward_proxy_errors_total{upstream="echo",route="/items/:id",code="upstream_unreachable"} 1');
    expect(text).toContain('keyward_proxy_duration_seconds_bucket{le="0.025",upstream="echo",route="/items/:id"} 2');
    expect(text).toContain('keyward_proxy_duration_seconds_bucket{le="5",upstream="echo",route="/items/:id"} 3');
    expect(text).toContain('keyward_proxy_duration_seconds_count{upstream="echo",route="/items/:id"} 3');
  });

  it('names an upstream the registry does not hold "(unknown)", a call without a route "(none)", an odd method _OTHER', async () => {
    const metrics = new ProxyMetrics();
    metrics.observe(event({ upstream: 'secret-looking-id', route: null, method: 'PROPFIND', status: 404, outcome: 'refused', errorCode: 'upstream_not_found' }), false);
    const text = await metrics.scrape();
    expect(text).not.toContain('secret-looking-id');
    expect(text).not.toContain('PROPFIND');
    expect(text).toContain('keyward_proxy_calls_total{upstream="(unknown)",route="(none)",method="_OTHER",status_class="4xx",outcome="refused"} 1');
  });

  it('counts limit refusals by kind, store errors, scrubber hits and budget units', async () => {
    const metrics = new ProxyMetrics();
    for (const code of ['rate_limited', 'rate_limited', 'quota_exceeded', 'budget_exceeded']) {
      metrics.observe(event({ status: 429, outcome: 'refused', errorCode: code }), true);
    }
    metrics.observe(event({ status: 503, outcome: 'unavailable', errorCode: 'store_unavailable' }), true);
    metrics.countStoreError();
    metrics.observe(event({ units: 120 }), true, 2);
    metrics.observe(event({ units: 30 }), true, 0);
    const text = await metrics.scrape();
    expect(text).toContain('keyward_limit_refusals_total{upstream="echo",kind="rate_limited"} 2');
    expect(text).toContain('keyward_limit_refusals_total{upstream="echo",kind="quota_exceeded"} 1');
    expect(text).toContain('keyward_limit_refusals_total{upstream="echo",kind="budget_exceeded"} 1');
    expect(text).toContain('keyward_store_errors_total 2');
    expect(text).toContain('keyward_scrubber_hits_total{upstream="echo"} 2');
    expect(text).toContain('keyward_budget_units_total{upstream="echo",route="/items/:id"} 150');
  });

  it('shows seconds until each key version expires, replaced on each refresh', async () => {
    const metrics = new ProxyMetrics();
    const now = 1_000_000;
    metrics.setKeyExpiries([{ upstream: 'echo', version: 'fp-a', expiresAt: now + 90_000 }, { upstream: 'echo', version: 'fp-b', expiresAt: now - 1000 }], now);
    let text = await metrics.scrape();
    expect(text).toContain('keyward_key_expiry_seconds{upstream="echo",version="fp-a"} 90');
    expect(text).toContain('keyward_key_expiry_seconds{upstream="echo",version="fp-b"} -1');
    metrics.setKeyExpiries([], now);
    text = await metrics.scrape();
    expect(text).not.toContain('fp-a');
  });

  it('keeps its own registry, and one set per process for both doors', async () => {
    const a = new ProxyMetrics();
    a.observe(event(), true);
    expect(await new ProxyMetrics().scrape()).not.toContain('outcome="complete"');
    expect(processMetrics()).toBe(processMetrics());
  });

  it("merges another process's metrics into a scrape: counters and histograms summed, the key expiry gauge this process's own", async () => {
    const fastLane = new ProxyMetrics();
    const next = new ProxyMetrics();
    fastLane.observe(event(), true);
    fastLane.observe(event(), true);
    next.observe(event(), true);
    next.countDetectorAction('decoy', 'alert');
    const now = Date.now();
    fastLane.setKeyExpiries([{ upstream: 'echo', version: 'fp-a', expiresAt: now + 90_000 }], now);
    next.setKeyExpiries([{ upstream: 'echo', version: 'fp-a', expiresAt: now + 90_000 }], now);
    fastLane.mergeFrom(() => next.snapshot());
    fastLane.mergeFrom(() => Promise.reject(new Error('gone')));

    const text = await fastLane.scrape();
    expect(text).toContain('keyward_proxy_calls_total{upstream="echo",route="/items/:id",method="GET",status_class="2xx",outcome="complete"} 3');
    expect(text).toContain('keyward_proxy_duration_seconds_count{upstream="echo",route="/items/:id"} 3');
    expect(text).toContain('keyward_detector_actions_total{rule="decoy",action="alert"} 1');
    expect(text).toMatch(/keyward_key_expiry_seconds\{upstream="echo",version="fp-a"\} (89|90)(\.\d+)?\n/);
    // Counted once more in this process only: the merge reads the other process afresh at each scrape.
    fastLane.observe(event(), true);
    expect(await fastLane.scrape()).toContain('outcome="complete"} 4');
  });
});
