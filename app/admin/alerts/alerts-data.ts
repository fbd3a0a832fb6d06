import 'server-only';
import type { Alert } from '@/lib/core/detect/alerts';
import { keyward } from '@/keyward';

/**
 * What the Alerts page and the nav's count read: the detector's alerts through `runtime.alerts.list` (the same
 * reader as GET /api/admin/alerts), newest first. An alert names users, upstreams and key fingerprints only
 * (never a session id, a key or a decoy's value), so it is plain data a client component may receive.
 */

export const PAGE_SIZE = 25;
/** The most alerts the nav's count reads (with the suspensions in force): two store reads, however many there are. */
const COUNT_SCAN = 200;

export type AlertsPage =
  | { readonly kind: 'alerts'; readonly now: number; readonly alerts: Alert[]; readonly older: string | null }
  | { readonly kind: 'invalid'; readonly message: string }
  | { readonly kind: 'unavailable' };

/** The page's `?cursor=`, as given (loadAlerts checks it); null when there is none. */
export function readCursor(value: string | string[] | undefined): string | null {
  const cursor = Array.isArray(value) ? value[0] : value;
  return cursor === undefined || cursor === '' ? null : cursor;
}

/**
 * One page of alerts, newest first, and the cursor of the next (older) page. A cursor the store could not have
 * made (an edited link) is refused, as GET /api/admin/alerts refuses it: read as none, it would show the newest
 * alerts as an older page.
 */
export async function loadAlerts(cursor: string | null): Promise<AlertsPage> {
  if (cursor !== null && !keyward.getRuntime().alerts.isCursor(cursor)) {
    return { kind: 'invalid', message: 'This page link is not valid: start again from the newest alerts.' };
  }
  try {
    const page = await keyward.getRuntime().alerts.list({ limit: PAGE_SIZE, ...(cursor ? { cursor } : {}) });
    return { kind: 'alerts', now: Date.now(), alerts: page.alerts, older: page.cursor };
  } catch {
    return { kind: 'unavailable' };
  }
}

/**
 * Whether an alert still asks for an admin's attention: not undone, and not a throttle that lifted by itself.
 * A re-authentication or a revocation stays in effect until it is undone; an alert-only step stays open.
 */
export function inEffect(alert: Alert, now: number): boolean {
  if (alert.state !== 'active') return false;
  return !(alert.action === 'throttle' && alert.expiresAt !== undefined && Date.parse(alert.expiresAt) <= now);
}

/**
 * The nav's figure: the alerts in effect among the newest COUNT_SCAN, with every suspension in force beyond them
 * (from the store's index of suspending alerts: they never lift by themselves, so a burst of later alerts must not
 * hide one), `N+` when the scan did not reach the oldest alert (more may be in effect), or null if unreadable.
 */
export async function activeAlertCount(): Promise<string | null> {
  try {
    const { alerts } = keyward.getRuntime();
    const [{ alerts: newest, cursor }, suspending] = await Promise.all([alerts.list({ limit: COUNT_SCAN }), alerts.suspending()]);
    const now = Date.now();
    const scanned = new Set(newest.map((alert) => alert.id));
    const count = [...newest, ...suspending.filter((alert) => !scanned.has(alert.id))].filter((alert) => inEffect(alert, now)).length;
    return cursor !== null ? `${count}+` : String(count);
  } catch {
    return null;
  }
}
