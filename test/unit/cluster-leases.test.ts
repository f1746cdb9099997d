import { describe, expect, it } from 'vitest';
import { LeaseClock } from '../../src/cluster/lease.js';
import { leaseTimings } from '../../src/cluster/shares.js';
import { Metrics } from '../../src/metrics.js';
import { connectionKey, type ConnectionKey } from '../../src/store/store.js';
import { ClusterWorld, type Node } from '../fakes/cluster.js';

/**
 * The lease engine (src/cluster/leases.ts) on a manual clock, with an in-memory lease store, through the faults that
 * production brings: late, lost and uncertain answers, a frozen or dead owner, a slow or vanished new owner, lost
 * notifications, Signal out of reach from one instance. Lease 6 s (a renewal every 2 s) throughout.
 */
const LEASE = 6_000;

async function cluster(names = ['a', 'b', 'c'], devices = 60): Promise<ClusterWorld> {
  const world = new ClusterWorld(LEASE / 1000);
  world.addDevices(devices);
  for (const name of names) await world.start(name);
  expect(await world.until(() => world.settled(), 4 * LEASE)).toBe(true);
  world.resetGaps();
  return world;
}

const node = (world: ClusterWorld, name: string): Node => world.nodes.get(name)!;
const ownedBy = (world: ClusterWorld, n: Node): ConnectionKey[] => [...world.db.rows.values()].filter((r) => r.conn.owner === n.leases.id).map((r) => r.conn);
const owners = (world: ClusterWorld): string[] => [...world.db.rows.values()].map((r) => String(r.conn.owner));

/** The safety property: no socket without a lease and ownership; no device fought over. */
const safe = (world: ClusterWorld): void => {
  expect(world.violations).toEqual([]);
  expect(world.fights).toBe(0);
};

describe('the lease clock', () => {
  const t = leaseTimings(6);

  it('counts a late answer from when its renewal was sent, and the latest confirmed of overlapping renewals', () => {
    const lease = new LeaseClock(t);
    lease.renewed(0, 4_000); // answered 4 s late: still held until 0 + lease - margin
    expect(lease.valid(LEASE - t.marginMs - 1)).toBe(true);
    lease.renewed(2_000, 2_100);
    lease.renewed(1_000, 5_000); // an older renewal answered last does not shorten it
    expect(lease.remainingMs(2_000)).toBe(LEASE - t.marginMs);
  });
});

describe('the lease engine on a manual clock', () => {
  it('three instances share the devices, each connected once by its owner', async () => {
    const world = await cluster();
    expect([...world.held().keys()].sort()).toEqual(['a', 'b', 'c']);
    for (const n of world.held().values()) expect(n).toBeGreaterThanOrEqual(10);
    safe(world);
  });

  it('publishes how long the lease still holds (mollysocket_lease_remaining_seconds), by the last confirmed renewal', async () => {
    const world = new ClusterWorld(LEASE / 1000);
    world.addDevices(3);
    const metrics = new Metrics();
    const a = await world.start('a', { metrics });
    const remaining = async () => Number(/^mollysocket_lease_remaining_seconds (\S+)$/m.exec(await metrics.registry.metrics())?.[1]);
    await world.run(LEASE);
    expect(await remaining()).toBeGreaterThan(LEASE / 1000 / 2);
    a.link.down = true; // no renewal confirmed any more: it runs down, then below zero
    await world.run(LEASE);
    expect(await remaining()).toBeLessThan(0);
  });

  it('late answers (4 s on a 6 s lease, for a minute): the lease holds, nothing moves, and dropped sockets are back within two leases', async () => {
    const world = await cluster();
    const a = node(world, 'a');
    const before = owners(world);
    a.link.answerDelayMs = 4_000;
    await world.run(10_000);
    for (const key of ownedBy(world, a).slice(0, 10)) a.drop(key);
    await world.run(50_000);
    expect(world.gap()).toBeLessThan(2 * LEASE);
    expect(world.settled()).toBe(true);
    expect(owners(world)).toEqual(before); // nobody reaped it, and it lost nothing
    expect(a.warnings()).toEqual([]);
    safe(world);
  });

  it('lost answers (renewals commit, the instance hears nothing): nothing moves, and waiting sockets open once answers return', async () => {
    const world = await cluster();
    const a = node(world, 'a');
    const before = owners(world);
    a.link.loseAnswers = true;
    await world.run(LEASE); // its lease lapsed by its own reckoning
    const dropped = ownedBy(world, a).slice(0, 5);
    for (const key of dropped) a.drop(key);
    await world.run(20_000);
    expect(owners(world)).toEqual(before); // the database says it is alive: nobody takes its devices
    for (const key of dropped) expect(world.holders.get(connectionKey(key))).toBeUndefined(); // no socket without a confirmed lease
    a.link.loseAnswers = false;
    expect(await world.until(() => world.settled(), LEASE)).toBe(true); // one renewal period, then the connect
    safe(world);
  });

  it('a claim that committed after its answer was lost: the devices are connected and their owed wake-up sent', async () => {
    const world = await cluster();
    const c = node(world, 'c');
    const victims = ownedBy(world, c).map(connectionKey);
    const taken = (rows: unknown) => (rows as unknown[]).length > 0;
    for (const name of ['a', 'b']) {
      node(world, name).link.loseNext('claim', taken);
      node(world, name).link.loseNext('owned', taken); // and the read after it: it is read again at the following tick
    }
    c.kill();
    expect(await world.until(() => world.settled(), 3 * LEASE)).toBe(true);
    expect(world.gap()).toBeLessThan(3 * LEASE);
    expect([...world.pushes].sort()).toEqual([...victims].sort()); // one wake-up each, none lost with the answer
    safe(world);
  });

  it('a dead instance (kill -9) is reaped: its devices are connected by the others within two leases, one wake-up each', async () => {
    const world = await cluster();
    const c = node(world, 'c');
    const victims = ownedBy(world, c).map(connectionKey);
    c.kill();
    expect(await world.until(() => world.settled(), 2 * LEASE)).toBe(true);
    expect(world.gap()).toBeLessThan(2 * LEASE);
    expect([...world.pushes].sort()).toEqual([...victims].sort());
    expect(world.db.instances.has(c.leases.id)).toBe(false);
    safe(world);
  });

  it('a frozen owner (20 s): the others take over without a gap; thawed, it rejoins with the same id and takes its share back', async () => {
    const world = await cluster();
    const c = node(world, 'c');
    const share = ownedBy(world, c).length;
    c.freeze();
    await world.run(20_000);
    expect(world.held().get('c') ?? 0).toBe(0); // Signal retired its sockets as the new owners connected
    expect(world.gap()).toBe(0);
    c.thaw();
    expect(await world.until(() => ownedBy(world, c).length === share && world.settled(), 4 * LEASE)).toBe(true);
    expect(c.warnings()).toContain('the lease ran out and the others took these devices over; joining again');
    expect(world.db.instances.has('c-id')).toBe(true); // the same id
    expect(world.gap()).toBe(0); // back make-before-break
    safe(world);
  });

  it('a reaped instance on a link that keeps failing rejoins leaving, and takes no share back until it renewed a whole lease without a break', async () => {
    const world = await cluster();
    const c = node(world, 'c');
    const share = ownedBy(world, c).length;
    // Out long enough to be reaped, back just long enough to rejoin, out again: a link that cannot hold a lease.
    for (let i = 0; i < 4; i++) {
      c.link.down = true;
      await world.run(2 * LEASE);
      c.link.down = false;
      await world.run(LEASE / 2);
      if (i > 0) expect(world.db.instances.get(c.leases.id)?.leaving).toBe(true); // back, but taking nothing
      expect(ownedBy(world, c)).toEqual([]);
    }
    expect(c.warnings().filter((w) => w.startsWith('the lease ran out')).length).toBeGreaterThan(1);
    expect(world.fights).toBe(0); // it never took devices only to lose them again
    // The link holds: after a whole lease of renewals it takes its share back, make-before-break.
    world.resetGaps();
    expect(await world.until(() => ownedBy(world, c).length === share && world.settled(), 3 * LEASE)).toBe(true);
    expect(world.db.instances.get(c.leases.id)?.leaving).toBe(false);
    expect(world.gap()).toBe(0);
    safe(world);
  });

  it('the steady state costs two statements per renewal period and instance: the renewal (with its self-notification) and the lease rows', async () => {
    const world = await cluster();
    await world.run(40_000);
    const renewMs = leaseTimings(LEASE / 1000).renewMs;
    world.db.calls.clear();
    await world.run(60_000); // 30 renewal periods, two re-reads of the owned rows (every 30 s)
    const perPeriod = (method: string) => (world.db.calls.get(method) ?? 0) / (60_000 / renewMs) / world.nodes.size;
    expect([...world.db.calls.keys()].sort()).toEqual(['claim', 'instances', 'owned', 'renew']);
    expect(perPeriod('renew')).toBeCloseTo(1, 1);
    expect(perPeriod('instances')).toBeCloseTo(1, 1);
    // The claim and the owned rows only with the re-read that catches a missed notification.
    expect(perPeriod('claim')).toBeCloseTo(renewMs / 30_000, 1);
    expect(perPeriod('owned')).toBeCloseTo(renewMs / 30_000, 1);
    safe(world);
  });

  it('a device added in the steady state is claimed and connected at once, on its notification (claims no longer run every renewal)', async () => {
    const world = await cluster();
    await world.run(40_000);
    for (let i = 0; i < 6; i++) {
      const [key] = world.addDevices(1, `new${i}-`);
      // Well within a renewal period (2 s): the notification brought it, not the re-read.
      expect(await world.until(() => world.holders.has(connectionKey(key!)), 500, 10)).toBe(true);
      await world.run(333, 10); // the next one comes at another moment of the renewal cycle
    }
    safe(world);
  });

  it('a hand-over to a slow new owner keeps the old sockets until its own are open, however long that takes', async () => {
    const world = await cluster(['a', 'b']);
    const d = await world.start('d', { connectDelayMs: 40_000 }); // far beyond the hand-over timeout
    await world.run(30_000);
    expect(ownedBy(world, d).length).toBeGreaterThan(0);
    expect(world.held().get('d') ?? 0).toBe(0);
    expect(world.gap()).toBe(0); // nobody closed a socket the new owner had not replaced
    expect(await world.until(() => world.settled(), 2 * LEASE + 20_000)).toBe(true);
    expect(world.gap()).toBe(0);
    expect(node(world, 'a').handingOver() + node(world, 'b').handingOver()).toBe(0);
    safe(world);
  });

  it('a hand-over to a new owner that dies before connecting: the old sockets stay while its lease holds, then the devices come back', async () => {
    const world = await cluster(['a', 'b']);
    const d = await world.start('d', { connectDelayMs: 40_000 });
    expect(await world.until(() => ownedBy(world, d).length > 0 && world.nodes.get('a')!.handingOver() + world.nodes.get('b')!.handingOver() > 0, LEASE)).toBe(
      true,
    );
    d.kill();
    expect(await world.until(() => world.settled(), 2 * LEASE + 2 * LEASE)).toBe(true); // reaped, claimed back
    expect(world.gap()).toBeLessThan(2 * LEASE);
    safe(world);
  });

  it('notifications lost (PgBouncer in transaction mode): said once at warn; removals and hand-overs within a renewal period or two', async () => {
    const world = new ClusterWorld(LEASE / 1000);
    const keys = world.addDevices(60);
    for (const name of ['a', 'b', 'c']) await world.start(name);
    for (const n of world.nodes.values()) n.link.notesDropped = true;
    expect(await world.until(() => world.settled(), 4 * LEASE)).toBe(true);
    await world.run(10_000);
    for (const n of world.nodes.values()) {
      expect(n.warnings().filter((w) => w.includes('notifications from PostgreSQL do not arrive'))).toHaveLength(1);
      expect(n.warnings().join('\n')).toContain('db_listen_url');
    }
    // A removal (the CLI, or another instance's registration) reaches the owner at its next renewal.
    const removed = keys[0]!;
    world.db.remove(removed);
    expect(await world.until(() => !world.holders.has(connectionKey(removed)), LEASE / 3 + 1_000)).toBe(true);
    // A new instance gets its share handed over, make-before-break, without waiting for the 30 s re-read.
    world.resetGaps();
    const d = await world.start('d');
    d.link.notesDropped = true;
    expect(await world.until(() => (world.held().get('d') ?? 0) > 0 && world.settled(), 2 * LEASE)).toBe(true);
    expect(world.gap()).toBe(0);
    safe(world);
  });

  it('Signal unreachable from one instance: it leaves within two leases, says why at warn, and comes back for its share', async () => {
    const world = await cluster();
    const c = node(world, 'c');
    const share = ownedBy(world, c).length;
    world.unreachable.add('c');
    for (const key of ownedBy(world, c)) c.drop(key); // its sockets fail, the others' do not
    expect(await world.until(() => world.settled(), 2 * LEASE)).toBe(true);
    expect(world.gap()).toBeLessThan(2 * LEASE);
    expect(ownedBy(world, c)).toEqual([]);
    expect(c.warnings()).toContain('cannot reach Signal while other instances can: handing the devices over to them until Signal answers here again');
    world.unreachable.delete('c');
    world.resetGaps();
    expect(await world.until(() => ownedBy(world, c).length === share && world.settled(), 3 * LEASE)).toBe(true);
    expect(c.warnings()).toContain('Signal answers again: taking a share of the devices again');
    expect(world.gap()).toBe(0);
    safe(world);
  });

  it('Signal unreachable from every instance: nothing moves', async () => {
    const world = await cluster();
    const before = owners(world);
    for (const n of world.nodes.values()) {
      world.unreachable.add(n.name);
      for (const key of ownedBy(world, n)) n.drop(key);
    }
    await world.run(5 * LEASE);
    expect(owners(world)).toEqual(before);
    for (const n of world.nodes.values()) expect(n.warnings()).toEqual([]);
  });
});
