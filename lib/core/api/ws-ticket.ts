import { KeywardError } from '../errors';
import { authorize } from '../policy/authorize';
import { matchRoute } from '../route/match';
import { assertSafeSegments, decodeSegment } from '../route/segments';
import type { Runtime } from '../runtime';
import { WsTickets } from '../ws/tickets';
import { apiHandler, json, readJsonObject, requireSession } from './guard';

/**
 * POST /api/session/ws-ticket `{"upstream": "openai", "path": "/realtime"}` → 200 `{ticket, expiresIn}`: a
 * single-use ticket for one WebSocket upgrade on `/api/proxy/<upstream><path>?ticket=…` within 30 s
 * (lib/core/ws/tickets.ts), for clients that cannot send their session on a WebSocket handshake (a native
 * app's bearer token). The caller's session is checked as for any call (cookie sessions: CSRF header and
 * Origin); the route must declare `websocket: true` and the session must be allowed to call it. The upgrade
 * re-runs every check. The ticket is never logged.
 */
export function handleWsTicket(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (request.method !== 'POST') throw new KeywardError('method_not_allowed', { headers: { allow: 'POST' } });
    const session = await requireSession(request, runtime);
    const body = await readJsonObject(request, 4096);
    const { upstream: upstreamId, path } = body;
    if (typeof upstreamId !== 'string' || typeof path !== 'string' || !path.startsWith('/') || path.length > 2048) {
      throw new KeywardError('bad_request', {
        message: 'Send {"upstream": "<id>", "path": "/<path under the upstream>"}.',
      });
    }
    const upstream = runtime.registry.get(upstreamId);
    if (!upstream) throw new KeywardError('upstream_not_found');
    const segments = path === '/' ? [] : path.slice(1).split('/').map(decodeSegment);
    assertSafeSegments(segments);
    const { route, params } = matchRoute(upstream, 'GET', segments);
    if (!route.websocket)
      throw new KeywardError('bad_request', { message: 'This route does not accept WebSocket upgrades.' });
    authorize(route, params, session);
    return json(await new WsTickets(runtime.store).issue(session, { upstream: upstreamId, path: segments }));
  });
}
