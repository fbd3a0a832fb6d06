import type { Metadata } from 'next';
import Link from 'next/link';
import { redirect } from 'next/navigation';
import { Suspense, cache, type ReactNode } from 'react';
import type { PageSession } from 'keyward/next';
import { keyward } from '@/keyward';
import { AlertCount } from './alerts/alert-count';
import { StatusCard } from '../components/status-card';

export type AdminGate = { readonly kind: 'admin'; readonly session: PageSession } | { readonly kind: 'forbidden' } | { readonly kind: 'unavailable'; readonly path: string };

/**
 * The admin pages' session check, the API's rule (lib/core/api/admin.ts requireAdmin): a session with the
 * `admin` role, checked on every request, before any data is read. Signed out → the sign-in page, back here after.
 */
export async function adminGate(path: string): Promise<AdminGate> {
  const state = await pageSession();
  if (state.state === 'unavailable') return { kind: 'unavailable', path };
  if (state.state === 'signed-out') redirect(`/signin?callbackUrl=${encodeURIComponent(path)}`);
  return state.session.roles.includes('admin') ? { kind: 'admin', session: state.session } : { kind: 'forbidden' };
}

/** The session read once per request, for the page and its title both. */
const pageSession = cache(() => keyward.pageSession());

/**
 * An admin page's title ("Keys · Keyward"), or what the page shows instead: "Forbidden" to a signed-in user
 * without the admin role (the 403 card), "Admin" while the session store is unavailable.
 */
export async function adminMetadata(title: string): Promise<Metadata> {
  const state = await pageSession();
  if (state.state === 'unavailable') return { title: 'Admin' };
  return { title: state.state === 'signed-in' && !state.session.roles.includes('admin') ? 'Forbidden' : title };
}

/** What a non-admin or a store outage gets instead of the page: words, no data. */
export function GateRefusal({ gate }: { gate: Exclude<AdminGate, { kind: 'admin' }> }) {
  if (gate.kind === 'forbidden') {
    return (
      <StatusCard status="403 · Forbidden" title="Admins only" testId="admin-forbidden">
        <p className="muted">The dashboard shows how every user and key is used, so it needs the admin role. Your session does not have it.</p>
      </StatusCard>
    );
  }
  return (
    <main className="page-narrow">
      <div className="card">
        <h1>Admin</h1>
        <div className="alert error" data-testid="store-unavailable">
          Keyward cannot reach its session store right now. Try again in a moment.
        </div>
        <Link className="button block" href={gate.path} prefetch={false} data-testid="retry">
          Try again
        </Link>
      </div>
    </main>
  );
}

/** The admin sections, in nav order: a new page adds one line here (and passes its href as `current`). */
const SECTIONS = [
  { href: '/admin', label: 'Overview' },
  { href: '/admin/keys', label: 'Keys' },
  { href: '/admin/users', label: 'Users' },
  { href: '/admin/audit', label: 'Audit' },
  { href: '/admin/alerts', label: 'Alerts' },
] as const;

export type AdminSection = (typeof SECTIONS)[number]['href'];

/** The admin pages' frame: a heading, the section nav (SECTIONS) and the way back home. */
export function AdminFrame({ current, title, intro, actions, children }: { current: AdminSection; title: string; intro: ReactNode; actions?: ReactNode; children: ReactNode }) {
  return (
    <main className="page">
      <nav className="admin-nav" aria-label="Admin">
        {SECTIONS.map((section) => (
          <Link key={section.href} href={section.href} prefetch={false} className={section.href === current ? 'active' : undefined} aria-current={section.href === current ? 'page' : undefined}>
            {section.label}
            {section.href === '/admin/alerts' && (
              <Suspense fallback={null}>
                <AlertCount />
              </Suspense>
            )}
          </Link>
        ))}
        <Link href="/" prefetch={false} className="admin-nav-home">
          ← Home
        </Link>
      </nav>
      <div className="page-header row" style={{ justifyContent: 'space-between', alignItems: 'flex-end' }}>
        <div>
          <h1>{title}</h1>
          <p>{intro}</p>
        </div>
        {actions}
      </div>
      {children}
    </main>
  );
}

/** A store outage while reading a page's data: an error card, as the home page shows one. */
export function DataUnavailable({ what = 'its usage figures or key rings' }: { what?: string }) {
  return (
    <section className="card">
      <div className="alert error" data-testid="admin-data-unavailable">
        Keyward cannot read {what} right now (the store is unavailable). Try again in a moment.
      </div>
    </section>
  );
}
