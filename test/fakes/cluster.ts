import type { Clock, TimerHandle } from '../../src/clock.js';
import { Leases } from '../../src/cluster/leases.js';
import type { Metrics } from '../../src/metrics.js';
import type { OwnedConnections } from '../../src/cluster/ownership.js';
import { SignalHealth } from '../../src/cluster/signal-health.js';
import { connectionKey, type Connection, type ConnectionKey } from '../../src/store/store.js';
import { memoryLogger } from '../helpers/index.js';
import { ManualClock } from './clock.js';
import { MemoryDatabase, type MemoryLeaseStore } from './lease-store.js';

/** One process's view of the shared manual clock: paused (a frozen process), its due timers wait for the thaw. */
export class ProcessClock implements Clock {
  private paused: (() => void)[] | undefined;

  constructor(private readonly base: ManualClock) {}

  now(): number {
    return this.base.now();
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    return this.base.setTimeout(() => (this.paused ? this.paused.push(fn) : fn()), ms);
  }

  clearTimeout(handle: TimerHandle | undefined): void {
    this.base.clearTimeout(handle);
  }

  pause(): void {
    this.paused ??= [];
  }

  resume(): void {
    const due = this.paused ?? [];
    this.paused = undefined;
    for (const fn of due) fn();
  }
}

interface Entry {
  conn: Connection;
  state: 'connecting' | 'connected' | 'waiting' | 'failing';
  handedOver: boolean;
  wake: boolean;
}

/**
 * Several instances (the real lease engine, each with a small stand-in for the supervisor) on one in-memory database
 * and one Signal that keeps the newest socket of a device and retires the older one (4409). Everything runs on one
 * manual clock. It records what the fault tests of real processes record: gaps without a socket, fights, wake-ups,
 * and any socket opened without a lease.
 */
export class ClusterWorld {
  readonly clock = new ManualClock();
  readonly db = new MemoryDatabase(this.clock);
  readonly nodes = new Map<string, Node>();
  /** Device → the instance whose socket Signal holds. */
  readonly holders = new Map<string, Node>();
  private readonly noneSince = new Map<string, number>();
  private readonly lastKicked = new Map<string, { from: string; at: number }>();
  worstGap = 0;
  fights = 0;
  readonly kicks: { device: string; from: string; to: string }[] = [];
  /** Wake-up pushes sent, by device. */
  readonly pushes: string[] = [];
  /** Sockets opened without the database saying this instance holds its lease and owns the device. */
  readonly violations: string[] = [];
  /** Instances whose way to Signal is cut. */
  readonly unreachable = new Set<string>();

  constructor(readonly leaseSeconds = 6) {}

  addDevices(n: number, prefix = 'd'): ConnectionKey[] {
    const keys: ConnectionKey[] = [];
    for (let i = 0; i < n; i++) {
      const key = { uuid: `${prefix}${String(i).padStart(7, '0')}-0000-4000-8000-000000000000`, deviceId: 1 };
      this.db.add({ ...key, password: `pw-${i}`, endpoint: `https://push.example/${i}` });
      this.noneSince.set(connectionKey(key), this.clock.now());
      keys.push(key);
    }
    return keys;
  }

  /** Moves time forward in small steps, letting answers and callbacks run between them. */
  async run(ms: number, step = 50): Promise<void> {
    for (let done = 0; done < ms; done += step) {
      this.clock.advance(Math.min(step, ms - done));
      await flush();
    }
  }

  /** Runs until `fn` holds, at most `ms`; false if it never did. */
  async until(fn: () => boolean, ms: number, step = 50): Promise<boolean> {
    for (let done = 0; done <= ms; done += step) {
      if (fn()) return true;
      await this.run(step, step);
    }
    return fn();
  }

  /** Waits (in simulated time) for a promise that needs the clock to move. */
  async settle<T>(promise: Promise<T>, ms = 120_000): Promise<T> {
    let result: { value: T } | undefined;
    let failure: { err: unknown } | undefined;
    promise.then(
      (value) => (result = { value }),
      (err: unknown) => (failure = { err }),
    );
    await this.until(() => result !== undefined || failure !== undefined, ms);
    if (failure) throw failure.err;
    if (!result) throw new Error(`not settled within ${ms} ms`);
    return result.value;
  }

  async start(name: string, opts: { connectDelayMs?: number; metrics?: Metrics } = {}): Promise<Node> {
    const node = new Node(this, name, opts.connectDelayMs ?? 20, opts.metrics);
    this.nodes.set(name, node);
    await this.settle(node.leases.start(node));
    return node;
  }

  open(key: string, node: Node): void {
    const now = this.clock.now();
    const since = this.noneSince.get(key);
    if (since !== undefined) this.worstGap = Math.max(this.worstGap, now - since);
    this.noneSince.delete(key);
    const kicked = this.lastKicked.get(key);
    if (kicked && kicked.from === node.name && now - kicked.at < 10_000) this.fights++;
    const holder = this.holders.get(key);
    this.holders.set(key, node);
    if (holder && holder !== node) {
      this.kicks.push({ device: key, from: holder.name, to: node.name });
      this.lastKicked.set(key, { from: holder.name, at: now });
      holder.clock.setTimeout(() => holder.replaced(key), 0); // handled when that process runs
    }
  }

  close(key: string, node: Node): void {
    if (this.holders.get(key) !== node) return;
    this.holders.delete(key);
    this.noneSince.set(key, this.clock.now());
  }

  /** The longest time any stored device went without a socket since `resetGaps`, gaps still going included. */
  gap(): number {
    const now = this.clock.now();
    return Math.max(this.worstGap, ...[...this.noneSince].filter(([key]) => this.db.rows.has(key)).map(([, since]) => now - since));
  }

  resetGaps(): void {
    this.worstGap = 0;
    for (const key of this.noneSince.keys()) this.noneSince.set(key, this.clock.now());
  }

  /** Devices held per instance name. */
  held(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const node of this.holders.values()) counts.set(node.name, (counts.get(node.name) ?? 0) + 1);
    return counts;
  }

  /** Every stored device has a socket, held by its owner in the database. */
  settled(): boolean {
    for (const [key, row] of this.db.rows) {
      const holder = this.holders.get(key);
      if (!holder || row.conn.owner !== holder.leases.id) return false;
    }
    return true;
  }
}

const flush = async (): Promise<void> => {
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
};

/** One instance: the lease engine and a stand-in for the supervisor (sockets opened after `connectDelayMs`). */
export class Node implements OwnedConnections {
  readonly clock: ProcessClock;
  readonly link: MemoryLeaseStore;
  readonly leases: Leases;
  readonly logs = memoryLogger();
  readonly entries = new Map<string, Entry>();
  private readonly health = new SignalHealth();

  constructor(
    private readonly world: ClusterWorld,
    readonly name: string,
    public connectDelayMs: number,
    metrics?: Metrics,
  ) {
    this.clock = new ProcessClock(world.clock);
    this.link = world.db.link();
    const leaseMs = world.leaseSeconds * 1000;
    this.leases = new Leases(
      this.link,
      {
        leaseSeconds: world.leaseSeconds,
        name,
        version: 'v',
        pid: 1,
        reconcileMs: 30_000,
        handOverTimeoutMs: 2 * leaseMs,
        probeSignal: async () => !world.unreachable.has(name),
      },
      this.clock,
      this.logs.log,
      metrics,
      `${name}-id`,
    );
  }

  /** Log lines at warn (40) or above, their messages. */
  warnings(): string[] {
    return this.logs
      .lines()
      .map((l) => JSON.parse(l) as { level: number; msg: string })
      .filter((l) => l.level >= 40)
      .map((l) => l.msg);
  }

  /** kill -9: the sockets die with the process, and nothing of it runs again. */
  kill(): void {
    this.clock.pause();
    this.link.hold(true);
    for (const key of this.entries.keys()) this.world.close(key, this);
    this.entries.clear();
  }

  /** SIGSTOP: the sockets stay open on Signal's side; nothing runs until `thaw`. */
  freeze(): void {
    this.clock.pause();
    this.link.hold(true);
  }

  thaw(): void {
    this.link.hold(false);
    this.clock.resume();
  }

  /** Signal (or the network) drops this device's socket: it reconnects, with a second of backoff. */
  drop(key: ConnectionKey): void {
    const entry = this.entries.get(connectionKey(key));
    if (!entry || entry.state !== 'connected') return;
    this.world.close(connectionKey(key), this);
    this.world.db.publish(this.leases.id, key, 'backoff');
    entry.state = 'connecting';
    this.attemptLater(entry, 1_000);
  }

  connected(): number {
    return [...this.entries.values()].filter((e) => e.state === 'connected').length;
  }

  private attemptLater(entry: Entry, ms: number): void {
    this.clock.setTimeout(() => this.attempt(entry), ms);
  }

  private attempt(entry: Entry): void {
    const key = connectionKey(entry.conn);
    if (this.entries.get(key) !== entry || entry.state === 'connected') return;
    if (!this.leases.canConnect(entry.conn)) {
      entry.state = 'waiting';
      this.attemptLater(entry, 5_000); // the supervisor's backoff, in case leaseRegained never comes
      return;
    }
    if (this.world.unreachable.has(this.name)) {
      entry.state = 'failing';
      this.health.failed(key);
      this.world.db.publish(this.leases.id, entry.conn, 'backoff');
      this.attemptLater(entry, 1_000);
      return;
    }
    if (!this.world.db.live(this.leases.id) || this.world.db.owner(entry.conn) !== this.leases.id) {
      this.world.violations.push(`${this.name} opened ${key} without its lease or ownership`);
    }
    entry.state = 'connected';
    this.health.opened();
    this.world.open(key, this);
    this.world.db.publish(this.leases.id, entry.conn, 'connected');
    if (entry.wake) {
      entry.wake = false;
      this.world.pushes.push(key);
    }
  }

  /** Signal retired this socket (4409): a newer one of the device opened elsewhere. */
  replaced(key: string): void {
    const entry = this.entries.get(key);
    if (!entry) return;
    if (entry.handedOver || this.leases.expectsReplacement(entry.conn)) {
      this.entries.delete(key); // as planned: not reopened
      this.world.db.publish(this.leases.id, entry.conn, undefined);
      return;
    }
    entry.state = 'connecting';
    this.attemptLater(entry, 1_000);
  }

  reconcile(conns: Connection[]): void {
    const keys = new Set(conns.map(connectionKey));
    for (const conn of conns) this.sync(conn);
    for (const [key, entry] of [...this.entries]) if (!keys.has(key) && !entry.handedOver) this.remove(entry.conn);
  }

  sync(conn: Connection): void {
    const key = connectionKey(conn);
    const entry = this.entries.get(key);
    if (entry) {
      entry.conn = conn;
      entry.handedOver = false;
      return;
    }
    const fresh: Entry = { conn, state: 'connecting', handedOver: false, wake: false };
    this.entries.set(key, fresh);
    this.attemptLater(fresh, this.connectDelayMs);
  }

  remove(key: ConnectionKey): void {
    const k = connectionKey(key);
    if (!this.entries.delete(k)) return;
    this.health.forget(k);
    this.world.close(k, this);
    this.world.db.publish(this.leases.id, key, undefined);
  }

  handOver(key: ConnectionKey): void {
    const entry = this.entries.get(connectionKey(key));
    if (!entry) return;
    if (entry.state !== 'connected') return this.remove(key);
    entry.handedOver = true;
  }

  handingOver(): number {
    return [...this.entries.values()].filter((e) => e.handedOver).length;
  }

  owePush(key: ConnectionKey): void {
    const entry = this.entries.get(connectionKey(key));
    if (entry) entry.wake = true;
  }

  leaseRegained(): void {
    for (const entry of this.entries.values()) if (entry.state === 'waiting') this.attemptLater(entry, 0);
  }

  reachesSignal(): boolean {
    return this.health.reaching(this.connected(), this.entries.size);
  }
}
