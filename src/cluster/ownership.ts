import type { Connection, ConnectionKey } from '../store/store.js';

/** What an ownership driver tells the supervisor: which connections this instance runs. */
export interface OwnedConnections {
  /** Run exactly these (connections being handed over keep their socket until it is replaced). */
  reconcile(conns: Connection[]): void;
  /** One connection changed or was newly taken. */
  sync(conn: Connection): void;
  /** This instance no longer runs it: stop its socket. */
  remove(key: ConnectionKey): void;
  /** Another instance owns it now: keep the socket until Signal replaces it (4409), or the ownership says to close it (`remove`). */
  handOver(key: ConnectionKey): void;
  /** How many handed-over sockets are still open. */
  handingOver(): number;
  /** Send one wake-up push once its socket is open (its former owner died, perhaps owing one). */
  owePush(key: ConnectionKey): void;
  /** The lease holds again: connections that waited for it connect now. */
  leaseRegained(): void;
  /** Whether the sockets reach Signal (see SignalHealth). */
  reachesSignal(): boolean;
}

/**
 * Which account devices this instance runs. SQLite: all of them (`Solo`). PostgreSQL: those its lease holds
 * (`Leases`), shared fairly with the other live instances.
 */
export interface Ownership {
  start(target: OwnedConnections): Promise<void>;
  /** Whether a socket may open now: right before each connect. */
  canConnect(conn: Connection): boolean;
  /** Whether a 4409 on this connection means another instance owns it now: no retry, no delivery check. */
  expectsReplacement(key: ConnectionKey): boolean;
  /** Stops following; on PostgreSQL hands every device over to the others first (bounded by `timeoutMs`). */
  stop(timeoutMs: number): Promise<void>;
  /** For /health: this instance, how many devices it owns, how many instances are live. */
  describe(): { instance?: string; owned?: number; liveInstances?: number };
}
