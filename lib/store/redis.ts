import { randomUUID } from 'node:crypto';
import { Redis, type RedisOptions } from 'ioredis';
import { assertHashIncrements, assertRaise, assertReservations, StoreUnavailableError, type HashIncrement, type LogEntry, type LogQuery, type Reservation, type ReserveResult, type Store } from './types';

const CONNECT_TIMEOUT_MS = 2_000;

/** How far an entry's `at` (the writer's clock) may lie from its stream id (Redis's clock) and still be found by time. */
const LOG_SKEW_MS = 5 * 60_000;

const DELETE_IF_EQUALS = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;
const REPLACE_IF_EQUALS = `if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1 else return 0 end`;
const RAISE = `local held = tonumber(redis.call('GET', KEYS[1]) or '')
if held ~= nil and held >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`;
const INCREMENT = `local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v`;

// Gives points back to a counter only while it exists: a window that ended meanwhile is not restarted by a
// negative count (which would give the next window extra room, from the wrong start).
const GIVE_BACK = `if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECRBY', KEYS[1], ARGV[1]) end
return false`;

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

// A proxied call's reads and rate counters in one round trip (issue 12). KEYS: the reads, then the counters.
// ARGV[1]: the number of reads; then per read a mode and its argument; then per counter its points, window
// (seconds) and limit. Modes: `get` (just read), `present` (stop if the key exists), `atleast` (stop if it holds a number
// >= the argument; "" counts as 0, as JavaScript's Number reads it), `known` (the argument is the SHA-1 of the
// value the caller knows, "-" for none: answered 1 when unchanged, else the value, and then nothing is counted),
// `secret` (a per-user credential's sealed value: not read at all once an earlier read stopped the round, and
// its absence stops it).
// The counters are taken only if no read stopped them and none changed, and only if every one has room for its
// points (its limit, the counter's third argument): a call one rule refuses counts on none, so one user's flood
// past their own limit does not use up a counter shared with others. Each is taken exactly as
// rate-limiter-flexible's RateLimiterRedis takes a point (same keys, same script), so both share counters. When
// one has no room, nothing is written: a counter without room is answered as if its points were taken (over its
// limit), the others as they stand. A lone counter is taken without that check (one GET less): over its limit,
// it refuses the call as before, and it is nobody else's.
// Returns {stopped (0, else the 1-based index of the first read that stopped the round), changed (0/1), the
// reads..., then, when no read stopped the round and none changed, consumed and ttl (ms) per counter and whether
// the points were taken (1/0)}.
const ROUND = `local reads = tonumber(ARGV[1])
local out = {0, 0}
local a = 2
for i = 1, reads do
  local mode, arg = ARGV[a], ARGV[a + 1]
  a = a + 2
  local value = false
  local stop = false
  if mode ~= 'secret' or out[1] == 0 then value = redis.call('GET', KEYS[i]) end
  if mode == 'present' then
    stop = value and true or false
  elseif mode == 'atleast' then
    if value then
      local n = tonumber(value)
      if value == '' then n = 0 end
      stop = n ~= nil and n >= tonumber(arg)
    end
  elseif mode == 'known' then
    if (value and redis.sha1hex(value) or '-') == arg then value = 1 else out[2] = 1 end
  elseif mode == 'secret' then
    stop = out[1] == 0 and not value
  end
  if stop and out[1] == 0 then out[1] = i end
  out[i + 2] = value
end
if out[1] ~= 0 or out[2] == 1 then return out end
local n = reads + 2
local room = true
if #KEYS - reads > 1 then
  for j = reads + 1, #KEYS do
    local at = a + (j - reads - 1) * 3
    if (tonumber(redis.call('GET', KEYS[j])) or 0) + tonumber(ARGV[at]) > tonumber(ARGV[at + 2]) then room = false end
  end
end
for j = reads + 1, #KEYS do
  local points, window = ARGV[a], ARGV[a + 1]
  a = a + 3
  local consumed, ttl
  if room then
    redis.call('SET', KEYS[j], 0, 'EX', window, 'NX')
    consumed = redis.call('INCRBY', KEYS[j], points)
    ttl = redis.call('PTTL', KEYS[j])
    if ttl == -1 then
      redis.call('EXPIRE', KEYS[j], window)
      ttl = 1000 * window
    end
  else
    consumed = tonumber(redis.call('GET', KEYS[j])) or 0
    if consumed + tonumber(points) > tonumber(ARGV[a - 1]) then consumed = consumed + tonumber(points) end
    ttl = redis.call('PTTL', KEYS[j])
    if ttl < 0 then ttl = 1000 * window end
  end
  out[n + 1] = consumed
  out[n + 2] = ttl
  n = n + 2
end
out[n + 1] = room and 1 or 0
return out`;

// A batch of log entries in one command (KEYS[1] the stream; ARGV[1] the oldest id to keep, then `at` and value
// per entry): trimmed once (MINID, approximate, so trimming is cheap), then an XADD per entry. One script per
// batch instead of one command per entry: each ioredis command costs its sender an object, a promise, a timer
// and a reply to parse, and Redis a command to dispatch (under the bench's small-JSON load, the fast lane's
// young-generation GCs promoted about 2.4 MB each instead of 3.7, and Redis spent 27 µs of CPU per call, not 31).
// A batch is at most 256 records (lib/core/audit/audit.ts), so the script never holds Redis for long.
const APPEND_BATCH = `redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'at', ARGV[i], 'v', ARGV[i + 1])
end
return (#ARGV - 1) / 2`;

// Usage aggregates in one command, as APPEND_BATCH: KEYS are the hashes; ARGV[i] (i <= #KEYS) is KEYS[i]'s
// absolute expiry (ms), then (index into KEYS, field, amount) per increment: an HINCRBY each, then one
// PEXPIREAT per hash (the same absolute time from every writer).
const INCREMENT_HASHES = `local k = #KEYS
for i = k + 1, #ARGV, 3 do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
end
for i = 1, k do
  redis.call('PEXPIREAT', KEYS[i], ARGV[i])
end
return k`;

/** One read of a round: a plain read, a stop condition for the counters, or a value known by its SHA-1. */
export type RoundRead =
  | { readonly key: string }
  | { readonly key: string; readonly stopIfPresent: true }
  | { readonly key: string; readonly stopIfAtLeast: number }
  /** SHA-1 (hex) of the value the caller holds, or null for "no value": the value is sent only if it differs. */
  | { readonly key: string; readonly knownSha1: string | null }
  /** A sealed per-user secret: read only if no earlier read stopped the round (else null); absent, it stops it. */
  | { readonly key: string; readonly secret: true };

/** A fixed-window rate counter, as rate-limiter-flexible's RateLimiterRedis keeps it (key, points, window). */
export interface RoundCounter {
  readonly key: string;
  readonly points: number;
  readonly windowSeconds: number;
  /** Its rule's limit: the round takes no counter's points unless every counter has room for them. */
  readonly limit: number;
}

export interface RoundResult {
  /** A stop condition held: no counter was taken. */
  readonly stopped: boolean;
  /** The index (in `reads`) of the first read whose stop condition held, or null. */
  readonly stoppedAt: number | null;
  /** A `knownSha1` read differed: no counter was taken. */
  readonly changed: boolean;
  /** The reads in order; `undefined` for a `knownSha1` read that had not changed. */
  readonly values: ReadonlyArray<string | null | undefined>;
  /**
   * Per counter, its value after this call's points and its time left (ms), or, when one had no room (`taken`
   * false), as it stands (over its limit with the points, for one without room); null when a read stopped the
   * round or one changed.
   */
  readonly counters: ReadonlyArray<{ readonly consumed: number; readonly ttlMs: number }> | null;
  /** Whether the counters' points were written: false when a read stopped the round, one changed, or a counter had no room. */
  readonly taken: boolean;
}

/** The scripts defined on the connection (`defineCommand`), each called as (number of keys, keys…, args…). */
interface Scripts {
  keywardRound(numKeys: number, ...args: string[]): Promise<Array<string | number | null>>;
  keywardAppendBatch(numKeys: number, ...args: string[]): Promise<number>;
  keywardIncrementHashes(numKeys: number, ...args: string[]): Promise<number>;
}

/** One reading of a connection's maxmemory-policy (RedisStore.policyCheck). */
interface PolicyCheck {
  check: Promise<StoreUnavailableError | null>;
  /** When it was asked (pushed on by a re-read that got no answer). */
  at: number;
  /** Set once it answered. */
  refused?: boolean;
  /** A re-read of this passed check is under way. */
  rereading?: boolean;
}

/** Where the store reports a Redis it refuses (pino's Logger fits). */
export interface RedisStoreLogger {
  error(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
  info(fields: Record<string, unknown>, message: string): void;
}

/** The one eviction policy that keeps keys with a TTL until they expire: https://redis.io/docs/latest/develop/reference/eviction/ */
const NO_EVICTION = 'noeviction';

/**
 * The marker (under the prefix, no TTL) whose random value tells a Redis that kept its data from one that lost it:
 * written once when absent; an instance that saw one value and later finds none, or another, knows every key was lost.
 */
const MARKER_KEY = 'store-id';
const MARKER = `local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]`;

/** What a Redis that lost its data (or keeps none on disk) loses: README "Shared store and revocation". */
const WHAT_IS_LOST =
  'key revocations and managed key versions (a revoked key serves again), session revocations (a signed-out session works ' +
  'again), limit counters, budgets and anomaly detector marks';

/** A connection error, by kind: each is logged once per outage. */
type ConnectionProblem = 'auth-required' | 'auth-failed' | 'refused' | 'not-found' | 'tls' | 'timeout' | 'other';

/** What went wrong connecting, and what to do: named from ioredis's error (its code, or Redis's reply). */
function connectionProblem(error: unknown): { problem: ConnectionProblem; advice: string } {
  const { code, message } = error instanceof Error ? { code: (error as NodeJS.ErrnoException).code ?? '', message: error.message } : { code: '', message: '' };
  if (message.startsWith('NOAUTH')) return { problem: 'auth-required', advice: 'it requires a password and REDIS_URL gives none (redis://:<password>@host:port)' };
  if (message.startsWith('WRONGPASS') || /invalid (username-)?password/i.test(message)) {
    return { problem: 'auth-failed', advice: "it refused REDIS_URL's user name or password (WRONGPASS)" };
  }
  if (code === 'ECONNREFUSED') return { problem: 'refused', advice: "nothing accepts connections there (is Redis running, and REDIS_URL's port right?)" };
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return { problem: 'not-found', advice: `its host name does not resolve (${code})` };
  if (/^ERR_(SSL|TLS)_|CERT|SELF_SIGNED|UNABLE_TO_VERIFY/.test(code) || /\b(SSL|TLS)\b|certificate/i.test(message)) {
    return { problem: 'tls', advice: `TLS failed (${code || 'handshake'}): rediss:// needs a Redis that speaks TLS with a certificate this host trusts, redis:// one that does not` };
  }
  if (code === 'ETIMEDOUT' || /timed? ?out/i.test(message)) return { problem: 'timeout', advice: 'it did not answer in time (a firewall, the wrong host, or rediss:// to a Redis without TLS)' };
  // A reply from Redis starts with its error's name (LOADING, MISCONF, ERR): that, never the rest of the message.
  return { problem: 'other', advice: code || /^[A-Z]{2,}\b/.exec(message)?.[0] || (error instanceof Error ? error.name : 'unknown error') };
}

/** host:port of a Redis URL, for log lines: never its user name or password. */
function redisAddress(url: string): string {
  const parsed = URL.parse(url);
  return parsed ? `${parsed.hostname}:${parsed.port || '6379'}` : 'unknown';
}

/**
 * Redis (REDIS_URL) for several instances or Vercel. Commands are not queued while disconnected and time
 * out quickly, so an outage surfaces at once as StoreUnavailableError (callers fail closed) and ioredis
 * reconnects in the background, so Keyward recovers by itself when Redis returns.
 *
 * Every connection's `maxmemory-policy` is read before it serves: anything but `noeviction` is refused (see
 * `checkPolicy`), since every mark Keyward keeps with a TTL (revocations, limit counters, reuse marks) is what
 * an evicting Redis drops under memory pressure.
 */
export class RedisStore implements Store {
  readonly logCursor = /^\d{1,16}-\d{1,16}$/;
  readonly kind = 'redis' as const;
  private readonly redis: Redis;
  private readonly logger: RedisStoreLogger;
  /** Settles once the first connection is ready, or once the connect timeout passed without one. */
  private readonly firstConnection: Promise<void>;
  private connectedOnce = false;
  /**
   * The current connection's policy check (`refused` once it answered): null once the connection closed (the
   * next one is checked anew). Read again after a while (`policyRecheck`), so that a policy changed on a live
   * connection (`CONFIG SET`) counts: a fixed one serves within seconds, an evicting one is refused.
   */
  private policy: PolicyCheck | null = null;
  /** The last policy value reported on this connection (`undefined`: none yet): each is logged once, not every check. */
  private reported: string | null | undefined = undefined;
  private readonly policyRecheck: { readonly refusedMs: number; readonly servingMs: number };
  /** host:port of REDIS_URL, as log lines name it. */
  private readonly address: string;
  /** The connection problems logged since the last connection (each kind once per outage). */
  private readonly problems = new Set<ConnectionProblem>();
  /** The marker value this instance last saw (null: none yet). */
  private marker: string | null = null;
  /** Whether this instance has warned about a Redis that keeps nothing on disk. */
  private persistenceWarned = false;
  /** Whether this connection's persistence is known (read once per connection, not with every policy re-read). */
  private persistenceChecked = false;

  constructor(
    url: string,
    options: { prefix?: string; commandTimeoutMs?: number; logger?: RedisStoreLogger; policyRecheck?: { refusedMs: number; servingMs: number } } = {},
  ) {
    this.policyRecheck = options.policyRecheck ?? { refusedMs: 5_000, servingMs: 60_000 };
    this.logger = options.logger ?? {
      error: (fields, message) => console.error(message, fields),
      warn: (fields, message) => console.warn(message, fields),
      info: (fields, message) => console.info(message, fields),
    };
    this.address = redisAddress(url);
    const redisOptions: RedisOptions = {
      keyPrefix: options.prefix ?? 'keyward:',
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      // A command in flight when the connection dropped may have run on Redis, its reply lost: sent again on the
      // next connection (ioredis's default) it would run twice (a budget charged twice, a give-back applied twice,
      // an audit batch written twice). It fails instead, as the store being unavailable: by the command timeout
      // at the latest (nothing rejects a dropped command sooner when the reconnection succeeds at once), or when
      // the reconnection fails (maxRetriesPerRequest); what it did may have taken effect, once.
      autoResendUnfulfilledCommands: false,
      commandTimeout: options.commandTimeoutMs ?? 2_000,
      connectTimeout: CONNECT_TIMEOUT_MS,
      retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
      lazyConnect: false,
      // Commands issued in the same turn of the event loop (concurrent calls' round trips, audit appends) go out
      // in one socket write, in order (ioredis's auto-pipelining): each write on a busy server cost its sender
      // as much as the rest of the command. Each call still gets its own reply, and still one round trip.
      enableAutoPipelining: true,
    };
    this.redis = new Redis(url, redisOptions);
    // EVALSHA, falling back to EVAL once per server (NOSCRIPT): the script is not resent with every call.
    this.redis.defineCommand('keywardRound', { lua: ROUND });
    this.redis.defineCommand('keywardAppendBatch', { lua: APPEND_BATCH });
    this.redis.defineCommand('keywardIncrementHashes', { lua: INCREMENT_HASHES });
    // Commands fail with StoreUnavailableError whatever the cause; the cause is logged here, once per kind per
    // outage (ioredis retries every 2 seconds at most), naming host:port and never the URL (its password).
    this.redis.on('error', (error: unknown) => this.connectionFailed(error));
    // Every connection is checked, not just the first: a failover or a reconnection may land on a node
    // configured otherwise. Checked at once (so a refused Redis is logged without waiting for traffic), and
    // awaited by every command (connected()).
    this.redis.on('ready', () => {
      this.reconnected();
      void this.policyCheck();
    });
    this.redis.on('close', () => {
      this.policy = null;
      // The next connection may be another node (a failover): its persistence is read again.
      this.persistenceChecked = false;
      this.reported = undefined;
    });
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
   * Rejects with StoreUnavailableError when the connection's Redis is refused (an evicting policy).
   */
  async connected(): Promise<void> {
    if (!this.connectedOnce) await this.firstConnection;
    // Not connected: a command fails at once by itself (no offline queue).
    if (this.redis.status !== 'ready') return;
    const refused = await this.policyCheck();
    if (refused) throw refused;
  }

  /**
   * The current connection's check: started with the connection, read again once a refusal is `refusedMs` old
   * (commands wait for it) or a pass `servingMs` old (read in the background; commands go on meanwhile).
   */
  private policyCheck(): Promise<StoreUnavailableError | null> {
    const current = this.policy;
    if (current === null) return this.startPolicyCheck().check;
    if (current.refused === undefined) return current.check;
    const age = Date.now() - current.at;
    if (current.refused && age >= this.policyRecheck.refusedMs) return this.startPolicyCheck().check;
    // One re-read at a time; until it answers, the connection serves as it did (a refusal counts from then on).
    if (!current.refused && age >= this.policyRecheck.servingMs && !current.rereading) {
      current.rereading = true;
      void this.startPolicyCheck(current).check;
    }
    return current.check;
  }

  /** A new check; `serving`: the passed check that keeps serving until this one answers. */
  private startPolicyCheck(serving?: PolicyCheck): PolicyCheck {
    const entry: PolicyCheck = { check: Promise.resolve(null), at: Date.now() };
    entry.check = this.checkPolicy().then(
      (refused) => {
        entry.refused = refused !== null;
        if (this.policy === serving) this.policy = entry;
        return refused;
      },
      (error: unknown) => {
        if (serving) {
          // A re-read that got no answer (a timeout): tried again a full interval later, not by every command.
          serving.at = Date.now();
          serving.rereading = false;
          return null;
        }
        // Not an answer about the policy (the connection dropped, a timeout): the next command asks again.
        if (this.policy === entry) this.policy = null;
        return new StoreUnavailableError('redis', error);
      },
    );
    if (!serving) this.policy = entry;
    return entry;
  }

  /**
   * Reads `maxmemory_policy` from `INFO memory` (INFO, not CONFIG GET: managed Redis services often disable
   * CONFIG but answer INFO). A policy that evicts is refused, logged once for this connection.
   * When the policy cannot be read (INFO refused by an ACL, or a service whose INFO has no such field) the Redis
   * serves, with a warning once per connection: refusing it would take down every deployment on a service that
   * does not report the policy (Keyward cannot tell such a service's eviction setting from here), while the
   * managed services whose default evicts (ElastiCache, Memorystore, Azure: `volatile-lru`) report it.
   */
  private async checkPolicy(): Promise<StoreUnavailableError | null> {
    let info: string;
    try {
      info = await this.redis.info('memory');
    } catch (error) {
      if (!(error instanceof Error && error.message.includes('NOPERM'))) throw error;
      this.unchecked('its user may not run INFO (allow it: ACL SETUSER <user> +info)');
      await this.checkData();
      return null;
    }
    const policy = /^maxmemory_policy:(\S+)/m.exec(info)?.[1] ?? null;
    if (policy === NO_EVICTION) {
      this.reported = policy;
      await this.checkData();
      return null;
    }
    if (policy === null) {
      this.unchecked('INFO memory does not report maxmemory_policy');
      await this.checkData();
      return null;
    }
    return this.refuse(
      { setting: 'maxmemory-policy', value: policy },
      `Keyward refuses this Redis: its maxmemory-policy is ${policy}, which evicts keys under memory pressure (revoked ` +
        'sessions would be accepted again, limits and budgets would start over). Set maxmemory-policy noeviction on the Redis ' +
        "(redis.conf, CONFIG SET, or your provider's parameter group). Every call answers 503 store_unavailable until then.",
    );
  }

  /**
   * A served Redis's data, with every connection and policy re-read (each minute): whether it lost what this
   * instance saw in it (the marker), and, once per instance, whether it keeps anything on disk. Best effort:
   * a check that fails (a timeout, a command an ACL refuses) is left for the next one, and serving goes on.
   */
  private async checkData(): Promise<void> {
    await this.checkMarker().catch(() => {});
    if (!this.persistenceWarned && !this.persistenceChecked) await this.checkPersistence().catch(() => {});
  }

  /**
   * The marker, written if absent. A value other than the one this instance saw means the Redis lost its data
   * (restarted with nothing on disk, flushed, or another Redis behind the same URL): logged once per loss, by each
   * instance that saw it. Serving goes on: what was lost cannot be told from here (a revoked key's mark, a
   * signed-out session's), and refusing every call would turn each restart of such a Redis into an outage that
   * only an operator could end; the log says what to do.
   */
  private async checkMarker(): Promise<void> {
    const seen = String(await this.redis.eval(MARKER, 1, MARKER_KEY, randomUUID()));
    const before = this.marker;
    this.marker = seen;
    if (before === null || before === seen) return;
    this.logger.error(
      { setting: 'REDIS_URL', redis: this.address },
      `The Redis at ${this.address} lost its data: a mark Keyward keeps there is gone or was written anew (Redis restarted with ` +
        `nothing on disk, was flushed, or REDIS_URL now leads to another Redis). Lost with it: ${WHAT_IS_LOST}. Revoke again ` +
        'any key or session revoked before (and revoke a leaked key at its provider too), and make Redis persist its data ' +
        '(appendonly yes) so that a restart keeps it.',
    );
  }

  /**
   * Warns once when the Redis keeps nothing on disk: AOF off (`INFO persistence`) and no RDB snapshots
   * (`CONFIG GET save`). Managed services often refuse CONFIG: then nothing is said (their snapshots cannot be
   * told from here).
   */
  private async checkPersistence(): Promise<void> {
    const info = await this.redis.info('persistence');
    const [, save] = /^aof_enabled:1/m.test(info) ? [] : ((await this.redis.config('GET', 'save').catch(() => [])) as string[]);
    this.persistenceChecked = true;
    if (save !== '') return;
    this.persistenceWarned = true;
    this.logger.warn(
      { setting: 'REDIS_URL', redis: this.address },
      `The Redis at ${this.address} keeps nothing on disk (appendonly no, save ""): restarted, it comes back empty, and with it ` +
        `${WHAT_IS_LOST}. Set appendonly yes on it (redis.conf, CONFIG SET, or your provider's persistence setting).`,
    );
  }

  /** A connection error: logged once per kind until a connection is made (then `reconnected` says so once). */
  private connectionFailed(error: unknown): void {
    const { problem, advice } = connectionProblem(error);
    if (this.problems.has(problem)) return;
    this.problems.add(problem);
    this.logger.error(
      { setting: 'REDIS_URL', redis: this.address, problem },
      `Keyward cannot use the Redis at ${this.address} (REDIS_URL): ${advice}. Every call that needs the store answers 503 ` +
        'store_unavailable until it can; Keyward keeps trying.',
    );
  }

  private reconnected(): void {
    if (this.problems.size === 0) return;
    this.problems.clear();
    this.logger.info({ setting: 'REDIS_URL', redis: this.address }, `Keyward connected to Redis again at ${this.address}.`);
  }

  /** A Redis whose policy cannot be read: served, with a warning for this connection. */
  private unchecked(why: string): void {
    if (this.reported === null) return;
    this.reported = null;
    this.logger.warn(
      { setting: 'maxmemory-policy', value: null },
      `Keyward cannot check this Redis's maxmemory-policy: ${why}. Make sure it is noeviction (or eviction is off): an ` +
        'evicting Redis drops revocation marks and limit counters under memory pressure.',
    );
  }

  private refuse(fields: { setting: string; value: string | null }, message: string, cause?: unknown): StoreUnavailableError {
    if (this.reported !== fields.value) this.logger.error(fields, message);
    this.reported = fields.value;
    return new StoreUnavailableError('redis', cause ?? new Error(`maxmemory-policy ${fields.value ?? 'unknown'}: not noeviction`));
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

  async raise(key: string, value: number, ttlMs: number) {
    assertRaise(value, ttlMs);
    return (await this.run(() => this.redis.eval(RAISE, 1, key, String(value), String(ttlMs)))) === 1;
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

  /**
   * Takes `points` back from a rate counter a round trip took them in (RedisStore.round), if the counter still
   * exists; a counter whose window ended is left absent. Resolves to its new value, or null when it was gone.
   */
  async giveBack(key: string, points: number): Promise<number | null> {
    if (!Number.isSafeInteger(points) || points < 0) throw new TypeError('giveBack takes whole, non-negative points');
    const value = await this.run(() => this.redis.eval(GIVE_BACK, 1, key, String(points)));
    return value === null ? null : Number(value);
  }

  /**
   * Gives back every counter's points a round trip took (`round`'s counters), best effort: a give-back that fails
   * leaves its point counted. For a call that round counted and that then did not go out.
   */
  async giveBackAll(counters: readonly Pick<RoundCounter, 'key' | 'points'>[]): Promise<void> {
    await Promise.allSettled(counters.map(({ key, points }) => this.giveBack(key, points)));
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
   * A proxied call's per-call state in one round trip (one script): `reads` are read; then, unless a stop
   * condition held or a known value changed, every counter takes its points. Atomic, so a counter is never
   * taken for a call whose stop condition (a revocation) was already written.
   */
  async round(reads: readonly RoundRead[], counters: readonly RoundCounter[]): Promise<RoundResult> {
    const args: string[] = [String(reads.length)];
    for (const read of reads) {
      if ('stopIfPresent' in read) args.push('present', '');
      else if ('stopIfAtLeast' in read) args.push('atleast', String(read.stopIfAtLeast));
      else if ('knownSha1' in read) args.push('known', read.knownSha1 ?? '-');
      else if ('secret' in read) args.push('secret', '');
      else args.push('get', '');
    }
    for (const { points, windowSeconds, limit } of counters) {
      if (!Number.isSafeInteger(points) || !Number.isSafeInteger(windowSeconds) || windowSeconds < 1 || !Number.isSafeInteger(limit)) {
        throw new TypeError('round counters take whole points, a window of at least one second and a whole limit');
      }
      args.push(String(points), String(windowSeconds), String(limit));
    }
    const keys = [...reads.map((read) => read.key), ...counters.map((counter) => counter.key)];
    const reply = await this.run(() => this.scripts.keywardRound(keys.length, ...keys, ...args));
    const stoppedAt = typeof reply[0] === 'number' && reply[0] > 0 ? reply[0] - 1 : null;
    const stopped = stoppedAt !== null;
    const changed = reply[1] === 1;
    const values = reads.map((read, i) => {
      const value = reply[i + 2] ?? null;
      return 'knownSha1' in read && value === 1 ? undefined : value === null ? null : String(value);
    });
    let answered: RoundResult['counters'] = null;
    let taken = false;
    if (!stopped && !changed) {
      answered = counters.map((_, j) => ({ consumed: Number(reply[reads.length + 2 + j * 2]), ttlMs: Number(reply[reads.length + 3 + j * 2]) }));
      taken = reply[reads.length + 2 + counters.length * 2] === 1;
    }
    return { stopped, stoppedAt, changed, values, counters: answered, taken };
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
    const args = [String(Math.max(Date.now() - retentionMs, 0))];
    for (const { value, at } of entries) args.push(String(at), value);
    await this.run(() => this.scripts.keywardAppendBatch(1, `log:${stream}`, ...args));
  }

  async readLog(stream: string, { sinceMs, untilMs, cursor, limit, order }: LogQuery): Promise<LogEntry[]> {
    if (!(limit >= 1)) return [];
    const key = `log:${stream}`;
    const valid = cursor !== undefined && this.logCursor.test(cursor);
    // Nothing is older than 0-0, and Redis refuses the interval that would say so (an error, not an empty page).
    if (valid && order === 'desc' && /^0+-0+$/.test(cursor)) return [];
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

  /** One script (INCREMENT_HASHES): an HINCRBY per field, then one PEXPIREAT per hash. */
  async incrementHashes(entries: readonly HashIncrement[]) {
    assertHashIncrements(entries);
    if (entries.length === 0) return;
    const index = new Map<string, number>();
    const expiry: string[] = [];
    const increments: string[] = [];
    for (const { key, field, by, expiresAt } of entries) {
      let at = index.get(key);
      if (at === undefined) {
        at = index.size;
        index.set(key, at);
      }
      expiry[at] = String(expiresAt); // the last one given for a hash, as PEXPIREAT in order would leave it
      increments.push(String(at + 1), field, String(by));
    }
    const keys = [...index.keys()].map((key) => `hash:${key}`);
    await this.run(() => this.scripts.keywardIncrementHashes(keys.length, ...keys, ...expiry, ...increments));
  }

  /** ioredis adds a method per defined script to the client, which its types do not know. */
  private get scripts(): Scripts {
    return this.redis as unknown as Scripts;
  }

  async readHashes(keys: readonly string[], fields?: readonly string[]) {
    if (keys.length === 0) return [];
    if (fields?.length === 0) return keys.map(() => ({}));
    const pipeline = this.redis.pipeline();
    for (const key of keys) {
      if (fields) pipeline.hmget(`hash:${key}`, ...fields);
      else pipeline.hgetall(`hash:${key}`);
    }
    const results = await this.run(() => pipeline.exec());
    return keys.map((_, index) => {
      const [error, value] = results?.[index] ?? [new Error('no reply'), null];
      if (error) throw new StoreUnavailableError('redis', error);
      const entries: Array<[string, string | null]> = fields
        ? fields.map((field, i) => [field, (value as Array<string | null>)[i] ?? null])
        : Object.entries((value ?? {}) as Record<string, string>);
      return Object.fromEntries(entries.filter(([, n]) => n !== null).map(([field, n]) => [field, Number(n)]));
    });
  }

  async readHashField(key: string, field: string) {
    return Number((await this.run(() => this.redis.hget(`hash:${key}`, field))) ?? 0);
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
