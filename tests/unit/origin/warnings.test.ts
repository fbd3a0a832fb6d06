import { describe, expect, it } from 'vitest';
import { createOriginPolicy } from '../../../lib/core/origin/public-origin';

function policy(settings: Parameters<typeof createOriginPolicy>[0]) {
  const warned: string[] = [];
  let now = 0;
  const origins = createOriginPolicy(
    settings,
    { warn: (_fields: object, message: string) => warned.push(message) } as never,
    () => now,
  );
  return { origins, warned, advance: (ms: number) => (now += ms) };
}

const behindProxy = (host: string, headers: Record<string, string> = {}) =>
  new Request(`http://localhost:3000/api/proxy/echo/items`, { method: 'POST', headers: { host, ...headers } });

describe('public-origin warnings', () => {
  it('warn again for the same pair only after 10 minutes', () => {
    const { origins, warned, advance } = policy({ trustHost: true });
    const request = behindProxy('app.example.com');
    expect(origins.allows('https://app.example.com', request)).toBe(false);
    expect(origins.allows('https://app.example.com', request)).toBe(false);
    expect(warned).toHaveLength(1);
    advance(9 * 60_000);
    origins.allows('https://app.example.com', request);
    expect(warned).toHaveLength(1);
    advance(60_000);
    origins.allows('https://app.example.com', request);
    expect(warned).toHaveLength(2);
  });

  it('under AUTH_URL, an Origin on the same name but another scheme or port names AUTH_URL as the thing to fix', () => {
    const { origins, warned } = policy({ trustHost: false, authUrl: 'https://app.example.com' });
    expect(origins.allows('https://app.example.com:8443', behindProxy('app.example.com:8443'))).toBe(false);
    expect(warned).toEqual([expect.stringContaining('set AUTH_URL to the origin in the browser')]);
  });

  it('the plain-HTTP origin warning is for production only, and never for a loopback name', () => {
    const dev = policy({ trustHost: true });
    dev.origins.publicOrigin(behindProxy('app.example.com'));
    expect(dev.warned).toEqual([]);
    const prod = policy({ trustHost: true, production: true });
    prod.origins.publicOrigin(behindProxy('127.0.0.1:3000'));
    prod.origins.publicOrigin(behindProxy('localhost:3000'));
    expect(prod.warned).toEqual([]);
    prod.origins.publicOrigin(behindProxy('app.example.com'));
    prod.origins.publicOrigin(behindProxy('app.example.com', { 'x-forwarded-proto': 'https' }));
    expect(prod.warned).toEqual([expect.stringContaining('http://app.example.com (plain HTTP)')]);
  });
});
