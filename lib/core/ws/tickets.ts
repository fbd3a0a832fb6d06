import { createHash, randomBytes } from 'node:crypto';
import { guard } from '../store/guard';
import { capPerWindow } from '../store/window-cap';
import type { Store } from '../../store/types';
import type { ProxyTarget } from '../pipeline';
import { stringClaims, type Session } from '../session/session';

/** How long a ticket can be redeemed: long enough to open a socket right after asking, too short to be worth stealing. */
export const WS_TICKET_TTL_MS = 30_000;

/**
 * Tickets one user may be issued per WS_TICKET_TTL_MS window: each is stored for that long, so a loop of requests
 * could otherwise fill the store. Far above the sockets an app opens.
 */
export const WS_TICKETS_MAX = 60;

/** 32 random bytes, base64url: what `?ticket=` carries. */
const TICKET = /^[A-Za-z0-9_-]{43}$/;

interface TicketRecord {
  readonly upstream: string;
  readonly path: string;
  readonly session: Session;
}

/**
 * Single-use WebSocket tickets (README "WebSockets"): a client whose session is a bearer token (a native app) or
 * that cannot set headers on a WebSocket asks `POST /api/session/ws-ticket` for one, then opens
 * `/api/proxy/<upstream>/<path>?ticket=…` within 30 s. A ticket names the session it was issued to and is bound
 * to that upstream and path; it is stored by its SHA-256 only (a store dump holds no usable ticket), redeemed at
 * most once (the store's delete says which redemption won), and never logged.
 */
export class WsTickets {
  constructor(
    private readonly store: Store,
    private readonly now: () => number = Date.now,
    private readonly ttlMs = WS_TICKET_TTL_MS,
  ) {}

  /** A new ticket for this session, upstream and (decoded) path segments. */
  async issue(session: Session, target: ProxyTarget): Promise<{ ticket: string; expiresIn: number }> {
    await capPerWindow(this.store, `wsticket:issued:${session.userId}`, {
      max: WS_TICKETS_MAX,
      windowMs: this.ttlMs,
      message: 'Too many WebSocket tickets asked for; open the sockets you have tickets for, or try again shortly.',
    });
    const ticket = randomBytes(32).toString('base64url');
    const value: TicketRecord & { expiresAt: number } = {
      upstream: target.upstream,
      path: pathKey(target.path),
      session,
      expiresAt: this.now() + this.ttlMs,
    };
    const stored = await guard(() => this.store.setIfAbsent(key(ticket), JSON.stringify(value), this.ttlMs));
    if (!stored) throw new Error('ticket collision'); // 256 random bits: never in practice
    return { ticket, expiresIn: Math.floor(this.ttlMs / 1000) };
  }

  /**
   * The session a ticket was issued to, if it is valid for this upstream and path, unexpired and not redeemed
   * before; null otherwise. Any redemption uses the ticket up, a refused one too (it was shown to the wrong place).
   */
  async redeem(ticket: string, target: ProxyTarget): Promise<Session | null> {
    if (!TICKET.test(ticket)) return null;
    const name = key(ticket);
    const raw = await guard(() => this.store.get(name));
    if (raw === null) return null;
    // Two redemptions may both read it; only the one whose delete removed it goes on.
    if (!(await guard(() => this.store.delete(name)))) return null;
    let record: TicketRecord & { expiresAt: number };
    try {
      record = JSON.parse(raw) as TicketRecord & { expiresAt: number };
    } catch {
      return null;
    }
    const now = this.now();
    if (!(record.expiresAt > now) || record.upstream !== target.upstream || record.path !== pathKey(target.path))
      return null;
    if (!(record.session.expiresAt > now)) return null;
    return {
      ...record.session,
      claims: stringClaims(record.session.claims),
      via: 'bearer',
    };
  }

  /**
   * Uses up every ticket shown with an upgrade that is refused (README "WebSockets"): one store read for all of
   * them, whatever their number (a request line holds a few hundred), and a delete for each that exists; nothing
   * for a value that cannot be a ticket. Redeeming each instead would let one request without a session cost the
   * store a read per value it carries.
   */
  async burn(tickets: readonly string[]): Promise<void> {
    const names = [...new Set(tickets.filter((ticket) => TICKET.test(ticket)).map(key))];
    if (names.length === 0) return;
    const found = await guard(() => this.store.getMany(names));
    await Promise.all(names.filter((_, index) => found[index] != null).map((name) => guard(() => this.store.delete(name))));
  }
}

function key(ticket: string): string {
  return `wsticket:${createHash('sha256').update(ticket).digest('hex')}`;
}

/** Segments joined with `/` after each is encoded, so `a/b` as one segment never equals `a` then `b`. */
function pathKey(segments: readonly string[]): string {
  return segments.map(encodeURIComponent).join('/');
}
