import { describe, expect, it } from 'vitest';
import { ConfigError, defineUpstream } from '../../../lib/core/config/load';
import type { UpstreamInput } from '../../../lib/core/config/schema';
import { buildRegistry } from '../../../lib/core/upstream/registry';
import { randomSecret } from '../../fixtures/secrets';
import { thrown } from '../support';

const env = { RT_KEY: randomSecret('rt') };
const auth: UpstreamInput['auth'] = { type: 'bearer', secret: { env: 'RT_KEY' } };

function routes(list: UpstreamInput['routes'], extra: Partial<UpstreamInput> = {}) {
  const registry = buildRegistry(
    [defineUpstream('openai', { baseUrl: 'https://api.openai.com/v1/', auth, routes: list, ...extra })],
    env,
  );
  return registry.get('openai')!.routes;
}

function configError(list: UpstreamInput['routes']): string {
  const error = thrown(() => routes(list));
  expect(error).toBeInstanceOf(ConfigError);
  return (error as Error).message;
}

describe('websocket routes in the config', () => {
  it("compile with the upstream's message cap and idle timeout (1 MiB, 60 s by default), or the route's own", () => {
    const [plain, socket, tuned] = routes([
      { method: 'GET', path: '/models' },
      { method: 'GET', path: '/realtime', websocket: true },
      { method: 'GET', path: '/tuned', websocket: true, maxMessageBytes: 4096, idleTimeoutMs: 5_000 },
    ]);
    expect(plain!.websocket).toBeNull();
    expect(socket!.websocket).toEqual({ maxMessageBytes: 1024 * 1024, idleTimeoutMs: 60_000 });
    expect(tuned!.websocket).toEqual({ maxMessageBytes: 4096, idleTimeoutMs: 5_000 });
    const [inherited] = routes([{ method: 'GET', path: '/realtime', websocket: true }], {
      maxMessageBytes: 65536,
      idleTimeoutMs: 300_000,
    });
    expect(inherited!.websocket).toEqual({ maxMessageBytes: 65536, idleTimeoutMs: 300_000 });
  });

  it('are GET routes, and the WebSocket settings need websocket: true', () => {
    expect(configError([{ method: 'POST', path: '/realtime', websocket: true }])).toContain(
      'upstreams.openai.routes.0.websocket: a WebSocket upgrade is a GET request',
    );
    expect(configError([{ method: 'GET', path: '/realtime', maxMessageBytes: 10 }])).toContain(
      'upstreams.openai.routes.0.maxMessageBytes',
    );
    expect(configError([{ method: 'GET', path: '/realtime', websocket: true, idleTimeoutMs: 10 }])).toContain(
      'upstreams.openai.routes.0.idleTimeoutMs',
    );
  });
});
