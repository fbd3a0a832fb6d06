import type { Metadata } from 'next';
import Link from 'next/link';
import type { ReactNode } from 'react';
import './globals.css';

export const metadata: Metadata = {
  title: 'Keyward',
  description: 'Calls third-party APIs for you through the server: your browser never sees a key.',
};

export default function RootLayout({ children }: { children: ReactNode }) {
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
