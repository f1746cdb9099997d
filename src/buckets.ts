/**
 * Which bucket an account device falls into: fixed for its life, stored with its row on PostgreSQL, and the unit that
 * src/cluster/shares.ts splits among the instances. Pure.
 */

/** Enough buckets that shares come out within a few percent of each other, few enough to hash them all each tick. */
export const BUCKETS = 4096;

/** FNV-1a (32-bit) of a string, then a finaliser that spreads nearby inputs over the whole range. */
export function hash32(text: string): number {
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
