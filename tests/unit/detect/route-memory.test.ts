import { describe, expect, it } from 'vitest';
import { RouteMemory } from '../../../lib/core/detect/baseline';

describe('RouteMemory (the routes a user called, for the "new route mix" rule)', () => {
  it('knows every route it was given, however many, and forgets none', () => {
    const memory = new RouteMemory();
    const routes = Array.from({ length: 1_000 }, (_, i) => `github ${i % 2 ? 'GET' : 'POST'} /repos/:owner/:repo/things/${i}`);
    for (const route of routes) memory.add(route);
    expect(routes.every((route) => memory.add(route))).toBe(true);
  });

  it('takes few routes it never saw for known: under 0.5% after 300 (routes that differ only at their end)', () => {
    const memory = new RouteMemory();
    for (let i = 0; i < 300; i++) memory.add(`openai GET /v1/things/${i}`);
    let known = 0;
    for (let i = 300; i < 20_300; i++) if (memory.has(`openai GET /v1/things/${i}`)) known++;
    expect(known / 20_000).toBeLessThan(0.005);
    expect(memory.has('openai GET /v1/things/299')).toBe(true);
    const fresh = new RouteMemory();
    for (let i = 0; i < 300; i++) fresh.add(`openai GET /v1/things/${i}`);
    expect(fresh.add('openai GET /v1/files')).toBe(false);
  });
});
