import { describe, expect, it, vi } from 'vitest';
import { defineUpstream } from '../../../lib/core/config/load';
import { createLogger } from '../../../lib/core/log/logger';
import { createRuntime, type Runtime } from '../../../lib/core/runtime';
import { MemoryStore } from '../../../lib/store/memory';
import { randomSecret, testSessionSecrets } from '../../fixtures/secrets';

/**
 * The Keys page's data (app/admin/admin-data.ts loadKeyRings) read from real runtimes sharing one store: the
 * rotation is written by an instance whose clock runs ahead of the one that renders the page.
 */
const store = new MemoryStore();
const env = { ...testSessionSecrets(), SVC_KEY: randomSecret('svc'), KEYWARD_VAULT_SECRET: randomSecret('vault'), KEYWARD_STORE: 'memory' };
const upstreams = [
  defineUpstream('svc', {
    baseUrl: 'https://api.svc.test/',
    auth: { type: 'header', name: 'x-api-key', secret: { env: 'SVC_KEY' } },
    routes: [{ method: 'GET', path: '/items' }],
  }),
];
const logger = createLogger({ level: 'silent' });
let page: Runtime;

vi.mock('@/keyward', () => ({ keyward: { getRuntime: () => page } }));

describe('the Keys page', () => {
  it('lists the rings after a rotation made by an instance whose clock runs 90 s ahead (no "from after to" failure)', async () => {
    const ahead = createRuntime({ env, upstreams, store, logger, now: () => Date.now() + 90_000, serving: false });
    page = createRuntime({ env, upstreams, store, logger, serving: false });
    const rotation = await ahead.keyRings.rotate('svc', randomSecret('next'), { actor: 'local:root', skipCanary: true });
    expect(rotation.state).toBe('switched');
    const { loadKeyRings } = await import('../../../app/admin/admin-data');
    const { rings } = await loadKeyRings();
    expect(rings.map((ring) => ring.upstream)).toEqual(['svc']);
    expect(rings[0]!.versions.map((version) => version.status).sort()).toEqual(['fallback', 'serving']);
  });
});
