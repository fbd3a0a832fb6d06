import 'server-only';
import { MemoryStore } from './memory';
import { RedisStore, type RedisStoreLogger } from './redis';
import { SqliteStore } from './sqlite';
import type { Store } from './types';

export type { Store } from './types';
export { StoreUnavailableError } from './types';

export interface StoreSettings {
  readonly REDIS_URL?: string;
  readonly KEYWARD_REDIS_PREFIX?: string;
  readonly KEYWARD_STORE?: 'sqlite' | 'memory' | 'redis';
  readonly KEYWARD_STORE_PATH: string;
}

/** Redis when REDIS_URL is set (several instances, Vercel); otherwise the embedded SQLite file. `logger` hears a Redis refused. */
export function createStore(settings: StoreSettings, logger?: RedisStoreLogger): Store {
  const kind = settings.KEYWARD_STORE ?? (settings.REDIS_URL ? 'redis' : 'sqlite');
  if (kind === 'redis') return new RedisStore(settings.REDIS_URL!, { prefix: settings.KEYWARD_REDIS_PREFIX, logger });
  if (kind === 'memory') return new MemoryStore();
  return new SqliteStore(settings.KEYWARD_STORE_PATH);
}
