import { AggregatorRegistry, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ProxyEvent } from '../pipeline';
import { methodLabel } from './trace';

/** Refusals by the limits step, by the error code they are answered with. */
const LIMIT_CODES = new Set(['rate_limited', 'quota_exceeded', 'budget_exceeded', 'throttled']);
/** Label values for an upstream id the registry does not hold (the client chose it) and a call that matched no route. */
export const UNKNOWN_UPSTREAM = '(unknown)';
export const NO_ROUTE = '(none)';
/** Seconds: from a cached small JSON call (~1 ms) to a long LLM stream. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

type Inc = { inc(value?: number): void };
type Observe = { observe(value: number): void };

/**
 * A counter cell counted with a plain addition on the call's path and handed to its prom-client child at scrape
 * time: a child's `inc` builds its label key on every call (about 1 µs, measured), this costs a few ns.
 */
class Tally {
  private pending = 0;
  constructor(private readonly child: Inc) {}

  add(value = 1): void {
    this.pending += value;
  }

  flush(): void {
    if (this.pending === 0) return;
    this.child.inc(this.pending);
    this.pending = 0;
  }
}

/** The label children of one upstream and route, made once: a call then finds them with two Map lookups. */
interface RouteChildren {
  readonly calls: Map<string, Tally>;
  readonly errors: Map<string, Tally>;
  readonly duration: Observe;
  readonly units: Tally;
  readonly scrubberHits: Tally;
  readonly refusals: Map<string, Tally>;
}

/** A key version's expiry, as the expiry gauge shows it. */
export interface KeyExpiry {
  readonly upstream: string;
  /** The version's fingerprint (never the key). */
  readonly version: string;
  readonly expiresAt: number;
}

/**
 * Keyward's Prometheus metrics (README "Metrics and traces"), in a registry of its own (not prom-client's global
 * one, which an app may use for its own metrics). Labels are bounded: upstream ids from the registry, route
 * templates, methods from a fixed list, status classes, outcomes and error codes: never a raw path, a query or a
 * value a client chose.
 */
export class ProxyMetrics {
  readonly registry = new Registry();
  private readonly calls = new Counter({
    name: 'keyward_proxy_calls_total',
    help: 'Proxied calls, by upstream, route template, method, status class and outcome.',
    labelNames: ['upstream', 'route', 'method', 'status_class', 'outcome'] as const,
    registers: [this.registry],
  });
  private readonly errors = new Counter({
    name: 'keyward_proxy_errors_total',
    help: 'Proxied calls answered with a Keyward error or ended by one, by error code.',
    labelNames: ['upstream', 'route', 'code'] as const,
    registers: [this.registry],
  });
  private readonly refusals = new Counter({
    name: 'keyward_limit_refusals_total',
    help: 'Calls refused by a rate limit, quota or budget.',
    labelNames: ['upstream', 'kind'] as const,
    registers: [this.registry],
  });
  private readonly scrubberHits = new Counter({
    name: 'keyward_scrubber_hits_total',
    help: 'Secret values the leak scrubber replaced in upstream responses.',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  private readonly storeErrors = new Counter({
    name: 'keyward_store_errors_total',
    help: 'Proxied calls answered 503 store_unavailable, and store reads for this endpoint that failed.',
    registers: [this.registry],
  });
  private readonly duration = new Histogram({
    name: 'keyward_proxy_duration_seconds',
    help: 'Time from a call\'s arrival to the end (or abort) of its response body.',
    labelNames: ['upstream', 'route'] as const,
    buckets: DURATION_BUCKETS,
    registers: [this.registry],
  });
  private readonly keyExpiry = new Gauge({
    name: 'keyward_key_expiry_seconds',
    help: 'Seconds until each service key version expires (negative: expired), by upstream and key fingerprint.',
    labelNames: ['upstream', 'version'] as const,
    registers: [this.registry],
    // Merged with another process's metrics (mergeFrom), one value per version, never a sum of two.
    aggregator: 'first',
  });
  private readonly units = new Counter({
    name: 'keyward_budget_units_total',
    help: 'Budget units charged, by upstream and route template.',
    labelNames: ['upstream', 'route'] as const,
    registers: [this.registry],
  });
  private readonly detectorActions = new Counter({
    name: 'keyward_detector_actions_total',
    help: "The anomaly detector's alerts and steps, by rule and action (alert, throttle, reauth, revoke).",
    labelNames: ['rule', 'action'] as const,
    registers: [this.registry],
  });
  private readonly children = new Map<string, Map<string, RouteChildren>>();
  private readonly tallies: Tally[] = [];
  private readonly sources: Array<() => Promise<unknown[]>> = [];

  /**
   * Counts one recorded call. `known` says whether the event's upstream is a registry id (else the id is the
   * client's text and is counted as "(unknown)"); `scrubberHits` is how many secrets the scrubber replaced.
   */
  observe(event: ProxyEvent, known: boolean, scrubberHits = 0): void {
    const upstream = known ? event.upstream : UNKNOWN_UPSTREAM;
    const route = event.route ?? NO_ROUTE;
    const children = this.routeChildren(upstream, route);
    const method = methodLabel(event.method);
    const statusClass = `${Math.floor(event.status / 100)}xx`;
    const callKey = `${method} ${statusClass} ${event.outcome}`;
    let calls = children.calls.get(callKey);
    if (!calls) {
      calls = this.tally(this.calls.labels(upstream, route, method, statusClass, event.outcome));
      children.calls.set(callKey, calls);
    }
    calls.add();
    children.duration.observe(event.durationMs / 1000);
    if (event.units > 0) children.units.add(event.units);
    if (scrubberHits > 0) children.scrubberHits.add(scrubberHits);
    const code = event.errorCode;
    if (code !== null) this.observeError(children, upstream, route, code);
  }

  private observeError(children: RouteChildren, upstream: string, route: string, code: string): void {
    let errors = children.errors.get(code);
    if (!errors) {
      errors = this.tally(this.errors.labels(upstream, route, code));
      children.errors.set(code, errors);
    }
    errors.add();
    if (LIMIT_CODES.has(code)) {
      let refusals = children.refusals.get(code);
      if (!refusals) {
        refusals = this.tally(this.refusals.labels(upstream, code));
        children.refusals.set(code, refusals);
      }
      refusals.add();
    }
    if (code === 'store_unavailable') this.storeErrors.inc();
  }

  /** One of the anomaly detector's actions (lib/core/detect/alerts.ts); rule and action are fixed names. */
  countDetectorAction(rule: string, action: string): void {
    this.detectorActions.labels(rule, action).inc();
  }

  /** A store failure met outside a proxied call (reading key expiries for a scrape). */
  countStoreError(): void {
    this.storeErrors.inc();
  }

  /** Replaces the expiry gauge with these versions (read from the key rings when the endpoint is scraped). */
  setKeyExpiries(expiries: readonly KeyExpiry[], now: number): void {
    this.keyExpiry.reset();
    for (const { upstream, version, expiresAt } of expiries) this.keyExpiry.labels(upstream, version).set((expiresAt - now) / 1000);
  }

  /** The Prometheus text exposition of every metric, with the other processes' merged in (mergeFrom). */
  async scrape(): Promise<string> {
    if (this.sources.length === 0) {
      this.flushTallies();
      return this.registry.metrics();
    }
    const [own, others] = await Promise.all([this.snapshot(), Promise.all(this.sources.map((read) => read().catch(() => null)))]);
    return AggregatorRegistry.aggregate([own, ...others.filter((metrics) => metrics !== null)]).metrics();
  }

  /** This process's metrics as JSON (prom-client's form), for another process's scrape to merge. */
  async snapshot(): Promise<unknown[]> {
    this.flushTallies();
    return this.registry.getMetricsAsJSON();
  }

  private flushTallies(): void {
    for (const tally of this.tallies) tally.flush();
  }

  /**
   * Adds another process's metrics to every scrape, summed (the key expiry gauge taken from this process): under
   * `npm start`, Next's process counts what its handlers see (a decoy key submitted to /api/keys, for one) and the
   * fast lane answers /api/metrics. A source that fails or does not answer in time is left out of that scrape.
   */
  mergeFrom(read: () => Promise<unknown[]>): void {
    this.sources.push(read);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  private tally(child: Inc): Tally {
    const tally = new Tally(child);
    this.tallies.push(tally);
    return tally;
  }

  private routeChildren(upstream: string, route: string): RouteChildren {
    let byRoute = this.children.get(upstream);
    if (!byRoute) {
      byRoute = new Map();
      this.children.set(upstream, byRoute);
    }
    let children = byRoute.get(route);
    if (!children) {
      children = {
        calls: new Map(),
        errors: new Map(),
        refusals: new Map(),
        duration: this.duration.labels(upstream, route),
        units: this.tally(this.units.labels(upstream, route)),
        scrubberHits: this.tally(this.scrubberHits.labels(upstream)),
      };
      byRoute.set(route, children);
    }
    return children;
  }
}

const PROCESS_METRICS = Symbol.for('keyward.metrics');

/**
 * The process's metrics. One per process, on purpose shared through globalThis: each Next bundle's runtime
 * (lib/next/runtime.ts) in one process counts into the same set, whichever bundle serves `/api/metrics`. Under
 * `npm start` the fast lane's process (which serves the proxied calls) answers `/api/metrics` itself, and Next runs
 * in a child process. Only plain method calls cross bundles here (no `instanceof`).
 */
export function processMetrics(): ProxyMetrics {
  const holder = globalThis as { [PROCESS_METRICS]?: ProxyMetrics };
  return (holder[PROCESS_METRICS] ??= new ProxyMetrics());
}
