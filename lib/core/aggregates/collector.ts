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
}

/**
 * Sums calls in memory between two audit batches, then turns the sums into store increments for every
 * period and rollup. A call costs one Map lookup and a few additions here (on the audit writer's side of
 * the response, never before it); the fan-out to 3 periods × 4 rollups happens once per distinct cell per
 * batch, and increments to the same field are merged, so a batch of similar calls writes few fields.
 */
export class UsageCollector {
  private cells = new Map<string, Cell>();

  add(event: ProxyEvent, at: number): void {
    const minute = bucketStart(at, 'minute');
    const keyVersion = event.keyFingerprint;
    const user = event.userId;
    const id = JSON.stringify([minute, event.upstream, event.route, keyVersion, user]);
    let cell = this.cells.get(id);
    if (!cell) {
      cell = { minute, upstream: event.upstream, route: event.route, keyVersion, user, counters: eventCounters(event) };
      this.cells.set(id, cell);
      return;
    }
    addCounters(cell.counters, eventCounters(event));
  }

  get size(): number {
    return this.cells.size;
  }

  /** Takes what was summed so far as increments (and forgets it): the caller writes them in one round trip. */
  drain(retention: UsageRetention): HashIncrement[] {
    const cells = this.cells;
    this.cells = new Map();
    const merged = new Map<string, { key: string; field: string; by: number; expiresAt: number }>();
    for (const cell of cells.values()) {
      for (const period of PERIODS) {
        const start = bucketStart(cell.minute, period);
        const expiresAt = start + PERIOD_MS[period] + retention[period];
        for (const rollup of Object.keys(ROLLUPS) as Rollup[]) {
          const key = bucketKey(period, rollup, start);
          const dimensions = JSON.stringify(ROLLUPS[rollup].map((dimension) => cell[dimension]));
          cell.counters.forEach((by, index) => {
            if (by === 0) return;
            const field = fieldName(dimensions, METRICS[index]!);
            const id = `${key}\n${field}`;
            const entry = merged.get(id);
            if (entry) entry.by = capped(entry.by + by);
            else merged.set(id, { key, field, by, expiresAt });
          });
        }
      }
    }
    return [...merged.values()];
  }
}
