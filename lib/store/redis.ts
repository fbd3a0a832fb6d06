import { Redis, type RedisOptions } from 'ioredis';
import { assertReservations, StoreUnavailableError, type LogEntry, type LogQuery, type Reservation, type ReserveResult, type Store } from './types';

const CONNECT_TIMEOUT_MS = 2_000;

/** How far an entry's `at` (the writer's clock) may lie from its stream id (Redis's clock) and still be found by time. */
const LOG_SKEW_MS = 5 * 60_000;

const DELETE_IF_EQUALS = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;
const REPLACE_IF_EQUALS = `if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1 else return 0 end`;
const INCREMENT = `local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v`;

// All counters are read, then either all are incremented or none: one script, so atomic across instances.
// ARGV holds amount, limit, ttl per key. Returns {refused index (1-based, 0 = none), values...}.
const RESERVE = `local values = {}
local refused = 0
for i = 1, #KEYS do
  values[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  local amount = tonumber(ARGV[i * 3 - 2])
  if refused == 0 and amount > 0 and values[i] + amount > tonumber(ARGV[i * 3 - 1]) then refused = i end
end
if refused == 0 then
  for i = 1, #KEYS do
    values[i] = redis.call('INCRBY', KEYS[i], ARGV[i * 3 - 2])
    if redis.call('PTTL', KEYS[i]) == -1 then redis.call('PEXPIRE', KEYS[i], ARGV[i * 3]) end
  end
end
table.insert(values, 1, refused)
return values`;

/**
 * Redis (REDIS_URL) for several instances or Vercel. Commands are not queued while disconnected and time
 * out quickly, so an outage surfaces at once as StoreUnavailableError (callers fail closed) and ioredis
 * reconnects in the background, so Keyward recovers by itself when Redis returns.
 */
export class RedisStore implements Store {
  readonly kind = 'redis' as const;
  private readonly redis: Redis;
  /** Settles once the first connection is ready, or once the connect timeout passed without one. */
  private readonly firstConnection: Promise<void>;
  private connectedOnce = false;

  constructor(url: string, options: { prefix?: string; commandTimeoutMs?: number } = {}) {
    const redisOptions: RedisOptions = {
      keyPrefix: options.prefix ?? 'keyward:',
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      commandTimeout: options.commandTimeoutMs ?? 2_000,
      connectTimeout: CONNECT_TIMEOUT_MS,
      retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
      lazyConnect: false,
    };
    this.redis = new Redis(url, redisOptions);
    // Connection errors are reported through commands (StoreUnavailableError); without a listener ioredis
    // would print each reconnect attempt, possibly with the URL's password.
    this.redis.on('error', () => {});
    this.firstConnection = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, CONNECT_TIMEOUT_MS);
      timer.unref();
      this.redis.once('ready', () => {
        this.connectedOnce = true;
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /**
   * Before the first connection is made, commands wait for it (at most the connect timeout): a fresh instance's
   * first request must not fail because the connection it opened a moment ago is still being set up. Once it
   * has been connected, an outage fails at once (commands are not queued), so callers fail closed quickly.
   */
  async connected(): Promise<void> {
    if (!this.connectedOnce) await this.firstConnection;
  }

  private async run<T>(operation: () => Promise<T>): Promise<T> {
    await this.connected();
    try {
      return await operation();
    } catch (error) {
      throw new StoreUnavailableError('redis', error);
    }
  }

  /** Waits for the first connection (start-up and tests); rejects if Redis does not answer in time. */
  async ready(timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.redis.status !== 'ready') {
      if (Date.now() > deadline) throw new StoreUnavailableError('redis');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  get(key: string) {
    return this.run(() => this.redis.get(key));
  }

  getMany(keys: readonly string[]) {
    return keys.length === 0 ? Promise.resolve([]) : this.run(() => this.redis.mget(...keys));
  }

  async set(key: string, value: string, ttlMs?: number) {
    await this.run(() => (ttlMs === undefined ? this.redis.set(key, value) : this.redis.set(key, value, 'PX', ttlMs)));
  }

  async setIfAbsent(key: string, value: string, ttlMs: number) {
    return (await this.run(() => this.redis.set(key, value, 'PX', ttlMs, 'NX'))) === 'OK';
  }

  async delete(key: string) {
    return (await this.run(() => this.redis.del(key))) === 1;
  }

  async deleteIfEquals(key: string, value: string) {
    return (await this.run(() => this.redis.eval(DELETE_IF_EQUALS, 1, key, value))) === 1;
  }

  async replaceIfEquals(key: string, expected: string, value: string) {
    return (await this.run(() => this.redis.eval(REPLACE_IF_EQUALS, 1, key, expected, value))) === 1;
  }

  async increment(key: string, by: number, ttlMs?: number) {
    if (!Number.isSafeInteger(by)) throw new TypeError('increment takes a safe integer');
    return Number(await this.run(() => this.redis.eval(INCREMENT, 1, key, String(by), ttlMs === undefined ? '' : String(ttlMs))));
  }

  async reserve(entries: readonly Reservation[]): Promise<ReserveResult> {
    assertReservations(entries);
    if (entries.length === 0) return { refused: -1, values: [] };
    const args = entries.flatMap(({ amount, limit, ttlMs }) => [String(amount), String(limit), String(ttlMs)]);
    const reply = (await this.run(() => this.redis.eval(RESERVE, entries.length, ...entries.map((e) => e.key), ...args))) as number[];
    const [refused, ...values] = reply.map(Number);
    return { refused: refused! - 1, values };
  }

  /**
   * A Redis stream per log: XADD trims entries older than the retention (MINID, approximate so trimming is
   * cheap); the entry's time is kept in a field, the stream id orders entries and serves as the cursor.
   */
  async append(stream: string, value: string, at: number, retentionMs: number) {
    const minId = String(Math.max(Date.now() - retentionMs, 0));
    const id = await this.run(() => this.redis.xadd(`log:${stream}`, 'MINID', '~', minId, '*', 'at', String(at), 'v', value));
    return id ?? '';
  }

  async appendBatch(stream: string, entries: readonly { readonly value: string; readonly at: number }[], retentionMs: number) {
    if (entries.length === 0) return;
    const minId = String(Math.max(Date.now() - retentionMs, 0));
    const pipeline = this.redis.pipeline();
    for (const { value, at } of entries) pipeline.xadd(`log:${stream}`, 'MINID', '~', minId, '*', 'at', String(at), 'v', value);
    const results = await this.run(() => pipeline.exec());
    const failed = results?.find(([error]) => error);
    if (failed) throw new StoreUnavailableError('redis', failed[0]);
  }

  async readLog(stream: string, { sinceMs, untilMs, cursor, limit, order }: LogQuery): Promise<LogEntry[]> {
    if (!(limit >= 1)) return [];
    const key = `log:${stream}`;
    const valid = cursor !== undefined && /^\d{1,16}-\d{1,16}$/.test(cursor);
    // Stream ids carry Redis's clock, `at` the writer's: the id range is only narrowed to the window widened
    // by LOG_SKEW_MS, and the window itself is applied to `at` below.
    let low = order === 'asc' && valid ? `(${cursor}` : sinceMs !== undefined ? String(Math.max(Math.floor(sinceMs) - LOG_SKEW_MS, 0)) : '-';
    let high = order === 'desc' && valid ? `(${cursor}` : untilMs !== undefined ? String(Math.max(Math.ceil(untilMs) + LOG_SKEW_MS, 0)) : '+';
    const out: LogEntry[] = [];
    // Entries outside the window are dropped after reading, so read on until the page is full or the range
    // ends: a short page means "no more" to callers that page through the log.
    for (;;) {
      const entries = await this.run(() =>
        order === 'asc' ? this.redis.xrange(key, low, high, 'COUNT', limit) : this.redis.xrevrange(key, high, low, 'COUNT', limit),
      );
      for (const [id, fields] of entries) {
        const record: Record<string, string> = {};
        for (let i = 0; i + 1 < fields.length; i += 2) record[fields[i]!] = fields[i + 1]!;
        const at = Number(record.at);
        if (record.v === undefined || (sinceMs !== undefined && at < sinceMs) || (untilMs !== undefined && at > untilMs)) continue;
        out.push({ id, at, value: record.v });
        if (out.length >= limit) return out;
      }
      if (entries.length < limit) return out;
      const last = entries.at(-1)![0];
      if (order === 'asc') low = `(${last}`;
      else high = `(${last}`;
    }
  }

  /** The connection, for rate-limiter-flexible's Redis limiter (its own atomic script, under our key prefix). */
  get client(): Redis {
    return this.redis;
  }

  async ping() {
    await this.run(() => this.redis.ping());
  }

  async close() {
    this.redis.disconnect();
  }
}
