import type { ProxyEvent } from '../pipeline';
import type { HashIncrement } from '../../store/types';
import {
  METRICS,
  PERIODS,
  PERIOD_MS,
  ROLLUPS,
  addCounters,
  capped,
  bucketKey,
  bucketStart,
  eventCounters,
  fieldName,
  M,
  whole,
  type Counters,
  type Rollup,
  type UsageRetention,
} from './model';

/** One minute's calls of one (upstream, route, key version, user): the finest grain the collector keeps. */
interface Cell {
  readonly minute: number;
  readonly upstream: string;
  readonly route: string | null;
  readonly keyVersion: string | null;
  readonly user: string | null;
  readonly counters: Counters;
  /**
   * The `key` rollup's scrubber hits: those of the call's own key only (`counters` has every hit, which the other
   * rollups count: what their upstream's answers were scrubbed of). Another key an answer echoed has its hits on
   * its own version's row (`echoes`), and a setting on no key's.
   */
  keyHits: number;
}

/** Hits on one key version that another call's answer echoed, in one minute: counted in the `key` rollup only. */
interface EchoCell {
  readonly minute: number;
  readonly upstream: string;
  readonly keyVersion: string;
  hits: number;
}

/**
 * Sums calls in memory between two audit batches, then turns the sums into store increments for every
 * period and rollup. A call costs one Map lookup and a few additions here (on the audit writer's side of
 * the response, never before it); the fan-out to 3 periods × 4 rollups happens once per distinct cell per
 * batch, and increments to the same field are merged, so a batch of similar calls writes few fields.
 */
export class UsageCollector {
  private cells = new Map<string, Cell>();
  private echoes = new Map<string, EchoCell>();

  add(event: ProxyEvent, at: number): void {
    const minute = bucketStart(at, 'minute');
    const keyVersion = event.keyFingerprint;
    const user = event.userId;
    const keyHits = event.echoed ? ownKeyHits(event.echoed) : event.scrubberHits;
    if (event.echoed) this.addEchoes(event.echoed, minute);
    const id = JSON.stringify([minute, event.upstream, event.route, keyVersion, user]);
    let cell = this.cells.get(id);
    if (!cell) {
      cell = { minute, upstream: event.upstream, route: event.route, keyVersion, user, counters: eventCounters(event), keyHits: whole(keyHits) };
      this.cells.set(id, cell);
      return;
    }
    addCounters(cell.counters, eventCounters(event));
    cell.keyHits = capped(cell.keyHits + whole(keyHits));
  }

  private addEchoes(echoed: NonNullable<ProxyEvent['echoed']>, minute: number): void {
    for (const echo of echoed) {
      if (echo.kind !== 'key') continue;
      const id = JSON.stringify([minute, echo.upstream, echo.fingerprint]);
      const cell = this.echoes.get(id);
      if (cell) cell.hits = capped(cell.hits + whole(echo.hits));
      else this.echoes.set(id, { minute, upstream: echo.upstream, keyVersion: echo.fingerprint, hits: whole(echo.hits) });
    }
  }

  get size(): number {
    return this.cells.size + this.echoes.size;
  }

  /** Takes what was summed so far as increments (and forgets it): the caller writes them in one round trip. */
  drain(retention: UsageRetention): HashIncrement[] {
    const cells = this.cells;
    const echoes = this.echoes;
    this.cells = new Map();
    this.echoes = new Map();
    const merged = new Map<string, { key: string; field: string; by: number; expiresAt: number }>();
    const increment = (key: string, field: string, by: number, expiresAt: number) => {
      if (by === 0) return;
      const id = `${key}\n${field}`;
      const entry = merged.get(id);
      if (entry) entry.by = capped(entry.by + by);
      else merged.set(id, { key, field, by, expiresAt });
    };
    for (const cell of cells.values()) {
      for (const period of PERIODS) {
        const start = bucketStart(cell.minute, period);
        const expiresAt = start + PERIOD_MS[period] + retention[period];
        for (const rollup of Object.keys(ROLLUPS) as Rollup[]) {
          const key = bucketKey(period, rollup, start);
          const dimensions = JSON.stringify(ROLLUPS[rollup].map((dimension) => cell[dimension]));
          cell.counters.forEach((by, index) => {
            const count = rollup === 'key' && index === M.scrubberHits ? cell.keyHits : by;
            increment(key, fieldName(dimensions, METRICS[index]!), count, expiresAt);
          });
        }
      }
    }
    for (const echo of echoes.values()) {
      for (const period of PERIODS) {
        const start = bucketStart(echo.minute, period);
        const dimensions = JSON.stringify(ROLLUPS.key.map((dimension) => echo[dimension]));
        increment(bucketKey(period, 'key', start), fieldName(dimensions, METRICS[M.scrubberHits]!), echo.hits, start + PERIOD_MS[period] + retention[period]);
      }
    }
    return [...merged.values()];
  }
}

/** The hits of a call's own credential among what its answer echoed (the `key` rollup's, on the call's key version). */
function ownKeyHits(echoed: NonNullable<ProxyEvent['echoed']>): number {
  return echoed.reduce((sum, echo) => (echo.kind === 'credential' ? sum + echo.hits : sum), 0);
}
