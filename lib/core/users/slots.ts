/**
 * A counting semaphore with a bounded wait queue: at most `concurrency` holders, at most `maxWaiting`
 * callers waiting; anyone beyond that is refused at once (null) instead of queuing without end.
 *
 * Why not a library: p-limit and p-queue queue without bound (a caller would have to read `pendingCount`
 * first, racing other callers) and neither is a dependency here; async-sema has no bound on its waiters
 * either. Refusing at a fixed queue length and dropping a waiter whose client went away is the whole job,
 * and that is this class.
 */
export class Slots {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(
    readonly concurrency: number,
    readonly maxWaiting: number,
  ) {}

  /**
   * Resolves to a release function once a slot is held; null at once when the queue is full, unless `wait` is
   * set (work no client can trigger, e.g. hashing a new password: it waits its turn instead of failing).
   */
  async acquire(signal?: AbortSignal, wait = false): Promise<(() => void) | null> {
    signal?.throwIfAborted();
    const free = this.tryAcquire();
    if (free) return free;
    if (!wait && this.waiting.length >= this.maxWaiting) return null;
    await new Promise<void>((resolve, reject) => {
      const wake = () => {
        signal?.removeEventListener('abort', abandon);
        resolve();
      };
      // The caller left (client disconnected): give its place in the queue back.
      const abandon = () => {
        const index = this.waiting.indexOf(wake);
        if (index >= 0) this.waiting.splice(index, 1);
        reject(signal!.reason);
      };
      this.waiting.push(wake);
      signal?.addEventListener('abort', abandon, { once: true });
    });
    return this.releaser();
  }

  /** A slot's release function if one is free right now, else null (nothing waits). */
  tryAcquire(): (() => void) | null {
    if (this.active >= this.concurrency) return null;
    this.active++;
    return this.releaser();
  }

  /** Holders and waiters right now (for tests and metrics). */
  get load(): { active: number; waiting: number } {
    return { active: this.active, waiting: this.waiting.length };
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      // Hand the slot straight to the next waiter (active stays the same), or free it.
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    };
  }
}
