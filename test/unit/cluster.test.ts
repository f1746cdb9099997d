import { describe, expect, it } from 'vitest';
import { LeaseClock } from '../../src/cluster/lease.js';
import { bucketOf, BUCKETS } from '../../src/buckets.js';
import { assignBuckets, bucketsOf, handOvers, leaseTimings } from '../../src/cluster/shares.js';

const members = (...names: string[]) => names.map((name, i) => ({ id: `id-${name}-${i}`, name }));

describe('fair shares by rendezvous hashing', () => {
  it('gives every bucket exactly one live owner, each share within 10 % of the mean', () => {
    for (const set of [members('a', 'b', 'c'), members('relay-1', 'relay-2', 'relay-3', 'relay-4', 'relay-5'), members('x')]) {
      const owners = assignBuckets(set);
      expect(owners).toHaveLength(BUCKETS);
      const shares = set.map((m) => bucketsOf(owners, m.id).length);
      expect(shares.reduce((a, b) => a + b)).toBe(BUCKETS);
      const mean = BUCKETS / set.length;
      for (const share of shares) expect(Math.abs(share - mean) / mean).toBeLessThan(0.1);
    }
  });

  it("moves only the newcomer's share when one joins, and only the leaver's when one leaves", () => {
    const three = members('a', 'b', 'c');
    const four = [...three, { id: 'id-d', name: 'd' }];
    const before = assignBuckets(three);
    const after = assignBuckets(four);
    const moved = before.filter((o, b) => after[b] !== o);
    expect(after.filter((o, b) => after[b] !== before[b] && o !== 'id-d')).toEqual([]); // every moved bucket went to d
    expect(moved.length / BUCKETS).toBeGreaterThan(0.2);
    expect(moved.length / BUCKETS).toBeLessThan(0.3); // ideal: a quarter
    const left = assignBuckets(four.filter((m) => m.name !== 'b'));
    expect(after.filter((o, b) => o !== 'id-b-1' && left[b] !== o)).toEqual([]); // only b's buckets moved
  });

  it('depends on stable names, not ids: a restarted instance gets its buckets back', () => {
    const first = assignBuckets([
      { id: '1', name: 'a' },
      { id: '2', name: 'b' },
    ]);
    const again = assignBuckets([
      { id: '1', name: 'a' },
      { id: '3', name: 'b' },
    ]);
    expect(again.map((o) => (o === '3' ? '2' : o))).toEqual(first);
  });

  it('tells apart two instances with the same name', () => {
    const owners = assignBuckets([
      { id: 'x', name: 'host' },
      { id: 'y', name: 'host' },
    ]);
    expect(bucketsOf(owners, 'x').length).toBeGreaterThan(BUCKETS / 3);
    expect(bucketsOf(owners, 'y').length).toBeGreaterThan(BUCKETS / 3);
  });

  it('plans hand-overs of the buckets another member owns now, by receiver', () => {
    const owners = ['me', 'b', 'c', 'b'];
    expect(handOvers(owners, 'me', [0, 1, 2, 3])).toEqual(
      new Map([
        ['b', [1, 3]],
        ['c', [2]],
      ]),
    );
  });

  it('puts a device in a fixed bucket', () => {
    const b = bucketOf('6E3B5C1A-5A8E-4B6E-9C3E-1F2A3B4C5D6E', 2);
    expect(b).toBe(bucketOf('6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e', 2));
    expect(b).toBeGreaterThanOrEqual(0);
    expect(b).toBeLessThan(BUCKETS);
  });
});

describe('the lease clock', () => {
  const t = leaseTimings(15);

  it('renews every third of a lease and holds the lease until the send time plus the lease minus a margin', () => {
    expect(t).toMatchObject({ leaseMs: 15_000, renewMs: 5_000 });
    const lease = new LeaseClock(t);
    expect(lease.valid(0)).toBe(false);
    lease.renewed(1_000, 1_300);
    expect(lease.valid(1_000 + 15_000 - t.marginMs - 1)).toBe(true);
    expect(lease.valid(1_000 + 15_000 - t.marginMs)).toBe(false);
    lease.failed(); // a failed renewal does not end a lease that still holds
    expect(lease.valid(5_000)).toBe(true);
    lease.lost();
    expect(lease.valid(5_000)).toBe(false);
  });

  it('reaps others only after renewing without a break for a whole lease', () => {
    const lease = new LeaseClock(t);
    lease.renewed(0, 0);
    lease.renewed(5_000, 5_000);
    lease.renewed(10_000, 10_000);
    expect(lease.mayReap(14_999)).toBe(false);
    lease.renewed(15_000, 15_000);
    expect(lease.mayReap(15_000)).toBe(true);
    lease.failed(); // an outage: the count starts again at the next success
    lease.renewed(20_000, 20_000);
    expect(lease.mayReap(25_000)).toBe(false);
    lease.renewed(35_000, 35_000);
    lease.renewed(50_000, 50_000); // a 15 s silence (a freeze) also restarts it
    expect(lease.mayReap(50_000)).toBe(false);
  });
});
