import 'server-only';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { KeywardError } from '../errors';
import { guard } from '../store/guard';
import type { Store } from '../../store/types';
import type { ConnectionRecord, Connections } from './connections';

/**
 * The idle-grant keeper. Providers expire refresh tokens that go unused (Google after 6 months, Microsoft after 90
 * days, Slack's rotating ones sooner, some in-house servers after a day), so a user who connected once and calls
 * rarely would find the connection dead. Every connection with a refresh token that has not been refreshed for
 * `idleMs` (default 20 hours: at least daily) is refreshed by a background pass.
 *
 * One pass per interval across every instance: a pass takes a lock in the store and reads when the last pass ran
 * (by the injected clock, so tests move time without waiting); an instance that finds either is done. A pass is
 * bounded (`maxPerPass` grants, `concurrency` at a time, the oldest first); what is left waits for the next pass.
 * Each refresh is the token store's single-flight one, so it never races a proxied call's refresh. A pass also
 * renews the index fields of every connection it finds (Connections.renewIndexes), so none outlives its indexes.
 */
export interface KeeperOptions {
  readonly intervalMs?: number;
  readonly idleMs?: number;
  readonly maxPerPass?: number;
  readonly concurrency?: number;
  readonly now?: () => number;
}

export interface PassResult {
  /** False when another instance holds the pass, or the last pass is more recent than the interval. */
  readonly ran: boolean;
  readonly refreshed: number;
  /** Grants the provider refused: their connections now need reconnecting. */
  readonly ended: number;
  /** Refreshes that failed for another reason (provider unreachable): tried again next pass. */
  readonly failed: number;
  /** Due grants left for the next pass (over maxPerPass). */
  readonly deferred: number;
}

const LOCK_KEY = 'connect:keeper:lock';
const LAST_PASS_KEY = 'connect:keeper:last';
const LOCK_TTL_MS = 10 * 60_000;
const READ_CHUNK = 1_000;

export class ConnectionKeeper {
  private timer: NodeJS.Timeout | null = null;
  private readonly intervalMs: number;
  private readonly idleMs: number;
  private readonly maxPerPass: number;
  private readonly concurrency: number;
  private readonly now: () => number;

  constructor(
    private readonly connections: Connections,
    private readonly store: Store,
    private readonly logger: Logger,
    options: KeeperOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? 60 * 60_000;
    this.idleMs = options.idleMs ?? 20 * 60 * 60_000;
    this.maxPerPass = options.maxPerPass ?? 500;
    this.concurrency = options.concurrency ?? 4;
    this.now = options.now ?? Date.now;
  }

  /** Runs a pass every interval (the first one a minute after start), in the background; idempotent. */
  start(): void {
    if (this.timer) return;
    const run = () => {
      this.pass().catch((error: unknown) =>
        this.logger.warn({ err: error instanceof Error ? error.name : 'unknown' }, 'connection keeper pass failed'),
      );
    };
    const first = setTimeout(
      () => {
        run();
        this.timer = setInterval(run, this.intervalMs);
        this.timer.unref();
      },
      Math.min(60_000, this.intervalMs),
    );
    first.unref();
    this.timer = first;
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** One pass, if no other instance ran one within the interval. */
  async pass(): Promise<PassResult> {
    const holder = randomUUID();
    const idle: PassResult = { ran: false, refreshed: 0, ended: 0, failed: 0, deferred: 0 };
    if (!(await guard(() => this.store.setIfAbsent(LOCK_KEY, holder, LOCK_TTL_MS)))) return idle;
    try {
      const last = Number((await guard(() => this.store.get(LAST_PASS_KEY))) ?? 0);
      const now = this.now();
      if (now - last < this.intervalMs) return idle;
      await guard(() => this.store.set(LAST_PASS_KEY, String(now)));
      return await this.refreshDue(now);
    } finally {
      await this.store.deleteIfEquals(LOCK_KEY, holder).catch(() => {});
    }
  }

  private async refreshDue(now: number): Promise<PassResult> {
    const olderThan = now - this.idleMs;
    const due: { provider: string; userId: string; since: number }[] = [];
    for (const provider of this.connections.providers.keys()) {
      const users = await this.connections.indexedUsers(provider);
      for (let i = 0; i < users.length; i += READ_CHUNK) {
        const chunk = users.slice(i, i + READ_CHUNK);
        const records = await this.connections.records(provider, chunk);
        const live: { userId: string; record: ConnectionRecord }[] = [];
        for (const [j, userId] of chunk.entries()) {
          const record = records[j];
          if (!record) {
            await this.connections.forget(provider, userId);
            continue;
          }
          live.push({ userId, record });
          const since = record.lastRefreshAt ?? record.connectedAt;
          if (record.status === 'connected' && record.refreshable && since <= olderThan)
            due.push({ provider, userId, since });
        }
        await this.connections.renewIndexes(provider, live);
      }
    }
    due.sort((a, b) => a.since - b.since);
    const batch = due.slice(0, this.maxPerPass);
    let refreshed = 0;
    let ended = 0;
    let failed = 0;
    let next = 0;
    const worker = async () => {
      while (next < batch.length) {
        const { provider, userId } = batch[next++]!;
        try {
          if (await this.connections.tokens.keepAlive(provider, userId, olderThan)) refreshed++;
        } catch (error) {
          if (error instanceof KeywardError && error.code === 'reauth_required') ended++;
          else {
            failed++;
            this.logger.warn(
              { provider, userId, err: error instanceof KeywardError ? error.code : 'unknown' },
              'connection keeper: refresh failed; retried next pass',
            );
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, batch.length) }, worker));
    const result = { ran: true, refreshed, ended, failed, deferred: due.length - batch.length };
    if (batch.length > 0) this.logger.info(result, 'connection keeper pass');
    return result;
  }
}
