import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { ProxyEvent } from '../pipeline';
import { UsageCollector } from '../aggregates/collector';
import { DEFAULT_RETENTION, capped, type UsageRetention } from '../aggregates/model';
import type { FailureOutcome } from '../errors';
import { guard } from '../store/guard';
import type { HashIncrement, LogEntry, Store } from '../../store/types';

/**
 * One proxied call, written after its response ended or was aborted: the pipeline's event, except that the
 * session id is kept only as a hash and the upstream URL only as the route template. Never a secret: keys
 * are fingerprints.
 */
export type CallRecord = Omit<ProxyEvent, 'sessionId' | 'target'> & {
  readonly type: 'call';
  readonly id?: string;
  readonly at: string;
  /** SHA-256 of the session id (first 16 hex digits): links calls of one sign-in without revealing the id. */
  readonly sessionIdHash: string | null;
};

/**
 * Administrative actions: keys, users' own keys, sessions; the anomaly detector's steps (lib/core/detect; actor
 * `detector`) and an admin's undo of one; connected accounts (lib/core/connect): a user connected or disconnected
 * one, or `keyward` found one needs reconnecting. Listed, so pages can offer them as filters.
 */
export const ADMIN_ACTIONS = [
  'key.add',
  'key.rotate',
  'key.rollback',
  'key.revoke',
  'user_key.put',
  'user_key.delete',
  'sessions.revoke',
  'detector.alert',
  'detector.throttle',
  'detector.reauth',
  'detector.revoke',
  'detector.undo',
  'connection.connect',
  'connection.disconnect',
  'connection.needs_reconnect',
] as const;

export type AdminAction = (typeof ADMIN_ACTIONS)[number];

/** An administrative change: who did what to which key or user. */
export interface AdminRecord {
  readonly type: 'admin';
  readonly id?: string;
  readonly at: string;
  readonly action: AdminAction;
  /** `local:ada`, `oidc:<sub>`, or `cli:<os user>` for the command line. */
  readonly actor: string;
  readonly upstream?: string;
  readonly fingerprint?: string;
  readonly rotationId?: string;
  readonly targetUser?: string;
  /** The detector's alert this action belongs to (GET /api/admin/alerts). */
  readonly alertId?: string;
  readonly outcome: string;
}

export type AuditRecord = CallRecord | AdminRecord;

export interface AuditFilter {
  readonly type?: AuditRecord['type'];
  readonly upstream?: string;
  readonly userId?: string;
  readonly action?: string;
  readonly outcome?: string;
  readonly fingerprint?: string;
  readonly sinceMs?: number;
  readonly untilMs?: number;
}

const STREAM = 'audit';
/** Entries read per store round trip while filtering. */
const PAGE = 500;

/** Calls are written in batches: at most this many records, or after this long. */
const BATCH_SIZE = 256;
const BATCH_DELAY_MS = 100;

/**
 * Records whose write failed (the store did not answer: a Redis failover, a restart) are kept in memory and
 * written again, oldest first, with the next batches, up to this many; past it the oldest are dropped (counted in
 * the log). 100,000 is about 400 full batches, some 45 MB of records (about 450 bytes each): 30 to 50 s of calls
 * at the fast lane's peak in the benchmark (2,000 to 3,400 a second), minutes at ordinary rates, which covers a
 * Redis failover (Sentinel's default is 30 s to notice a primary is down, then seconds to promote a replica).
 */
export const RETAINED_RECORDS_MAX = 100_000;
/**
 * Usage counters (store fields) of those batches, kept the same way (about 350 bytes each). Increments to one
 * field are summed, so these grow with the distinct (minute, upstream, route, key version, user) of the calls,
 * not with their number: a call of a new user or route in a new minute adds a few dozen.
 */
export const RETAINED_USAGE_FIELDS_MAX = 100_000;
/**
 * After a failed write, the next timed one waits this long, doubled after each further failure up to
 * RETRY_DELAY_MAX_MS, and is back to every batch once a write goes through. A store that cannot write (Redis
 * failing over, SQLite's file locked by another process) is not asked ten times a second: each failed write of
 * SQLite's waits for its lock on the event loop, stalling the whole process. Flushes that wait for their answer
 * (an admin action, a query, a stop) still try at once.
 */
const RETRY_DELAY_MIN_MS = 500;
const RETRY_DELAY_MAX_MS = 5_000;
/** Kept records and counters are written again in pieces of at most this many (one store round trip each). */
const RETRY_RECORDS_CHUNK = 4 * BATCH_SIZE;
const RETRY_FIELDS_CHUNK = 8_192;

/** Bounds of what is kept through an outage; the defaults above (lowered by tests). */
export interface RetainedLimits {
  readonly retainedRecords?: number;
  readonly retainedUsageFields?: number;
}

/**
 * Calls Keyward answered itself with an error (a refusal, or its own 5xx such as a credential that cannot be
 * opened: the record's `errorCode`) are recorded up to this many per minute and per instance for each user, and
 * as many for all the calls without a session together: such an answer costs its sender nothing, so a loop of
 * them (unauthenticated, or a user far over a rate limit) would otherwise grow the trail at its request rate. The
 * rest are counted in the usage aggregates as usual, and reported in one log line at the end of the minute.
 */
export const REFUSED_RECORDS_PER_MINUTE = 600;
/** Users (and "no session") whose refusals this instance counts at once; past this the counts start over. */
const REFUSED_SUBJECTS_MAX = 10_000;

/** The outcomes of a call Keyward answered with its own error, every one (lib/core/errors.ts `failureOutcome`). */
const ANSWERED_BY_KEYWARD: ReadonlySet<string> = new Set(
  Object.keys({ refused: true, upstream_error: true, unavailable: true } satisfies Record<FailureOutcome, true>),
);

/**
 * Whether Keyward answered this call itself with an error and charged nothing for it: the calls the trail records
 * only up to REFUSED_RECORDS_PER_MINUTE. Not a call the upstream answered, even if it ended with an error code (a
 * broken stream, a WebSocket closed for idling or a message too big), nor one charged to a budget (sent, then timed
 * out): a flood of free refusals must not hide those.
 */
function answeredByKeyward(event: ProxyEvent): boolean {
  return event.errorCode !== null && ANSWERED_BY_KEYWARD.has(event.outcome) && event.units === 0;
}

/** A log id as the stores make them, the audit trail's cursor (SQLite and memory: digits; Redis streams: `<ms>-<seq>`). */
export const AUDIT_CURSOR = /^[0-9]{1,20}(-[0-9]{1,20})?$/;

/** Whether `cursor` has the form of the cursors `store`'s log pages give (any other would be read as none). */
export function isLogCursor(store: Store, cursor: string): boolean {
  return (store.logCursor ?? AUDIT_CURSOR).test(cursor);
}

/**
 * The audit trail: every proxied call and every admin action, in the store, kept for the retention
 * period. Calls are queued when their response ends and written in batches (one SQLite transaction or one
 * Redis script per batch, within 100 ms), off the request's path: one write per call cost more CPU than the
 * rest of the proxy. A failed write is logged and its records and usage figures are kept in memory (bounded:
 * RETAINED_RECORDS_MAX) and written again with later batches once the store answers, timed writes backing off
 * meanwhile (RETRY_DELAY_MIN_MS): the calls already happened and cannot be undone. A write whose answer was lost
 * may have been applied, so a record can be written twice (at least once, never deduplicated). Admin actions and queries flush the queue first, so they are on record, in
 * order, before the caller is answered.
 */
export class AuditLog {
  /** Usage aggregates of the calls queued since the last batch, written with it (lib/core/aggregates). */
  private readonly usage = new UsageCollector();
  private pending: Array<{ value: string; at: number }> = [];
  private timer: NodeJS.Timeout | null = null;
  private writing: Promise<void> = Promise.resolve();
  /** A write that has not started yet: a flush asked for meanwhile joins it (it takes the queue when it starts). */
  private queued: Promise<void> | null = null;
  /** Settled once the batch the timer waits for is written (`written`); null: nobody waits for it. */
  private timedBatch: { readonly promise: Promise<void>; readonly resolve: () => void } | null = null;
  /** Records whose write failed, oldest first, to be written before the next batch; touched only by `write`. */
  private retained: Array<{ value: string; at: number }> = [];
  /** Usage increments whose write failed, by hash and field (summed), oldest first; touched only by `write`. */
  private retainedUsage = new Map<string, HashIncrement>();
  /** How many kept records and usage fields were dropped past their bound since the start. */
  private dropped = { records: 0, usageFields: 0 };
  private readonly maxRecords: number;
  private readonly maxUsageFields: number;
  /**
   * Refused calls recorded this minute, per user ('' for calls without a session): a fixed window per instance,
   * kept in process because the check runs for every refusal and must not cost a store command of its own.
   */
  private refused = { minute: 0, counts: new Map<string, number>(), suppressed: 0 };
  /** Back-off after failed writes (RETRY_DELAY_MIN_MS): the current delay (0: none), and no timed write before `until`. */
  private retry = { delayMs: 0, until: 0 };

  constructor(
    private readonly store: Store,
    private readonly retentionMs: number,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
    private readonly usageRetention: UsageRetention = DEFAULT_RETENTION,
    limits: RetainedLimits = {},
  ) {
    this.maxRecords = limits.retainedRecords ?? RETAINED_RECORDS_MAX;
    this.maxUsageFields = limits.retainedUsageFields ?? RETAINED_USAGE_FIELDS_MAX;
  }

  recordCall(event: ProxyEvent): void {
    const { sessionId, target, ...fields } = event;
    void target; // the route template says what was called; the URL is not kept
    const at = this.now();
    this.usage.add(event, at);
    if (!answeredByKeyward(event) || this.refusalRecorded(event.userId ?? '', at)) {
      const record: CallRecord = {
        type: 'call',
        at: new Date(at).toISOString(),
        ...fields,
        sessionIdHash: sessionId ? hashSessionId(sessionId) : null,
      };
      this.enqueue(record, at);
      // Backing off, a full batch waits for the retry as the rest do (the next write takes it, or keeps it).
      if (this.pending.length >= BATCH_SIZE && at >= this.retry.until) {
        this.flush().catch(() => {});
        return;
      }
    }
    // A refusal over the record limit is still counted in the usage figures: they go out within BATCH_DELAY_MS
    // too, whether or not a record does (Next's process cannot flush this process's figures for the dashboard).
    if (!this.timer) this.schedule(Math.max(BATCH_DELAY_MS, this.retry.until - at));
  }

  /** The timed write, in `delayMs`; unref'd unless `written()` waits for it. */
  private schedule(delayMs: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush().catch(() => {}), delayMs);
    if (!this.timedBatch) this.timer.unref();
  }

  /**
   * After each write: a failed one doubles the back-off and schedules the retry (so what is kept goes out once the
   * store answers, whether or not more calls come); one that went through ends the back-off.
   */
  private settle(failed: boolean): void {
    if (!failed) {
      this.retry = { delayMs: 0, until: 0 };
      return;
    }
    const delayMs = Math.min(Math.max(this.retry.delayMs * 2, RETRY_DELAY_MIN_MS), RETRY_DELAY_MAX_MS);
    this.retry = { delayMs, until: this.now() + delayMs };
    this.schedule(delayMs);
  }

  /**
   * Whether a call Keyward answered with an error, of `subject` (a user id, '' without a session), is still
   * within this minute's REFUSED_RECORDS_PER_MINUTE. How many were left out is logged once, when their minute
   * ends (by a timer, so a flood that stops is reported too).
   */
  private refusalRecorded(subject: string, at: number): boolean {
    const minute = Math.floor(at / 60_000);
    if (minute !== this.refused.minute) {
      this.reportSuppressed();
      this.refused = { minute, counts: new Map(), suppressed: 0 };
    }
    const counts = this.refused.counts;
    const count = counts.get(subject) ?? 0;
    if (count >= REFUSED_RECORDS_PER_MINUTE) {
      if (this.refused.suppressed++ === 0) {
        const report = setTimeout(() => this.reportSuppressed(), 60_000 - (at % 60_000));
        report.unref();
      }
      return false;
    }
    if (count === 0 && counts.size >= REFUSED_SUBJECTS_MAX) counts.clear();
    counts.set(subject, count + 1);
    return true;
  }

  /** Logs how many records the current window left out, once. */
  private reportSuppressed(): void {
    const { suppressed } = this.refused;
    if (suppressed === 0) return;
    this.refused.suppressed = 0;
    this.logger.warn(
      { suppressed, perMinute: REFUSED_RECORDS_PER_MINUTE },
      'audit: calls answered with an error over the per-minute record limit were counted in the usage figures but not recorded',
    );
  }

  /**
   * Resolves once every call recorded so far is written, or its write failed (the records are then kept in
   * memory, as for any failed write), without writing any sooner: it waits for the batch under way or the one
   * the timer waits for. That timer then keeps the process alive (it is unref'd otherwise), so a server that
   * awaits this before it exits (`after()` in lib/next/proxy-route.ts, which `next start` awaits on SIGTERM)
   * does not exit in the meantime. Never rejects. While the writer backs off after a failed write it resolves at
   * once, as a failed write does: the records are kept for the retry, which a stop must not wait seconds for (under
   * `next start` every call's `after()` waits here; the fast lane's stop flushes instead).
   */
  written(): Promise<void> {
    if (this.retry.until > this.now()) return Promise.resolve();
    if (this.timer) {
      this.timer.ref();
      if (!this.timedBatch) {
        let resolve!: () => void;
        const promise = new Promise<void>((settle) => (resolve = settle));
        this.timedBatch = { promise, resolve };
      }
      return this.timedBatch.promise;
    }
    // No timer: what was recorded went with the write under way, or is queued for the next (a full batch).
    return this.queued ? this.queued.catch(() => {}) : this.writing;
  }

  /** Admin actions are awaited: the caller reports success only once the action is on record. */
  async recordAdmin(entry: Omit<AdminRecord, 'type' | 'at' | 'id'>): Promise<void> {
    const at = this.now();
    this.enqueue({ type: 'admin', at: new Date(at).toISOString(), ...entry }, at);
    await this.flush();
  }

  /**
   * Writes every queued record, after the ones kept from failed writes; resolves once they are in the store
   * (rejects if the store refused them: they are then kept for the next flush). The batch's usage aggregates go
   * with it, and their failure is logged, not thrown: it delays figures, not records, and an admin action (a
   * detector step) that is on record must not be taken for one that failed.
   */
  flush(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    // Batches are written one after another, so the log keeps the order records were made in. A write not yet
    // started takes everything queued when it starts, so a flush meanwhile joins it: with a store that hangs,
    // flushes do not pile up, each holding a batch outside the bound on what is kept.
    const write = this.queued ?? this.startWrite();
    if (this.timedBatch) {
      // The write that takes the batch `written` waited for (it takes everything queued when it starts).
      const { resolve } = this.timedBatch;
      this.timedBatch = null;
      void this.writing.then(resolve);
    }
    return write;
  }

  private startWrite(): Promise<void> {
    const write = this.writing.then(() => {
      this.queued = null;
      return this.write();
    });
    this.queued = write;
    this.writing = write.catch(() => {});
    return write;
  }

  /** One write: the kept records, then the queue, and their usage aggregates at the same time (one more round trip). */
  private async write(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    const retried = this.retained.length;
    const records = retried > 0 ? this.retained.concat(batch) : batch;
    this.retained = [];
    const drained = this.usage.drain(this.usageRetention);
    const increments = this.retainedUsage.size > 0 ? [...mergeIncrements(this.retainedUsage, drained).values()] : drained;
    this.retainedUsage = new Map();
    if (records.length === 0 && increments.length === 0) return;
    const [log, usage] = await Promise.all([
      writeInChunks(records, RETRY_RECORDS_CHUNK, (chunk) => this.store.appendBatch(STREAM, chunk, this.retentionMs)),
      writeInChunks(increments, RETRY_FIELDS_CHUNK, (chunk) => this.store.incrementHashes(chunk)),
    ]);
    this.settle(log !== null || usage !== null);
    if (usage) {
      const { written, cause } = usage;
      const kept = mergeIncrements(new Map(), increments.slice(written));
      const dropped = dropOldest(kept, this.maxUsageFields);
      this.dropped.usageFields += dropped;
      this.retainedUsage = kept;
      this.logger.error(
        { err: message(cause), keptFields: kept.size, droppedFields: dropped, droppedFieldsTotal: this.dropped.usageFields },
        'usage aggregates write failed',
      );
    }
    if (log) {
      const { written, cause } = log;
      let kept = records.slice(written);
      const dropped = Math.max(kept.length - this.maxRecords, 0);
      if (dropped > 0) kept = kept.slice(dropped);
      this.dropped.records += dropped;
      this.retained = kept;
      // Counts only: records are scrubbed, but a log line is no place for them.
      this.logger.error({ err: message(cause), kept: kept.length, dropped, droppedTotal: this.dropped.records }, 'audit write failed');
      throw cause;
    }
    if (retried > 0) this.logger.info({ written: retried }, 'audit: records kept through a store outage written');
  }

  private enqueue(record: AuditRecord, at: number): void {
    this.pending.push({ value: JSON.stringify(record), at });
  }

  /** Whether `cursor` has the form of the cursors this trail's store gives (any other would be read as none). */
  isCursor(cursor: string): boolean {
    return isLogCursor(this.store, cursor);
  }

  /**
   * Matching records, newest first (or oldest first), at most `limit`, and a cursor to continue from.
   * Reads the store in pages and filters; at most `maxScan` entries are read per call, and none once `signal`
   * is aborted (what was found so far is answered, with the cursor to go on from).
   */
  async query(
    filter: AuditFilter,
    options: { limit: number; cursor?: string; order?: 'asc' | 'desc'; maxScan?: number; signal?: AbortSignal },
  ): Promise<{ records: AuditRecord[]; cursor: string | null }> {
    // What this instance recorded so far is written first, so a query sees it.
    await guard(() => this.flush());
    const order = options.order ?? 'desc';
    const maxScan = options.maxScan ?? 20_000;
    const records: AuditRecord[] = [];
    let cursor = options.cursor;
    let scanned = 0;
    for (;;) {
      const page: LogEntry[] = await guard(() =>
        this.store.readLog(STREAM, { sinceMs: filter.sinceMs, untilMs: filter.untilMs, cursor, limit: PAGE, order }),
      );
      for (const entry of page) {
        cursor = entry.id;
        scanned++;
        const record = parse(entry);
        if (record && matches(record, filter)) records.push(record);
        if (records.length >= options.limit) return { records, cursor: entry.id };
      }
      if (page.length < PAGE) return { records, cursor: null };
      if (scanned >= maxScan || options.signal?.aborted) return { records, cursor: cursor ?? null };
    }
  }
}

/** A write of `items` in pieces that failed: how many were written before it, and why. */
interface ChunkFailure {
  readonly written: number;
  readonly cause: unknown;
}

/**
 * Writes `items` in order, `size` at a time (a batch of the usual size in one piece); stops at the first piece
 * that fails and answers how far it got, or null when all were written.
 */
async function writeInChunks<T>(items: readonly T[], size: number, write: (chunk: readonly T[]) => Promise<void>): Promise<ChunkFailure | null> {
  for (let written = 0; written < items.length; written += size) {
    try {
      await write(items.length <= size ? items : items.slice(written, written + size));
    } catch (cause) {
      return { written, cause };
    }
  }
  return null;
}

/** Adds `increments` into `into` (by hash and field; a field's sum capped as the collector caps it). */
function mergeIncrements(into: Map<string, HashIncrement>, increments: readonly HashIncrement[]): Map<string, HashIncrement> {
  for (const increment of increments) {
    const id = `${increment.key}\n${increment.field}`;
    const held = into.get(id);
    into.set(id, held ? { ...held, by: capped(held.by + increment.by) } : increment);
  }
  return into;
}

/** Deletes the first (oldest) entries of `map` past `max`; returns how many. */
function dropOldest(map: Map<string, unknown>, max: number): number {
  let dropped = 0;
  for (const id of map.keys()) {
    if (map.size <= max) break;
    map.delete(id);
    dropped++;
  }
  return dropped;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : 'unknown';
}

export function hashSessionId(sessionId: string): string {
  let hash = sessionHashes.get(sessionId);
  if (hash === undefined) {
    hash = createHash('sha256').update(sessionId, 'utf8').digest('hex').slice(0, 16);
    // A session makes many calls: its hash is kept for the next ones (every call's record carries it).
    if (sessionHashes.size >= SESSION_HASHES) sessionHashes.clear();
    sessionHashes.set(sessionId, hash);
  }
  return hash;
}

/** The last sessions' hashes (cleared when full: a plain bound, not an LRU; a miss costs one SHA-256). */
const sessionHashes = new Map<string, string>();
const SESSION_HASHES = 4096;

function parse(entry: LogEntry): AuditRecord | null {
  try {
    return { ...(JSON.parse(entry.value) as AuditRecord), id: entry.id };
  } catch {
    return null;
  }
}

function matches(record: AuditRecord, filter: AuditFilter): boolean {
  if (filter.type && record.type !== filter.type) return false;
  if (filter.upstream && record.upstream !== filter.upstream) return false;
  if (filter.outcome && record.outcome !== filter.outcome) return false;
  if (filter.userId) {
    const users = record.type === 'call' ? [record.userId] : [record.actor, record.targetUser];
    if (!users.includes(filter.userId)) return false;
  }
  if (filter.action && (record.type !== 'admin' || record.action !== filter.action)) return false;
  if (filter.fingerprint && (record.type === 'call' ? record.keyFingerprint : record.fingerprint) !== filter.fingerprint) return false;
  return true;
}
