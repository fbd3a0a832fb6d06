import type { RateRule } from '../limits/rules';

/**
 * The store marks through which the detector's actions reach every instance's next request:
 *  - `det:throttle:<userId>`: a temporary, tighter rate limit (JSON `ThrottleMark`), expiring by itself;
 *    read with the call's other store reads (lib/core/store/round.ts), so it costs no extra round trip
 *    until it is set;
 *  - `det:suspend:<userId>`: the user's own keys are suspended until an admin lifts it (read with the key);
 *  - `det:forgiven:<userId>`: when an admin last undid an action on the user (read before escalating).
 * Session revocations use the existing marks (lib/core/session/revocation.ts).
 */
export interface ThrottleMark {
  readonly limit: number;
  readonly windowSeconds: number;
  readonly alertId: string;
}

export function throttleKey(userId: string): string {
  return `det:throttle:${userId}`;
}

/** When an admin last undid a detector action on the user: the next anomaly starts from the first step again. */
export function forgivenKey(userId: string): string {
  return `det:forgiven:${userId}`;
}

export function suspensionKey(userId: string): string {
  return `det:suspend:${userId}`;
}

/** A mark that cannot be read still throttles (fail closed): one call a minute. */
const UNREADABLE: Pick<RateRule, 'limit' | 'windowSeconds'> = { limit: 1, windowSeconds: 60 };

/** The rate rule a throttle mark stands for, counted per user (its own counter, beside the configured rules). */
export function throttleRule(raw: string | null | undefined): RateRule | null {
  if (!raw) return null;
  let { limit, windowSeconds } = UNREADABLE;
  try {
    const mark = JSON.parse(raw) as Partial<ThrottleMark>;
    if (Number.isSafeInteger(mark.limit) && Number.isSafeInteger(mark.windowSeconds) && mark.limit! >= 1 && mark.windowSeconds! >= 1) {
      ({ limit, windowSeconds } = mark as ThrottleMark);
    }
  } catch {
    // keep the strict default
  }
  // The limit and window are in the id: the embedded stores keep one in-memory limiter per rule id, which would
  // otherwise hold every throttled user to whichever mark it saw first.
  return { id: `detector-throttle-${limit}-${windowSeconds}`, name: 'throttle', by: 'user', limit, windowSeconds, roles: null };
}
