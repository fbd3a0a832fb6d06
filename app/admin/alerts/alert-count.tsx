import { activeAlertCount } from './alerts-data';

/**
 * The admin nav's figure beside "Alerts": how many detector actions are in effect (or alerts still open). One
 * store read; nothing when there are none or the store cannot be read (the page itself says why).
 */
export async function AlertCount() {
  const count = await activeAlertCount();
  if (count === null || count === '0') return null;
  return (
    <span className="badge danger nav-count" data-testid="nav-alert-count" aria-label={`${count} in effect`}>
      {count}
    </span>
  );
}
