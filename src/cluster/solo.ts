import type { Clock, TimerHandle } from '../clock.js';
import type { Logger } from '../log.js';
import type { SqliteStore } from '../store/sqlite.js';
import type { OwnedConnections, Ownership } from './ownership.js';

/** One process on a SQLite file owns every connection, and follows the CLI's changes by polling the file. */
export class Solo implements Ownership {
  private timer: TimerHandle | undefined;
  private seenVersion = 0;
  private stopped = false;

  constructor(
    private readonly store: SqliteStore,
    private readonly pollMs: number,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {}

  async start(target: OwnedConnections): Promise<void> {
    this.seenVersion = this.store.dataVersion();
    target.reconcile(await this.store.list());
    this.schedule(target);
  }

  private schedule(target: OwnedConnections): void {
    this.timer = this.clock.setTimeout(async () => {
      try {
        const version = this.store.dataVersion();
        if (version !== this.seenVersion) {
          this.seenVersion = version;
          target.reconcile(await this.store.list());
        }
      } catch (err) {
        this.log.error({ err }, 'cannot read the store for changes');
      }
      if (!this.stopped) this.schedule(target);
    }, this.pollMs);
  }

  canConnect(): boolean {
    return true;
  }

  expectsReplacement(): boolean {
    return false;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
  }

  describe(): Record<string, never> {
    return {};
  }
}
