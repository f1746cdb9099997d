import pg from 'pg';
import { PostgresStore } from '../../src/store/postgres.js';
import { FakePushServer } from '../fakes/push-server.js';
import { FakeSignalServer, type Account } from '../fakes/signal-server.js';
import { TcpProxy } from '../fakes/tcp-proxy.js';
import { testPki } from '../fakes/tls.js';
import { BinProcess } from './bin.js';
import { eventually, tempDir } from './index.js';
import { freshDatabase } from './postgres.js';

/**
 * Several `mollysocket server` processes (the built bin) on one PostgreSQL database, against the fake Signal server
 * (one listener per instance, so that it knows which instance holds each socket; it keeps the newest socket of a
 * device and closes the older with 4409, as Signal does, and records every device's time without a socket and every
 * fight) and the fake push server. Each instance can reach PostgreSQL or Signal through its own TCP proxy, to make
 * that one link misbehave. Real time throughout: PostgreSQL's clock decides the leases.
 */
export interface ClusterOptions {
  /** Admin URL of the PostgreSQL server: the cluster gets a fresh database on it. */
  adminUrl: string;
  devices: number;
  leaseSeconds: number;
}

export interface Route {
  /** The instance reaches PostgreSQL through its own proxy (`dbProxies`). */
  dbProxy?: boolean;
  /** The instance reaches Signal through its own proxy (`signalProxies`). */
  signalProxy?: boolean;
  /** The database URL it uses instead of the cluster's (PgBouncer's, for example). */
  db?: string;
}

export interface Health {
  instance: string;
  owned: number;
  live_instances: number;
  connections: { connected: number };
}

export const deviceName = (a: Pick<Account, 'uuid' | 'deviceId'>): string => `${a.uuid}.${a.deviceId}`;

export class TestCluster {
  readonly instances = new Map<string, BinProcess>();
  /** Instances stopped with SIGSTOP: not asked anything until they continue. */
  readonly frozen = new Set<string>();
  readonly dbProxies = new Map<string, TcpProxy>();
  readonly signalProxies = new Map<string, TcpProxy>();
  /**
   * The fake Signal server's tag for each instance's current process: its name for the first, then `a#2`, `a#3`...
   * A restarted instance is another process, so its taking a device back is not a fight.
   */
  readonly tags = new Map<string, string>();
  /** Every process started, stopped ones included: their logs explain a failure. */
  private readonly all: [string, BinProcess][] = [];
  /** The instances' working directory (and the CLI's). */
  readonly cwd = tempDir();
  private admin: pg.Client;

  private constructor(
    readonly signal: FakeSignalServer,
    readonly push: FakePushServer,
    /** The cluster's database, directly. */
    readonly db: string,
    readonly accounts: Account[],
    readonly leaseSeconds: number,
  ) {
    this.admin = new pg.Client({ connectionString: db });
  }

  get leaseMs(): number {
    return this.leaseSeconds * 1000;
  }

  /** The fakes, and a fresh database holding `devices` account devices (no instance yet: `start`). */
  static async create(opts: ClusterOptions): Promise<TestCluster> {
    const db = await freshDatabase(opts.adminUrl);
    const signal = await FakeSignalServer.start({ tls: true });
    const push = await FakePushServer.start();
    const accounts = Array.from({ length: opts.devices }, (_, i) => ({
      uuid: `${String(i).padStart(8, '0')}-0000-4000-8000-000000000000`, // told apart in logs, which show 8 characters
      deviceId: 1 + (i % 3),
      password: `pw-${i}`,
    }));
    const store = await PostgresStore.open(db);
    try {
      for (const a of accounts) {
        signal.addAccount(a);
        await store.put({ ...a, endpoint: push.endpoint(deviceName(a)) }, 1);
      }
    } finally {
      await store.close();
    }
    const cluster = new TestCluster(signal, push, db, accounts, opts.leaseSeconds);
    await cluster.admin.connect();
    cluster.admin.on('error', () => {}); // the server restarting: `sql` connects again
    return cluster;
  }

  env(tag: string, signalUrl: string, db = this.db): Record<string, string> {
    return {
      MOLLY_DB: db,
      MOLLY_PORT: '0',
      MOLLY_SIGNAL_URL: signalUrl,
      MOLLY_SIGNAL_CA_FILE: testPki().caFile,
      MOLLY_ALLOWED_ENDPOINTS: JSON.stringify([this.push.origin]),
      MOLLY_LEASE_SECONDS: String(this.leaseSeconds),
      MOLLY_INSTANCE_NAME: tag,
    };
  }

  /** Starts instance `tag` (its own listener on the fake Signal server); resolves once it joined. */
  async start(tag: string, route: Route = {}): Promise<BinProcess> {
    const starts = this.all.filter(([name]) => name === tag).length;
    this.tags.set(tag, starts === 0 ? tag : `${tag}#${starts + 1}`);
    let signalUrl = await this.signal.listen(this.tags.get(tag)!);
    if (route.signalProxy) {
      const { proxy, url } = await TcpProxy.before(signalUrl);
      this.signalProxies.set(tag, proxy);
      signalUrl = url;
    }
    let db = route.db ?? this.db;
    if (route.dbProxy) {
      const { proxy, url } = await TcpProxy.before(db);
      this.dbProxies.set(tag, proxy);
      db = url;
    }
    const p = new BinProcess(['-v', 'server'], { cwd: this.cwd, env: this.env(tag, signalUrl, db) });
    this.instances.set(tag, p);
    this.all.push([tag, p]);
    await p.waitFor(/joined the cluster/, 30_000);
    return p;
  }

  /** SIGTERM or SIGKILL; resolves with the exit code. */
  async stop(tag: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const p = this.instances.get(tag)!;
    this.instances.delete(tag);
    return p.stop(signal);
  }

  freeze(tag: string): void {
    this.frozen.add(tag);
    this.instances.get(tag)!.child.kill('SIGSTOP');
  }

  thaw(tag: string): void {
    this.instances.get(tag)!.child.kill('SIGCONT');
    this.frozen.delete(tag);
  }

  async health(tag: string): Promise<Health> {
    return (await fetch(`${await this.instances.get(tag)!.url()}/health`, { signal: AbortSignal.timeout(10_000) })).json() as Promise<Health>;
  }

  /** `mollysocket_lease_devices_total{event}` of an instance. */
  async leaseMetric(tag: string, event: string): Promise<number> {
    const text = await (await fetch(`${await this.instances.get(tag)!.url()}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
    return Number(new RegExp(`^mollysocket_lease_devices_total\\{event="${event}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
  }

  /** Instances running now (not exited). */
  running(): string[] {
    return [...this.instances].filter(([, p]) => p.child.exitCode === null && p.child.signalCode === null).map(([tag]) => tag);
  }

  /** Every device has exactly one socket, and each running instance holds the sockets of exactly the devices it owns. */
  async isSettled(): Promise<boolean> {
    if (!this.accounts.every((a) => this.signal.open(a.uuid, a.deviceId).length === 1)) return false;
    const perTag = this.signal.openPerTag();
    for (const tag of this.instances.keys())
      if (!this.frozen.has(tag) && (await this.health(tag)).owned !== (perTag.get(this.tags.get(tag)!) ?? 0)) return false;
    const current = [...this.instances.keys()].map((tag) => this.tags.get(tag));
    return [...perTag.keys()].every((tag) => current.includes(tag));
  }

  async settled(what: string, timeoutMs = 30_000): Promise<void> {
    try {
      await eventually(() => this.isSettled(), what, timeoutMs, 100);
    } catch (err) {
      const perDevice = [...this.signal.openPerDevice()].filter(([, n]) => n !== 1);
      throw new Error(
        `${(err as Error).message}: sockets per instance ${JSON.stringify(Object.fromEntries(this.signal.openPerTag()))}, devices without exactly one: ${JSON.stringify(perDevice.slice(0, 5))}\n${this.logs()}`,
      );
    }
  }

  /** Signal sends envelopes now and then, to random devices, as traffic: each is kept until a socket acknowledges it. */
  traffic(opts: { everyMs?: number; registrations?: boolean } = {}): { stop(): Promise<void> } {
    const pending = new Set<Promise<unknown>>();
    let n = 0;
    const timer = setInterval(() => {
      const a = this.accounts[Math.floor(Math.random() * this.accounts.length)]!;
      this.signal.deliver(a);
      // Now and then Molly registers again (its endpoint unchanged), at any instance behind the load balancer.
      const tags = this.running().filter((t) => !this.frozen.has(t));
      if (opts.registrations !== false && n++ % 5 === 0 && tags.length > 0) {
        const tag = tags[Math.floor(Math.random() * tags.length)]!;
        const sent = this.register(tag, a).catch(() => {}); // internal_error while PostgreSQL is away: Molly retries
        pending.add(sent);
        void sent.finally(() => pending.delete(sent));
      }
    }, opts.everyMs ?? 50);
    return {
      stop: async () => {
        clearInterval(timer);
        await Promise.all(pending);
      },
    };
  }

  /** Molly's registration (`POST /`) of an account device at an instance, with its stored endpoint; the status. */
  async register(tag: string, a: Account, endpoint = this.push.endpoint(deviceName(a))): Promise<string> {
    const res = await fetch(`${await this.instances.get(tag)!.url()}/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ uuid: a.uuid, device_id: a.deviceId, password: a.password, endpoint }),
      signal: AbortSignal.timeout(15_000),
    });
    return ((await res.json()) as { mollysocket: { status: string } }).mollysocket.status;
  }

  /**
   * Devices that lost a wake-up: an envelope a socket acknowledged with no push to the device after it was sent.
   * (An acknowledged envelope is Signal's no longer: the relay owes the phone a push for it.)
   */
  lostWakeUps(): string[] {
    const lastSent = new Map<string, number>();
    for (const e of this.signal.envelopes) {
      if (e.ackedAt !== undefined) lastSent.set(e.device, Math.max(lastSent.get(e.device) ?? 0, e.sentAt!));
    }
    const lastPush = new Map<string, number>();
    for (const r of this.push.requests) {
      const device = decodeURIComponent(r.path.replace('/up/', ''));
      lastPush.set(device, Math.max(lastPush.get(device) ?? 0, r.at));
    }
    return [...lastSent].filter(([device, sent]) => (lastPush.get(device) ?? -1) < sent).map(([device]) => device);
  }

  /** What happened to a device: envelopes, pushes, sockets replaced, and what each instance logged about it. */
  deviceStory(device: string): string {
    const envelopes = this.signal.envelopes
      .filter((e) => e.device === device)
      .map((e) => `envelope sent ${Math.round(e.sentAt ?? -1)} acked ${Math.round(e.ackedAt ?? -1)} by ${e.ackedBy}`);
    const pushes = this.push.requests.filter((r) => r.path === `/up/${device}`).map((r) => `push ${Math.round(r.at)}`);
    const kicks = this.signal.kicks.filter((k) => k.device === device).map((k) => `4409 ${k.from}->${k.to} at ${Math.round(k.at)}`);
    const logs = this.all.map(
      ([tag, p]) =>
        `--- ${tag}\n${p.stderr
          .split('\n')
          .filter((l) => l.includes(device.slice(0, 8)))
          .join('\n')}`,
    );
    return [device, ...envelopes, ...pushes, ...kicks, ...logs].join('\n');
  }

  /** Envelopes no socket has acknowledged yet. */
  unacknowledged(): number {
    return this.signal.envelopes.filter((e) => e.ackedAt === undefined).length;
  }

  /**
   * Waits until every envelope is acknowledged and followed by its push; returns the devices still owed one then
   * (empty when none is lost), for the test to assert on.
   */
  async wakeUps(timeoutMs = 30_000): Promise<{ unacknowledged: number; lost: string[] }> {
    await eventually(() => this.unacknowledged() === 0 && this.lostWakeUps().length === 0, 'every envelope acknowledged and pushed', timeoutMs, 100).catch(
      () => {},
    );
    return { unacknowledged: this.unacknowledged(), lost: this.lostWakeUps() };
  }

  /** Waits until `predicate` holds, asked every 100 ms; on timeout, the error shows the instances' logs. */
  async eventually(predicate: () => Promise<boolean>, what: string, timeoutMs = 10 * this.leaseMs): Promise<void> {
    await eventually(predicate, what, timeoutMs, 100).catch((err: Error) => {
      throw new Error(`${err.message}\n${this.logs()}`);
    });
  }

  /** A query on the cluster's database, directly (not through any proxy). */
  async sql<R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<R[]> {
    try {
      return (await this.admin.query<R>(text, values)).rows;
    } catch (err) {
      if (!/terminat|Connection terminated|not queryable|ECONNRESET|EPIPE/i.test((err as Error).message)) throw err;
      // PostgreSQL restarted under it: connect again, once.
      const fresh = new pg.Client({ connectionString: this.db });
      fresh.on('error', () => {});
      await fresh.connect();
      this.admin = fresh;
      return (await fresh.query<R>(text, values)).rows;
    }
  }

  /** The lease rows now: id, name, and how long each has left by the database's clock. */
  async leases(): Promise<{ id: string; name: string; left_ms: number }[]> {
    return this.sql(`SELECT id, name, (extract(epoch FROM lease_until - now()) * 1000)::float8 AS left_ms FROM instances ORDER BY name`);
  }

  /**
   * Waits until every one of these lease rows (by id) has been renewed past `ms` from now, by the database's clock:
   * time has passed for the cluster, and none of them was reaped (fails at once if one is gone).
   */
  async renewedFor(ids: string[], ms: number, timeoutMs = ms + 60_000): Promise<void> {
    const { until } = (
      await this.sql<{ until: Date }>(`SELECT now() + $1 * interval '1 millisecond' + $2 * interval '1 millisecond' AS until`, [ms, this.leaseMs])
    )[0]!;
    await eventually(
      async () => {
        const exited = [...this.instances].filter(([tag]) => !this.running().includes(tag));
        if (exited.length > 0) throw new Error(`instance ${exited.map(([tag]) => tag).join(', ')} exited\n${this.logs()}`);
        const rows = await this.sql<{ id: string; lease_until: Date }>(`SELECT id, lease_until FROM instances WHERE id = ANY($1)`, [ids]);
        if (rows.length < ids.length)
          throw new Error(`a lease row is gone (reaped): ${ids.filter((id) => !rows.some((r) => r.id === id)).join(', ')}\n${this.logs()}`);
        return rows.every((r) => r.lease_until >= until);
      },
      `every lease renewed for ${ms} ms more`,
      timeoutMs,
      200,
    );
  }

  /** Waits until `ms` have passed by the database's clock (how long a fault lasts). */
  async databaseTime(ms: number): Promise<void> {
    const { until } = (await this.sql<{ until: Date }>(`SELECT now() + $1 * interval '1 millisecond' AS until`, [ms]))[0]!;
    await eventually(
      async () => (await this.sql<{ past: boolean }>(`SELECT now() >= $1 AS past`, [until]))[0]!.past,
      `${ms} ms of database time`,
      ms + 60_000,
      100,
    );
  }

  /** The worst gap's device, its story at the fake Signal server, and what each instance logged about it. */
  worstGapStory(): string {
    const [device, ms] = this.signal.worstGap();
    if (!device) return 'no gap';
    const short = device.slice(0, 8);
    const events = this.signal.events.filter((e) => e.includes(device));
    const kicks = this.signal.kicks.filter((k) => k.device === device).map((k) => `4409 ${k.from}->${k.to} at ${Math.round(k.at)}`);
    const logs = this.all.map(
      ([tag, p]) =>
        `--- ${tag}\n${p.stderr
          .split('\n')
          .filter((l) => l.includes(short))
          .join('\n')}`,
    );
    return `worst gap ${Math.round(ms)} ms: ${device}\n${[...events, ...kicks].join('\n')}\n${logs.join('\n')}`;
  }

  /**
   * Fights at the fake Signal server (a device reopened by an instance within 10 s of being replaced): every
   * replacement (device, from, to, when), and what the instances warned about meanwhile.
   */
  fightStory(): string {
    const kicks = this.signal.kicks.map((k) => `${k.device.slice(0, 8)} ${k.from}->${k.to} ${Math.round(k.at)}`);
    const warnings = this.all.map(
      ([tag, p]) =>
        `--- ${tag}\n${p.stderr
          .split('\n')
          .filter((l) => /WARN|claimed|handed|joined/.test(l))
          .join('\n')}`,
    );
    return [...kicks, ...warnings].join('\n');
  }

  /** Every instance's log, the last lines of each. */
  logs(lines = 40): string {
    return this.all
      .map(([tag, p]) => `--- ${tag} (exit ${p.child.exitCode ?? p.child.signalCode ?? 'running'})\n${p.stderr.split('\n').slice(-lines).join('\n')}`)
      .join('\n');
  }

  async close(): Promise<void> {
    for (const tag of this.frozen) this.thaw(tag);
    await Promise.all([...this.instances.values()].map((p) => (p.child.exitCode === null ? p.stop('SIGKILL') : undefined)));
    await Promise.all([...this.dbProxies.values(), ...this.signalProxies.values()].map((p) => p.close()));
    await this.admin.end().catch(() => {});
    await this.signal.close();
    await this.push.close();
  }
}
