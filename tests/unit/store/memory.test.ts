import { describe, expect, it } from 'vitest';
import { MemoryStore } from '../../../lib/store/memory';

describe('MemoryStore', () => {
  it('sweeps out expired entries and hashes that are never read again, at a write at most once a minute', async () => {
    let now = 1_000_000;
    const store = new MemoryStore(() => now);
    for (let i = 0; i < 1000; i++) await store.setIfAbsent(`once:${i}`, '1', 1_000);
    await store.incrementHashes([{ key: 'h', field: 'f', by: 1, expiresAt: now + 1_000 }]);
    await store.set('kept', 'v');
    expect(store.size).toBe(1002);
    now += 2_000;
    // Expired but not yet swept: a write within the minute since the last sweep leaves them.
    await store.set('other', 'v');
    expect(store.size).toBe(1003);
    now += 60_000;
    await store.set('later', 'v');
    expect(store.size).toBe(3);
    expect(await store.get('kept')).toBe('v');
    expect(await store.get('once:1')).toBeNull();
  });
});
