import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../../lib/store/memory';
import type { Session } from '../../../lib/core/session/session';
import { WS_TICKETS_MAX, WsTickets } from '../../../lib/core/ws/tickets';
import { expectKeywardError } from '../support';

const session: Session = {
  userId: 'local:bob',
  name: 'Bob',
  roles: ['user'],
  expiresAt: Date.now() + 3_600_000,
  sessionId: 'sid-1',
  authTime: 0,
  claims: {},
  via: 'cookie',
};
const target = { upstream: 'openai', path: ['realtime'] };

describe('WebSocket tickets', () => {
  it('redeem once, for the session they were issued to, as a bearer session', async () => {
    const tickets = new WsTickets(new MemoryStore());
    const { ticket, expiresIn } = await tickets.issue(session, target);
    expect(ticket).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(expiresIn).toBe(30);
    expect(await tickets.redeem(ticket, target)).toEqual({ ...session, via: 'bearer' });
    expect(await tickets.redeem(ticket, target)).toBeNull();
  });

  it('burn: every ticket shown is used up with one store read for all of them, however many the URL holds', async () => {
    const store = new MemoryStore();
    const reads = { get: 0, getMany: 0, keys: 0 };
    const { get, getMany } = store;
    store.get = (name) => (reads.get++, get.call(store, name));
    store.getMany = (names) => (reads.getMany++, (reads.keys += names.length), getMany.call(store, names));
    const tickets = new WsTickets(store);
    const shown = await tickets.issue(session, target);
    const other = await tickets.issue(session, target);
    // 300 made-up tickets (well formed: 43 base64url characters), the real one twice, and values no ticket has.
    const fakes = Array.from({ length: 300 }, (_, i) => `${String(i).padStart(3, '0')}${'A'.repeat(40)}`);
    await tickets.burn([...fakes, shown.ticket, shown.ticket, 'not-a-ticket', '']);
    expect(reads).toEqual({ get: 0, getMany: 1, keys: 301 });
    expect(await tickets.redeem(shown.ticket, target)).toBeNull();
    // A ticket not shown is untouched.
    expect(await tickets.redeem(other.ticket, target)).toEqual({ ...session, via: 'bearer' });
    // Nothing that could be a ticket: no read at all.
    await tickets.burn(['x', '']);
    expect(reads.getMany).toBe(1);
  });

  it('only one of two concurrent redemptions wins', async () => {
    const tickets = new WsTickets(new MemoryStore());
    const { ticket } = await tickets.issue(session, target);
    const results = await Promise.all([
      tickets.redeem(ticket, target),
      tickets.redeem(ticket, target),
      tickets.redeem(ticket, target),
    ]);
    expect(results.filter((r) => r !== null)).toHaveLength(1);
  });

  it('are bound to the upstream and path, and used up when shown elsewhere', async () => {
    const tickets = new WsTickets(new MemoryStore());
    const { ticket } = await tickets.issue(session, target);
    expect(await tickets.redeem(ticket, { upstream: 'openai', path: ['other'] })).toBeNull();
    expect(await tickets.redeem(ticket, target)).toBeNull();
    const second = await tickets.issue(session, target);
    expect(await tickets.redeem(second.ticket, { upstream: 'other', path: ['realtime'] })).toBeNull();
    // `a/b` as one segment is not the path a, b.
    const third = await tickets.issue(session, { upstream: 'openai', path: ['a/b'] });
    expect(await tickets.redeem(third.ticket, { upstream: 'openai', path: ['a', 'b'] })).toBeNull();
  });

  it(`are issued at most ${WS_TICKETS_MAX} per user in their lifetime (each is stored that long): then 429 until the window ends`, async () => {
    let now = 5_000_000;
    const tickets = new WsTickets(new MemoryStore(() => now), () => now);
    const fresh = { ...session, expiresAt: now + 3_600_000 };
    for (let i = 0; i < WS_TICKETS_MAX; i++) await tickets.issue(fresh, target);
    const refused = expectKeywardError(await tickets.issue(fresh, target).catch((error: unknown) => error), 'rate_limited');
    expect(refused.status).toBe(429);
    expect(refused.headers['retry-after']).toBe('30');
    // Another user is not held back, and the user's window ends with the tickets it issued.
    await tickets.issue({ ...fresh, userId: 'local:ann' }, target);
    now += 30_001;
    await tickets.issue(fresh, target);
  });

  it('expire after their time to live', async () => {
    let now = 1_000_000;
    const tickets = new WsTickets(new MemoryStore(), () => now, 30_000);
    const fresh = { ...session, expiresAt: now + 3_600_000 };
    const late = await tickets.issue(fresh, target);
    const onTime = await tickets.issue(fresh, target);
    now += 29_999;
    expect(await tickets.redeem(onTime.ticket, target)).not.toBeNull();
    now += 2;
    expect(await tickets.redeem(late.ticket, target)).toBeNull();
  });

  it('refuse malformed and unknown tickets, and never store the ticket itself', async () => {
    const store = new MemoryStore();
    const tickets = new WsTickets(store);
    expect(await tickets.redeem('', target)).toBeNull();
    expect(await tickets.redeem('x'.repeat(43), target)).toBeNull();
    expect(await tickets.redeem('../../etc', target)).toBeNull();
    const { ticket } = await tickets.issue(session, target);
    expect(await store.get(`wsticket:${ticket}`)).toBeNull();
  });

  it('do not outlive the session they were issued to', async () => {
    let now = 1_000_000;
    const tickets = new WsTickets(new MemoryStore(), () => now);
    const { ticket } = await tickets.issue({ ...session, expiresAt: now + 1_000 }, target);
    now += 2_000;
    expect(await tickets.redeem(ticket, target)).toBeNull();
  });
});
