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
