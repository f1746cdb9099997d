/**
 * Who should own what, decided without I/O: devices fall into buckets, and rendezvous hashing over the live
 * instances' stable names gives each bucket one owner. When an instance joins or leaves, only the buckets it wins or
 * held move; every other bucket keeps its owner.
 */

/** Enough buckets that shares come out within a few percent of each other, few enough to hash them all each tick. */
export const BUCKETS = 4096;

/** FNV-1a (32-bit) of a string, then a finaliser that spreads nearby inputs over the whole range. */
function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The bucket of an account device: fixed for its life, stored with the row. */
export const bucketOf = (uuid: string, deviceId: number): number => hash32(`${uuid.toLowerCase()}.${deviceId}`) % BUCKETS;

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
