import type { MeterUse } from './users-data';

/** Pieces the Users list and a user's page share. */

/** A user's page: the id encoded as one path segment (`local:ada` → `local%3Aada`). */
export function userPath(userId: string): string {
  return `/admin/users/${encodeURIComponent(userId)}`;
}

export function RoleList({ roles }: { roles: readonly string[] | null }) {
  if (roles === null) return <span className="small muted">unknown</span>;
  if (roles.length === 0) return <span className="small muted">none</span>;
  return (
    <span className="row" data-testid="user-roles">
      {roles.map((role) => (
        <span key={role} className={role === 'admin' ? 'badge' : 'badge neutral'}>
          {role}
        </span>
      ))}
    </span>
  );
}

const PERIOD_WORD: Record<string, string> = { minute: 'this minute', hour: 'this hour', day: 'today', month: 'this month' };

/** "12 / 5,000 requests today", "300 / 1,000 units this month"; a per-key rule has no per-user figure. */
export function meterText(meter: MeterUse): string {
  const limit = meter.limit.toLocaleString('en-US');
  const when = PERIOD_WORD[meter.period] ?? `per ${meter.period}`;
  if (meter.used === null) return `${limit} ${meter.unit} ${when}, per key`;
  return `${meter.used.toLocaleString('en-US')} / ${limit} ${meter.unit} ${when}`;
}
