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

function configError(list: UpstreamInput['routes'], extra: Partial<UpstreamInput> = {}): string {
  const error = thrown(() => routes(list, extra));
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
    expect(socket!.websocket).toEqual({ maxMessageBytes: 1024 * 1024, idleTimeoutMs: 60_000, subprotocols: new Set() });
    expect(tuned!.websocket).toEqual({ maxMessageBytes: 4096, idleTimeoutMs: 5_000, subprotocols: new Set() });
    const [inherited] = routes([{ method: 'GET', path: '/realtime', websocket: true }], {
      maxMessageBytes: 65536,
      idleTimeoutMs: 300_000,
    });
    expect(inherited!.websocket).toEqual({ maxMessageBytes: 65536, idleTimeoutMs: 300_000, subprotocols: new Set() });
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

  it("accept the subprotocols listed on the route, or the upstream's for its WebSocket routes; none by default", () => {
    const [inherited, own, none] = routes(
      [
        { method: 'GET', path: '/realtime', websocket: true },
        { method: 'GET', path: '/graphql', websocket: true, subprotocols: ['graphql-transport-ws'] },
        { method: 'GET', path: '/closed', websocket: true, subprotocols: [] },
      ],
      { subprotocols: ['realtime'] },
    );
    expect(inherited!.websocket!.subprotocols).toEqual(new Set(['realtime']));
    expect(own!.websocket!.subprotocols).toEqual(new Set(['graphql-transport-ws']));
    expect(none!.websocket!.subprotocols).toEqual(new Set());
  });

  it('refuse a subprotocol list on an HTTP route, a name that is not a token, one listed twice, and one that carries a credential', () => {
    const socket = { method: 'GET', path: '/realtime', websocket: true } as const;
    expect(configError([{ method: 'GET', path: '/realtime', subprotocols: ['realtime'] }])).toContain(
      'upstreams.openai.routes.0.subprotocols: applies to WebSocket routes only ("websocket": true)',
    );
    expect(configError([{ ...socket, subprotocols: ['real time'] }])).toContain(
      'upstreams.openai.routes.0.subprotocols.0: must be a WebSocket subprotocol',
    );
    expect(configError([{ ...socket, subprotocols: ['realtime', 'chat', 'realtime'] }])).toContain(
      'upstreams.openai.routes.0.subprotocols.2: "realtime" is listed twice',
    );
    for (const name of ['openai-insecure-api-key.sk-test', 'OpenAI-Insecure-API-Key.x', 'base64url.bearer.authorization.k8s.io.dG9r']) {
      expect(configError([{ ...socket, subprotocols: ['realtime', name] }])).toContain(
        'upstreams.openai.routes.0.subprotocols.1: carries a credential',
      );
      expect(configError([socket], { subprotocols: [name] })).toContain('upstreams.openai.subprotocols.0: carries a credential');
    }
  });
});
