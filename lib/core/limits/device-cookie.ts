import 'server-only';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { derivedKey } from '../session/derived-key';

/**
 * The sign-in device cookie (OWASP, "Slow Down Online Guessing Attacks with Device Cookies":
 * https://owasp.org/www-community/Slow_Down_Online_Guessing_Attacks_with_Device_Cookies). `__Host-` like every
 * other Keyward cookie: Secure, Path=/, no Domain (RFC 6265bis §4.1.3.2).
 */
export const DEVICE_COOKIE = '__Host-keyward.device';
/** How long a browser stays known for a username after signing in with it: 180 days. */
export const DEVICE_COOKIE_SECONDS = 180 * 86_400;

/**
 * `v2.<nonce>.<issued>.<mac>`: 16 random bytes, seconds since the epoch in base 36, HMAC-SHA-256, base64url. `v1`
 * (before the MAC covered the password version) is no device cookie: its browser meets the username's counter until
 * its next sign-in.
 */
const VALUE = /^v2\.([A-Za-z0-9_-]{22})\.([0-9a-z]{1,11})\.([A-Za-z0-9_-]{43})$/;

/**
 * Device cookies for local sign-in. A browser that signed in as a username gets one; its later attempts for that
 * username count on the device's own counter instead of the username's (lib/core/limits/limits.ts checkSignIn),
 * so posts naming the user from elsewhere cannot lock the user out of a browser they signed in from before.
 *
 * The value is a random nonce (the device's id, which its counter is keyed by) and the time it was issued,
 * authenticated by an HMAC over them, the username as it is written (local usernames are case-sensitive:
 * `Alice` and `alice` can be two accounts, and one's cookie must not lift the other's lock) and the user's
 * password version (lib/core/users/file.ts): a new password in the users file, the way out after an account is
 * attacked, ends every device cookie issued before it, so a device that held one meets the username's counter
 * again. Neither is in the value itself (they are checked by computing the HMAC for the username being tried and
 * its current password version), and nothing in it is secret: it only proves that this deployment issued it. The
 * HMAC key is derived (HKDF, RFC 5869) from KEYWARD_SESSION_SECRET with an info string of its own, as the DPoP
 * nonces' is: every instance checks a cookie without a store read, and a rotated secret turns every earlier
 * cookie into no device cookie (its browser meets the username's counter again until it next signs in), the way
 * it ends every mobile token.
 */
export class DeviceCookies {
  private readonly key: Buffer;

  constructor(
    secret: string,
    /** A local user's current password version; null for no such user (then no cookie is issued or taken). */
    private readonly passwordVersionOf: (username: string) => string | null,
    private readonly now: () => number = Date.now,
  ) {
    this.key = derivedKey(secret, 'keyward sign-in device cookie v1');
  }

  /** The Set-Cookie line of a new device cookie for `username` (a fresh nonce every time); null for no such user. */
  issue(username: string): string | null {
    const version = this.passwordVersionOf(username);
    if (version === null) return null;
    const nonce = randomBytes(16).toString('base64url');
    const issued = Math.floor(this.now() / 1000).toString(36);
    const value = `v2.${nonce}.${issued}.${this.mac(nonce, issued, version, username)}`;
    return `${DEVICE_COOKIE}=${value}; Path=/; Max-Age=${DEVICE_COOKIE_SECONDS}; HttpOnly; Secure; SameSite=Strict`;
  }

  /**
   * The device's id when `value` is a device cookie this deployment issued for `username` (exactly) less than
   * DEVICE_COOKIE_SECONDS ago, with the password the user has now; else null, whatever is wrong with it (none,
   * malformed, forged, another username's, expired, from before a new password or a rotation of the secret, or
   * no such user): a bad cookie is simply no device cookie.
   */
  deviceOf(value: string | null, username: string): string | null {
    const match = value === null ? null : VALUE.exec(value);
    if (!match) return null;
    const [, nonce, issued, mac] = match as unknown as [string, string, string, string];
    if (this.now() - Number.parseInt(issued, 36) * 1000 >= DEVICE_COOKIE_SECONDS * 1000) return null;
    const version = this.passwordVersionOf(username);
    if (version === null) return null;
    const expected = Buffer.from(this.mac(nonce, issued, version, username));
    const given = Buffer.from(mac);
    return expected.length === given.length && timingSafeEqual(expected, given) ? nonce : null;
  }

  /**
   * The username goes last: the nonce, the time and the password version (base64url) hold no ".", so no two
   * inputs are one string.
   */
  private mac(nonce: string, issued: string, version: string, username: string): string {
    return createHmac('sha256', this.key).update(`v2.${nonce}.${issued}.${version}.${username}`, 'utf8').digest('base64url');
  }
}
