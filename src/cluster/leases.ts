import { randomUUID } from 'node:crypto';
import type { Clock, TimerHandle } from '../clock.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { shortUuid } from '../log.js';
import { connectionKey, type Connection, type ConnectionKey } from '../store/store.js';
import { handOverStep } from './hand-over.js';
import { LeaseClock } from './lease.js';
import { RENEWALS_IN_FLIGHT, type Claimed, type InstanceRow, type LeaseStore, type NoteListener } from './lease-store.js';
import type { OwnedConnections, Ownership } from './ownership.js';
import { bucketOf } from '../buckets.js';
import { assignBuckets, bucketsOf, handOvers, leaseTimings, type Member } from './shares.js';
import { signalMove } from './signal-health.js';

export interface LeasesOptions {
  leaseSeconds: number;
  /** Stable across restarts (setting instance_name). */
  name: string;
  version: string;
  pid: number;
  /** How often the whole owned set is read again, in case a notification was missed. */
  reconcileMs: number;
  /** A handed-over socket whose new owner is gone (its lease lapsed) is closed after this long. */
  handOverTimeoutMs: number;
  /** Whether Signal answers from here: asked while this instance stays away for want of it. */
  probeSignal(): Promise<boolean>;
}

/** Renewals in a row whose self-notification did not arrive before notifications count as lost. */
const PINGS_MISSED = 2;

/**
 * Ownership on PostgreSQL: this instance's lease row, renewed every third of a lease; its fair share of the devices
 * (rendezvous buckets over the live instances); devices of dead instances taken once their lease ran out by the
 * database's clock; hand-over to a newcomer, to the others at shutdown, or when this instance cannot reach Signal,
 * make-before-break. The decisions are in lease.ts, shares.ts, hand-over.ts and signal-health.ts; the queries behind
 * `LeaseStore`; this is the I/O between them, on the injected clock.
 *
 * Renewals run on their own timer, never behind a slow tick, and each confirmed one counts from when it was sent,
 * however late its answer. Whenever an answer is uncertain (a query failed: it may have committed), the next tick
 * reads again everything this instance owns.
 */
export class Leases implements Ownership {
  readonly id: string;
  private readonly t: ReturnType<typeof leaseTimings>;
  private readonly lease: LeaseClock;
  /** The devices this instance owns, and their buckets. */
  private readonly owned = new Map<string, number>();
  /** Devices given to another instance, and when: the old socket here stays until the new owner's is open. */
  private readonly handedOver = new Map<string, number>();
  /** Buckets of a hand-over sent and not answered yet: the new owner may connect before the answer comes. */
  private readonly handingOver = new Set<number>();
  private live: Member[] = [];
  private target: OwnedConnections | undefined;
  private listener: NoteListener | undefined;
  private renewTimer: TimerHandle | undefined;
  private soon: TimerHandle | undefined;
  private joinedAt = 0;
  private lastFullRead = -Infinity;
  private running: Promise<void> | undefined;
  private rerun: 'tick' | 'full' | undefined;
  private stopping = false;
  private closed = false;
  private renewFailing = false;
  private renewalsInFlight = 0;
  /** Raised at every join: an answer about an earlier row is ignored. */
  private generation = 0;
  private joining: Promise<void> | undefined;
  private needsJoin = false;
  /** Some answer was lost (it may have committed): read the owned set again at the next tick. */
  private uncertain = false;
  /** Something may have left rows of this instance's buckets unowned: claim at the next tick that may. */
  private claimWanted = true;
  /** The members of the last tick, to notice a change of shares. */
  private membersSeen = '';
  /**
   * Reaped and joined again: it stays `leaving` (takes no share) until it has renewed without a break for a whole
   * lease, so that an instance on a link still too slow does not take its share back only to lose it again.
   */
  private rejoined = false;
  /** What this instance's row says of `leaving`, as last written. */
  private markedLeaving = false;
  // Whether notifications arrive: each renewal notifies this instance itself.
  private pingSent = 0;
  private pingConfirmed = 0;
  private pingSeen = 0;
  private pingsMissed = 0;
  private notesLost = false;
  private notesWarned = false;
  private listening = false;
  /** The first self-notification sent since the listener last (re)started: earlier ones cannot have been heard. */
  private pingListenedFrom = Infinity;
  // Left for want of Signal (marked leaving), and what the last probe said.
  private away = false;
  private probeOk = false;
  private probing = false;
  /** Since when Signal is out of reach from here only: one renewal period later it leaves (the others publish theirs meanwhile). */
  private unreachableSince: number | undefined;

  constructor(
    private readonly store: LeaseStore,
    private readonly opts: LeasesOptions,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly metrics?: Metrics,
    id: string = randomUUID(),
  ) {
    this.id = id;
    this.t = leaseTimings(opts.leaseSeconds);
    this.lease = new LeaseClock(this.t);
  }

  async start(target: OwnedConnections): Promise<void> {
    this.target = target;
    await this.join();
    this.listener = this.store.listen({
      onNote: (payload) => this.onNote(payload),
      onListening: () => {
        this.listening = true;
        this.pingListenedFrom = this.pingSent + 1;
        this.request('full'); // whatever was announced meanwhile is read now
      },
      onLost: (err) => {
        // Once per loss: it retries every second while PostgreSQL is away.
        if (this.listening) this.log.warn({ err: err.message }, 'the PostgreSQL listener was lost; reconnecting (changes are read at every renewal meanwhile)');
        this.listening = false;
      },
    });
    this.metrics?.watchLease(() => this.lease.remainingMs(this.clock.now()) / 1000);
    await this.run('full');
    this.scheduleRenewal();
  }

  private async join(): Promise<void> {
    const sentAt = this.clock.now();
    await this.store.join({ id: this.id, name: this.opts.name, pid: this.opts.pid, version: this.opts.version }, this.t.leaseMs, this.rejoined);
    this.markedLeaving = this.rejoined;
    this.generation++;
    this.joinedAt = this.clock.now();
    this.lease.renewed(sentAt, this.joinedAt);
    this.away = false;
    this.log.info({ instance: this.id, name: this.opts.name, leaseSeconds: this.opts.leaseSeconds }, 'joined the cluster');
  }

  /** Joins again with the same id (the reap deleted the row and freed its devices in one transaction). */
  private rejoin(): void {
    if (this.joining || this.stopping) return;
    this.needsJoin = false;
    this.joining = this.join().then(
      () => {
        this.joining = undefined;
        this.target?.leaseRegained();
        this.request('full');
      },
      (err: Error) => {
        this.joining = undefined;
        this.needsJoin = true; // tried again at the next renewal
        this.log.warn({ err: err.message }, 'cannot join the cluster again yet');
      },
    );
  }

  private scheduleRenewal(): void {
    this.renewTimer = this.clock.setTimeout(() => {
      if (this.closed) return;
      if (this.needsJoin) this.rejoin();
      else this.renew();
      this.scheduleRenewal();
    }, this.t.renewMs);
  }

  /** Sends a renewal, without waiting for the one before (at most `RENEWALS_IN_FLIGHT` under way). */
  private renew(): void {
    if (this.joining || this.renewalsInFlight >= RENEWALS_IN_FLIGHT) return;
    const sentAt = this.clock.now();
    const generation = this.generation;
    const ping = ++this.pingSent;
    this.renewalsInFlight++;
    this.store
      .renew(this.id, this.t.leaseMs, { reachesSignal: this.reachesSignal(), ping: `ping:${this.id}:${ping}` })
      .then(
        (held) => {
          this.renewalsInFlight--;
          if (generation === this.generation) this.renewed(held, sentAt, ping);
        },
        (err: Error) => {
          this.renewalsInFlight--;
          this.renewFailed(err);
        },
      )
      .catch((err: Error) => this.log.error({ err }, 'lease renewal step failed'));
  }

  private renewed(held: boolean, sentAt: number, ping: number): void {
    const now = this.clock.now();
    if (!held) return this.reaped();
    const wasValid = this.lease.valid(now);
    this.lease.renewed(sentAt, now);
    if (this.renewFailing) this.log.info('PostgreSQL answers again: lease renewed');
    this.renewFailing = false;
    this.checkNotes(ping);
    if (!wasValid && this.lease.valid(now)) this.target?.leaseRegained();
    this.request('tick');
  }

  private renewFailed(err: Error): void {
    this.lease.failed();
    if (!this.renewFailing) {
      this.log.warn({ err }, 'cannot renew the lease: keeping the open sockets, opening no new ones once it lapses, until PostgreSQL answers');
    }
    this.renewFailing = true;
  }

  /** Reaped: the others judged this instance dead. Its sockets stay until the new owners' replace them. */
  private reaped(): void {
    if (this.joining) return;
    this.lease.lost();
    this.log.warn({ devices: this.owned.size }, 'the lease ran out and the others took these devices over; joining again');
    this.metrics?.leases.inc({ event: 'lost' }, this.owned.size);
    for (const key of [...this.owned.keys()]) this.givenAway(keyOf(key));
    this.rejoined = true;
    this.rejoin();
  }

  /**
   * The self-notification of the renewal confirmed before this one should have arrived by now; when it has not
   * twice in a row (PgBouncer in transaction mode drops them), changes are polled at every renewal instead.
   */
  private checkNotes(ping: number): void {
    const expected = this.pingConfirmed;
    this.pingConfirmed = Math.max(this.pingConfirmed, ping);
    if (!this.listening || expected < this.pingListenedFrom || this.pingSeen >= expected) return;
    this.listener?.ping().catch(() => {}); // a dead session stays silent: this reconnects it, and everything is read again
    if (++this.pingsMissed < PINGS_MISSED || this.notesLost) return;
    this.notesLost = true;
    if (this.notesWarned) return;
    this.notesWarned = true;
    this.log.warn(
      'notifications from PostgreSQL do not arrive (LISTEN through PgBouncer in transaction mode, say): set db_listen_url to a direct ' +
        'connection; meanwhile every renewal reads the owned devices again, so hand-overs and changes wait up to a renewal period',
    );
  }

  /** Runs a tick now, or right after the one under way (ticks never overlap). */
  private request(kind: 'tick' | 'full'): void {
    if (this.stopping) return;
    if (this.running) {
      if (this.rerun !== 'full') this.rerun = kind;
      return;
    }
    void this.run(kind);
  }

  private async run(kind: 'tick' | 'full'): Promise<void> {
    this.running = this.tick(kind === 'full').catch((err: Error) => {
      this.uncertain = true; // it may have committed: read everything again next time
      this.log.warn({ err: err.message }, 'lease tick failed');
    });
    await this.running;
    this.running = undefined;
    const again = this.rerun;
    this.rerun = undefined;
    if (again) this.request(again);
  }

  private async tick(full: boolean): Promise<void> {
    if (this.stopping || this.joining || this.needsJoin) return;
    const polling = this.notesLost || !this.listening;
    const reconcile = full || polling || this.uncertain || this.clock.now() - this.lastFullRead >= this.opts.reconcileMs;
    const instances = await this.store.instances();
    const now = this.clock.now();
    if (instances.some((i) => !i.live) && this.lease.mayReap(now)) {
      const reaped = await this.store.reap();
      if (reaped.length > 0) {
        this.log.warn({ instances: reaped }, 'took over from instances whose lease ran out');
        this.claimWanted = true;
      }
    }
    const others = instances.filter((i) => i.live && !i.leaving && i.id !== this.id);
    await this.followSignal(others);
    if (this.rejoined && this.lease.mayReap(now)) {
      this.rejoined = false;
      this.log.info('renewed without a break for a whole lease since joining again: taking a share of the devices again');
    }
    await this.markLeaving(this.away || this.rejoined);
    // The members that share the devices: live, and not leaving (this one counts itself unless it left).
    this.live = this.markedLeaving ? others : [...others, { id: this.id, name: this.opts.name }];
    const members = this.live
      .map((m) => m.id)
      .sort()
      .join(' ');
    if (members !== this.membersSeen || reconcile) this.claimWanted = true;
    this.membersSeen = members;
    // A peer's lease running out before the next tick: look again right then, so that failover does not wait a tick.
    const nextExpiry = Math.min(...others.map((i) => i.leaseLeftMs));
    if (nextExpiry < this.t.renewMs) this.later(Math.max(0, nextExpiry) + 50);

    if (this.live.length > 0) {
      const owners = assignBuckets(this.live);
      await this.handOverTo(owners);
      // Right after joining, give the others one renewal period to notice this instance, so that of several starting
      // together the first one up does not take everything only to hand most of it over again.
      const settled = now - this.joinedAt >= this.t.renewMs;
      if (settled && this.claimWanted && !this.markedLeaving && this.lease.valid(this.clock.now())) {
        this.claimWanted = false; // before: a row announced while the claim runs asks for another (a failure re-reads)
        await this.claim(bucketsOf(owners, this.id));
      }
    }
    if (reconcile) await this.readOwned();
    await this.checkHandOvers();
  }

  /** Writes `leaving` when it changes: marked, the others stop counting this instance and hand it nothing. */
  private async markLeaving(leaving: boolean): Promise<void> {
    if (leaving === this.markedLeaving) return;
    await this.store.setLeaving(this.id, leaving);
    this.markedLeaving = leaving;
  }

  private async handOverTo(owners: readonly string[]): Promise<number> {
    let handed = 0;
    for (const [to, buckets] of handOvers(owners, this.id, new Set(this.owned.values()))) {
      for (const b of buckets) this.handingOver.add(b);
      let moved: ConnectionKey[];
      try {
        moved = await this.store.handOver(this.id, to, buckets);
      } finally {
        for (const b of buckets) this.handingOver.delete(b);
      }
      for (const key of moved) this.givenAway(key);
      handed += moved.length;
      if (moved.length > 0) {
        this.metrics?.leases.inc({ event: 'handed_over' }, moved.length);
        this.log.info({ to, devices: moved.length }, 'handed devices over to another instance');
        this.log.debug({ to, devices: moved.map((k) => shortKey(connectionKey(k))) }, 'handed over');
      }
    }
    return handed;
  }

  private async claim(buckets: number[]): Promise<void> {
    const claimed = await this.store.claim(this.id, buckets);
    if (claimed.length === 0) return;
    this.metrics?.leases.inc({ event: 'claimed' }, claimed.length);
    this.log.info({ devices: claimed.length }, 'claimed devices');
    this.log.debug({ devices: claimed.map((c) => shortKey(connectionKey(c.conn))) }, 'claimed');
    for (const { conn } of claimed) this.take(conn);
    await this.owe(claimed);
  }

  /**
   * Leaves when this instance's sockets cannot reach Signal while another's can (its devices go to them,
   * make-before-break, as at shutdown), and comes back once a probe reaches Signal again.
   */
  private async followSignal(others: readonly InstanceRow[]): Promise<void> {
    if (this.away) {
      this.probe();
      if (signalMove(true, this.probeOk, others) !== 'return') return;
      this.away = false;
      this.unreachableSince = undefined;
      this.log.warn('Signal answers again: taking a share of the devices again');
      return;
    }
    const now = this.clock.now();
    if (signalMove(false, this.target?.reachesSignal() ?? true, others) !== 'leave') {
      this.unreachableSince = undefined;
      return;
    }
    this.unreachableSince ??= now;
    if (now - this.unreachableSince < this.t.renewMs) return;
    await this.markLeaving(true);
    this.away = true;
    this.probeOk = false;
    this.log.warn(
      { devices: this.owned.size, reaching: others.filter((o) => o.reachesSignal).length },
      'cannot reach Signal while other instances can: handing the devices over to them until Signal answers here again',
    );
  }

  /** Asks whether Signal answers from here, in the background (an unanswered probe must not hold up the ticks). */
  private probe(): void {
    if (this.probing) return;
    this.probing = true;
    void this.opts
      .probeSignal()
      .catch(() => false)
      .then((ok) => {
        this.probing = false;
        this.probeOk = ok;
        if (ok && this.away) this.request('tick');
      });
  }

  /** Closes the old sockets of handed-over devices whose new owner has its own open, or is gone (see `handOverStep`). */
  private async checkHandOvers(): Promise<void> {
    if (this.handedOver.size === 0) return;
    const states = await this.store.handOverStates([...this.handedOver.keys()].map(keyOf));
    const now = this.clock.now();
    for (const state of states) {
      const key = connectionKey(state.key);
      const at = this.handedOver.get(key);
      if (at === undefined) continue;
      const step = handOverStep(state, this.id, now - at, this.opts.handOverTimeoutMs);
      if (step === 'wait') continue;
      this.handedOver.delete(key);
      if (step === 'take')
        this.uncertain = true; // ours again: the full read takes it back
      else this.target?.remove(state.key);
    }
  }

  private async readOwned(): Promise<void> {
    const rows = await this.store.owned(this.id);
    this.lastFullRead = this.clock.now();
    this.uncertain = false;
    const now = new Set(rows.map((r) => connectionKey(r.conn)));
    // Moved (or removed) without this instance hearing of it: its socket stays until the hand-over check decides.
    for (const key of [...this.owned.keys()]) if (!now.has(key)) this.givenAway(keyOf(key));
    const added = rows.filter((r) => !this.owned.has(connectionKey(r.conn)));
    if (added.length > 0) this.log.debug({ added: added.map((r) => shortKey(connectionKey(r.conn))) }, 'owned devices read');
    for (const { conn } of rows) {
      this.owned.set(connectionKey(conn), bucketOf(conn.uuid, conn.deviceId));
      this.handedOver.delete(connectionKey(conn));
    }
    this.target?.reconcile(rows.map((r) => r.conn));
    await this.owe(added);
  }

  /**
   * One wake-up push, once connected, for each newly owned row whose former owner died: the row keeps the debt until
   * this instance has recorded it, so an answer lost on the way loses no wake-up.
   */
  private async owe(rows: Claimed[]): Promise<void> {
    const owed = rows.filter((r) => r.owedWake).map((r) => r.conn);
    for (const conn of owed) this.target?.owePush(conn);
    if (owed.length > 0)
      await this.store.woken(
        this.id,
        owed.map((c) => ({ uuid: c.uuid, deviceId: c.deviceId })),
      );
  }

  private take(conn: Connection): void {
    const key = connectionKey(conn);
    this.owned.set(key, bucketOf(conn.uuid, conn.deviceId));
    this.handedOver.delete(key);
    this.target?.sync(conn);
  }

  private givenAway(key: ConnectionKey): void {
    this.owned.delete(connectionKey(key));
    this.handedOver.set(connectionKey(key), this.clock.now());
    this.target?.handOver(key);
  }

  private later(ms: number): void {
    if (this.soon !== undefined) return;
    this.soon = this.clock.setTimeout(() => {
      this.soon = undefined;
      this.request('tick');
    }, ms);
  }

  /**
   * `changed:<uuid>.<device>`: re-read that row; `ping:<instance>:<n>`: a renewal's self-notification; anything
   * else (`owners`): ownership moved, read it all again.
   */
  private onNote(payload: string): void {
    if (this.stopping) return;
    const ping = /^ping:(.+):(\d+)$/.exec(payload);
    if (ping) {
      if (ping[1] !== this.id) return;
      this.pingSeen = Math.max(this.pingSeen, Number(ping[2]));
      this.pingsMissed = 0;
      if (this.notesLost) this.log.info('notifications from PostgreSQL arrive again');
      this.notesLost = false;
      return;
    }
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
        if (conn && conn.owner === null) {
          this.claimWanted = true; // new: its bucket's owner claims it
          this.request('tick');
        }
      },
      (err: Error) => this.log.warn({ err: err.message }, 'cannot read a changed connection'),
    );
  }

  canConnect(conn: Connection): boolean {
    return this.owned.has(connectionKey(conn)) && this.lease.valid(this.clock.now());
  }

  expectsReplacement(key: ConnectionKey): boolean {
    const k = connectionKey(key);
    return this.handedOver.has(k) || this.handingOver.has(this.owned.get(k) ?? -1) || !this.lease.valid(this.clock.now());
  }

  /** What this instance says of Signal at its renewals: its sockets' view, or while away the last probe's. */
  private reachesSignal(): boolean {
    return this.away ? this.probeOk : (this.target?.reachesSignal() ?? true);
  }

  /**
   * Hands every device to the other live instances (they connect, Signal retires the sockets here), waits up to
   * `timeoutMs` for that, then gives up the lease row: whatever is left is free for the others at once.
   */
  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    this.clock.clearTimeout(this.soon);
    await this.running;
    const deadline = this.clock.now() + timeoutMs;
    try {
      await this.store.setLeaving(this.id, true);
      const others = (await this.store.instances()).filter((i) => i.live && !i.leaving && i.id !== this.id);
      if (others.length > 0 && this.owned.size > 0) {
        const handed = await this.handOverTo(assignBuckets(others));
        this.log.info({ devices: handed, instances: others.length }, 'handing every device over before stopping');
        // The renewals go on meanwhile: a lapse here would look like a crash to the others.
        let checkedAt = this.clock.now();
        while ((this.target?.handingOver() ?? 0) > 0 && this.clock.now() < deadline) {
          await new Promise((r) => this.clock.setTimeout(() => r(undefined), 50));
          if (this.clock.now() - checkedAt < this.t.renewMs) continue;
          checkedAt = this.clock.now();
          await this.checkHandOvers().catch(() => {});
        }
      }
    } catch (err) {
      this.log.warn({ err }, 'cannot hand the devices over; the others take them when this lease is gone');
    }
    this.closed = true;
    this.clock.clearTimeout(this.renewTimer);
    await this.listener?.close();
    try {
      await this.store.leave(this.id);
      this.metrics?.leases.inc({ event: 'released' }, this.owned.size);
    } catch (err) {
      this.log.warn({ err }, 'cannot give up the lease; the others take over once it runs out');
    }
    await this.store.close();
  }

  describe(): { instance: string; owned: number; liveInstances: number } {
    return { instance: this.id, owned: this.owned.size, liveInstances: this.live.length };
  }
}

const keyOf = (key: string): ConnectionKey => {
  const dot = key.lastIndexOf('.');
  return { uuid: key.slice(0, dot), deviceId: Number(key.slice(dot + 1)) };
};

/** `6e3b5c1a….2`: enough to follow a device through the debug log. */
const shortKey = (key: string): string => {
  const { uuid, deviceId } = keyOf(key);
  return `${shortUuid(uuid)}.${deviceId}`;
};
