import { describe, expect, it } from 'vitest';
import { utc } from '../../lib/core/time';

describe('utc', () => {
  it('shows epoch milliseconds and the same time as an ISO string alike, in minutes or seconds', () => {
    const iso = '2026-12-06T16:20:43.512Z';
    expect(utc(Date.parse(iso))).toBe('2026-12-06 16:20 UTC');
    expect(utc(iso)).toBe('2026-12-06 16:20 UTC');
    expect(utc(iso, { seconds: true })).toBe('2026-12-06 16:20:43 UTC');
    // An offset is read as such: the UTC time is shown, not the local one.
    expect(utc('2026-12-06T18:20:43+02:00', { seconds: true })).toBe('2026-12-06 16:20:43 UTC');
  });
});
