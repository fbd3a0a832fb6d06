import 'server-only';
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { injectCredential } from '../credential/inject';
import { signRequest } from '../credential/sign';
import { KeywardError } from '../errors';
import { buildUpstreamUrl } from '../forward/url';
import { keyVerifier, legacyFingerprint, newVerifierSalt } from './fingerprint';
import { logScrubber } from '../log/logger';
import { discardBody } from '../respond/body';
import type { HeldSecrets } from '../respond/held-secrets';
import { guard } from '../store/guard';
import { credentialFor, usernameSecrets, withSecrets, type CredentialPlan, type ResolvedCredential, type Upstream } from '../upstream/registry';
import type { Vault } from '../vault/seal';
import type { Store } from '../../store/types';

export type VersionState = 'active' | 'next' | 'retired' | 'revoked';

/** One version of a service key, as stored and shown: identified by id and fingerprint, never by value. */
export interface KeyVersion {
  readonly id: string;
  readonly fingerprint: string;
  readonly source: 'env' | 'managed';
  readonly created: number;
  readonly notBefore: number | null;
  readonly expiresAt: number | null;
  state: VersionState;
  activatedAt: number | null;
  retiredAt: number | null;
  /** A retired version stays usable as a fallback until then (only if no active version is usable). */
  graceUntil: number | null;
  revokedAt: number | null;
}

export interface Rotation {
  readonly id: string;
  readonly upstream: string;
  state: 'switched' | 'canary_failed' | 'rolled_back';
  /** Fingerprints of the versions that were active before the switch. */
  readonly from: readonly string[];
  /**
   * Every version the switch retired, with when it had become (or, for a planned switch, was to become) active:
   * what a rollback puts back. Absent from rotations recorded before it was kept.
   */
  readonly replaced?: ReadonlyArray<{ readonly fingerprint: string; readonly activatedAt: number | null }>;
  readonly to: string;
  readonly toVersion: string;
  readonly at: number;
  /** The canary's HTTP status; 0 if it could not reach the upstream; null when skipped. */
  readonly canaryStatus: number | null;
  readonly actor: string;
}

/** What `rotate` answers: the rotation, and whether it is an earlier one, answered again with nothing changed. */
export type RotationResult = Rotation & { readonly repeated: boolean };

/** A version as the store keeps it: with its verifier once its value was known (never shown). */
interface StoredVersion extends KeyVersion {
  /** keyVerifier(value, record.salt): names the value whatever the server secrets (and so fingerprints) are. */
  verifier?: string;
}

interface RingRecord {
  rev: number;
  /**
   * Managed versions, and state changes of environment versions. A revoked entry is never removed: the value
   * it names stays revoked in this ring, under any id and whatever its fingerprint is now.
   */
  versions: StoredVersion[];
  rotations: Rotation[];
  /** The salt of this ring's verifiers: random, made with the first verifier, never changed. */
  salt?: string;
}

/** Environment version id → the verifier of its value under the ring's salt. */
type EnvVerifiers = ReadonlyMap<string, string>;
const NO_VERIFIERS: EnvVerifiers = new Map();

export interface VersionView extends KeyVersion {
  /**
   * What the version does right now, all things considered. A managed version that could serve (serving, fallback,
   * standby, pending, next) but is never sent is `refused` (its value is one of Keyward's own secrets) or
   * `unreadable` (its sealed value does not open here): calls that pick it answer 503 `credential_unavailable`.
   */
  readonly status: 'serving' | 'fallback' | 'standby' | 'next' | 'pending' | 'retired' | 'revoked' | 'expired' | 'refused' | 'unreadable';
  readonly expiresInDays: number | null;
  /** Set 14, 7 and 1 days before expiry. */
  readonly warning: string | null;
}

/** Why a `refused` or `unreadable` version is never sent, for people (the CLI's `keys list`, the Keys page). */
export const NEVER_SENT: Readonly<Record<'refused' | 'unreadable', string>> = {
  refused:
    "its value is one of Keyward's own secrets: never sent (calls answer 503 credential_unavailable); revoke it and add a key of the upstream's own",
  unreadable:
    'its sealed value does not open with this KEYWARD_VAULT_SECRET (or its seal is gone): never sent (calls answer 503 credential_unavailable)',
};

/** An upstream whose credential is a service key: the only kind with a key ring. */
type RingUpstream = Upstream & { readonly credential: Extract<CredentialPlan, { source: 'static' }> };

const isRingUpstream = (upstream: Upstream): upstream is RingUpstream => upstream.credential.source === 'static';

/** The statuses of a version calls may be made with, now or later: `list` checks that it can be sent. */
const MAY_SERVE: ReadonlySet<VersionView['status']> = new Set(['serving', 'fallback', 'standby', 'pending', 'next']);

/** Keyward's own secrets by setting name (lib/core/runtime.ts ownSecrets): none may become an upstream's key. */
export type OwnSecrets = ReadonlyArray<readonly [name: string, values: readonly string[]]>;

const RECORD_TTL_MS = 100 * 365 * 86_400_000;
const ROTATIONS_KEPT = 50;
const WARN_DAYS = [1, 7, 14] as const;
const DAY_MS = 86_400_000;

/**
 * Key rings for service keys (DESIGN.md step 7): versions from the environment and managed versions sealed
 * in the store, with expiry, canary rotation, grace-window fallback, rollback and revocation. The ring's
 * state lives in the store and is read on every call, so every instance follows a switch or a revocation
 * on its next request. An expired or revoked version is never used; with nothing usable left, calls fail
 * with 503 `credential_unavailable`.
 */
export class KeyRings {
  /** Per upstream, the ring record as last read here (raw: null when the store had none) and its SHA-1. */
  private readonly parsed = new Map<string, { raw: string | null; record: RingRecord; sha1: string | null }>();
  /** Each upstream's versions as computed from its last parsed record (`current`). */
  private readonly views = new Map<string, { readonly record: RingRecord; readonly versions: readonly KeyVersion[] }>();
  private readonly managed = new Map<string, ResolvedCredential>();
  /** Managed versions (`upstream:version`) whose value is one of Keyward's own secrets: never used (`managedCredential`). */
  private readonly ownSecretVersions = new Set<string>();
  private readonly warned = new Set<string>();
  /** Verifiers computed in this process (scrypt is slow on purpose), by salt and value. */
  private readonly verifiers = new Map<string, Promise<string>>();
  /** Per ring, the last revision whose missing verifiers this process tried to record (once per revision). */
  private readonly backfilled = new Map<string, number>();
  /** Per ring state (`current`'s versions) and serving version id: the credential a call gets (`withRingSecrets`). */
  private readonly scrubbing = new WeakMap<readonly KeyVersion[], Map<string, ResolvedCredential>>();

  constructor(
    private readonly registry: ReadonlyMap<string, Upstream>,
    readonly store: Store,
    private readonly vault: Vault | null,
    private readonly dispatcher: Dispatcher,
    private readonly logger: Logger,
    private readonly held: HeldSecrets,
    private readonly now: () => number = Date.now,
    private readonly ownSecrets: OwnSecrets = [],
  ) {}

  /**
   * Start-up's rule for an upstream's key (runtime.ts assertNoOwnSecretShared), for a key added later: one of
   * Keyward's own secrets would be sent upstream with every call, and whoever receives it could forge sessions or
   * open the vault. Names the setting, never the value.
   */
  private assertNotOwnSecret(value: string): void {
    const own = this.ownSecretsIn(value);
    if (own.length > 0) {
      throw new KeywardError('bad_request', {
        message: `This key is the value of ${own.join(' and ')}, Keyward's own secret, which would be sent upstream with every call; give the upstream a key of its own.`,
      });
    }
  }

  /** The settings whose value `value` is: Keyward's own secrets it would hand over. */
  private ownSecretsIn(value: string): string[] {
    return this.ownSecrets.filter(([, values]) => values.includes(value)).map(([name]) => name);
  }

  /** The credential to use for this call: the newest usable active version, else a fallback in its grace window. */
  async credential(upstream: Upstream): Promise<ResolvedCredential> {
    return this.credentialFrom(upstream, await guard(() => this.store.get(recordKey(upstream.id))), this.now());
  }

  /** The store key of an upstream's ring state: read with a call's other reads (one round trip per call). */
  recordKey(upstream: Upstream): string {
    return recordKey(upstream.id);
  }

  /**
   * The ring state this process last read for the upstream (raw: null when there was none, or none was read
   * yet) and its SHA-1: a call's round trip sends the SHA-1 and gets the state back only if it changed.
   */
  seen(upstream: Upstream): { readonly raw: string | null; readonly sha1: string | null } {
    return this.parsed.get(upstream.id) ?? { raw: null, sha1: null };
  }

  /** `credential`'s choice from the ring state as read (`raw`, the value at `recordKey`), at `now`. */
  async credentialFrom(upstream: Upstream, raw: string | null, now = this.now()): Promise<ResolvedCredential> {
    if (!isRingUpstream(upstream)) throw new TypeError('key rings hold service keys only');
    const plan = upstream.credential;
    const { versions } = await this.current(upstream, raw);
    const version = pick(versions, now);
    if (!version) throw new KeywardError('credential_unavailable');
    this.warnIfExpiring(upstream.id, version, now);
    const credential =
      version.source === 'env' ? plan.envVersions.find((env) => env.id === version.id)!.credential : await this.managedCredential(upstream, version);
    return this.withRingSecrets(upstream, versions, version.id, credential);
  }

  /**
   * The serving version's credential, with the values of every other version of the ring this process knows in
   * its `secrets` after its own (the first stays the serving key): the leak scrubber takes them all out of the
   * answer, so an upstream endpoint that lists the account's keys does not hand out the fallback, a version not
   * serving yet, or a revoked one. Environment versions are known from the start; managed ones are unsealed once
   * per process. Computed once per ring state and serving version, so the scrubber's forms of the list are too.
   */
  private async withRingSecrets(
    upstream: RingUpstream,
    versions: readonly KeyVersion[],
    servingId: string,
    credential: ResolvedCredential,
  ): Promise<ResolvedCredential> {
    let byServing = this.scrubbing.get(versions);
    const known = byServing?.get(servingId);
    if (known) return known;
    const others: string[] = upstream.credential.envVersions.flatMap((env) => env.credential.secrets);
    for (const version of versions) {
      if (version.source !== 'managed' || version.id === servingId) continue;
      try {
        others.push(...(await this.managedCredential(upstream, version)).secrets);
      } catch (error) {
        // Its seal is gone or does not open here: its value is unknown to this process, so nothing to scrub.
        if (!(error instanceof KeywardError && error.code === 'credential_unavailable')) throw error;
      }
    }
    const result = withSecrets(credential, others);
    if (!byServing) this.scrubbing.set(versions, (byServing = new Map()));
    byServing.set(servingId, result);
    return result;
  }

  /** Every static upstream's versions and recent rotations, for the admin API and the CLI. */
  async list(): Promise<Array<{ upstream: string; versions: VersionView[]; rotations: Rotation[] }>> {
    const now = this.now();
    const out = [];
    for (const upstream of this.ringUpstreams()) {
      const { record, versions } = await this.current(upstream);
      const serving = pick(versions, now);
      const views: VersionView[] = [];
      for (const version of versions) {
        const view = describe(version, serving, now);
        const unusable = MAY_SERVE.has(view.status) ? await this.unusable(upstream, version) : null;
        views.push(unusable === null ? view : { ...view, status: unusable });
      }
      out.push({ upstream: upstream.id, versions: views, rotations: [...record.rotations].reverse() });
    }
    return out;
  }

  /**
   * Why a version is never sent, as a call finds it (`managedCredential`, so the list says what calls get):
   * `refused`, its value is one of Keyward's own secrets; `unreadable`, its seal does not open here. Null when it
   * can be sent (every environment version: start-up refuses one that is Keyward's own secret).
   */
  private async unusable(upstream: RingUpstream, version: KeyVersion): Promise<'refused' | 'unreadable' | null> {
    if (version.source !== 'managed') return null;
    try {
      await this.managedCredential(upstream, version);
      return null;
    } catch (error) {
      // The store failed this one read (a timeout): the version keeps the status the ring gives it, rather than
      // the whole list (every upstream's, the Keys page) failing for it.
      if (!(error instanceof KeywardError && error.code === 'credential_unavailable')) return null;
      return this.ownSecretVersions.has(`${upstream.id}:${version.id}`) ? 'refused' : 'unreadable';
    }
  }

  /**
   * Each upstream's fingerprints of the versions that may no longer serve (revoked, or expired), for what holds a
   * credential longer than a call (open WebSockets, lib/core/ws/sockets.ts): under the fingerprint the ring
   * stored and under the one a credential carries now, which differ for a version added under another
   * KEYWARD_SESSION_SECRET (or before fingerprints were keyed). A managed value that cannot be opened here is
   * one this process never served, so its stored fingerprint is enough.
   */
  async retiredFingerprints(): Promise<Map<string, Set<string>>> {
    const out = new Map<string, Set<string>>();
    for (const upstream of this.ringUpstreams()) out.set(upstream.id, await this.retiredOf(upstream));
    return out;
  }

  /**
   * Whether the version a credential came from may no longer serve (revoked, or expired): retiredFingerprints for
   * one upstream, for a call checked again before it is sent (lib/core/pipeline.ts recheckBeforeForward). False for
   * an upstream without a ring.
   */
  async isRetired(upstream: Upstream, fingerprint: string): Promise<boolean> {
    return isRingUpstream(upstream) && (await this.retiredOf(upstream)).has(fingerprint);
  }

  private async retiredOf(upstream: RingUpstream): Promise<Set<string>> {
    const now = this.now();
    const { versions } = await this.current(upstream);
    const retired = new Set<string>();
    for (const version of versions) {
      if (version.state !== 'revoked' && (version.expiresAt === null || version.expiresAt > now)) continue;
      retired.add(version.fingerprint);
      const credential =
        version.source === 'env'
          ? upstream.credential.envVersions.find((env) => env.id === version.id)?.credential
          : await this.managedCredential(upstream, version).catch(() => undefined);
      if (credential) retired.add(credential.fingerprint);
    }
    return retired;
  }

  /** Adds a managed version in state `next` (no traffic yet). Idempotent: the same value adds nothing twice. */
  async add(upstreamId: string, value: string): Promise<KeyVersion> {
    const upstream = this.staticUpstream(upstreamId);
    if (!this.vault) {
      throw new KeywardError('credential_unavailable', { message: 'Managed key versions need KEYWARD_VAULT_SECRET to seal them at rest.' });
    }
    assertKeyValue(value);
    this.assertNotOwnSecret(value);
    const print = upstream.fingerprints.of(value);
    const id = `managed:${print}`;
    // Versions added before keyed fingerprints keep their old (unkeyed) fingerprint and id: still the same key.
    // One added under another KEYWARD_SESSION_SECRET has another fingerprint: its verifier names it.
    const { record: stored, versions } = await this.current(upstream);
    const verifier = stored.salt === undefined ? undefined : await this.verifier(value, stored.salt);
    const named = (v: { fingerprint: string; verifier?: string }) =>
      upstream.fingerprints.matches(value, v.fingerprint) || (verifier !== undefined && v.verifier === verifier);
    if (versions.some((v) => named(v) && v.state === 'revoked') || stored.versions.some((v) => named(v) && v.state === 'revoked')) {
      throw new KeywardError('bad_request', { message: 'This key was revoked and cannot be added again.' });
    }
    const existing = versions.find(named) ?? versions.find((v) => stored.versions.some((e) => e.id === v.id && named(e)));
    if (existing) return this.renewedIfStaged(upstream, existing);
    this.hold(upstream, value);
    // The seal names its version, so the check below does not depend on the fingerprint key (which changes
    // when KEYWARD_SESSION_SECRET is rotated), and is bound to its entry: a version id is the same for one key under
    // every upstream, so only the entry's name stops a store writer from moving one upstream's key to another's.
    const entry = managedEntry(upstreamId, id);
    await guard(async () => this.store.set(entry, await this.vault!.sealFor(entry, { value, id })));
    const now = this.now();
    return this.update(upstream, (record) => {
      const found = record.versions.find((v) => v.id === id);
      if (found) return shown(found);
      const version: KeyVersion = {
        id,
        fingerprint: print,
        source: 'managed',
        created: now,
        notBefore: null,
        expiresAt: now + upstream.credential.ring.expiresInDays * DAY_MS,
        state: 'next',
        activatedAt: null,
        retiredAt: null,
        graceUntil: null,
        revokedAt: null,
      };
      record.versions.push(version);
      return shown(version);
    });
  }

  /**
   * A version added again: as it is while it has not expired. One added but never served that expired meanwhile
   * (staged, then rotated to after keys.expiresInDays) is renewed, its expiry counted from now as if added now.
   * One that served and then expired is refused: that is the expiry doing its job, and the answer says so.
   */
  private async renewedIfStaged(upstream: RingUpstream, existing: KeyVersion): Promise<KeyVersion> {
    const now = this.now();
    if (existing.expiresAt === null || existing.expiresAt > now) return existing;
    const expired = new Date(existing.expiresAt).toISOString();
    if (existing.source !== 'managed') {
      throw new KeywardError('bad_request', { message: `This key is an environment version that expired on ${expired}: set a new key.` });
    }
    if (existing.activatedAt !== null) {
      throw new KeywardError('bad_request', { message: `This key expired on ${expired} after it served; expired keys are not renewed: get a new key from the provider.` });
    }
    return this.update(upstream, (record) => {
      const found = record.versions.find((v) => v.id === existing.id);
      if (!found) return existing;
      // As read now, not as read before: revoked, or activated, by another admin meanwhile, it stays as it is.
      if (found.state === 'revoked') throw new KeywardError('bad_request', { message: 'This key was revoked and cannot be added again.' });
      if (found.activatedAt === null && found.expiresAt !== null && found.expiresAt <= now) {
        Object.assign(found, { created: now, expiresAt: now + upstream.credential.ring.expiresInDays * DAY_MS, state: 'next', retiredAt: null, graceUntil: null });
      }
      return shown(found);
    });
  }

  /** The version of this upstream's ring that holds `value` (by fingerprint), or null: what a failed rotation left. */
  async versionOf(upstreamId: string, value: string): Promise<KeyVersion | null> {
    const upstream = this.staticUpstream(upstreamId);
    const { versions } = await this.current(upstream);
    return versions.find((v) => upstream.fingerprints.matches(value, v.fingerprint)) ?? null;
  }

  /**
   * Rotates to a new value: adds it, sends the upstream's canary request with it, and switches traffic only
   * if the canary answers 2xx; the versions it replaces stay usable as a fallback for the grace window.
   * The rotation id (default: derived from the new key's fingerprint) makes a repeated call a no-op: the
   * earlier rotation is answered, `repeated`, and nothing changes (rotating back to a key an earlier rotation
   * switched to is such a call: roll back the later rotation, or give another rotation id).
   */
  async rotate(upstreamId: string, value: string, options: { rotationId?: string; skipCanary?: boolean; actor: string }): Promise<RotationResult> {
    const upstream = this.staticUpstream(upstreamId);
    assertKeyValue(value);
    this.assertNotOwnSecret(value);
    const print = upstream.fingerprints.of(value);
    const rotationId = options.rotationId ?? `rot-${print}`;
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(rotationId)) throw new KeywardError('bad_request', { message: 'Rotation ids are 1–64 letters, digits, "_" and "-".' });
    const previous = (await this.read(upstreamId)).rotations.find((r) => r.id === rotationId);
    if (previous && previous.to !== print) throw new KeywardError('bad_request', { message: 'This rotation id was used for another key.' });
    // A rotation that switched (or was rolled back) is done; one whose canary failed may be tried again.
    if (previous && previous.state !== 'canary_failed') return { ...previous, repeated: true };
    const canary = upstream.credential.ring.canary;
    if (!canary && !options.skipCanary) {
      throw new KeywardError('bad_request', { message: 'This upstream declares no canary (keys.canary); pass skipCanary (--skip-canary) to switch without one.' });
    }
    const version = await this.add(upstreamId, value);
    const canaryStatus = options.skipCanary ? null : await this.sendCanary(upstream, credentialFor(upstream.auth, value, upstream.fingerprints, basicUsername(upstream)));
    const passed = canaryStatus === null || (canaryStatus >= 200 && canaryStatus < 300);
    const now = this.now();
    const grace = upstream.credential.ring.graceSeconds * 1000;
    return this.update<RotationResult>(upstream, (record, verifiers) => {
      const again = record.rotations.find((r) => r.id === rotationId);
      // Another instance may have used this id for another key since the check above.
      if (again && again.to !== print) throw new KeywardError('bad_request', { message: 'This rotation id was used for another key.' });
      if (again && again.state !== 'canary_failed') return { ...again, repeated: true };
      const versions = this.view(upstream.credential.envVersions, record, verifiers);
      // Revoked (here or on another instance) while its canary ran: a revoked value never serves, so nothing
      // switches, whatever the canary said. The versions serving before keep serving.
      const added = versions.find((v) => v.id === version.id);
      if (passed && (added === undefined || !usable(added, now))) {
        const why = added === undefined || added.state === 'revoked' ? 'was revoked' : 'stopped being usable (it expired)';
        throw new KeywardError('bad_request', { message: `The new key ${why} while its canary ran; traffic was not switched.` });
      }
      record.rotations = record.rotations.filter((r) => r.id !== rotationId);
      const from = versions.filter((v) => v.id !== version.id && v.state === 'active' && usable(v, now)).map((v) => v.fingerprint);
      const replaced = versions.filter((v) => v.id !== version.id && v.state === 'active');
      const target = own(record, versions, version.id);
      if (passed) {
        for (const v of replaced) {
          // A version not usable yet (an environment version whose notBefore is still to come: a planned switch)
          // never served, so it is no fallback; a rollback puts its plan back.
          Object.assign(own(record, versions, v.id), { state: 'retired', retiredAt: now, graceUntil: usable(v, now) ? now + grace : now });
        }
        Object.assign(target, { state: 'active', activatedAt: now, retiredAt: null, graceUntil: null });
      } else if (target.state === 'next') {
        // Never served: retired at once, so it cannot become a fallback.
        Object.assign(target, { state: 'retired', retiredAt: now, graceUntil: now });
      }
      const rotation: Rotation = {
        id: rotationId,
        upstream: upstreamId,
        state: passed ? 'switched' : 'canary_failed',
        from,
        ...(passed ? { replaced: replaced.map((v) => ({ fingerprint: v.fingerprint, activatedAt: v.activatedAt })) } : {}),
        to: print,
        toVersion: version.id,
        at: now,
        canaryStatus,
        actor: options.actor,
      };
      record.rotations = [...record.rotations, rotation].slice(-ROTATIONS_KEPT);
      return { ...rotation, repeated: false };
    });
  }

  /**
   * Undoes a switch: the versions it replaced serve again (unless revoked or expired), the new one is retired. The
   * newest of them that is usable now serves from now on; the others keep when they had become active, so a
   * planned switch the rotation cancelled (an environment version with a notBefore) takes over at its time again.
   * Rotation ids are unique per upstream only (`--id 2026-q4` on every provider): without `onlyUpstream`, an id
   * that more than one ring holds is refused, naming them, rather than rolling back whichever is listed first.
   */
  async rollback(rotationId: string, onlyUpstream?: string): Promise<Rotation> {
    if (onlyUpstream === undefined) {
      const holders = await this.upstreamsWithRotation(rotationId);
      if (holders.length > 1) throw new KeywardError('bad_request', { message: ambiguousRotation(rotationId, holders) });
    }
    for (const upstream of this.ringUpstreams()) {
      if (onlyUpstream !== undefined && upstream.id !== onlyUpstream) continue;
      const found = (await this.read(upstream.id)).rotations.find((r) => r.id === rotationId);
      if (!found) continue;
      const envVersions = upstream.credential.envVersions;
      const now = this.now();
      return this.update(upstream, (record, verifiers) => {
        const rotation = record.rotations.find((r) => r.id === rotationId)!;
        if (rotation.state === 'rolled_back') return rotation;
        if (rotation.state !== 'switched') throw new KeywardError('bad_request', { message: 'Only a rotation that switched traffic can be rolled back.' });
        // A later switch replaced what this one put to work: undoing this one would put its old key over the
        // newest and leave the later one "switched" with its key demoted. Newest first.
        const later = record.rotations.slice(record.rotations.indexOf(rotation) + 1).findLast((r) => r.state === 'switched');
        if (later) {
          throw new KeywardError('bad_request', {
            message: `Rotation ${later.id} switched traffic after this one: roll that one back first.`,
          });
        }
        const versions = this.view(envVersions, record, verifiers);
        // `from` holds the fingerprints of then: after a rotation of KEYWARD_SESSION_SECRET a version is found
        // by its stored entry (a managed version's id names its value; an env entry's verifier names it).
        // Rotations recorded before `replaced` was kept name only the versions that served; those serve from now.
        const prints = new Map<string, number | null>((rotation.replaced ?? rotation.from.map((fingerprint) => ({ fingerprint, activatedAt: now }))).map((r) => [r.fingerprint, r.activatedAt]));
        const printOf = (v: KeyVersion): string | undefined =>
          prints.has(v.fingerprint)
            ? v.fingerprint
            : record.versions.find(
                (e) => e.id === v.id && prints.has(e.fingerprint) && (e.source === 'managed' || (e.verifier !== undefined && e.verifier === verifiers.get(v.id))),
              )?.fingerprint;
        const restore = versions.flatMap((v) => {
          const print = printOf(v);
          const expired = v.expiresAt !== null && v.expiresAt <= now;
          return print === undefined || v.state === 'revoked' || expired ? [] : [{ version: v, activatedAt: prints.get(print) ?? 0 }];
        });
        const due = restore.filter((r) => usable(r.version, now));
        if (due.length === 0) throw new KeywardError('bad_request', { message: 'No version from before this rotation is still usable.' });
        const serving = due.reduce((a, b) => (b.activatedAt >= a.activatedAt ? b : a));
        for (const r of restore) {
          const activatedAt = r === serving ? Math.max(now, r.activatedAt) : r.activatedAt;
          Object.assign(own(record, versions, r.version.id), { state: 'active', activatedAt, retiredAt: null, graceUntil: null });
        }
        const target = versions.find((v) => v.id === rotation.toVersion);
        if (target && target.state !== 'revoked') Object.assign(own(record, versions, target.id), { state: 'retired', retiredAt: now, graceUntil: now });
        rotation.state = 'rolled_back';
        return rotation;
      });
    }
    throw new KeywardError('not_found', { message: 'No rotation with this id.' });
  }

  /** The upstreams whose ring holds a rotation with this id, in registry order. */
  async upstreamsWithRotation(rotationId: string): Promise<string[]> {
    const holders: string[] = [];
    for (const upstream of this.ringUpstreams()) {
      if ((await this.read(upstream.id)).rotations.some((r) => r.id === rotationId)) holders.push(upstream.id);
    }
    return holders;
  }

  /**
   * Revokes every version with this fingerprint; every instance stops using it on its next request. An upstream
   * whose ring cannot be written (the store failing) does not stop the others: a leaked key is taken out wherever
   * it can be, `onRevoked` hears of each upstream holding the key (the audit trail), and the first failure is
   * thrown after.
   */
  async revoke(print: string, onRevoked: (upstream: string) => Promise<void> = async () => {}): Promise<Array<{ upstream: string; version: string }>> {
    if (!/^[0-9a-f]{12}$/.test(print)) throw new KeywardError('bad_request', { message: 'A fingerprint is 12 hexadecimal digits.' });
    const revoked: Array<{ upstream: string; version: string }> = [];
    const now = this.now();
    let failure: { error: unknown } | null = null;
    for (const upstream of this.ringUpstreams()) {
      const envVersions = upstream.credential.envVersions;
      try {
        const ids = await this.update(upstream, (record, verifiers) => {
          const versions = this.view(envVersions, record, verifiers);
          const matching = versions.filter((v) => v.fingerprint === print);
          for (const v of matching) Object.assign(own(record, versions, v.id), { state: 'revoked', revokedAt: v.revokedAt ?? now, graceUntil: null });
          return matching.map((v) => v.id);
        });
        revoked.push(...ids.map((version) => ({ upstream: upstream.id, version })));
        // Heard of again when the revoke is sent again: its audit record may be what failed the first time.
        if (ids.length > 0) await onRevoked(upstream.id);
      } catch (error) {
        failure ??= { error };
      }
    }
    if (failure) throw failure.error;
    if (revoked.length === 0) throw new KeywardError('not_found', { message: 'No key version has this fingerprint.' });
    return revoked;
  }

  /** Sends the canary call with `credential`: its status, or 0 when the upstream could not be reached. */
  private async sendCanary(upstream: RingUpstream, credential: ResolvedCredential): Promise<number> {
    const canary = upstream.credential.ring.canary!;
    const segments = canary.path === '/' ? [] : canary.path.slice(1).split('/');
    const url = buildUpstreamUrl(upstream, segments);
    const headers: Record<string, string> = { 'accept-encoding': 'identity', 'user-agent': 'keyward-canary' };
    // As on every call: the upstream's fixed and default headers (an API version the upstream requires).
    for (const [name, value] of [...upstream.defaultHeaders, ...upstream.fixedHeaders]) headers[name] = value;
    injectCredential(credential, headers, url);
    try {
      // A signing credential (hmac) signs the canary as any call: last, over what is sent.
      if (credential.signer) await signRequest(credential.signer, { method: canary.method, url, headers, body: null, declaredLength: null });
      const response = await this.dispatcher.request({
        origin: upstream.origin,
        path: url.pathname + url.search,
        method: canary.method,
        headers,
        headersTimeout: Math.min(upstream.timeoutMs, 10_000),
        bodyTimeout: Math.min(upstream.timeoutMs, 10_000),
      });
      discardBody(response.body);
      return response.statusCode;
    } catch {
      // The error may carry the URL with a query credential: only the fact is kept.
      return 0;
    }
  }

  private staticUpstream(id: string): RingUpstream {
    const upstream = this.registry.get(id);
    if (!upstream) throw new KeywardError('upstream_not_found');
    if (!isRingUpstream(upstream)) {
      throw new KeywardError('bad_request', { message: 'Only a service key ({"env": …}) has versions to manage.' });
    }
    if (upstream.auth.type === 'aws-sigv4') {
      throw new KeywardError('bad_request', { message: 'An AWS key is a pair: rotate it by replacing both of its environment variables.' });
    }
    return upstream;
  }

  private *ringUpstreams(): Generator<RingUpstream> {
    for (const upstream of this.registry.values()) if (isRingUpstream(upstream)) yield upstream;
  }

  private async read(upstreamId: string): Promise<RingRecord> {
    return this.parse(upstreamId, await guard(() => this.store.get(recordKey(upstreamId))));
  }

  private parse(upstreamId: string, raw: string | null): RingRecord {
    const cached = this.parsed.get(upstreamId);
    if (cached && cached.raw === raw) return cached.record;
    // Parsed once per change, not per call; callers on the request path only read it.
    const record = raw === null ? { rev: 0, versions: [], rotations: [] } : (JSON.parse(raw) as RingRecord);
    this.parsed.set(upstreamId, { raw, record, sha1: raw === null ? null : createHash('sha1').update(raw, 'utf8').digest('hex') });
    return record;
  }

  /**
   * The ring's record and its versions as they apply now. Verifiers are computed only once the ring has them
   * (its salt), and once per value in this process. State stored before verifiers existed gets them recorded
   * here once, while the current fingerprints still name it, so it too survives a later secret rotation.
   */
  private async current(upstream: RingUpstream, raw?: string | null): Promise<{ record: RingRecord; versions: readonly KeyVersion[] }> {
    let record = raw === undefined ? await this.read(upstream.id) : this.parse(upstream.id, raw);
    if (this.backfilled.get(upstream.id) !== record.rev) {
      this.backfilled.set(upstream.id, record.rev);
      if (this.lacksVerifiers(upstream, record)) {
        try {
          await this.update(upstream, () => undefined);
          record = await this.read(upstream.id);
        } catch {
          // The state read above still applies (matched by fingerprint); the next revision tries again.
          this.backfilled.delete(upstream.id);
          this.logger.warn({ upstream: upstream.id }, 'key ring: could not record verifiers yet');
        }
      }
    }
    // The view depends on the record (one object per stored state, `parse`) and this process's configuration
    // only, never on the time: computed once per state instead of on every call (a fingerprint hash, maps).
    const seen = this.views.get(upstream.id);
    if (seen?.record === record) return seen;
    const verifiers = await this.envVerifiers(upstream, record.salt);
    const current = { record, versions: Object.freeze(this.view(upstream.credential.envVersions, record, verifiers)) };
    this.views.set(upstream.id, current);
    return current;
  }

  /** Whether a stored version whose value is known here has no verifier yet. */
  private lacksVerifiers(upstream: RingUpstream, record: RingRecord): boolean {
    for (const entry of record.versions) {
      if (entry.verifier !== undefined) continue;
      if (entry.source === 'managed' ? this.vault !== null : this.envValue(upstream, entry) !== undefined) return true;
    }
    return false;
  }

  /** Compare-and-set on the ring's record, retried on a concurrent change by another instance. */
  private async update<T>(upstream: RingUpstream, change: (record: RingRecord, verifiers: EnvVerifiers) => T): Promise<T> {
    const key = recordKey(upstream.id);
    const fresh = newVerifierSalt();
    for (let attempt = 0; attempt < 20; attempt++) {
      const raw = await guard(() => this.store.get(key));
      const record: RingRecord = raw === null ? { rev: 0, versions: [], rotations: [] } : (JSON.parse(raw) as RingRecord);
      const salt = record.salt ?? fresh;
      const verifiers = await this.envVerifiers(upstream, salt);
      const before = JSON.stringify(record);
      const result = change(record, verifiers);
      await this.addVerifiers(upstream, record, salt);
      // Nothing changed (a repeated rollback, a revoke that matched nothing here): nothing to write.
      if (JSON.stringify(record) === before) return result;
      record.rev += 1;
      const next = JSON.stringify(record);
      const written = raw === null ? await guard(() => this.store.setIfAbsent(key, next, RECORD_TTL_MS)) : await guard(() => this.store.replaceIfEquals(key, raw, next));
      if (written) return result;
    }
    throw new KeywardError('service_unavailable', { message: 'The key ring changed too often concurrently; try again.' });
  }

  /** Gives every stored version whose value is known (from the environment, or unsealed) its verifier. */
  private async addVerifiers(upstream: RingUpstream, record: RingRecord, salt: string): Promise<void> {
    for (const entry of record.versions) {
      if (entry.verifier !== undefined) continue;
      const value = entry.source === 'managed' ? await this.managedValue(upstream, entry) : this.envValue(upstream, entry);
      if (value === null || value === undefined) continue;
      record.salt ??= salt;
      entry.verifier = await this.verifier(value, record.salt);
    }
  }

  /** The environment's value for a stored env version, if its fingerprint (current or unkeyed) names that value. */
  private envValue(upstream: RingUpstream, entry: StoredVersion): string | undefined {
    const value = upstream.credential.envVersions.find((env) => env.id === entry.id)?.credential.secrets[0];
    return value !== undefined && upstream.fingerprints.matches(value, entry.fingerprint) ? value : undefined;
  }

  private async envVerifiers(upstream: RingUpstream, salt: string | undefined): Promise<EnvVerifiers> {
    if (salt === undefined) return NO_VERIFIERS;
    const envVersions = upstream.credential.envVersions;
    const values = await Promise.all(envVersions.map((env) => this.verifier(env.credential.secrets[0]!, salt)));
    return new Map(envVersions.map((env, i) => [env.id, values[i]!]));
  }

  private verifier(value: string, salt: string): Promise<string> {
    const key = `${salt}\n${value}`;
    let computed = this.verifiers.get(key);
    if (!computed) {
      computed = keyVerifier(value, salt);
      this.verifiers.set(key, computed);
      computed.catch(() => this.verifiers.delete(key));
    }
    return computed;
  }

  /**
   * Environment versions (defaults: active from their notBefore) with the store's changes, then managed
   * versions. A stored change applies to an environment version when it names the same value: by the
   * fingerprint computed now, the unkeyed one of older records, or the verifier (which outlives a rotation of
   * KEYWARD_SESSION_SECRET). A value that any stored entry revoked is revoked, whatever its id.
   */
  private view(envVersions: RingUpstream['credential']['envVersions'], record: RingRecord, verifiers: EnvVerifiers): KeyVersion[] {
    const stored = new Map(record.versions.map((v) => [v.id, v]));
    const revoked = record.versions.filter((v) => v.state === 'revoked');
    const fromEnv = envVersions.map((env): KeyVersion => {
      const value = env.credential.secrets[0]!;
      const base: KeyVersion = {
        id: env.id,
        fingerprint: env.credential.fingerprint,
        source: 'env',
        created: 0,
        notBefore: env.notBefore,
        expiresAt: env.expiresAt,
        state: 'active',
        activatedAt: env.notBefore ?? 0,
        retiredAt: null,
        graceUntil: null,
        revokedAt: null,
      };
      const verifier = verifiers.get(env.id);
      const legacy = legacyFingerprint(value);
      // The value (and so the fingerprint) of an env version may have changed since the store recorded it.
      const names = (entry: StoredVersion) =>
        entry.fingerprint === base.fingerprint ||
        entry.fingerprint === legacy ||
        (verifier !== undefined && entry.verifier === verifier);
      const change = stored.get(env.id);
      const version = change && names(change) ? { ...base, ...pickState(change) } : base;
      if (version.state === 'revoked') return version;
      const revocation = revoked.find(names);
      return revocation ? { ...version, state: 'revoked', revokedAt: revocation.revokedAt, graceUntil: null } : version;
    });
    const managed = record.versions
      .filter((v) => v.source === 'managed')
      .map((entry): KeyVersion => {
        const version = shown(entry);
        if (version.state === 'revoked' || entry.verifier === undefined) return version;
        const revocation = revoked.find((r) => r.verifier === entry.verifier);
        return revocation ? { ...version, state: 'revoked', revokedAt: revocation.revokedAt, graceUntil: null } : version;
      });
    return [...fromEnv, ...managed];
  }

  /** A managed version's value, unsealed; null when it cannot be (no vault, no seal, another version's seal). */
  private async managedValue(upstream: Upstream, version: KeyVersion): Promise<string | null> {
    const cached = this.managed.get(`${upstream.id}:${version.id}`);
    if (cached) return cached.secrets[0]!;
    if (!this.vault) return null;
    const entry = managedEntry(upstream.id, version.id);
    const sealed = await guard(() => this.store.get(entry));
    let opened: { value: { value: string; id?: string }; fresh: boolean } | null = null;
    try {
      // A seal made for another entry (another upstream's) does not open here.
      opened = sealed ? await this.vault.openFor<{ value: string; id?: string }>(entry, sealed, 'value') : null;
    } catch (error) {
      if (error instanceof KeywardError && error.code === 'credential_unavailable') return null;
      throw error;
    }
    if (!opened) return null;
    const { value, id } = opened.value;
    // The sealed value must be this version's: by the id sealed with it, or (sealed before ids were) by fingerprint.
    const belongs = id !== undefined ? id === version.id : upstream.fingerprints.matches(value, version.fingerprint);
    if (!belongs) return null;
    // Sealed before seals were bound to their entry, or with an older vault secret: sealed again, bound, in place.
    if (!opened.fresh) {
      const fresh = await this.vault.sealFor(entry, { value, id: version.id });
      await guard(() => this.store.replaceIfEquals(entry, sealed!, fresh)).catch(() => {});
    }
    return value;
  }

  /**
   * A managed version's credential, opened once per process. One whose value is one of Keyward's own secrets
   * (stored before add and rotate refused them, or a setting given the value since) is unavailable, as one whose
   * seal does not open: it would be sent upstream with every call, and whoever receives it could forge sessions or
   * open the vault. Fails closed: a warning (once per process) names the upstream, version and setting, never the
   * value; revoking the version ends it.
   */
  private async managedCredential(upstream: Upstream, version: KeyVersion): Promise<ResolvedCredential> {
    const key = `${upstream.id}:${version.id}`;
    const cached = this.managed.get(key);
    if (cached) return cached;
    if (this.ownSecretVersions.has(key)) throw new KeywardError('credential_unavailable');
    const value = await this.managedValue(upstream, version);
    if (value === null) throw new KeywardError('credential_unavailable');
    const own = this.ownSecretsIn(value);
    if (own.length > 0) {
      this.ownSecretVersions.add(key);
      this.logger.warn(
        { upstream: upstream.id, version: version.id, keyFingerprint: version.fingerprint, settings: own },
        "managed key version is one of Keyward's own secrets: not used; revoke it and add a key of the upstream's own",
      );
      throw new KeywardError('credential_unavailable');
    }
    const credential = this.hold(upstream, value);
    this.managed.set(key, credential);
    return credential;
  }

  /**
   * A managed version's value, known to this process from now on (added here, or opened): scrubbed from every log
   * line, and from every answer, not only its own upstream's (ProxyDeps.heldSecrets), as a key from the
   * environment is (a `basic` username from the environment no more than there). One another instance added
   * (the store is shared) is opened here when a call to its upstream reads a ring state that has it
   * (`withRingSecrets` opens every version of the ring, not only the serving one). A process that has not called
   * that upstream since does not know the value, so its other upstreams' answers are not scrubbed of it.
   */
  private hold(upstream: Upstream, value: string): ResolvedCredential {
    logScrubber.add([value]);
    const credential = credentialFor(upstream.auth, value, upstream.fingerprints, basicUsername(upstream));
    const username = new Set(usernameSecrets(basicUsername(upstream)));
    this.held.add(
      credential.secrets.filter((secret) => !username.has(secret)),
      { kind: 'key', upstream: upstream.id, fingerprint: credential.fingerprint },
    );
    return credential;
  }

  private warnIfExpiring(upstreamId: string, version: KeyVersion, now: number): void {
    const warning = expiryWarning(version, now);
    if (!warning) return;
    const key = `${version.fingerprint}:${warning.threshold}`;
    if (this.warned.has(key)) return;
    this.warned.add(key);
    this.logger.warn({ upstream: upstreamId, keyFingerprint: version.fingerprint, version: version.id, expiresInDays: warning.days }, 'key version expires soon');
  }
}

function recordKey(upstreamId: string): string {
  return `keyring:${upstreamId}`;
}

function pickState(v: KeyVersion) {
  return { state: v.state, activatedAt: v.activatedAt, retiredAt: v.retiredAt, graceUntil: v.graceUntil, revokedAt: v.revokedAt };
}

/** A stored version as shown: without its verifier. */
function shown(entry: StoredVersion): KeyVersion {
  const version: StoredVersion = { ...entry };
  delete version.verifier;
  return version;
}

/**
 * The version the ring stores changes for, created from the view when the record has none yet. An entry of an
 * environment version under another fingerprint (a value the variable held before, or this value under an
 * earlier KEYWARD_SESSION_SECRET) is replaced by one for the value now, starting from the state that applies
 * now; a revoked one is kept aside under another id, so the value it names stays revoked.
 */
function own(record: RingRecord, versions: readonly KeyVersion[], id: string): KeyVersion {
  const current = versions.find((v) => v.id === id)!;
  let entry = record.versions.find((v) => v.id === id);
  if (entry && entry.source === 'env' && entry.fingerprint !== current.fingerprint) {
    const at = record.versions.indexOf(entry);
    if (entry.state === 'revoked') record.versions[at] = { ...entry, id: `${entry.id}@${entry.fingerprint}` };
    else record.versions.splice(at, 1);
    entry = undefined;
  }
  if (!entry) {
    entry = { ...current };
    record.versions.push(entry);
  }
  return entry;
}

function usable(version: KeyVersion, now: number): boolean {
  return (
    version.state !== 'revoked' &&
    (version.expiresAt === null || version.expiresAt > now) &&
    (version.notBefore === null || version.notBefore <= now)
  );
}

/** Newest usable active version; else the most recently retired one still in its grace window; else none. */
export function pick<V extends KeyVersion>(versions: readonly V[], now: number): V | null {
  let best: V | null = null;
  for (const v of versions) {
    if (v.state === 'active' && usable(v, now) && (!best || (v.activatedAt ?? 0) >= (best.activatedAt ?? 0))) best = v;
  }
  if (best) return best;
  for (const v of versions) {
    if (v.state === 'retired' && v.graceUntil !== null && v.graceUntil > now && usable(v, now)) {
      if (!best || (v.retiredAt ?? 0) > (best.retiredAt ?? 0)) best = v;
    }
  }
  return best;
}

function expiryWarning(version: KeyVersion, now: number): { threshold: number; days: number } | null {
  if (version.expiresAt === null || version.expiresAt <= now) return null;
  const days = (version.expiresAt - now) / DAY_MS;
  const threshold = WARN_DAYS.find((limit) => days <= limit);
  return threshold === undefined ? null : { threshold, days: Math.ceil(days) };
}

function describe(version: KeyVersion, serving: KeyVersion | null, now: number): VersionView {
  const expired = version.expiresAt !== null && version.expiresAt <= now;
  const status: VersionView['status'] =
    version.state === 'revoked'
      ? 'revoked'
      : expired
        ? 'expired'
        : serving?.id === version.id
          ? version.state === 'active'
            ? 'serving'
            : 'fallback'
          : version.state === 'active'
            ? version.notBefore !== null && version.notBefore > now
              ? 'pending'
              : 'standby'
            : version.state === 'next'
              ? 'next'
              : version.graceUntil !== null && version.graceUntil > now && usable(version, now)
                ? 'fallback'
                : 'retired';
  const warning = expiryWarning(version, now);
  return {
    ...version,
    status,
    expiresInDays: version.expiresAt === null ? null : Math.max(0, Math.ceil((version.expiresAt - now) / DAY_MS)),
    warning: warning ? `expires in ${warning.days} day${warning.days === 1 ? '' : 's'}` : null,
  };
}

function basicUsername(upstream: Upstream): string | undefined {
  const plan = upstream.credential;
  if (upstream.auth.type !== 'basic' || plan.source !== 'static') return undefined;
  // One written in the config is the auth's own (credentialFor reads it there); one from the environment, the plan's.
  return typeof upstream.auth.username === 'string' ? undefined : plan.username;
}

/** The same rules as keys read from the environment at start-up. */
function assertKeyValue(value: string): void {
  // \p{Cs}: a lone UTF-16 surrogate (valid in JSON) has no UTF-8 form to send, or to scrub from logs.
  if (typeof value !== 'string' || value.length < 8 || value.length > 4096 || value !== value.trim() || /[\x00-\x1f\x7f]/.test(value) || /\p{Cs}/u.test(value)) {
    throw new KeywardError('bad_request', { message: 'A key is 8–4096 characters without surrounding whitespace or control characters.' });
  }
}

/** The store entry holding a managed key version's sealed value. */
function managedEntry(upstreamId: string, versionId: string): string {
  return `keyval:${upstreamId}:${versionId}`;
}

/** A rollback that does not say which upstream's rotation it means, when more than one ring has that id. */
export function ambiguousRotation(rotationId: string, upstreams: readonly string[]): string {
  return `Rotation ${rotationId} is on more than one upstream (${upstreams.join(', ')}): name the upstream to roll back.`;
}
