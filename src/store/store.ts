/**
 * The store's contract: the data model and the `Store` interface every backend implements (src/store/sqlite.ts,
 * src/store/postgres.ts). Nothing here knows a backend; src/store/open.ts picks one by the "db" setting.
 */

/** One registered account device. Times are unix seconds, as in MollySocket's database. */
export interface Connection {
  uuid: string;
  deviceId: number;
  password: string;
  endpoint: string;
  forbidden: boolean;
  /** Why the connection is forbidden, e.g. `signal_403` or `endpoint_gone`. */
  forbiddenReason: string | null;
  forbiddenAt: number | null;
  lastRegistration: number;
  createdAt: number;
  updatedAt: number;
  /** PostgreSQL: the instance that owns it (runs its socket), and the epoch raised on every change of owner. */
  owner: string | null;
  epoch: number;
}

/** The fields a registration or the CLI stores. */
export type NewConnection = Pick<Connection, 'uuid' | 'deviceId' | 'password' | 'endpoint'>;

export type ConnectionKey = Pick<Connection, 'uuid' | 'deviceId'>;
/** What a decision to forbid a connection was made for: the endpoint a push server gave up, or refused credentials. */
export type ForbiddenFor = { endpoint: string } | { password: string };
export const connectionKey = (c: ConnectionKey): string => `${c.uuid}.${c.deviceId}`;

/**
 * How a command opens the database: `create` it if missing and bring it to the current schema (the server,
 * `connection add`); `write` an existing one, migrating it (commands that change connections); `read` an existing one
 * as it is, MollySocket's file included, never changing it.
 */
export type OpenMode = 'create' | 'write' | 'read';

/** Where a walk over forbidden connections (oldest refusal first) got to. */
export interface ForbiddenCursor {
  since: number;
  uuid: string;
  deviceId: number;
}

/** A forbidden connection, and the devices of its account registered here later that are not forbidden. */
export interface LeftBehindCandidate {
  conn: Connection;
  newerDevices: number[];
  cursor: ForbiddenCursor;
}

/** A connection's state as the running server last published it (times in ms). */
export interface LiveState {
  uuid: string;
  deviceId: number;
  state: string;
  reason: string;
  since: number;
  /** In backoff: when it tries next. */
  retryAt?: number;
}

export interface Heartbeat {
  pid: number;
  version: string;
  startedAt: number;
  seenAt: number;
}

export class StoreError extends Error {
  override name = 'StoreError';
}

/**
 * Where the backends meet: every query the server and the CLI make. SQLite (one machine, the default) and
 * PostgreSQL (several instances) both implement all of it; PostgreSQL is asynchronous, so all of it is. What only one
 * backend can do is offered by its opening (src/store/open.ts), never as a method that does nothing on the other.
 */
export interface Store {
  /** The file path, or the URL without its password. */
  readonly location: string;
  get(key: ConnectionKey): Promise<Connection | undefined>;
  /** Every connection, or those of one account, or of one of its devices. */
  list(filter?: { uuid?: string; deviceId?: number }): Promise<Connection[]>;
  /**
   * Inserts or fully replaces a connection, enabled, as a fresh registration at `now` (unix seconds). Throws when what
   * is written would be lost (a file deleted or replaced under the server): a registration is answered `ok` only once
   * it is stored.
   */
  put(c: NewConnection, now: number): Promise<Connection>;
  /** How many connections are stored (the `max_connections` cap). */
  count(): Promise<number>;
  /**
   * A registration's write, compare-and-set on what its decision was made on (`decidedOn`: no row, or a row with these
   * credentials, endpoint and forbidden state): as `put`, but undefined, and nothing written, when the stored row is
   * no longer that (a concurrent registration, the CLI or the server changed it): decide again.
   */
  putIf(c: NewConnection, now: number, decidedOn: Connection | undefined): Promise<Connection | undefined>;
  /** An identical registration: only remembers when it was seen; compare-and-set as `putIf`. */
  touchIf(key: ConnectionKey, now: number, decidedOn: Connection): Promise<Connection | undefined>;
  /**
   * Marks an enabled connection forbidden, compare-and-set on what the decision was made for (the endpoint or the
   * password). `fence` (the owner's view of the row) makes it a write of the owner: on PostgreSQL it changes nothing
   * once the epoch moved on (another instance owns the row now). Returns whether the row changed.
   */
  setForbidden(key: ConnectionKey, reason: string, decidedFor: ForbiddenFor, now: number, fence?: Pick<Connection, 'epoch'>): Promise<boolean>;
  /** Clears the forbidden flag: the server connects again. */
  enable(key: ConnectionKey, now: number): Promise<void>;
  /** Removes one device's connection, or every device of the account when no device is given. */
  remove(key: { uuid: string; deviceId?: number }): Promise<number>;
  /** Adds these connections as they are (times, forbidden state), owned by nobody: `db copy`. */
  importConnections(conns: Connection[]): Promise<void>;
  /** Removes a connection only if it is (still) forbidden; whether it did. */
  removeForbidden(key: ConnectionKey): Promise<boolean>;
  /**
   * At most `limit` connections forbidden since `before` (unix seconds) or earlier, after `after` in the order of their
   * refusal, each with its account's newer devices: one batch of the walk that finds rows left behind by a re-link.
   */
  forbiddenWithNewerDevices(before: number, after: ForbiddenCursor | undefined, limit: number): Promise<LeftBehindCandidate[]>;
  /** Removes at most `limit` connections forbidden since `before` (unix seconds) or earlier, oldest first; their keys. */
  removeForbiddenSince(before: number, limit: number): Promise<ConnectionKey[]>;
  /** The running server's connection states (all of them; a backend writes only what changed). */
  publishStates(states: LiveState[]): Promise<void>;
  liveStates(): Promise<LiveState[]>;
  /**
   * The running server's heartbeat: a file's one server, or the most recently renewed of several instances (of this
   * `name`, when given: `health` asks about its own host's instance; a file has only one server to ask about).
   */
  heartbeat(name?: string): Promise<Heartbeat | undefined>;
  /** The server records the VAPID public key it signs with (commands check theirs against it). */
  recordVapidKey(publicKey: string): Promise<void>;
  /** The VAPID public key the server last started with; undefined when none ran on this database yet. */
  recordedVapidKey(): Promise<string | undefined>;
  /** This server stopped cleanly: nothing it published (states, heartbeat) is current any more. */
  clearLive(): Promise<void>;
  /** Whether the database answers (and, for a file, is still the one opened). */
  healthy(): Promise<boolean>;
  /** Whether a write failed only because another process holds a lock (worth retrying soon), by this backend's codes. */
  isTransient(err: unknown): boolean;
  /**
   * Whether a write failed for its own data (what one request sent cannot be stored), by this backend's codes: that
   * request's error, never the store's health, and retrying cannot help.
   */
  isDataError(err: unknown): boolean;
  /** Keeps the connections a stopping server still owed a wake-up. */
  keepOwedWakeups(keys: ConnectionKey[]): Promise<void>;
  /** The wake-ups owed to the connections this server runs, forgotten as they are read. */
  takeOwedWakeups(): Promise<ConnectionKey[]>;
  close(): Promise<void>;
}
