import { BUCKETS, hash32 } from '../buckets.js';

/**
 * Who should own what, decided without I/O: devices fall into buckets, and rendezvous hashing over the live
 * instances' stable names gives each bucket one owner. When an instance joins or leaves, only the buckets it wins or
 * held move; every other bucket keeps its owner.
 */

export interface Member {
  /** Unique per process run. */
  id: string;
  /** Stable across restarts (setting instance_name): a restarted instance gets the same buckets back. */
  name: string;
}

/**
 * The owner (member id) of every bucket: the member whose name scores highest for it. Two members with the same name
 * are told apart by id, so that every bucket still has exactly one owner.
 */
export function assignBuckets(members: readonly Member[]): string[] {
  const sorted = [...members].sort((a, b) => (a.name === b.name ? (a.id < b.id ? -1 : 1) : a.name < b.name ? -1 : 1));
  const owners = new Array<string>(BUCKETS);
  const seen = new Map<string, number>();
  const keys = sorted.map((m) => {
    const n = seen.get(m.name) ?? 0;
    seen.set(m.name, n + 1);
    return n === 0 ? m.name : `${m.name}#${n}`;
  });
  for (let b = 0; b < BUCKETS; b++) {
    let best = -1;
    let owner = '';
    for (let i = 0; i < sorted.length; i++) {
      const score = hash32(`${keys[i]}/${b}`);
      if (score > best) {
        best = score;
        owner = sorted[i]!.id;
      }
    }
    owners[b] = owner;
  }
  return owners;
}

/** The buckets `me` should own. */
export const bucketsOf = (owners: readonly string[], me: string): number[] => owners.flatMap((o, b) => (o === me ? [b] : []));

/**
 * Buckets that `me` owns rows in but that belong to another live member now: they are handed over to it, grouped by
 * the receiving member.
 */
export function handOvers(owners: readonly string[], me: string, myBuckets: Iterable<number>): Map<string, number[]> {
  const plan = new Map<string, number[]>();
  for (const b of myBuckets) {
    const to = owners[b];
    if (to === undefined || to === me) continue;
    plan.set(to, [...(plan.get(to) ?? []), b]);
  }
  return plan;
}

/** What the lease timings come to, from `lease_seconds`. */
export function leaseTimings(leaseSeconds: number): { leaseMs: number; renewMs: number; marginMs: number } {
  const leaseMs = leaseSeconds * 1000;
  const renewMs = Math.max(200, Math.round(leaseMs / 3)); // two renewals may fail before the lease runs out
  return { leaseMs, renewMs, marginMs: Math.round(leaseMs / 8) };
}
