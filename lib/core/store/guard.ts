import { KeywardError } from '../errors';
import { StoreUnavailableError } from '../../store/types';

/** Store failures become 503 `store_unavailable`: fail closed, never "not revoked" or "no key". */
export async function guard<T>(operation: () => Promise<T>): Promise<T> {
  try {
    return await operation();
  } catch (error) {
    if (error instanceof StoreUnavailableError) throw new KeywardError('store_unavailable', { cause: error });
    throw error;
  }
}
