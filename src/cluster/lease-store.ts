import type { Connection, ConnectionKey } from '../store/store.js';

/** A live or expired instance, as its lease row says (ages by the database's clock). */
export interface InstanceRow {
  id: string;
  name: string;
  pid: number;
  version: string;
  startedAt: number;
  /** Whether its lease is still valid by the database's clock. */
  live: boolean;
  /** It is stopping, or cannot reach Signal, and hands its devices over: it takes none. */
  leaving: boolean;
  /** Whether its sockets reach Signal, as it said at its last renewal. */
  reachesSignal: boolean;
  /** How long until the lease runs out (negative: ran out that long ago). */
  leaseLeftMs: number;
  /** Milliseconds since it last renewed. */
  renewedAgoMs: number;
  /** How many devices it owns (when asked for). */
  owned: number | undefined;
}

/** An owned row, and whether its former owner died owing it a wake-up push. */
export interface Claimed {
  conn: Connection;
  owedWake: boolean;
}

/** Where a handed-over device stands now, by the database. */
export interface HandOverState {
  key: ConnectionKey;
  /** The row is still stored. */
  exists: boolean;
  owner: string | null;
  /** The owner's lease holds. */
  ownerLive: boolean;
  /** The owner published the device's socket as open. */
  ownerConnected: boolean;
}

/** Renewals under way at once: one more may go out while an answer is late, so that a slow link keeps the lease. */
export const RENEWALS_IN_FLIGHT = 2;

export interface Renewal {
  /** Sent with the renewal: whether this instance's sockets reach Signal. */
  reachesSignal: boolean;
  /** A notification this instance sends itself with the renewal, to learn whether notifications arrive. */
  ping: string;
}

/** The listener of ownership notifications: `changed:<uuid>.<device>`, `owners`, `ping:<instance>:<n>`. */
export interface NoteListener {
  /** Proves the listening session still works (a dead one can stay silent); a failure reconnects it. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface NoteHandlers {
  onNote(payload: string): void;
  /** After each (re)LISTEN: whatever was announced meanwhile may have been missed. */
  onListening(): void;
  onLost(err: Error): void;
}

/**
 * The lease, claim, reap, hand-over and listen queries of several instances (src/cluster/leases.ts drives them).
 * Expiry is always the database's: `now()` there, never an instance's clock. An answer may come late or never: the
 * caller treats a failure as "unknown", never as "not done".
 */
export interface LeaseStore {
  /**
   * Adds this instance's lease row, valid for `leaseMs` from the database's now, and announces it; `leaving`: it
   * takes no share yet (a reaped instance back on probation).
   */
  join(inst: { id: string; name: string; pid: number; version: string }, leaseMs: number, leaving?: boolean): Promise<void>;
  /** Extends the lease; false when the row is gone (the others found it expired and reaped it). */
  renew(id: string, leaseMs: number, renewal: Renewal): Promise<boolean>;
  instances(): Promise<InstanceRow[]>;
  /** Deletes the instances whose lease ran out, freeing their devices, each owed a wake-up. Returns their ids. */
  reap(): Promise<string[]>;
  /** Takes the unowned devices of these buckets, while `me`'s lease holds by the database's clock. */
  claim(me: string, buckets: number[]): Promise<Claimed[]>;
  /** Gives `me`'s devices in these buckets to `to` if its lease holds and it is not leaving; the moved rows. */
  handOver(me: string, to: string, buckets: number[]): Promise<ConnectionKey[]>;
  /** The devices `me` owns. */
  owned(me: string): Promise<Claimed[]>;
  /** The wake-ups owed on these devices are taken care of (they are pushed once their sockets open). */
  woken(me: string, keys: ConnectionKey[]): Promise<void>;
  get(key: ConnectionKey): Promise<Connection | undefined>;
  handOverStates(keys: ConnectionKey[]): Promise<HandOverState[]>;
  /** Marks `me` leaving (the others stop counting it in their shares, and hand it nothing) or back. */
  setLeaving(me: string, leaving: boolean): Promise<void>;
  /** Removes `me`'s lease row: whatever it still owns is free for the others at once. */
  leave(me: string): Promise<void>;
  listen(handlers: NoteHandlers): NoteListener;
  /** Ends what the store opened for the lease (after `leave`). */
  close(): Promise<void>;
}
