import 'server-only';
import { auditFilter } from '@/lib/core/api/admin';
import { AUDIT_CURSOR, type AuditRecord } from '@/lib/core/audit/audit';
import { KeywardError } from '@/lib/core/errors';
import { keyward } from '@/keyward';

/**
 * What the Audit page reads: the audit trail through AuditLog.query, with the filters GET /api/admin/audit
 * takes, validated by the same function (auditFilter), so a URL means the same here and in the API.
 */

export const PAGE_SIZES = [25, 50, 100] as const;

/** The filters of the page's GET form, by the API's parameter names. */
export const FILTER_NAMES = ['type', 'upstream', 'userId', 'action', 'outcome', 'fingerprint', 'since', 'until'] as const;
export type FilterName = (typeof FILTER_NAMES)[number];
export type FilterValues = Partial<Record<FilterName, string>>;

/** A datetime-local field's value: a UTC time without its zone, and without its seconds when they are :00. */
const LOCAL_TIME = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(:\d{2}(\.\d{1,3})?)?$/;

export interface AuditPageQuery {
  readonly filters: FilterValues;
  readonly limit: number;
  /** Show the records older than this id. */
  readonly older: string | null;
  /** Show the records newer than this id. */
  readonly newer: string | null;
  /** A parameter the URL gives more than once: refused as GET /api/admin/audit refuses it, not one copy chosen. */
  readonly repeated: string | null;
}

export type AuditPage =
  | { readonly kind: 'records'; readonly records: AuditRecord[]; readonly olderCursor: string | null; readonly newerCursor: string | null }
  | { readonly kind: 'invalid'; readonly message: string }
  | { readonly kind: 'unavailable' };

function one(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The page's query from the URL: empty fields dropped (a GET form sends every field), paging cursors checked. */
export function readQuery(params: Record<string, string | string[] | undefined>): AuditPageQuery {
  const filters: FilterValues = {};
  for (const name of FILTER_NAMES) {
    const value = one(params[name])?.trim();
    if (value) filters[name] = value;
  }
  const limit = Number(one(params.limit));
  const cursor = (name: string) => {
    const value = one(params[name]);
    return value !== undefined && AUDIT_CURSOR.test(value) ? value : null;
  };
  const older = cursor('older');
  const repeated = [...FILTER_NAMES, 'limit', 'older', 'newer'].find((name) => Array.isArray(params[name]) && params[name].length > 1) ?? null;
  return { filters, limit: (PAGE_SIZES as readonly number[]).includes(limit) ? limit : PAGE_SIZES[0], older, newer: older === null ? cursor('newer') : null, repeated };
}

/**
 * The filters as GET /api/admin/audit takes them: times from the form read as UTC, a whole minute given its
 * `:00` (the API takes ISO 8601 times with seconds, as its own clients send them).
 */
export function apiParams(filters: FilterValues): URLSearchParams {
  const params = new URLSearchParams();
  for (const name of FILTER_NAMES) {
    const value = filters[name];
    if (value === undefined) continue;
    const local = name === 'since' || name === 'until' ? LOCAL_TIME.exec(value) : null;
    params.set(name, local ? `${local[1]}${local[2] ?? ':00'}Z` : value);
  }
  return params;
}

/** One page of matching records, newest first. */
export async function loadAuditPage(query: AuditPageQuery): Promise<AuditPage> {
  // A shared URL means one view: the API answers a parameter given twice 400, and so does the page.
  if (query.repeated !== null) return { kind: 'invalid', message: `${query.repeated} is given more than once.` };
  let filter;
  try {
    filter = auditFilter(apiParams(query.filters));
  } catch (error) {
    if (error instanceof KeywardError) return { kind: 'invalid', message: error.message };
    throw error;
  }
  const audit = keyward.getRuntime().audit;
  // A cursor the store could not have made (an edited link) would be read as none: the newest page, shown as older.
  if ([query.older, query.newer].some((cursor) => cursor !== null && !audit.isCursor(cursor))) {
    return { kind: 'invalid', message: 'This page link is not valid: start again from the newest records.' };
  }
  try {
    if (query.newer !== null) {
      // The records just after the cursor, oldest first, shown newest first. None left: the newest page.
      const page = await audit.query(filter, { limit: query.limit, cursor: query.newer, order: 'asc' });
      if (page.cursor !== null && page.records.length > 0) {
        const records = page.records.reverse();
        return { kind: 'records', records, olderCursor: records.at(-1)!.id ?? null, newerCursor: records[0]!.id ?? null };
      }
    }
    const page = await audit.query(filter, { limit: query.limit, cursor: query.older ?? undefined, order: 'desc' });
    return {
      kind: 'records',
      records: page.records,
      olderCursor: page.cursor,
      // Only a page reached through "Older" has newer records to go back to.
      newerCursor: query.older !== null && page.records.length > 0 ? (page.records[0]!.id ?? null) : query.older,
    };
  } catch {
    return { kind: 'unavailable' };
  }
}
