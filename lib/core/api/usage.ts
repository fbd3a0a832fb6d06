import { z } from 'zod';
import { PERIODS, PERIOD_MS, type Period } from '../aggregates/model';
import { KeywardError } from '../errors';
import type { Runtime } from '../runtime';
import { USER_ID } from '../session/provider-sessions';
import { requireAdmin } from './admin';
import { apiHandler, json, requireRead } from './guard';

/** Without `from`, a window of this many buckets ending at `to`: the last hour, day, or 30 days. */
const DEFAULT_BUCKETS: Readonly<Record<Period, number>> = { minute: 60, hour: 24, day: 30 };
const MAX_TOP = 100;

const time = (name: string) =>
  z.iso.datetime({ offset: true, error: `${name} must be an ISO 8601 time (e.g. 2026-11-23T20:00:00Z).` });
const name = (param: string) =>
  z
    .string({ error: `${param} is 1 to 256 characters.` })
    .min(1)
    .max(256);

const windowFields = {
  period: z.enum(PERIODS, { error: 'period is minute, hour or day.' }).default('hour'),
  from: time('from').optional(),
  to: time('to').optional(),
  upstream: name('upstream').optional(),
};

/** GET /api/admin/usage: unknown parameters are refused, as the audit API does, so a typo is not ignored. */
const seriesParams = z.strictObject(
  {
    ...windowFields,
    route: name('route').optional(),
    keyVersion: name('keyVersion').optional(),
    // Any user id the other admin APIs take (an OIDC sub is up to 255 printable ASCII characters).
    user: z.string({ error: 'user is 1 to 300 printable ASCII characters.' }).regex(USER_ID, 'user is 1 to 300 printable ASCII characters.').optional(),
  },
  { error: 'Unknown parameter; use period, from, to, upstream, route, keyVersion, user.' },
);

const topParams = z.strictObject(
  {
    ...windowFields,
    by: z.enum(['user', 'keyVersion', 'route', 'upstream'], { error: 'by is user, keyVersion, route or upstream.' }),
    limit: z.coerce
      .number({ error: `limit is 1 to ${MAX_TOP}.` })
      .int({ error: `limit is 1 to ${MAX_TOP}.` })
      .min(1, { error: `limit is 1 to ${MAX_TOP}.` })
      .max(MAX_TOP, { error: `limit is 1 to ${MAX_TOP}.` })
      .default(10),
  },
  { error: 'Unknown parameter; use by, period, from, to, upstream, limit.' },
);

/**
 * The query string as an object. A repeated parameter is refused rather than one copy silently chosen.
 * Messages are this module's fixed strings (zod's own name no input value), never the client's values.
 */
function parseParams<T extends z.ZodType>(request: Request, schema: T): z.output<T> {
  const params = new URL(request.url).searchParams;
  // No prototype: a parameter named `__proto__` is a key like any other (and refused as unknown), not a setter.
  const object: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const [key, value] of params) {
    if (Object.hasOwn(object, key)) throw new KeywardError('bad_request', { message: 'Give each parameter once.' });
    object[key] = value;
  }
  const result = schema.safeParse(object);
  if (!result.success) {
    const messages = [...new Set(result.error.issues.map((issue) => issue.message))];
    throw new KeywardError('bad_request', { message: messages.join(' ') });
  }
  return result.data;
}

function window(params: { period: Period; from?: string; to?: string }, now: number) {
  const toMs = params.to === undefined ? now : Date.parse(params.to);
  const fromMs =
    params.from === undefined
      ? toMs - (DEFAULT_BUCKETS[params.period] - 1) * PERIOD_MS[params.period]
      : Date.parse(params.from);
  return { period: params.period, fromMs, toMs };
}

/**
 * GET /api/admin/usage?period=minute|hour|day&from&to&upstream&route&keyVersion&user: one point per bucket of
 * the window (zeros included), from the usage aggregates, never the audit log.
 */
export function handleUsage(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    requireRead(request);
    await requireAdmin(request, runtime);
    const params = parseParams(request, seriesParams);
    const { upstream, route, keyVersion, user } = params;
    return json(await runtime.usage.series({ ...window(params, Date.now()), upstream, route, keyVersion, user }));
  });
}

/** GET /api/admin/usage/top?by=user|keyVersion|route|upstream&period&from&to&upstream&limit: the busiest, by calls. */
export function handleUsageTop(request: Request, runtime: Runtime): Promise<Response> {
  return apiHandler(runtime, async () => {
    requireRead(request);
    await requireAdmin(request, runtime);
    const params = parseParams(request, topParams);
    const query = { ...window(params, Date.now()), by: params.by, limit: params.limit, upstream: params.upstream };
    const rows = await runtime.usage.top(query);
    return json({
      by: params.by,
      period: params.period,
      from: new Date(query.fromMs).toISOString(),
      to: new Date(query.toMs).toISOString(),
      rows,
    });
  });
}
