import { assertHashIncrements, assertRaise, assertReservations, type HashIncrement, type LogEntry, type LogQuery, type Reservation, type ReserveResult, type Store } from './types';

interface Entry {
  value: string;
  expiresAt: number;
}

/** How often, at most, a write sweeps out every expired entry (one pass over the map). */
const SWEEP_EVERY_MS = 60_000;

/**
 * In-process store for tests and single-process development. Expiry is checked on read, and expired entries
 * are swept out by a write at most once a minute: an entry written once and never read again (a replay mark, a
 * one-time code) does not stay in memory for good.
 */
export class MemoryStore implements Store {
  readonly logCursor = /^\d{16}$/;
  readonly kind = 'memory' as const;
  private readonly entries = new Map<string, Entry>();
  private readonly logs = new Map<string, LogEntry[]>();
  private readonly hashes = new Map<string, { fields: Map<string, number>; expiresAt: number }>();
  private logSequence = 0;
  private nextSweep = 0;

  constructor(private readonly now: () => number = Date.now) {}

  private live(key: string): Entry | undefined {
    const entry = this.entries.get(key);
    if (entry && entry.expiresAt <= this.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry;
  }

  private expiry(ttlMs?: number): number {
    return ttlMs === undefined ? Number.POSITIVE_INFINITY : this.now() + ttlMs;
  }

  async get(key: string) {
    return this.live(key)?.value ?? null;
  }

  async getMany(keys: readonly string[]) {
    return keys.map((key) => this.live(key)?.value ?? null);
  }

  async set(key: string, value: string, ttlMs?: number) {
    this.sweep();
    this.entries.set(key, { value, expiresAt: this.expiry(ttlMs) });
  }

  async setIfAbsent(key: string, value: string, ttlMs: number) {
    if (this.live(key)) return false;
    this.sweep();
    this.entries.set(key, { value, expiresAt: this.expiry(ttlMs) });
    return true;
  }

  async raise(key: string, value: number, ttlMs: number) {
    assertRaise(value, ttlMs);
    const held = Number(this.live(key)?.value);
    if (held >= value) return false;
    this.sweep();
    this.entries.set(key, { value: String(value), expiresAt: this.expiry(ttlMs) });
    return true;
  }

  async delete(key: string) {
    return this.live(key) !== undefined && this.entries.delete(key);
  }

  async deleteIfEquals(key: string, value: string) {
    if (this.live(key)?.value !== value) return false;
    return this.entries.delete(key);
  }

  async replaceIfEquals(key: string, expected: string, value: string) {
    const entry = this.live(key);
    if (entry?.value !== expected) return false;
    entry.value = value;
    return true;
  }

  async increment(key: string, by: number, ttlMs?: number) {
    const entry = this.live(key);
    const next = (entry ? Number(entry.value) : 0) + by;
    this.sweep();
    this.entries.set(key, { value: String(next), expiresAt: entry ? entry.expiresAt : this.expiry(ttlMs) });
    return next;
  }

  async reserve(entries: readonly Reservation[]): Promise<ReserveResult> {
    assertReservations(entries);
    // Synchronous from check to write: nothing else runs in between in this process.
    const values = entries.map(({ key }) => Number(this.live(key)?.value ?? 0));
    const refused = entries.findIndex(({ amount, limit }, index) => amount > 0 && values[index]! + amount > limit);
    if (refused !== -1) return { refused, values };
    this.sweep();
    entries.forEach(({ key, amount, ttlMs }, index) => {
      const entry = this.live(key);
      values[index] = values[index]! + amount;
      this.entries.set(key, { value: String(values[index]), expiresAt: entry ? entry.expiresAt : this.expiry(ttlMs) });
    });
    return { refused: -1, values };
  }

  async append(stream: string, value: string, at: number, retentionMs: number) {
    const log = this.logs.get(stream) ?? [];
    this.logs.set(stream, log);
    const cutoff = this.now() - retentionMs;
    while (log.length > 0 && log[0]!.at < cutoff) log.shift();
    const id = String(++this.logSequence).padStart(16, '0');
    log.push({ id, at, value });
    return id;
  }

  async appendBatch(stream: string, entries: readonly { readonly value: string; readonly at: number }[], retentionMs: number) {
    for (const { value, at } of entries) await this.append(stream, value, at, retentionMs);
  }

  async readLog(stream: string, { sinceMs = -Infinity, untilMs = Infinity, cursor: given, limit, order }: LogQuery) {
    let cursor = given;
    const log = [...(this.logs.get(stream) ?? [])];
    // Ids are zero-padded sequence numbers; anything else is treated as no cursor, as the other stores do.
    if (cursor !== undefined && !this.logCursor.test(cursor)) cursor = undefined;
    if (order === 'desc') log.reverse();
    return log
      .filter(({ id, at }) => at >= sinceMs && at <= untilMs && (cursor === undefined || (order === 'asc' ? id > cursor : id < cursor)))
      .slice(0, limit);
  }

  async incrementHashes(entries: readonly HashIncrement[]) {
    assertHashIncrements(entries);
    this.sweep();
    for (const { key, field, by, expiresAt } of entries) {
      const hash = this.liveHash(key) ?? { fields: new Map<string, number>(), expiresAt };
      hash.expiresAt = expiresAt;
      hash.fields.set(field, (hash.fields.get(field) ?? 0) + by);
      this.hashes.set(key, hash);
    }
  }

  async readHashes(keys: readonly string[], fields?: readonly string[]) {
    return keys.map((key) => {
      const hash = this.liveHash(key)?.fields;
      if (!fields) return Object.fromEntries(hash ?? []);
      return Object.fromEntries(fields.flatMap((field) => (hash?.has(field) ? [[field, hash.get(field)!]] : [])));
    });
  }

  async readHashField(key: string, field: string) {
    return this.liveHash(key)?.fields.get(field) ?? 0;
  }

  private liveHash(key: string) {
    const hash = this.hashes.get(key);
    if (hash && hash.expiresAt <= this.now()) {
      this.hashes.delete(key);
      return undefined;
    }
    return hash;
  }

  /** Deletes every expired entry and hash, at most once per SWEEP_EVERY_MS. */
  private sweep(): void {
    const now = this.now();
    if (now < this.nextSweep) return;
    this.nextSweep = now + SWEEP_EVERY_MS;
    for (const [key, entry] of this.entries) if (entry.expiresAt <= now) this.entries.delete(key);
    for (const [key, hash] of this.hashes) if (hash.expiresAt <= now) this.hashes.delete(key);
  }

  /** How many entries and hashes are held, expired ones not yet swept included (for tests). */
  get size(): number {
    return this.entries.size + this.hashes.size;
  }

  async ping() {}

  async close() {
    this.entries.clear();
    this.hashes.clear();
  }
}
