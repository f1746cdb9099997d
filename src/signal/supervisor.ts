import { backoffDelay, type BackoffOptions } from '../backoff.js';
import { systemClock, type Clock, type TimerHandle } from '../clock.js';
import type { RelayEvents } from '../events.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { shortUuid } from '../log.js';
import type { OwnedConnections, Ownership } from '../cluster/ownership.js';
import { SignalHealth } from '../cluster/signal-health.js';
import { leftBehind } from '../leftBehind.js';
import { connectionKey, type Connection, type ConnectionKey, type ForbiddenCursor, type ForbiddenFor, type Store } from '../store/store.js';
import { StoreWrites } from '../store/writes.js';
import { SignalLink, type LinkEnd, type LinkOptions } from './link.js';
import { ConnectRamp, type RampOptions } from './ramp.js';

export type ConnectionState = 'connecting' | 'connected' | 'backoff' | 'forbidden' | 'stopped';

export interface SupervisorOptions {
  link: Omit<LinkOptions, 'log' | 'clock'>;
  backoff: BackoffOptions;
  /** A socket open this long counts as healthy: the next failure starts the backoff again from the base. */
  healthyAfterMs: number;
  ramp: RampOptions;
  /** After close code 4409, at most one delivery-check push per connection in this period. */
  deliveryCheckIntervalMs: number;
  /** How often every open link is asked whether a keepalive is due (their precision). */
  keepaliveTickMs: number;
  /** How long a stopping instance waits for the new owners' sockets to replace its handed-over ones. */
  handOverTimeoutMs: number;
  /** A forbidden connection whose account has a newer device connected is removed after this long. */
  leftBehindKeptMs: number;
  /** How often forbidden connections left behind, or kept beyond `forbiddenRetentionMs`, are looked for. */
  leftBehindSweepMs: number;
  /** Any forbidden connection that nothing enabled again is removed after this long (`forbidden_retention_days`). */
  forbiddenRetentionMs: number;
  /** After an outage, once one socket opens again, the others waiting in backoff retry at once: at most this often. */
  recoveryIntervalMs: number;
}

export interface SupervisorDeps {
  store: Store;
  log: Logger;
  /** Where it says what the pushes must follow: urgent, deliveryCheck, changed, removed (see src/events.ts). */
  events: RelayEvents;
  /** Where store writes go without blocking (default: a queue of its own). */
  writes?: StoreWrites;
  metrics?: Metrics;
  clock?: Clock;
  random?: () => number;
  /** Which connections this instance runs (the store's opening provides it: see `Backend.ownership`). */
  ownership: Ownership;
}

export interface ConnectionStatus {
  uuid: string;
  deviceId: number;
  state: ConnectionState;
  reason: string;
  /** When it entered this state (ms since the epoch). */
  since: number;
  /** In backoff: when it tries next (ms since the epoch). */
  retryAt?: number;
}

interface Entry {
  conn: Connection;
  state: ConnectionState;
  reason: string;
  since: number;
  /** In backoff: when it tries next. */
  retryAt: number | undefined;
  /** Set once the entry is replaced or removed: nothing may start for it any more. */
  halted: boolean;
  link: SignalLink | undefined;
  cancelQueued: (() => void) | undefined;
  retryTimer: TimerHandle | undefined;
  attempt: number;
  openedAt: number | undefined;
  /** Send one wake-up when the socket opens (the last run may have acked envelopes it never pushed). */
  wakeOnOpen: boolean;
  /** In backoff after a failure that ends with an outage (network, timeout, 5xx): retried early on recovery. */
  outage: boolean;
  /** Another instance owns it now: the socket stays until Signal replaces it (4409), and is not reopened. */
  handedOver: boolean;
}

/**
 * Keeps exactly one websocket per stored account device that is not forbidden: starts them through the ramp,
 * replaces them when their settings change, reconnects with capped backoff, and follows the store.
 */
export class Supervisor implements OwnedConnections {
  private readonly entries = new Map<string, Entry>();
  /** Last delivery check per connection; kept across replacements so that the hourly limit holds. */
  private readonly deliveryChecks = new Map<string, number>();
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly ramp: ConnectRamp;
  private tickTimer: TimerHandle | undefined;
  readonly ownership: Ownership;
  private sweepTimer: TimerHandle | undefined;
  private stopping = false;
  private stateChanges = 0;
  private lastRecovery = -Infinity;
  private readonly writes: StoreWrites;
  /** Forbidden here, not yet written to the store: the store's older row must not bring them back meanwhile. */
  private readonly forbidding = new Map<string, Connection>();
  private readonly signalHealth = new SignalHealth();

  constructor(
    private readonly opts: SupervisorOptions,
    private readonly deps: SupervisorDeps,
  ) {
    this.clock = deps.clock ?? systemClock;
    this.random = deps.random ?? Math.random;
    this.ramp = new ConnectRamp(opts.ramp, this.clock);
    this.writes = deps.writes ?? new StoreWrites(deps.log, { errors: deps.store, clock: this.clock });
    this.ownership = deps.ownership;
  }

  /**
   * Starts every owned connection that is not forbidden, then follows the store. With `wakeAfterConnect`, each
   * sends one wake-up once its socket opens (the last run did not end cleanly).
   */
  async start(opts: { wakeAfterConnect?: boolean } = {}): Promise<void> {
    this.scheduleTick();
    this.scheduleSweep();
    await this.ownership.start(this);
    if (opts.wakeAfterConnect) for (const entry of this.entries.values()) entry.wakeOnOpen = entry.state === 'connecting';
  }

  /**
   * Brings the running socket in line with the stored connection: start it, replace it (new credentials or
   * endpoint: the old socket is closed before the new one opens), stop it (forbidden), or leave it alone.
   */
  sync(conn: Connection): void {
    const key = connectionKey(conn);
    const entry = this.entries.get(key);
    if (entry && sameSettings(entry.conn, conn)) {
      entry.conn = conn;
      entry.handedOver = false; // handed back before the new owner's socket replaced it
      return;
    }
    const previous = entry ? this.halt(entry) : undefined;
    if (entry && conn.forbidden) this.deps.events.emit('removed', conn);
    else if (entry) this.deps.events.emit('changed', conn);
    const fresh: Entry = {
      conn,
      state: 'stopped',
      reason: '',
      since: this.clock.now(),
      retryAt: undefined,
      halted: false,
      link: undefined,
      cancelQueued: undefined,
      retryTimer: undefined,
      attempt: 0,
      openedAt: undefined,
      wakeOnOpen: false,
      outage: false,
      handedOver: false,
    };
    this.entries.set(key, fresh);
    if (conn.forbidden) {
      this.setState(fresh, 'forbidden', conn.forbiddenReason ?? 'forbidden');
      return;
    }
    const reason = entry ? 'settings changed' : 'started';
    if (previous) this.after(previous, () => this.queueConnect(fresh, reason));
    else this.queueConnect(fresh, reason);
  }

  /** Stops the socket of a removed connection, or of one another instance runs now (`handedOver`). */
  remove(key: ConnectionKey, why: 'removed' | 'handedOver' = 'removed'): void {
    const entry = this.entries.get(connectionKey(key));
    this.signalHealth.forget(connectionKey(key));
    if (!entry) return;
    this.after(this.halt(entry), () => {});
    this.entries.delete(connectionKey(key));
    this.deliveryChecks.delete(connectionKey(key));
    this.deps.events.emit(why, key);
  }

  /** Another instance owns it now: keep the socket until Signal replaces it, or the ownership removes it. */
  handOver(key: ConnectionKey): void {
    const entry = this.entries.get(connectionKey(key));
    if (!entry) return;
    if (entry.state !== 'connected') {
      this.remove(key, 'handedOver'); // no open socket to keep; one still connecting would replace the new owner's
      return;
    }
    entry.handedOver = true;
    this.clock.clearTimeout(entry.retryTimer);
    this.setState(entry, 'connected', 'handed over');
  }

  handingOver(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.handedOver) n++;
    return n;
  }

  owePush(key: ConnectionKey): void {
    const entry = this.entries.get(connectionKey(key));
    if (entry) entry.wakeOnOpen = true;
  }

  leaseRegained(): void {
    for (const entry of this.entries.values()) {
      if (entry.state !== 'backoff' || entry.reason !== WAITING_FOR_LEASE) continue;
      this.clock.clearTimeout(entry.retryTimer);
      entry.retryTimer = undefined;
      this.queueConnect(entry, 'retry');
    }
  }

  reachesSignal(): boolean {
    const counts = this.counts();
    return this.signalHealth.reaching(counts.connected, counts.total - counts.forbidden);
  }

  /**
   * Marks a connection forbidden and closes its socket at once, if it still has the endpoint or credentials the
   * decision was made for: a late answer about replaced ones changes nothing. The store learns it without the caller
   * waiting (retried while the store fails), compare-and-set too: another process may have replaced them meanwhile.
   * As the owner's write it also carries the epoch this instance knows: once another instance owns the row, it
   * changes nothing.
   */
  forbid(key: ConnectionKey, reason: string, decidedFor: ForbiddenFor): void {
    const entry = this.entries.get(connectionKey(key));
    if (!entry || entry.conn.forbidden) return;
    if ('endpoint' in decidedFor ? entry.conn.endpoint !== decidedFor.endpoint : entry.conn.password !== decidedFor.password) {
      this.deps.log.info({ uuid: shortUuid(key.uuid), device: key.deviceId, reason }, 'not forbidden: the answer was about replaced settings');
      return;
    }
    const at = Math.floor(this.clock.now() / 1000);
    const forbidden = { ...entry.conn, forbidden: true, forbiddenReason: reason, forbiddenAt: at };
    const id = connectionKey(key);
    this.forbidding.set(id, forbidden);
    this.sync(forbidden);
    this.writes.later(
      `forbid:${id}`,
      () => this.deps.store.setForbidden(key, reason, decidedFor, at, { epoch: entry.conn.epoch }), // unchanged if replaced: the next poll syncs that
      () => this.forbidding.delete(id),
    );
  }

  state(key: ConnectionKey): ConnectionState | undefined {
    return this.entries.get(connectionKey(key))?.state;
  }

  /** Whether pushes for this connection are still wanted: it is stored, not forbidden and not stopped. */
  wantsPushes(key: ConnectionKey): boolean {
    const state = this.state(key);
    return state === 'connecting' || state === 'connected' || state === 'backoff';
  }

  statuses(): ConnectionStatus[] {
    return [...this.entries.values()].map((e) => ({
      uuid: e.conn.uuid,
      deviceId: e.conn.deviceId,
      state: e.state,
      reason: e.reason,
      since: e.since,
      ...(e.retryAt !== undefined && { retryAt: e.retryAt }),
    }));
  }

  /** Open sockets whose last keepalive is still unanswered. */
  awaitingKeepalives(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.link?.awaitingKeepalive) n++;
    return n;
  }

  /** Connections waiting for the connect ramp. */
  get connectQueue(): number {
    return this.ramp.waiting;
  }

  /** Grows with every state change: whoever publishes the states can tell whether anything changed. */
  get revision(): number {
    return this.stateChanges;
  }

  counts(): Record<ConnectionState | 'total', number> {
    const counts = { total: 0, connecting: 0, connected: 0, backoff: 0, forbidden: 0, stopped: 0 };
    for (const e of this.entries.values()) {
      counts.total++;
      counts[e.state]++;
    }
    return counts;
  }

  /** Hands the connections over (several instances), then closes every socket left with 1000 and waits for them to end. */
  async stop(): Promise<void> {
    await this.ownership.stop(this.opts.handOverTimeoutMs); // hands over first: the sockets stay until replaced
    this.stopping = true;
    this.clock.clearTimeout(this.tickTimer);
    this.clock.clearTimeout(this.sweepTimer);
    this.ramp.stop();
    await Promise.all([...this.entries.values()].map((e) => this.halt(e)));
  }

  /** Follows the owned set: every connection in it synced, every other one stopped (handed-over sockets stay). */
  reconcile(owned: Connection[]): void {
    const keys = new Set<string>();
    for (const conn of owned) {
      const key = connectionKey(conn);
      keys.add(key);
      const forbidden = this.forbidding.get(key);
      // Our forbid not yet written: the stored row is older, unless someone changed the credentials or endpoint since.
      this.sync(forbidden && forbidden.password === conn.password && forbidden.endpoint === conn.endpoint ? forbidden : conn);
    }
    for (const entry of [...this.entries.values()]) {
      if (!keys.has(connectionKey(entry.conn)) && !entry.handedOver) this.remove(entry.conn);
    }
  }

  private scheduleTick(): void {
    this.tickTimer = this.clock.setTimeout(() => {
      const now = this.clock.now();
      for (const entry of this.entries.values()) entry.link?.tick(now);
      if (!this.stopping) this.scheduleTick();
    }, this.opts.keepaliveTickMs);
  }

  private scheduleSweep(): void {
    this.sweepTimer = this.clock.setTimeout(() => {
      void this.sweep();
      if (!this.stopping) this.scheduleSweep();
    }, this.opts.leftBehindSweepMs);
  }

  /**
   * Removes forbidden connections nobody needs any more, in batches of SWEEP_BATCH rows found from an index, yielding
   * to the event loop before each: whatever the size of the table, sockets and requests wait one short statement.
   */
  private async sweep(): Promise<void> {
    const now = Math.floor(this.clock.now() / 1000);
    try {
      await this.removeLeftBehind(now - this.opts.leftBehindKeptMs / 1000);
      await this.removeForbiddenSince(now - this.opts.forbiddenRetentionMs / 1000);
    } catch (err) {
      this.deps.log.warn({ err }, 'cannot remove forbidden connections now: tried again at the next sweep');
    }
  }

  /** The forbidden connections a re-link left behind (see `leftBehind`), forbidden since `before`, unless enabled meanwhile. */
  private async removeLeftBehind(before: number): Promise<void> {
    let cursor: ForbiddenCursor | undefined;
    for (;;) {
      await nextTurn();
      const batch = await this.deps.store.forbiddenWithNewerDevices(before, cursor, SWEEP_BATCH);
      for (const old of leftBehind(batch, (k) => this.state(k) === 'connected')) {
        if (!(await this.deps.store.removeForbidden(old))) continue;
        this.remove(old);
        this.deps.log.info(
          { uuid: shortUuid(old.uuid), device: old.deviceId, reason: old.forbiddenReason },
          'removed a forbidden connection: a newer device of the account is connected',
        );
      }
      if (batch.length < SWEEP_BATCH || this.stopping) return;
      cursor = batch.at(-1)!.cursor;
    }
  }

  /** Every connection forbidden since `before` (Signal refused it, or its endpoint was gone, and nothing enabled it since). */
  private async removeForbiddenSince(before: number): Promise<void> {
    let total = 0;
    for (;;) {
      await nextTurn();
      const removed = await this.deps.store.removeForbiddenSince(before, SWEEP_BATCH);
      for (const key of removed) this.remove(key);
      total += removed.length;
      if (removed.length < SWEEP_BATCH || this.stopping) break;
    }
    if (total > 0)
      this.deps.log.info(
        { count: total, days: this.opts.forbiddenRetentionMs / 86_400_000 },
        'removed connections forbidden for longer than forbidden_retention_days',
      );
  }

  private setState(entry: Entry, state: ConnectionState, reason: string, extra: Record<string, unknown> = {}): void {
    if (entry.state === state && entry.reason === reason) return;
    entry.state = state;
    entry.reason = reason;
    entry.since = this.clock.now();
    entry.retryAt = state === 'backoff' && typeof extra.retryInMs === 'number' ? entry.since + extra.retryInMs : undefined;
    this.stateChanges++;
    const { uuid, deviceId } = entry.conn;
    this.deps.log.info({ uuid: shortUuid(uuid), device: deviceId, state, reason, ...extra }, 'connection state');
  }

  /** Stops everything of an entry; resolves when its socket has closed. */
  private halt(entry: Entry): Promise<unknown> {
    entry.halted = true;
    this.clock.clearTimeout(entry.retryTimer);
    entry.cancelQueued?.();
    const link = entry.link;
    entry.link = undefined;
    link?.close();
    if (entry.state !== 'forbidden') this.setState(entry, 'stopped', 'stopped');
    return link?.ended ?? Promise.resolve();
  }

  private queueConnect(entry: Entry, reason: string): void {
    if (entry.halted) return;
    if (reason === 'retry') this.deps.metrics?.reconnections.inc();
    this.setState(entry, 'connecting', reason);
    entry.cancelQueued = this.ramp.enqueue((release) => {
      entry.cancelQueued = undefined;
      if (entry.halted) release();
      else if (!this.ownership.canConnect(entry.conn)) {
        release(); // no valid lease (PostgreSQL unreachable), or no longer ours: again once it holds (leaseRegained), or later
        const delayMs = backoffDelay(entry.attempt++, this.opts.backoff, this.random());
        this.setState(entry, 'backoff', WAITING_FOR_LEASE, { retryInMs: delayMs });
        entry.retryTimer = this.clock.setTimeout(() => this.queueConnect(entry, 'retry'), delayMs);
      } else this.connect(entry, release);
    });
  }

  private connect(entry: Entry, release: () => void): void {
    const { uuid, deviceId, password } = entry.conn;
    const link = new SignalLink(
      { uuid, deviceId, password },
      { ...this.opts.link, clock: this.clock, log: this.deps.log.child({ uuid: shortUuid(uuid), device: deviceId }) },
      {
        onOpen: () => {
          release();
          entry.openedAt = this.clock.now();
          this.signalHealth.opened();
          this.setState(entry, 'connected', 'open');
          this.recovered();
          if (entry.wakeOnOpen) {
            entry.wakeOnOpen = false;
            this.deps.events.emit('urgent', entry.conn);
          }
        },
        onEnvelope: (urgent) => {
          this.deps.metrics?.messages.inc();
          if (urgent) this.deps.events.emit('urgent', entry.conn);
        },
      },
    );
    entry.link = link;
    this.after(link.ended, (end) => {
      release();
      if (entry.link !== link) return; // replaced or halted meanwhile
      entry.link = undefined;
      this.ended(entry, end);
    });
  }

  /** Runs `then` when `promise` settles; a failure in either is logged, and every other connection keeps running. */
  private after<T>(promise: Promise<T>, then: (value: T) => void): void {
    promise.then(then).catch((err: unknown) => this.deps.log.error({ err }, 'connection step failed'));
  }

  /**
   * A socket opened: Signal is reachable. Those waiting in backoff after an outage retry now rather than at the end
   * of their (possibly long) backoff; the ramp still spreads them out.
   */
  private recovered(): void {
    const now = this.clock.now();
    if (now - this.lastRecovery < this.opts.recoveryIntervalMs) return;
    this.lastRecovery = now;
    for (const entry of this.entries.values()) {
      if (entry.state !== 'backoff' || !entry.outage) continue;
      this.clock.clearTimeout(entry.retryTimer);
      entry.retryTimer = undefined;
      this.queueConnect(entry, 'retry');
    }
  }

  private ended(entry: Entry, end: LinkEnd): void {
    if (this.stopping || entry.halted || end.kind === 'stopped') return;
    const replaced = end.kind === 'closed' && end.code === 4409 && this.ownership.expectsReplacement(entry.conn);
    if (entry.handedOver || replaced) {
      // The new owner's socket replaced this one, as planned: nothing to retry, no delivery check.
      this.clock.clearTimeout(entry.retryTimer);
      entry.halted = true;
      this.setState(entry, 'stopped', 'handed over');
      this.entries.delete(connectionKey(entry.conn));
      this.deps.events.emit('handedOver', entry.conn); // new envelopes are the new owner's; what was acked here still goes out
      return;
    }
    if (end.kind === 'forbidden') {
      this.forbid(entry.conn, 'signal_403', { password: entry.conn.password });
      return;
    }
    const now = this.clock.now();
    if (entry.openedAt !== undefined && now - entry.openedAt >= this.opts.healthyAfterMs) entry.attempt = 0;
    entry.openedAt = undefined;
    if (end.kind === 'closed' && end.code === 4409) this.deliveryCheck(entry.conn, now);
    if (end.kind === 'refused' && end.status === 499) {
      this.deps.log.warn('Signal refused this client version (499): upgrade mollysocket, or set user_agent to a current Signal-Android version');
    }
    const retryAfterMs = 'retryAfterMs' in end ? end.retryAfterMs : undefined;
    entry.outage = isOutage(end) && retryAfterMs === undefined;
    if (isOutage(end)) this.signalHealth.failed(connectionKey(entry.conn));
    const delayMs = backoffDelay(entry.attempt++, this.opts.backoff, this.random(), retryAfterMs);
    this.setState(entry, 'backoff', describeEnd(end), { retryInMs: delayMs });
    entry.retryTimer = this.clock.setTimeout(() => this.queueConnect(entry, 'retry'), delayMs);
  }

  /** 4409 repeats while another client holds the device; one push an hour is enough to learn if the endpoint is gone. */
  private deliveryCheck(conn: Connection, now: number): void {
    const key = connectionKey(conn);
    const last = this.deliveryChecks.get(key);
    if (last !== undefined && now - last < this.opts.deliveryCheckIntervalMs) return;
    this.deliveryChecks.set(key, now);
    this.deps.events.emit('deliveryCheck', conn);
  }
}

const WAITING_FOR_LEASE = 'waiting for the lease';

/** Rows a sweep reads or removes in one statement. */
const SWEEP_BATCH = 500;

/** Lets the event loop run what waits (sockets, requests, timers) before going on. */
const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** An end that says Signal (or the way to it) was down, rather than something about this device. */
function isOutage(end: LinkEnd): boolean {
  if (end.kind === 'error' || end.kind === 'timeout') return true;
  if (end.kind === 'refused') return end.status >= 500;
  return end.kind === 'closed' && end.code !== 4409 && end.code !== 4401;
}

const sameSettings = (a: Connection, b: Connection): boolean => a.password === b.password && a.endpoint === b.endpoint && a.forbidden === b.forbidden;

function describeEnd(end: LinkEnd): string {
  switch (end.kind) {
    case 'closed':
      if (end.code === 4409) return 'closed 4409: the same device connected elsewhere';
      if (end.code === 4401) return 'closed 4401: re-authentication required';
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
