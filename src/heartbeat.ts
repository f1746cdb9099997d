import type { Heartbeat } from './store/store.js';

/** How often a running server publishes its heartbeat (and changed connection states) to the store. */
export const HEARTBEAT_MS = 5_000;

/** A heartbeat older than three periods means the server is not running (or is stuck). */
export const isFresh = (h: Heartbeat | undefined, now: number): boolean => h !== undefined && now - h.seenAt <= 3 * HEARTBEAT_MS;
