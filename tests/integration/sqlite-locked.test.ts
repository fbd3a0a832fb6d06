import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { handleSession } from '../../lib/core/api/session';
import { AuditLog, type CallRecord } from '../../lib/core/audit/audit';
import { defineUpstream } from '../../lib/core/config/load';
import { handleProxy } from '../../lib/core/pipeline';
import { createRuntime, type Runtime } from '../../lib/core/runtime';
import { SqliteStore } from '../../lib/store/sqlite';
import { capturingLogger } from '../fixtures/claims-session';
import { event } from '../fixtures/detector';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { sessionCookie } from '../fixtures/session';
import { holdWriteLock, type HeldLock } from '../fixtures/sqlite-lock';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';

/**
 * The embedded store's file locked by another process (an operator's `sqlite3` session in BEGIN IMMEDIATE, a long
 * write, a VACUUM), held by a real second connection in a child process. Keyward must not wait on it: node:sqlite
 * waits for a lock on the event loop, so a wait stalls every request of the process, not just the one that writes.
 *
 * The holder lets go by itself after LOCK_BOUND_MS, a bound so these tests cannot hang: everything asserted "while
 * locked" must have happened before the test releases it, which `release()` confirms ('released', not 'bound').
 * The bound is shorter than the 5 s busy timeout Keyward used to wait, so a process that waits that long sees the
 * lock go away instead, and the test fails on what it answered; Keyward's own wait is a small fraction of it.
 */
const LOCK_BOUND_MS = 4_000;
const ORIGIN = 'https://app.keyward.test';
const secrets = testSessionSecrets();
const log = capturingLogger();
let upstream: TestUpstream;
let held: HeldLock | null = null;

beforeAll(async () => {
  upstream = await startUpstream();
});

afterAll(async () => {
  await upstream?.close();
});

afterEach(async () => {
  // Always let go, whatever failed.
  await held?.release();
  held = null;
  vi.useRealTimers();
});

const tempDb = () => join(mkdtempSync(join(tmpdir(), 'keyward-locked-')), 'keyward.db');

function runtimeOn(path: string): Runtime {
  const auth = { type: 'header', name: 'x-api-key', secret: { env: 'LOCKED_KEY' } } as const;
  return createRuntime({
    env: { ...secrets, LOCKED_KEY: randomSecret('lck'), KEYWARD_ALLOWED_ORIGINS: ORIGIN, KEYWARD_STORE: 'sqlite', KEYWARD_STORE_PATH: path },
    upstreams: [
      // Reads the store only (session revocations, key state): no write on its path.
      defineUpstream('plain', { baseUrl: `${upstream.origin}/plain/`, auth, routes: [{ method: 'GET', path: '/items/:id' }] }),
      // A quota is reserved in the store before the call is sent (one write transaction, as a budget's).
      defineUpstream('metered', {
        baseUrl: `${upstream.origin}/metered/`,
        auth,
        quotas: [{ by: 'user', requests: 1000, period: 'day' }],
        routes: [{ method: 'GET', path: '/items/:id' }],
      }),
    ],
    logger: log.logger,
  });
}

/** tests/fixtures/sqlite-writer.ts in a process of its own (killed past a bound, so a stuck one fails the test). */
function writer(path: string, count: number): { ready: Promise<void>; start(): void; result: Promise<{ refused: number }> } {
  const child = spawn(process.execPath, [join('node_modules', 'tsx', 'dist', 'cli.mjs'), join('tests', 'fixtures', 'sqlite-writer.ts'), path, String(count)], {
    stdio: ['pipe', 'pipe', 'inherit'],
    timeout: 60_000,
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const exited = once(child, 'exit');
  const line = async () => {
    const next = await lines.next();
    if (next.done) throw new Error(`the writer exited (${String((await exited)[0])})`);
    return next.value as string;
  };
  const ready = line().then((said) => expect(said).toBe('ready'));
  return {
    ready,
    start: () => child.stdin.end('go\n'),
    result: ready.then(line).then((said) => JSON.parse(said) as { refused: number }),
  };
}

async function call(runtime: Runtime, cookie: string, upstreamId: string): Promise<{ status: number; body: string; requestId: string }> {
  const request = new Request(`${ORIGIN}/api/proxy/${upstreamId}/items/1`, { headers: { cookie, 'x-keyward-csrf': '1' } });
  const response = await handleProxy(request, { upstream: upstreamId, path: ['items', '1'] }, runtime);
  return { status: response.status, body: await response.text(), requestId: response.headers.get('x-request-id') ?? '' };
}

describe('SQLite file locked by another process', () => {
  it('a call that writes answers 503 store_unavailable, calls that only read are served, and all recovers on release', async () => {
    const path = tempDb();
    const runtime = runtimeOn(path);
    try {
      const cookie = await sessionCookie(secrets.AUTH_SECRET, { sub: 'local:ada', roles: ['user'] });
      // Before the lock: both work (and the file and its tables exist).
      expect((await call(runtime, cookie, 'metered')).status).toBe(200);
      await runtime.audit.flush();

      held = await holdWriteLock(path, LOCK_BOUND_MS);
      const read = await call(runtime, cookie, 'plain');
      expect(read.status, read.body).toBe(200);
      const metered = await call(runtime, cookie, 'metered');
      expect(metered.status, metered.body).toBe(503);
      expect(JSON.parse(metered.body)).toMatchObject({ error: { code: 'store_unavailable' } });
      // Again, after the audit writer's first attempt has failed too: still answered, still refused.
      await runtime.audit.written();
      expect((await call(runtime, cookie, 'plain')).status).toBe(200);
      expect((await call(runtime, cookie, 'metered')).status).toBe(503);
      const session = await handleSession(new Request(`${ORIGIN}/api/session`, { headers: { cookie } }), runtime);
      expect(session.status).toBe(200);
      // All of that while the other process still held the lock.
      expect(await held.release()).toBe('released');
      held = null;

      // Released: writes work again, with nothing to restart, and the calls made meanwhile are on record.
      expect((await call(runtime, cookie, 'metered')).status).toBe(200);
      await runtime.audit.flush();
      const { records } = await runtime.audit.query({ type: 'call' }, { limit: 50 });
      const recorded = new Set((records as CallRecord[]).map((record) => record.requestId));
      expect(recorded.has(read.requestId)).toBe(true);
      expect(recorded.has(metered.requestId)).toBe(true);
    } finally {
      await (runtime.dispatcher as { close?: () => Promise<void> }).close?.().catch(() => {});
      await runtime.store.close();
    }
  });

  it('the audit writer keeps the records and backs off instead of trying every batch, then writes them on release', async () => {
    const path = tempDb();
    const store = new SqliteStore(path);
    await store.set('created', '1');
    let attempts = 0;
    const appendBatch = store.appendBatch.bind(store);
    store.appendBatch = (...args) => (attempts++, appendBatch(...args));
    try {
      held = await holdWriteLock(path, LOCK_BOUND_MS);
      // Simulated time: 20 s of calls, one every 100 ms (a batch each), while the file stays locked.
      vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
      const audit = new AuditLog(store, 86_400_000, log.logger, () => Date.now());
      const CALLS = 200;
      for (let i = 0; i < CALLS; i++) {
        audit.recordCall(event({ requestId: `locked-${i}` }));
        await vi.advanceTimersByTimeAsync(100);
      }
      // A write per batch would be 200 attempts; backing off (doubling up to a few seconds) is a handful.
      expect(attempts).toBeGreaterThanOrEqual(2);
      expect(attempts).toBeLessThanOrEqual(12);
      expect(await held.release()).toBe('released');
      held = null;

      // Released: the next attempt (within the longest back-off) writes everything kept, oldest first.
      await vi.advanceTimersByTimeAsync(10_000);
      vi.useRealTimers();
      const { records } = await audit.query({ type: 'call' }, { limit: CALLS + 10, order: 'asc' });
      expect((records as CallRecord[]).map((record) => record.requestId)).toEqual(Array.from({ length: CALLS }, (_, i) => `locked-${i}`));
    } finally {
      await store.close();
    }
  });

  it('two processes writing the file at once, each write a small transaction, are never refused: the short wait absorbs it', async () => {
    const path = tempDb();
    const store = new SqliteStore(path);
    await store.set('created', '1');
    const COUNT = 400;
    try {
      const writers = [writer(path, COUNT), writer(path, COUNT)];
      await Promise.all(writers.map((one) => one.ready));
      for (const one of writers) one.start();
      expect(await Promise.all(writers.map((one) => one.result))).toEqual([{ refused: 0 }, { refused: 0 }]);
      expect(await store.get('shared')).toBe(String(2 * COUNT));
      expect(await store.readLog('audit', { limit: 2 * COUNT + 1, order: 'asc' })).toHaveLength(2 * COUNT);
    } finally {
      await store.close();
    }
  }, 90_000);
});
