import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { OwnedConnections, Ownership } from '../../src/cluster/ownership.js';
import { RelayEvents } from '../../src/events.js';
import { Supervisor } from '../../src/signal/supervisor.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { Connection } from '../../src/store/store.js';
import { ManualClock } from '../fakes/clock.js';
import { FakeSignalServer, type Account } from '../fakes/signal-server.js';
import { eventually, memoryLogger, tempDir } from '../helpers/index.js';

/** What the supervisor does for the lease engine: waits for the lease, keeps handed-over sockets, reports Signal's reach. */
const accounts: Account[] = [1, 2, 3].map((i) => ({ uuid: `0000000${i}-0000-4000-8000-000000000000`, deviceId: 1, password: `pw-${i}` }));

class GateOwnership implements Ownership {
  allowed = false;
  target!: OwnedConnections;
  constructor(private readonly conns: Connection[]) {}
  async start(target: OwnedConnections): Promise<void> {
    this.target = target;
    target.reconcile(this.conns);
  }
  canConnect(): boolean {
    return this.allowed;
  }
  expectsReplacement(): boolean {
    return false;
  }
  async stop(): Promise<void> {}
  describe(): Record<string, never> {
    return {};
  }
}

const running: { sup: Supervisor; signal: FakeSignalServer; store: SqliteStore }[] = [];
afterEach(async () => {
  for (const h of running.splice(0)) {
    await h.sup.stop();
    await h.store.close();
    await h.signal.close();
  }
});

async function harness(allowed: boolean) {
  const signal = await FakeSignalServer.start({ tls: false });
  const store = SqliteStore.open(join(tempDir(), 'm.db'));
  const conns: Connection[] = [];
  for (const a of accounts) {
    signal.addAccount(a);
    conns.push(await store.put({ ...a, endpoint: 'https://push.example/x' }, 1));
  }
  const ownership = new GateOwnership(conns);
  ownership.allowed = allowed;
  const clock = new ManualClock();
  const sup = new Supervisor(
    {
      link: {
        url: signal.url,
        ca: undefined,
        userAgent: 'Signal-Android/7.60.0 test',
        connectTimeoutMs: 30_000,
        keepaliveIntervalMs: 30_000,
        keepaliveTimeoutMs: 20_000,
      },
      backoff: { baseMs: 1_000, capMs: 300_000 },
      healthyAfterMs: 60_000,
      ramp: { ratePerSecond: 100, concurrency: 50 },
      deliveryCheckIntervalMs: 3600_000,
      keepaliveTickMs: 1_000,
      leftBehindKeptMs: 7 * 86_400_000,
      leftBehindSweepMs: 3_600_000,
      forbiddenRetentionMs: 30 * 86_400_000,
      recoveryIntervalMs: 1_000,
      handOverTimeoutMs: 5_000,
    },
    { store, log: memoryLogger().log, clock, random: () => 1, events: new RelayEvents(), ownership },
  );
  running.push({ sup, signal, store });
  await sup.start();
  return { sup, signal, ownership, clock };
}

describe('the supervisor under lease ownership', () => {
  it('connects a device waiting for the lease as soon as the lease holds again, not at the end of its backoff', async () => {
    const h = await harness(false);
    await eventually(() => accounts.every((a) => h.sup.state(a) === 'backoff'), 'waiting for the lease');
    h.ownership.allowed = true;
    h.ownership.target.leaseRegained(); // no clock time passes: the backoff has not run out
    await eventually(() => accounts.every((a) => h.sup.state(a) === 'connected'), 'connected');
    expect(h.signal.sessions).toHaveLength(3);
  });

  it('keeps a handed-over socket open, past any timer, until Signal replaces it or the ownership removes it', async () => {
    const h = await harness(true);
    await eventually(() => accounts.every((a) => h.sup.state(a) === 'connected'), 'connected');
    h.ownership.target.handOver(accounts[0]!);
    h.clock.advance(20_000); // past the old timer (handOverTimeoutMs, 5 s here), before any keepalive is due
    expect(h.sup.state(accounts[0]!)).toBe('connected');
    expect(h.sup.handingOver()).toBe(1);
    h.ownership.target.remove(accounts[0]!);
    await eventually(() => h.signal.open(accounts[0]!.uuid, 1).length === 0, 'closed');
  });

  it('says Signal is out of reach once its devices fail as an outage with none open, and in reach again once one opens', async () => {
    const h = await harness(false);
    for (let i = 0; i < 3; i++) h.signal.refusals.push({ status: 503 });
    expect(h.sup.reachesSignal()).toBe(true);
    h.ownership.allowed = true;
    h.ownership.target.leaseRegained();
    await eventually(
      () => h.signal.upgrades.filter((u) => u.status === 503).length === 3 && accounts.every((a) => h.sup.state(a) === 'backoff'),
      'three refusals',
    );
    expect(h.sup.reachesSignal()).toBe(false);
    for (let i = 0; i < 10 && !accounts.some((a) => h.sup.state(a) === 'connected'); i++) {
      h.clock.advance(1_000); // their backoff: they retry, and Signal answers now
      await eventually(() => h.sup.counts().connecting === h.sup.connectQueue, 'the handshakes of this second');
    }
    await eventually(() => accounts.some((a) => h.sup.state(a) === 'connected'), 'one connected');
    expect(h.sup.reachesSignal()).toBe(true);
  });
});
