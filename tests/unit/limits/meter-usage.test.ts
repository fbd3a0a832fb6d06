import { describe, expect, it } from 'vitest';
import { Limits, type LimitSubject } from '../../../lib/core/limits/limits';
import { compileRouteLimits } from '../../../lib/core/limits/rules';
import { createLogger } from '../../../lib/core/log/logger';
import { MemoryStore } from '../../../lib/store/memory';
import { StoreUnavailableError } from '../../../lib/store/types';
import { expectKeywardError, rejected } from '../support';

/**
 * Limits.meterUsage: the admin pages' read of quotas and budgets. It must read the very counters `reserve`
 * charges (per user, per upstream), in the current period, without charging anything itself.
 */
const NOW = Date.UTC(2027, 5, 15, 20, 0, 0);

function setup(now = () => NOW) {
  const store = new MemoryStore(now);
  const limits = new Limits(store, createLogger({ level: 'silent' }), now);
  const rules = compileRouteLimits(
    'ai',
    'POST /chat',
    {
      quotas: [{ by: 'user', requests: 100, period: 'day' }],
      budgets: [
        { by: 'upstream', units: 5_000, period: 'month' },
        { by: 'credential', units: 900, period: 'day' },
      ],
    },
    {},
    'upstreams.ai.routes.0',
  );
  return { store, limits, rules };
}

const who = (userId: string): LimitSubject => ({ upstream: 'ai', userId, roles: ['user'], fingerprint: 'fp-a', ip: null });

describe('Limits.meterUsage', () => {
  it('reads what reserve charged, per user and for the whole upstream, and charges nothing', async () => {
    let now = NOW;
    const { limits, rules } = setup(() => now);
    for (let i = 0; i < 3; i++) await (await limits.reserve(rules, who('alice'), 40, [])).settle({ forwarded: true, usage: 40 });
    await (await limits.reserve(rules, who('bob'), 25, [])).settle({ forwarded: true, usage: 25 });

    const [quota, upstreamBudget, keyBudget] = rules.meters;
    const queries = [quota!, upstreamBudget!, keyBudget!].flatMap((rule) => ['alice', 'bob', 'carol'].map((userId) => ({ rule, userId })));
    const read = async () => (await limits.meterUsage(queries)).map((reading) => reading.used);
    expect(await read()).toEqual([3, 1, 0, 145, 145, 145, null, null, null]);
    // Reading twice changes nothing.
    expect(await read()).toEqual([3, 1, 0, 145, 145, 145, null, null, null]);
    const [first] = await limits.meterUsage([{ rule: quota!, userId: 'alice' }]);
    expect(first!.resetsAt).toBe(Date.UTC(2027, 5, 16));

    // The next day is a new period for the daily quota; the monthly budget still holds this month's units.
    now = Date.UTC(2027, 5, 16, 0, 0, 1);
    expect(await read()).toEqual([0, 0, 0, 145, 145, 145, null, null, null]);
  });

  it('fails closed (503) when the store cannot be read', async () => {
    const { store, limits, rules } = setup();
    store.getMany = async () => {
      throw new StoreUnavailableError('memory');
    };
    expectKeywardError(await rejected(limits.meterUsage([{ rule: rules.meters[0]!, userId: 'alice' }])), 'store_unavailable');
  });
});
