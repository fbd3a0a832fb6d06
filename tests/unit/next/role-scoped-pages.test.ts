import { describe, expect, it, vi } from 'vitest';
import { defineUpstream } from '../../../lib/core/config/load';
import type { Runtime } from '../../../lib/core/runtime';
import { buildRegistry } from '../../../lib/core/upstream/registry';
import { createPageHelpers } from '../../../lib/next/pages';

/**
 * A user's own pages (home: "APIs you can call"; /usage: calls and limits) show what the user's roles may call:
 * another role's upstream or route, and its limits, are not shown to them. The registry is the real compiled one;
 * only the runtime around it is a stand-in (the pages read its registry, usage and keys, nothing else here).
 */
const registry = buildRegistry(
  [
    defineUpstream('hr', {
      baseUrl: 'https://hr.internal.example/',
      auth: { type: 'bearer', secret: { env: 'HR_KEY' } },
      routes: [
        { method: 'GET', path: '/holidays', rateLimits: [{ by: 'user', limit: 30, windowSeconds: 60 }] },
        {
          method: 'DELETE',
          path: '/employees/:id/payroll-override',
          roles: ['admin'],
          rateLimits: [{ by: 'user', limit: 5, windowSeconds: 60 }],
        },
      ],
    }),
    defineUpstream('payroll', {
      baseUrl: 'https://payroll.internal.example/',
      auth: { type: 'bearer', secret: { env: 'HR_KEY' } },
      routes: [{ method: 'GET', path: '/runs', roles: ['admin'] }],
    }),
    defineUpstream('ledger', {
      baseUrl: 'https://ledger.internal.example/',
      auth: { type: 'bearer', secret: { env: 'HR_KEY' } },
      routes: [{ method: 'GET', path: '/entries', roles: ['finance'] }],
    }),
    // An admin-only upstream with a decoy route (any role may fall into a decoy: its roles are ignored).
    defineUpstream('vault', {
      baseUrl: 'https://vault.internal.example/',
      auth: { type: 'bearer', secret: { env: 'HR_KEY' } },
      rateLimits: [{ by: 'user', limit: 7, windowSeconds: 60 }],
      routes: [
        { method: 'GET', path: '/secrets', roles: ['admin'] },
        { method: 'GET', path: '/backup.sql', decoy: true },
      ],
    }),
  ],
  { HR_KEY: 'k'.repeat(32) },
);
const NO_CALLS = { calls: 0, errors: 0, p50: null, p95: null, units: 0 };
/** Bob called `ledger` once (refused: it is finance's), nothing else. */
const usage = {
  seriesByUpstream: async () => ({
    series: { from: '', to: '', points: [], total: { ...NO_CALLS, calls: 1, errors: 1 } },
    upstreams: new Map([['ledger', { ...NO_CALLS, calls: 1, errors: 1 }]]),
  }),
};
const runtime = { registry, connections: null, usage, userKeys: null } as unknown as Runtime;
const helpers = createPageHelpers(() => runtime);

vi.mock('@/keyward', () => ({ keyward: { getRuntime: () => runtime, upstreamSummaries: (roles?: string[]) => helpers.upstreamSummaries(roles) } }));

const session = (roles: string[]) => ({ userId: 'local:bob', name: null, roles, expiresAt: Date.now() + 60_000 });

describe("pages show a user what the user's roles may call", () => {
  it('upstreamSummaries(roles): upstreams with a route one of the roles may call; without roles (admin pages), all', () => {
    expect(helpers.upstreamSummaries([]).map((u) => u.id)).toEqual(['hr']);
    expect(helpers.upstreamSummaries(['admin']).map((u) => u.id)).toEqual(['hr', 'payroll', 'vault']);
    expect(helpers.upstreamSummaries().map((u) => u.id)).toEqual(['hr', 'payroll', 'ledger', 'vault']);
  });

  it("/usage: no other role's route or its limit; an upstream the user called is listed, one they did not and cannot is not", async () => {
    const { loadMyUsage } = await import('../../../app/usage/usage-data');
    const bob = await loadMyUsage(session([]));
    expect(bob.upstreams.map((u) => u.upstream)).toEqual(['hr', 'ledger']);
    expect(bob.upstreams[0]!.limits.map((limit) => limit.route)).toEqual(['GET /holidays']);
    expect(bob.upstreams[1]).toMatchObject({ upstream: 'ledger', calls: 1, errors: 1, limits: [] });

    const admin = await loadMyUsage(session(['admin']));
    expect(admin.upstreams.map((u) => u.upstream)).toEqual(['hr', 'payroll', 'ledger', 'vault']);
    expect(admin.upstreams[3]!.limits.map((limit) => limit.route)).toEqual([null]); // the upstream's; nothing of the decoy
    expect(admin.upstreams[0]!.limits.map((limit) => limit.route)).toEqual(['GET /holidays', 'DELETE /employees/:id/payroll-override']);
  });
});
