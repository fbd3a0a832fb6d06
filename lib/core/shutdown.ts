/**
 * How a stop (SIGTERM, SIGINT) lets the proxied calls in progress end before it cuts them, in both doors: the
 * fast lane (server.ts) and the route handlers under `next start` (`cutCallsOnStop`). With the last audit batch
 * after it, the process is gone well within Docker's 10 s between SIGTERM and SIGKILL.
 */
export const SHUTDOWN_DRAIN_MS = 3_000;

/**
 * The proxied calls a process is serving. A stop waits for them to end, then cuts the rest, which records them as
 * aborted: otherwise a deploy would drop the records, and the budget settlements, of every stream still running
 * (a budget's hold is released when the call's record is made).
 */
export class ServingCalls {
  private count = 0;
  private waiters: Array<() => void> = [];
  /** How to cut each call that can be cut here (the route handlers'; the fast lane cuts its connections instead). */
  private readonly cuts = new Set<() => void>();
  private cutting = false;

  /**
   * Counts `call` until it settles. `cut`, when given, ends it at once (recorded as aborted): `cutAll` calls it,
   * and so does this, at once, for a call that starts after `cutAll`.
   */
  track(call: Promise<void>, cut?: () => void): void {
    this.count++;
    if (cut) {
      if (this.cutting) cut();
      else this.cuts.add(cut);
    }
    void call.finally(() => {
      if (cut) this.cuts.delete(cut);
      if (--this.count > 0) return;
      for (const resolve of this.waiters.splice(0)) resolve();
    });
  }

  /** Resolves once no tracked call is left (each one ended or was cut, as its promise says). */
  idle(): Promise<void> {
    return this.count === 0 ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Cuts every call tracked with a `cut`, and every one tracked from now on. */
  cutAll(): void {
    this.cutting = true;
    for (const cut of [...this.cuts]) cut();
  }
}

/**
 * Lets the calls in progress end for `drainMs`, then `cut`s the rest, and resolves once none is left. Nothing here
 * keeps the process alive: the server being stopped does, or the calls themselves.
 */
export async function drainThenCut(serving: ServingCalls, cut: () => void, drainMs = SHUTDOWN_DRAIN_MS): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const drained = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainMs).unref()));
  await Promise.race([serving.idle(), drained]);
  clearTimeout(timer);
  cut();
  await serving.idle();
}

const PROCESS_SERVING = Symbol.for('keyward.servingCalls');

/**
 * The proxied calls the route handlers of this process are serving, shared through globalThis as its metrics are
 * (lib/core/observe/metrics.ts): the route handlers' bundle tracks them, instrumentation.ts's (another bundle,
 * `keyward.register()`) cuts them on a stop. Only plain method calls cross bundles here (no `instanceof`).
 */
export function processServingCalls(): ServingCalls {
  const holder = globalThis as { [PROCESS_SERVING]?: ServingCalls };
  return (holder[PROCESS_SERVING] ??= new ServingCalls());
}

const LISTENING = Symbol.for('keyward.cutCallsOnStop');
/** How long, past the drain, the last records may take to be written before a process alone on its signal ends anyway. */
const STORE_GRACE_MS = 5_000;
const STOP_SIGNALS = ['SIGTERM', 'SIGINT'] as const;

/**
 * For the route handlers' own server (`next start`, `node .next/standalone/server.js`): on SIGTERM or SIGINT,
 * the proxied calls in progress get SHUTDOWN_DRAIN_MS to end, then the rest are cut (recorded as aborted), as
 * the fast lane does. Next's own handler of the signal closes its server, which waits for every open response
 * (a stream left open would hold it until SIGKILL), then awaits each call's `after()` (lib/next/proxy-route.ts:
 * its record written) and exits. This listener only cuts; where nothing else handles the signal (a server of
 * the app's own that does not), the signal's default is restored once the calls are on record, so the process
 * still ends. Once per process; `keyward.register()` calls it under Node.js, never on Vercel (no signal: the
 * platform holds each function until its `after()` work is done).
 */
export function cutCallsOnStop(serving: ServingCalls = processServingCalls(), drainMs = SHUTDOWN_DRAIN_MS): void {
  const holder = globalThis as { [LISTENING]?: true };
  if (holder[LISTENING]) return;
  holder[LISTENING] = true;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    // Whether anything else handles this signal, asked now: a `once` listener of another is still there if it
    // was added after this one (Node removes a `once` listener just before calling it).
    const alone = process.listenerCount(signal) === 0;
    const raise = () => {
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    if (stopping) {
      // A second signal (another Ctrl+C) where nothing else handles it ends the process at once, as it would have.
      if (alone) raise();
      return;
    }
    stopping = true;
    if (!alone) {
      void drainThenCut(serving, () => serving.cutAll(), drainMs);
      return;
    }
    // A store that does not answer must not keep the process from ending: the records it was given wait in
    // memory (lib/core/audit/audit.ts) and go with it.
    setTimeout(raise, drainMs + STORE_GRACE_MS).unref();
    void drainThenCut(serving, () => serving.cutAll(), drainMs).then(raise);
  };
  for (const signal of STOP_SIGNALS) process.once(signal, onSignal);
}
