import { describe, expect, it, vi } from 'vitest';
import { createLogger } from '../../../lib/core/log/logger';
import { createRuntime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import { testSessionSecrets } from '../../fixtures/secrets';

/** The Audit page's data (app/admin/audit/audit-data.ts) over a real runtime and the in-memory store (its cursors: 16 digits). */
const runtime = createRuntime({
  env: { ...testSessionSecrets(), KEYWARD_STORE: 'memory' },
  store: new MemoryStore(),
  upstreams: [],
  logger: createLogger({ level: 'silent' }),
  serving: false,
});
vi.mock('@/keyward', () => ({ keyward: { getRuntime: () => runtime } }));

describe('the Audit page', () => {
  it('a paging link whose cursor the store could not have made says so, instead of showing the newest page as "older"', async () => {
    const { loadAuditPage, readQuery } = await import('../../../app/admin/audit/audit-data');
    for (const link of [{ older: '5' }, { newer: '1700000000000-0' }]) {
      expect(await loadAuditPage(readQuery(link)), JSON.stringify(link)).toMatchObject({ kind: 'invalid' });
    }
    expect(await loadAuditPage(readQuery({ older: '1'.repeat(16) }))).toMatchObject({ kind: 'records' });
  });

  it('Since and Until at a whole minute (a datetime-local field leaves out :00) filter the records instead of being refused', async () => {
    const { loadAuditPage, readQuery } = await import('../../../app/admin/audit/audit-data');
    await runtime.audit.recordAdmin({ action: 'key.add', actor: 'local:whole-minute', outcome: 'ok' });
    const minuteBefore = new Date(Date.now() - 60_000).toISOString().slice(0, 16);
    const since = await loadAuditPage(readQuery({ since: minuteBefore, action: 'key.add' }));
    expect(since).toMatchObject({ kind: 'records' });
    expect(since.kind === 'records' && since.records.map((record) => record.type === 'admin' && record.actor)).toContain('local:whole-minute');
    const until = await loadAuditPage(readQuery({ until: minuteBefore, action: 'key.add' }));
    expect(until).toMatchObject({ kind: 'records', records: [] });
  });

  it('a filter given twice in the URL is refused as the API refuses it (shown, not one copy silently chosen)', async () => {
    const { loadAuditPage, readQuery } = await import('../../../app/admin/audit/audit-data');
    await runtime.audit.recordAdmin({ action: 'key.add', actor: 'local:twice', outcome: 'ok' });
    for (const [name, values] of [['userId', ['local:twice', 'local:other']], ['action', ['key.add', 'key.add']], ['older', ['1'.repeat(16), '2'.repeat(16)]], ['limit', ['25', '100']]] as const) {
      expect(await loadAuditPage(readQuery({ [name]: [...values] })), name).toEqual({ kind: 'invalid', message: `${name} is given more than once.` });
    }
    const once = await loadAuditPage(readQuery({ userId: 'local:twice' }));
    expect(once.kind === 'records' && once.records.map((record) => record.type === 'admin' && record.actor)).toEqual(['local:twice']);
  });
});
