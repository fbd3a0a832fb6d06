import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../../lib/core/config/load';
import { DEFAULT_MAX_DECODED_RESPONSE_BYTES } from '../../../lib/core/config/schema';
import { makeUpstream } from '../support';

const MiB = 1024 * 1024;

describe('maxDecodedResponseBytes: the cap on a compressed response once decoded', () => {
  it('defaults to 64 MiB for every route', () => {
    expect(DEFAULT_MAX_DECODED_RESPONSE_BYTES).toBe(64 * MiB);
    const { upstream } = makeUpstream({ routes: [{ method: 'GET', path: '/a' }] });
    expect(upstream.routes[0]!.maxDecodedResponseBytes).toBe(64 * MiB);
  });

  it("is set on the upstream for its routes, and a route's own value wins", () => {
    const { upstream } = makeUpstream({
      maxDecodedResponseBytes: MiB,
      routes: [
        { method: 'GET', path: '/a' },
        { method: 'GET', path: '/big', maxDecodedResponseBytes: 512 * MiB },
      ],
    });
    expect(upstream.routes.map((route) => route.maxDecodedResponseBytes)).toEqual([MiB, 512 * MiB]);
  });

  it.each([0, -1, 1.5, 1024 ** 4 + 1, '1000'])('refuses %j and names the field', (value) => {
    const upstream = { baseUrl: 'https://api.example.com/', auth: { type: 'bearer', secret: { env: 'K' } }, routes: [{ method: 'GET', path: '/' }] };
    expect(() => parseConfig({ upstreams: { a: { ...upstream, maxDecodedResponseBytes: value } } }, 'test.json')).toThrow(
      /upstreams\.a\.maxDecodedResponseBytes/,
    );
    const route = { method: 'GET', path: '/', maxDecodedResponseBytes: value };
    expect(() => parseConfig({ upstreams: { a: { ...upstream, routes: [route] } } }, 'test.json')).toThrow(
      /upstreams\.a\.routes\.0\.maxDecodedResponseBytes/,
    );
  });
});
