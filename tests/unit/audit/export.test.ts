import { afterAll, describe, expect, it } from 'vitest';
import { handleAudit } from '../../../lib/core/api/admin';
import { createLogger } from '../../../lib/core/log/logger';
import { createRuntime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import { testSessionSecrets } from '../../fixtures/secrets';
import { bearerToken } from '../../fixtures/session';

/**
 * `GET /api/admin/audit?format=jsonl` over a log where a selective filter matches nothing for long stretches:
 * the export reads the log a window at a time (at most 20,000 entries a query), and a window may hold no match.
 * The real runtime, audit log, handler and (in-memory) store; an admin's bearer session.
 */
const secrets = testSessionSecrets();
const memory = new MemoryStore();
/** How many times the log was read (each page of the export is one read or more), and how long each read takes. */
let logReads = 0;
let readDelayMs = 0;
const store = new Proxy(memory, {
  get(target, prop, receiver) {
    const value = Reflect.get(target, prop, receiver) as unknown;
    if (prop === 'readLog') {
      return async (...args: Parameters<MemoryStore['readLog']>) => {
        logReads++;
        await new Promise((resolve) => setTimeout(resolve, readDelayMs));
        return target.readLog(...args);
      };
    }
    return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
  },
});
const runtime = createRuntime({
  env: { ...secrets, KEYWARD_STORE: 'memory' },
  store,
  upstreams: [],
  logger: createLogger({ level: 'silent' }),
});
const ORIGIN = 'https://app.keyward.test';
const DAY = 86_400_000;

afterAll(async () => {
  await runtime.store.close();
});

async function audit(query: string): Promise<Response> {
  const token = await bearerToken(secrets.KEYWARD_SESSION_SECRET, { sub: 'local:root', roles: ['admin'] });
  return handleAudit(new Request(`${ORIGIN}/api/admin/audit?${query}`, { headers: { authorization: `Bearer ${token}` } }), runtime);
}

async function exportOf(query: string): Promise<string[]> {
  const response = await audit(query);
  expect(response.status).toBe(200);
  // A body that never ends fails the test with this message before vitest's own timeout (30 s) would. Not sooner:
  // exporting 100,050 records takes seconds on a loaded machine (it failed at 10 s with the load around 10).
  const text = await Promise.race([
    response.text(),
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error('the export never ended')), 25_000).unref()),
  ]);
  return text.split('\n').filter(Boolean);
}

describe('the audit export (JSON Lines)', () => {
  it('goes past windows of the log with no match: 45,000 records of one user, then 3 of another, exported whole', async () => {
    const start = Date.now() - DAY;
    const record = (i: number, actor: string) => ({
      value: JSON.stringify({ type: 'admin', at: new Date(start + i).toISOString(), action: 'user_key.put', actor, outcome: 'stored' }),
      at: start + i,
    });
    const entries = Array.from({ length: 45_000 }, (_, i) => record(i, 'local:ada'));
    entries.push(record(50_000, 'local:mallory'), record(50_001, 'local:mallory'), record(50_002, 'local:mallory'));
    await store.appendBatch('audit', entries, 90 * DAY);

    const lines = await exportOf('format=jsonl&userId=local:mallory');
    expect(lines.map((line) => (JSON.parse(line) as { actor: string }).actor)).toEqual(['local:mallory', 'local:mallory', 'local:mallory']);
    // A filter that matches nothing at all ends too, with an empty body.
    expect(await exportOf('format=jsonl&userId=local:nobody')).toEqual([]);
  });

  it('exports every match, past 100,000 too (the README promises every match; nothing said it stopped short)', async () => {
    const start = Date.now() - DAY / 2;
    const entries = Array.from({ length: 100_050 }, (_, i) => ({
      value: JSON.stringify({ type: 'admin', at: new Date(start + i).toISOString(), action: 'key.add', actor: 'local:bulk', outcome: 'next' }),
      at: start + i,
    }));
    await store.appendBatch('audit', entries, 90 * DAY);
    expect(await exportOf('format=jsonl&userId=local:bulk')).toHaveLength(100_050);
  });

  it('a download cancelled (the admin went away) stops reading the log', async () => {
    // A store that takes its time, and a filter that matches nothing: the export reads window after window.
    readDelayMs = 20;
    const response = await audit('format=jsonl&userId=local:nobody-at-all');
    const reader = response.body!.getReader();
    const reading = reader.read().catch(() => null);
    await new Promise((resolve) => setTimeout(resolve, 20));
    await reader.cancel();
    await reading;
    const afterCancel = logReads;
    await new Promise((resolve) => setTimeout(resolve, 500));
    readDelayMs = 0;
    expect(logReads - afterCancel).toBeLessThanOrEqual(1); // a read under way when it was cancelled, at most
  });

  it('ends at the moment it started: what is written after (here: dated after) is not chased', async () => {
    const record = (at: number) => ({ value: JSON.stringify({ type: 'admin', at: new Date(at).toISOString(), action: 'key.add', actor: 'local:tail', outcome: 'next' }), at });
    await store.appendBatch('audit', [record(Date.now() - 1000), record(Date.now() + 60_000)], 90 * DAY);
    expect(await exportOf('format=jsonl&userId=local:tail')).toHaveLength(1);
  });

  it('cursor and limit are for pages, not for an export: given with format=jsonl, 400', async () => {
    for (const extra of ['limit=10', 'cursor=0']) expect((await audit(`format=jsonl&${extra}`)).status).toBe(400);
  });
});
