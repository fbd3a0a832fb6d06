import 'server-only';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { derivedKey } from '../session/derived-key';

/** How long one nonce is handed out; it is accepted for this long again after the next one replaces it. */
export const NONCE_WINDOW_MS = 5 * 60_000;

const NONCE = /^([0-9a-z]{1,11})\.([A-Za-z0-9_-]{43})$/;

/**
 * Server-issued DPoP nonces (RFC 9449 §8) for the token endpoint: `<window>.<HMAC(window)>`, where the window is
 * the current 5-minute slot and the HMAC key is derived from KEYWARD_SESSION_SECRET. Every instance computes
 * and checks the same nonces without a store read; a nonce from the current or the previous window is good, so
 * each one lives 5 to 10 minutes and a new one comes out every 5. A client cannot compute a future nonce
 * (§8: "unpredictable"), so a proof signed ahead of time by a stolen-then-returned device is useless.
 */
export class DpopNonces {
  private readonly key: Buffer;

  constructor(
    secret: string,
    private readonly now: () => number = Date.now,
    private readonly windowMs = NONCE_WINDOW_MS,
  ) {
    // A key of its own, so a nonce's HMAC can never double as anything else the secret signs.
    this.key = derivedKey(secret, 'keyward dpop nonce v1');
  }

  /** The nonce to hand out now (in `DPoP-Nonce`). */
  current(): string {
    return this.nonceFor(this.window());
  }

  /** Whether `nonce` is one this deployment handed out in the current or the previous window. */
  isValid(nonce: string): boolean {
    const match = NONCE.exec(nonce);
    if (!match) return false;
    const window = Number.parseInt(match[1]!, 36);
    const current = this.window();
    if (window !== current && window !== current - 1) return false;
    // The label must be the window's own spelling (`0k` parses as `k`): else the lengths differ, which
    // timingSafeEqual would throw on.
    const expected = Buffer.from(this.nonceFor(window));
    const given = Buffer.from(nonce);
    return expected.length === given.length && timingSafeEqual(expected, given);
  }

  private window(): number {
    return Math.floor(this.now() / this.windowMs);
  }

  private nonceFor(window: number): string {
    const label = window.toString(36);
    return `${label}.${createHmac('sha256', this.key).update(label).digest('base64url')}`;
  }
}
