import { backoffDelay } from '../backoff.js';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { Logger } from '../log.js';
import type { Store } from './store.js';

/**
 * How the running server writes to the store without ever making the event loop wait on it. The database can be
 * locked by another process (a CLI command, a backup, `sqlite3`), full, or gone: a write that fails is kept and
 * retried, and while one is failing the store counts as failing for `/health`.
 */

interface Pending {
  key: string;
  write: () => unknown;
  then: (() => void) | undefined;
}

export class StoreWrites {
  private readonly queue: Pending[] = [];
  private timer: TimerHandle | undefined;
  /** The drain under way (writes to PostgreSQL take a round trip): one at a time, in order. */
  private draining: Promise<boolean> | undefined;
  private attempt = 0;
  private failure: { error: string; since: number } | undefined;
  private readonly clock: Clock;
  private readonly errors: Pick<Store, 'isTransient' | 'isDataError'>;

  /** `errors`: the store's own word on a failed write, worth retrying soon (another holds the lock) or its data's fault. */
  constructor(
    private readonly log: Logger,
    opts: { errors: Pick<Store, 'isTransient' | 'isDataError'>; clock?: Clock },
  ) {
    this.clock = opts.clock ?? systemClock;
    this.errors = opts.errors;
  }

  /**
   * A write on the hot path (forbid, heartbeat, live states): tried now, and on failure kept in order and retried
   * with backoff until it succeeds. Never throws and never waits. A newer write with the same `key` replaces a
   * queued one (only the latest heartbeat matters). `then` runs once the write succeeded.
   */
  later(key: string, write: () => unknown, then?: () => void): void {
    const queued = this.queue.findIndex((p) => p.key === key);
    if (queued >= 0) this.queue.splice(queued, 1);
    this.queue.push({ key, write, then });
    if (this.queue.length === 1 && this.timer === undefined && !this.draining) void this.flush();
  }

  /** Whether a write with this key waits to be retried. */
  has(key: string): boolean {
    return this.queue.some((p) => p.key === key);
  }

  /**
   * A write whose caller waits for the outcome (a registration is answered `ok` only once stored): retried while the
   * database is locked, up to `waitMs`, without blocking the event loop; any other failure is thrown at once. A failure
   * for the write's own data (`isDataError`) is the caller's, and leaves the store's health as it was.
   */
  async now<T>(write: () => T | Promise<T>, waitMs = 5_000): Promise<T> {
    const deadline = this.clock.now() + waitMs;
    for (let attempt = 0; ; attempt++) {
      try {
        const result = await write();
        this.succeeded();
        return result;
      } catch (err) {
        if (this.errors.isDataError(err)) throw err;
        this.failed(err);
        if (!this.errors.isTransient(err) || this.clock.now() >= deadline) throw err;
        await new Promise<void>((resolve) => this.clock.setTimeout(resolve, Math.min(20 * 2 ** attempt, 250)));
      }
    }
  }

  /** The last write's error while writes are failing; undefined when the store takes writes. */
  failing(): { error: string; since: number } | undefined {
    return this.failure;
  }

  /** At shutdown: one last try of what is queued; returns how many writes are still not done. */
  async close(): Promise<number> {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    await this.draining;
    await this.drain();
    return this.queue.length;
  }

  private async flush(): Promise<void> {
    this.timer = undefined;
    this.draining = this.drain();
    const done = await this.draining;
    this.draining = undefined;
    if (done) {
      this.attempt = 0;
      if (this.queue.length > 0) void this.flush(); // queued while the last write was under way
      return;
    }
    const delayMs = backoffDelay(this.attempt++, { baseMs: 100, capMs: 5_000 }, Math.random());
    this.timer = this.clock.setTimeout(() => void this.flush(), delayMs);
  }

  /** Writes what is queued, in order, until one fails; true when all are done. */
  private async drain(): Promise<boolean> {
    while (this.queue.length > 0) {
      const head = this.queue[0] as Pending;
      try {
        await head.write();
      } catch (err) {
        this.failed(err);
        return false;
      }
      if (this.queue[0] === head) this.queue.shift(); // else a newer write with its key replaced it meanwhile
      this.succeeded();
      try {
        head.then?.();
      } catch (err) {
        this.log.error({ err }, 'after a store write');
      }
    }
    return true;
  }

  private failed(err: unknown): void {
    const error = err instanceof Error ? err.message : String(err);
    if (!this.failure) this.log.warn({ err }, 'a store write failed: kept and retried; /health reports the store failing meanwhile');
    this.failure ??= { error, since: this.clock.now() };
    this.failure.error = error;
  }

  private succeeded(): void {
    if (this.queue.length > 0) return; // queued writes still fail
    if (this.failure) this.log.info({ failingForMs: this.clock.now() - this.failure.since }, 'store writes succeed again');
    this.failure = undefined;
  }
}
