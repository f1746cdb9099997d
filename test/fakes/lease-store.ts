import type { Clock } from '../../src/clock.js';
import type { Claimed, HandOverState, InstanceRow, LeaseStore, NoteHandlers, NoteListener, Renewal } from '../../src/cluster/lease-store.js';
import { bucketOf } from '../../src/buckets.js';
import { connectionKey, type Connection, type ConnectionKey, type NewConnection } from '../../src/store/store.js';

interface InstanceData {
  id: string;
  name: string;
  pid: number;
  version: string;
  startedAt: number;
  leaseUntil: number;
  renewedAt: number;
  leaving: boolean;
  reachesSignal: boolean;
}

/**
 * The lease tables in memory, with the database's clock being the (manual) clock the test drives: what the
 * PostgreSQL lease store does, statement for statement, without a server. Instances reach it through links
 * (`link()`), whose answers can be delayed, lost or refused.
 */
export class MemoryDatabase {
  readonly instances = new Map<string, InstanceData>();
  readonly rows = new Map<string, { conn: Connection; bucket: number; owedWake: boolean }>();
  /** `<instance> <uuid>.<device>` → the state that instance published. */
  readonly liveStates = new Map<string, string>();
  private readonly listeners = new Set<{ link: MemoryLeaseStore; handlers: NoteHandlers }>();
  statements = 0;
  /** Statements by lease-store method. */
  readonly calls = new Map<string, number>();

  constructor(readonly clock: Clock) {}

  link(): MemoryLeaseStore {
    return new MemoryLeaseStore(this);
  }

  add(c: NewConnection): void {
    const conn: Connection = {
      ...c,
      forbidden: false,
      forbiddenReason: null,
      forbiddenAt: null,
      lastRegistration: 0,
      createdAt: 0,
      updatedAt: 0,
      owner: null,
      epoch: 0,
    };
    this.rows.set(connectionKey(c), { conn, bucket: bucketOf(c.uuid, c.deviceId), owedWake: false });
    this.notify(`changed:${connectionKey(c)}`);
  }

  remove(key: ConnectionKey): void {
    this.rows.delete(connectionKey(key));
    this.notify(`changed:${connectionKey(key)}`);
  }

  owner(key: ConnectionKey): string | null | undefined {
    return this.rows.get(connectionKey(key))?.conn.owner;
  }

  live(id: string): boolean {
    const i = this.instances.get(id);
    return i !== undefined && i.leaseUntil > this.clock.now();
  }

  publish(instance: string, key: ConnectionKey, state: string | undefined): void {
    if (state === undefined) this.liveStates.delete(`${instance} ${connectionKey(key)}`);
    else this.liveStates.set(`${instance} ${connectionKey(key)}`, state);
  }

  /** Delivered at commit, a moment later, to every listening link whose notifications are not dropped. */
  notify(payload: string): void {
    for (const l of this.listeners) {
      if (l.link.notesDropped) continue;
      l.link.deliver(() => l.handlers.onNote(payload));
    }
  }

  listen(link: MemoryLeaseStore, handlers: NoteHandlers): () => void {
    const entry = { link, handlers };
    this.listeners.add(entry);
    return () => this.listeners.delete(entry);
  }

  instanceRows(): InstanceRow[] {
    const now = this.clock.now();
    return [...this.instances.values()].map((i) => ({
      id: i.id,
      name: i.name,
      pid: i.pid,
      version: i.version,
      startedAt: i.startedAt,
      live: i.leaseUntil > now,
      leaving: i.leaving,
      reachesSignal: i.reachesSignal,
      leaseLeftMs: i.leaseUntil - now,
      renewedAgoMs: now - i.renewedAt,
      owned: undefined,
    }));
  }
}

/**
 * One instance's way to the database. A statement reaches it after `requestDelayMs` and is applied there; its answer
 * comes back `answerDelayMs` later, or is lost (`loseAnswers`: committed, yet the caller sees an error). `down`:
 * nothing reaches the database, and every statement fails. `hold`: a frozen process, which handles nothing until
 * released.
 */
export class MemoryLeaseStore implements LeaseStore {
  requestDelayMs = 0;
  answerDelayMs = 0;
  loseAnswers = false;
  down = false;
  /** Notifications never arrive (PgBouncer in transaction mode). */
  notesDropped = false;
  private held: (() => void)[] | undefined;
  private readonly loseNextOf = new Map<string, (result: unknown) => boolean>();

  constructor(readonly db: MemoryDatabase) {}

  /** The next answer of this method (that `when` picks) is lost: the statement commits, the caller sees an error. */
  loseNext(method: keyof LeaseStore, when: (result: unknown) => boolean = () => true): void {
    this.loseNextOf.set(method, when);
  }

  /** Freezes (true) or thaws (false) what this link hands to its instance. */
  hold(on: boolean): void {
    if (on) this.held ??= [];
    else {
      const queued = this.held ?? [];
      this.held = undefined;
      for (const fn of queued) fn();
    }
  }

  deliver(fn: () => void): void {
    this.db.clock.setTimeout(() => (this.held ? this.held.push(fn) : fn()), 1);
  }

  private call<T>(method: keyof LeaseStore, op: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const exec = (): void => {
        if (this.down) return this.deliver(() => reject(new Error('connect ECONNREFUSED')));
        this.db.statements++;
        this.db.calls.set(method, (this.db.calls.get(method) ?? 0) + 1);
        let result: T;
        try {
          result = op();
        } catch (err) {
          return this.deliver(() => reject(err as Error));
        }
        const lost = this.loseAnswers || (this.loseNextOf.get(method)?.(result) === true && this.loseNextOf.delete(method));
        const answer = (): void => this.deliver(() => (lost ? reject(new Error('Connection terminated unexpectedly')) : resolve(result)));
        if (this.answerDelayMs > 0) this.db.clock.setTimeout(answer, this.answerDelayMs);
        else answer();
      };
      if (this.requestDelayMs > 0) this.db.clock.setTimeout(exec, this.requestDelayMs);
      else exec();
    });
  }

  join(inst: { id: string; name: string; pid: number; version: string }, leaseMs: number, leaving = false): Promise<void> {
    return this.call('join', () => {
      const now = this.db.clock.now();
      const old = this.db.instances.get(inst.id);
      this.db.instances.set(inst.id, {
        ...inst,
        startedAt: old?.startedAt ?? now,
        leaseUntil: now + leaseMs,
        renewedAt: now,
        leaving,
        reachesSignal: old?.reachesSignal ?? true,
      });
      this.db.notify('owners');
    });
  }

  renew(id: string, leaseMs: number, renewal: Renewal): Promise<boolean> {
    return this.call('renew', () => {
      const row = this.db.instances.get(id);
      if (!row) return false;
      const now = this.db.clock.now();
      Object.assign(row, { leaseUntil: now + leaseMs, renewedAt: now, reachesSignal: renewal.reachesSignal });
      this.db.notify(renewal.ping);
      return true;
    });
  }

  instances(): Promise<InstanceRow[]> {
    return this.call('instances', () => this.db.instanceRows());
  }

  reap(): Promise<string[]> {
    return this.call('reap', () => {
      const now = this.db.clock.now();
      const dead = [...this.db.instances.values()].filter((i) => i.leaseUntil < now).map((i) => i.id);
      if (dead.length === 0) return [];
      for (const row of this.db.rows.values()) {
        if (row.conn.owner !== null && dead.includes(row.conn.owner)) {
          row.conn = { ...row.conn, owner: null };
          row.owedWake = true;
        }
      }
      for (const id of dead) {
        this.db.instances.delete(id);
        for (const k of [...this.db.liveStates.keys()]) if (k.startsWith(`${id} `)) this.db.liveStates.delete(k);
      }
      this.db.notify('owners');
      return dead;
    });
  }

  claim(me: string, buckets: number[]): Promise<Claimed[]> {
    return this.call('claim', () => {
      if (!this.db.live(me)) return [];
      const wanted = new Set(buckets);
      const taken: Claimed[] = [];
      for (const row of this.db.rows.values()) {
        if (row.conn.owner !== null || !wanted.has(row.bucket)) continue;
        row.conn = { ...row.conn, owner: me, epoch: row.conn.epoch + 1 };
        taken.push({ conn: row.conn, owedWake: row.owedWake });
      }
      return taken;
    });
  }

  handOver(me: string, to: string, buckets: number[]): Promise<ConnectionKey[]> {
    return this.call('handOver', () => {
      const target = this.db.instances.get(to);
      if (!target || !this.db.live(to) || target.leaving) return [];
      const wanted = new Set(buckets);
      const moved: ConnectionKey[] = [];
      for (const row of this.db.rows.values()) {
        if (row.conn.owner !== me || !wanted.has(row.bucket)) continue;
        row.conn = { ...row.conn, owner: to, epoch: row.conn.epoch + 1 };
        moved.push({ uuid: row.conn.uuid, deviceId: row.conn.deviceId });
      }
      if (moved.length > 0) this.db.notify('owners');
      return moved;
    });
  }

  owned(me: string): Promise<Claimed[]> {
    return this.call('owned', () => [...this.db.rows.values()].filter((r) => r.conn.owner === me).map((r) => ({ conn: r.conn, owedWake: r.owedWake })));
  }

  woken(me: string, keys: ConnectionKey[]): Promise<void> {
    return this.call('woken', () => {
      for (const k of keys) {
        const row = this.db.rows.get(connectionKey(k));
        if (row?.conn.owner === me) row.owedWake = false;
      }
    });
  }

  get(key: ConnectionKey): Promise<Connection | undefined> {
    return this.call('get', () => this.db.rows.get(connectionKey(key))?.conn);
  }

  handOverStates(keys: ConnectionKey[]): Promise<HandOverState[]> {
    return this.call('handOverStates', () =>
      keys.map((key) => {
        const row = this.db.rows.get(connectionKey(key));
        const owner = row?.conn.owner ?? null;
        return {
          key,
          exists: row !== undefined,
          owner,
          ownerLive: owner !== null && this.db.live(owner),
          ownerConnected: owner !== null && this.db.liveStates.get(`${owner} ${connectionKey(key)}`) === 'connected',
        };
      }),
    );
  }

  setLeaving(me: string, leaving: boolean): Promise<void> {
    return this.call('setLeaving', () => {
      const row = this.db.instances.get(me);
      if (!row) return;
      row.leaving = leaving;
      this.db.notify('owners');
    });
  }

  leave(me: string): Promise<void> {
    return this.call('leave', () => {
      if (!this.db.instances.delete(me)) return;
      for (const row of this.db.rows.values()) if (row.conn.owner === me) row.conn = { ...row.conn, owner: null };
      for (const k of [...this.db.liveStates.keys()]) if (k.startsWith(`${me} `)) this.db.liveStates.delete(k);
      this.db.notify('owners');
    });
  }

  async close(): Promise<void> {}

  listen(handlers: NoteHandlers): NoteListener {
    const stop = this.db.listen(this, handlers);
    this.deliver(() => handlers.onListening());
    return {
      ping: () => this.call('listen', () => undefined),
      close: async () => void stop(),
    };
  }
}
