import { z } from 'zod';
import type { AuditFilter, AuditRecord } from '../audit/audit';
import { KeywardError } from '../errors';
import { keyAdmin } from '../keys/admin';
import { UNKNOWN_UPSTREAM } from '../observe/metrics';
import type { Runtime } from '../runtime';
import { USER_ID } from '../session/provider-sessions';
import type { Session } from '../session/session';
import { apiHandler, json, readJsonObject, requireRead, requireSession } from './guard';

/** Admin routes: a session with the `admin` role (checked here, in the handler), CSRF rules as everywhere. */
export async function requireAdmin(request: Request, runtime: Runtime): Promise<Session> {
  const session = await requireSession(request, runtime);
  if (!session.roles.includes('admin')) throw new KeywardError('forbidden');
  return session;
}

function onlyFields(body: Record<string, unknown>, allowed: readonly string[]): void {
  const unknown = Object.keys(body).filter((name) => !allowed.includes(name));
  if (unknown.length > 0) throw new KeywardError('bad_request', { message: `Only these fields are accepted: ${allowed.join(', ')}.` });
}

/** GET /api/admin/keys: every service key's versions (fingerprints, states, expiry warnings) and rotations. */
export function handleKeyList(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    requireRead(request);
    await requireAdmin(request, runtime);
    return json({ upstreams: await runtime.keyRings.list() });
  });
}

/**
 * POST /api/admin/keys/<upstream>/<action>:
 *   versions  {"key"}                                   add a managed version (state next)
 *   rotate    {"key", "rotationId"?, "skipCanary"?}     add, canary, switch; idempotent per rotation id
 *   rollback  {"rotationId"}                            undo a switch
 * Key values are write-only: responses name versions by fingerprint.
 */
export function handleKeyAction(request: Request, upstreamId: string, action: string, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (request.method !== 'POST') throw new KeywardError('method_not_allowed', { headers: { allow: 'POST' } });
    const session = await requireAdmin(request, runtime);
    if (!['versions', 'rotate', 'rollback'].includes(action)) throw new KeywardError('route_not_found', { message: 'A key action is versions, rotate or rollback.' });
    const body = await readJsonObject(request);
    const keys = keyAdmin(runtime.keyRings, runtime.audit, session.userId);
    switch (action) {
      case 'versions': {
        onlyFields(body, ['key']);
        if (typeof body.key !== 'string') throw new KeywardError('bad_request', { message: 'Send {"key": "<the new key>"}.' });
        return json({ upstream: upstreamId, version: await keys.add(upstreamId, body.key) }, 201);
      }
      case 'rotate': {
        onlyFields(body, ['key', 'rotationId', 'skipCanary']);
        if (typeof body.key !== 'string') throw new KeywardError('bad_request', { message: 'Send {"key": "<the new key>"}.' });
        if (body.rotationId !== undefined && typeof body.rotationId !== 'string') throw new KeywardError('bad_request', { message: 'rotationId is a string.' });
        if (body.skipCanary !== undefined && typeof body.skipCanary !== 'boolean') throw new KeywardError('bad_request', { message: 'skipCanary is a boolean.' });
        const rotation = await keys.rotate(upstreamId, body.key, { rotationId: body.rotationId, skipCanary: body.skipCanary });
        return json({ rotation }, rotation.state === 'canary_failed' ? 409 : 200);
      }
      case 'rollback': {
        onlyFields(body, ['rotationId']);
        if (typeof body.rotationId !== 'string') throw new KeywardError('bad_request', { message: 'Send {"rotationId": "…"}.' });
        return json({ rotation: await keys.rollback(body.rotationId, upstreamId) });
      }
      default:
        throw new KeywardError('route_not_found', { message: 'A key action is versions, rotate or rollback.' });
    }
  });
}

/** POST /api/admin/keys/revoke {"fingerprint"}: every instance stops using that version on its next request. */
export function handleKeyRevoke(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    if (request.method !== 'POST') throw new KeywardError('method_not_allowed', { headers: { allow: 'POST' } });
    const session = await requireAdmin(request, runtime);
    const body = await readJsonObject(request);
    onlyFields(body, ['fingerprint']);
    if (typeof body.fingerprint !== 'string') throw new KeywardError('bad_request', { message: 'Send {"fingerprint": "<12 hex digits>"}.' });
    const revoked = await keyAdmin(runtime.keyRings, runtime.audit, session.userId).revoke(body.fingerprint);
    return json({ fingerprint: body.fingerprint, revoked });
  });
}

const MAX_PAGE = 1000;

/**
 * GET /api/admin/audit: filtered records, newest first, with a cursor (`?cursor=`). Filters: type, upstream,
 * userId, action, outcome, fingerprint, since, until (ISO time), limit (≤ 1000). `format=jsonl` exports every
 * matching record (oldest first) as JSON Lines, streamed a page at a time (no `limit` or `cursor` then).
 */
export function handleAudit(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    requireRead(request);
    await requireAdmin(request, runtime);
    const params = new URL(request.url).searchParams;
    const filter = auditFilter(params);
    const format = params.get('format');
    if (format !== null && format !== 'jsonl' && format !== 'json') throw new KeywardError('bad_request', { message: 'format is json or jsonl.' });
    if (format === 'jsonl') {
      if (params.has('limit') || params.has('cursor')) throw new KeywardError('bad_request', { message: 'An export has every match: leave out limit and cursor.' });
      return await exportJsonl(runtime, filter);
    }
    const limit = params.has('limit') ? Number(params.get('limit')) : 100;
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE) throw new KeywardError('bad_request', { message: `limit is 1 to ${MAX_PAGE}.` });
    // A cursor the stores could not have made would be read as none, and the pages would start over unnoticed.
    const given = params.get('cursor') ?? undefined;
    if (given !== undefined && !runtime.audit.isCursor(given)) throw new KeywardError('bad_request', { message: 'cursor is not valid: pass back the one a page gave.' });
    const { records, cursor } = await runtime.audit.query(filter, { limit, cursor: given, order: 'desc' });
    return json({ records, cursor });
  });
}

/** A date and time with `Z` or an offset, or a date alone (its midnight UTC). */
const ISO_TIME = z.union([z.iso.datetime({ offset: true }), z.iso.date()]);

const FILTERS = ['type', 'upstream', 'userId', 'action', 'outcome', 'fingerprint', 'since', 'until', 'limit', 'cursor', 'format'];

export function auditFilter(params: URLSearchParams): AuditFilter {
  for (const name of params.keys()) {
    if (!FILTERS.includes(name)) throw new KeywardError('bad_request', { message: `Unknown filter; use ${FILTERS.join(', ')}.` });
    // Which copy would win is not for a server to guess (the usage API refuses them too).
    if (params.getAll(name).length > 1) throw new KeywardError('bad_request', { message: `${name} is given more than once.` });
  }
  const text = (name: string, pattern = /^[A-Za-z0-9._:@|/-]{1,256}$/) => {
    const value = params.get(name);
    if (value !== null && !pattern.test(value)) throw new KeywardError('bad_request', { message: `${name} is not valid.` });
    return value ?? undefined;
  };
  const time = (name: string) => {
    const value = params.get(name);
    if (value === null) return undefined;
    // ISO 8601 as the usage API reads it (or a date alone), not whatever Date.parse makes of other text.
    if (!ISO_TIME.safeParse(value).success) throw new KeywardError('bad_request', { message: `${name} must be an ISO 8601 time (e.g. 2026-11-23T20:00:00Z).` });
    return Date.parse(value);
  };
  const type = text('type');
  if (type !== undefined && type !== 'call' && type !== 'admin') throw new KeywardError('bad_request', { message: 'type is call or admin.' });
  return {
    type: type as AuditRecord['type'] | undefined,
    // A call to an upstream that is not configured is recorded as "(unknown)" (never the name it was sent with).
    upstream: params.get('upstream') === UNKNOWN_UPSTREAM ? UNKNOWN_UPSTREAM : text('upstream'),
    userId: text('userId', USER_ID),
    action: text('action'),
    outcome: text('outcome'),
    fingerprint: text('fingerprint'),
    sinceMs: time('since'),
    untilMs: time('until'),
  };
}

async function exportJsonl(runtime: Runtime, given: AuditFilter): Promise<Response> {
  const encoder = new TextEncoder();
  // Up to the moment it starts: on a busy log, an export that followed what is written meanwhile could not end.
  const filter = { ...given, untilMs: Math.min(given.untilMs ?? Infinity, Date.now()) };
  // The first page is read before answering, so a store that is down is a 503, not a 200 with a broken body.
  let page = await runtime.audit.query(filter, { limit: MAX_PAGE, order: 'asc' });
  // Memory stays one page whatever the trail's size; a download the admin cancels stops the reading.
  const cancelled = new AbortController();
  const stream = new ReadableStream<Uint8Array>({
    // Each pull sends something or ends the body: a pull that returned with nothing enqueued would never be
    // called again, and a page can hold no match (a selective filter over a stretch of the log that has none).
    async pull(controller) {
      try {
        for (;;) {
          const { records, cursor } = page;
          if (records.length > 0) controller.enqueue(encoder.encode(records.map((r) => JSON.stringify(r)).join('\n') + '\n'));
          if (cursor === null) {
            controller.close();
            return;
          }
          page = await runtime.audit.query(filter, { limit: MAX_PAGE, cursor, order: 'asc', signal: cancelled.signal });
          if (cancelled.signal.aborted || records.length > 0) return;
        }
      } catch {
        if (!cancelled.signal.aborted) controller.error(new KeywardError('store_unavailable'));
      }
    },
    cancel() {
      cancelled.abort();
    },
  });
  return new Response(stream, {
    headers: {
      'content-type': 'application/x-ndjson; charset=utf-8',
      'content-disposition': 'attachment; filename="keyward-audit.jsonl"',
      'cache-control': 'private, no-store',
      'x-content-type-options': 'nosniff',
    },
  });
}
