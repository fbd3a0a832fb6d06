import type { ServerResponse } from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { defineUpstream } from '../../lib/core/config/load';
import { sessionCookie } from '../fixtures/session';
import { createHarness, expectKeywardError, expectNoSecretsInLogs, type CallResult, type Harness } from './harness';

/**
 * `maxCallsInFlightPerUser` (README "Calls in progress per user"): one user's calls in progress to one upstream,
 * through the real pipeline and a real node:http upstream that keeps chosen responses open until the test ends
 * them. Outcomes are read from the upstream's recorded requests and the runtime's counter, never timed.
 */

let h: Harness;
/** Responses the upstream holds open (writing a beat), by request path, until `finish` ends them. */
const open = new Map<string, ServerResponse>();
const ALICE = 'local:alice';
let bobCookie: string;

beforeAll(async () => {
  h = await createHarness({
    upstreams: (origin) => {
      const common = {
        baseUrl: `${origin}/v1/`,
        auth: { type: 'header', name: 'x-api-key', secret: { env: 'ECHO_KEY' } },
        routes: [{ method: 'GET', path: '/items/:id' }],
      } as const;
      return [
        // Longer than vitest's test timeout: a call that waits for good fails the test instead of being refused.
        defineUpstream('two', { ...common, maxCallsInFlightPerUser: 2, timeoutMs: 120_000 }),
        defineUpstream('one-short', { ...common, maxCallsInFlightPerUser: 1, timeoutMs: 400 }),
      ];
    },
  });
  bobCookie = await sessionCookie(h.env.AUTH_SECRET!, { sub: 'local:bob', name: 'Bob', roles: ['user'] });
});

afterAll(async () => {
  expectNoSecretsInLogs(h);
  await h.close();
});

beforeEach(() => {
  h.upstream.reset();
  // /v1/items/hold-*: the head and a first chunk at once, then the response stays open; anything else is served.
  h.upstream.handle((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    if (!req.url!.startsWith('/v1/items/hold-')) return void res.end('served');
    res.write('open;');
    // A beat every 100 ms, so no pause reaches a route's timeoutMs (400 ms on "one-short").
    const beat = setInterval(() => res.write('.'), 100);
    res.once('close', () => clearInterval(beat));
    open.set(req.url!, res);
  });
});

function finish(id: string): void {
  const res = open.get(`/v1/items/${id}`);
  expect(res, `the upstream holds ${id}`).toBeDefined();
  open.delete(`/v1/items/${id}`);
  res!.end(';done');
}

/** The paths the upstream received since `from`, in order. */
const received = (from: number) => h.upstream.requests.slice(from).map((request) => request.url);
const load = (upstream: string, userId = ALICE) => h.runtime.limits.inFlight.load(upstream, userId);

/** A held call's head (its body is read later with `text`). */
async function hold(upstream: string, id: string): Promise<CallResult> {
  const result = await h.call(['items', id], { upstream, raw: true });
  expect(result.response.status).toBe(200);
  return result;
}

describe('calls in progress per user and upstream', () => {
  it("a user's call past the limit waits for one of theirs to end, then goes through; another user's is not held up", async () => {
    const from = h.upstream.requests.length;
    const first = await hold('two', 'hold-1');
    const second = await hold('two', 'hold-2');
    expect(load('two')).toEqual({ active: 2, waiting: 0 });

    const third = h.call(['items', 'third'], { upstream: 'two' });
    await expect.poll(() => load('two')).toEqual({ active: 2, waiting: 1 });
    // Bob has calls of his own to make: Alice's do not count against him.
    const bob = await h.call(['items', 'bob'], { upstream: 'two', cookie: bobCookie });
    expect(bob.text).toBe('served');
    expect(received(from)).toEqual(['/v1/items/hold-1', '/v1/items/hold-2', '/v1/items/bob']);

    finish('hold-1');
    expect(await first.response.text()).toMatch(/^open;\.*;done$/);
    expect((await third).text).toBe('served');
    expect(received(from)).toEqual(['/v1/items/hold-1', '/v1/items/hold-2', '/v1/items/bob', '/v1/items/third']);

    finish('hold-2');
    expect(await second.response.text()).toMatch(/^open;\.*;done$/);
    expect(load('two')).toEqual({ active: 0, waiting: 0 });
  });

  it("a call that found no free slot within the route's timeoutMs: 429 rate_limited, Retry-After 1, never sent", async () => {
    const from = h.upstream.requests.length;
    const first = await hold('one-short', 'hold-a');
    // Read as it comes: a response left unread for timeoutMs would be cut (and its slot given back).
    const firstText = first.response.text();
    const refused = await h.call(['items', 'waited'], { upstream: 'one-short' });
    expectKeywardError(refused, 429, 'rate_limited', h);
    expect(refused.response.headers.get('retry-after')).toBe('1');
    expect(refused.json<{ error: { message: string } }>().error.message).toMatch(/1 calls to this API in progress/);
    expect(received(from)).toEqual(['/v1/items/hold-a']);
    finish('hold-a');
    expect(await firstText).toMatch(/^open;\.*;done$/);
    // The slot is free again.
    expect((await h.call(['items', 'after'], { upstream: 'one-short' })).text).toBe('served');
  });

  it('a client that leaves while waiting gives its place back; it is never sent', async () => {
    const from = h.upstream.requests.length;
    const first = await hold('two', 'hold-x');
    const second = await hold('two', 'hold-y');
    const leaving = new AbortController();
    const gone = h.call(['items', 'gone'], { upstream: 'two', signal: leaving.signal });
    await expect.poll(() => load('two')).toEqual({ active: 2, waiting: 1 });
    leaving.abort();
    expectKeywardError(await gone, 400, 'bad_request', h);
    expect(load('two')).toEqual({ active: 2, waiting: 0 });
    finish('hold-x');
    finish('hold-y');
    await Promise.all([first.response.text(), second.response.text()]);
    expect(received(from)).toEqual(['/v1/items/hold-x', '/v1/items/hold-y']);
    expect(load('two')).toEqual({ active: 0, waiting: 0 });
  });

  it('every way a call ends gives its slot back: served, cut by the client mid-body, an upstream error status, refused', async () => {
    for (let i = 0; i < 3; i++) expect((await h.call(['items', `seq-${i}`], { upstream: 'two' })).text).toBe('served');

    const cut = await hold('two', 'hold-cut');
    expect(load('two').active).toBe(1);
    await cut.response.body!.cancel();
    await expect.poll(() => load('two').active).toBe(0);
    open.get('/v1/items/hold-cut')?.end();
    open.delete('/v1/items/hold-cut');

    h.upstream.handle((_req, res) => {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end('{"error":"boom"}');
    });
    for (let i = 0; i < 3; i++)
      expect((await h.call(['items', `err-${i}`], { upstream: 'two' })).response.status).toBe(500);
    // Refused before a slot is taken (no session), and refused after (an undeclared route is refused earlier still).
    expectKeywardError(await h.call(['items', 'x'], { upstream: 'two', cookie: false }), 401, 'unauthenticated', h);
    expect(load('two')).toEqual({ active: 0, waiting: 0 });
  });
});
