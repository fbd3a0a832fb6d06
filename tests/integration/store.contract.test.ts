import { chmodSync, mkdirSync, mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryStore } from '../../lib/store/memory';
import { RedisStore } from '../../lib/store/redis';
import { SqliteStore } from '../../lib/store/sqlite';
import { StoreUnavailableError, type Reservation, type Store } from '../../lib/store/types';
import { REDIS_URL } from '../fixtures/claims-session';
import { deleteKeysUnder, startRedisServer } from '../fixtures/redis-server';

/**
 * One contract, three backends: memory, SQLite (node:sqlite, a real file) and the test run's Redis (each
 * store under its own key prefix, deleted at the end).
 */
const opened: Store[] = [];
const prefixes: string[] = [];
afterAll(async () => {
  await Promise.all(opened.map((store) => store.close()));
  for (const prefix of prefixes) await deleteKeysUnder(REDIS_URL, prefix);
});

function redisPrefix(): string {
  const prefix = `keyward-test:${randomUUID()}:`;
  prefixes.push(prefix);
  return prefix;
}

const backends: Record<string, () => Promise<Store>> = {
  memory: async () => new MemoryStore(),
  sqlite: async () => new SqliteStore(join(mkdtempSync(join(tmpdir(), 'keyward-store-')), 'store.db')),
  redis: async () => {
    const store = new RedisStore(REDIS_URL, { prefix: redisPrefix() });
    await store.ready();
    return store;
  },
};

/** Two handles on the same state: two Redis connections, two SQLite instances on one file, or one memory store. */
const pairs: Record<string, () => Promise<[Store, Store]>> = {
  memory: async () => {
    const store = new MemoryStore();
    return [store, store];
  },
  sqlite: async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'keyward-store-')), 'shared.db');
    return [new SqliteStore(path), new SqliteStore(path)];
  },
  redis: async () => {
    const prefix = redisPrefix();
    const stores: [RedisStore, RedisStore] = [new RedisStore(REDIS_URL, { prefix }), new RedisStore(REDIS_URL, { prefix })];
    await Promise.all(stores.map((store) => store.ready()));
    return stores;
  },
};

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/**
 * A ttl long enough that "still there right after it was written" holds even when a loaded machine stalls
 * the test for a while; the tests then wait past it. (Waiting longer than needed is always safe.)
 */
const SHORT_TTL = 1_000;
const PAST_SHORT_TTL = SHORT_TTL + 200;

describe.each(Object.keys(backends))('Store contract: %s', (kind) => {
  const open = async () => {
    const store = await backends[kind]!();
    opened.push(store);
    return store;
  };

  it('gets, sets, overwrites and deletes', async () => {
    const store = await open();
    expect(await store.get('a')).toBeNull();
    await store.set('a', '1');
    await store.set('a', '2');
    expect(await store.get('a')).toBe('2');
    expect(await store.getMany(['a', 'missing', 'a'])).toEqual(['2', null, '2']);
    expect(await store.delete('a')).toBe(true);
    expect(await store.delete('a')).toBe(false);
    expect(await store.get('a')).toBeNull();
  });

  it('getMany answers any number of keys in order, expired and missing ones as null (400: the tickets a request line can carry)', async () => {
    const store = await open();
    const keys = Array.from({ length: 400 }, (_, i) => `many:${i}`);
    for (const i of [0, 7, 16, 17, 250, 399]) await store.set(keys[i]!, `v${i}`);
    await store.set('many:short', 'gone', SHORT_TTL);
    await new Promise((resolve) => setTimeout(resolve, PAST_SHORT_TTL));
    for (const count of [2, 16, 17, 400]) {
      const asked = [...keys.slice(0, count - 1), 'many:short'];
      const expected = asked.map((key) => (['many:0', 'many:7', 'many:16', 'many:17', 'many:250', 'many:399'].includes(key) ? `v${key.slice(5)}` : null));
      expect(await store.getMany(asked), `${count} keys`).toEqual(expected);
    }
  });

  it('expires values after their ttl', async () => {
    const store = await open();
    await store.set('short', 'x', SHORT_TTL);
    await store.set('long', 'y', 60_000);
    // An expired key is absent for setIfAbsent too.
    await store.set('lock', 'old', SHORT_TTL);
    expect(await store.get('short')).toBe('x');
    expect(await store.setIfAbsent('lock', 'other', 60_000)).toBe(false);
    await sleep(PAST_SHORT_TTL);
    expect(await store.get('short')).toBeNull();
    expect(await store.get('long')).toBe('y');
    expect(await store.setIfAbsent('lock', 'new', 60_000)).toBe(true);
    expect(await store.get('lock')).toBe('new');
  });

  it('setIfAbsent lets exactly one of many concurrent callers win', async () => {
    const store = await open();
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => store.setIfAbsent('once', `caller-${i}`, 10_000)));
    expect(results.filter(Boolean)).toHaveLength(1);
    const winner = results.indexOf(true);
    expect(await store.get('once')).toBe(`caller-${winner}`);
  });

  it('deleteIfEquals only deletes the holder’s value', async () => {
    const store = await open();
    await store.set('lock', 'holder-a', 10_000);
    expect(await store.deleteIfEquals('lock', 'holder-b')).toBe(false);
    expect(await store.get('lock')).toBe('holder-a');
    expect(await store.deleteIfEquals('lock', 'holder-a')).toBe(true);
    expect(await store.get('lock')).toBeNull();
  });

  it('replaceIfEquals swaps only the expected value, once under concurrency, and keeps the ttl', async () => {
    const store = await open();
    await store.set('cas', 'v1', 60_000);
    expect(await store.replaceIfEquals('cas', 'other', 'x')).toBe(false);
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => store.replaceIfEquals('cas', 'v1', `v2-${i}`)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await store.get('cas')).toBe(`v2-${results.indexOf(true)}`);
    expect(await store.replaceIfEquals('missing', 'v1', 'x')).toBe(false);
    expect(await store.get('missing')).toBeNull();
    await store.set('brief', 'a', SHORT_TTL);
    expect(await store.replaceIfEquals('brief', 'a', 'b')).toBe(true);
    await sleep(PAST_SHORT_TTL);
    expect(await store.get('brief')).toBeNull();
  });

  it('raise only ever raises a number: the largest of concurrent raises stays, a smaller one is refused', async () => {
    const store = await open();
    expect(await store.raise('mark', 1_000, 60_000)).toBe(true);
    expect(await store.get('mark')).toBe('1000');
    expect(await store.raise('mark', 999, 60_000)).toBe(false);
    expect(await store.raise('mark', 1_000, 60_000)).toBe(false);
    expect(await store.get('mark')).toBe('1000');
    // Two handles (two instances) raising at once, in any order: the largest value is the one kept.
    const [one, two] = await pairs[kind]!();
    opened.push(one, two);
    const values = Array.from({ length: 40 }, (_, i) => 5_000 + ((i * 17) % 40));
    const results = await Promise.all(values.map((value, i) => (i % 2 === 0 ? one : two).raise('shared', value, 60_000)));
    expect(await one.get('shared')).toBe(String(Math.max(...values)));
    expect(results.filter(Boolean).length).toBeGreaterThanOrEqual(1);
    // An expired mark is absent: any value sets it again, with its own ttl.
    await store.set('brief', '9000', SHORT_TTL);
    expect(await store.raise('brief', 10, SHORT_TTL)).toBe(false);
    await sleep(PAST_SHORT_TTL);
    expect(await store.raise('brief', 10, SHORT_TTL)).toBe(true);
    expect(await store.get('brief')).toBe('10');
    await sleep(PAST_SHORT_TTL);
    expect(await store.get('brief')).toBeNull();
    await expect(store.raise('mark', 1.5, 60_000)).rejects.toThrow(TypeError);
  });

  it('increments atomically under concurrency and keeps the ttl set at creation', async () => {
    const store = await open();
    const values = await Promise.all(Array.from({ length: 200 }, () => store.increment('counter', 1, 60_000)));
    expect(new Set(values).size).toBe(200);
    expect(Math.max(...values)).toBe(200);
    expect(await store.increment('counter', 5)).toBe(205);
    await store.increment('brief', 3, 60);
    await sleep(150);
    expect(await store.increment('brief', 1, 60_000)).toBe(1);
  });

  describe('reserve', () => {
    const entry = (key: string, amount: number, limit: number, ttlMs = 60_000): Reservation => ({ key, amount, limit, ttlMs });
    const openPair = async () => {
      const pair = await pairs[kind]!();
      opened.push(...pair);
      return pair;
    };

    it('adds to every counter or to none, up to and including each limit', async () => {
      const store = await open();
      const call = (budget: number) => store.reserve([entry('quota', 1, 3), entry('budget', budget, 100)]);
      expect(await call(40)).toEqual({ refused: -1, values: [1, 40] });
      expect(await call(40)).toEqual({ refused: -1, values: [2, 80] });
      // The budget would reach 120: nothing is added, not even to the quota.
      expect(await call(40)).toEqual({ refused: 1, values: [2, 80] });
      expect(await store.getMany(['quota', 'budget'])).toEqual(['2', '80']);
      expect(await call(20)).toEqual({ refused: -1, values: [3, 100] });
      expect(await call(0)).toEqual({ refused: 0, values: [3, 100] });
      expect(await store.getMany(['quota', 'budget'])).toEqual(['3', '100']);
    });

    it('names the first entry that would go over and returns every counter’s value, changing none', async () => {
      const store = await open();
      await store.reserve([entry('b', 5, 5), entry('c', 9, 9)]);
      expect(await store.reserve([entry('a', 1, 10), entry('b', 1, 5), entry('c', 1, 9)])).toEqual({ refused: 1, values: [0, 5, 9] });
      expect(await store.reserve([entry('c', 1, 9), entry('b', 1, 5)])).toEqual({ refused: 0, values: [9, 5] });
      expect(await store.getMany(['a', 'b', 'c'])).toEqual([null, '5', '9']);
    });

    it('shares counters with increment (settling adds or returns units)', async () => {
      const store = await open();
      expect(await store.increment('k', 7, 60_000)).toBe(7);
      expect(await store.reserve([entry('k', 3, 10)])).toEqual({ refused: -1, values: [10] });
      expect((await store.reserve([entry('k', 1, 10)])).refused).toBe(0);
      expect(await store.increment('k', -5)).toBe(5);
      expect(await store.reserve([entry('k', 5, 10)])).toEqual({ refused: -1, values: [10] });
      expect(await store.get('k')).toBe('10');
    });

    it('never refuses an amount of 0, even over the limit', async () => {
      const store = await open();
      await store.reserve([entry('full', 10, 10)]);
      expect(await store.reserve([entry('full', 0, 10)])).toEqual({ refused: -1, values: [10] });
      expect(await store.reserve([entry('full', 0, 5)])).toEqual({ refused: -1, values: [10] });
      expect(await store.reserve([entry('full', 0, 0), entry('other', 1, 1)])).toEqual({ refused: -1, values: [10, 1] });
      expect(await store.get('full')).toBe('10');
    });

    it('answers an empty list without touching anything', async () => {
      const store = await open();
      expect(await store.reserve([])).toEqual({ refused: -1, values: [] });
    });

    it.each<[string, Partial<Reservation>]>([
      ['a negative amount', { amount: -1 }],
      ['a fractional amount', { amount: 1.5 }],
      ['a NaN amount', { amount: Number.NaN }],
      ['an infinite amount', { amount: Number.POSITIVE_INFINITY }],
      ['an unsafe amount', { amount: 2 ** 53 }],
      ['a fractional limit', { limit: 1.5 }],
      ['a NaN limit', { limit: Number.NaN }],
      ['a zero ttl', { ttlMs: 0 }],
      ['a negative ttl', { ttlMs: -1 }],
      ['a fractional ttl', { ttlMs: 1.5 }],
    ])('throws a TypeError for %s and adds nothing', async (_, bad) => {
      const store = await open();
      await expect(store.reserve([entry('good', 1, 10), { ...entry('bad', 1, 10), ...bad }])).rejects.toBeInstanceOf(TypeError);
      expect(await store.getMany(['good', 'bad'])).toEqual([null, null]);
    });

    it('sets the ttl when it creates a counter, and does not extend it', async () => {
      const store = await open();
      await store.reserve([entry('brief', 1, 10, SHORT_TTL)]);
      await store.reserve([entry('brief', 1, 10, 60_000), entry('long', 1, 10, 60_000)]);
      await sleep(PAST_SHORT_TTL);
      expect(await store.get('brief')).toBeNull();
      expect(await store.get('long')).toBe('1');
      // An expired counter starts again from zero.
      expect(await store.reserve([entry('brief', 4, 4)])).toEqual({ refused: -1, values: [4] });
    });

    it('lets exactly `limit` of 200 concurrent reservations through, across two clients', async () => {
      const [a, b] = await openPair();
      const results = await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 ? a : b).reserve([entry('quota', 1, 50)])));
      const granted = results.filter((result) => result.refused === -1);
      expect(granted).toHaveLength(50);
      expect(results.filter((result) => result.refused === 0)).toHaveLength(150);
      // Each granted call saw its own value: no two reserved the same unit.
      expect(new Set(granted.map((result) => result.values[0]))).toEqual(new Set(Array.from({ length: 50 }, (_, i) => i + 1)));
      expect(await a.get('quota')).toBe('50');
      expect(await b.get('quota')).toBe('50');
    });

    it('keeps several counters consistent under concurrency: the tightest limit decides for all', async () => {
      const [a, b] = await openPair();
      const results = await Promise.all(
        Array.from({ length: 200 }, (_, i) => (i % 2 ? a : b).reserve([entry('requests', 1, 50), entry('units', 3, 120)])),
      );
      expect(results.filter((result) => result.refused === -1)).toHaveLength(40);
      expect(results.filter((result) => result.refused === 1)).toHaveLength(160);
      expect(await a.getMany(['requests', 'units'])).toEqual(['40', '120']);
    });
  });

  describe('counter hashes (usage aggregates)', () => {
    const later = () => Date.now() + 3_600_000;

    it('adds to fields (created at 0) and reads every field of each hash in order, {} where absent', async () => {
      const store = await open();
      const at = later();
      await store.incrementHashes([
        { key: 'h1', field: '["openai","/chat"] c', by: 2, expiresAt: at },
        { key: 'h1', field: '["openai","/chat"] c', by: 3, expiresAt: at },
        { key: 'h1', field: '["openai",null] bo', by: 9_007_199_254_740, expiresAt: at },
        { key: 'h2', field: 'x y', by: 1, expiresAt: at },
      ]);
      await store.incrementHashes([{ key: 'h2', field: 'x y', by: 4, expiresAt: at }]);
      await store.incrementHashes([]);
      expect(await store.readHashes(['h2', 'missing', 'h1'])).toEqual([
        { 'x y': 5 },
        {},
        { '["openai","/chat"] c': 5, '["openai",null] bo': 9_007_199_254_740 },
      ]);
      expect(await store.readHashes([])).toEqual([]);
      // Only the fields asked for (the ones the hash has), in every hash read.
      expect(await store.readHashes(['h1', 'missing', 'h2'], ['["openai","/chat"] c', 'x y', 'absent'])).toEqual([
        { '["openai","/chat"] c': 5 },
        {},
        { 'x y': 5 },
      ]);
      expect(await store.readHashes(['h1'], [])).toEqual([{}]);
      // One field alone: 0 where the field or the hash is absent.
      expect(await store.readHashField('h1', '["openai","/chat"] c')).toBe(5);
      expect(await store.readHashField('h2', 'x y')).toBe(5);
      expect(await store.readHashField('h2', 'other')).toBe(0);
      expect(await store.readHashField('missing', 'x y')).toBe(0);
    });

    it('keeps hashes apart from plain keys of the same name', async () => {
      const store = await open();
      await store.set('same', 'plain');
      await store.incrementHashes([{ key: 'same', field: 'f', by: 1, expiresAt: later() }]);
      expect(await store.get('same')).toBe('plain');
      expect(await store.readHashes(['same'])).toEqual([{ f: 1 }]);
    });

    it('refuses fractional increments and a missing expiry, writing nothing', async () => {
      const store = await open();
      await expect(store.incrementHashes([{ key: 'bad', field: 'f', by: 1.5, expiresAt: later() }])).rejects.toThrow(TypeError);
      await expect(store.incrementHashes([{ key: 'bad', field: 'f', by: 1, expiresAt: 0 }])).rejects.toThrow(TypeError);
      expect(await store.readHashes(['bad'])).toEqual([{}]);
    });

    it('forgets a hash at its expiry time, and starts it again from 0', async () => {
      const store = await open();
      await store.incrementHashes([{ key: 'short', field: 'f', by: 7, expiresAt: Date.now() + SHORT_TTL }]);
      expect(await store.readHashes(['short'])).toEqual([{ f: 7 }]);
      await sleep(PAST_SHORT_TTL);
      expect(await store.readHashes(['short'])).toEqual([{}]);
      expect(await store.readHashField('short', 'f')).toBe(0);
      await store.incrementHashes([{ key: 'short', field: 'f', by: 1, expiresAt: later() }]);
      expect(await store.readHashes(['short'])).toEqual([{ f: 1 }]);
    });

    it('counts every increment from two clients writing concurrently (one set of numbers)', async () => {
      const [a, b] = await pairs[kind]!();
      if (a !== b) opened.push(a, b);
      const at = later();
      await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          (i % 2 ? a : b).incrementHashes([
            { key: 'shared', field: 'c', by: 1, expiresAt: at },
            { key: 'shared', field: 'bo', by: i, expiresAt: at },
          ]),
        ),
      );
      const expected = { c: 50, bo: (49 * 50) / 2 };
      expect(await a.readHashes(['shared'])).toEqual([expected]);
      expect(await b.readHashes(['shared'])).toEqual([expected]);
    });
  });

  it('answers ping', async () => {
    const store = await open();
    await expect(store.ping()).resolves.toBeUndefined();
  });
});

describe('SQLite: two instances on one file share state atomically', () => {
  it('counts every increment from both', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'keyward-store-')), 'shared.db');
    const a = new SqliteStore(path);
    const b = new SqliteStore(path);
    opened.push(a, b);
    await Promise.all(Array.from({ length: 100 }, (_, i) => (i % 2 ? a : b).increment('n', 1)));
    expect(await a.get('n')).toBe('100');
    expect(await b.setIfAbsent('k', 'b', 10_000)).toBe(true);
    expect(await a.setIfAbsent('k', 'a', 10_000)).toBe(false);
  });
});

/** The next `name` event (unlike events.once, ioredis's reconnect 'error' events do not reject it). */
const event = (emitter: NodeJS.EventEmitter, name: string) =>
  new Promise<void>((resolve) => emitter.once(name, () => resolve()));

describe('Redis down: fail closed, then recover by itself', () => {
  it('rejects with StoreUnavailableError while Redis is down and works again when it returns', async () => {
    // A redis-server of this test's own, killed and restarted on the same port.
    let server = await startRedisServer();
    const store = new RedisStore(server.url, { commandTimeoutMs: 500 });
    opened.push(store);
    try {
      await store.ready();
      await store.set('k', 'v');
      expect(await store.get('k')).toBe('v');

      const lost = event(store.client, 'close');
      await server.kill();
      await lost;
      await expect(store.get('k')).rejects.toBeInstanceOf(StoreUnavailableError);
      await expect(store.setIfAbsent('lock', 'x', 1000)).rejects.toBeInstanceOf(StoreUnavailableError);

      // ioredis reconnects in the background: wait for that event, not for time.
      const back = event(store.client, 'ready');
      server = await startRedisServer({ port: server.port });
      await back;
      // The new server is empty: what matters is that commands answer again.
      expect(await store.get('k')).toBeNull();
      await store.set('k', 'back');
      expect(await store.get('k')).toBe('back');
    } finally {
      await server.stop();
    }
  });
});

describe('SQLite file', () => {
  it('is created private (0600), with its -wal and -shm files, in a folder others can read', async () => {
    const folder = join(mkdtempSync(join(tmpdir(), 'keyward-store-mode-')), 'shared');
    mkdirSync(folder, { mode: 0o755 });
    chmodSync(folder, 0o755); // whatever the umask
    const path = join(folder, 'keyward.db');
    const store = new SqliteStore(path);
    opened.push(store);
    await store.set('rev:sid:x', '1', 60_000);
    for (const file of [path, `${path}-wal`, `${path}-shm`]) expect(statSync(file).mode & 0o777, file).toBe(0o600);
  });

  it('getMany prepares a statement per count for a few keys only: counts a request chooses reuse one statement', async () => {
    const store = new SqliteStore(join(mkdtempSync(join(tmpdir(), 'keyward-store-many-')), 'keyward.db'));
    opened.push(store);
    const db = (store as unknown as { db: { prepare: (sql: string) => unknown } }).db;
    const prepare = db.prepare.bind(db);
    let prepared = 0;
    db.prepare = (sql) => (prepared++, prepare(sql));
    await store.set('k:3', 'three');
    // What a refused upgrade's tickets make, one count per request: none of them prepares anything.
    for (let count = 17; count <= 200; count++) {
      const answer = await store.getMany(Array.from({ length: count }, (_, i) => `k:${i}`));
      expect(answer[3]).toBe('three');
    }
    expect(prepared).toBe(0);
    // A few keys, as the call's own reads ask: prepared once per count, then kept.
    for (let round = 0; round < 3; round++) for (let count = 2; count <= 16; count++) await store.getMany(Array.from({ length: count }, (_, i) => `k:${i}`));
    expect(prepared).toBe(15);
  });
});
