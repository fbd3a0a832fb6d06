import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime } from '../../lib/core/runtime';
import { RedisStore } from '../../lib/store/redis';
import { StoreUnavailableError } from '../../lib/store/types';
import { capturingLogger, claimsSessionCookie, responseText } from '../fixtures/claims-session';
import { startRedisServer, type RedisServer } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';

/**
 * Two ways a Redis that answers could still lose what Keyward relies on, each on a redis-server of this file's own:
 * - an evicting `maxmemory-policy` drops keys with a TTL under memory pressure, and every revocation mark, limit
 *   counter and reuse mark has one: the store refuses to serve such a Redis (503 store_unavailable);
 * - a command whose reply was lost with the connection is not sent again on reconnect: it fails, and what it did
 *   on the server stays done once.
 */
const ORIGIN = 'https://app.keyward.test';
const servers: RedisServer[] = [];
const closers: Array<() => unknown> = [];
afterAll(async () => {
  for (const close of closers.reverse()) await close();
  for (const server of servers) await server.stop();
});

async function server(): Promise<RedisServer> {
  const started = await startRedisServer();
  servers.push(started);
  return started;
}

/** A client of the test's own on `url`, to configure the server and read what the store wrote. */
function admin(url: string): Redis {
  const redis = new Redis(url, { maxRetriesPerRequest: 1 });
  closers.push(() => redis.disconnect());
  return redis;
}

function store(url: string, logger = capturingLogger().logger): RedisStore {
  const opened = new RedisStore(url, { prefix: `keyward-test:${randomUUID()}:`, commandTimeoutMs: 500, logger });
  closers.push(() => opened.close());
  return opened;
}

/** The next `name` event (ioredis's reconnect 'error' events do not reject it). */
const event = (emitter: NodeJS.EventEmitter, name: string) => new Promise<void>((resolve) => emitter.once(name, () => resolve()));

/** Drops the store's connection and waits until ioredis has made a new one. */
async function reconnect(opened: RedisStore): Promise<void> {
  const back = event(opened.client, 'ready');
  opened.client.disconnect(true);
  await back;
}

const policyLines = (lines: string[]) => lines.filter((line) => line.includes('maxmemory-policy'));

describe('Redis with an evicting maxmemory-policy: the store refuses to serve (fail closed)', () => {
  it('refuses every operation with StoreUnavailableError, logs the setting once per connect, and serves once it is noeviction', async () => {
    const { url } = await server();
    const redis = admin(url);
    await redis.config('SET', 'maxmemory', '64mb');
    await redis.config('SET', 'maxmemory-policy', 'volatile-lru');
    const { logger, lines } = capturingLogger();
    const refused = store(url, logger);

    await expect(refused.get('rev:sid:x')).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(refused.set('rev:sid:x', '1', 60_000)).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(refused.reserve([{ key: 'meter:budget', amount: 100, limit: 1000, ttlMs: 60_000 }])).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(refused.round([{ key: 'rev:sid:x', stopIfPresent: true }], [{ key: 'rl|r:u:ada', points: 1, windowSeconds: 60, limit: 10 }])).rejects.toBeInstanceOf(
      StoreUnavailableError,
    );
    await expect(refused.ping()).rejects.toBeInstanceOf(StoreUnavailableError);
    // The sign-in limiter talks to the connection itself, after this check.
    await expect(refused.connected()).rejects.toBeInstanceOf(StoreUnavailableError);
    expect(await redis.dbsize()).toBe(0);

    // One error line for this connection, naming the setting, its value and what to set.
    const logged = policyLines(lines);
    expect(logged).toHaveLength(1);
    const line = JSON.parse(logged[0]!) as { level: number; msg: string; setting: string; value: string };
    expect(line.level).toBe(50);
    expect(line).toMatchObject({ setting: 'maxmemory-policy', value: 'volatile-lru' });
    expect(line.msg).toContain('maxmemory-policy noeviction');

    // Fixed on the server: the next connection serves.
    await redis.config('SET', 'maxmemory-policy', 'noeviction');
    await reconnect(refused);
    await refused.set('rev:sid:x', '1', 60_000);
    expect(await refused.get('rev:sid:x')).toBe('1');
    expect(policyLines(lines)).toHaveLength(1);

    // And every connection is checked again (a failover may land on a node configured otherwise).
    await redis.config('SET', 'maxmemory-policy', 'allkeys-lru');
    await reconnect(refused);
    await expect(refused.get('rev:sid:x')).rejects.toBeInstanceOf(StoreUnavailableError);
    expect(policyLines(lines)).toHaveLength(2);
    expect(policyLines(lines)[1]).toContain('allkeys-lru');
  });

  it('a proxied call answers 503 store_unavailable, and the log never holds the password', async () => {
    const { url, port } = await server();
    const password = randomSecret('redis-pass');
    const redis = admin(url);
    await redis.config('SET', 'maxmemory', '64mb');
    await redis.config('SET', 'maxmemory-policy', 'volatile-lru');
    await redis.config('SET', 'requirepass', password);
    const secrets = testSessionSecrets();
    const { logger, lines } = capturingLogger();
    const evicting = store(`redis://:${password}@127.0.0.1:${port}`, logger);
    const runtime = createRuntime({
      env: { ...secrets, SVC_KEY: randomSecret('svc'), KEYWARD_ALLOWED_ORIGINS: ORIGIN },
      upstreams: [
        defineUpstream('svc', {
          baseUrl: 'http://127.0.0.1:9/v1/',
          auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
          routes: [{ method: 'GET', path: '/items/:id' }],
        }),
      ],
      store: evicting,
      logger,
    });
    closers.push(() => (runtime.dispatcher as { close?: () => Promise<void> }).close?.());
    const cookie = await claimsSessionCookie(secrets.AUTH_SECRET, { sub: 'local:ada' });
    const request = new Request(`${ORIGIN}/api/proxy/svc/items/1`, { headers: { cookie, 'x-keyward-csrf': '1' } });
    const { status, body } = await responseText(await handleProxy(request, { upstream: 'svc', path: ['items', '1'] }, runtime));
    expect(status, body).toBe(503);
    expect((JSON.parse(body) as { error: { code: string } }).error.code).toBe('store_unavailable');
    expect(policyLines(lines)).toHaveLength(1);
    expect(lines.join('\n')).not.toContain(password);
  });

  it('serves a Redis whose user may not run INFO (the policy cannot be known), with a warning naming the setting and INFO', async () => {
    const { url, port } = await server();
    const password = randomSecret('acl-pass');
    const redis = admin(url);
    await redis.call('ACL', 'SETUSER', 'keyward', 'on', `>${password}`, '~*', '+@all', '-info');
    const { logger, lines } = capturingLogger();
    const blind = store(`redis://keyward:${password}@127.0.0.1:${port}`, logger);
    await blind.set('k', 'v');
    expect(await blind.get('k')).toBe('v');
    const logged = policyLines(lines);
    expect(logged).toHaveLength(1);
    expect(logged[0]).toContain('INFO');
    expect(JSON.parse(logged[0]!)).toMatchObject({ level: 40 });
    expect(lines.join('\n')).not.toContain(password);
  });

  it('reads the policy again on a live connection: fixed, it serves within the recheck; made evicting, it is refused; each change logged once', async () => {
    const { url } = await server();
    const redis = admin(url);
    await redis.config('SET', 'maxmemory-policy', 'allkeys-lru');
    const { logger, lines } = capturingLogger();
    const live = new RedisStore(url, { prefix: `keyward-test:${randomUUID()}:`, commandTimeoutMs: 500, logger, policyRecheck: { refusedMs: 100, servingMs: 100 } });
    closers.push(() => live.close());
    await expect(live.get('k')).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(live.get('k')).rejects.toBeInstanceOf(StoreUnavailableError);

    // No reconnection: the operator's CONFIG SET is seen on the same connection.
    await redis.config('SET', 'maxmemory-policy', 'noeviction');
    await expect.poll(() => live.get('k').then(() => 'served', () => 'refused'), { timeout: 5_000 }).toBe('served');

    await redis.config('SET', 'maxmemory-policy', 'volatile-lru');
    await expect.poll(() => live.get('k').then(() => 'served', () => 'refused'), { timeout: 5_000 }).toBe('refused');
    const values = policyLines(lines).map((line) => (JSON.parse(line) as { value: string }).value);
    expect(values).toEqual(['allkeys-lru', 'volatile-lru']);
  });

  it("re-reads the policy once at a time in the background, not once per command waiting for it", async () => {
    const { url } = await server();
    const redis = admin(url);
    const live = new RedisStore(url, { prefix: `keyward-test:${randomUUID()}:`, commandTimeoutMs: 500, logger: capturingLogger().logger, policyRecheck: { refusedMs: 100, servingMs: 100 } });
    closers.push(() => live.close());
    await live.get('k');
    // INFO calls as Redis counts them (this client's own INFO commandstats included: read twice, the difference).
    const infoCalls = async () => Number(/cmdstat_info:calls=(\d+)/.exec(await redis.info('commandstats'))?.[1] ?? 0);
    await new Promise((resolve) => setTimeout(resolve, 150));
    const before = await infoCalls();
    const started = Date.now();
    await Promise.all(Array.from({ length: 200 }, () => live.get('k')));
    const took = Date.now() - started;
    await new Promise((resolve) => setTimeout(resolve, 50));
    // This client's second INFO commandstats (1), the store's re-read (1), and one more for each full interval the
    // burst lasted on a busy machine: never one per command (200).
    expect((await infoCalls()) - before).toBeLessThanOrEqual(2 + Math.floor(took / 100));
  });

  it('serves a Redis left at the default policy (noeviction)', async () => {
    const { url } = await server();
    const { logger, lines } = capturingLogger();
    const fine = store(url, logger);
    await fine.set('k', 'v');
    expect(await fine.get('k')).toBe('v');
    expect(policyLines(lines)).toEqual([]);
  });
});

/**
 * A loopback TCP proxy between the store and Redis that, once armed, swallows the next reply from Redis and
 * resets both sides, as a network blip or a load balancer closing a connection would after Redis ran a command.
 */
async function replyDroppingProxy(target: number): Promise<{ port: number; arm(): void; dropped: Promise<void> }> {
  let armed = false;
  let onDropped!: () => void;
  let dropped = new Promise<void>((resolve) => (onDropped = resolve));
  const proxy = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    client.pipe(upstream);
    upstream.on('data', (chunk) => {
      if (armed) {
        armed = false;
        client.resetAndDestroy();
        upstream.destroy();
        onDropped();
        return;
      }
      client.write(chunk);
    });
    client.on('error', () => {});
    upstream.on('error', () => {});
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', () => resolve()));
  closers.push(() => new Promise<void>((resolve) => proxy.close(() => resolve())));
  return {
    port: (proxy.address() as net.AddressInfo).port,
    arm: () => {
      armed = true;
      dropped = new Promise<void>((resolve) => (onDropped = resolve));
    },
    get dropped() {
      return dropped;
    },
  };
}

describe('a reply lost with the connection: the command is not sent again', () => {
  it('reserve, round and a give-back fail as the store being unavailable, and each counted exactly once', async () => {
    const { url, port } = await server();
    const redis = admin(url);
    const proxy = await replyDroppingProxy(port);
    const prefix = `keyward-test:${randomUUID()}:`;
    const opened = new RedisStore(`redis://127.0.0.1:${proxy.port}`, { prefix, commandTimeoutMs: 500, logger: capturingLogger().logger });
    closers.push(() => opened.close());
    await opened.set('warm', '1');

    const lost = async <T>(operation: () => Promise<T>) => {
      const back = event(opened.client, 'ready');
      proxy.arm();
      await expect(operation()).rejects.toBeInstanceOf(StoreUnavailableError);
      await proxy.dropped;
      await back;
      // A command resent on reconnect would have gone out before this one.
      await opened.ping();
    };

    await lost(() => opened.reserve([{ key: 'meter:budget', amount: 100, limit: 1000, ttlMs: 60_000 }]));
    expect(await redis.get(`${prefix}meter:budget`)).toBe('100');

    await lost(() => opened.round([], [{ key: 'rl|r:u:ada', points: 1, windowSeconds: 60, limit: 10 }]));
    expect(await redis.get(`${prefix}rl|r:u:ada`)).toBe('1');

    await lost(() => opened.increment('meter:budget', -40, 60_000));
    expect(await redis.get(`${prefix}meter:budget`)).toBe('60');

    await lost(() => opened.appendBatch('audit', [{ value: '{"type":"call"}', at: Date.now() }], 3_600_000));
    expect(await redis.xlen(`${prefix}log:audit`)).toBe(1);
  });
});
