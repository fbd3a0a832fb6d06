import { describe, expect, it } from 'vitest';
import { cookieIn } from '../../../lib/core/api/guard';

/**
 * The cookies Keyward reads itself (connect binding, mobile resume and consent, device cookie) are `__Host-`
 * cookies: only this host, over HTTPS, may set them. A name the browser does not see as `__Host-` (any other
 * first character) is a cookie a sibling subdomain may set, so it must not be read as one.
 */
describe('cookieIn', () => {
  const name = '__Host-keyward.mobile-resume';

  it('reads the first cookie of that name, with spaces and tabs around it', () => {
    expect(cookieIn(`a=1; ${name}=first; ${name}=second`, name)).toBe('first');
    expect(cookieIn(`a=1;\t${name}=v \t`, name)).toBe('v');
    expect(cookieIn(`${name}=`, name)).toBeNull();
    expect(cookieIn(null, name)).toBeNull();
  });

  it('does not read a name with other leading characters, even ones String.trim() strips', () => {
    for (const lead of ['\u00a0', '\u000b', '\u000c', 'x']) {
      expect(cookieIn(`${lead}${name}=tossed`, name)).toBeNull();
      // Beside the real one, the real one is read whichever comes first.
      expect(cookieIn(`${lead}${name}=tossed; ${name}=real`, name)).toBe('real');
    }
  });
});
