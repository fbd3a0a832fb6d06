import { randomUUID } from 'node:crypto';
import { encode } from '@auth/core/jwt';
import type { UpstreamDefinition } from '../lib/core/config/load';
import { createLogger } from '../lib/core/log/logger';
import { handleProxy } from '../lib/core/pipeline';
import { createRuntime, type Runtime } from '../lib/core/runtime';
import { SESSION_COOKIE, authTimeClaims } from '../lib/core/session/session';
import type { Env } from '../lib/core/upstream/registry';
import { localUsername } from '../lib/core/users/file';

/**
 * `npm run dev`'s demo traffic: so the admin dashboard has something to show on a fresh checkout, a few hundred
 * calls by a few demo users over the last twelve hours are made through the real pipeline (`handleProxy`: session,
 * CSRF, policy, limits, key, forward, scrubber, audit, aggregates, detector) to the local demo upstream. Nothing
 * is written to the aggregates directly: only the clock is simulated (the runtime's injected `now`), so each call
 * is recorded in the hour it is planned for, as if it had been made then. The last minute holds a burst by one
 * demo user, which the detector throttles with its default rules (an alert on /admin/alerts); one user calls
 * `/leaky` (an upstream that echoes its key: a scrubber-hit alert that suggests rotating the key), and for one
 * minute the upstream times out (`/slow`: 504s, the error and latency charts' spike).
 *
 * Demo mode only (KEYWARD_DEMO=true, never NODE_ENV=production), only against the demo upstream this process
 * started, only into a store the server shares (not `memory`), and only when the last 24 hours have no calls,
 * so a restart does not add more. KEYWARD_DEMO_TRAFFIC=false turns it off.
 */

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;
/** How far back the traffic goes: the overview's 24-hour chart shows these hours. */
export const DEMO_HOURS = 12;
/** The plan never holds more calls than this (it is ~330): seeding takes a few seconds at most. */
export const MAX_DEMO_CALLS = 400;

/** The demo users. Each makes fewer calls than the demo upstream's rate limit (120 a minute per user), as all are made within seconds. */
export const DEMO_CALLERS = [
  { userId: 'local:demo', name: 'Demo User', calls: 40 },
  { userId: 'demo:ada', name: 'Ada (demo)', calls: 95 },
  { userId: 'demo:grace', name: 'Grace (demo)', calls: 55 },
  { userId: 'demo:lin', name: 'Lin (demo)', calls: 70 },
  { userId: 'demo:mallory', name: 'Mallory (demo)', calls: 10 },
] as const;
/** Who bursts in the last minute: more calls than the detector's default floor (40 a minute) allows. */
export const BURST_USER = 'demo:mallory';
const BURST_CALLS = 60;
/** Calls that time out (the route's 1.5 s timeout, a 504): made together, so they cost 1.5 s once. The error charts' spike. */
const TIMEOUT_CALLS = 6;
/** Who calls the echoing route, and how often (one scrubber-hit alert: the detector waits an hour between them). */
const LEAKY_USER = 'demo:grace';
const LEAKY_CALLS = 2;
/** Relative traffic of each hour, oldest first: a working afternoon rather than a flat line. */
const HOUR_SHAPE = [0.3, 0.4, 0.6, 0.9, 1.2, 1.4, 1.1, 1.3, 1.5, 1.2, 0.9, 0.7];

export interface PlannedCall {
  readonly at: number;
  readonly userId: string;
  readonly method: 'GET' | 'POST';
  /** The path after /api/proxy/demo/. */
  readonly path: readonly string[];
  readonly body?: Readonly<Record<string, unknown>>;
}

/** A small seeded generator (mulberry32): the same plan for the same `now`, so tests can count on it. */
function generator(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An ordinary call of config/demo.json's `demo` upstream: mostly reads, some posts, now and then a body its contract refuses. */
function ordinaryCall(random: () => number): Pick<PlannedCall, 'method' | 'path' | 'body'> {
  const pick = random();
  if (pick < 0.35) return { method: 'GET', path: ['hello'] };
  if (pick < 0.8) return { method: 'GET', path: ['items', String(1 + Math.floor(random() * 40))] };
  if (pick < 0.95) return { method: 'POST', path: ['echo'], body: { note: 'demo traffic' } };
  // An unknown field: refused with 400 by the route's body contract (an error in the charts, with a reason).
  return { method: 'POST', path: ['echo'], body: { note: 'demo traffic', debug: true } };
}

/** The hour (0 = oldest) each of `count` calls falls in, following HOUR_SHAPE. */
function hourOf(random: () => number): number {
  const total = HOUR_SHAPE.reduce((sum, weight) => sum + weight, 0);
  let point = random() * total;
  for (let hour = 0; hour < HOUR_SHAPE.length; hour++) {
    point -= HOUR_SHAPE[hour]!;
    if (point < 0) return hour;
  }
  return HOUR_SHAPE.length - 1;
}

/**
 * The calls to make, oldest first: each demo user's ordinary calls spread over the last DEMO_HOURS hours (ending
 * two minutes before `now`), a minute when the upstream times out, two calls of `/leaky`, and the burst in the
 * minute before `now`. Calls planned for the same instant are made together.
 */
export function planDemoTraffic(now: number): PlannedCall[] {
  const random = generator(Math.floor(now / HOUR_MS));
  const start = now - DEMO_HOURS * HOUR_MS;
  const quietEnd = now - 2 * MINUTE_MS;
  const calls: PlannedCall[] = [];
  for (const { userId, calls: count } of DEMO_CALLERS) {
    for (let i = 0; i < count; i++) {
      const at = Math.min(start + hourOf(random) * HOUR_MS + Math.floor(random() * HOUR_MS), quietEnd);
      calls.push({ at, userId, ...ordinaryCall(random) });
    }
  }
  const slowAt = start + 7 * HOUR_MS + 41 * MINUTE_MS;
  for (let i = 0; i < TIMEOUT_CALLS; i++) calls.push({ at: slowAt, userId: DEMO_CALLERS[i % DEMO_CALLERS.length]!.userId, method: 'GET', path: ['slow'] });
  const leakyAt = start + 4 * HOUR_MS + 17 * MINUTE_MS;
  for (let i = 0; i < LEAKY_CALLS; i++) calls.push({ at: leakyAt + i * 1_000, userId: LEAKY_USER, method: 'GET', path: ['leaky'] });
  // The whole burst inside one minute, so its rate is read within that minute: the previous whole one.
  const burstStart = Math.floor(now / MINUTE_MS) * MINUTE_MS - MINUTE_MS;
  for (let i = 0; i < BURST_CALLS; i++) calls.push({ at: burstStart + i * 800, userId: BURST_USER, method: 'GET', path: ['items', String(i + 1)] });
  return calls.sort((a, b) => a.at - b.at);
}

export type DemoTrafficResult =
  | { readonly seeded: true; readonly calls: number; readonly users: number; readonly hours: number; readonly statuses: Readonly<Record<string, number>>; readonly alerts: number }
  | { readonly seeded: false; readonly reason: string };

export interface DemoTrafficOptions {
  /** The environment `next dev` gets (scripts/dev-setup.ts prepareDevEnvironment). */
  readonly env: Env;
  /** Upstreams declared in TypeScript (upstreams/index.ts), as the app has them. */
  readonly upstreams?: readonly UpstreamDefinition[];
  /** The origin of the demo upstream this process started (`http://127.0.0.1:4010`): the only one called. */
  readonly upstreamOrigin: string;
  /** The real time the traffic ends at (tests). */
  readonly now?: number;
}

/** Why the demo traffic is not made here, or null when it may be. */
export function demoTrafficRefusal(env: Env): string | null {
  if (env.NODE_ENV === 'production') return 'never in production';
  if (env.KEYWARD_DEMO !== 'true') return 'only in demo mode (KEYWARD_DEMO=true, as npm run dev sets it)';
  if (env.KEYWARD_DEMO_TRAFFIC === 'false' || env.KEYWARD_DEMO_TRAFFIC === '0') return 'turned off (KEYWARD_DEMO_TRAFFIC=false)';
  if (env.KEYWARD_STORE === 'memory') return 'KEYWARD_STORE=memory is not shared with the server';
  return null;
}

/** Makes the planned calls (see the file's comment); resolves once they are on record in the store. */
export async function seedDemoTraffic(options: DemoTrafficOptions): Promise<DemoTrafficResult> {
  const refusal = demoTrafficRefusal(options.env);
  if (refusal) return { seeded: false, reason: refusal };
  const realNow = options.now ?? Date.now();
  let clock = realNow;
  const runtime = createRuntime({ env: options.env, upstreams: options.upstreams, now: () => clock, logger: createLogger({ level: 'error' }) });
  try {
    const demo = runtime.registry.get('demo');
    if (!demo || demo.base.origin !== new URL(options.upstreamOrigin).origin) {
      return { seeded: false, reason: `the configuration's "demo" upstream is not the local demo upstream (${options.upstreamOrigin})` };
    }
    const recent = await runtime.usage.series({ period: 'hour', fromMs: realNow - 23 * HOUR_MS, toMs: realNow });
    if (recent.total.calls > 0) return { seeded: false, reason: 'the last 24 hours already have calls' };

    const plan = planDemoTraffic(realNow);
    const origin = publicOrigin(options.env);
    // Each demo user signs in at their first call, and again whenever their session has ended (a session lasts
    // KEYWARD_SESSION_MAX_AGE from its sign-in, 8 hours by default: less than the DEMO_HOURS simulated).
    const sessionMs = runtime.settings.KEYWARD_SESSION_MAX_AGE * 1000;
    const signedIn = new Map<string, { cookie: string; at: number }>();
    const cookieAt = async (userId: string, at: number): Promise<string> => {
      const held = signedIn.get(userId);
      if (held && at < held.at + sessionMs) return held.cookie;
      const name = DEMO_CALLERS.find((caller) => caller.userId === userId)!.name;
      // A local user (the demo account) is checked against the users file on every call, password version included.
      const username = localUsername(userId);
      const passwordVersion = username === null ? null : (runtime.users?.find(username)?.passwordVersion ?? null);
      const cookie = await sessionCookie(options.env.AUTH_SECRET!, { userId, name, passwordVersion }, at);
      signedIn.set(userId, { cookie, at });
      return cookie;
    };
    const statuses: Record<string, number> = {};
    for (let i = 0; i < plan.length; ) {
      const at = plan[i]!.at;
      const together: PlannedCall[] = [];
      while (i < plan.length && plan[i]!.at === at) together.push(plan[i++]!);
      clock = at;
      const cookies: string[] = [];
      for (const call of together) cookies.push(await cookieAt(call.userId, at));
      for (const status of await Promise.all(together.map((call, index) => makeCall(runtime, origin, cookies[index]!, call)))) {
        statuses[status] = (statuses[status] ?? 0) + 1;
      }
      // A step the detector takes is written before the next call, as it would be within the seconds between two real calls.
      await runtime.detector.settled();
    }
    clock = realNow;
    await runtime.audit.flush();
    const { alerts } = await runtime.alerts.list({ limit: 50 });
    return { seeded: true, calls: plan.length, users: DEMO_CALLERS.length, hours: DEMO_HOURS, statuses, alerts: alerts.length };
  } finally {
    await closeRuntime(runtime);
  }
}

/** One call as the demo page's browser makes it: the session cookie, the CSRF header, and the Origin on a POST. */
async function makeCall(runtime: Runtime, origin: string, cookie: string, call: PlannedCall): Promise<number> {
  const headers: Record<string, string> = { cookie, 'x-keyward-csrf': '1' };
  if (call.method === 'POST') {
    headers.origin = origin;
    headers['content-type'] = 'application/json';
  }
  const request = new Request(`${origin}/api/proxy/demo/${call.path.map(encodeURIComponent).join('/')}`, {
    method: call.method,
    headers,
    body: call.body ? JSON.stringify(call.body) : null,
  });
  const response = await handleProxy(request, { upstream: 'demo', path: call.path }, runtime);
  // Read to the end: the call is recorded when its body has been streamed, as for a browser.
  await response.arrayBuffer();
  return response.status;
}

/** A session cookie as sign-in writes it (lib/next/auth.ts), for a demo user signed in at `signedInAt`. */
async function sessionCookie(
  authSecret: string,
  { userId, name, passwordVersion }: { userId: string; name: string; passwordVersion: string | null },
  signedInAt: number,
): Promise<string> {
  const token = await encode({
    token: {
      sub: userId,
      name,
      roles: ['user'],
      sid: randomUUID(),
      ...authTimeClaims(signedInAt),
      ...(passwordVersion === null ? {} : { pwv: passwordVersion }),
    },
    secret: authSecret,
    salt: SESSION_COOKIE,
    maxAge: 24 * 3600,
  });
  return `${SESSION_COOKIE}=${token}`;
}

/** The origin the server's CSRF check expects: AUTH_URL's, else next dev's own. */
function publicOrigin(env: Env): string {
  if (env.AUTH_URL) return new URL(env.AUTH_URL).origin;
  return `http://localhost:${env.PORT ?? 3000}`;
}

async function closeRuntime(runtime: Runtime): Promise<void> {
  await runtime.audit.flush().catch(() => {});
  const dispatcher = runtime.dispatcher as { close?: () => Promise<void> };
  await dispatcher.close?.().catch(() => {});
  await runtime.store.close().catch(() => {});
}
