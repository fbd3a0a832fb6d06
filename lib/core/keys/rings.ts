import 'server-only';
import type { Logger } from 'pino';
import type { Dispatcher } from 'undici';
import { injectCredential } from '../credential/inject';
import { KeywardError } from '../errors';
import { buildUpstreamUrl } from '../forward/url';
import { legacyFingerprint } from './fingerprint';
import { logScrubber } from '../log/logger';
import { discardBody } from '../respond/body';
import { guard } from '../store/guard';
import { credentialFor, type CredentialPlan, type ResolvedCredential, type Upstream } from '../upstream/registry';
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
  readonly to: string;
  readonly toVersion: string;
  readonly at: number;
  /** The canary's HTTP status; 0 if it could not reach the upstream; null when skipped. */
  readonly canaryStatus: number | null;
  readonly actor: string;
}

interface RingRecord {
  rev: number;
  /** Managed versions, and state changes of environment versions. */
  versions: KeyVersion[];
  rotations: Rotation[];
}

export interface VersionView extends KeyVersion {
  /** What the version does right now, all things considered. */
  readonly status: 'serving' | 'fallback' | 'standby' | 'next' | 'pending' | 'retired' | 'revoked' | 'expired';
  readonly expiresInDays: number | null;
  /** Set 14, 7 and 1 days before expiry. */
  readonly warning: string | null;
}

/** An upstream whose credential is a service key: the only kind with a key ring. */
type RingUpstream = Upstream & { readonly credential: Extract<CredentialPlan, { source: 'static' }> };

const isRingUpstream = (upstream: Upstream): upstream is RingUpstream => upstream.credential.source === 'static';

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
  private readonly parsed = new Map<string, { raw: string; record: RingRecord }>();
  private readonly managed = new Map<string, ResolvedCredential>();
  private readonly warned = new Set<string>();

  constructor(
    private readonly registry: ReadonlyMap<string, Upstream>,
    private readonly store: Store,
    private readonly vault: Vault | null,
    private readonly dispatcher: Dispatcher,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** The credential to use for this call: the newest usable active version, else a fallback in its grace window. */
  async credential(upstream: Upstream): Promise<ResolvedCredential> {
    if (!isRingUpstream(upstream)) throw new TypeError('key rings hold service keys only');
    const plan = upstream.credential;
    const record = await this.read(upstream.id);
    const now = this.now();
    const version = pick(this.view(plan.envVersions, record), now);
    if (!version) throw new KeywardError('credential_unavailable');
    this.warnIfExpiring(upstream.id, version, now);
    if (version.source === 'env') return plan.envVersions.find((env) => env.id === version.id)!.credential;
    return this.managedCredential(upstream, version);
  }

  /** Every static upstream's versions and recent rotations, for the admin API and the CLI. */
  async list(): Promise<Array<{ upstream: string; versions: VersionView[]; rotations: Rotation[] }>> {
    const now = this.now();
    const out = [];
    for (const upstream of this.ringUpstreams()) {
      const record = await this.read(upstream.id);
      const versions = this.view(upstream.credential.envVersions, record);
      const serving = pick(versions, now);
      out.push({
        upstream: upstream.id,
        versions: versions.map((version) => describe(version, serving, now)),
        rotations: [...record.rotations].reverse(),
      });
    }
    return out;
  }

  /** Adds a managed version in state `next` (no traffic yet). Idempotent: the same value adds nothing twice. */
  async add(upstreamId: string, value: string): Promise<KeyVersion> {
    const upstream = this.staticUpstream(upstreamId);
    if (!this.vault) {
      throw new KeywardError('credential_unavailable', { message: 'Managed key versions need KEYWARD_VAULT_SECRET to seal them at rest.' });
    }
    assertKeyValue(value);
    const print = upstream.fingerprints.of(value);
    const id = `managed:${print}`;
    // Versions added before keyed fingerprints keep their old (unkeyed) fingerprint and id: still the same key.
    const existing = this.view(upstream.credential.envVersions, await this.read(upstreamId)).find((v) =>
      upstream.fingerprints.matches(value, v.fingerprint),
    );
    if (existing?.state === 'revoked') throw new KeywardError('bad_request', { message: 'This key was revoked and cannot be added again.' });
    if (existing) return existing;
    logScrubber.add([value]);
    // The seal names its version, so the check below does not depend on the fingerprint key (which changes
    // when KEYWARD_SESSION_SECRET is rotated).
    await guard(async () => this.store.set(`keyval:${upstreamId}:${id}`, await this.vault!.seal({ value, id })));
    const now = this.now();
    return this.update(upstreamId, (record) => {
      const found = record.versions.find((v) => v.id === id);
      if (found) return found;
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
      return version;
    });
  }

  /**
   * Rotates to a new value: adds it, sends the upstream's canary request with it, and switches traffic only
   * if the canary answers 2xx; the versions it replaces stay usable as a fallback for the grace window.
   * The rotation id (default: derived from the new key's fingerprint) makes a repeated call a no-op.
   */
  async rotate(upstreamId: string, value: string, options: { rotationId?: string; skipCanary?: boolean; actor: string }): Promise<Rotation> {
    const upstream = this.staticUpstream(upstreamId);
    assertKeyValue(value);
    const print = upstream.fingerprints.of(value);
    const rotationId = options.rotationId ?? `rot-${print}`;
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(rotationId)) throw new KeywardError('bad_request', { message: 'Rotation ids are 1–64 letters, digits, "_" and "-".' });
    const previous = (await this.read(upstreamId)).rotations.find((r) => r.id === rotationId);
    if (previous && previous.to !== print) throw new KeywardError('bad_request', { message: 'This rotation id was used for another key.' });
    // A rotation that switched (or was rolled back) is done; one whose canary failed may be tried again.
    if (previous && previous.state !== 'canary_failed') return previous;
    const canary = upstream.credential.ring.canary;
    if (!canary && !options.skipCanary) {
      throw new KeywardError('bad_request', { message: 'This upstream declares no canary (keys.canary); pass skipCanary (--skip-canary) to switch without one.' });
    }
    const version = await this.add(upstreamId, value);
    const canaryStatus = options.skipCanary ? null : await this.sendCanary(upstream, credentialFor(upstream.auth, value, upstream.fingerprints, basicUsername(upstream)));
    const passed = canaryStatus === null || (canaryStatus >= 200 && canaryStatus < 300);
    const now = this.now();
    const grace = upstream.credential.ring.graceSeconds * 1000;
    return this.update(upstreamId, (record) => {
      const again = record.rotations.find((r) => r.id === rotationId);
      // Another instance may have used this id for another key since the check above.
      if (again && again.to !== print) throw new KeywardError('bad_request', { message: 'This rotation id was used for another key.' });
      if (again && again.state !== 'canary_failed') return again;
      record.rotations = record.rotations.filter((r) => r.id !== rotationId);
      const versions = this.view(upstream.credential.envVersions, record);
      const from = versions.filter((v) => v.id !== version.id && v.state === 'active' && usable(v, now)).map((v) => v.fingerprint);
      const target = own(record, versions, version.id);
      if (passed) {
        for (const v of versions) {
          if (v.id === version.id || v.state !== 'active') continue;
          Object.assign(own(record, versions, v.id), { state: 'retired', retiredAt: now, graceUntil: now + grace });
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
        to: print,
        toVersion: version.id,
        at: now,
        canaryStatus,
        actor: options.actor,
      };
      record.rotations = [...record.rotations, rotation].slice(-ROTATIONS_KEPT);
      return rotation;
    });
  }

  /** Undoes a switch: the versions it replaced serve again (unless revoked or expired), the new one is retired. */
  async rollback(rotationId: string, onlyUpstream?: string): Promise<Rotation> {
    for (const upstream of this.ringUpstreams()) {
      if (onlyUpstream !== undefined && upstream.id !== onlyUpstream) continue;
      const found = (await this.read(upstream.id)).rotations.find((r) => r.id === rotationId);
      if (!found) continue;
      const envVersions = upstream.credential.envVersions;
      const now = this.now();
      return this.update(upstream.id, (record) => {
        const rotation = record.rotations.find((r) => r.id === rotationId)!;
        if (rotation.state === 'rolled_back') return rotation;
        if (rotation.state !== 'switched') throw new KeywardError('bad_request', { message: 'Only a rotation that switched traffic can be rolled back.' });
        const versions = this.view(envVersions, record);
        const restore = versions.filter((v) => rotation.from.includes(v.fingerprint) && v.state !== 'revoked' && usable(v, now));
        if (restore.length === 0) throw new KeywardError('bad_request', { message: 'No version from before this rotation is still usable.' });
        for (const v of restore) Object.assign(own(record, versions, v.id), { state: 'active', activatedAt: now, retiredAt: null, graceUntil: null });
        const target = versions.find((v) => v.id === rotation.toVersion);
        if (target && target.state !== 'revoked') Object.assign(own(record, versions, target.id), { state: 'retired', retiredAt: now, graceUntil: now });
        rotation.state = 'rolled_back';
        return rotation;
      });
    }
    throw new KeywardError('not_found', { message: 'No rotation with this id.' });
  }

  /** Revokes every version with this fingerprint; every instance stops using it on its next request. */
  async revoke(print: string): Promise<Array<{ upstream: string; version: string }>> {
    if (!/^[0-9a-f]{12}$/.test(print)) throw new KeywardError('bad_request', { message: 'A fingerprint is 12 hexadecimal digits.' });
    const revoked: Array<{ upstream: string; version: string }> = [];
    const now = this.now();
    for (const upstream of this.ringUpstreams()) {
      const envVersions = upstream.credential.envVersions;
      const ids = await this.update(upstream.id, (record) => {
        const versions = this.view(envVersions, record);
        const matching = versions.filter((v) => v.fingerprint === print);
        for (const v of matching) Object.assign(own(record, versions, v.id), { state: 'revoked', revokedAt: v.revokedAt ?? now, graceUntil: null });
        return matching.map((v) => v.id);
      });
      revoked.push(...ids.map((version) => ({ upstream: upstream.id, version })));
    }
    if (revoked.length === 0) throw new KeywardError('not_found', { message: 'No key version has this fingerprint.' });
    return revoked;
  }

  /** Sends the canary call with `credential`: its status, or 0 when the upstream could not be reached. */
  private async sendCanary(upstream: RingUpstream, credential: ResolvedCredential): Promise<number> {
    const canary = upstream.credential.ring.canary!;
    const segments = canary.path === '/' ? [] : canary.path.slice(1).split('/');
    const url = buildUpstreamUrl(upstream, segments);
    const headers: Record<string, string> = { 'accept-encoding': 'identity', 'user-agent': 'keyward-canary' };
    injectCredential(credential, headers, url);
    try {
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
    return upstream;
  }

  private *ringUpstreams(): Generator<RingUpstream> {
    for (const upstream of this.registry.values()) if (isRingUpstream(upstream)) yield upstream;
  }

  private async read(upstreamId: string): Promise<RingRecord> {
    const raw = await guard(() => this.store.get(`keyring:${upstreamId}`));
    if (raw === null) return { rev: 0, versions: [], rotations: [] };
    const cached = this.parsed.get(upstreamId);
    if (cached?.raw === raw) return cached.record;
    // Parsed once per change, not per call; callers on the request path only read it.
    const record = JSON.parse(raw) as RingRecord;
    this.parsed.set(upstreamId, { raw, record });
    return record;
  }

  /** Compare-and-set on the ring's record, retried on a concurrent change by another instance. */
  private async update<T>(upstreamId: string, change: (record: RingRecord) => T): Promise<T> {
    const key = `keyring:${upstreamId}`;
    for (let attempt = 0; attempt < 20; attempt++) {
      const raw = await guard(() => this.store.get(key));
      const record: RingRecord = raw === null ? { rev: 0, versions: [], rotations: [] } : (JSON.parse(raw) as RingRecord);
      const before = JSON.stringify(record);
      const result = change(record);
      // Nothing changed (a repeated rollback, a revoke that matched nothing here): nothing to write.
      if (JSON.stringify(record) === before) return result;
      record.rev += 1;
      const next = JSON.stringify(record);
      const written = raw === null ? await guard(() => this.store.setIfAbsent(key, next, RECORD_TTL_MS)) : await guard(() => this.store.replaceIfEquals(key, raw, next));
      if (written) return result;
    }
    throw new KeywardError('service_unavailable', { message: 'The key ring changed too often concurrently; try again.' });
  }

  /** Environment versions (defaults: active from their notBefore) with the store's changes, then managed versions. */
  private view(envVersions: RingUpstream['credential']['envVersions'], record: RingRecord): KeyVersion[] {
    const stored = new Map(record.versions.map((v) => [v.id, v]));
    const fromEnv = envVersions.map((env): KeyVersion => {
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
      const change = stored.get(env.id);
      // The value (and so the fingerprint) of an env version may have changed since the store recorded it.
      // A change recorded before keyed fingerprints carries the unkeyed one: still this value's state.
      const same = change && (change.fingerprint === base.fingerprint || change.fingerprint === legacyFingerprint(env.credential.secrets[0]!));
      return change && same ? { ...base, ...pickState(change) } : base;
    });
    return [...fromEnv, ...record.versions.filter((v) => v.source === 'managed')];
  }

  private async managedCredential(upstream: Upstream, version: KeyVersion): Promise<ResolvedCredential> {
    const cached = this.managed.get(`${upstream.id}:${version.id}`);
    if (cached) return cached;
    if (!this.vault) throw new KeywardError('credential_unavailable');
    const sealed = await guard(() => this.store.get(`keyval:${upstream.id}:${version.id}`));
    const opened = sealed ? await this.vault.open<{ value: string; id?: string }>(sealed) : null;
    // The sealed value must be this version's: by the id sealed with it, or (sealed before ids were) by fingerprint.
    const belongs = opened && (opened.id !== undefined ? opened.id === version.id : upstream.fingerprints.matches(opened.value, version.fingerprint));
    if (!opened || !belongs) throw new KeywardError('credential_unavailable');
    logScrubber.add([opened.value]);
    const credential = credentialFor(upstream.auth, opened.value, upstream.fingerprints, basicUsername(upstream));
    this.managed.set(`${upstream.id}:${version.id}`, credential);
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

function pickState(v: KeyVersion) {
  return { state: v.state, activatedAt: v.activatedAt, retiredAt: v.retiredAt, graceUntil: v.graceUntil, revokedAt: v.revokedAt };
}

/** The version the ring stores changes for, created from the view when the record has none yet. */
function own(record: RingRecord, versions: readonly KeyVersion[], id: string): KeyVersion {
  let entry = record.versions.find((v) => v.id === id);
  if (!entry) {
    entry = { ...versions.find((v) => v.id === id)! };
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
export function pick(versions: readonly KeyVersion[], now: number): KeyVersion | null {
  let best: KeyVersion | null = null;
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
              : version.graceUntil !== null && version.graceUntil > now
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
  // A username read from the environment is inside the primary credential's secrets (second entry).
  return typeof upstream.auth.username === 'string' ? undefined : plan.credential.secrets[1];
}

/** The same rules as keys read from the environment at start-up. */
function assertKeyValue(value: string): void {
  if (typeof value !== 'string' || value.length < 8 || value.length > 4096 || value !== value.trim() || /[\x00-\x1f\x7f]/.test(value)) {
    throw new KeywardError('bad_request', { message: 'A key is 8–4096 characters without surrounding whitespace or control characters.' });
  }
}
