import 'server-only';
import { perUserCredentialFrom, perUserKeys, perUserReads, resolveCredential, type CredentialSources, type PerUserReads } from '../credential/resolve';
import type { Limits, LimitSubject } from '../limits/limits';
import type { RateRule } from '../limits/rules';
import { revocationKeys, revocationReads, revokedBy, type SessionRevocations } from '../session/revocation';
import type { Session } from '../session/session';
import type { ResolvedCredential, Upstream } from '../upstream/registry';
import { RedisStore, type RoundCounter, type RoundRead, type RoundResult } from '../../store/redis';
import type { Store } from '../../store/types';
import { guard } from './guard';

export interface RoundInput {
  readonly upstream: Upstream;
  readonly session: Session;
  /** The revocations the session must still be checked against; null when the verifier already did. */
  readonly revocations: SessionRevocations | null;
  readonly sources: CredentialSources;
  readonly limits: Limits | null;
  /** The rate rules that apply to this call (its roles and client address considered). */
  readonly rules: readonly RateRule[];
  /** Who the rules count, but for the key's fingerprint (known with the credential). */
  readonly who: Omit<LimitSubject, 'fingerprint'>;
  /** The user's throttle mark, set by the anomaly detector (lib/core/detect/marks.ts); null: not read. */
  readonly throttle: { readonly store: Store; readonly key: string } | null;
}

export type RoundOutcome =
  | { readonly revoked: true }
  | {
      readonly revoked: false;
      readonly credential: ResolvedCredential;
      /** The throttle mark as read (null: none, or not read). */
      readonly throttle: string | null;
      /** The rules' counters as this round trip took them (same order), or null when they are still to be taken. */
      readonly taken: ReadonlyArray<{ readonly consumed: number; readonly ttlMs: number }> | null;
    };

/** How many values `revocationKeys` reads (they come first). */
const REVOCATION_READS = 3;
const NOTHING = { stopped: false, stoppedAt: null, changed: false, values: [], counters: null, taken: false } as const;

type Settled<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: unknown };

/**
 * A proxied call's store reads, together (issue 12, "one store round trip per call"): whether the session was
 * revoked, the credential's state (a service key's ring state, or a per-user secret: a user's own key with the
 * user's suspension mark, an OAuth token), and the rate counters. With one Redis behind them they go out as one
 * script (RedisStore.round), which takes no counter for a revoked session.
 *
 * A service key is chosen from the ring state this process saw last, sent as its SHA-1: the script returns the
 * state only if it changed, and then takes no counter either, because a per-key counter may need another key;
 * the caller takes them after choosing again (a second round trip, once per change). Nothing is cached without
 * that check, so a revocation or a key switch applies on every instance's next request.
 *
 * A per-user secret is read by the script only once the session's revocation marks (read first) let the call
 * through, and its absence (no key, no token) or the user's suspension takes no counter either. Its counters are
 * taken in the same script unless a rule counts per key (`by: "credential"`): the key is known only once the
 * secret is opened, so those counters are the caller's (a second round trip). A token that must be refreshed
 * first is refreshed after the round trip; a secret that then cannot be used gives its points back.
 *
 * Otherwise (the embedded store, or stores that differ) the same keys are read with one `getMany` where they
 * share a store, and the counters are left to the caller (`taken: null`).
 */
export async function storeRound(input: RoundInput): Promise<RoundOutcome> {
  const { upstream, session, revocations, sources, limits, rules, throttle } = input;
  const rings = upstream.credential.source === 'static' ? (sources.keyRings ?? null) : null;
  const perUser = perUserReads(upstream, session, sources);
  const redis = oneRedis([revocations?.store, rings?.store, perUser?.store, rules.length > 0 ? limits?.store : undefined, throttle?.store]);
  if (!redis) return separately(input, rings, perUser);

  const reads: RoundRead[] = revocations ? revocationReads(session) : [];
  const throttleAt = reads.length;
  if (throttle) reads.push({ key: throttle.key });
  const markAt = reads.length;
  let predicted: Settled<ResolvedCredential> | null = null;
  let fingerprint: string | null = null;
  if (rings) {
    const seen = rings.seen(upstream);
    reads.push({ key: rings.recordKey(upstream), knownSha1: seen.sha1 });
    predicted = await settle(rings.credentialFrom(upstream, seen.raw));
    if (predicted.ok) fingerprint = predicted.value.fingerprint;
  } else if (perUser) {
    if (perUser.refuseIfPresent !== null) reads.push({ key: perUser.refuseIfPresent, stopIfPresent: true });
    reads.push({ key: perUser.secret, secret: true });
    // Rules that count per key wait for the key; the others count now ('' never names a key).
    if (!rules.some((rule) => rule.by === 'credential')) fingerprint = '';
  } else {
    predicted = await settle(resolveCredential(upstream, session, sources));
    if (predicted.ok) fingerprint = predicted.value.fingerprint;
  }
  // No counter moves for a call whose credential cannot be had: the pipeline resolves it before rate limits.
  const counters = limits && fingerprint !== null ? limits.rateCounters(rules, { ...input.who, fingerprint }) : [];
  const result = reads.length + counters.length > 0 ? await guard(() => redis.round(reads, counters)) : NOTHING;
  // Revoked where the script stopped at a revocation mark (its reading decides: fail closed), or where
  // Keyward's own reading of the marks says so.
  const stoppedByMark = result.stoppedAt !== null && result.stoppedAt < REVOCATION_READS;
  if (revocations && (stoppedByMark || revokedBy(session, result.values.slice(0, REVOCATION_READS)))) return { revoked: true };

  let credential: ResolvedCredential;
  if (rings && result.changed) credential = await rings.credentialFrom(upstream, result.values.at(-1) ?? null);
  else if (perUser) credential = await perUserCredential(perUser, result, markAt, redis, counters);
  else credential = unwrap(predicted!); // set above for every credential but a per-user secret
  const taken = counters.length > 0 && counters.length === rules.length ? result.counters : null;
  return { revoked: false, credential, taken, throttle: throttle ? (result.values[throttleAt] ?? null) : null };
}

/**
 * Revocation, throttle mark, and ring or per-user secret read with one getMany per store they live in (one, in
 * the usual deployment); the counters are left to the caller.
 */
async function separately(input: RoundInput, rings: CredentialSources['keyRings'] | null, perUser: PerUserReads | null): Promise<RoundOutcome> {
  const { upstream, session, revocations, sources, throttle } = input;
  const wanted: Array<{ readonly store: Store; readonly key: string }> = [];
  if (revocations) for (const key of revocationKeys(session)) wanted.push({ store: revocations.store, key });
  if (throttle) wanted.push(throttle);
  if (rings) wanted.push({ store: rings.store, key: rings.recordKey(upstream) });
  else if (perUser) for (const key of perUserKeys(perUser)) wanted.push({ store: perUser.store, key });
  const values = await readGrouped(wanted);
  let next = 0;
  if (revocations) {
    next = REVOCATION_READS;
    if (revokedBy(session, values.slice(0, REVOCATION_READS))) return { revoked: true };
  }
  const throttleMark = throttle ? (values[next++] ?? null) : null;
  let credential: ResolvedCredential;
  if (rings) credential = await rings.credentialFrom(upstream, values[next] ?? null);
  else if (perUser) credential = await perUserCredentialFrom(perUser, values, next);
  else credential = await resolveCredential(upstream, session, sources);
  return { revoked: false, credential, taken: null, throttle: throttleMark };
}

/**
 * A per-user credential from what the round trip read. Its counters were taken with the read; when the secret
 * then cannot be used (it does not open, a refresh the provider refuses, a connection that ended), the points
 * are given back, so that, as with the other credentials and the embedded store, no counter moves for a call
 * whose credential cannot be had. Best effort: a failed give-back leaves the point counted.
 */
async function perUserCredential(
  perUser: PerUserReads,
  result: RoundResult,
  at: number,
  redis: RedisStore,
  counters: readonly RoundCounter[],
): Promise<ResolvedCredential> {
  try {
    return await perUserCredentialFrom(perUser, result.values, at);
  } catch (error) {
    // Only points the round wrote: a round that refused the call (a counter without room) wrote none.
    if (result.taken) await redis.giveBackAll(counters);
    throw error;
  }
}

/** Values for keys in several stores: one getMany per store, at once; in the order asked. */
async function readGrouped(wanted: ReadonlyArray<{ readonly store: Store; readonly key: string }>): Promise<Array<string | null>> {
  const [first] = wanted;
  if (!first) return [];
  // The usual deployment: one store behind every key, one getMany, nothing to regroup.
  if (wanted.every(({ store }) => store === first.store)) {
    const read = await guard(() => first.store.getMany(wanted.map(({ key }) => key)));
    return wanted.map((_, i) => read[i] ?? null);
  }
  const byStore = new Map<Store, number[]>();
  wanted.forEach(({ store }, i) => byStore.set(store, [...(byStore.get(store) ?? []), i]));
  const values = new Array<string | null>(wanted.length).fill(null);
  await Promise.all(
    [...byStore].map(async ([store, indexes]) => {
      const read = await guard(() => store.getMany(indexes.map((i) => wanted[i]!.key)));
      indexes.forEach((index, j) => (values[index] = read[j] ?? null));
    }),
  );
  return values;
}

/** The one Redis store behind every part present, or null (none, another kind, or several). */
function oneRedis(stores: ReadonlyArray<Store | undefined>): RedisStore | null {
  const present = stores.filter((store): store is Store => store !== undefined);
  const [first] = present;
  return first instanceof RedisStore && present.every((store) => store === first) ? first : null;
}

async function settle<T>(promise: Promise<T>): Promise<Settled<T>> {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    return { ok: false, error };
  }
}

function unwrap<T>(settled: Settled<T>): T {
  if (settled.ok) return settled.value;
  throw settled.error;
}
