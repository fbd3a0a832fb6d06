import { describe, expect, it } from 'vitest';
import { BURST_USER, DEMO_CALLERS, DEMO_HOURS, MAX_DEMO_CALLS, planDemoTraffic } from '../../../demo/traffic';
import { DEFAULT_DETECTOR } from '../../../lib/core/detect/config';

const MINUTE_MS = 60_000;
const NOW = Date.parse('2026-03-02T15:27:41.000Z');

describe('planDemoTraffic (npm run dev demo traffic)', () => {
  const plan = planDemoTraffic(NOW);

  it('is bounded, oldest first, and inside the last hours', () => {
    expect(plan.length).toBeGreaterThan(200);
    expect(plan.length).toBeLessThanOrEqual(MAX_DEMO_CALLS);
    for (let i = 1; i < plan.length; i++) expect(plan[i]!.at).toBeGreaterThanOrEqual(plan[i - 1]!.at);
    expect(plan[0]!.at).toBeGreaterThanOrEqual(NOW - DEMO_HOURS * 3_600_000);
    expect(plan.at(-1)!.at).toBeLessThan(NOW);
    // Every hour of the window has calls: the chart is not one bar.
    const hours = new Set(plan.map((call) => Math.floor((NOW - call.at) / 3_600_000)));
    expect(hours.size).toBe(DEMO_HOURS);
  });

  it('keeps each user under the demo upstream’s rate limit (120 a minute), since all calls are made within seconds', () => {
    for (const { userId } of DEMO_CALLERS) {
      expect(plan.filter((call) => call.userId === userId).length).toBeLessThan(120);
    }
  });

  it('puts a burst above the detector’s default floor inside one minute, after every ordinary call', () => {
    const lastMinute = Math.floor(NOW / MINUTE_MS) - 1;
    const burst = plan.filter((call) => Math.floor(call.at / MINUTE_MS) === lastMinute);
    expect(burst.every((call) => call.userId === BURST_USER)).toBe(true);
    expect(burst.length).toBeGreaterThan(DEFAULT_DETECTOR.calls.minPerMinute + DEFAULT_DETECTOR.throttle.limit);
    expect(plan.slice(-burst.length)).toEqual(burst);
  });

  it('calls only the demo upstream’s declared routes, and is the same plan for the same time', () => {
    for (const call of plan) {
      expect(`${call.method} /${call.path[0]}`).toMatch(/^(GET \/hello|GET \/items|GET \/leaky|GET \/slow|POST \/echo)$/);
    }
    expect(plan.filter((call) => call.path[0] === 'leaky').length).toBe(2);
    // The timeouts (1.5 s each) are planned for one instant, so they are made together.
    expect(new Set(plan.filter((call) => call.path[0] === 'slow').map((call) => call.at)).size).toBe(1);
    expect(planDemoTraffic(NOW)).toEqual(plan);
  });
});
