import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { isLogCursor, type AuditLog } from '../audit/audit';
import { KeywardError } from '../errors';
import { putBack, type RevocationUndo, type SessionRevocations } from '../session/revocation';
import { guard } from '../store/guard';
import type { Store } from '../../store/types';
import { forgivenKey, suspensionKey, throttleKey, type ThrottleMark } from './marks';
import type { AlertWebhook } from './webhook';

/** What a rule found: the detector's four steps, in order, and `alert` for signals that only warn. */
export type AlertAction = 'alert' | 'throttle' | 'reauth' | 'revoke';

export type AlertRule = 'calls' | 'errors' | 'spend' | 'ips_per_session' | 'new_routes' | 'decoy' | 'key_calls' | 'scrubber_hits';

/** One thing the detector did, as the dashboard, the API and the webhook show it. Never a secret or a session id. */
export interface Alert {
  readonly id: string;
  readonly at: string;
  readonly rule: AlertRule;
  readonly action: AlertAction;
  /** A sentence for people: what was seen and what was done. */
  readonly reason: string;
  readonly subject: {
    readonly userId?: string;
    readonly upstream?: string;
    readonly fingerprint?: string;
  };
  /** The figures behind it (rates per minute, baselines, thresholds, counts). */
  readonly evidence: Readonly<Record<string, number | string>>;
  /** For a throttle: when it lifts by itself. */
  readonly expiresAt?: string;
  /** `expired`: a throttle that lifted by itself (`expiresAt` passed); `undone`: by an admin. */
  readonly state: 'active' | 'undone' | 'expired';
  readonly undoneAt?: string;
  readonly undoneBy?: string;
}

/** What `apply` is asked to do. */
export interface Decision {
  readonly rule: AlertRule;
  readonly action: AlertAction;
  readonly reason: string;
  readonly subject: Alert['subject'];
  readonly evidence: Alert['evidence'];
  /** Sessions to end for `reauth` (the raw ids stay in the store's undo record, never in the alert). */
  readonly sessionIds?: readonly string[];
}

/** What undoing an alert puts back; kept beside the alert, never shown. */
interface UndoRecord {
  readonly revocations: RevocationUndo;
  /** Each mark set, with the value it replaced (null: none; absent in records from before it was kept). */
  readonly marks: ReadonlyArray<{ readonly key: string; readonly value: string; readonly previous?: string | null }>;
}

const STREAM = 'alerts';
/** `undo`'s answer for an id no stored alert has (malformed, unknown, or expired with the retention). */
const NO_ALERT = 'No alert with this id.';
const PAGE_MAX = 200;
/** How far back an undo looks for later alerts that replaced its marks: 100 pages of PAGE_MAX (20,000 alerts). */
const UNLINK_PAGES = 100;
/**
 * The ids of the alerts that suspend a user's keys (a JSON array). A suspension lasts until an admin undoes it,
 * so its alert must outlive the retention: such an alert (and its undo record, in the same key) is stored without
 * expiry until it is undone, and the retention starts then. Its entry in the alerts log still goes with the
 * retention (a log is trimmed by time), so the list shows these alerts after the log's last page, and drops an id
 * from here once its alert has expired. The store stays bounded by the suspensions in force, which only an admin
 * ends, and the undone ones of the last retention period (making the mark expire with the alert instead would
 * lift a suspension nobody looked at).
 */
const SUSPENDING = 'alerts:suspending';
/** `setIfAbsent` takes a ttl: the index is kept for good (as key rings' records, lib/core/keys/rings.ts). */
const FOR_GOOD_MS = 100 * 365 * 86_400_000;
/**
 * How long an indexed id whose alert is not stored (yet) stays indexed: `apply` indexes a suspending alert before
 * it stores it, so a list read in between, on any instance, must not take the id out. (Or the retention, if
 * shorter: tests keep alerts for moments.)
 */
const INDEXING_GRACE_MS = 10 * 60_000;

/**
 * The detector's actions and their record. Each action is written to the store (so every instance enforces
 * it on its next request), recorded in the audit trail (actor `detector`), listed for the dashboard, and sent to
 * the webhook when one is configured. An admin can undo any of them: the marks it set are removed (or put back
 * as they were), and the undo is audited too.
 */
export class Alerts {
  constructor(
    private readonly store: Store,
    private readonly revocations: SessionRevocations,
    private readonly audit: AuditLog,
    private readonly logger: Logger,
    private readonly retentionMs: number,
    private readonly webhook: AlertWebhook | null,
    private readonly now: () => number = Date.now,
    /** Counts each action (Prometheus `keyward_detector_actions_total`). */
    private readonly counted: (alert: Alert) => void = () => {},
  ) {}

  async apply(decision: Decision, throttle: { readonly limit: number; readonly windowSeconds: number; readonly forMinutes: number }): Promise<Alert> {
    const at = this.now();
    const id = `al_${randomUUID()}`;
    const { userId } = decision.subject;
    // The alert, with everything its undo needs, is stored before any mark is set: a store that fails part-way
    // leaves either nothing done or an alert an admin can undo, never a suspension or revocation without one.
    let revocations: RevocationUndo = [];
    const marks: Array<{ key: string; value: string; previous: string | null }> = [];
    // The value a mark replaces is kept for the undo: undoing this alert leaves an earlier one's mark in force.
    const planMark = async (key: string, value: string, ttlMs?: number) => {
      marks.push({ key, value, previous: await guard(() => this.store.get(key)) });
      return () => guard(() => this.store.set(key, value, ttlMs));
    };
    let act = async () => {};
    let expiresAt: string | undefined;
    if (userId !== undefined) {
      if (decision.action === 'throttle') {
        const mark: ThrottleMark = { limit: throttle.limit, windowSeconds: throttle.windowSeconds, alertId: id };
        const ttlMs = throttle.forMinutes * 60_000;
        act = await planMark(throttleKey(userId), JSON.stringify(mark), ttlMs);
        expiresAt = new Date(at + ttlMs).toISOString();
      } else if (decision.action === 'reauth') {
        revocations = this.revocations.planSessionsRevocation(decision.sessionIds ?? [], `detector:${id}`);
        act = () => this.revocations.revokeAsPlanned(revocations);
      } else if (decision.action === 'revoke') {
        revocations = await this.revocations.planUserRevocation(userId);
        const suspend = await planMark(suspensionKey(userId), id);
        act = async () => {
          await this.revocations.revokeAsPlanned(revocations);
          await suspend();
        };
      }
    }
    const alert: Alert = {
      id,
      at: new Date(at).toISOString(),
      rule: decision.rule,
      action: decision.action,
      reason: decision.reason,
      subject: decision.subject,
      evidence: decision.evidence,
      ...(expiresAt ? { expiresAt } : {}),
      state: 'active',
    };
    const undo: UndoRecord = { revocations, marks };
    const suspends = suspendsKeys(alert);
    // Indexed first: an index entry whose alert could not be stored is dropped by `list`, while an alert stored
    // for good and indexed nowhere would be lost once its log entry is trimmed.
    if (suspends) await this.index(id, 'add');
    await guard(() => this.store.set(`alert:${id}`, JSON.stringify({ alert, undo }), suspends ? undefined : this.retentionMs));
    await guard(() => this.store.append(STREAM, id, at, this.retentionMs));
    await act();
    // Undone while the step was being taken (the alert is listed before its marks are set): the undo found
    // nothing to put back yet, so what the step set is put back now, or it would stay in force with no alert
    // that an admin could undo.
    const stored = await guard(() => this.store.get(`alert:${id}`));
    if (stored !== null && parseAlert(stored)?.state === 'undone') {
      await this.revocations.restore(undo.revocations);
      for (const { key: markKey, value, previous } of undo.marks) await guard(() => putBack(this.store, markKey, value, previous ?? null));
    }
    await this.audit.recordAdmin({
      action: `detector.${decision.action}`,
      actor: 'detector',
      alertId: id,
      ...(userId !== undefined ? { targetUser: userId } : {}),
      ...(decision.subject.upstream !== undefined ? { upstream: decision.subject.upstream } : {}),
      ...(decision.subject.fingerprint !== undefined ? { fingerprint: decision.subject.fingerprint } : {}),
      outcome: decision.rule,
    });
    this.logger.warn({ alertId: id, rule: decision.rule, action: decision.action, userId: userId ?? null }, 'detector acted');
    this.webhook?.send({ type: 'keyward.alert', alert });
    this.counted(alert);
    return alert;
  }

  /** When an admin last undid an action on this user (ms), or null: the detector then starts again from the first step. */
  async forgivenAt(userId: string): Promise<number | null> {
    const raw = await guard(() => this.store.get(forgivenKey(userId)));
    return raw === null ? null : Number(raw);
  }

  /**
   * A later alert that replaced one of this alert's marks (the same step written twice for one user: each instance
   * acts on its own calls) would put this alert's mark back when it is undone, although this alert is undone
   * now. So the later alert's undo entry for that mark is pointed at what this alert replaced: undoing both, in
   * either order, leaves what was in force before them. Looked for among the newest alerts (compare-and-set).
   */
  private async unlink(id: string, alert: Alert, undo: UndoRecord): Promise<void> {
    const userId = alert.subject.userId;
    const ours = [
      ...undo.marks.map(({ key, value, previous }) => ({ key, value, previous: previous ?? null })),
      ...undo.revocations.map(({ key, mark, previous }) => ({ key, value: mark, previous: previous ?? null })),
    ];
    if (userId === undefined || ours.length === 0) return;
    for await (const entry of this.newerThan(id)) {
      const laterKey = `alert:${entry.value}`;
      for (let attempt = 0; attempt < 3; attempt++) {
        const laterRaw = await guard(() => this.store.get(laterKey));
        if (!laterRaw) break;
        const later = JSON.parse(laterRaw) as { alert: Alert; undo: UndoRecord };
        if (later.alert.state === 'undone' || later.alert.subject.userId !== userId) break;
        // An entry of the later alert that replaced one of ours now replaces what ours replaced.
        const relink = <T extends { key: string; previous?: string | null }>(entry: T): T => {
          const mine = ours.find((own) => own.key === entry.key && own.value === (entry.previous ?? null));
          return mine ? { ...entry, previous: mine.previous } : entry;
        };
        const marks = later.undo.marks.map(relink);
        const revocations = later.undo.revocations.map(relink);
        const changed = marks.some((entry, i) => entry !== later.undo.marks[i]) || revocations.some((entry, i) => entry !== later.undo.revocations[i]);
        if (!changed) break;
        const rewritten = JSON.stringify({ alert: later.alert, undo: { revocations, marks } });
        if (await guard(() => this.store.replaceIfEquals(laterKey, laterRaw, rewritten))) break;
      }
    }
  }

  /**
   * This alert's revocation keys that a later, still active alert of the same user planned too without replacing
   * this one's mark (`previous` null: its setIfAbsent found this mark there), with that alert's mark.
   */
  private async laterSessionMarks(id: string, alert: Alert, undo: UndoRecord): Promise<Map<string, string>> {
    const handover = new Map<string, string>();
    const userId = alert.subject.userId;
    const keys = new Set(undo.revocations.map((entry) => entry.key));
    if (userId === undefined || keys.size === 0) return handover;
    for await (const entry of this.newerThan(id)) {
      const raw = await guard(() => this.store.get(`alert:${entry.value}`));
      if (!raw) continue;
      const later = JSON.parse(raw) as { alert: Alert; undo: UndoRecord };
      if (later.alert.state === 'undone' || later.alert.subject.userId !== userId) continue;
      for (const planned of later.undo.revocations) {
        // The oldest such alert takes it (the later ones' entries then find its mark, as this one's found ours).
        if (keys.has(planned.key) && (planned.previous ?? null) === null) handover.set(planned.key, planned.mark);
      }
    }
    return handover;
  }

  /**
   * The alerts written after `id`, newest first: page after page back to its own entry (however many were
   * written since: a fixed window missed a later alert's marks, which an undo then put back for good), at most
   * UNLINK_PAGES pages.
   */
  private async *newerThan(id: string): AsyncGenerator<{ value: string }> {
    let cursor: string | undefined;
    for (let page = 0; page < UNLINK_PAGES; page++) {
      const entries = await guard(() => this.store.readLog(STREAM, { limit: PAGE_MAX, cursor, order: 'desc' }));
      for (const entry of entries) {
        if (entry.value === id) return; // older than this one: nothing of theirs replaced this alert's marks
        yield entry;
      }
      if (entries.length < PAGE_MAX) return;
      cursor = entries.at(-1)!.id;
    }
  }

  /** Whether `cursor` has the form of the cursors this store's pages give (any other would be read as none). */
  isCursor(cursor: string): boolean {
    return isLogCursor(this.store, cursor);
  }

  /**
   * Newest first, with a cursor for the next page. The last page (cursor null) ends with the suspending alerts
   * older than the retention (their log entries trimmed), newest first: a suspension is always listed.
   */
  async list(options: { limit: number; cursor?: string }): Promise<{ alerts: Alert[]; cursor: string | null }> {
    const limit = Math.min(Math.max(options.limit, 1), PAGE_MAX);
    const entries = await guard(() => this.store.readLog(STREAM, { limit, cursor: options.cursor, order: 'desc' }));
    const stored = entries.length > 0 ? await guard(() => this.store.getMany(entries.map((entry) => `alert:${entry.value}`))) : [];
    const now = this.now();
    const alerts = stored.flatMap((raw) => {
      const alert = raw ? parseAlert(raw) : null;
      return alert ? [current(alert, now)] : [];
    });
    if (entries.length < limit) alerts.push(...(await this.unlogged()));
    return { alerts, cursor: entries.length === limit ? entries.at(-1)!.id : null };
  }

  /**
   * Every suspending alert still in force (not undone), from their index, newest first, wherever its log entry is:
   * a suspension never lifts by itself, so a count of what is in effect reads these whatever came after them.
   */
  async suspending(): Promise<Alert[]> {
    const entries = parseIndex(await guard(() => this.store.get(SUSPENDING)));
    if (entries.length === 0) return [];
    const stored = await guard(() => this.store.getMany(entries.map(({ id }) => `alert:${id}`)));
    const now = this.now();
    return stored
      .flatMap((raw) => {
        const alert = raw ? parseAlert(raw) : null;
        return alert && alert.state === 'active' ? [current(alert, now)] : [];
      })
      .sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
  }

  /**
   * The suspending alerts whose log entries are gone (older than the log's oldest entry), newest first: those in
   * force, and those undone within the retention.
   */
  private async unlogged(): Promise<Alert[]> {
    const raw = await guard(() => this.store.get(SUSPENDING));
    const entries = parseIndex(raw);
    if (entries.length === 0) return [];
    const [oldest] = await guard(() => this.store.readLog(STREAM, { limit: 1, order: 'asc' }));
    const stored = await guard(() => this.store.getMany(entries.map(({ id }) => `alert:${id}`)));
    const held: Alert[] = [];
    const gone: string[] = [];
    const now = this.now();
    stored.forEach((value, i) => {
      const alert = value ? parseAlert(value) : null;
      // Expired (undone more than the retention ago), or never stored (its write failed after it was indexed); not
      // one indexed moments ago, whose step (`apply`, on any instance) may be about to store it.
      if (!alert) {
        if (now - entries[i]!.at > Math.min(INDEXING_GRACE_MS, this.retentionMs)) gone.push(entries[i]!.id);
      } else if (oldest === undefined || Date.parse(alert.at) < oldest.at) held.push(alert);
    });
    for (const id of gone) await this.index(id, 'remove');
    return held.sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
  }

  /**
   * Adds an id to the suspending alerts' index with the time it was added, or removes it (compare-and-set:
   * instances write it at once).
   */
  private async index(id: string, change: 'add' | 'remove'): Promise<void> {
    for (;;) {
      const raw = await guard(() => this.store.get(SUSPENDING));
      const entries = parseIndex(raw);
      if (entries.some((entry) => entry.id === id) === (change === 'add')) return;
      const next = JSON.stringify(change === 'add' ? [...entries, { id, at: this.now() }] : entries.filter((entry) => entry.id !== id));
      const written =
        raw === null ? await guard(() => this.store.setIfAbsent(SUSPENDING, next, FOR_GOOD_MS)) : await guard(() => this.store.replaceIfEquals(SUSPENDING, raw, next));
      if (written) return;
    }
  }

  /**
   * Undoes an alert's action (idempotent: undoing twice changes nothing more). Returns the alert as it now is;
   * `onUndone` is called only when this call did the undo (not for an alert already undone). Every call is on the
   * audit trail: an alert undone already as `detector.undo` with outcome `unchanged`, so an admin's retry after an
   * undo whose record could not be written (answered 503) puts their undo on the trail, as a repeated rotation is.
   * `notBySubject` (an admin's undo, `actor` their user id): an alert about the actor themselves is refused 403,
   * retries included, and nothing is lifted.
   */
  async undo(id: string, actor: string, onUndone?: (alert: Alert) => void, options: { readonly notBySubject?: boolean } = {}): Promise<Alert> {
    if (!/^al_[0-9a-f-]{36}$/.test(id)) throw new KeywardError('not_found', { message: NO_ALERT });
    const key = `alert:${id}`;
    const raw = await guard(() => this.store.get(key));
    if (!raw) throw new KeywardError('not_found', { message: NO_ALERT });
    const { alert, undo } = JSON.parse(raw) as { alert: Alert; undo: UndoRecord };
    // The detector's answer to an account must not be lifted by that account: a hijacked admin session would undo
    // its own throttle or suspension and reset the baselines that caught it.
    if (options.notBySubject && alert.subject.userId !== undefined && alert.subject.userId === actor) {
      this.logger.warn({ alertId: id, userId: actor }, 'undo of an alert about the admin themselves refused');
      throw new KeywardError('forbidden', { message: 'This alert is about you: another admin must undo it (or an operator, with the command line: keyward alerts undo).' });
    }
    if (alert.state === 'undone') {
      // An undo that failed after it was recorded (the store went away while putting marks back) is finished by
      // the admin's retry; on an alert lifted already this changes nothing (each put-back acts only on a mark that
      // still holds this alert's value).
      await this.forgive(alert, Date.parse(alert.undoneAt ?? '') || this.now());
      await this.lift(id, alert, undo);
      await this.retire(id, alert, raw);
      await this.recordUndo(id, alert, actor, 'unchanged');
      return alert;
    }
    const undone: Alert = { ...alert, state: 'undone', undoneAt: new Date(this.now()).toISOString(), undoneBy: actor };
    // Recorded as undone before anything is put back. A step still being taken (`apply`) then either sets its marks
    // before this and they are put back below, or re-checks its alert after this, finds it undone and puts them
    // back itself. Putting back first left a mark set in between (after the put-back, before the record) in force
    // for good, on an alert shown as undone. Compare-and-set: two admins undoing at once record one undo.
    if (!(await guard(() => this.store.replaceIfEquals(key, raw, JSON.stringify({ alert: undone, undo }))))) {
      return this.undo(id, actor, onUndone, options);
    }
    onUndone?.(undone);
    await this.forgive(alert, Date.parse(undone.undoneAt!));
    await this.lift(id, alert, undo);
    await this.retire(id, undone, JSON.stringify({ alert: undone, undo }));
    await this.recordUndo(id, alert, actor, alert.action);
    return undone;
  }

  /**
   * Every instance's detector learns of the undo before its next step for this user (`forgivenAt`): written right
   * after the undo is recorded, and again by a retry of an undo that failed before it (unless a later undo's time
   * is there already).
   */
  private async forgive(alert: Alert, undoneAt: number): Promise<void> {
    if (!forgives(alert)) return;
    const key = forgivenKey(alert.subject.userId);
    const current = Number(await guard(() => this.store.get(key)));
    if (current >= undoneAt) return;
    await guard(() => this.store.set(key, String(undoneAt), this.retentionMs));
  }

  /** Puts back what the alert's step set (each put-back only where the mark still holds this alert's value). */
  private async lift(id: string, alert: Alert, undo: UndoRecord): Promise<void> {
    // A session mark a later alert also planned (a re-authentication of the same session by another instance, or
    // a later step): that alert did not set its own (setIfAbsent kept this one), so the mark is handed over to it
    // rather than removed while it is still active.
    const handover = await this.laterSessionMarks(id, alert, undo);
    const own = undo.revocations.filter((entry) => !handover.has(entry.key));
    for (const [markKey, later] of handover) {
      const mine = undo.revocations.find((entry) => entry.key === markKey)!;
      await guard(() => this.store.replaceIfEquals(markKey, mine.mark, later));
    }
    await this.revocations.restore(own);
    for (const { key: markKey, value, previous } of undo.marks) await guard(() => putBack(this.store, markKey, value, previous ?? null));
    await this.unlink(id, alert, undo);
  }

  /** An undone suspending alert is kept for the retention from now (and listed until then). */
  private async retire(id: string, alert: Alert, raw: string): Promise<void> {
    if (!suspendsKeys(alert)) return;
    // Nothing else writes an undone alert (`unlink` skips them), so this replaces only the value just recorded.
    await guard(() => this.store.set(`alert:${id}`, raw, this.retentionMs));
  }

  private async recordUndo(id: string, alert: Alert, actor: string, outcome: string): Promise<void> {
    await this.audit.recordAdmin({
      action: 'detector.undo',
      actor,
      alertId: id,
      ...(alert.subject.userId !== undefined ? { targetUser: alert.subject.userId } : {}),
      outcome,
    });
  }
}

/**
 * Whether undoing this alert says the user is fine, so the detector starts over for them. Dismissing an alert that
 * took no step (a decoy seen as content, which anyone can get into an honest user's request) does not: an
 * anomaly of theirs under way escalates on.
 */
export function forgives(alert: Alert): alert is Alert & { subject: { userId: string } } {
  return alert.action !== 'alert' && alert.subject.userId !== undefined;
}

/** Whether the alert's step suspends the user's keys (a revocation of a user): it is kept until undone. */
function suspendsKeys(alert: Alert): boolean {
  return alert.action === 'revoke' && alert.subject.userId !== undefined;
}

/** The suspending alerts' index (an unreadable one reads as empty, and is rewritten by the next change). */
function parseIndex(raw: string | null): Array<{ id: string; at: number }> {
  if (raw === null) return [];
  try {
    const entries: unknown = JSON.parse(raw);
    return Array.isArray(entries)
      ? entries.filter((entry): entry is { id: string; at: number } => typeof entry?.id === 'string' && Number.isFinite(entry?.at))
      : [];
  } catch {
    return [];
  }
}

/** An alert as it stands at `now`: an active throttle whose mark has expired reads as `expired`. */
function current(alert: Alert, now: number): Alert {
  return alert.state === 'active' && alert.expiresAt !== undefined && Date.parse(alert.expiresAt) <= now ? { ...alert, state: 'expired' } : alert;
}

/** A stored alert, or null for one that cannot be read (it is skipped; the list still shows the others). */
function parseAlert(raw: string): Alert | null {
  try {
    const { alert } = JSON.parse(raw) as { alert?: Alert };
    return alert && typeof alert.id === 'string' && typeof alert.at === 'string' ? alert : null;
  } catch {
    return null;
  }
}
