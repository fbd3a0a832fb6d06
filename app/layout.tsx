import type { Metadata } from 'next';
import Link from 'next/link';
import { connection } from 'next/server';
import type { ReactNode } from 'react';
import './globals.css';

export const metadata: Metadata = {
  // Each page names itself ("Sign in · Keyward"); a page that does not keeps "Keyward".
  title: { default: 'Keyward', template: '%s · Keyward' },
  description: 'Calls third-party APIs for you through the server: your browser never sees a key.',
};

export default async function RootLayout({ children }: { children: ReactNode }) {
  // Every page is rendered for its request, the not-found page too: its scripts carry that request's CSP nonce
  // (proxy.ts); a page prerendered at build time would carry none, and its scripts would not run.
  await connection();
  return (
    <html lang="en">
      <body>
        <header className="topbar">
          <div className="topbar-inner">
            <Link className="brand" href="/" prefetch={false}>
              <span className="brand-mark" aria-hidden="true">K</span>
              Keyward
            </Link>
          </div>
        </header>
        {children}
      </body>
    </html>
  );
}
