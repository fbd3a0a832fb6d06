import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../lib/store/redis';
import { REDIS_URL } from '../fixtures/claims-session';
import { deleteKeysUnder, monitorRedis } from '../fixtures/redis-server';

/**
 * The audit writer's batches on Redis (lib/store/redis.ts): a batch of log entries, and a batch of usage
 * increments, each go out as one script, not one command per entry. Watched with MONITOR on the test run's
 * Redis, counting only the commands that touch this test's key prefix (other tests may share the server).
 * What the batches write is checked by the store contracts (store.log.test.ts, store.contract.test.ts).
 */
const prefix = `keyward-test-${randomUUID()}:`;
const store = new RedisStore(REDIS_URL, { prefix });
const raw = new Redis(REDIS_URL, { keyPrefix: prefix });

afterAll(async () => {
  await store.close();
  raw.disconnect();
  await deleteKeysUnder(REDIS_URL, prefix);
});

/** The top-level commands (not those a script runs) that name a key under this test's prefix, while `work` runs. */
async function commandsDuring(work: () => Promise<void>): Promise<string[]> {
  const seen: string[] = [];
  const monitor = await monitorRedis(REDIS_URL, ({ source, argv }) => {
    if (source !== 'lua' && argv.some((arg) => arg.startsWith(prefix))) seen.push(argv[0]!.toLowerCase());
  });
  try {
    await work();
    // MONITOR's feed may trail the replies: PING through the same server and wait for it to show up.
    await raw.ping(`${prefix}done`);
    const deadline = Date.now() + 5_000;
    while (!seen.includes('ping') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  } finally {
    monitor.stop();
  }
  return seen.filter((name) => name !== 'ping');
}

describe('Redis store: batched writes, one script per batch', () => {
  it('appends a batch of 200 log entries with one command, in order', async () => {
    await store.ready();
    const base = Date.now();
    const entries = Array.from({ length: 200 }, (_, i) => ({ value: JSON.stringify({ n: i, text: 'line\nwith "quotes"' }), at: base + i }));
    const commands = await commandsDuring(() => store.appendBatch('batches', entries, 3_600_000));
    expect(commands).toHaveLength(1);
    expect(['evalsha', 'eval']).toContain(commands[0]);
    const read = await store.readLog('batches', { limit: 500, order: 'asc' });
    expect(read.map(({ at, value }) => ({ at, value }))).toEqual(entries);
  });

  it('trims what is older than the retention before it appends, and nothing newer', async () => {
    const now = Date.now();
    // Written with explicit ids, as entries written ten minutes and thirty seconds ago would have been.
    await raw.xadd('log:aged', `${now - 600_000}-0`, 'at', String(now - 600_000), 'v', 'old');
    await raw.xadd('log:kept', `${now - 600_000}-0`, 'at', String(now - 600_000), 'v', 'old');
    await raw.xadd('log:kept', `${now - 30_000}-0`, 'at', String(now - 30_000), 'v', 'recent');
    await store.appendBatch('aged', [{ value: 'new', at: now }], 60_000);
    await store.appendBatch('kept', [{ value: 'new', at: now }], 60_000);
    const values = async (stream: string) => (await store.readLog(stream, { limit: 10, order: 'asc' })).map((entry) => entry.value);
    expect(await values('aged')).toEqual(['new']);
    // Trimming is approximate (MINID ~): a stream node goes only when all of it is older, so the old entry
    // that shares a node with a recent one may stay; the recent one always does.
    expect((await values('kept')).slice(-2)).toEqual(['recent', 'new']);
  });

  it('increments many fields of several hashes with one command, each hash expiring at the last time given for it', async () => {
    const soon = Date.now() + 3_600_000;
    const later = soon + 3_600_000;
    const increments = Array.from({ length: 30 }, (_, i) => ({ key: `usage-${i % 3}`, field: `f${i % 5}`, by: i + 1, expiresAt: i === 29 ? later : soon }));
    const commands = await commandsDuring(() => store.incrementHashes(increments));
    expect(commands).toHaveLength(1);
    expect(['evalsha', 'eval']).toContain(commands[0]);

    const expected = [{}, {}, {}] as Record<string, number>[];
    for (const { key, field, by } of increments) {
      const hash = expected[Number(key.slice(-1))]!;
      hash[field] = (hash[field] ?? 0) + by;
    }
    expect(await store.readHashes(['usage-0', 'usage-1', 'usage-2'])).toEqual(expected);
    // The 30th increment (i = 29) is on usage-2: its hash expires at `later`, the others at `soon`.
    const expiries = await Promise.all(['usage-0', 'usage-1', 'usage-2'].map((key) => raw.pexpiretime(`hash:${key}`)));
    expect(expiries).toEqual([soon, soon, later]);
  });
});
