import { describe, expect, it } from 'vitest';
import type { Period } from '../../../lib/core/config/policy';
import { periodWindow } from '../../../lib/core/limits/period';

const at = (iso: string) => Date.parse(iso);
const iso = (ms: number) => new Date(ms).toISOString();

describe('periodWindow', () => {
  it('minute: the UTC minute, ending at the next one', () => {
    const w = periodWindow('minute', at('2027-03-14T15:09:26.535Z'));
    expect(w).toEqual({ id: '2027-03-14T15:09', endsAt: at('2027-03-14T15:10:00.000Z') });
    expect(periodWindow('minute', at('2027-03-14T15:09:59.999Z')).id).toBe('2027-03-14T15:09');
    expect(periodWindow('minute', at('2027-03-14T15:10:00.000Z'))).toEqual({
      id: '2027-03-14T15:10',
      endsAt: at('2027-03-14T15:11:00.000Z'),
    });
  });

  it('hour: the UTC hour, ending at the next one', () => {
    expect(periodWindow('hour', at('2027-03-14T15:09:26.535Z'))).toEqual({
      id: '2027-03-14T15',
      endsAt: at('2027-03-14T16:00:00.000Z'),
    });
    expect(periodWindow('hour', at('2027-03-14T23:59:59.999Z'))).toEqual({
      id: '2027-03-14T23',
      endsAt: at('2027-03-15T00:00:00.000Z'),
    });
    expect(periodWindow('hour', at('2027-03-15T00:00:00.000Z')).id).toBe('2027-03-15T00');
  });

  it('day: the UTC day, ending at the next midnight, across month and year ends', () => {
    expect(periodWindow('day', at('2027-03-14T15:09:26.535Z'))).toEqual({
      id: '2027-03-14',
      endsAt: at('2027-03-15T00:00:00.000Z'),
    });
    expect(periodWindow('day', at('2027-03-31T23:59:59.999Z'))).toEqual({
      id: '2027-03-31',
      endsAt: at('2027-04-01T00:00:00.000Z'),
    });
    expect(periodWindow('day', at('2027-04-30T12:00:00.000Z')).endsAt).toBe(at('2027-05-01T00:00:00.000Z'));
    expect(periodWindow('day', at('2027-12-31T23:59:59.999Z'))).toEqual({
      id: '2027-12-31',
      endsAt: at('2028-01-01T00:00:00.000Z'),
    });
    expect(periodWindow('day', at('2028-01-01T00:00:00.000Z'))).toEqual({
      id: '2028-01-01',
      endsAt: at('2028-01-02T00:00:00.000Z'),
    });
  });

  it('day: February in leap and common years', () => {
    expect(periodWindow('day', at('2028-02-28T10:00:00Z'))).toEqual({
      id: '2028-02-28',
      endsAt: at('2028-02-29T00:00:00Z'),
    });
    expect(periodWindow('day', at('2028-02-29T10:00:00Z'))).toEqual({
      id: '2028-02-29',
      endsAt: at('2028-03-01T00:00:00Z'),
    });
    expect(periodWindow('day', at('2027-02-28T10:00:00Z'))).toEqual({
      id: '2027-02-28',
      endsAt: at('2027-03-01T00:00:00Z'),
    });
    // Century rules: 2100 is not a leap year, 2000 was.
    expect(periodWindow('day', at('2100-02-28T10:00:00Z')).endsAt).toBe(at('2100-03-01T00:00:00Z'));
    expect(periodWindow('day', at('2000-02-28T10:00:00Z')).endsAt).toBe(at('2000-02-29T00:00:00Z'));
  });

  it('month: the UTC calendar month, ending on the 1st of the next, across the year end', () => {
    expect(periodWindow('month', at('2027-03-14T15:09:26.535Z'))).toEqual({
      id: '2027-03',
      endsAt: at('2027-04-01T00:00:00.000Z'),
    });
    expect(periodWindow('month', at('2027-03-01T00:00:00.000Z')).id).toBe('2027-03');
    expect(periodWindow('month', at('2027-02-28T23:59:59.999Z')).id).toBe('2027-02');
    expect(periodWindow('month', at('2027-12-31T23:59:59.999Z'))).toEqual({
      id: '2027-12',
      endsAt: at('2028-01-01T00:00:00.000Z'),
    });
    expect(periodWindow('month', at('2028-01-01T00:00:00.000Z'))).toEqual({
      id: '2028-01',
      endsAt: at('2028-02-01T00:00:00.000Z'),
    });
  });

  it('month: February is 29 days long in leap years and 28 otherwise', () => {
    const day = 86_400_000;
    const leap = periodWindow('month', at('2028-02-10T00:00:00Z'));
    expect(leap).toEqual({ id: '2028-02', endsAt: at('2028-03-01T00:00:00Z') });
    expect(leap.endsAt - at('2028-02-01T00:00:00Z')).toBe(29 * day);
    expect(periodWindow('month', at('2028-02-29T23:59:59.999Z')).id).toBe('2028-02');
    const common = periodWindow('month', at('2027-02-10T00:00:00Z'));
    expect(common.endsAt - at('2027-02-01T00:00:00Z')).toBe(28 * day);
  });

  it('uses UTC, whatever the local time zone says', () => {
    // 23:30 UTC is already the next day in Tokyo and still the same day in New York: the id is UTC's.
    expect(periodWindow('day', at('2027-06-30T23:30:00-00:00')).id).toBe('2027-06-30');
    expect(periodWindow('day', at('2027-07-01T08:30:00+09:00')).id).toBe('2027-06-30');
    expect(periodWindow('month', at('2027-06-30T20:00:00-05:00')).id).toBe('2027-07');
  });

  it.each<[Period, number]>([
    ['minute', 7_919],
    ['hour', 60_013],
    ['day', 3_600_011],
    ['month', 86_400_007],
  ])(
    '%s: every instant lies in its window, the window ends in the future and the next one has a new id',
    (period, step) => {
      // Walks 2027-12-01 … 2028-03-31 (a year end and a leap February) in uneven steps.
      const start = at('2027-12-01T00:00:00Z');
      const end = at('2028-03-31T23:59:59Z');
      const stride = Math.max(step, Math.floor((end - start) / 2_000));
      let previous: { id: string; endsAt: number } | null = null;
      for (let now = start; now <= end; now += stride) {
        const window = periodWindow(period, now);
        expect(window.endsAt, iso(now)).toBeGreaterThan(now);
        // The last instant of the window has the same id, the window end starts a new one.
        expect(periodWindow(period, window.endsAt - 1).id).toBe(window.id);
        const next = periodWindow(period, window.endsAt);
        expect(next.id).not.toBe(window.id);
        expect(next.endsAt).toBeGreaterThan(window.endsAt);
        if (previous && previous.id === window.id) expect(window.endsAt).toBe(previous.endsAt);
        if (previous && previous.id !== window.id) expect(window.id > previous.id).toBe(true);
        previous = window;
      }
    },
  );
});
