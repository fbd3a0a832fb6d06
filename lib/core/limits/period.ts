import type { Period } from '../config/policy';

/** The calendar period (UTC) containing `now`: an id for counter keys and the instant it ends. */
export function periodWindow(period: Period, now: number): { id: string; endsAt: number } {
  const d = new Date(now);
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth();
  const pad = (n: number) => String(n).padStart(2, '0');
  switch (period) {
    case 'minute': {
      const start = Math.floor(now / 60_000) * 60_000;
      return { id: new Date(start).toISOString().slice(0, 16), endsAt: start + 60_000 };
    }
    case 'hour': {
      const start = Math.floor(now / 3_600_000) * 3_600_000;
      return { id: new Date(start).toISOString().slice(0, 13), endsAt: start + 3_600_000 };
    }
    case 'day':
      return { id: `${y}-${pad(m + 1)}-${pad(d.getUTCDate())}`, endsAt: Date.UTC(y, m, d.getUTCDate() + 1) };
    case 'month':
      return { id: `${y}-${pad(m + 1)}`, endsAt: Date.UTC(y, m + 1, 1) };
  }
}
