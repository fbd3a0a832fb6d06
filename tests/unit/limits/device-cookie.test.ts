import { describe, expect, it } from 'vitest';
import { DEVICE_COOKIE, DEVICE_COOKIE_SECONDS, DeviceCookies } from '../../../lib/core/limits/device-cookie';
import { randomSecret } from '../../fixtures/secrets';

/**
 * The device cookie's value on its own (lib/core/limits/device-cookie.ts), with an injected clock. What it does
 * to the sign-in limits, through handleSignInPost: tests/integration/sign-in-limit.test.ts.
 */
const T0 = Date.UTC(2026, 0, 1);

/** Every username is a user here, whose password version is the first unless set in `versions`. */
const versions = new Map<string, string>();
const versionOf = (username: string) => versions.get(username) ?? 'first-version';

/** A cookie issued at `at` for `username`, and the value a browser sends back. */
function issued(secret: string, username: string, at = T0): { line: string; value: string } {
  const line = new DeviceCookies(secret, versionOf, () => at).issue(username)!;
  return { line, value: line.split(';')[0]!.slice(`${DEVICE_COOKIE}=`.length) };
}

describe('DeviceCookies', () => {
  const secret = randomSecret('sess');

  it('is the device of the username it was issued for, spelled as it was, and of no other', () => {
    const { value } = issued(secret, 'Alice');
    const cookies = new DeviceCookies(secret, versionOf, () => T0 + 1_000);
    const device = cookies.deviceOf(value, 'Alice');
    expect(device).toMatch(/^[A-Za-z0-9_-]{22}$/);
    // Usernames are case-sensitive: `alice` may be another account, whose lock `Alice`'s cookie must not lift.
    expect(cookies.deviceOf(value, 'alice')).toBeNull();
    expect(cookies.deviceOf(value, 'ALICE')).toBeNull();
    expect(cookies.deviceOf(value, 'alice2')).toBeNull();
    expect(cookies.deviceOf(value, 'alic')).toBeNull();
    expect(cookies.deviceOf(value, '')).toBeNull();
  });

  it('a new nonce each time: two sign-ins are two devices', () => {
    const cookies = new DeviceCookies(secret, versionOf, () => T0);
    const a = issued(secret, 'alice').value;
    const b = issued(secret, 'alice').value;
    expect(a).not.toBe(b);
    expect(cookies.deviceOf(a, 'alice')).not.toBe(cookies.deviceOf(b, 'alice'));
  });

  it('lasts 180 days: Max-Age says so, and an older value is no device even if a browser keeps sending it', () => {
    const { line, value } = issued(secret, 'alice');
    expect(line).toContain(`; Max-Age=${180 * 86_400};`);
    expect(DEVICE_COOKIE_SECONDS).toBe(180 * 86_400);
    expect(new DeviceCookies(secret, versionOf, () => T0 + DEVICE_COOKIE_SECONDS * 1000 - 1_000).deviceOf(value, 'alice')).not.toBeNull();
    expect(new DeviceCookies(secret, versionOf, () => T0 + DEVICE_COOKIE_SECONDS * 1000).deviceOf(value, 'alice')).toBeNull();
    expect(new DeviceCookies(secret, versionOf, () => T0 + 400 * 86_400_000).deviceOf(value, 'alice')).toBeNull();
  });

  it('a rotated KEYWARD_SESSION_SECRET turns earlier cookies into no device cookie', () => {
    const { value } = issued(secret, 'alice');
    expect(new DeviceCookies(randomSecret('sess'), versionOf, () => T0).deviceOf(value, 'alice')).toBeNull();
  });

  it('a new password for the user ends the cookies issued before it; no user, no cookie', () => {
    const { value } = issued(secret, 'erin');
    const cookies = new DeviceCookies(secret, versionOf, () => T0);
    expect(cookies.deviceOf(value, 'erin')).not.toBeNull();
    versions.set('erin', 'second-version');
    expect(cookies.deviceOf(value, 'erin')).toBeNull();
    expect(cookies.deviceOf(issued(secret, 'erin').value, 'erin')).not.toBeNull();

    const gone = new DeviceCookies(secret, () => null, () => T0);
    expect(gone.issue('erin')).toBeNull();
    expect(gone.deviceOf(issued(secret, 'erin').value, 'erin')).toBeNull();
  });

  it('holds no username, and anything malformed is null, never an error', () => {
    const { value } = issued(secret, 'a-distinctive-name');
    expect(value).not.toContain('distinctive');
    const cookies = new DeviceCookies(secret, versionOf, () => T0);
    for (const bad of [null, '', 'v2', 'v2...', `${value}x`, `x${value}`, value.toUpperCase(), `v1${value.slice(2)}`, 'v2.' + 'a'.repeat(5000), '\u0000', 'v2.é.1.x']) {
      expect(cookies.deviceOf(bad, 'a-distinctive-name')).toBeNull();
    }
  });
});
