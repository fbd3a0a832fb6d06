import { clientIp } from '../client/ip';
import { raiseDecoyHit } from '../detect/decoys';
import { capPerWindow } from '../store/window-cap';
import { KeywardError, errorResponse } from '../errors';
import type { Runtime } from '../runtime';
import type { Session } from '../session/session';
import { apiHandler, json, readJsonObject, requireSession } from './guard';

const KEY_METHODS = new Set(['GET', 'HEAD', 'PUT', 'DELETE']);
/**
 * Key changes (PUT and DELETE, all upstreams together) a user may make per KEY_WRITES_WINDOW_MS. Each one is an
 * audit record (`user_key.put`, `user_key.delete`), which an admin reads among the admin actions: without a bound,
 * one session could write thousands a minute and bury them. Far above what a person changing a key does.
 */
export const KEY_WRITES_MAX = 30;
export const KEY_WRITES_WINDOW_MS = 10 * 60_000;

/**
 * /api/keys/<upstream>: the caller's own key for an upstream that takes one (`"secret": {"user": "key"}`).
 * PUT stores it (write-only, sealed at rest), GET shows only its fingerprint, last 4 characters and dates,
 * DELETE removes it. A key is only ever used for its owner's calls.
 */
export function handleUserKey(request: Request, upstreamId: string, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    // The method first, as the proxy matches its route before the session: 405 whatever the upstream.
    if (!KEY_METHODS.has(request.method)) throw new KeywardError('method_not_allowed', { headers: { allow: 'GET, HEAD, PUT, DELETE' } });
    const session = await requireSession(request, runtime);
    const upstream = runtime.registry.get(upstreamId);
    if (!upstream) throw new KeywardError('upstream_not_found');
    if (upstream.credential.source !== 'user-key' || !runtime.userKeys) {
      throw new KeywardError('route_not_found', { message: 'This upstream does not take keys from its users.' });
    }
    const keys = runtime.userKeys;
    switch (request.method) {
      case 'GET':
      case 'HEAD': {
        const info = await keys.describe(upstream.id, session);
        if (!info) throw new KeywardError('credential_missing', { message: 'You have not stored a key for this upstream.' });
        return json(info);
      }
      case 'PUT': {
        const body = await readJsonObject(request);
        const unknown = Object.keys(body).filter((name) => name !== 'key');
        if (unknown.length > 0 || typeof body.key !== 'string') {
          throw new KeywardError('bad_request', { message: 'Send {"key": "<your key>"} and nothing else.' });
        }
        const decoyRefusal = refuseDecoyKey(request, runtime, session, upstream.id, body.key);
        if (decoyRefusal) return decoyRefusal;
        await capKeyWrites(runtime, session);
        const info = await keys.put(upstream.id, session, body.key);
        runtime.logger.info({ userId: session.userId, upstream: upstream.id, keyFingerprint: info.fingerprint }, 'user key stored');
        await runtime.audit.recordAdmin({ action: 'user_key.put', actor: session.userId, upstream: upstream.id, fingerprint: info.fingerprint, outcome: 'stored' });
        return json(info, 201);
      }
      case 'DELETE': {
        await capKeyWrites(runtime, session);
        const deleted = await keys.delete(upstream.id, session.userId);
        if (!deleted) throw new KeywardError('credential_missing', { message: 'You have not stored a key for this upstream.' });
        runtime.logger.info({ userId: session.userId, upstream: upstream.id }, 'user key deleted');
        await runtime.audit.recordAdmin({ action: 'user_key.delete', actor: session.userId, upstream: upstream.id, outcome: 'deleted' });
        return new Response(null, { status: 204, headers: { 'cache-control': 'private, no-store' } });
      }
      default:
        throw new Error(`unreachable: ${request.method}`);
    }
  });
}

/** 429 `rate_limited` past KEY_WRITES_MAX key changes in the window (counted in the shared store). */
function capKeyWrites(runtime: Runtime, session: Session): Promise<void> {
  return capPerWindow(runtime.store, `ukeywrites:${session.userId}`, {
    max: KEY_WRITES_MAX,
    windowMs: KEY_WRITES_WINDOW_MS,
    message: 'Too many key changes in the last minutes; try again later.',
  });
}

/**
 * Storing a decoy (README "Decoy keys") as one's own key is a decoy hit: only someone who found it where it was
 * planted has it. Not stored; refused as unauthenticated (as the proxy refuses a decoy), and the hit raised with
 * the caller's session. Null when the key is no decoy.
 */
function refuseDecoyKey(request: Request, runtime: Runtime, session: Session, upstream: string, key: string): Response | null {
  const decoyId = runtime.decoys?.find(key);
  if (!decoyId) return null;
  const requestId = crypto.randomUUID();
  raiseDecoyHit(runtime, {
    kind: 'credential',
    decoyId,
    where: 'own-key',
    userId: session.userId,
    sessionId: session.sessionId,
    ip: clientIp(request.headers, runtime.trustedProxyHops ?? 1),
    upstream,
    route: null,
    requestId,
  });
  return errorResponse(new KeywardError('unauthenticated'), requestId);
}
