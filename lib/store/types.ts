/**
 * What Keyward must remember across requests and instances: session revocations, per-user secrets, locks,
 * counters. Deliberately small so it maps onto Redis commands one to one and onto one SQLite table.
 * Every method rejects with StoreUnavailableError when the backend cannot answer; callers fail closed.
 */
export interface Store {
  readonly kind: 'memory' | 'sqlite' | 'redis';
  get(key: string): Promise<string | null>;
  /** Values for several keys in one round trip, in the same order (null where absent). */
  getMany(keys: readonly string[]): Promise<(string | null)[]>;
  /** Sets a value; `ttlMs` makes it expire (absent: kept until deleted). */
  set(key: string, value: string, ttlMs?: number): Promise<void>;
  /** Sets only if the key does not exist (atomic). True if this call set it. Used for locks and one-time use. */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  /**
   * Sets a whole number only if the key is absent or holds a smaller one (atomic; the keys it is used on only
   * ever hold whole numbers); the ttl is set with it. True if this call set it. "Revoked before" marks go through this, so an instance whose clock is behind never
   * lowers one (which would bring back the sessions it revoked).
   */
  raise(key: string, value: number, ttlMs: number): Promise<boolean>;
  delete(key: string): Promise<boolean>;
  /** Deletes only if the current value equals `value` (atomic): releasing a lock only its holder owns. */
  deleteIfEquals(key: string, value: string): Promise<boolean>;
  /** Replaces the value only if it still equals `expected` (atomic compare-and-set); keeps the ttl. True if replaced. */
  replaceIfEquals(key: string, expected: string, value: string): Promise<boolean>;
  /** Adds `by` to an integer counter (created at 0) and returns the new value; `ttlMs` is set when created. */
  increment(key: string, by: number, ttlMs?: number): Promise<number>;
  /**
   * Adds every `amount` to its counter only if every counter stays within its `limit`; otherwise adds
   * nothing (atomic across instances: one Lua script in Redis, one transaction in SQLite). Budgets and
   * quotas reserve through this, so concurrent requests can never overshoot. `ttlMs` is set on creation.
   */
  reserve(entries: readonly Reservation[]): Promise<ReserveResult>;
  /**
   * Appends to an ordered log (the audit trail), dropping entries older than `retentionMs` as it goes.
   * Returns the entry's id; ids order entries and serve as cursors.
   */
  append(stream: string, value: string, at: number, retentionMs: number): Promise<string>;
  /** Appends several entries in one round trip (one transaction in SQLite, one pipeline in Redis). */
  appendBatch(stream: string, entries: readonly { readonly value: string; readonly at: number }[], retentionMs: number): Promise<void>;
  /** Reads a log in order (`asc`, oldest first) or newest first, after a cursor, within a time window. */
  readLog(stream: string, query: LogQuery): Promise<LogEntry[]>;
  /**
   * The form of the log ids (cursors) this store makes: `readLog` reads any other cursor as none, so an API that
   * takes one from a client refuses it rather than start over unnoticed. Absent: any of the stores' forms.
   */
  readonly logCursor?: RegExp;
  /**
   * Adds each `by` to a field of a counter hash (fields start at 0), all in one round trip (one transaction in
   * SQLite, one pipeline of HINCRBY in Redis). Each hash expires at its `expiresAt` (absolute ms; every entry
   * naming a hash names the same time). Usage aggregates are written through this, once per audit batch.
   */
  incrementHashes(entries: readonly HashIncrement[]): Promise<void>;
  /**
   * Every field of each counter hash, in the same order ({} where absent or expired), in one round trip. With
   * `fields`, only those (the ones the hash has): a reader that needs a few rows of a large hash (one user's of
   * a bucket holding every user's) does not read the rest.
   */
  readHashes(keys: readonly string[], fields?: readonly string[]): Promise<Array<Record<string, number>>>;
  /** One field of a counter hash (0 where the field or the hash is absent or expired), without reading the rest. */
  readHashField(key: string, field: string): Promise<number>;
  /** Checks that the backend answers; rejects with StoreUnavailableError if not. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface Reservation {
  readonly key: string;
  readonly amount: number;
  readonly limit: number;
  readonly ttlMs: number;
}

export interface ReserveResult {
  /** Index of the first entry that would have gone over its limit, or -1 when all were added. */
  readonly refused: number;
  /** Each counter's value afterwards (unchanged ones when refused). */
  readonly values: readonly number[];
}

export interface HashIncrement {
  readonly key: string;
  readonly field: string;
  /** A safe integer (counters stay exact in Lua, SQLite and JS alike). */
  readonly by: number;
  /** When the whole hash expires (ms since the epoch). */
  readonly expiresAt: number;
}

/** Shared by the stores: whole increments and a real expiry time. */
export function assertHashIncrements(entries: readonly HashIncrement[]): void {
  for (const { by, expiresAt } of entries) {
    if (!Number.isSafeInteger(by) || !Number.isSafeInteger(expiresAt) || expiresAt <= 0) {
      throw new TypeError('incrementHashes takes whole increments and an absolute expiry time');
    }
  }
}

export interface LogQuery {
  readonly sinceMs?: number;
  readonly untilMs?: number;
  /** An id from an earlier read: continue after it (in the query's order). */
  readonly cursor?: string;
  readonly limit: number;
  readonly order: 'asc' | 'desc';
}

export interface LogEntry {
  readonly id: string;
  readonly at: number;
  readonly value: string;
}

/** Shared by the stores: amounts are whole units, so counters stay exact in Lua, SQLite and JS alike. */
export function assertReservations(entries: readonly Reservation[]): void {
  for (const { amount, limit, ttlMs } of entries) {
    if (!Number.isSafeInteger(amount) || amount < 0 || !Number.isSafeInteger(limit) || !Number.isSafeInteger(ttlMs) || ttlMs <= 0) {
      throw new TypeError('reserve takes whole, non-negative amounts and a positive ttl');
    }
  }
}

/** Shared by the stores: `raise` takes a safe integer and a positive ttl. */
export function assertRaise(value: number, ttlMs: number): void {
  if (!Number.isSafeInteger(value) || !Number.isSafeInteger(ttlMs) || ttlMs <= 0) {
    throw new TypeError('raise takes a safe integer and a positive ttl');
  }
}

export class StoreUnavailableError extends Error {
  override readonly name = 'StoreUnavailableError';
  constructor(
    /** `sqlite`, `redis`… */
    readonly kind: string,
    cause?: unknown,
  ) {
    // The cause (e.g. a Redis connection error) may name hosts; it is logged, never rendered.
    super(`The ${kind} store is unavailable.`, { cause });
  }
}
