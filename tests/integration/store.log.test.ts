import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryStore } from '../../lib/store/memory';
import { RedisStore } from '../../lib/store/redis';
import { SqliteStore } from '../../lib/store/sqlite';
import type { LogEntry, LogQuery, Store } from '../../lib/store/types';
import { REDIS_URL } from '../fixtures/claims-session';
import { deleteKeysUnder } from '../fixtures/redis-server';

/**
 * The ordered log behind the audit trail (Store.append / Store.readLog), one contract on three backends:
 * memory, SQLite (a real file) and the test run's Redis under a fresh key prefix per store (deleted at the end).
 */
const DAY = 86_400_000;
const RETENTION = 30 * DAY;
const opened: Store[] = [];
const raw: Redis[] = [];
const prefixes: string[] = [];
afterAll(async () => {
  await Promise.all(opened.map((store) => store.close()));
  for (const client of raw) client.disconnect();
  for (const prefix of prefixes) await deleteKeysUnder(REDIS_URL, prefix);
});

function redisPrefix(): string {
  const prefix = `keyward-test-${randomUUID()}:`;
  prefixes.push(prefix);
  return prefix;
}

const tempDb = () => join(mkdtempSync(join(tmpdir(), 'keyward-log-')), 'store.db');

const backends: Record<string, () => Promise<Store>> = {
  memory: async () => new MemoryStore(),
  sqlite: async () => new SqliteStore(tempDb()),
  redis: async () => {
    const store = new RedisStore(REDIS_URL, { prefix: redisPrefix() });
    await store.ready();
    return store;
  },
};

async function open(kind: string): Promise<Store> {
  const store = await backends[kind]!();
  opened.push(store);
  return store;
}

interface Appended {
  readonly id: string;
  readonly at: number;
  readonly value: string;
}

/**
 * Appends `count` entries one after another. Times are close to the real clock (Redis stream ids carry the
 * server's time, and the log is written at the time it records), one millisecond apart, in order.
 */
async function fill(store: Store, stream: string, count: number, base = Date.now()): Promise<Appended[]> {
  const out: Appended[] = [];
  for (let i = 0; i < count; i++) {
    const at = base + i;
    const value = JSON.stringify({ n: i, text: `entry ${i} \u00e9\u6f22 "quoted" \\ \n` });
    const id = await store.append(stream, value, at, RETENTION);
    out.push({ id, at, value });
  }
  return out;
}

/** Reads the whole log page by page, following the cursor (the last id of each page). */
async function pageThrough(
  store: Store,
  stream: string,
  query: Omit<LogQuery, 'cursor'>,
): Promise<{ entries: LogEntry[]; pages: number[] }> {
  const entries: LogEntry[] = [];
  const pages: number[] = [];
  let cursor: string | undefined;
  for (let guard = 0; guard < 100; guard++) {
    const page = await store.readLog(stream, { ...query, cursor });
    pages.push(page.length);
    entries.push(...page);
    if (page.length < query.limit) return { entries, pages };
    cursor = page.at(-1)!.id;
  }
  throw new Error('the log never ended');
}

const plain = (entries: readonly LogEntry[]) => entries.map(({ id, at, value }) => ({ id, at, value }));

describe.each(Object.keys(backends))('Store log: %s', (kind) => {
  it('append returns distinct ids that order the entries; readLog gives them back exactly, asc and desc', async () => {
    const store = await open(kind);
    const appended = await fill(store, 'order', 25);
    expect(new Set(appended.map((e) => e.id)).size).toBe(25);
    for (const entry of appended) expect(typeof entry.id).toBe('string');

    const asc = await store.readLog('order', { limit: 100, order: 'asc' });
    expect(plain(asc)).toEqual(appended);
    const desc = await store.readLog('order', { limit: 100, order: 'desc' });
    expect(plain(desc)).toEqual([...appended].reverse());
  });

  it('streams are separate, and an unknown stream reads as empty', async () => {
    const store = await open(kind);
    const a = await fill(store, 'stream-a', 3);
    const b = await fill(store, 'stream-b', 2);
    expect((await store.readLog('stream-a', { limit: 10, order: 'asc' })).map((e) => e.value)).toEqual(
      a.map((e) => e.value),
    );
    expect((await store.readLog('stream-b', { limit: 10, order: 'desc' })).map((e) => e.value)).toEqual(
      b.map((e) => e.value).reverse(),
    );
    expect(await store.readLog('stream-none', { limit: 10, order: 'asc' })).toEqual([]);
    expect(await store.readLog('stream-none', { limit: 10, order: 'desc', sinceMs: 0, untilMs: Date.now() })).toEqual(
      [],
    );
  });

  it('appendBatch writes every entry of a batch, in order, after what was there, and an empty batch writes nothing', async () => {
    const store = await open(kind);
    const first = await fill(store, 'batch', 2);
    const now = Date.now();
    const batch = Array.from({ length: 300 }, (_, i) => ({ value: `batch-${i}`, at: now + i }));
    await store.appendBatch('batch', batch, 3_600_000);
    await store.appendBatch('batch', [], 3_600_000);
    const all = (await pageThrough(store, 'batch', { limit: 500, order: 'asc' })).entries;
    expect(all.map((e) => e.value)).toEqual([...first.map((e) => e.value), ...batch.map((e) => e.value)]);
    expect(all.slice(2).map((e) => e.at)).toEqual(batch.map((e) => e.at));
    expect(new Set(all.map((e) => e.id)).size).toBe(302);
  });

  it('limit caps a page', async () => {
    const store = await open(kind);
    const appended = await fill(store, 'limit', 10);
    expect(plain(await store.readLog('limit', { limit: 1, order: 'asc' }))).toEqual(appended.slice(0, 1));
    expect(plain(await store.readLog('limit', { limit: 4, order: 'asc' }))).toEqual(appended.slice(0, 4));
    expect(plain(await store.readLog('limit', { limit: 4, order: 'desc' }))).toEqual(appended.slice(-4).reverse());
    expect(await store.readLog('limit', { limit: 10, order: 'asc' })).toHaveLength(10);
    expect(await store.readLog('limit', { limit: 11, order: 'asc' })).toHaveLength(10);
  });

  it('1200 entries, read in pages of 500 by cursor, come back once each, without gaps, in both orders', async () => {
    const store = await open(kind);
    const appended = await fill(store, 'paging', 1200);

    const asc = await pageThrough(store, 'paging', { limit: 500, order: 'asc' });
    expect(asc.pages).toEqual([500, 500, 200]);
    expect(plain(asc.entries)).toEqual(appended);

    const desc = await pageThrough(store, 'paging', { limit: 500, order: 'desc' });
    expect(desc.pages).toEqual([500, 500, 200]);
    expect(plain(desc.entries)).toEqual([...appended].reverse());

    // A page that ends exactly at the last entry: the next read after it is empty.
    const tail = await store.readLog('paging', { limit: 500, order: 'asc', cursor: appended.at(-1)!.id });
    expect(tail).toEqual([]);
    const head = await store.readLog('paging', { limit: 500, order: 'desc', cursor: appended[0]!.id });
    expect(head).toEqual([]);
    // Continuing from the middle, in either direction.
    expect(plain(await store.readLog('paging', { limit: 3, order: 'asc', cursor: appended[599]!.id }))).toEqual(
      appended.slice(600, 603),
    );
    expect(plain(await store.readLog('paging', { limit: 3, order: 'desc', cursor: appended[600]!.id }))).toEqual(
      appended.slice(597, 600).reverse(),
    );
  });

  // The entry time is the writer's clock; Redis orders by its own. Writers 30 s ahead of or behind the store's
  // clock (skew between hosts, a write that waited) must still find their entries by time, in full pages.
  it.each([
    ['a writer whose clock is 30 s ahead', 30_000],
    ['a writer whose clock is 30 s behind', -30_000],
  ])(
    'since/until select on the entry time, both ends included, and combine with cursors and limits (%s)',
    async (_name, skew) => {
      const store = await open(kind);
      const appended = await fill(store, 'window', 1200, Date.now() + skew);
      const since = appended[150]!.at;
      const until = appended[949]!.at;
      const inside = appended.slice(150, 950);

      const asc = await pageThrough(store, 'window', { limit: 500, order: 'asc', sinceMs: since, untilMs: until });
      expect(asc.pages).toEqual([500, 300]);
      expect(plain(asc.entries)).toEqual(inside);
      const desc = await pageThrough(store, 'window', { limit: 500, order: 'desc', sinceMs: since, untilMs: until });
      expect(desc.pages).toEqual([500, 300]);
      expect(plain(desc.entries)).toEqual([...inside].reverse());

      // One bound at a time.
      expect(plain(await store.readLog('window', { limit: 5, order: 'asc', sinceMs: since }))).toEqual(
        appended.slice(150, 155),
      );
      expect(plain(await store.readLog('window', { limit: 5, order: 'desc', untilMs: until }))).toEqual(
        appended.slice(945, 950).reverse(),
      );
      expect(plain(await store.readLog('window', { limit: 5, order: 'desc', sinceMs: since }))).toEqual(
        appended.slice(1195).reverse(),
      );
      expect(plain(await store.readLog('window', { limit: 5, order: 'asc', untilMs: until }))).toEqual(
        appended.slice(0, 5),
      );
      // A window of one instant, and windows with nothing in them.
      expect(plain(await store.readLog('window', { limit: 5, order: 'asc', sinceMs: since, untilMs: since }))).toEqual([
        appended[150],
      ]);
      expect(
        await store.readLog('window', {
          limit: 5,
          order: 'asc',
          sinceMs: appended[0]!.at - 10,
          untilMs: appended[0]!.at - 1,
        }),
      ).toEqual([]);
      expect(await store.readLog('window', { limit: 5, order: 'desc', sinceMs: appended.at(-1)!.at + 1 })).toEqual([]);
      expect(await store.readLog('window', { limit: 5, order: 'asc', sinceMs: until, untilMs: since })).toEqual([]);
    },
  );

  it('bad cursors do not crash: they read as no cursor or find nothing, never something outside the log', async () => {
    const store = await open(kind);
    const appended = await fill(store, 'cursors', 5);
    const ids = new Set(appended.map((e) => e.id));
    for (const cursor of [
      '',
      'abc',
      '-1',
      '1e9',
      '0-0-0',
      '(0',
      '+',
      '-',
      ']',
      "1' OR 1=1 --",
      '9'.repeat(40),
      '\u0000',
      'x'.repeat(5000),
      '1-',
      '-1-1',
      // Nothing is older than 0-0 (Redis refuses the interval that would say so).
      '0-0',
      '00-000',
    ]) {
      for (const order of ['asc', 'desc'] as const) {
        const page = await store.readLog('cursors', { limit: 10, order, cursor });
        expect(Array.isArray(page), `cursor ${JSON.stringify(cursor)}`).toBe(true);
        expect(page.length).toBeLessThanOrEqual(5);
        for (const entry of page) expect(ids.has(entry.id)).toBe(true);
        const sorted = [...page].sort(
          (a, b) => appended.findIndex((e) => e.id === a.id) - appended.findIndex((e) => e.id === b.id),
        );
        expect(page.map((e) => e.id)).toEqual(
          order === 'asc' ? sorted.map((e) => e.id) : sorted.reverse().map((e) => e.id),
        );
      }
    }
    // The log is intact afterwards.
    expect(plain(await store.readLog('cursors', { limit: 10, order: 'asc' }))).toEqual(appended);
  });
});

describe('Store log retention with an injected clock', () => {
  it('memory: an append drops every entry older than the retention, and nothing younger', async () => {
    let now = 1_700_000_000_000;
    const store = new MemoryStore(() => now);
    opened.push(store);
    const old = await store.append('r', 'old-1', now, RETENTION);
    await store.append('r', 'old-2', now + 10, RETENTION);
    now += RETENTION; // exactly at the edge: old-1 is as old as the retention, not older
    await store.append('r', 'edge', now, RETENTION);
    expect((await store.readLog('r', { limit: 10, order: 'asc' })).map((e) => e.value)).toEqual([
      'old-1',
      'old-2',
      'edge',
    ]);
    now += 5; // old-1 is now 5 ms past the retention, old-2 is not
    await store.append('r', 'later', now, RETENTION);
    const left = await store.readLog('r', { limit: 10, order: 'asc' });
    expect(left.map((e) => e.value)).toEqual(['old-2', 'edge', 'later']);
    expect(left.some((e) => e.id === old)).toBe(false);
    now += DAY;
    await store.append('r', 'last', now, RETENTION);
    expect((await store.readLog('r', { limit: 10, order: 'desc' })).map((e) => e.value)).toEqual([
      'last',
      'later',
      'edge',
    ]);
  });

  it('memory: reading never drops entries by itself (retention acts on append)', async () => {
    let now = 1_700_000_000_000;
    const store = new MemoryStore(() => now);
    await store.append('r', 'a', now, RETENTION);
    now += 10 * RETENTION;
    expect((await store.readLog('r', { limit: 10, order: 'asc' })).map((e) => e.value)).toEqual(['a']);
  });

  it('sqlite: old entries go on the next trimming append (every 100th), younger ones stay, ids keep ordering', async () => {
    let now = 1_700_000_000_000;
    const path = tempDb();
    const store = new SqliteStore(path, () => now);
    opened.push(store);
    // Append #1 trims (nothing to trim yet); 49 more without trimming.
    const old = await fill(store, 'r', 50, now);
    now += RETENTION + 100; // every old entry is now older than the retention
    const young = await fill(store, 'r', 50, now); // appends #51–#100: no trim yet
    expect(await store.readLog('r', { limit: 1000, order: 'asc' })).toHaveLength(100);
    // Append #101 trims before it inserts.
    const [trigger] = await fill(store, 'r', 1, now + 50);
    const left = await store.readLog('r', { limit: 1000, order: 'asc' });
    expect(plain(left)).toEqual([...young, trigger]);
    expect(left.some((e) => old.some((o) => o.id === e.id))).toBe(false);
    // Cursors keep working across the trim: after the last old id comes the first young one.
    expect((await store.readLog('r', { limit: 1, order: 'asc', cursor: old.at(-1)!.id }))[0]!.id).toBe(young[0]!.id);
    // The entries survive a reopen of the file (the embedded store is durable).
    await store.close();
    const again = new SqliteStore(path, () => now);
    opened.push(again);
    expect(plain(await again.readLog('r', { limit: 1000, order: 'asc' }))).toEqual([...young, trigger]);
  });

  it('sqlite: a batch trims at most 1,000 aged-out entries, oldest first, so it never holds the file long (a backlog goes over the next batches)', async () => {
    let now = 1_700_000_000_000;
    const store = new SqliteStore(tempDb(), () => now);
    opened.push(store);
    await store.appendBatch('r', Array.from({ length: 2_500 }, (_, i) => ({ value: `old-${i}`, at: now })), RETENTION);
    now += RETENTION + 100;
    const count = async () => (await store.readLog('r', { limit: 10_000, order: 'asc' })).length;
    await store.appendBatch('r', [{ value: 'new-1', at: now }], RETENTION);
    expect(await count()).toBe(2_500 - 1_000 + 1);
    expect((await store.readLog('r', { limit: 1, order: 'asc' }))[0]!.value).toBe('old-1000');
    await store.appendBatch('r', [{ value: 'new-2', at: now }], RETENTION);
    await store.appendBatch('r', [{ value: 'new-3', at: now }], RETENTION);
    expect((await store.readLog('r', { limit: 10, order: 'asc' })).map((e) => e.value)).toEqual(['new-1', 'new-2', 'new-3']);
  });

  it('sqlite: trimming is per stream (it trims the stream being appended to) and keeps what is within the retention', async () => {
    let now = 1_700_000_000_000;
    const store = new SqliteStore(tempDb(), () => now);
    opened.push(store);
    await store.append('other', 'other-old', now, RETENTION); // append #1 (trims 'other': nothing)
    await fill(store, 'r', 99, now); // #2–#100
    now += RETENTION - 1; // still within the retention
    await store.append('r', 'trigger', now, RETENTION); // #101 trims 'r', nothing is old enough
    expect(await store.readLog('r', { limit: 1000, order: 'asc' })).toHaveLength(100);
    now += 201; // the first 99 entries (at T0 … T0+98) are now past the retention; 'trigger' is not
    const fresh = await fill(store, 'r', 99, now); // #102–#200
    await store.append('r', 'trigger-2', now + 99, RETENTION); // #201 trims 'r'
    const left = await store.readLog('r', { limit: 1000, order: 'asc' });
    expect(left.map((e) => e.value)).toEqual(['trigger', ...fresh.map((e) => e.value), 'trigger-2']);
    // The other stream was not trimmed by appends to 'r'.
    expect((await store.readLog('other', { limit: 10, order: 'asc' })).map((e) => e.value)).toEqual(['other-old']);
  });

  it('redis: an append trims whole stream nodes older than the retention (MINID ~) and keeps the new entry', async () => {
    const prefix = redisPrefix();
    const store = new RedisStore(REDIS_URL, { prefix });
    opened.push(store);
    await store.ready();
    const client = new Redis(REDIS_URL, { keyPrefix: prefix });
    raw.push(client);
    // 300 entries written a year ago (explicit old stream ids), in the store's own stream format.
    const yearAgo = Date.now() - 365 * DAY;
    for (let i = 1; i <= 300; i++)
      await client.xadd('log:r', `${yearAgo}-${i}`, 'at', String(yearAgo), 'v', `old-${i}`);
    expect(await store.readLog('r', { limit: 1000, order: 'asc' })).toHaveLength(300);
    const id = await store.append('r', 'new', Date.now(), RETENTION);
    const left = await store.readLog('r', { limit: 1000, order: 'asc' });
    // Approximate trimming removes whole nodes (100 entries by default) only: most old entries are gone,
    // any left over are the newest of the old ones, and the new entry is there.
    expect(left.length).toBeLessThan(300);
    expect(left.at(-1)).toMatchObject({ id, value: 'new' });
    const oldLeft = left.slice(0, -1).map((e) => Number(e.value.slice(4)));
    expect(oldLeft).toEqual(
      oldLeft.length === 0 ? [] : Array.from({ length: oldLeft.length }, (_, i) => 301 - oldLeft.length + i),
    );
  });
});
