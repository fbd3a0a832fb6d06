import { Dispatcher } from 'undici';

/** The code of the error a call gets when it waited `headersTimeout` for a free upstream connection. */
export const QUEUE_TIMEOUT = 'KEYWARD_UPSTREAM_QUEUE_TIMEOUT';

export class QueueTimeoutError extends Error {
  override readonly name = 'QueueTimeoutError';
  readonly code = QUEUE_TIMEOUT;
  constructor() {
    super('no connection to the upstream came free within the timeout');
  }
}

/**
 * Calls that may wait for a connection to one origin, in this process. A call that timed out (or whose client left)
 * stays in undici's queue, body and all, until a connection frees and drops it unsent: undici cannot take a request
 * out of its queue. Against an origin whose every connection stays busy, calls would pile up without end; past
 * this many, a call is refused at once instead of queued.
 */
export const MAX_WAITING_PER_ORIGIN = 1024;

/**
 * Gives a call waiting for a free pooled connection the same deadline as its answer (`headersTimeout`), and bounds
 * how many may wait for one origin (`MAX_WAITING_PER_ORIGIN`).
 *
 * undici starts `headersTimeout` only once a request is written to a connection. A request that waits in the
 * pool's queue (every connection to that origin busy: 256 long streams) had no deadline at all, and aborting its
 * signal takes effect only once it reaches a connection, so the caller waited for as long as the busiest
 * connection did. undici has no option for this; this wrapper arms one timer per call from dispatch until undici
 * starts the request on a connection. When it fires, the call fails with `QueueTimeoutError` (nothing was sent),
 * and the request is dropped unsent when it reaches a connection later. Every other callback passes straight
 * through (the legacy handler interface, which undici's request() uses, so nothing is converted on the way).
 */
export class QueueDeadlineDispatcher extends Dispatcher {
  /** Per origin: calls dispatched and not yet on a connection (or failed), timed-out ones included. */
  private readonly waiting = new Map<string, number>();

  constructor(
    private readonly inner: Dispatcher,
    private readonly maxWaiting = MAX_WAITING_PER_ORIGIN,
  ) {
    super();
  }

  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const ms = options.headersTimeout;
    if (!ms || !(ms > 0)) return this.inner.dispatch(options, handler);
    // request() hands its options on to dispatch, the signal among them (undici's types leave it out here).
    const given = (options as { signal?: unknown }).signal;
    const signal = given instanceof AbortSignal ? given : null;
    if (signal?.aborted) {
      // The client left before the call got here (during the session check, a refresh): it waits for nothing.
      (handler as LegacyHandler).onError?.(signal.reason instanceof Error ? signal.reason : new QueueTimeoutError());
      return true;
    }
    const origin = String(options.origin);
    const count = this.waiting.get(origin) ?? 0;
    if (count >= this.maxWaiting) {
      // undici's handler destroys the request body and calls back on a microtask: nothing is sent or kept.
      (handler as LegacyHandler).onError?.(new QueueTimeoutError());
      return true;
    }
    this.waiting.set(origin, count + 1);
    const deadline = new QueueDeadline(handler as LegacyHandler, ms, signal, () => {
      const now = (this.waiting.get(origin) ?? 1) - 1;
      if (now > 0) this.waiting.set(origin, now);
      else this.waiting.delete(origin);
    });
    try {
      return this.inner.dispatch(options, deadline as Dispatcher.DispatchHandler);
    } catch (error) {
      deadline.leave(); // refused before it was queued (a closed dispatcher, bad options)
      deadline.settle();
      throw error;
    }
  }

  /** Calls waiting for a connection to `origin` (tests). */
  waitingFor(origin: string): number {
    return this.waiting.get(origin) ?? 0;
  }

  override close(): Promise<void>;
  override close(callback: () => void): void;
  override close(...args: [] | [() => void]): Promise<void> | void {
    return (this.inner.close as (...a: unknown[]) => Promise<void> | void).apply(this.inner, args);
  }

  override destroy(): Promise<void>;
  override destroy(error: Error | null): Promise<void>;
  override destroy(callback: () => void): void;
  override destroy(error: Error | null, callback: () => void): void;
  override destroy(...args: [] | [Error | null] | [() => void] | [Error | null, () => void]): Promise<void> | void {
    return (this.inner.destroy as (...a: unknown[]) => Promise<void> | void).apply(this.inner, args);
  }
}

/** undici's legacy (pre-7) handler interface: what `Dispatcher#request` hands to dispatch. */
interface LegacyHandler {
  onConnect?(abort: (reason?: Error) => void, context?: object): void;
  onError?(error: Error): void;
  onUpgrade?(statusCode: number, headers: Buffer[] | string[] | null, socket: unknown): void;
  onResponseStarted?(): void;
  onHeaders?(statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean;
  onData?(chunk: Buffer): boolean;
  onComplete?(trailers: string[] | null): void;
  onBodySent?(chunk: unknown): void;
  onRequestSent?(): void;
}

class QueueDeadline implements LegacyHandler {
  private timer: NodeJS.Timeout | null;
  private expired = false;
  private readonly onAbort = () => this.expire(this.signal?.reason);

  constructor(
    private readonly handler: LegacyHandler,
    ms: number,
    /** The caller's: aborted while the call waits (its client left), the call ends then, as at the deadline. */
    private readonly signal: AbortSignal | null,
    /** Called once, when the call leaves the queue: on a connection, or failed (undici calls one or the other). */
    private left: (() => void) | null,
  ) {
    this.timer = setTimeout(() => this.expire(), ms);
    this.timer.unref();
    // undici's own handler acts on an abort only once the request is on a connection (onConnect).
    signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  /** The call left the queue: counted once, however many of onConnect, onError and a refused dispatch say so. */
  leave() {
    this.left?.();
    this.left = null;
  }

  /** The deadline passed (a QueueTimeoutError), or the caller aborted (its reason, as undici would give it). */
  private expire(reason?: unknown) {
    this.settle();
    this.expired = true;
    this.handler.onError?.(reason instanceof Error ? reason : new QueueTimeoutError());
  }

  /** Disarms the deadline and stops listening to the caller's signal. */
  settle() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.signal?.removeEventListener('abort', this.onAbort);
  }

  onConnect(abort: (reason?: Error) => void, context?: object) {
    this.leave();
    if (this.expired) return abort(new QueueTimeoutError()); // the caller has its answer: never sent
    this.settle();
    return this.handler.onConnect?.(abort, context);
  }

  onError(error: Error) {
    this.leave();
    this.settle();
    if (this.expired) return; // the abort above, or a failure after the caller was answered
    return this.handler.onError?.(error);
  }

  onUpgrade(statusCode: number, headers: Buffer[] | string[] | null, socket: unknown) {
    return this.handler.onUpgrade?.(statusCode, headers, socket);
  }

  onResponseStarted() {
    return this.handler.onResponseStarted?.();
  }

  onHeaders(statusCode: number, headers: Buffer[], resume: () => void, statusText: string) {
    return this.handler.onHeaders?.(statusCode, headers, resume, statusText) ?? true;
  }

  onData(chunk: Buffer) {
    return this.handler.onData?.(chunk) ?? true;
  }

  onComplete(trailers: string[] | null) {
    return this.handler.onComplete?.(trailers);
  }

  onBodySent(chunk: unknown) {
    return this.handler.onBodySent?.(chunk);
  }

  onRequestSent() {
    return this.handler.onRequestSent?.();
  }
}
