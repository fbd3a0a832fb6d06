import ipaddr from 'ipaddr.js';
import type { Logger } from 'pino';
import type { ProxyEvent } from '../pipeline';
import type { CredentialPlan } from '../upstream/registry';
import { forgives, type Alert, type AlertAction, type AlertRule, type Alerts, type Decision } from './alerts';
import { limitBucket } from '../client/ip';
import { RateBaseline, RecentSet, RouteMemory } from './baseline';
import type { DetectorConfig } from './config';
import type { DecoyHit, SecuritySignals } from './signals';

const MINUTE_MS = 60_000;
/** Subjects kept in memory; the least recently seen are forgotten first (they start a new baseline). */
const MAX_USERS = 50_000;
const MAX_SESSIONS = 100_000;
const MAX_KEYS = 10_000;
/** Sessions remembered per user, to end them on re-authentication. */
const MAX_RECENT_SESSIONS = 32;
const MAX_DECOY_KEYS = 10_000;
/**
 * Decoy alerts written per instance and minute, at most, for hits that name a user and, apart, for hits that
 * do not (the rest are coalesced or dropped, and logged).
 */
const DECOY_ALERTS_PER_MINUTE = 30;
/** Where a decoy is a credential presented, not content: auth headers and key-like query parameters. */
const CREDENTIAL_HEADERS = new Set(['authorization', 'proxy-authorization', 'x-api-key', 'api-key', 'x-goog-api-key', 'x-auth-token', 'x-access-token']);
const CREDENTIAL_QUERY = /^(?:key|api[-_]?key|access[-_]?token|token|auth|secret|client[-_]?secret|password)$/i;

/** Steps of the graduated response, in order (README "Anomaly detection"). */
const STEPS: readonly AlertAction[] = ['alert', 'throttle', 'reauth', 'revoke'];

/**
 * Refusals that are limits doing their job, another site's forgery, or a decoy (which has its own rule, and
 * which an attacker can get into an honest user's requests as content), not failures of the caller's calls.
 */
const NOT_CALLER_ERRORS = new Set(['rate_limited', 'throttled', 'quota_exceeded', 'budget_exceeded', 'csrf_failed', 'decoy_presented']);

/**
 * A call refused for what the caller asked (4xx from the upstream or from Keyward's policy: what probing looks
 * like). Not 5xx or timeouts (an outage is nobody's anomaly), not the upstream's own 429, not limit refusals,
 * and not a call the client abandoned before its answer (recorded 400 `bad_request`, outcome `aborted`): nobody
 * refused it, and a search-as-you-type page cancels many. An upstream's 4xx whose body the client did not read to
 * the end (outcome `aborted`, the upstream's status, no error code) was refused, and counts.
 */
function isCallerError(event: ProxyEvent): boolean {
  if (event.outcome === 'aborted' && event.errorCode === 'bad_request') return false;
  return event.status >= 400 && event.status < 500 && event.status !== 429 && !NOT_CALLER_ERRORS.has(event.errorCode ?? '');
}

interface UserState {
  readonly calls: RateBaseline;
  readonly errors: RateBaseline;
  readonly spend: RateBaseline;
  /** 0 = nothing done; then the index in STEPS of the last step taken. */
  level: number;
  lastStepAt: number;
  lastAnomalyAt: number;
  history: number;
  /** Every route the user called, for the "new route mix" rule. */
  readonly routes: RouteMemory;
  readonly newRoutes: RecentSet;
  readonly sessions: RecentSet;
  /** A step is being written; the next event waits for it rather than taking it twice. */
  busy: boolean;
}

interface KeyState {
  readonly calls: RateBaseline;
  lastAlertAt: number;
}

/**
 * Watches every call's record (the pipeline's `onComplete`) for behaviour that looks like a leaked key or a
 * hijacked session, and answers in steps: throttle → require re-authentication → revoke every session and
 * suspend the user's own keys. Decoy hits go straight to the last step.
 *
 * Per user it keeps rolling baselines (lib/core/detect/baseline.ts) of calls, failed calls and budget units per
 * minute, the client IPs of each session and the routes the user calls; per key version, its calls and echoes.
 * It runs after each response ends, off the request's path, on this instance's calls: instances behind a load
 * balancer each see their share of a user's calls, and a burst is as many times its baseline in each share.
 * Actions go through the store (`Alerts.apply`), so every instance enforces them on its next request.
 *
 * The clock is injected (`now`), so the rules are tested on a simulated day (tests/unit/detect).
 */
export class Detector implements SecuritySignals {
  private readonly users = new Map<string, UserState>();
  private readonly sessionIps = new Map<string, { readonly networks: RecentSet; lastIp: string; lastNetwork: string }>();
  private readonly keys = new Map<string, KeyState>();
  /** Decoy hits written, by decoy, address and user: when (coalescing within the cooldown). */
  private readonly decoysSeen = new Map<string, number>();
  /** Decoy revocations, by user and session: when (one per session within the cooldown). */
  private readonly decoyRevokes = new Map<string, number>();
  /**
   * The minute's decoy alerts, counted apart: hits that name a user (a verified session) and hits that do not
   * (no session, or one another site may have sent), so a script replaying public decoys without a session
   * cannot use up the alerts a signed-in user's hit needs.
   */
  private readonly namedAlerts = new MinuteBudget(DECOY_ALERTS_PER_MINUTE);
  private readonly unnamedAlerts = new MinuteBudget(DECOY_ALERTS_PER_MINUTE);
  private readonly alpha: number;
  private pending: Promise<unknown> = Promise.resolve();
  /** When each echoed secret's alert was last raised (by subject, and setting), for its cooldown. */
  private readonly echoAlertAt = new Map<string, number>();

  constructor(
    private readonly config: DetectorConfig,
    private readonly alerts: Alerts,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
    /** Where an upstream's credential comes from (the registry's plan), for what an echoed key's alert advises. */
    private readonly credentialSourceOf: (upstream: string) => CredentialPlan['source'] | undefined = () => undefined,
  ) {
    this.alpha = RateBaseline.alphaFor(config.baselineHalfLifeMinutes);
  }

  /** One call's record. Cheap (a few map lookups); any action is written asynchronously. */
  observe(event: ProxyEvent): void {
    if (!this.config.enabled) return;
    const at = this.now();
    if (event.keyFingerprint) this.observeKey(event, event.keyFingerprint, at);
    if (event.scrubberHits > 0 && this.config.scrubberHits.alert) this.observeEchoes(event, at);
    if (event.userId) this.observeUser(event, event.userId, at);
  }

  /**
   * A decoy was presented or a decoy route called. In a credential's place (an auth header, a key-like query
   * parameter, the own-key form) or on a decoy route, with a session that passed the CSRF check: straight to the
   * last step, whatever the user's history. Anywhere else (a body, a path, another header) it is content, which
   * an attacker can get an honest user's app to send (a shared chat message, a pasted file): an alert only.
   * Without a verified session, an alert: naming nobody, or, for a valid session cookie that failed the CSRF
   * check, naming its user as evidence only (another site can make a user's browser send that).
   * Hits are coalesced for `cooldownMinutes` per decoy, address and user, per decoy and user for a session cookie
   * that failed the CSRF check, or per decoy alone for hits without a session (they revoke nothing, and a script
   * replaying a public decoy varies its address at will), and at most DECOY_ALERTS_PER_MINUTE alerts are written
   * for hits that name a user and as many for hits that do not, so such a script can neither fill the store or
   * the webhook nor use up the alerts a signed-in hit needs; a revocation is never held back by that budget.
   */
  decoyHit(hit: DecoyHit): void {
    const at = this.now();
    // A revocation is never held back by the alert budget (it has its own cooldown, per user, below).
    const revokes = hit.userId !== null && inCredentialPlace(hit);
    if (!revokes && !this.admitDecoyAlert(hit, at)) return;
    const where = hit.kind === 'route' ? `the decoy route ${hit.upstream}${hit.route ?? ''}` : `a decoy credential (${hit.where})`;
    const evidence = { kind: hit.kind, where: hit.where, upstream: hit.upstream, ip: hit.ip ?? 'unknown', requestId: hit.requestId, ...(hit.decoyId ? { decoyId: hit.decoyId } : {}) };
    if (!hit.userId) {
      const unverified = hit.unverifiedUserId;
      this.act({
        rule: 'decoy',
        action: 'alert',
        reason:
          unverified === undefined
            ? `A request without a session (or sent by another site) used ${where}.`
            : `A request with the session cookie of ${unverified}, but without the checks that prove it came from this site, used ${where}: alerted only (another site can make a user's browser send such a request).`,
        subject: { upstream: hit.upstream },
        evidence: unverified === undefined ? evidence : { ...evidence, session: 'not same-site verified', unverifiedUser: unverified },
      });
      return;
    }
    if (!inCredentialPlace(hit)) {
      this.act({
        rule: 'decoy',
        action: 'alert',
        reason: `A request of ${hit.userId} carried ${where} as content, not as a credential: alerted only (an attacker can get content into an honest user's requests).`,
        subject: { userId: hit.userId, upstream: hit.upstream },
        evidence,
      });
      return;
    }
    // This session's hit already revoked within the cooldown: a call of the same session in flight then adds
    // nothing. A session signed in after that revocation was not ended by it (a revocation ends the sessions
    // signed in before it, and a hit with a user comes from a session that passed verification): it revokes again.
    const revoked = `${hit.userId}|${hit.sessionId ?? ''}`;
    const last = this.decoyRevokes.get(revoked);
    if (last !== undefined && at - last < this.config.cooldownMinutes * MINUTE_MS) return;
    remember(this.decoyRevokes, revoked, at, MAX_SESSIONS);
    const state = this.user(hit.userId, at);
    state.level = STEPS.length - 1;
    state.lastStepAt = at;
    state.lastAnomalyAt = at;
    this.act({
      rule: 'decoy',
      action: 'revoke',
      reason: `${hit.userId} used ${where}: every session revoked and own keys suspended.`,
      subject: { userId: hit.userId, upstream: hit.upstream },
      evidence,
    });
  }

  /**
   * Whether a decoy hit is written: once per decoy, address and user per cooldown (per decoy and user for a
   * session cookie that failed the CSRF check, per decoy alone without a session), and a bounded number a minute,
   * counted apart for hits that name a user and hits that do not.
   */
  private admitDecoyAlert(hit: DecoyHit, at: number): boolean {
    const decoy = hit.decoyId ?? `route ${hit.upstream}${hit.route ?? ''}`;
    // By address as limits count them (an IPv6 /64 is one host's), so one user rotating through their /64 cannot
    // use up the minute's alerts that others' hits need.
    const key = hit.userId
      ? `${decoy}|${hit.ip === null ? '' : limitBucket(hit.ip)}|${hit.userId}`
      : hit.unverifiedUserId !== undefined
        ? `${decoy}|(not same-site)|${hit.unverifiedUserId}`
        : `${decoy}|(no session)`;
    const last = this.decoysSeen.get(key);
    if (last !== undefined && at - last < this.config.cooldownMinutes * MINUTE_MS) return false;
    const named = hit.userId !== null;
    const budget = named ? this.namedAlerts : this.unnamedAlerts;
    if (!budget.take(at)) {
      if (budget.firstRefused()) {
        this.logger.warn({ limit: DECOY_ALERTS_PER_MINUTE, named }, 'decoy hits over the alert limit this minute; not written');
      }
      return false;
    }
    remember(this.decoysSeen, key, at, MAX_DECOY_KEYS);
    return true;
  }

  /**
   * An admin undid an alert: what the user was doing is normal for them. The subject starts again from the
   * first step, with its current rates as its baselines. Other instances learn of it from the store before
   * their next escalation (`Alerts.forgivenAt`).
   */
  forget(alert: Alert): void {
    const state = forgives(alert) ? this.users.get(alert.subject.userId) : undefined;
    if (state) forgive(state, this.now());
    // A revocation undone no longer stands: the same session presenting a decoy again is revoked again (and
    // alerted), not let through as "already revoked within the cooldown".
    if (alert.action === 'revoke') {
      const prefix = `${alert.subject.userId}|`;
      for (const key of [...this.decoyRevokes.keys()]) if (key.startsWith(prefix)) this.decoyRevokes.delete(key);
    }
  }

  /** Resolves when every action started so far has been written (tests). */
  async settled(): Promise<void> {
    let seen: Promise<unknown>;
    do {
      seen = this.pending;
      await seen;
    } while (seen !== this.pending);
  }

  private observeUser(event: ProxyEvent, userId: string, at: number): void {
    const state = this.user(userId, at);
    const { config } = this;
    // Refused by the CSRF check: sent by another site through the user's browser, not the user's doing.
    if (event.errorCode === 'csrf_failed') return;
    const learning = state.level === 0;
    state.calls.frozen = state.errors.frozen = state.spend.frozen = !learning;
    state.calls.add(at, 1);
    if (isCallerError(event)) state.errors.add(at, 1);
    if (event.units > 0) state.spend.add(at, event.units);
    if (event.sessionId) state.sessions.add(event.sessionId, at, config.escalateAfterMinutes * MINUTE_MS);
    if (state.level > 0 && at - state.lastAnomalyAt >= config.cooldownMinutes * MINUTE_MS) state.level = 0;
    // Every rule keeps its books on every call (the routes the user calls, the networks a session uses), whichever
    // rule acts and whether or not a step is being written: a route first called during a burst is then known,
    // not "new" once the burst is over.
    const ips = this.ipAnomaly(event, at);
    const routes = this.routeAnomaly(state, event, at);
    if (state.busy) return;

    const volume = this.volumeAnomaly(state, at);
    if (volume) {
      this.step(userId, state, at, [1, 3], volume.rule, volume.evidence, event);
      return;
    }
    if (ips) {
      this.step(userId, state, at, [2, 2], 'ips_per_session', ips, event);
      return;
    }
    if (routes) this.step(userId, state, at, [2, 2], 'new_routes', routes, event);
  }

  /** Calls, failed calls or spend above k× the baseline (and above the floor). */
  private volumeAnomaly(state: UserState, at: number): { rule: AlertRule; evidence: Record<string, number> } | null {
    const checks = [
      ['calls', state.calls, this.config.calls],
      ['errors', state.errors, this.config.errors],
      ['spend', state.spend, this.config.spend],
    ] as const;
    for (const [rule, baseline, { factor, minPerMinute }] of checks) {
      const rate = baseline.rate(at);
      if (rate <= minPerMinute) continue;
      const usual = baseline.baseline(at);
      const threshold = Math.max(factor * usual, minPerMinute);
      if (rate > threshold) return { rule, evidence: { perMinute: round(rate), baselinePerMinute: round(usual), threshold: round(threshold) } };
    }
    return null;
  }

  /** One session from more client IPs than allowed within the window. */
  private ipAnomaly(event: ProxyEvent, at: number): Record<string, number> | null {
    if (!event.sessionId || !event.clientIp) return null;
    const { max, windowMinutes } = this.config.ipsPerSession;
    let ips = this.sessionIps.get(event.sessionId);
    if (!ips) {
      ips = { networks: new RecentSet(max), lastIp: '', lastNetwork: '' };
      remember(this.sessionIps, event.sessionId, ips, MAX_SESSIONS);
    }
    // Parsed once per change of address, not per call.
    if (ips.lastIp !== event.clientIp) {
      ips.lastIp = event.clientIp;
      ips.lastNetwork = network(event.clientIp);
    }
    const distinct = ips.networks.add(ips.lastNetwork, at, windowMinutes * MINUTE_MS);
    return distinct > max ? { distinctIps: distinct, max, windowMinutes } : null;
  }

  /** Routes the user never called before, several within the window, once the user has a history. */
  private routeAnomaly(state: UserState, event: ProxyEvent, at: number): Record<string, number> | null {
    if (!event.route) return null;
    const route = `${event.upstream} ${event.method.toUpperCase()} ${event.route}`;
    const { max, windowMinutes, minHistoryCalls } = this.config.newRoutes;
    const known = state.routes.add(route);
    const experienced = state.history >= minHistoryCalls;
    state.history++;
    if (known || !experienced) return null;
    const fresh = state.newRoutes.add(route, at, windowMinutes * MINUTE_MS);
    return fresh > max ? { newRoutes: fresh, max, windowMinutes } : null;
  }

  /**
   * The graduated response: the first anomaly takes `minLevel` (throttle for volume, re-authentication for a
   * session's IPs or a new route mix); an anomaly still there `escalateAfterMinutes` after the last step takes
   * the next one, up to `maxLevel`; the last is to revoke every session and suspend the user's own keys. The
   * session rules stop at re-authentication: networks that rotate addresses (relays, carrier NAT) must not cost
   * an honest user their keys. An anomaly still there `escalateAfterMinutes` after `maxLevel` was taken takes it
   * again: only calls of sessions that step left valid are seen (a new sign-in after a revocation, say), so the
   * step did not stop it.
   */
  private step(
    userId: string,
    state: UserState,
    at: number,
    [minLevel, maxLevel]: readonly [number, number],
    rule: AlertRule,
    evidence: Record<string, number>,
    event: ProxyEvent,
  ): void {
    state.lastAnomalyAt = at;
    let level: number;
    if (state.level < minLevel) level = minLevel;
    else if (state.level <= maxLevel && at - state.lastStepAt >= this.config.escalateAfterMinutes * MINUTE_MS) level = Math.min(state.level + 1, maxLevel);
    else return;
    const previousStepAt = state.lastStepAt;
    const previousLevel = state.level;
    // Past the first step (or that step again): an admin's undo since the last step ends it (below).
    const escalating = level > minLevel || level === previousLevel;
    state.level = level;
    state.lastStepAt = at;
    state.busy = true;
    const sessions = rule === 'ips_per_session' && event.sessionId ? [event.sessionId] : state.sessions.values();
    const decide = (step: number): Decision | null => {
      const action = STEPS[step]!;
      return {
        rule,
        action,
        reason: reasonFor(userId, rule, action),
        subject: { userId, upstream: event.upstream },
        evidence,
        ...(action === 'reauth' ? { sessionIds: sessions } : {}),
      };
    };
    const run = (async () => {
      // An admin who undid the step this one escalates from (on any instance) said the user is fine: start over.
      if (escalating) {
        const forgiven = await this.alerts.forgivenAt(userId);
        if (forgiven !== null && forgiven >= previousStepAt) {
          forgive(state, this.now());
          return null;
        }
      }
      return decide(level);
    })();
    this.act(run, (applied) => {
      state.busy = false;
      // Not written (the store is down): not enforced either, so the next anomaly takes this step again.
      if (!applied && state.lastStepAt === at) {
        state.level = level === previousLevel ? previousLevel : level - 1 >= minLevel ? level - 1 : 0;
        state.lastStepAt = previousStepAt;
      }
    });
  }

  private observeKey(event: ProxyEvent, fingerprint: string, at: number): void {
    const id = `${event.upstream}:${fingerprint}`;
    let state = this.keys.get(id);
    if (!state) {
      state = { calls: new RateBaseline(this.alpha), lastAlertAt: -Infinity };
      remember(this.keys, id, state, MAX_KEYS);
    }
    state.calls.add(at, 1);
    const cooldown = this.config.cooldownMinutes * MINUTE_MS;
    const subject = { upstream: event.upstream, fingerprint };
    const rate = state.calls.rate(at);
    const { factor, minPerMinute } = this.config.calls;
    // A service key serves every user, so its floor is the per-user floor × 10.
    const usual = state.calls.baseline(at);
    const threshold = Math.max(factor * usual, minPerMinute * 10);
    if (rate > threshold && at - state.lastAlertAt >= cooldown) {
      state.lastAlertAt = at;
      this.act({
        rule: 'key_calls',
        action: 'alert',
        reason: `Key ${fingerprint} of ${event.upstream} made ${round(rate)} calls in a minute, against a usual ${round(usual)}.`,
        subject,
        evidence: { perMinute: round(rate), baselinePerMinute: round(usual), threshold: round(threshold) },
      });
    }
  }

  /**
   * An answer the leak scrubber took secrets out of: an alert per secret echoed (once per `cooldownMinutes` each),
   * about that secret. The call's own credential is named as its upstream's plan says (a service key to rotate, a
   * user's own key or token that only they can replace); another key Keyward holds by its upstream and fingerprint,
   * to rotate (it is that key that leaked, not the call's); a Keyward setting by its name, to change.
   */
  private observeEchoes(event: ProxyEvent, at: number): void {
    const cooldown = this.config.cooldownMinutes * MINUTE_MS;
    const route = event.route ?? 'unknown';
    for (const echo of event.echoed ?? [{ kind: 'credential', hits: event.scrubberHits } as const]) {
      const decision = echoDecision(event, echo, route, this.credentialSourceOf);
      if (!decision) continue;
      const id = JSON.stringify(decision.subject) + (echo.kind === 'setting' ? ` ${echo.setting}` : '');
      if (at - (this.echoAlertAt.get(id) ?? -Infinity) < cooldown) continue;
      remember(this.echoAlertAt, id, at, MAX_KEYS);
      this.act(decision);
    }
  }

  private act(decision: Decision | Promise<Decision | null>, done?: (applied: boolean) => void): void {
    const run = Promise.resolve(decision)
      .then((decided) => (decided ? this.alerts.apply(decided, this.config.throttle) : null))
      .then(
        () => done?.(true),
        (error: unknown) => {
          // The store is down: the step is not on record and not enforced. Logged; the next anomaly tries again.
          this.logger.error({ err: error instanceof Error ? error.message : 'unknown' }, 'detector action failed');
          done?.(false);
        },
      );
    this.pending = Promise.allSettled([this.pending, run]);
  }

  private user(userId: string, at: number): UserState {
    let state = this.users.get(userId);
    if (state) {
      // Most recently seen last, so the map's first entries are the ones to forget.
      this.users.delete(userId);
      this.users.set(userId, state);
      return state;
    }
    state = {
      calls: new RateBaseline(this.alpha),
      errors: new RateBaseline(this.alpha),
      spend: new RateBaseline(this.alpha),
      level: 0,
      lastStepAt: at,
      lastAnomalyAt: 0,
      history: 0,
      routes: new RouteMemory(),
      newRoutes: new RecentSet(this.config.newRoutes.max),
      sessions: new RecentSet(MAX_RECENT_SESSIONS),
      busy: false,
    };
    remember(this.users, userId, state, MAX_USERS);
    return state;
  }
}

/** A number of things allowed per clock minute. */
class MinuteBudget {
  private minute = -1;
  private used = 0;

  constructor(private readonly perMinute: number) {}

  /** Takes one of this minute's, if any is left. */
  take(at: number): boolean {
    const minute = Math.floor(at / MINUTE_MS);
    if (minute !== this.minute) {
      this.minute = minute;
      this.used = 0;
    }
    return this.used++ < this.perMinute;
  }

  /** Whether the last refused `take` was this minute's first refused (to log it once a minute). */
  firstRefused(): boolean {
    return this.used === this.perMinute + 1;
  }
}

function forgive(state: UserState, at: number): void {
  state.level = 0;
  state.lastAnomalyAt = 0;
  for (const baseline of [state.calls, state.errors, state.spend]) {
    baseline.frozen = false;
    baseline.adopt(at);
  }
}

/**
 * The network an address belongs to, as the IP rule counts them: an IPv4 /24 or an IPv6 /64 (one subscriber's
 * prefix), so a device moving within its provider's block or rotating privacy addresses is one network.
 */
function network(ip: string): string {
  if (!ipaddr.isValid(ip)) return ip;
  const parsed = ipaddr.process(ip);
  if (parsed.kind() === 'ipv4') return `${(parsed as ipaddr.IPv4).octets.slice(0, 3).join('.')}.0/24`;
  const parts = (parsed as ipaddr.IPv6).parts.slice(0, 4).map((part) => part.toString(16));
  return `${parts.join(':')}::/64`;
}

/** A decoy route, the own-key form, an auth header or a key-like query parameter (DecoyHit.where). */
function inCredentialPlace(hit: DecoyHit): boolean {
  if (hit.kind === 'route' || hit.where === 'own-key') return true;
  const colon = hit.where.indexOf(':');
  if (colon < 0) return false;
  const [kind, name] = [hit.where.slice(0, colon), hit.where.slice(colon + 1)];
  return kind === 'header' ? CREDENTIAL_HEADERS.has(name.toLowerCase()) : kind === 'query' && CREDENTIAL_QUERY.test(name);
}

function remember<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.set(key, value);
  if (map.size > max) map.delete(map.keys().next().value!);
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}

const RULE_TEXT: Record<AlertRule, string> = {
  calls: 'calls per minute far above their baseline',
  errors: 'failed calls per minute far above their baseline',
  spend: 'budget units per minute far above their baseline',
  ips_per_session: 'one session used from more client IPs than allowed',
  new_routes: 'a sudden mix of routes never called before',
  decoy: 'a decoy',
  key_calls: 'a key used far above its baseline',
  scrubber_hits: 'an upstream echoing a key or secret',
};

const ACTION_TEXT: Record<AlertAction, string> = {
  alert: 'alerted',
  throttle: 'throttled',
  reauth: 'sessions ended (re-authentication required)',
  revoke: 'every session revoked and own keys suspended',
};

/** The alert's sentence; its figures are in `evidence`, beside it. */
function reasonFor(userId: string, rule: AlertRule, action: AlertAction): string {
  return `${userId}: ${RULE_TEXT[rule]}; ${ACTION_TEXT[action]}.`;
}

/**
 * What an echoed secret was, for its alert: a service key (on the Keys page, rotated there), a server-held key a
 * session claim chose (replaced in the environment), the caller's own key or connected account's token (theirs to
 * replace: the admin cannot, and the Keys page does not list it), or one of Keyward's settings (changed where it is
 * set).
 */
export type EchoedCredential = 'service-key' | 'claim-key' | 'own-key' | 'connected-account' | 'setting';

/** An echoed key (not a setting), by whose it is. */
type EchoedKey = Exclude<EchoedCredential, 'setting'>;

function echoedCredential(source: CredentialPlan['source'] | undefined): EchoedKey {
  if (source === 'user-key') return 'own-key';
  if (source === 'oauth') return 'connected-account';
  return source === 'claim' ? 'claim-key' : 'service-key';
}

const ECHOED: Readonly<Record<EchoedKey, (fingerprint: string) => string>> = {
  'service-key': (fingerprint) => `key ${fingerprint}`,
  'claim-key': (fingerprint) => `key ${fingerprint} (chosen by a session claim)`,
  'own-key': (fingerprint) => `the caller's own key ${fingerprint}`,
  'connected-account': (fingerprint) => `the caller's connected-account token ${fingerprint}`,
};

const LOGGED = 'whatever logs that response upstream has it.';

const ADVICE: Readonly<Record<EchoedKey, string>> = {
  'service-key': `Rotate this key: ${LOGGED}`,
  'claim-key': `Replace this key in the environment: ${LOGGED}`,
  'own-key': `Only they can replace it (on their own keys; no admin can rotate a key a user brought): ${LOGGED}`,
  'connected-account': `It ends with the grant; disconnecting revokes it: ${LOGGED}`,
};

/** The alert for one secret an answer echoed (ProxyEvent.echoed), or null when there is no key to name. */
function echoDecision(
  event: ProxyEvent,
  echo: NonNullable<ProxyEvent['echoed']>[number],
  route: string,
  credentialSourceOf: (upstream: string) => CredentialPlan['source'] | undefined,
): Decision | null {
  const said = `${event.upstream} echoed`;
  const scrubbed = 'in a response (scrubbed before it reached the client).';
  if (echo.kind === 'setting') {
    return {
      rule: 'scrubber_hits',
      action: 'alert',
      reason: `${said} Keyward's own secret ${echo.setting} ${scrubbed} Change ${echo.setting} (a new value, on every instance): ${LOGGED}`,
      subject: { upstream: event.upstream },
      evidence: { hits: echo.hits, route, credential: 'setting', setting: echo.setting },
    };
  }
  if (echo.kind === 'key') {
    const credential = echo.claim ? 'claim-key' : 'service-key';
    const whose = echo.upstream === event.upstream ? `another version of its key, ${ECHOED[credential](echo.fingerprint)}` : `${echo.upstream}'s ${ECHOED[credential](echo.fingerprint)}`;
    return {
      rule: 'scrubber_hits',
      action: 'alert',
      reason: `${said} ${whose} ${scrubbed} ${ADVICE[credential]}`,
      subject: { upstream: echo.upstream, fingerprint: echo.fingerprint },
      evidence: { hits: echo.hits, route, credential, echoedBy: event.upstream },
    };
  }
  if (!event.keyFingerprint) return null;
  const credential = echoedCredential(credentialSourceOf(event.upstream));
  return {
    rule: 'scrubber_hits',
    action: 'alert',
    reason: `${said} ${ECHOED[credential](event.keyFingerprint)} ${scrubbed} ${ADVICE[credential]}`,
    subject: { upstream: event.upstream, fingerprint: event.keyFingerprint },
    evidence: { hits: echo.hits, route, credential },
  };
}
