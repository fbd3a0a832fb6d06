import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { signIn, startApp, type AppServer } from '../fixtures/app-server';
import { findLeak } from '../fixtures/claims-session';
import { writeConfigFile } from '../fixtures/config';
import { deleteKeysUnder } from '../fixtures/redis-server';
import { randomSecret, testSessionSecrets } from '../fixtures/secrets';
import { openStreamAcrossStop, streamsAcrossStop } from '../fixtures/open-stream';
import { startUpstream, type TestUpstream } from '../fixtures/upstream';
import { writeUsersFile } from '../fixtures/users';
import { AuditLog, type CallRecord } from '../../lib/core/audit/audit';
import { createLogger } from '../../lib/core/log/logger';
import { RedisStore } from '../../lib/store/redis';
import { SqliteStore } from '../../lib/store/sqlite';
import type { Store } from '../../lib/store/types';

/**
 * A stop of the route handlers' own server: the production build (`npm test` runs `next build` first; this file
 * builds nothing) under `next start`, stopped with SIGTERM as a deploy stops it, then its store read as the next
 * process would read it. Every call answered before the stop is on record; streams still open get the drain
 * (3 s), then are cut and recorded as aborted, and the server exits by itself (Next's 143), not by SIGKILL. On
 * the embedded SQLite store and on Redis (the run's redis-server, under a key prefix of this file's own).
 */
const N = 20;
const apiKey = randomSecret('svc');
const password = randomSecret('pw');
const sessionSecrets = testSessionSecrets();
const redisUrl = inject('redisUrl');
const prefixes: string[] = [];

let upstream: TestUpstream;
let env: Record<string, string>;

beforeAll(async () => {
  upstream = await startUpstream();
  const configPath = writeConfigFile({
    upstreams: {
      echo: {
        baseUrl: `${upstream.origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
        routes: [
          { method: 'GET', path: '/items/:id' },
          { method: 'GET', path: '/events' },
          { method: 'GET', path: '/hang' },
          { method: 'GET', path: '/wait' },
        ],
      },
    },
  });
  const usersFile = await writeUsersFile([{ username: 'alice', password, roles: ['user'] }]);
  env = { ...sessionSecrets, ECHO_KEY: apiKey, KEYWARD_CONFIG: configPath, KEYWARD_USERS_FILE: usersFile };
});

afterAll(async () => {
  await upstream?.close();
  for (const prefix of prefixes) await deleteKeysUnder(redisUrl, prefix);
});

/** A store for one server, and how to open it afterwards as the next process would. */
interface StoreUnderTest {
  readonly env: Record<string, string>;
  open(): Store;
}

const STORES: ReadonlyArray<readonly [string, () => StoreUnderTest]> = [
  [
    'SQLite',
    () => {
      const path = join(mkdtempSync(join(tmpdir(), 'keyward-shutdown-')), 'keyward.db');
      return { env: { KEYWARD_STORE_PATH: path }, open: () => new SqliteStore(path) };
    },
  ],
  [
    'Redis',
    () => {
      const prefix = `keyward-test:${randomUUID()}:`;
      prefixes.push(prefix);
      return { env: { REDIS_URL: redisUrl, KEYWARD_REDIS_PREFIX: prefix }, open: () => new RedisStore(redisUrl, { prefix }) };
    },
  ],
];

/** The call records in the store the stopped server left behind. */
async function callRecords(store: StoreUnderTest): Promise<CallRecord[]> {
  const opened = store.open();
  try {
    const { records } = await new AuditLog(opened, 86_400_000, createLogger({ level: 'silent' })).query({ type: 'call' }, { limit: 500 });
    return records.filter((record): record is CallRecord => record.type === 'call');
  } finally {
    await opened.close();
  }
}

function expectNoLeak(server: AppServer): void {
  expect(findLeak(server.output(), [apiKey, password, sessionSecrets.AUTH_SECRET, sessionSecrets.KEYWARD_SESSION_SECRET])).toBeNull();
}

// Starting `next start` and stopping it (a drain of 3 s, 12 s before SIGKILL) takes a while on a loaded machine.
describe.each(STORES)('`next start` stopped with SIGTERM (%s)', { timeout: 120_000 }, (_name, makeStore) => {
  it(`every call answered before the stop is on record (${N} of ${N})`, async () => {
    const store = makeStore();
    const app = await startApp({ ...env, ...store.env });
    try {
      const cookie = await signIn(app.url, 'alice', password);
      const requestIds = await Promise.all(
        Array.from({ length: N }, async (_, i) => {
          const response = await fetch(`${app.url}/api/proxy/echo/items/${i}`, { headers: { cookie, 'x-keyward-csrf': '1' } });
          expect(response.status).toBe(200);
          await response.arrayBuffer();
          return response.headers.get('x-request-id');
        }),
      );
      await app.stop();
      expect(app.exitStatus()).toEqual({ code: 143, signal: null });
      const records = await callRecords(store);
      const recorded = new Set(records.map((record) => record.requestId));
      expect(requestIds.filter((id) => !recorded.has(id!))).toEqual([]);
      expect(records.filter((record) => requestIds.includes(record.requestId)).every((record) => record.outcome === 'complete' && record.status === 200)).toBe(true);
    } finally {
      await app.stop();
      expectNoLeak(app);
    }
  });

  it('streams still open get the drain, then are cut and recorded as aborted; a call still waiting for its upstream too; the server exits by itself', async () => {
    const store = makeStore();
    const app = await startApp({ ...env, ...store.env });
    // /events ends a moment after the stop began; /hang never ends on its own; /wait never answers.
    const { handler, stopped: sigterm } = streamsAcrossStop();
    upstream.handle(handler);
    try {
      const cookie = await signIn(app.url, 'alice', password);
      const open = (path: string) => openStreamAcrossStop(`${app.url}/api/proxy/echo/${path}`, { cookie, 'x-keyward-csrf': '1' });
      const ending = await open('events');
      const hanging = [await open('hang'), await open('hang'), await open('hang')];
      const arrived = upstream.requests.length + 1;
      const waiting = fetch(`${app.url}/api/proxy/echo/wait`, { headers: { cookie, 'x-keyward-csrf': '1' } }).then(
        (response) => ({ status: response.status, cut: false }),
        () => ({ status: 0, cut: true }),
      );
      await upstream.nthRequest(arrived);
      const stop = app.stop();
      sigterm();
      await stop;
      expect(app.exitStatus()).toEqual({ code: 143, signal: null });
      expect(await ending.rest).toEqual({ text: 'data: last\n\n', cut: false });
      for (const call of hanging) expect((await call.rest).cut).toBe(true);
      // Cut, as the fast lane cuts it: not answered with an error about a client that went away.
      expect(await waiting).toEqual({ status: 0, cut: true });
      const records = await callRecords(store);
      const outcome = (id: string | null) => records.find((record) => record.requestId === id);
      expect(outcome(ending.requestId)).toMatchObject({ route: '/events', status: 200, outcome: 'complete' });
      for (const call of hanging) expect(outcome(call.requestId)).toMatchObject({ route: '/hang', status: 200, outcome: 'aborted' });
      expect(records.filter((record) => record.route === '/wait')).toMatchObject([{ outcome: 'aborted' }]);
      // A cut is no failure: nothing logged as one.
      expect(app.output()).not.toMatch(/failed to pipe response|proxy failed|"level":50/);
    } finally {
      upstream.reset();
      await app.stop();
      expectNoLeak(app);
    }
  });
});
