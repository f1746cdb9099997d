import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cpuHogs } from '../fakes/cpu-hog.js';
import { runBin } from '../helpers/bin.js';
import { TestCluster, deviceName, type Route } from '../helpers/cluster.js';
import { PGBOUNCER, startPgBouncer } from '../helpers/pgbouncer.js';
import { postgresMissing } from '../helpers/postgres.js';
import { startPostgres, type PrivatePostgres } from '../helpers/private-postgres.mjs';

/**
 * Several instances (real processes, through the bin) on a real PostgreSQL, under the faults production brings: the
 * database restarting, other processes eating the CPU, a slow or cut link to PostgreSQL, a lost route to Signal, a
 * frozen process, PgBouncer in transaction mode. Each scenario runs traffic (envelopes, re-registrations) and asserts
 * what a user would notice, measured at the fake Signal and push servers, never by the test's own clock:
 *
 * - the worst gap: the longest time any device had no socket at Signal (no socket, no wake-up);
 * - fights: a device reopened by an instance within 10 s of that instance's socket being replaced (two owners);
 * - lost wake-ups: an envelope a socket acknowledged with no push to the device after it was sent.
 *
 * Why the gap bounds are properties of the protocol, not of this machine's speed: a device's owner holds a lease of
 * `lease_seconds`, renewed every third of it, and a peer may take the device only once that lease ran out by the
 * database's clock; it looks at every renewal, i.e. within a third of a lease. So a device whose owner cannot serve
 * it (frozen, cut off, Signal unreachable) is connected by another instance within a lease plus a third after the
 * owner's last renewal, and one whose owner can serve it is reconnected after the first backoff step (at most 1 s).
 * TWO leases leaves two thirds of a lease (2.7 s at 4 s) for the connect itself and for the scheduling delays of a
 * busy machine. Under CPU load nothing may move at all: the only gap is a dropped socket's reconnect, the 1 s backoff
 * step plus a handshake, hence 2 s. The lease is short (4 s) so that the file runs in a few minutes; the bounds scale
 * with it.
 */
const LEASE_S = 4;
const DEVICES = 45;
const TWO_LEASES_MS = 2 * LEASE_S * 1000;

describe.skipIf(postgresMissing !== undefined)('several instances under faults', () => {
  let server: PrivatePostgres;
  let cluster: TestCluster | undefined;

  beforeAll(async () => {
    server = (await startPostgres())!; // its own: these tests restart it
  });
  afterAll(() => server?.stop());
  afterEach(async () => {
    await cluster?.close();
    cluster = undefined;
  });

  /** Three instances `a`, `b`, `c` sharing the devices, each with one socket; `a` reaches PostgreSQL/Signal by `route`. */
  async function threeInstances(opts: { route?: Route; leaseSeconds?: number; db?: string } = {}): Promise<TestCluster> {
    cluster = await TestCluster.create({ adminUrl: server.url, devices: DEVICES, leaseSeconds: opts.leaseSeconds ?? LEASE_S });
    const c = cluster;
    const db = opts.db === undefined ? {} : { db: opts.db };
    await Promise.all([c.start('a', { ...db, ...opts.route }), c.start('b', db), c.start('c', db)]);
    await c.settled('every device connected once');
    expect([...c.signal.openPerTag().keys()].sort()).toEqual(['a', 'b', 'c']);
    c.signal.resetGaps();
    return c;
  }

  /** Sockets of `tag`'s devices closed by Signal, `count` of them (as when a Signal node restarts). */
  function dropSockets(c: TestCluster, tag: string, count: number): string[] {
    const open = c.signal.sessions.filter((s) => s.tag === tag && s.ws.readyState === s.ws.OPEN).slice(0, count);
    for (const s of open) c.signal.drop(s);
    return open.map((s) => deviceName(s.account));
  }

  /** The three measures, after the traffic stopped and the cluster settled. */
  async function expectNoHarm(c: TestCluster, gapBoundMs: number): Promise<void> {
    expect(c.signal.longestGap(), c.worstGapStory()).toBeLessThan(gapBoundMs);
    expect(c.signal.fights, c.fightStory()).toBe(0);
    const wake = await c.wakeUps();
    expect(wake, c.logs()).toEqual({ unacknowledged: 0, lost: [] });
  }

  it.each(['fast', 'immediate', 'terminate'] as const)(
    'PostgreSQL restarted (%s) under traffic: no instance exits, nobody is reaped, one socket per device, every envelope pushed',
    async (mode) => {
      const c = await threeInstances();
      const ids = (await c.leases()).map((l) => l.id);
      const traffic = c.traffic();
      if (mode === 'terminate') await c.sql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database()`);
      else await server.restart(mode);
      // Signal restarts a node meanwhile: these reconnect while the instances' connections to PostgreSQL come back.
      const dropped = ['a', 'b', 'c'].flatMap((tag) => dropSockets(c, tag, 2));
      // Two more leases renewed by each (time for anything to go wrong), none of them reaped.
      await c.renewedFor(ids, TWO_LEASES_MS);
      await traffic.stop();
      await c.settled('one socket per device again');
      expect(c.running().sort(), c.logs()).toEqual(['a', 'b', 'c']);
      for (const tag of c.running()) expect(c.instances.get(tag)!.stderr).not.toMatch(/uncaught|unhandled/i);
      expect(dropped.every((d) => c.signal.openPerDevice().get(d) === 1)).toBe(true);
      await expectNoHarm(c, TWO_LEASES_MS);
    },
    180_000,
  );
});
