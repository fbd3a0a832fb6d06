import { KeywardError } from '../errors';
import { clientClosed } from '../forward/body';
import { Slots } from '../users/slots';

/** Calls of one user to one upstream that may wait for a slot; one more is refused at once. */
export const MAX_WAITING_CALLS = 256;

/**
 * Calls in progress per user and upstream, in this process: each upstream's connection pool is this process's
 * own (256 connections), so one user's slow or endless calls (long streams, an upstream that trickles) must not
 * take every connection and leave everyone else's calls waiting. A user's calls past their limit wait for one of
 * their own to end (a burst is smoothed, not refused), up to MAX_WAITING_CALLS and the route's `timeoutMs`.
 * Counted in memory, not in the store: what it protects is per process too. Each pair's `Slots` (the bounded
 * semaphore the password hashing uses) is dropped when its last call ends, so the map holds active pairs only.
 */
export class CallsInFlight {
  private readonly pairs = new Map<string, Slots>();

  /**
   * Resolves to the call's release (safe to call more than once) once it holds one of `limit` slots. Refused
   * with 429 `rate_limited` (Retry-After: 1) when MAX_WAITING_CALLS already wait or none was freed within
   * `waitMs`; a client that leaves while waiting gives its place back (400, "the client closed the request").
   */
  async hold(
    upstream: string,
    userId: string,
    limit: number,
    waitMs: number,
    signal: AbortSignal | null,
  ): Promise<() => void> {
    const key = `${upstream}\0${userId}`;
    let slots = this.pairs.get(key);
    if (!slots) this.pairs.set(key, (slots = new Slots(limit, MAX_WAITING_CALLS)));
    const taken = slots.tryAcquire() ?? (await this.wait(slots, limit, waitMs, signal));
    return () => {
      taken();
      const { active, waiting } = slots.load;
      if (active === 0 && waiting === 0 && this.pairs.get(key) === slots) this.pairs.delete(key);
    };
  }

  /** Calls of this user to this upstream holding a slot, and waiting for one, in this process. */
  load(upstream: string, userId: string): { active: number; waiting: number } {
    return this.pairs.get(`${upstream}\0${userId}`)?.load ?? { active: 0, waiting: 0 };
  }

  private async wait(slots: Slots, limit: number, waitMs: number, signal: AbortSignal | null): Promise<() => void> {
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), waitMs);
    try {
      const taken = await slots.acquire(signal ? AbortSignal.any([signal, deadline.signal]) : deadline.signal);
      if (taken) return taken;
    } catch (error) {
      // Aborted with an answer of its own (the server stopping: lib/core/ws/sockets.ts STOPPING).
      if (error instanceof KeywardError) throw error;
      if (!deadline.signal.aborted)
        throw clientClosed(error);
    } finally {
      clearTimeout(timer);
    }
    throw new KeywardError('rate_limited', {
      message: `You already have ${limit} calls to this API in progress; try again when one of them has finished.`,
      headers: { 'retry-after': '1' },
    });
  }
}
