import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { assertHashIncrements, assertRaise, assertReservations, StoreUnavailableError, type HashIncrement, type LogEntry, type LogQuery, type Reservation, type ReserveResult, type Store } from './types';

/** getMany's largest count with a prepared `IN (?, …)` list of its own; more keys take one JSON-list statement. */
const LISTED_KEYS = 16;

/**
 * How long a write waits for another connection's write lock. node:sqlite waits synchronously, on the event loop, so
 * the whole process (pages, streams, every other call) waits with it: the wait must stay short. Keyward's own writes
 * are single statements or small transactions of a few milliseconds at most (deletes go DELETE_CHUNK rows at a
 * time), so processes sharing the file queue
 * behind each other for a few milliseconds; the longest ordinary hold is a WAL checkpoint at the end of a commit
 * (the WAL copied back and fsynced after 1,000 pages, tens of milliseconds on a slow disk). 200 ms absorbs that
 * several times over; a lock held longer than that is not contention but someone else's long transaction (an
 * operator's `BEGIN IMMEDIATE`, a VACUUM), and the write is refused (503 `store_unavailable`) rather than waited for.
 */
export const BUSY_TIMEOUT_MS = 200;
/**
 * After a write waited BUSY_TIMEOUT_MS and found the file still locked, writes for this long wait at most
 * LOCKED_WAIT_MS: enough for another process's ordinary sub-millisecond write, so only the long lock is refused,
 * while a process whose every write waited BUSY_TIMEOUT_MS would stall for it on each. A write that gets through
 * ends the window early; at most one write in this long waits BUSY_TIMEOUT_MS, a tenth of the process's time.
 */
export const LOCKED_NO_WAIT_MS = 2_000;
export const LOCKED_WAIT_MS = 10;

/**
 * Rows one delete of expired or aged-out rows removes at most: a few milliseconds of holding the write lock. One
 * delete of everything could hold it for most of a second (200,000 aged-out records after a retention change or
 * a long stop), past BUSY_TIMEOUT_MS, so another process sharing the file would refuse its writes meanwhile. The
 * audit trail is trimmed by a chunk with each batch written, expired rows by up to PURGE_CHUNKS_MAX chunks a minute;
 * expired rows not yet removed read as absent; aged-out records not yet trimmed (a backlog of 1,000 a batch) are
 * still listed by an audit query with no start time.
 */
const DELETE_CHUNK = 1_000;
const PURGE_CHUNKS_MAX = 100;

/** SQLITE_BUSY (any extended code: https://www.sqlite.org/rescode.html#busy): another connection holds the lock. */
function isBusy(error: unknown): boolean {
  const code = (error as { errcode?: unknown } | null)?.errcode;
  return typeof code === 'number' && (code & 0xff) === 5;
}

/**
 * The embedded default: one SQLite file through node:sqlite (no server, survives restarts). Several
 * processes on one host may share the file (WAL, busy timeout); every operation is one SQL statement, so
 * each is atomic. Expired rows are treated as absent and purged periodically.
 *
 * In WAL mode reads never wait for a writer, so a file another process keeps locked for writing (an operator's
 * `sqlite3` session, a VACUUM) still serves every read; writes are refused (StoreUnavailableError) after a short
 * wait (BUSY_TIMEOUT_MS), or a shorter one while the lock is known to be held (LOCKED_WAIT_MS).
 */
export class SqliteStore implements Store {
  readonly logCursor = /^\d{1,18}$/;
  readonly kind = 'sqlite' as const;
  private readonly db: DatabaseSync;
  private readonly statements: Record<string, StatementSync>;
  private readonly purgeTimer: NodeJS.Timeout;

  constructor(
    path: string,
    private readonly now: () => number = Date.now,
  ) {
    try {
      if (path !== ':memory:') {
        mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
        // Created private (0600) whatever the umask or the folder: it holds session ids, sealed secrets and the
        // audit trail. SQLite gives the -wal and -shm files the database file's mode. An existing file is left as
        // its owner set it.
        closeSync(openSync(path, 'a', 0o600));
      }
      this.db = new DatabaseSync(path);
      this.db.exec(`
        PRAGMA journal_mode = WAL;
        PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS};
        PRAGMA synchronous = NORMAL;
        CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at INTEGER) STRICT;
        CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires_at) WHERE expires_at IS NOT NULL;
        CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, at INTEGER NOT NULL, value TEXT NOT NULL) STRICT;
        CREATE INDEX IF NOT EXISTS log_stream_at ON log (stream, at);
        CREATE TABLE IF NOT EXISTS hash (key TEXT NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL, expires_at INTEGER NOT NULL,
          PRIMARY KEY (key, field)) STRICT, WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS hash_expires ON hash (expires_at);
      `);
    } catch (error) {
      throw new StoreUnavailableError('sqlite', error);
    }
    const live = '(expires_at IS NULL OR expires_at > :now)';
    this.statements = {
      get: this.db.prepare(`SELECT value FROM kv WHERE key = :key AND ${live}`),
      set: this.db.prepare(
        'INSERT INTO kv (key, value, expires_at) VALUES (:key, :value, :exp) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at',
      ),
      setIfAbsent: this.db.prepare(
        `INSERT INTO kv (key, value, expires_at) VALUES (:key, :value, :exp) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at WHERE NOT (kv.expires_at IS NULL OR kv.expires_at > :now)`,
      ),
      raise: this.db.prepare(
        `INSERT INTO kv (key, value, expires_at) VALUES (:key, :value, :exp) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at WHERE NOT (kv.expires_at IS NULL OR kv.expires_at > :now) OR CAST(kv.value AS INTEGER) < :number`,
      ),
      delete: this.db.prepare(`DELETE FROM kv WHERE key = :key AND ${live}`),
      deleteIfEquals: this.db.prepare(`DELETE FROM kv WHERE key = :key AND value = :value AND ${live}`),
      replaceIfEquals: this.db.prepare(`UPDATE kv SET value = :value WHERE key = :key AND value = :expected AND ${live}`),
      increment: this.db.prepare(`
        INSERT INTO kv (key, value, expires_at) VALUES (:key, CAST(:by AS TEXT), :exp)
        ON CONFLICT (key) DO UPDATE SET
          value = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= :now THEN CAST(:by AS TEXT)
                       ELSE CAST(CAST(kv.value AS INTEGER) + :by AS TEXT) END,
          expires_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= :now THEN :exp ELSE kv.expires_at END
        RETURNING value`),
      purge: this.db.prepare(
        'DELETE FROM kv WHERE rowid IN (SELECT rowid FROM kv WHERE expires_at IS NOT NULL AND expires_at <= :now LIMIT :limit)',
      ),
      // An expired hash starts again from 0, as a Redis key that expired would.
      incrementHash: this.db.prepare(`
        INSERT INTO hash (key, field, value, expires_at) VALUES (:key, :field, :by, :exp)
        ON CONFLICT (key, field) DO UPDATE SET
          value = CASE WHEN hash.expires_at <= :now THEN excluded.value ELSE hash.value + excluded.value END,
          expires_at = excluded.expires_at`),
      readHash: this.db.prepare('SELECT field, value FROM hash WHERE key = :key AND expires_at > :now'),
      readHashField: this.db.prepare('SELECT value FROM hash WHERE key = :key AND field = :field AND expires_at > :now'),
      getManyListed: this.db.prepare(
        `SELECT key, value FROM kv WHERE ${live} AND key IN (SELECT value FROM json_each(:keys))`,
      ),
      readHashFields: this.db.prepare(
        'SELECT field, value FROM hash WHERE key = :key AND expires_at > :now AND field IN (SELECT value FROM json_each(:fields))',
      ),
      purgeHashes: this.db.prepare('DELETE FROM hash WHERE (key, field) IN (SELECT key, field FROM hash WHERE expires_at <= :now LIMIT :limit)'),
      append: this.db.prepare('INSERT INTO log (stream, at, value) VALUES (:stream, :at, :value) RETURNING id'),
      trimLog: this.db.prepare('DELETE FROM log WHERE id IN (SELECT id FROM log WHERE stream = :stream AND at < :cutoff LIMIT :limit)'),
      readAsc: this.db.prepare(
        'SELECT id, at, value FROM log WHERE stream = :stream AND at >= :since AND at <= :until AND id > :cursor ORDER BY id ASC LIMIT :limit',
      ),
      readDesc: this.db.prepare(
        'SELECT id, at, value FROM log WHERE stream = :stream AND at >= :since AND at <= :until AND id < :cursor ORDER BY id DESC LIMIT :limit',
      ),
    };
    this.purgeTimer = setInterval(() => {
      try {
        // Each chunk its own statement: the lock is let go between them (see DELETE_CHUNK).
        for (const statement of [this.statements.purge!, this.statements.purgeHashes!]) {
          for (let chunk = 0; chunk < PURGE_CHUNKS_MAX; chunk++) {
            if (Number(this.write(() => statement.run({ now: this.now(), limit: DELETE_CHUNK })).changes) < DELETE_CHUNK) break;
          }
        }
      } catch {
        // The file is locked or unwritable: expired rows read as absent anyway, and the next pass purges them.
      }
    }, 60_000);
    this.purgeTimer.unref();
  }

  private run<T>(operation: () => T): T {
    try {
      return operation();
    } catch (error) {
      throw new StoreUnavailableError('sqlite', error);
    }
  }

  /** Until when (performance.now()) writes wait only LOCKED_WAIT_MS for the lock: see LOCKED_NO_WAIT_MS. */
  private noWaitUntil = 0;

  /** A write: waits at most BUSY_TIMEOUT_MS for another connection's lock, or LOCKED_WAIT_MS just after one was held that long. */
  private write<T>(operation: () => T): T {
    const wait = performance.now() >= this.noWaitUntil;
    let lowered = false;
    try {
      if (!wait) {
        this.db.exec(`PRAGMA busy_timeout = ${LOCKED_WAIT_MS}`);
        lowered = true;
      }
      const result = operation();
      this.noWaitUntil = 0;
      return result;
    } catch (error) {
      if (wait && isBusy(error)) this.noWaitUntil = performance.now() + LOCKED_NO_WAIT_MS;
      throw new StoreUnavailableError('sqlite', error);
    } finally {
      if (lowered) this.db.exec(`PRAGMA busy_timeout = ${BUSY_TIMEOUT_MS}`);
    }
  }

  private expiry(ttlMs?: number): number | null {
    return ttlMs === undefined ? null : this.now() + ttlMs;
  }

  async get(key: string) {
    const row = this.run(() => this.statements.get!.get({ key, now: this.now() })) as { value: string } | undefined;
    return row?.value ?? null;
  }

  /** One statement for all keys (a proxied call reads 3 per request: one statement each cost 3x the CPU). */
  async getMany(keys: readonly string[]): Promise<(string | null)[]> {
    if (keys.length === 0) return [];
    if (keys.length === 1) return [await this.get(keys[0]!)];
    const rows = this.run(() =>
      keys.length <= LISTED_KEYS
        ? this.getManyStatement(keys.length).all(this.now(), ...keys)
        : this.statements.getManyListed!.all({ now: this.now(), keys: JSON.stringify(keys) }),
    ) as Array<{ key: string; value: string }>;
    const found = new Map(rows.map((row) => [row.key, row.value]));
    return keys.map((key) => found.get(key) ?? null);
  }

  private readonly getManyStatements = new Map<number, StatementSync>();

  /**
   * `SELECT … WHERE key IN (?, ?, …)`, prepared once per number of keys up to LISTED_KEYS (the call's own reads use
   * a handful of these sizes); more keys go through one statement over a JSON list, so a count a request chooses
   * (the WebSocket tickets a refused upgrade carries) never prepares a statement of its own.
   */
  private getManyStatement(count: number): StatementSync {
    let statement = this.getManyStatements.get(count);
    if (!statement) {
      const marks = Array.from({ length: count }, () => '?').join(', ');
      statement = this.run(() =>
        this.db.prepare(`SELECT key, value FROM kv WHERE (expires_at IS NULL OR expires_at > ?) AND key IN (${marks})`),
      );
      if (this.getManyStatements.size < 64) this.getManyStatements.set(count, statement);
    }
    return statement;
  }

  async set(key: string, value: string, ttlMs?: number) {
    this.write(() => this.statements.set!.run({ key, value, exp: this.expiry(ttlMs) }));
  }

  async setIfAbsent(key: string, value: string, ttlMs: number) {
    const result = this.write(() => this.statements.setIfAbsent!.run({ key, value, exp: this.expiry(ttlMs), now: this.now() }));
    return Number(result.changes) === 1;
  }

  async raise(key: string, value: number, ttlMs: number) {
    assertRaise(value, ttlMs);
    const bound = { key, value: String(value), number: BigInt(value), exp: this.expiry(ttlMs), now: this.now() };
    return Number(this.write(() => this.statements.raise!.run(bound)).changes) === 1;
  }

  async delete(key: string) {
    return Number(this.write(() => this.statements.delete!.run({ key, now: this.now() })).changes) === 1;
  }

  async deleteIfEquals(key: string, value: string) {
    return Number(this.write(() => this.statements.deleteIfEquals!.run({ key, value, now: this.now() })).changes) === 1;
  }

  async replaceIfEquals(key: string, expected: string, value: string) {
    const result = this.write(() => this.statements.replaceIfEquals!.run({ key, expected, value, now: this.now() }));
    return Number(result.changes) === 1;
  }

  async increment(key: string, by: number, ttlMs?: number) {
    if (!Number.isSafeInteger(by)) throw new TypeError('increment takes a safe integer');
    // node:sqlite binds JS numbers as REAL; a BigInt binds as INTEGER, so the counter stays "100", not "100.0".
    const row = this.write(() => this.statements.increment!.get({ key, by: BigInt(by), exp: this.expiry(ttlMs), now: this.now() })) as {
      value: string;
    };
    return Number(row.value);
  }

  async reserve(entries: readonly Reservation[]): Promise<ReserveResult> {
    assertReservations(entries);
    // BEGIN IMMEDIATE takes the write lock first, so another process sharing the file cannot interleave.
    return this.write(() => {
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const now = this.now();
        const values = entries.map(({ key }) => Number((this.statements.get!.get({ key, now }) as { value: string } | undefined)?.value ?? 0));
        const refused = entries.findIndex(({ amount, limit }, index) => amount > 0 && values[index]! + amount > limit);
        if (refused === -1) {
          entries.forEach(({ key, amount, ttlMs }, index) => {
            const row = this.statements.increment!.get({ key, by: BigInt(amount), exp: now + ttlMs, now }) as { value: string };
            values[index] = Number(row.value);
          });
        }
        this.db.exec('COMMIT');
        return { refused, values };
      } catch (error) {
        if (this.db.isTransaction) this.db.exec('ROLLBACK');
        throw error;
      }
    });
  }

  private appends = 0;

  async append(stream: string, value: string, at: number, retentionMs: number) {
    return this.write(() => {
      // Trimming on every 100th append keeps the table bounded without a delete per request.
      if (this.appends++ % 100 === 0) this.statements.trimLog!.run({ stream, cutoff: this.now() - retentionMs, limit: DELETE_CHUNK });
      const row = this.statements.append!.get({ stream, at, value }) as { id: number | bigint };
      return String(row.id);
    });
  }

  async appendBatch(stream: string, entries: readonly { readonly value: string; readonly at: number }[], retentionMs: number) {
    if (entries.length === 0) return;
    this.write(() => {
      // One write transaction for the batch: a commit per entry would cost a WAL write each.
      this.db.exec('BEGIN IMMEDIATE');
      try {
        this.statements.trimLog!.run({ stream, cutoff: this.now() - retentionMs, limit: DELETE_CHUNK });
        for (const { value, at } of entries) this.statements.append!.get({ stream, at, value });
        this.db.exec('COMMIT');
      } catch (error) {
        if (this.db.isTransaction) this.db.exec('ROLLBACK');
        throw error;
      }
    });
  }

  async readLog(stream: string, { sinceMs, untilMs, cursor, limit, order }: LogQuery): Promise<LogEntry[]> {
    const statement = order === 'asc' ? this.statements.readAsc! : this.statements.readDesc!;
    const after = cursor === undefined || !this.logCursor.test(cursor) ? (order === 'asc' ? 0n : 2n ** 62n) : BigInt(cursor);
    const rows = this.run(() =>
      statement.all({
        stream,
        since: Math.max(sinceMs ?? 0, 0),
        until: Math.min(untilMs ?? Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER),
        cursor: after,
        limit,
      }),
    ) as Array<{ id: number | bigint; at: number | bigint; value: string }>;
    return rows.map((row) => ({ id: String(row.id), at: Number(row.at), value: row.value }));
  }

  async incrementHashes(entries: readonly HashIncrement[]) {
    assertHashIncrements(entries);
    if (entries.length === 0) return;
    this.write(() => {
      // One write transaction (one WAL commit) per batch of upserts, as appendBatch.
      this.db.exec('BEGIN IMMEDIATE');
      try {
        const now = this.now();
        for (const { key, field, by, expiresAt } of entries) {
          // BigInt binds as INTEGER (a JS number binds as REAL).
          this.statements.incrementHash!.run({ key, field, by: BigInt(by), exp: expiresAt, now });
        }
        this.db.exec('COMMIT');
      } catch (error) {
        if (this.db.isTransaction) this.db.exec('ROLLBACK');
        throw error;
      }
    });
  }

  async readHashes(keys: readonly string[], fields?: readonly string[]) {
    const now = this.now();
    const only = fields && JSON.stringify(fields);
    return this.run(() =>
      keys.map((key) => {
        const rows = (only === undefined ? this.statements.readHash!.all({ key, now }) : this.statements.readHashFields!.all({ key, now, fields: only })) as Array<{
          field: string;
          value: number | bigint;
        }>;
        return Object.fromEntries(rows.map((row) => [row.field, Number(row.value)]));
      }),
    );
  }

  async readHashField(key: string, field: string) {
    const row = this.run(() => this.statements.readHashField!.get({ key, field, now: this.now() })) as
      | { value: number | bigint }
      | undefined;
    return row ? Number(row.value) : 0;
  }

  async ping() {
    this.run(() => this.db.prepare('SELECT 1').get());
  }

  async close() {
    clearInterval(this.purgeTimer);
    if (this.db.isOpen) this.db.close();
  }
}
