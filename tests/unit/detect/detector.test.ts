import { describe, expect, it } from 'vitest';
import type { AdminRecord } from '../../../lib/core/audit/audit';
import type { Alert, Decision } from '../../../lib/core/detect/alerts';
import { forgivenKey, suspensionKey, throttleKey } from '../../../lib/core/detect/marks';
import { KeywardError } from '../../../lib/core/errors';
import type { ProxyEvent } from '../../../lib/core/pipeline';
import { MemoryStore } from '../../../lib/store/memory';
import { SqliteStore } from '../../../lib/store/sqlite';
import { DAY_MS, MINUTE_MS, START, event, setup } from '../../fixtures/detector';

/**
 * The anomaly detector on simulated time: every test drives an injected clock and feeds synthetic call records
 * (what the pipeline's onComplete passes), against a real in-memory store, real revocations and audit trail.
 */
/** A seeded generator (mulberry32), so the simulated day is the same on every run. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ROUTES = ['/v1/chat/completions', '/v1/embeddings', '/v1/models', '/v1/responses', '/v1/moderations'];

/**
 * 10,000 calls over one simulated day, busier by day than by night (twice the mean at the peak), from two
 * sessions on two client IPs, on five routes, 1 % failing, with Poisson-like spacing.
 */
function steadyDay(feed: (at: number, event: ProxyEvent) => void, from: number, rand = random(7)): number {
  const calls = 10_000;
  let at = from;
  for (let i = 0; i < calls; i++) {
    const hour = ((at - from) / 3_600_000) % 24;
    const load = 1 + 0.5 * Math.sin(((hour - 6) / 24) * 2 * Math.PI); // 0.5× at night, 1.5× mid-afternoon
    const meanGap = DAY_MS / calls / load;
    at += -Math.log(1 - rand()) * meanGap;
    const morning = hour < 12;
    feed(at, event({
      sessionId: morning ? 'sess-1' : 'sess-2',
      clientIp: morning ? '203.0.113.7' : '198.51.100.20',
      route: ROUTES[Math.floor(rand() * ROUTES.length)]!,
      status: rand() < 0.01 ? 502 : 200,
      units: 200 + Math.floor(rand() * 400),
    }));
  }
  return at;
}

describe('anomaly detector', () => {
  it('lets a steady workload of 10,000 calls over a simulated day through without a single action', async () => {
    const { clock, detector, actions } = setup();
    const end = steadyDay((at, e) => {
      clock.now = at;
      detector.observe(e);
    }, START);
    expect(end - START).toBeGreaterThan(0.9 * DAY_MS);
    expect(await actions()).toEqual([]);
  });

  it('throttles a 10× burst within 50 calls, and the throttle mark is in the store for every instance', async () => {
    const { clock, store, detector, actions } = setup();
    let at = steadyDay((t, e) => {
      clock.now = t;
      detector.observe(e);
    }, START);
    expect(await actions()).toEqual([]);
    // The day averaged ~7 calls a minute; the burst runs at 10× that.
    const gap = MINUTE_MS / 70;
    let calls = 0;
    let alerts: Alert[] = [];
    while (alerts.length === 0 && calls < 200) {
      at += gap;
      clock.now = at;
      detector.observe(event({ sessionId: 'sess-2', clientIp: '198.51.100.20' }));
      calls++;
      alerts = await actions();
    }
    expect(calls).toBeLessThanOrEqual(50);
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({ rule: 'calls', action: 'throttle', subject: { userId: 'local:ada' }, state: 'active' });
    expect(Number(alerts[0]!.evidence.perMinute)).toBeGreaterThanOrEqual(Number(alerts[0]!.evidence.threshold));
    expect(JSON.parse((await store.get(throttleKey('local:ada')))!)).toMatchObject({ limit: 10, windowSeconds: 60, alertId: alerts[0]!.id });
  });

  it('escalates a sustained anomaly in order: throttle, then re-authentication, then revocation and suspension', async () => {
    const { clock, store, revocations, audit, detector, actions } = setup();
    let at = steadyDay((t, e) => {
      clock.now = t;
      detector.observe(e);
    }, START);
    const burstStart = at;
    // The caller keeps calling at 10× (throttled or not: attempts are what it does), for 25 minutes.
    while (at < burstStart + 25 * MINUTE_MS) {
      at += MINUTE_MS / 70;
      clock.now = at;
      detector.observe(event({ sessionId: 'sess-2', clientIp: '198.51.100.20' }));
      await detector.settled();
    }
    const alerts = await actions();
    expect(alerts.map((a) => a.action)).toEqual(['throttle', 'reauth', 'revoke']);
    const times = alerts.map((a) => Date.parse(a.at));
    expect(times[1]! - times[0]!).toBeGreaterThanOrEqual(10 * MINUTE_MS);
    expect(times[2]! - times[1]!).toBeGreaterThanOrEqual(10 * MINUTE_MS);
    // Re-authentication ended the sessions seen in the window; revocation ended every session and suspended keys.
    const signedInEarlier = { userId: 'local:ada', authTime: burstStart - 3_600_000 };
    expect(await revocations.isRevoked({ ...signedInEarlier, sessionId: 'sess-2' })).toBe(true);
    expect(await revocations.isRevoked({ ...signedInEarlier, sessionId: 'another-device' })).toBe(true);
    expect(await store.get(suspensionKey('local:ada'))).toBe(alerts[2]!.id);
    const { records } = await audit.query({ type: 'admin' }, { limit: 10, order: 'asc' });
    expect(records.map((r) => r.type === 'admin' && r.action)).toEqual(['detector.throttle', 'detector.reauth', 'detector.revoke']);
    expect(records.every((r) => r.type === 'admin' && r.actor === 'detector' && r.targetUser === 'local:ada')).toBe(true);
  });

  it('revokes again when the anomaly goes on from a session signed in after the revocation (which did not end it)', async () => {
    const { clock, revocations, detector, actions } = setup();
    let at = steadyDay((t, e) => {
      clock.now = t;
      detector.observe(e);
    }, START);
    const burstStart = at;
    // Each step ends the sessions it names; the caller signs in again and goes on at 10×, for three hours. Only
    // calls of sessions still valid are seen (a revoked session's calls are recorded without their user).
    let session = 'sess-2';
    while (at < burstStart + 180 * MINUTE_MS) {
      at += MINUTE_MS / 70;
      clock.now = at;
      if (await revocations.isRevoked({ userId: 'local:ada', sessionId: session, authTime: Number(session.split('@')[1] ?? START) })) {
        session = `sess-new@${at}`;
      }
      detector.observe(event({ sessionId: session, clientIp: '198.51.100.20' }));
      await detector.settled();
    }
    const alerts = await actions();
    expect(alerts.slice(0, 3).map((a) => a.action)).toEqual(['throttle', 'reauth', 'revoke']);
    // Before the fix nothing followed the revocation for as long as the calls went on.
    const later = alerts.slice(3);
    expect(later.length).toBeGreaterThanOrEqual(10);
    expect(later.every((a) => a.action === 'revoke' && a.rule === 'calls')).toBe(true);
    const times = alerts.map((a) => Date.parse(a.at));
    for (let i = 3; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(10 * MINUTE_MS);
  });

  it('requires re-authentication of one session seen from more client IPs than allowed, and of no other', async () => {
    const { clock, revocations, detector, actions } = setup();
    detector.observe(event({ sessionId: 'laptop', clientIp: '192.0.2.1' }));
    for (const [i, ip] of ['203.0.113.1', '198.51.100.2', '192.0.2.3', '100.64.4.4', '2001:db8:aa::5'].entries()) {
      clock.now = START + (i + 1) * MINUTE_MS;
      detector.observe(event({ sessionId: 'stolen', clientIp: ip }));
    }
    const alerts = await actions();
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({ rule: 'ips_per_session', action: 'reauth', evidence: { distinctIps: 5, max: 4 } });
    // The rule stops there: the same pattern again, long after, from a new session, is another re-authentication
    // (of that session), never a revocation.
    for (const [i, ip] of ['203.0.113.1', '198.51.100.2', '192.0.2.3', '100.64.4.4', '2001:db8:aa::5'].entries()) {
      clock.now = START + (30 + i) * MINUTE_MS;
      detector.observe(event({ sessionId: 'stolen-again', clientIp: ip }));
    }
    expect((await actions()).map((a) => a.action)).toEqual(['reauth', 'reauth']);
    const user = { userId: 'local:ada', authTime: START - 1000 };
    expect(await revocations.isRevoked({ ...user, sessionId: 'stolen' })).toBe(true);
    expect(await revocations.isRevoked({ ...user, sessionId: 'stolen-again' })).toBe(true);
    expect(await revocations.isRevoked({ ...user, sessionId: 'laptop' })).toBe(false);
  });

  it('counts networks, not addresses (an IPv4 /24, an IPv6 /64), and not an address seen outside the window', async () => {
    const { clock, detector, actions } = setup();
    // A phone rotating privacy addresses in its /64, and a relay rotating within its /24: one network each.
    for (let i = 0; i < 12; i++) {
      clock.now = START + i * 10_000;
      detector.observe(event({ sessionId: 'relay', clientIp: i % 2 ? `2001:db8:1:2::${i + 1}` : `203.0.113.${i + 1}` }));
    }
    expect(await actions()).toEqual([]);
    for (const [i, ip] of ['203.0.113.1', '198.51.100.2', '192.0.2.3', '100.64.4.4', '100.64.77.5', '2001:db8:bb::6'].entries()) {
      clock.now = START + i * 11 * MINUTE_MS; // one new IP every 11 minutes: a phone on the move
      detector.observe(event({ sessionId: 'phone', clientIp: ip }));
    }
    expect(await actions()).toEqual([]);
  });

  it('requires re-authentication on a sudden mix of routes never called before, once the user has a history', async () => {
    const { clock, detector, actions } = setup();
    for (let i = 0; i < 250; i++) {
      clock.now = START + i * 20_000;
      detector.observe(event({ route: i % 2 ? '/v1/chat/completions' : '/v1/models' }));
    }
    expect(await actions()).toEqual([]);
    for (const route of ['/v1/files', '/v1/fine_tuning/jobs', '/v1/batches', '/v1/organization/api_keys']) {
      clock.now += 20_000;
      detector.observe(event({ route, method: 'GET' }));
    }
    const alerts = await actions();
    expect(alerts.map((a) => [a.rule, a.action])).toEqual([['new_routes', 'reauth']]);
  });

  it('remembers every route a user of a large API calls (300 here), and still sees a mix of new ones', async () => {
    const { clock, detector, actions } = setup({ newRoutes: { minHistoryCalls: 300 } });
    // 300 routes, each called three times over a day: learnt in the first round, before the rule judges.
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 300; i++) {
        clock.now = START + (round * 300 + i) * 90_000;
        detector.observe(event({ route: `/v1/things/${i}`, method: 'GET' }));
      }
    }
    expect(await actions()).toEqual([]);
    // The next days, four of them once each within minutes (the last learnt, then the first): known, not a new mix.
    for (let day = 1; day <= 4; day++) {
      for (const i of day % 2 ? [296, 297, 298, 299] : [0, 1, 2, 3]) {
        clock.now = START + day * DAY_MS + i * 1_000;
        detector.observe(event({ route: `/v1/things/${i}`, method: 'GET' }));
      }
    }
    expect(await actions()).toEqual([]);
    // Four routes never called, within minutes: a new mix.
    for (const route of ['/v1/files', '/v1/fine_tuning/jobs', '/v1/batches', '/v1/organization/api_keys']) {
      clock.now += 20_000;
      detector.observe(event({ route, method: 'GET' }));
    }
    expect((await actions()).map((a) => a.rule)).toEqual(['new_routes']);
  });

  it('does not treat a new user’s first routes as a new mix', async () => {
    const { clock, detector, actions } = setup();
    for (const [i, route] of ['/a', '/b', '/c', '/d', '/e', '/f'].entries()) {
      clock.now = START + i * 30_000;
      detector.observe(event({ route }));
    }
    expect(await actions()).toEqual([]);
  });

  it('goes straight to revocation and suspension on a decoy hit, and an admin undo puts back exactly what it changed', async () => {
    const { clock, store, revocations, audit, alerts, detector, actions } = setup();
    // The user had signed out everywhere an hour ago: that earlier revocation must survive the undo.
    clock.now = START - 3_600_000;
    await revocations.revokeUser('local:ada');
    clock.now = START;
    detector.decoyHit({ kind: 'credential', decoyId: 'dk_1', where: 'header:authorization', userId: 'local:ada', sessionId: 'sess-9', ip: '203.0.113.66', upstream: 'openai', route: '/v1/chat/completions', requestId: 'req-1' });
    const [alert] = await actions();
    expect(alert).toMatchObject({ rule: 'decoy', action: 'revoke', subject: { userId: 'local:ada' }, evidence: { where: 'header:authorization', ip: '203.0.113.66', decoyId: 'dk_1' } });
    const before = { userId: 'local:ada', sessionId: 'x', authTime: START - 7_200_000 };
    const recent = { userId: 'local:ada', sessionId: 'y', authTime: START - 60_000 };
    expect(await revocations.isRevoked(recent)).toBe(true);
    expect(await store.get(suspensionKey('local:ada'))).toBe(alert!.id);

    clock.now = START + MINUTE_MS;
    const undone = await alerts.undo(alert!.id, 'local:root');
    expect(undone).toMatchObject({ state: 'undone', undoneBy: 'local:root' });
    expect(await revocations.isRevoked(recent)).toBe(false);
    expect(await revocations.isRevoked(before)).toBe(true);
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
    // Idempotent, and on record: the repeat as `unchanged`.
    expect((await alerts.undo(alert!.id, 'local:other')).undoneAt).toBe(undone.undoneAt);
    const { records } = await audit.query({ type: 'admin', action: 'detector.undo' }, { limit: 10 });
    expect((records as AdminRecord[]).map((record) => [record.actor, record.outcome])).toEqual([
      ['local:other', 'unchanged'],
      ['local:root', 'revoke'],
    ]);
    expect(records[1]).toMatchObject({ actor: 'local:root', targetUser: 'local:ada', alertId: alert!.id, outcome: 'revoke' });
  });

  it("an undo whose audit record could not be written (503 to the admin) is on the trail once the admin tries again", async () => {
    const { clock, audit, alerts, detector, actions } = setup();
    clock.now = START;
    detector.decoyHit({ kind: 'credential', decoyId: 'dk_1', where: 'header:authorization', userId: 'local:ada', sessionId: 'sess-9', ip: '203.0.113.66', upstream: 'openai', route: null, requestId: 'req-1' });
    const [alert] = await actions();
    const recordAdmin = audit.recordAdmin;
    audit.recordAdmin = () => Promise.reject(new KeywardError('store_unavailable'));
    try {
      await expect(alerts.undo(alert!.id, 'local:root')).rejects.toMatchObject({ code: 'store_unavailable' });
    } finally {
      audit.recordAdmin = recordAdmin;
    }
    expect(await audit.query({ type: 'admin', action: 'detector.undo' }, { limit: 10 })).toMatchObject({ records: [] });
    // The undo itself took effect; the admin, answered 503, tries again.
    expect(await alerts.undo(alert!.id, 'local:root')).toMatchObject({ state: 'undone', undoneBy: 'local:root' });
    const { records } = await audit.query({ type: 'admin', action: 'detector.undo' }, { limit: 10 });
    expect(records).toEqual([expect.objectContaining({ actor: 'local:root', targetUser: 'local:ada', alertId: alert!.id, outcome: 'unchanged' })]);
  });

  it('a decoy from a session signed in after a decoy revocation revokes again; the same session within the cooldown does not', async () => {
    const { clock, revocations, detector, actions } = setup();
    const hit = (sessionId: string, requestId: string) => ({ kind: 'credential' as const, decoyId: 'dk_1', where: 'header:x-api-key', userId: 'local:mallory', sessionId, ip: '203.0.113.66', upstream: 'openai', route: null, requestId });
    clock.now = START;
    detector.decoyHit(hit('s1', 'r1'));
    expect((await actions()).map((a) => a.action)).toEqual(['revoke']);
    clock.now = START + MINUTE_MS;
    detector.decoyHit(hit('s1', 'r2')); // a call of s1 in flight when it was revoked
    expect(await actions()).toHaveLength(1);
    // The thief still has the password: signs in again (s2) and presents the decoy again, within the cooldown.
    clock.now = START + 5 * MINUTE_MS;
    const s2 = { userId: 'local:mallory', sessionId: 's2', authTime: START + 2 * MINUTE_MS };
    expect(await revocations.isRevoked(s2)).toBe(false);
    detector.decoyHit(hit('s2', 'r3'));
    const alerts = await actions();
    expect(alerts.map((a) => a.action)).toEqual(['revoke', 'revoke']);
    expect(alerts[1]!.evidence).toMatchObject({ requestId: 'r3' });
    expect(await revocations.isRevoked(s2)).toBe(true);
  });

  it('routes first called during a volume anomaly are learned: using them two hours later is no "new route mix"', async () => {
    const { clock, detector, actions } = setup();
    const feed = (at: number, route: string) => {
      clock.now = at;
      detector.observe(event({ route }));
    };
    // Three hours of steady use of one route (three calls a minute), then a burst that is throttled, while the
    // app starts calling five routes it had not used before.
    for (let m = 0; m < 180; m++) for (let i = 0; i < 3; i++) feed(START + m * MINUTE_MS + i * 15_000, '/v1/chat/completions');
    const burst = START + 180 * MINUTE_MS;
    for (let i = 0; i < 100; i++) feed(burst + i * 300, i < 60 || i % 2 ? '/v1/chat/completions' : `/v1/new/${i % 10}`);
    await detector.settled();
    expect((await actions()).map((a) => `${a.rule}/${a.action}`)).toEqual(['calls/throttle']);
    // The cooldown passed: ordinary use of those routes.
    const later = burst + 130 * MINUTE_MS;
    for (let i = 0; i < 10; i++) feed(later + i * 20_000, `/v1/new/${(i * 2) % 10}`);
    await detector.settled();
    expect((await actions()).map((a) => `${a.rule}/${a.action}`)).toEqual(['calls/throttle']);
  });

  it('after an admin undoes a decoy revocation, the same session presenting the decoy again is revoked again (and alerted)', async () => {
    const { clock, revocations, alerts, detector, actions } = setup();
    const hit = (requestId: string) => ({ kind: 'credential' as const, decoyId: 'dk_1', where: 'header:x-api-key', userId: 'local:mallory', sessionId: 's1', ip: '203.0.113.66', upstream: 'openai', route: null, requestId });
    const s1 = { userId: 'local:mallory', sessionId: 's1', authTime: START - MINUTE_MS };
    clock.now = START;
    detector.decoyHit(hit('r1'));
    const [first] = await actions();
    clock.now = START + MINUTE_MS;
    detector.forget(await alerts.undo(first!.id, 'local:root')); // as POST /api/admin/alerts/<id>/undo does
    expect(await revocations.isRevoked(s1)).toBe(false);
    clock.now = START + 5 * MINUTE_MS; // within the cooldown
    detector.decoyHit(hit('r2'));
    const after = await actions();
    expect(after.map((a) => [a.action, a.evidence.requestId])).toEqual([['revoke', 'r1'], ['revoke', 'r2']]);
    expect(await revocations.isRevoked(s1)).toBe(true);
  });

  it('undoing the later of two revocations leaves the earlier one in force: its sessions revoked, its suspension kept', async () => {
    const { clock, store, revocations, alerts, detector, actions } = setup();
    const hit = (requestId: string) => ({ kind: 'credential' as const, decoyId: 'dk_1', where: 'header:authorization', userId: 'local:ada', sessionId: 's', ip: '203.0.113.66', upstream: 'openai', route: null, requestId });
    clock.now = START;
    detector.decoyHit(hit('r1'));
    await actions(); // carried out (the detector acts in the background)
    // A session the first revocation ended (a thief's), and one signed in between the two.
    const stolen = { userId: 'local:ada', sessionId: 'thief', authTime: START - 60_000 };
    const between = { userId: 'local:ada', sessionId: 'between', authTime: START + 60 * MINUTE_MS };
    clock.now = START + 120 * MINUTE_MS; // past the cooldown: a second decoy hit is a second alert
    detector.decoyHit(hit('r2'));
    const [first, second] = await actions();
    expect([first!.action, second!.action]).toEqual(['revoke', 'revoke']);
    expect(await revocations.isRevoked(between)).toBe(true);

    await alerts.undo(second!.id, 'local:root');
    // What the second alert did is undone; what the first did stays, as the list still says (active).
    expect(await revocations.isRevoked(between)).toBe(false);
    expect(await revocations.isRevoked(stolen)).toBe(true);
    expect(await store.get(suspensionKey('local:ada'))).toBe(first!.id);
    expect((await alerts.list({ limit: 10 })).alerts.find((a) => a.id === first!.id)!.state).toBe('active');
    // Undoing the first too clears them.
    await alerts.undo(first!.id, 'local:root');
    expect(await revocations.isRevoked(stolen)).toBe(false);
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
  });

  it('two revocations undone oldest first (each instance acts on its own calls) leave nothing in force: no suspension, no revoked session', async () => {
    const { clock, store, revocations, alerts, detector, actions } = setup();
    const hit = (requestId: string) => ({ kind: 'credential' as const, decoyId: 'dk_1', where: 'header:authorization', userId: 'local:ada', sessionId: 's', ip: '203.0.113.66', upstream: 'openai', route: null, requestId });
    clock.now = START;
    detector.decoyHit(hit('r1'));
    await actions();
    const before = { userId: 'local:ada', sessionId: 'before', authTime: START - 60_000 };
    clock.now = START + 120 * MINUTE_MS;
    detector.decoyHit(hit('r2'));
    const [first, second] = await actions();
    expect([first!.action, second!.action]).toEqual(['revoke', 'revoke']);

    await alerts.undo(first!.id, 'local:root');
    // The second alert's step is still in force.
    expect(await revocations.isRevoked(before)).toBe(true);
    expect(await store.get(suspensionKey('local:ada'))).toBe(second!.id);
    await alerts.undo(second!.id, 'local:root');
    // Not the first alert's marks put back (it was undone): what was in force before both, nothing.
    expect(await revocations.isRevoked(before)).toBe(false);
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
  });

  it('two revocations undone oldest first with hundreds of other alerts after them still leave nothing in force', async () => {
    const { clock, store, revocations, alerts, detector, actions } = setup();
    const hit = (requestId: string) => ({ kind: 'credential' as const, decoyId: 'dk_1', where: 'header:authorization', userId: 'local:ada', sessionId: 's', ip: '203.0.113.66', upstream: 'openai', route: null, requestId });
    clock.now = START;
    detector.decoyHit(hit('r1'));
    await actions();
    clock.now = START + 120 * MINUTE_MS;
    detector.decoyHit(hit('r2'));
    const [first, second] = await actions();
    // 250 alerts about other users since: more than one page of the alert list (200).
    for (let i = 0; i < 250; i++) {
      clock.now += 1000;
      await alerts.apply({ rule: 'decoy', action: 'alert', reason: 'content', subject: { userId: `local:other${i}` }, evidence: {} }, { limit: 1, windowSeconds: 60, forMinutes: 1 });
    }
    await alerts.undo(first!.id, 'local:root');
    expect(await store.get(suspensionKey('local:ada'))).toBe(second!.id);
    await alerts.undo(second!.id, 'local:root');
    expect(await revocations.isRevoked({ userId: 'local:ada', sessionId: 'before', authTime: START - 60_000 })).toBe(false);
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
  });

  it('two re-authentications of one session (two instances): undoing one keeps the session ended while the other stands', async () => {
    const { clock, revocations, alerts } = setup();
    const reauth = { rule: 'ips_per_session' as const, action: 'reauth' as const, reason: 'many networks', subject: { userId: 'local:ada' }, evidence: {}, sessionIds: ['s1'] };
    const throttle = { limit: 1, windowSeconds: 60, forMinutes: 1 };
    const s1 = { userId: 'local:ada', sessionId: 's1', authTime: START - 60_000 };
    clock.now = START;
    const first = await alerts.apply(reauth, throttle);
    clock.now += 1000;
    const second = await alerts.apply(reauth, throttle);
    await alerts.undo(first.id, 'local:root');
    expect(await revocations.isRevoked(s1)).toBe(true);
    await alerts.undo(second.id, 'local:root');
    expect(await revocations.isRevoked(s1)).toBe(false);
  });

  it('an undo that lands while the step is still being taken leaves nothing of it in force', async () => {
    const { clock, store, revocations, alerts } = setup();
    clock.now = START;
    // The store is slow to set the suspension mark: the alert is listed (and undoable) before its marks are set.
    const slow = gate();
    holdSets(store, (key) => key === suspensionKey('local:ada'), slow.wait);
    const applying = decoyRevoke(alerts);
    const listed = await firstListed(alerts);
    expect((await alerts.undo(listed.id, 'local:root')).state).toBe('undone');
    slow.open();
    await applying;
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
    expect(await revocations.isRevoked({ userId: 'local:ada', sessionId: 's', authTime: START - 60_000 })).toBe(false);
  });

  it('an undo recorded just after the step re-checked its alert still lifts the step: no suspension outlives the undo', async () => {
    const { clock, store, revocations, alerts } = setup();
    clock.now = START;
    // Gates on the store, released in this order: the undo has read the alert (and found no mark to put back yet),
    // then the step sets its marks and re-checks its alert (still active), then the undo records itself.
    const marksSet = gate();
    const undoReachedCas = gate();
    const casGoes = gate();
    holdSets(store, (key) => key === suspensionKey('local:ada'), marksSet.wait);
    const replaceIfEquals = store.replaceIfEquals.bind(store);
    store.replaceIfEquals = async (key, expected, value) => {
      if (key.startsWith('alert:') && JSON.parse(value).alert?.state === 'undone') {
        undoReachedCas.open();
        await casGoes.wait;
      }
      return replaceIfEquals(key, expected, value);
    };
    const applying = decoyRevoke(alerts);
    const undoing = alerts.undo((await firstListed(alerts)).id, 'local:root');
    await undoReachedCas.wait;
    marksSet.open();
    await applying; // its re-check read the alert before the undo was recorded
    casGoes.open();
    expect((await undoing).state).toBe('undone');
    expect((await alerts.list({ limit: 10 })).alerts[0]!.state).toBe('undone');
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
    expect(await revocations.isRevoked({ userId: 'local:ada', sessionId: 's', authTime: START - 60_000 })).toBe(false);
  });

  it('dismissing an alert that took no action (a decoy as content) does not forgive an anomaly under way: it escalates on', async () => {
    const { clock, alerts, detector, actions } = setup();
    let at = steadyDay((t, e) => {
      clock.now = t;
      detector.observe(e);
    }, START);
    const burst = async (until: (seen: Alert[]) => boolean) => {
      for (let i = 0; i < 5_000 && !until(await actions()); i++) {
        at += MINUTE_MS / 70;
        clock.now = at;
        detector.observe(event({ sessionId: 'sess-2', clientIp: '198.51.100.20' }));
      }
    };
    await burst((seen) => seen.length > 0);
    detector.decoyHit({ kind: 'credential', decoyId: 'dk_1', where: 'body', userId: 'local:ada', sessionId: 'sess-2', ip: '198.51.100.20', upstream: 'openai', route: '/v1/chat/completions', requestId: 'req-d' });
    const [throttled, content] = await actions();
    expect([throttled!.action, content!.action]).toEqual(['throttle', 'alert']);
    // What POST /api/admin/alerts/<id>/undo does (lib/core/api/alerts.ts).
    detector.forget(await alerts.undo(content!.id, 'local:root'));
    await burst((seen) => seen.length > 2);
    expect((await actions()).map((a) => a.action)).toEqual(['throttle', 'alert', 'reauth']);
  });

  it('a store failing part-way through a revocation leaves nothing in force that no alert lists: no action, or one an admin can undo', async () => {
    // A real in-memory store whose writes to the keys named in `failing` throw, as a Redis that drops a command.
    const failing = new Set<string>();
    class FailingStore extends MemoryStore {
      override async set(key: string, value: string, ttlMs?: number) {
        if ([...failing].some((prefix) => key.startsWith(prefix))) throw new Error('store unreachable');
        return super.set(key, value, ttlMs);
      }
    }
    const { clock, store, revocations, alerts } = setup({}, (now) => new FailingStore(now));
    clock.now = START;
    const decision: Decision = { rule: 'decoy', action: 'revoke', reason: 'decoy key used', subject: { userId: 'local:ada' }, evidence: {} };
    const throttle = { limit: 1, windowSeconds: 60, forMinutes: 15 };
    const earlier = { userId: 'local:ada', sessionId: 'earlier', authTime: START - 60_000 };

    // The alert cannot be stored: nothing is done.
    failing.add('alert:');
    await expect(alerts.apply(decision, throttle)).rejects.toThrow();
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
    expect(await revocations.isRevoked(earlier)).toBe(false);
    expect((await alerts.list({ limit: 10 })).alerts).toEqual([]);

    // The alert is stored, then the suspension cannot be: the alert is listed, and its undo ends what was done.
    failing.clear();
    failing.add('det:suspend:');
    await expect(alerts.apply(decision, throttle)).rejects.toThrow();
    expect(await revocations.isRevoked(earlier)).toBe(true);
    const [listed] = (await alerts.list({ limit: 10 })).alerts;
    expect(listed).toMatchObject({ action: 'revoke', state: 'active', subject: { userId: 'local:ada' } });
    failing.clear();
    await alerts.undo(listed!.id, 'local:root');
    expect(await revocations.isRevoked(earlier)).toBe(false);
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
  });

  it('an undo the store failed part-way through (recorded, marks not yet put back) is finished by the admin’s retry', async () => {
    let failing = false;
    class FailingStore extends MemoryStore {
      override async deleteIfEquals(key: string, value: string) {
        if (failing && key.startsWith('det:suspend:')) throw new Error('store unreachable');
        return super.deleteIfEquals(key, value);
      }
    }
    const { clock, store, alerts } = setup({}, (now) => new FailingStore(now));
    clock.now = START;
    const decision: Decision = { rule: 'decoy', action: 'revoke', reason: 'decoy key used', subject: { userId: 'local:ada' }, evidence: {} };
    const alert = await alerts.apply(decision, { limit: 1, windowSeconds: 60, forMinutes: 15 });
    failing = true;
    await expect(alerts.undo(alert.id, 'local:root')).rejects.toThrow();
    expect((await alerts.list({ limit: 10 })).alerts[0]!.state).toBe('undone');
    failing = false;
    expect((await alerts.undo(alert.id, 'local:root')).state).toBe('undone');
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
    expect(await store.get(forgivenKey('local:ada'))).toBe(String(START));
  });

  it("an undo's retry that fails before the forgiven mark writes it (every instance's detector learns of the undo)", async () => {
    let failing = false;
    class FailingStore extends MemoryStore {
      override async set(key: string, value: string, ttlMs?: number) {
        if (failing && key.startsWith('det:forgiven:')) throw new Error('store unreachable');
        return super.set(key, value, ttlMs);
      }
    }
    const { clock, store, alerts } = setup({}, (now) => new FailingStore(now));
    clock.now = START;
    const decision: Decision = { rule: 'decoy', action: 'revoke', reason: 'decoy key used', subject: { userId: 'local:ada' }, evidence: {} };
    const alert = await alerts.apply(decision, { limit: 1, windowSeconds: 60, forMinutes: 15 });
    failing = true;
    await expect(alerts.undo(alert.id, 'local:root')).rejects.toThrow();
    expect(await store.get(forgivenKey('local:ada'))).toBeNull();
    failing = false;
    clock.now = START + MINUTE_MS;
    await alerts.undo(alert.id, 'local:root');
    // The time of the undo, as the first attempt recorded it.
    expect(await store.get(forgivenKey('local:ada'))).toBe(String(START));
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
  });

  it('a list read while a suspending alert is indexed but not yet stored (another instance) keeps it indexed', async () => {
    const { clock, store, alerts } = setup();
    clock.now = START;
    const atGap = gate();
    const stored = gate();
    const unhold = holdSets(store, (key) => key.startsWith('alert:'), stored.wait, atGap.open);
    const applying = decoyRevoke(alerts);
    await atGap.wait;
    await alerts.list({ limit: 10 });
    stored.open();
    const suspending = await applying;
    unhold();
    // Past the retention, the log entry trimmed by a later alert: the suspension is still listed, and undoable.
    clock.now = START + 31 * DAY_MS;
    await alerts.apply({ rule: 'key_calls', action: 'alert', reason: 'busy key', subject: { fingerprint: 'f' }, evidence: {} }, { limit: 1, windowSeconds: 60, forMinutes: 15 });
    expect((await alerts.list({ limit: 10 })).alerts.map((a) => a.id)).toContain(suspending.id);
    expect((await alerts.undo(suspending.id, 'local:root')).state).toBe('undone');
    expect(await store.get(suspensionKey('local:ada'))).toBeNull();
  });

  for (const [kind, makeStore] of [
    ['memory', (now: () => number) => new MemoryStore(now)],
    ['SQLite', (now: () => number) => new SqliteStore(':memory:', now)],
  ] as const) {
    it(`a suspension stays listed and undoable past the retention, until an admin undoes it (${kind} store)`, async () => {
      const { clock, store, alerts } = setup({}, makeStore);
      clock.now = START;
      const decision: Decision = { rule: 'decoy', action: 'revoke', reason: 'decoy key used', subject: { userId: 'local:ada' }, evidence: {} };
      const suspending = await alerts.apply(decision, { limit: 1, windowSeconds: 60, forMinutes: 15 });
      const other = (): Promise<Alert> =>
        alerts.apply({ rule: 'key_calls', action: 'alert', reason: 'busy key', subject: { fingerprint: 'f' }, evidence: {} }, { limit: 1, windowSeconds: 60, forMinutes: 15 });
      // Past the 30-day retention (another alert written then trims the log): the alert is still there.
      for (const day of [31, 400]) {
        clock.now = START + day * DAY_MS;
        const later = await other();
        expect((await alerts.list({ limit: 10 })).alerts.map((a) => [a.id, a.state])).toEqual([
          [later.id, 'active'],
          [suspending.id, 'active'],
        ]);
        expect(await store.get(suspensionKey('local:ada'))).toBe(suspending.id);
      }
      // Also page by page: the log's last page ends with it.
      const paged: string[] = [];
      let cursor: string | undefined;
      do {
        const page = await alerts.list({ limit: 1, ...(cursor ? { cursor } : {}) });
        paged.push(...page.alerts.map((a) => a.id));
        cursor = page.cursor ?? undefined;
      } while (cursor);
      expect(paged.at(-1)).toBe(suspending.id);
      expect(paged.filter((id) => id === suspending.id)).toHaveLength(1);
      expect((await alerts.undo(suspending.id, 'local:root')).state).toBe('undone');
      expect(await store.get(suspensionKey('local:ada'))).toBeNull();
      // Undone, it is kept for the retention from the undo, then goes.
      clock.now += 29 * DAY_MS;
      expect((await alerts.list({ limit: 10 })).alerts.find((a) => a.id === suspending.id)?.state).toBe('undone');
      clock.now += 2 * DAY_MS;
      await other();
      expect((await alerts.list({ limit: 10 })).alerts.map((a) => a.id)).not.toContain(suspending.id);
      expect(JSON.parse((await store.get('alerts:suspending'))!)).toEqual([]);
    });
  }

  it('undoing a throttle lifts it and makes what the user does their baseline, on every instance', async () => {
    const { clock, store, alerts, detector, actions } = setup({ calls: { minPerMinute: 10 } });
    let at = START;
    const burst = async (minutes: number) => {
      const end = at + minutes * MINUTE_MS;
      while (at < end) {
        at += MINUTE_MS / 40;
        clock.now = at;
        detector.observe(event());
        await detector.settled();
      }
    };
    await burst(2);
    const [throttle] = await actions();
    expect(throttle!.action).toBe('throttle');
    await alerts.undo(throttle!.id, 'local:root');
    expect(await store.get(throttleKey('local:ada'))).toBeNull();
    // Still at that rate 15 minutes on: escalation would say re-authenticate; the undo (read from the store, as
    // another instance would) says this rate is normal for this user.
    await burst(15);
    expect((await actions()).slice(1)).toEqual([]);
    // A burst far above the new baseline is seen again, from the first step.
    const faster = async (minutes: number) => {
      const end = at + minutes * MINUTE_MS;
      while (at < end) {
        at += MINUTE_MS / 400;
        clock.now = at;
        detector.observe(event());
        await detector.settled();
      }
    };
    await faster(1);
    const userAlerts = (await actions()).slice(1).filter((a) => a.subject.userId !== undefined);
    expect(userAlerts.map((a) => a.action)).toEqual(['throttle']);
  });

  it('alerts once per key version when an upstream echoes the key, suggesting rotation', async () => {
    const { clock, detector, actions } = setup();
    detector.observe(event({ scrubberHits: 2 }));
    clock.now += MINUTE_MS;
    detector.observe(event({ scrubberHits: 1 }));
    const alerts = await actions();
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({ rule: 'scrubber_hits', action: 'alert', subject: { upstream: 'openai', fingerprint: '64a8e56f852b' }, evidence: { hits: 2 } });
    expect(alerts[0]!.reason).toMatch(/Rotate this key/);
  });

  it("an echo of the caller's own key or connected-account token is said as theirs, not as a key to rotate on the Keys page", async () => {
    const sources = { openai: 'static', byok: 'user-key', github: 'oauth', tenant: 'claim' } as const;
    const { detector, actions } = setup({}, undefined, (upstream) => sources[upstream as keyof typeof sources]);
    for (const [upstream, fingerprint] of [['openai', 'aaaaaaaaaaaa'], ['byok', 'bbbbbbbbbbbb'], ['github', 'cccccccccccc'], ['tenant', 'dddddddddddd']]) {
      detector.observe(event({ upstream, keyFingerprint: fingerprint, scrubberHits: 1 }));
    }
    const alerts = await actions();
    expect(alerts.map((alert) => [alert.subject.upstream, alert.evidence.credential])).toEqual([
      ['openai', 'service-key'],
      ['byok', 'own-key'],
      ['github', 'connected-account'],
      ['tenant', 'claim-key'],
    ]);
    const reasons = alerts.map((alert) => alert.reason);
    expect(reasons[0]).toMatch(/echoed key aaaaaaaaaaaa .*Rotate this key/);
    expect(reasons[1]).toMatch(/echoed the caller's own key bbbbbbbbbbbb .*Only they can replace it/);
    expect(reasons[2]).toMatch(/echoed the caller's connected-account token cccccccccccc .*disconnecting revokes it/);
    expect(reasons[3]).toMatch(/chosen by a session claim.*Replace this key in the environment/);
    for (const reason of reasons.slice(1)) expect(reason).not.toMatch(/Rotate this key/);
  });

  it("counts refused calls as errors, but not limits' refusals, outages, or another site's forgeries", async () => {
    const { clock, detector, actions } = setup({ calls: { minPerMinute: 1000 } });
    const notTheCallers: Array<Partial<ProxyEvent>> = [
      { status: 429, outcome: 'refused', errorCode: 'rate_limited' },
      { status: 429, outcome: 'complete' }, // the upstream's own 429
      { status: 503, outcome: 'complete' }, // an outage
      { status: 504, outcome: 'upstream_error', errorCode: 'upstream_timeout' },
      { status: 503, outcome: 'unavailable', errorCode: 'store_unavailable', units: 0 }, // Keyward's own outage (nothing sent)
      { status: 403, outcome: 'refused', errorCode: 'csrf_failed' }, // sent by another site
      // A decoy (answered 401): as content an attacker can put it into an honest user's calls; it has its own rule.
      { status: 401, outcome: 'refused', errorCode: 'decoy_presented' },
    ];
    for (let i = 0; i < 150; i++) {
      clock.now = START + i * 400;
      detector.observe(event(notTheCallers[i % notTheCallers.length]));
    }
    expect(await actions()).toEqual([]);
    for (let i = 0; i < 25; i++) {
      clock.now += 1000;
      detector.observe(event({ status: 401 }));
    }
    expect((await actions()).map((a) => [a.rule, a.action])).toEqual([['errors', 'throttle']]);
  });

  it('does not count calls the client abandoned before the answer as failed calls (search-as-you-type), but as calls', async () => {
    const { clock, detector, actions } = setup();
    // Three hours at 5 calls a minute, then 25 calls cancelled by the client in one minute: recorded as the
    // pipeline records them, 400 `bad_request` with outcome `aborted`.
    for (let i = 0; i < 3 * 60 * 5; i++) {
      clock.now = START + i * (MINUTE_MS / 5);
      detector.observe(event());
    }
    const burst = clock.now;
    for (let i = 0; i < 25; i++) {
      clock.now = burst + (i + 1) * 2000;
      detector.observe(event({ status: 400, outcome: 'aborted', errorCode: 'bad_request', units: 0 }));
    }
    expect(await actions()).toEqual([]);
    // They are still calls: enough of them in a minute is a volume anomaly.
    for (let i = 0; i < 60; i++) {
      clock.now += 500;
      detector.observe(event({ status: 400, outcome: 'aborted', errorCode: 'bad_request', units: 0 }));
    }
    expect((await actions()).map((a) => [a.rule, a.action])).toEqual([['calls', 'throttle']]);
  });

  it('revokes for a decoy in a credential’s place only; as content (a body, a path, a cookie) it alerts', async () => {
    const { clock, revocations, detector, actions } = setup();
    const hit = { kind: 'credential' as const, decoyId: 'dk_1', userId: 'local:ada', sessionId: 's', ip: '203.0.113.7', upstream: 'openai', route: '/v1/chat/completions', requestId: 'r' };
    for (const where of ['body', 'path', 'header:cookie', 'header:referer', 'query:q']) detector.decoyHit({ ...hit, where, ip: `${where}-ip` });
    expect((await actions()).map((a) => [a.evidence.where, a.action])).toEqual([
      ['body', 'alert'],
      ['path', 'alert'],
      ['header:cookie', 'alert'],
      ['header:referer', 'alert'],
      ['query:q', 'alert'],
    ]);
    expect(await revocations.isRevoked({ userId: 'local:ada', sessionId: 's', authTime: START - 1000 })).toBe(false);
    clock.now += 1000;
    detector.decoyHit({ ...hit, where: 'query:api_key' });
    expect((await actions()).at(-1)).toMatchObject({ action: 'revoke', evidence: { where: 'query:api_key' } });
  });

  it('coalesces repeated decoy hits (per decoy, address and user; per decoy without a session) and bounds how many a minute are written', async () => {
    const { clock, detector, actions } = setup();
    const hit = { kind: 'credential' as const, decoyId: 'dk_1', where: 'header:authorization', userId: null, sessionId: null, upstream: 'openai', route: null, requestId: 'r' };
    for (let i = 0; i < 5; i++) detector.decoyHit({ ...hit, ip: '203.0.113.9' });
    expect(await actions()).toHaveLength(1);
    // A script replaying the public decoy without a session from many addresses: one alert per decoy and cooldown.
    for (let i = 0; i < 100; i++) detector.decoyHit({ ...hit, ip: `198.51.100.${i}` });
    expect(await actions()).toHaveLength(1);
    detector.decoyHit({ ...hit, decoyId: 'dk_2', ip: '198.51.100.1' });
    expect(await actions()).toHaveLength(2);
    // Signed-in hits (content, so alerts) per address and user: at most 30 alerts a minute are written (the two
    // without a session are counted apart).
    const content = { ...hit, where: 'body', sessionId: 's' };
    for (let i = 0; i < 100; i++) detector.decoyHit({ ...content, userId: `local:u${i}`, ip: `198.51.100.${i}` });
    expect(await actions()).toHaveLength(32);
    // The budget is spent, but a decoy in a credential's place by a signed-in user is still revoked at once.
    detector.decoyHit({ ...hit, userId: 'local:thief', sessionId: 's2', ip: '198.51.100.200' });
    expect((await actions()).at(-1)).toMatchObject({ action: 'revoke', subject: { userId: 'local:thief' } });
    expect(await actions()).toHaveLength(33);
    clock.now += MINUTE_MS;
    detector.decoyHit({ ...content, userId: 'local:late', ip: '192.0.2.1' });
    expect(await actions()).toHaveLength(34);
    // One user's host rotating through its IPv6 /64 is one address: one alert, not one per address.
    clock.now += MINUTE_MS;
    for (let i = 1; i <= 50; i++) detector.decoyHit({ ...content, userId: 'local:rotating', ip: `2001:db8:5:7::${i.toString(16)}` });
    expect(await actions()).toHaveLength(35);
  });

  it("a script replaying many public decoys without a session cannot use up the minute's alerts of hits that name a user", async () => {
    const { detector, actions } = setup();
    const anonymous = { kind: 'credential' as const, where: 'header:authorization', userId: null, sessionId: null, ip: '198.51.100.1', upstream: 'openai', route: null };
    // 30 distinct planted decoys (the file may hold 100): each its own alert, and the minute's share for them is spent.
    for (let i = 0; i < 30; i++) detector.decoyHit({ ...anonymous, decoyId: `dk_${i}`, requestId: `anon-${i}` });
    detector.decoyHit({ ...anonymous, decoyId: 'dk_99', requestId: 'anon-99' });
    // In the same minute, a decoy as content in a signed-in user's request: alerted, naming the user.
    detector.decoyHit({ kind: 'credential', decoyId: 'dk_0', where: 'body', userId: 'local:ada', sessionId: 's1', ip: '203.0.113.9', upstream: 'openai', route: '/v1/chat', requestId: 'ada-1' });
    const written = await actions();
    expect(written).toHaveLength(31);
    expect(written.map((a) => a.evidence.requestId)).not.toContain('anon-99');
    expect(written.at(-1)).toMatchObject({ action: 'alert', subject: { userId: 'local:ada' }, evidence: { requestId: 'ada-1' } });
  });

  it("a valid session cookie that failed the CSRF check: alerted, its user named as evidence only, from the budget of hits that name nobody", async () => {
    const { revocations, detector, actions } = setup();
    // Another site can make a user's browser send this: nothing is revoked, and the alert's subject is no user.
    const forged = { kind: 'credential' as const, decoyId: 'dk_1', where: 'header:authorization', userId: null, sessionId: null, unverifiedUserId: 'local:ada', ip: '198.51.100.1', upstream: 'openai', route: '/v1/models', requestId: 'f1' };
    detector.decoyHit(forged);
    detector.decoyHit({ ...forged, ip: '198.51.100.2', requestId: 'f2' }); // the same decoy and user: coalesced
    detector.decoyHit({ ...forged, unverifiedUserId: 'local:bob', requestId: 'f3' });
    detector.decoyHit({ ...forged, unverifiedUserId: undefined, requestId: 'f4' }); // no session at all: its own alert
    const written = await actions();
    expect(written.map((a) => [a.action, a.subject, a.evidence.unverifiedUser, a.evidence.requestId])).toEqual([
      ['alert', { upstream: 'openai' }, 'local:ada', 'f1'],
      ['alert', { upstream: 'openai' }, 'local:bob', 'f3'],
      ['alert', { upstream: 'openai' }, undefined, 'f4'],
    ]);
    expect(written[0]!.evidence.session).toBe('not same-site verified');
    expect(await revocations.isRevoked({ userId: 'local:ada', sessionId: 's', authTime: START - 1000 })).toBe(false);
    // Such hits, many users' (one site's visitors), spend the share of hits that name nobody, not the other.
    for (let i = 0; i < 40; i++) detector.decoyHit({ ...forged, unverifiedUserId: `local:v${i}`, requestId: `v${i}` });
    detector.decoyHit({ ...forged, userId: 'local:ada', sessionId: 's', unverifiedUserId: undefined, where: 'body', requestId: 'named' });
    const after = await actions();
    expect(after).toHaveLength(31);
    expect(after.at(-1)).toMatchObject({ subject: { userId: 'local:ada' }, evidence: { requestId: 'named' } });
  });

  it('does nothing when disabled, but still acts on decoys', async () => {
    const { clock, detector, actions } = setup({ enabled: false });
    for (let i = 0; i < 200; i++) {
      clock.now = START + i * 100;
      detector.observe(event());
    }
    expect(await actions()).toEqual([]);
    detector.decoyHit({ kind: 'route', decoyId: null, where: 'route', userId: 'local:ada', sessionId: 's', ip: null, upstream: 'openai', route: '/v1/admin', requestId: 'r' });
    expect((await actions()).map((a) => a.action)).toEqual(['revoke']);
  });
});

/** A promise the test resolves when it chooses (`open`): orders a step's store calls against another's. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

/**
 * Holds the store's `set` of each key `held` picks until `until` resolves (calling `reached` first, when given):
 * a step's store call made slow, to order it against another's. Returns what puts the store's own `set` back.
 */
function holdSets(store: ReturnType<typeof setup>['store'], held: (key: string) => boolean, until: Promise<void>, reached?: () => void): () => void {
  const set = store.set.bind(store);
  store.set = async (key, value, ttlMs) => {
    if (held(key)) {
      reached?.();
      await until;
    }
    return set(key, value, ttlMs);
  };
  return () => {
    store.set = set;
  };
}

/** The detector's strongest step on ada (a decoy key used): revoke and suspend. */
function decoyRevoke(alerts: ReturnType<typeof setup>['alerts']): Promise<Alert> {
  return alerts.apply({ rule: 'decoy', action: 'revoke', reason: 'decoy', subject: { userId: 'local:ada' }, evidence: {} }, { limit: 1, windowSeconds: 60, forMinutes: 1 });
}

/** The newest alert, once the step being taken has stored it (polled: the step waits on a gated store call). */
async function firstListed(alerts: ReturnType<typeof setup>['alerts']): Promise<Alert> {
  for (let i = 0; i < 100; i++) {
    const [listed] = (await alerts.list({ limit: 10 })).alerts;
    if (listed) return listed;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  throw new Error('no alert was listed');
}
