import { randomUUID } from 'node:crypto';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { shortUuid } from '../log.js';
import { connectionKey, type Connection, type ConnectionKey } from '../store/store.js';
import type {InstanceRow, PostgresStore} from '../store/postgres.js';
import { LeaseClock } from './lease.js';
import type { OwnedConnections, Ownership } from './ownership.js';
import { bucketOf } from '../buckets.js';
import { assignBuckets, bucketsOf, handOvers, leaseTimings } from './shares.js';

export interface LeasesOptions {
  leaseSeconds: number;
  /** Stable across restarts (setting instance_name). */
  name: string;
  version: string;
  /** How often the whole owned set is read again, in case a notification was missed. */
  reconcileMs: number;
}

/**
 * Ownership on PostgreSQL: this instance's lease row, renewed every third of a lease; its fair share of the devices
 * (rendezvous buckets over the live instances); devices of dead instances taken once their lease ran out by the
 * database's clock; hand-over to a newcomer, or to the others at shutdown, make-before-break. The decisions are in
 * lease.ts and shares.ts; this is their I/O.
 */
export class Leases implements Ownership {
  readonly id = randomUUID();
  private readonly t: ReturnType<typeof leaseTimings>;
  private readonly lease: LeaseClock;
  /** The devices this instance owns, and their buckets. */
  private readonly owned = new Map<string, number>();
  /** Devices given to another instance, and when: the old socket here is expected to close with 4409. */
  private readonly handedOver = new Map<string, number>();
  private live: InstanceRow[] = [];
  private target: OwnedConnections | undefined;
  private listener: ReturnType<PostgresStore['listener']> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private soon: NodeJS.Timeout | undefined;
  private renewedAt = 0;
  private joinedAt = 0;
  private lastFullRead = -Infinity;
  private running: Promise<void> | undefined;
  private rerun: 'tick' | 'full' | undefined;
  private stopping = false;
  private renewFailing = false;

  constructor(
    private readonly store: PostgresStore,
    private readonly opts: LeasesOptions,
    private readonly log: Logger,
    private readonly metrics?: Metrics,
  ) {
    this.t = leaseTimings(opts.leaseSeconds);
    this.lease = new LeaseClock(this.t);
  }

  async start(target: OwnedConnections): Promise<void> {
    this.target = target;
    await this.join();
    this.listener = this.store.listener(
      (payload) => this.onNote(payload),
      () => this.request('full'), // (re)listening: whatever was announced meanwhile is read now
      (err) => this.log.warn({ err: err.message }, 'the PostgreSQL listener was lost; reconnecting'),
    );
    await this.run('full');
    this.schedule();
  }

  private async join(): Promise<void> {
    const sentAt = performance.now();
    await this.store.join({ id: this.id, name: this.opts.name, pid: process.pid, version: this.opts.version }, this.t.leaseMs);
    this.store.instance = this.id;
    this.joinedAt = performance.now();
    this.renewedAt = this.joinedAt;
    this.lease.renewed(sentAt, this.joinedAt);
    this.log.info({ instance: this.id, name: this.opts.name, leaseSeconds: this.opts.leaseSeconds }, 'joined the cluster');
  }

  private schedule(): void {
    this.timer = setTimeout(() => {
      this.request('tick');
      if (!this.stopping) this.schedule();
    }, this.t.renewMs);
  }

  /** Runs a tick now, or right after the one under way (ticks never overlap). */
  private request(kind: 'tick' | 'full'): void {
    if (this.running) {
      if (this.rerun !== 'full') this.rerun = kind;
      return;
    }
    void this.run(kind);
  }

  private async run(kind: 'tick' | 'full'): Promise<void> {
    this.running = this.tick(kind === 'full').catch((err: Error) => this.log.warn({ err: err.message }, 'lease tick failed'));
    await this.running;
    this.running = undefined;
    const again = this.rerun;
    this.rerun = undefined;
    if (again) void this.run(again);
  }

  private async tick(full: boolean): Promise<void> {
    if (!(await this.renew())) return;
    if (this.stopping) return;
    const qt = this.t.queryTimeoutMs;
    this.listener?.ping(qt).catch(() => {}); // a dead listener reconnects, then reads everything again
    const instances = await this.store.instances({ timeoutMs: qt });
    const now = performance.now();
    if (instances.some((i) => !i.live) && this.lease.mayReap(now)) {
      const reaped = await this.store.reap(qt);
      if (reaped.length > 0) this.log.warn({ instances: reaped }, 'took over from instances whose lease ran out');
    }
    // The members that share the devices: live, and not stopping (this one counts itself while it runs).
    this.live = instances.filter((i) => i.live && !i.leaving && i.id !== this.id).concat(instances.filter((i) => i.id === this.id));
    // A peer's lease running out before the next tick: look again right then, so that failover does not wait a tick.
    const nextExpiry = Math.min(...this.live.filter((i) => i.id !== this.id).map((i) => i.leaseLeftMs));
    if (nextExpiry < this.t.renewMs) this.later(Math.max(0, nextExpiry) + 50);

    const owners = assignBuckets(this.live);
    for (const [to, buckets] of handOvers(owners, this.id, new Set(this.owned.values()))) {
      const moved = await this.store.handOver(this.id, to, buckets, qt);
      for (const key of moved) this.givenAway(key);
      if (moved.length > 0) {
        this.metrics?.leases.inc({ event: 'handed_over' }, moved.length);
        this.log.info({ to, devices: moved.length }, 'handed devices over to another instance');
        this.log.debug({ to, devices: moved.map((k) => shortKey(connectionKey(k))) }, 'handed over');
      }
    }
    // Right after joining, give the others one renewal period to notice this instance, so that of several starting
    // together the first one up does not take everything only to hand most of it over again.
    const settled = now - this.joinedAt >= this.t.renewMs;
    if (settled && this.lease.valid(performance.now())) {
      const claimed = await this.store.claim(this.id, bucketsOf(owners, this.id), qt);
      if (claimed.length > 0) {
        this.metrics?.leases.inc({ event: 'claimed' }, claimed.length);
        this.log.info({ devices: claimed.length }, 'claimed devices');
        this.log.debug({ devices: claimed.map((c) => shortKey(connectionKey(c.conn))) }, 'claimed');
      }
      for (const { conn, owedWake } of claimed) {
        this.take(conn);
        if (owedWake) this.target?.owePush(conn);
      }
    }
    if (full || now - this.lastFullRead >= this.opts.reconcileMs) await this.readOwned();
  }

  /** Renews the lease; false when this tick can do nothing more (the database did not answer). */
  private async renew(): Promise<boolean> {
    const sentAt = performance.now();
    let held: boolean;
    try {
      held = await this.store.renew(this.id, this.t.leaseMs, this.t.queryTimeoutMs);
    } catch (err) {
      this.lease.failed();
      if (!this.renewFailing) {
        this.log.warn({ err }, 'cannot renew the lease: keeping the open sockets, opening no new ones until PostgreSQL answers');
      }
      this.renewFailing = true;
      return false;
    }
    if (this.renewFailing) this.log.info('PostgreSQL answers again: lease renewed');
    this.renewFailing = false;
    if (held) {
      this.renewedAt = performance.now();
      this.lease.renewed(sentAt, this.renewedAt);
      return true;
    }
    // Reaped: the others judged this instance dead. Its sockets stay until the new owners' replace them.
    this.lease.lost();
    this.log.warn({ devices: this.owned.size }, 'the lease ran out and the others took these devices over; joining again');
    this.metrics?.leases.inc({ event: 'lost' }, this.owned.size);
    for (const key of [...this.owned.keys()]) this.givenAway(keyOf(key));
    if (this.stopping) return false;
    await this.join();
    return true;
  }

  private async readOwned(): Promise<void> {
    const owned = await this.store.owned(this.id, this.t.queryTimeoutMs);
    this.lastFullRead = performance.now();
    // A hand-over is over within a few leases (the socket closed, or the supervisor gave up on it): forget it then.
    const remembered = Math.max(HAND_OVER_REMEMBERED_MS, 4 * this.opts.leaseSeconds * 1000);
    for (const [key, at] of this.handedOver) if (this.lastFullRead - at > remembered) this.handedOver.delete(key);
    const now = new Set(owned.map(connectionKey));
    const gone = [...this.owned.keys()].filter((key) => !now.has(key));
    const added = [...now].filter((key) => !this.owned.has(key));
    if (gone.length + added.length > 0) this.log.debug({ gone: gone.map(shortKey), added: added.map(shortKey) }, 'owned devices read');
    for (const key of gone) this.owned.delete(key);
    for (const c of owned) {
      this.owned.set(connectionKey(c), bucketOf(c.uuid, c.deviceId));
      this.handedOver.delete(connectionKey(c));
    }
    this.target?.reconcile(owned);
  }

  private take(conn: Connection): void {
    const key = connectionKey(conn);
    this.owned.set(key, bucketOf(conn.uuid, conn.deviceId));
    this.handedOver.delete(key);
    this.target?.sync(conn);
  }

  private givenAway(key: ConnectionKey): void {
    this.owned.delete(connectionKey(key));
    this.handedOver.set(connectionKey(key), performance.now());
    this.target?.handOver(key);
  }

  private later(ms: number): void {
    if (this.soon !== undefined) return;
    this.soon = setTimeout(() => {
      this.soon = undefined;
      if (!this.stopping) this.request('tick');
    }, ms);
  }

  /** `changed:<uuid>.<device>`: re-read that row; anything else (`owners`): ownership moved, read it all again. */
  private onNote(payload: string): void {
    if (this.stopping) return;
    const m = /^changed:(.+)\.(\d+)$/.exec(payload);
    if (!m) return this.request('full');
    const key = { uuid: m[1]!, deviceId: Number(m[2]) };
    void this.store.get(key).then(
      (conn) => {
        const k = connectionKey(key);
        if (conn?.owner === this.id) return this.take(conn);
        if (this.owned.has(k) && !conn) {
          this.owned.delete(k);
          this.target?.remove(key);
          this.log.info({ uuid: shortUuid(key.uuid), device: key.deviceId }, 'connection removed');
          return;
        }
        if (conn && conn.owner === null) this.request('tick'); // new: its bucket's owner claims it
      },
      (err: Error) => this.log.warn({ err: err.message }, 'cannot read a changed connection'),
    );
  }

  canConnect(conn: Connection): boolean {
    return this.owned.has(connectionKey(conn)) && this.lease.valid(performance.now());
  }

  expectsReplacement(key: ConnectionKey): boolean {
    return this.handedOver.has(connectionKey(key)) || !this.lease.valid(performance.now());
  }

  /**
   * Hands every device to the other live instances (they connect, Signal retires the sockets here), waits up to
   * `timeoutMs` for that, then gives up the lease row: whatever is left is free for the others at once.
   */
  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    await this.running;
    const deadline = performance.now() + timeoutMs;
    try {
      await this.store.leaving(this.id);
      const others = (await this.store.instances({ timeoutMs: this.t.queryTimeoutMs })).filter((i) => i.live && !i.leaving && i.id !== this.id);
      if (others.length > 0 && this.owned.size > 0) {
        const owners = assignBuckets(others);
        let handed = 0;
        for (const [to, buckets] of handOvers(owners, this.id, new Set(this.owned.values()))) {
          const moved = await this.store.handOver(this.id, to, buckets, this.t.queryTimeoutMs);
          for (const key of moved) this.givenAway(key);
          this.metrics?.leases.inc({ event: 'handed_over' }, moved.length);
          handed += moved.length;
        }
        this.log.info({ devices: handed, instances: others.length }, 'handing every device over before stopping');
        // Keep the lease meanwhile: a lapse here would look like a crash to the others.
        while ((this.target?.handingOver() ?? 0) > 0 && performance.now() < deadline) {
          if (performance.now() - this.renewedAt >= this.t.renewMs) await this.renew();
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    } catch (err) {
      this.log.warn({ err }, 'cannot hand the devices over; the others take them when this lease is gone');
    }
    clearTimeout(this.timer);
    clearTimeout(this.soon);
    await this.listener?.close();
    try {
      await this.store.leave(this.id);
      this.metrics?.leases.inc({ event: 'released' }, this.owned.size);
    } catch (err) {
      this.log.warn({ err }, 'cannot give up the lease; the others take over once it runs out');
    }
  }

  describe(): { instance: string; owned: number; liveInstances: number } {
    return { instance: this.id, owned: this.owned.size, liveInstances: this.live.length };
  }
}

/** Far longer than any hand-over takes (the supervisor gives up on one after two leases, at least 10 s); at least four leases. */
const HAND_OVER_REMEMBERED_MS = 10 * 60_000;

const keyOf = (key: string): ConnectionKey => {
  const dot = key.lastIndexOf('.');
  return { uuid: key.slice(0, dot), deviceId: Number(key.slice(dot + 1)) };
};

/** `6e3b5c1a….2`: enough to follow a device through the debug log. */
const shortKey = (key: string): string => {
  const { uuid, deviceId } = keyOf(key);
  return `${shortUuid(uuid)}.${deviceId}`;
};
