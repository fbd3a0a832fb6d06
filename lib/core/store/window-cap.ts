import { KeywardError } from '../errors';
import type { Store } from '../../store/types';
import { guard } from './guard';

/**
 * Counts one more use of `key` in a fixed window of `windowMs` (a counter that expires with the window) and
 * refuses it past `max`: 429 `rate_limited` with Retry-After (the window's length: the counter's own time left is
 * not read, to keep this one store command). For Keyward's own endpoints that store a record per request (a
 * pending connect, a WebSocket ticket, a mobile code or token), so that one caller cannot fill the store.
 */
export async function capPerWindow(store: Store, key: string, cap: { max: number; windowMs: number; message: string }): Promise<void> {
  const count = await guard(() => store.increment(key, 1, cap.windowMs));
  if (count > cap.max) {
    throw new KeywardError('rate_limited', {
      message: cap.message,
      headers: { 'retry-after': String(Math.ceil(cap.windowMs / 1000)) },
    });
  }
}
