import { describe, expect, it } from 'vitest';
import { connectionKey } from '../../src/store/store.js';
import { ClusterWorld } from '../fakes/cluster.js';

/**
 * The lease engine (src/cluster/leases.ts) on a manual clock, with an in-memory lease store, through the faults that
 * production brings: late, lost and uncertain answers, a frozen or dead owner, a slow or vanished new owner, lost
 * notifications, Signal out of reach from one instance. Lease 6 s (renewal every 2 s) throughout.
 */
const LEASE = 6_000;

async function threeSettled(devices = 60): Promise<ClusterWorld> {
  const world = new ClusterWorld(LEASE / 1000);
  world.addDevices(devices);
  for (const name of ['a', 'b', 'c']) await world.start(name);
  expect(await world.until(() => world.settled(), 4 * LEASE)).toBe(true);
  world.resetGaps();
  return world;
}

const noHarm = (world: ClusterWorld): void => {
  expect(world.violations).toEqual([]);
  expect(world.fights).toBe(0);
};

describe('the lease engine on a manual clock', () => {
  it('three instances share the devices, each connected once by its owner', async () => {
    const world = await threeSettled();
    const held = world.held();
    expect([...held.keys()].sort()).toEqual(['a', 'b', 'c']);
    for (const n of held.values()) expect(n).toBeGreaterThanOrEqual(10);
    noHarm(world);
  });
});
