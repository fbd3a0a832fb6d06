import type { Metadata } from 'next';
import { StatusCard } from './components/status-card';

/** Whole: the layout's title template applies to the pages below it, not to this one beside it. */
export const metadata: Metadata = { title: { absolute: 'Not found · Keyward' } };

/** Any address with no page (and `notFound()`): Keyward's own card, with the way home, in place of Next's bare 404. */
export default function NotFound() {
  return (
    <StatusCard status="404 · Not found" title="No page here" testId="not-found">
      <p className="muted">Nothing lives at this address. It may be mistyped, or the link that brought you here is out of date.</p>
    </StatusCard>
  );
}
