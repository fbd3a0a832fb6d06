import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../lib/store/redis';
import { freePort } from '../fixtures/app-server';
import { capturingLogger } from '../fixtures/claims-session';
import { startRedisServer, type RedisServer } from '../fixtures/redis-server';
import { randomSecret } from '../fixtures/secrets';

/**
 * What the log says about the Redis behind REDIS_URL, each case on a redis-server of this file's own:
 * - a Redis that lost its data (restarted with nothing on disk) while instances used it: each of them logs it once;
 * - a Redis that keeps nothing on disk: a warning once, naming host:port only;
 * - a connection that fails (no password, a wrong one, nothing listening): each kind once per outage, never the
 *   password, and once when it connects again.
 */
const servers: RedisServer[] = [];
const closers: Array<() => unknown> = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  for (const server of servers) await server.stop();
});

async function server(port?: number): Promise<RedisServer> {
  const started = await startRedisServer({ port });
  servers.push(started);
  return started;
}

function admin(url: string): Redis {
  const redis = new Redis(url, { maxRetriesPerRequest: 1 });
  redis.on('error', () => {});
  closers.push(() => redis.disconnect());
  return redis;
}

function store(url: string, prefix = `keyward-test:${randomUUID()}:`) {
  const { logger, lines } = capturingLogger();
  const opened = new RedisStore(url, { prefix, commandTimeoutMs: 500, logger });
  closers.push(() => opened.close());
  const parsed = () => lines.map((line) => JSON.parse(line) as { level: number; msg: string; redis?: string; problem?: string });
  return { store: opened, lines, parsed };
}

/** Resolves once the store's client has emitted `count` more 'error' events (ioredis retries on its own). */
function errors(opened: RedisStore, count: number): Promise<void> {
  let seen = 0;
  return new Promise((resolve) => {
    const onError = () => {
      if (++seen < count) return;
      opened.client.off('error', onError);
      resolve();
    };
    opened.client.on('error', onError);
  });
}

const lossLines = (lines: ReturnType<ReturnType<typeof store>['parsed']>) => lines.filter((line) => line.msg.includes('lost its data'));

describe('a Redis restarted empty', () => {
  it('is noticed by each instance that used it: one error each, naming what was lost and AOF', async () => {
    const first = await server();
    const prefix = `keyward-test:${randomUUID()}:`;
    const a = store(first.url, prefix);
    const b = store(first.url, prefix);
    await a.store.set('rev:key:svc:abc', '1');
    await b.store.get('rev:key:svc:abc');
    // Both have seen the marker (written once, by whichever checked first) before their first command was answered.
    expect(await admin(first.url).get(`${prefix}store-id`)).not.toBeNull();

    await admin(first.url).shutdown('NOSAVE').catch(() => {});
    await first.stop();
    const again = await server(first.port);
    await expect.poll(() => lossLines(a.parsed()).length, { timeout: 10_000 }).toBe(1);
    await expect.poll(() => lossLines(b.parsed()).length, { timeout: 10_000 }).toBe(1);

    for (const line of [...lossLines(a.parsed()), ...lossLines(b.parsed())]) {
      expect(line.level).toBe(50);
      expect(line.redis).toBe(`127.0.0.1:${first.port}`);
      for (const lost of ['key revocations', 'managed key versions', 'session revocations', 'budgets', 'detector marks', 'appendonly yes']) {
        expect(line.msg).toContain(lost);
      }
    }
    // The marker is back: serving on, nothing more is logged.
    expect(await admin(again.url).get(`${prefix}store-id`)).not.toBeNull();
    await a.store.get('x');
    await b.store.get('x');
    expect(lossLines(a.parsed())).toHaveLength(1);
    expect(lossLines(b.parsed())).toHaveLength(1);
    await admin(again.url).del(`${prefix}store-id`);
  });
});

describe('a Redis that keeps nothing on disk', () => {
  const persistenceLines = (lines: ReturnType<ReturnType<typeof store>['parsed']>) => lines.filter((line) => line.msg.includes('nothing on disk'));

  it('is warned about once, naming host:port and never the password', async () => {
    const { url, port } = await server();
    const password = randomSecret('redis-pass');
    await admin(url).config('SET', 'requirepass', password);
    const { store: opened, lines, parsed } = store(`redis://:${password}@127.0.0.1:${port}`);
    await opened.set('k', 'v');
    expect(persistenceLines(parsed())).toHaveLength(1);
    const [line] = persistenceLines(parsed());
    expect(line).toMatchObject({ level: 40, redis: `127.0.0.1:${port}` });
    expect(line!.msg).toContain('appendonly yes');
    // Reconnected: not warned again.
    const back = new Promise<void>((resolve) => opened.client.once('ready', () => resolve()));
    opened.client.disconnect(true);
    await back;
    await opened.get('k');
    expect(persistenceLines(parsed())).toHaveLength(1);
    expect(lines.join('\n')).not.toContain(password);
  });

  it('is not warned about when AOF is on', async () => {
    const { url } = await server();
    await admin(url).config('SET', 'appendonly', 'yes');
    const { store: opened, parsed } = store(url);
    // The connection's checks are done before its first command is answered.
    await opened.set('k', 'v');
    expect(await admin(url).dbsize()).toBe(2);
    expect(persistenceLines(parsed())).toEqual([]);
  });
});

describe('a connection that fails', () => {
  const problemLines = (lines: ReturnType<ReturnType<typeof store>['parsed']>, problem: string) => lines.filter((line) => line.problem === problem);
  const againLines = (lines: ReturnType<ReturnType<typeof store>['parsed']>) => lines.filter((line) => line.msg.includes('connected to Redis again'));

  it('a Redis that wants a password REDIS_URL does not give: logged once per outage, and once when it connects', async () => {
    const { url, port } = await server();
    const password = randomSecret('redis-pass');
    const redis = admin(url);
    await redis.config('SET', 'requirepass', password);
    const { store: opened, parsed } = store(`redis://127.0.0.1:${port}`);
    await errors(opened, 3);
    const logged = problemLines(parsed(), 'auth-required');
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ level: 50, redis: `127.0.0.1:${port}` });
    expect(logged[0]!.msg).toContain('REDIS_URL');
    expect(logged[0]!.msg).toContain('password');

    await redis.config('SET', 'requirepass', '');
    await expect.poll(() => againLines(parsed()).length, { timeout: 10_000 }).toBe(1);
    await opened.set('k', 'v');
    expect(problemLines(parsed(), 'auth-required')).toHaveLength(1);
  });

  it('a wrong password: logged once, naming host:port, never the password', async () => {
    const { url, port } = await server();
    const password = randomSecret('redis-pass');
    const wrong = randomSecret('wrong-pass');
    await admin(url).config('SET', 'requirepass', password);
    const { store: opened, lines, parsed } = store(`redis://:${wrong}@127.0.0.1:${port}`);
    await errors(opened, 3);
    const logged = problemLines(parsed(), 'auth-failed');
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ level: 50, redis: `127.0.0.1:${port}` });
    expect(lines.join('\n')).not.toContain(wrong);
    expect(lines.join('\n')).not.toContain(password);
  });

  it('an instance started while Redis is down: logged once, and once when Redis is there', async () => {
    const port = await freePort();
    const password = randomSecret('redis-pass');
    const { store: opened, lines, parsed } = store(`redis://:${password}@127.0.0.1:${port}`);
    await errors(opened, 3);
    const logged = problemLines(parsed(), 'refused');
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ level: 50, redis: `127.0.0.1:${port}` });

    await server(port);
    await expect.poll(() => againLines(parsed()).length, { timeout: 10_000 }).toBe(1);
    expect(problemLines(parsed(), 'refused')).toHaveLength(1);
    expect(lines.join('\n')).not.toContain(password);
  });
});
