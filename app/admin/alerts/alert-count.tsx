import { activeAlertCount } from './alerts-data';

/**
 * The admin nav's figure beside "Alerts": how many detector actions are in effect (or alerts still open), `N+`
 * when there were more alerts than it read. Nothing when there are none or the store cannot be read (the page
 * itself says why); `0+` (none among the newest, older ones not read) is shown muted.
 */
export async function AlertCount() {
  const count = await activeAlertCount();
  if (count === null || count === '0') return null;
  return (
    <span className={`badge ${count === '0+' ? 'neutral' : 'danger'} nav-count`} data-testid="nav-alert-count" aria-label={`${count} in effect`}>
      {count}
    </span>
  );
}
