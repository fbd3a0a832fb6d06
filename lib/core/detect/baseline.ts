const MINUTE_MS = 60_000;

/**
 * A rolling baseline of one quantity per minute (calls, errors, units), and its current rate.
 *
 * The baseline is an exponentially weighted moving average of whole minutes (half-life `halfLifeMinutes`); the
 * current rate is a sliding one-minute window estimated from two buckets (this minute so far, plus the part of
 * the last minute still inside the window), which reacts within seconds without keeping every event. A minute
 * with no events counts as 0, so a quiet subject's baseline decays; the first minute seen starts the baseline.
 * Written by hand: it is ten lines of arithmetic, where a library would bring a time-series store.
 */
export class RateBaseline {
  private minute = -1;
  private current = 0;
  private previous = 0;
  private ewma = 0;
  private started = false;
  /**
   * While set, finished minutes do not move the baseline: a subject under an anomaly is not learnt from, or a
   * sustained attack would become its own baseline within an hour and stop being seen.
   */
  frozen = false;

  constructor(private readonly alpha: number) {}

  /** Takes the current rate as the baseline (an admin said this behaviour is normal for the subject). */
  adopt(at: number): void {
    this.ewma = this.rate(at);
    this.started = true;
  }

  /** The EWMA weight for a half-life in minutes: after `h` minutes an old minute weighs half. */
  static alphaFor(halfLifeMinutes: number): number {
    return 1 - Math.pow(0.5, 1 / halfLifeMinutes);
  }

  add(at: number, amount: number): void {
    this.roll(at);
    this.current += amount;
  }

  /** Calls (or units) per minute over the last sixty seconds, estimated. */
  rate(at: number): number {
    this.roll(at);
    const into = (at % MINUTE_MS) / MINUTE_MS;
    return this.current + this.previous * (1 - into);
  }

  /** The baseline per minute, of whole minutes before this one. */
  baseline(at: number): number {
    this.roll(at);
    return this.ewma;
  }

  private roll(at: number): void {
    const minute = Math.floor(at / MINUTE_MS);
    if (this.minute === -1) {
      this.minute = minute;
      return;
    }
    if (minute <= this.minute) return;
    const gap = minute - this.minute;
    if (!this.frozen) {
      // The finished minute, then (gap - 1) empty ones, folded in closed form.
      this.ewma = this.started ? this.ewma + this.alpha * (this.current - this.ewma) : this.current;
      this.started = true;
      if (gap > 1) this.ewma *= Math.pow(1 - this.alpha, gap - 1);
    }
    this.previous = gap === 1 ? this.current : 0;
    this.current = 0;
    this.minute = minute;
  }
}

/** Distinct values seen within a window, at most `cap + 1` of them kept (enough to know the cap was passed). */
export class RecentSet {
  private readonly seen = new Map<string, number>();

  constructor(private readonly cap: number) {}

  /** Adds a value seen at `at`, forgets those older than `windowMs`, and returns how many distinct remain. */
  add(value: string, at: number, windowMs: number): number {
    // Kept in the order last seen, so the expired ones are at the front.
    for (const [key, last] of this.seen) {
      if (at - last <= windowMs) break;
      this.seen.delete(key);
    }
    this.seen.delete(value);
    this.seen.set(value, at);
    while (this.seen.size > this.cap + 1) this.seen.delete(this.seen.keys().next().value!);
    return this.seen.size;
  }

  values(): string[] {
    return [...this.seen.keys()];
  }
}

const ROUTE_BITS = 8192;

/**
 * Every route a user has called, in 1 KiB: a Bloom filter of 8,192 bits and 3 hashes. A list capped at 256 routes
 * (what this replaced) stopped learning at the cap, so each route past it counted as new on every call, for good;
 * a least-recently-used list would instead forget routes a user cycles through. Here nothing is forgotten, and a
 * route never called is taken for known with a probability of about 0.1% after 300 routes, 3% after 1,000 (the
 * "new route mix" rule is then that much less sensitive, never more). Written by hand: a bit array and a hash,
 * where a library would bring serialisation and sizing helpers the detector does not need.
 */
export class RouteMemory {
  private readonly bits = new Uint32Array(ROUTE_BITS / 32);

  /** Remembers `route`; true if it was (probably) known before. */
  add(route: string): boolean {
    let known = true;
    for (const bit of bitsOf(route)) {
      const mask = 1 << (bit & 31);
      if ((this.bits[bit >>> 5]! & mask) === 0) {
        known = false;
        this.bits[bit >>> 5]! |= mask;
      }
    }
    return known;
  }

  /** Whether `route` was (probably) added before, without adding it. */
  has(route: string): boolean {
    return bitsOf(route).every((bit) => (this.bits[bit >>> 5]! & (1 << (bit & 31))) !== 0);
  }
}

/** A route's 3 bits of the 8,192: FNV-1a with two offset bases, combined as double hashing (Kirsch–Mitzenmacher). */
function bitsOf(route: string): [number, number, number] {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193;
  for (let i = 0; i < route.length; i++) {
    const unit = route.charCodeAt(i);
    h1 = Math.imul(h1 ^ unit, 0x01000193);
    h2 = Math.imul(h2 ^ unit, 0x5bd1e995);
  }
  h1 = mix(h1);
  h2 = mix(h2) | 1;
  const bit = (i: number) => ((h1 + Math.imul(i, h2)) >>> 0) % ROUTE_BITS;
  return [bit(0), bit(1), bit(2)];
}

/** MurmurHash3's 32-bit finalizer: spreads FNV's last bytes over every bit (routes differ mostly at their end). */
function mix(hash: number): number {
  let h = hash ^ (hash >>> 16);
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}
