import type { Logger } from '../log.js';
import { shortUuid } from '../log.js';
import { connectionKey, type Connection, type ConnectionKey, type Store } from '../store.js';
import { SignalLink, type LinkEnd, type LinkOptions } from './link.js';

export type ConnectionState = 'connecting' | 'connected' | 'backoff' | 'forbidden' | 'stopped';

export interface BackoffOptions {
  baseMs: number;
  capMs: number;
}

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential from `baseMs`, capped, with "equal jitter"
 * (between half and all of the step) so that many connections dropped at once do not come back at once.
 * A server's Retry-After wins when it asks for longer. Pure.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions, random: number, retryAfterMs?: number): number {
  const step = Math.min(opts.capMs, opts.baseMs * 2 ** Math.min(attempt, 30));
  const delay = Math.round(step / 2 + (random * step) / 2);
  return retryAfterMs !== undefined ? Math.max(delay, Math.min(retryAfterMs, opts.capMs)) : delay;
}

export interface SupervisorOptions {
  link: Omit<LinkOptions, 'log'>;
  backoff: BackoffOptions;
  /** A socket open this long counts as healthy: the next failure starts the backoff again from the base. */
  healthyAfterMs: number;
}

export interface SupervisorDeps {
  store: Store;
  /** Called for every urgent envelope; must not block. */
  onUrgent(conn: Connection): void;
  log: Logger;
  nowSeconds?: () => number;
  random?: () => number;
}

interface Entry {
  conn: Connection;
  state: ConnectionState;
  reason: string;
  link: SignalLink | undefined;
  retryTimer: NodeJS.Timeout | undefined;
  attempt: number;
  openedAt: number | undefined;
}

/** Keeps exactly one websocket per stored account device that is not forbidden. */
export class Supervisor {
  private readonly entries = new Map<string, Entry>();
  private readonly nowSeconds: () => number;
  private readonly random: () => number;
  private stopping = false;

  constructor(
    private readonly opts: SupervisorOptions,
    private readonly deps: SupervisorDeps,
  ) {
    this.nowSeconds = deps.nowSeconds ?? (() => Math.floor(Date.now() / 1000));
    this.random = deps.random ?? Math.random;
  }

  /** Starts a link for every stored connection that is not forbidden. */
  startAll(): void {
    for (const conn of this.deps.store.list()) this.sync(conn);
  }

  /**
   * Brings the running socket in line with the stored connection: start it, replace it (new credentials or
   * endpoint: the old socket closes before the new one opens), stop it (forbidden), or leave it alone.
   */
  sync(conn: Connection): void {
    const key = connectionKey(conn);
    const entry = this.entries.get(key);
    if (entry && sameSettings(entry.conn, conn)) {
      entry.conn = conn;
      return;
    }
    if (entry) this.halt(entry);
    const fresh = this.newEntry(conn);
    this.entries.set(key, fresh);
    if (conn.forbidden) this.setState(fresh, 'forbidden', conn.forbiddenReason ?? 'forbidden');
    else this.connect(fresh, entry ? 'settings changed' : 'started');
  }

  /** Stops the socket of a removed connection. */
  remove(key: ConnectionKey): void {
    const entry = this.entries.get(connectionKey(key));
    if (!entry) return;
    this.halt(entry);
    this.entries.delete(connectionKey(key));
  }

  /** Marks a connection forbidden (stored with its reason) and closes its socket. */
  forbid(key: ConnectionKey, reason: string): void {
    this.deps.store.setForbidden(key, reason, this.nowSeconds());
    const conn = this.deps.store.get(key);
    if (conn) this.sync(conn);
  }

  state(key: ConnectionKey): ConnectionState | undefined {
    return this.entries.get(connectionKey(key))?.state;
  }

  counts(): Record<ConnectionState | 'total', number> {
    const counts = { total: 0, connecting: 0, connected: 0, backoff: 0, forbidden: 0, stopped: 0 };
    for (const e of this.entries.values()) {
      counts.total++;
      counts[e.state]++;
    }
    return counts;
  }

  /** Closes every socket with 1000 and waits for them to end. */
  async stop(): Promise<void> {
    this.stopping = true;
    const ending = [...this.entries.values()].map((e) => {
      const link = e.link;
      this.halt(e);
      return link?.ended;
    });
    await Promise.all(ending);
  }

  private newEntry(conn: Connection): Entry {
    return { conn, state: 'stopped', reason: '', link: undefined, retryTimer: undefined, attempt: 0, openedAt: undefined };
  }

  private setState(entry: Entry, state: ConnectionState, reason: string): void {
    if (entry.state === state && entry.reason === reason) return;
    entry.state = state;
    entry.reason = reason;
    this.deps.log.info({ uuid: shortUuid(entry.conn.uuid), device: entry.conn.deviceId, state, reason }, 'connection state');
  }

  private halt(entry: Entry): void {
    clearTimeout(entry.retryTimer);
    entry.retryTimer = undefined;
    const link = entry.link;
    entry.link = undefined;
    link?.close();
    if (entry.state !== 'forbidden') this.setState(entry, 'stopped', 'stopped');
  }

  private connect(entry: Entry, reason: string): void {
    entry.retryTimer = undefined;
    this.setState(entry, 'connecting', reason);
    const { uuid, deviceId, password } = entry.conn;
    const link = new SignalLink(
      { uuid, deviceId, password },
      { ...this.opts.link, log: this.deps.log.child({ uuid: shortUuid(uuid), device: deviceId }) },
      {
        onOpen: () => {
          entry.openedAt = Date.now();
          this.setState(entry, 'connected', 'open');
        },
        onEnvelope: (urgent) => {
          if (urgent) this.deps.onUrgent(entry.conn);
        },
      },
    );
    entry.link = link;
    void link.ended.then((end) => {
      if (entry.link !== link) return; // replaced or halted meanwhile
      entry.link = undefined;
      this.ended(entry, end);
    });
  }

  private ended(entry: Entry, end: LinkEnd): void {
    if (this.stopping || end.kind === 'stopped') return;
    if (end.kind === 'forbidden') {
      this.forbid(entry.conn, 'signal_403');
      return;
    }
    if (entry.openedAt !== undefined && Date.now() - entry.openedAt >= this.opts.healthyAfterMs) entry.attempt = 0;
    entry.openedAt = undefined;
    const retryAfterMs = 'retryAfterMs' in end ? end.retryAfterMs : undefined;
    const delay = backoffDelay(entry.attempt++, this.opts.backoff, this.random(), retryAfterMs);
    this.setState(entry, 'backoff', describeEnd(end));
    entry.retryTimer = setTimeout(() => this.connect(entry, 'retry'), delay);
  }
}

const sameSettings = (a: Connection, b: Connection): boolean =>
  a.password === b.password && a.endpoint === b.endpoint && a.forbidden === b.forbidden;

function describeEnd(end: LinkEnd): string {
  switch (end.kind) {
    case 'closed':
      return `closed ${end.code}${end.reason ? ` ${end.reason}` : ''}`;
    case 'refused':
      return `upgrade answered ${end.status}`;
    case 'error':
      return `network: ${end.message}`;
    case 'timeout':
      return `${end.phase} timeout`;
    default:
      return end.kind;
  }
}
