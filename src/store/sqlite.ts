import { chmodSync, closeSync, existsSync, linkSync, openSync, rmSync, statSync } from 'node:fs';
import Database from 'better-sqlite3';
import {
  StoreError,
  connectionKey,
  type Connection,
  type ConnectionKey,
  type ForbiddenCursor,
  type ForbiddenFor,
  type Heartbeat,
  type LeftBehindCandidate,
  type LiveState,
  type NewConnection,
  type OpenMode,
  type Store,
} from './store.js';

/**
/** Since when a forbidden connection is forbidden: unknown for a row forbidden in MollySocket, then its last change. */
const FORBIDDEN_SINCE = 'COALESCE(forbidden_at, updated_at)';

/**
 * MollySocket's rows in our columns (a table with its schema named `table`): for the migration and for reading its
 * file as it is. Its forbidden flag carries no reason.
 */
const mollySocketRows = (table: string): string => `
  SELECT uuid, COALESCE(device_id, 1) AS device_id, COALESCE(password, '') AS password, COALESCE(endpoint, '') AS endpoint,
         CASE WHEN forbidden THEN 1 ELSE 0 END AS forbidden,
         CASE WHEN forbidden THEN 'forbidden_in_mollysocket' END AS forbidden_reason, NULL AS forbidden_at,
         COALESCE(last_registration, 0) AS last_registration
  FROM ${table} WHERE uuid IS NOT NULL`;

const CREATE_CONNECTIONS = `
  CREATE TABLE connections(
    uuid TEXT NOT NULL,
    device_id INTEGER NOT NULL CHECK (device_id >= 1),
    password TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    forbidden INTEGER NOT NULL DEFAULT 0 CHECK (forbidden IN (0, 1)),
    forbidden_reason TEXT,
    forbidden_at INTEGER,
    last_registration INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (uuid, device_id)
  )`;

/** A step of the schema: run in one transaction with the others a file needs, in order, then `user_version` is set. */
interface Migration {
  /** The schema version the file has after this step (`user_version`). */
  version: number;
  up(db: Database.Database): void;
}

/**
 * The schema of the file, one source: every version in order. 0 is MollySocket's (one row per uuid; it never sets
 * user_version); 1 was never used. A file is brought from its version through every later step.
 */
const MIGRATIONS: Migration[] = [
  {
    // One row per account device; MollySocket's rows (one per uuid) move in, forbidden flag included.
    version: 2,
    up: (db) => {
      const fromMollySocket = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'connections'`).get() !== undefined;
      if (fromMollySocket) db.exec('ALTER TABLE connections RENAME TO connections_v1');
      db.exec(CREATE_CONNECTIONS);
      if (!fromMollySocket) return;
      const now = Math.floor(Date.now() / 1000);
      db.prepare(
        `INSERT OR REPLACE INTO connections
           (uuid, device_id, password, endpoint, forbidden, forbidden_reason, forbidden_at, last_registration, created_at, updated_at)
         SELECT *, @now, @now FROM (${mollySocketRows('connections_v1')})`,
      ).run({ now });
      db.exec('DROP TABLE connections_v1');
    },
  },
  {
    // What the running server publishes for `status` and `health`: connection states, heartbeat.
    version: 3,
    up: (db) =>
      db.exec(`
        CREATE TABLE live_state(
          uuid TEXT NOT NULL,
          device_id INTEGER NOT NULL,
          state TEXT NOT NULL,
          reason TEXT NOT NULL,
          since INTEGER NOT NULL,
          PRIMARY KEY (uuid, device_id)
        );
        CREATE TABLE heartbeat(
          id INTEGER PRIMARY KEY CHECK (id = 1),
          pid INTEGER NOT NULL,
          version TEXT NOT NULL,
          started_at INTEGER NOT NULL,
          seen_at INTEGER NOT NULL
        )`),
  },
  {
    // The wake-ups a stopping server still owed.
    version: 4,
    up: (db) =>
      db.exec(`
        CREATE TABLE owed_wakeups(
          uuid TEXT NOT NULL,
          device_id INTEGER NOT NULL,
          PRIMARY KEY (uuid, device_id)
        )`),
  },
  {
    /**
     * One spelling per uuid (lower case), so that one account device is one row and one socket. Rows that differ only
     * in the case of their uuid are merged: the newest registration stays (then the newest change, then the one already
     * lower-case), the others are dropped. What the server published is dropped too: it publishes again.
     */
    version: 5,
    up: (db) =>
      db.exec(`
        DELETE FROM connections WHERE rowid IN (
          SELECT rowid FROM (
            SELECT rowid, ROW_NUMBER() OVER (
              PARTITION BY lower(uuid), device_id
              ORDER BY last_registration DESC, updated_at DESC, uuid = lower(uuid) DESC, uuid
            ) AS rank
            FROM connections)
          WHERE rank > 1);
        UPDATE connections SET uuid = lower(uuid) WHERE uuid <> lower(uuid);
        INSERT OR IGNORE INTO owed_wakeups SELECT lower(uuid), device_id FROM owed_wakeups WHERE uuid <> lower(uuid);
        DELETE FROM owed_wakeups WHERE uuid <> lower(uuid);
        DELETE FROM live_state;`),
  },
  {
    // The VAPID public key the server signs with, so that the CLI can tell when its own key differs.
    version: 6,
    up: (db) => db.exec(`CREATE TABLE IF NOT EXISTS server_info(name TEXT PRIMARY KEY, value TEXT NOT NULL)`),
  },
  {
    // When a connection in backoff tries next, for `status`.
    version: 7,
    up: (db) => {
      // A file set back to an older version by hand may have it already.
      const columns = db.pragma('table_info(live_state)') as { name: string }[];
      if (!columns.some((c) => c.name === 'retry_at')) db.exec('ALTER TABLE live_state ADD COLUMN retry_at INTEGER');
    },
  },
  {
    // Forbidden connections by the time they became forbidden, for the sweeps that remove them.
    version: 8,
    up: (db) => db.exec(`CREATE INDEX IF NOT EXISTS connections_forbidden_since ON connections(${FORBIDDEN_SINCE}, uuid, device_id) WHERE forbidden = 1`),
  },
];

const SCHEMA_VERSION = MIGRATIONS.at(-1)!.version;

interface Row {
  uuid: string;
  device_id: number;
  password: string;
  endpoint: string;
  forbidden: number;
  forbidden_reason: string | null;
  forbidden_at: number | null;
  last_registration: number;
  created_at: number;
  updated_at: number;
}

/** The parameters of a compare-and-set on what a registration's decision was made on (all NULL: no row). */
const decidedFor = (c: Connection | undefined): Record<string, unknown> => ({
  oldPassword: c?.password ?? null,
  oldEndpoint: c?.endpoint ?? null,
  forbidden: c === undefined ? null : c.forbidden ? 1 : 0,
  forbiddenReason: c?.forbiddenReason ?? null,
});

const fromRow = (r: Row): Connection => ({
  uuid: r.uuid,
  deviceId: r.device_id,
  password: r.password,
  endpoint: r.endpoint,
  forbidden: r.forbidden === 1,
  forbiddenReason: r.forbidden_reason,
  forbiddenAt: r.forbidden_at,
  lastRegistration: r.last_registration,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
  owner: null,
  epoch: 0,
});

/**
 * Runs `fn` again while SQLite answers SQLITE_BUSY without waiting, which it does when two processes opening a new
 * file at once would otherwise deadlock upgrading their locks. Only at open time, so blocking briefly is fine.
 */
function retryWhileBusy(fn: () => void): void {
  for (let attempt = 1; ; attempt++) {
    try {
      fn();
      return;
    } catch (err) {
      if ((err as { code?: string }).code !== 'SQLITE_BUSY' || attempt >= 50) throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10 + Math.random() * 40);
    }
  }
}

/**
 * The SQLite file: schema, migration from MollySocket's file, and every query.
 * The server and the CLI both use it, concurrently (WAL mode, busy timeout).
 */
export class SqliteStore implements Store {
  /** Set when this open migrated MollySocket's file: the copy kept of it as it was. */
  migratedFrom: { backup: string } | undefined;
  /** Where connections are read from: our table, or MollySocket's rows seen in our columns (read mode). */
  private connections = 'connections';
  /** What this process last published to live_state (undefined: nothing yet, whatever is there is an earlier run's). */
  private published: Map<string, string> | undefined;
  /** Statements by their SQL, prepared once: preparing costs more than running the small ones asked per registration. */
  private readonly statements = new Map<string, Database.Statement>();

  private constructor(
    private readonly db: Database.Database,
    readonly path: string,
    /** The file opened, to notice when it is deleted or replaced under a running server. */
    private readonly identity: { dev: number; ino: number },
  ) {}

  private statement(sql: string): Database.Statement {
    let statement = this.statements.get(sql);
    if (!statement) this.statements.set(sql, (statement = this.db.prepare(sql)));
    return statement;
  }

  get location(): string {
    return this.path;
  }

  /** The path of the copy kept of MollySocket's file when it is migrated. */
  static backupPath(path: string): string {
    return `${path}.mollysocket.bak`;
  }

  /**
   * Opens the database as `mode` says (see OpenMode; `create` by default); a new file is created with mode 0600.
   * `busyTimeoutMs` is how long a statement waits, blocking, for another process's lock: the CLI can wait; the server
   * keeps it short and retries instead.
   */
  static open(path: string, opts: { mode?: OpenMode; busyTimeoutMs?: number } = {}): SqliteStore {
    const mode = opts.mode ?? 'create';
    try {
      if (mode === 'create') closeSync(openSync(path, 'a', 0o600)); // created private; an existing file is kept
      const { dev, ino } = statSync(path);
      const db = new Database(path, { readonly: mode === 'read', fileMustExist: true });
      db.pragma(`busy_timeout = ${opts.busyTimeoutMs ?? 5000}`);
      const store = new SqliteStore(db, path, { dev, ino });
      if (mode === 'read') {
        store.readAsItIs();
        return store;
      }
      retryWhileBusy(() => {
        store.migrate();
        // WAL lets the CLI write while the server reads. The mode is kept in the file: only a new file changes it.
        if (db.pragma('journal_mode', { simple: true }) !== 'wal') db.pragma('journal_mode = WAL');
      });
      return store;
    } catch (err) {
      if (err instanceof StoreError) throw err;
      const e = err as NodeJS.ErrnoException;
      throw new StoreError(
        `cannot open the database ${path} (setting "db"): ${e.code ?? ''} ${e.message}`.replace(/\s+/g, ' ').trim() +
          '; check that the directory exists and is writable by this user',
        { cause: err },
      );
    }
  }

  private version(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  private hasTable(name: string): boolean {
    return this.statement(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(name) !== undefined;
  }

  /** Read mode: any schema this program knows, MollySocket's included, without changing the file. */
  private readAsItIs(): void {
    const version = this.version();
    if (version > SCHEMA_VERSION) {
      throw new StoreError(`the database ${this.path} has schema version ${version}, newer than this program knows (${SCHEMA_VERSION}): upgrade mollysocket`);
    }
    if (!this.hasTable('connections')) {
      const empty = this.statement(`SELECT 1 FROM sqlite_master LIMIT 1`).get() === undefined;
      if (!empty) throw new StoreError(`${this.path} holds no connections table: it is not a MollySocket database (setting "db")`);
      // An empty file (`touch`ed, or never opened by a server): no connections yet.
      this.connections = `(SELECT ${['uuid', 'device_id', 'password', 'endpoint', 'forbidden', 'forbidden_reason', 'forbidden_at', 'last_registration', 'created_at', 'updated_at'].map((c) => `NULL AS ${c}`).join(', ')} WHERE 0)`;
      return;
    }
    if (version < 2) {
      // Lower-case uuids, as the migration stores them (schema 5).
      this.connections = `(SELECT lower(uuid) AS uuid, device_id, password, endpoint, forbidden, forbidden_reason, forbidden_at,
        last_registration, 0 AS created_at, 0 AS updated_at FROM (${mollySocketRows('connections')}))`;
    }
  }

  /**
   * Brings the schema to SCHEMA_VERSION. Safe when several processes (the server, the CLI) open a new or old file at
   * once: the work runs under SQLite's write lock and re-reads the version once it holds it.
   */
  private migrate(): void {
    const version = (): number => this.version();
    if (version() === SCHEMA_VERSION) return;
    if (version() > SCHEMA_VERSION) {
      throw new StoreError(`the database ${this.path} has schema version ${version()}, newer than this program knows (${SCHEMA_VERSION}): upgrade mollysocket`);
    }
    const backup = SqliteStore.backupPath(this.path);
    if (version() < 2 && this.hasTable('connections')) {
      this.keepPrivate();
      this.keepCopy(backup);
    }
    this.db
      .transaction(() => {
        const current = version();
        if (current === SCHEMA_VERSION) return; // another process did it meanwhile
        if (current < 2 && this.hasTable('connections')) this.migratedFrom = { backup }; // MollySocket's rows move in
        for (const step of MIGRATIONS) if (current < step.version) step.up(this.db);
        this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
      })
      .immediate();
  }

  /**
   * MollySocket's file is often readable by everyone (0644 under the usual umask) while it holds every password: once
   * it is ours, only its owner may read it, as a file this program creates. SQLite gives its -wal and -shm files the
   * database's mode. A file owned by another user (EPERM) keeps the mode that user chose.
   */
  private keepPrivate(): void {
    for (const file of [this.path, `${this.path}-wal`, `${this.path}-shm`]) {
      try {
        const mode = statSync(file).mode & 0o777;
        if (mode & 0o077) chmodSync(file, mode & 0o700);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'EPERM') throw err;
      }
    }
  }

  /**
   * A MollySocket database: keeps a copy as it was before anything changes. VACUUM cannot run in a transaction, so
   * several processes may get here at once: each writes its own file, and the first one linked into place stays.
   */
  private keepCopy(copy: string): void {
    if (existsSync(copy)) return;
    const mine = `${copy}.${process.pid}.tmp`;
    try {
      closeSync(openSync(mine, 'wx', 0o600)); // it holds every password: as private as the database (SQLite fills an empty file)
      this.db.prepare('VACUUM INTO ?').run(mine);
      linkSync(mine, copy);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err; // else another process kept the same copy
    } finally {
      rmSync(mine, { force: true });
    }
  }

  async get(key: ConnectionKey): Promise<Connection | undefined> {
    const row = this.statement(`SELECT * FROM ${this.connections} WHERE uuid = ? AND device_id = ?`).get(key.uuid, key.deviceId) as Row | undefined;
    return row && fromRow(row);
  }

  /** One statement per filter shape: a filter SQLite cannot fold at prepare time (`? IS NULL OR …`) scans the table. */
  async list(filter: { uuid?: string; deviceId?: number } = {}): Promise<Connection[]> {
    const { uuid, deviceId } = filter;
    const from = `SELECT * FROM ${this.connections}`;
    const order = 'ORDER BY uuid, device_id';
    const rows = (
      uuid !== undefined && deviceId !== undefined
        ? this.statement(`${from} WHERE uuid = ? AND device_id = ?`).all(uuid, deviceId)
        : uuid !== undefined
          ? this.statement(`${from} WHERE uuid = ? ${order}`).all(uuid)
          : deviceId !== undefined
            ? this.statement(`${from} WHERE device_id = ? ${order}`).all(deviceId)
            : this.statement(`${from} ${order}`).all()
    ) as Row[];
    return rows.map(fromRow);
  }

  async count(): Promise<number> {
    return (this.statement(`SELECT count(*) AS n FROM ${this.connections}`).get() as { n: number }).n;
  }

  async put(c: NewConnection, now: number): Promise<Connection> {
    this.assertPresent();
    const row = this.statement(
      `INSERT INTO connections (uuid, device_id, password, endpoint, forbidden, last_registration, created_at, updated_at)
         VALUES (@uuid, @deviceId, @password, @endpoint, 0, @now, @now, @now)
         ON CONFLICT (uuid, device_id) DO UPDATE SET password = @password, endpoint = @endpoint, forbidden = 0,
           forbidden_reason = NULL, forbidden_at = NULL, last_registration = @now, updated_at = @now
         RETURNING *`,
    )
      // all(), not get(): it steps to the end, where a failing commit (a full disk) is reported
      .all({ uuid: c.uuid, deviceId: c.deviceId, password: c.password, endpoint: c.endpoint, now })[0] as Row;
    return fromRow(row);
  }

  /** What a registration's decision was made on: no row, or one with these credentials, endpoint and forbidden state. */
  private static readonly UNCHANGED = `password = @oldPassword AND endpoint = @oldEndpoint AND forbidden = @forbidden
    AND forbidden_reason IS @forbiddenReason`;

  async putIf(c: NewConnection, now: number, decidedOn: Connection | undefined): Promise<Connection | undefined> {
    this.assertPresent();
    const row = this.statement(
      decidedOn === undefined
        ? `INSERT INTO connections (uuid, device_id, password, endpoint, forbidden, last_registration, created_at, updated_at)
             VALUES (@uuid, @deviceId, @password, @endpoint, 0, @now, @now, @now)
             ON CONFLICT (uuid, device_id) DO NOTHING RETURNING *`
        : `UPDATE connections SET password = @password, endpoint = @endpoint, forbidden = 0, forbidden_reason = NULL,
               forbidden_at = NULL, last_registration = @now, updated_at = @now
             WHERE uuid = @uuid AND device_id = @deviceId AND ${SqliteStore.UNCHANGED} RETURNING *`,
    )
      // all(), not get(): it steps to the end, where a failing commit (a full disk) is reported
      .all({ uuid: c.uuid, deviceId: c.deviceId, password: c.password, endpoint: c.endpoint, now, ...decidedFor(decidedOn) })[0] as Row | undefined;
    return row && fromRow(row);
  }

  async touchIf(key: ConnectionKey, now: number, decidedOn: Connection): Promise<Connection | undefined> {
    this.assertPresent();
    const row = this.statement(
      `UPDATE connections SET last_registration = @now WHERE uuid = @uuid AND device_id = @deviceId AND ${SqliteStore.UNCHANGED} RETURNING *`,
    ).all({ uuid: key.uuid, deviceId: key.deviceId, now, ...decidedFor(decidedOn) })[0] as Row | undefined;
    return row && fromRow(row);
  }

  /**
   * Marks an enabled connection forbidden, compare-and-set on what the decision was made for: the endpoint that
   * answered 404/410, or the password Signal refused. An answer about an endpoint or a password replaced meanwhile
   * (Molly registered again) changes nothing, and neither does one for a connection already forbidden (its reason
   * stays). Returns whether the connection changed. (One process owns every row of a SQLite file: no epoch to check.)
   */
  async setForbidden(key: ConnectionKey, reason: string, decidedFor: ForbiddenFor, now: number): Promise<boolean> {
    const changes = this.statement(
      `UPDATE connections SET forbidden = 1, forbidden_reason = @reason, forbidden_at = @now, updated_at = @now
         WHERE uuid = @uuid AND device_id = @deviceId AND forbidden = 0
           AND (@endpoint IS NULL OR endpoint = @endpoint) AND (@password IS NULL OR password = @password)`,
    ).run({
      reason,
      now,
      uuid: key.uuid,
      deviceId: key.deviceId,
      endpoint: 'endpoint' in decidedFor ? decidedFor.endpoint : null,
      password: 'password' in decidedFor ? decidedFor.password : null,
    }).changes;
    return changes > 0;
  }

  async enable(key: ConnectionKey, now: number): Promise<void> {
    this.statement(
      `UPDATE connections SET forbidden = 0, forbidden_reason = NULL, forbidden_at = NULL, updated_at = ?
         WHERE uuid = ? AND device_id = ?`,
    ).run(now, key.uuid, key.deviceId);
  }

  async remove(key: { uuid: string; deviceId?: number }): Promise<number> {
    return key.deviceId === undefined
      ? this.statement('DELETE FROM connections WHERE uuid = ?').run(key.uuid).changes
      : this.statement('DELETE FROM connections WHERE uuid = ? AND device_id = ?').run(key.uuid, key.deviceId).changes;
  }

  /**
   * Writes only the states that changed since the last call, and deletes those no longer there; the first call of a
   * run replaces whatever an earlier run left.
   */
  async publishStates(states: LiveState[]): Promise<void> {
    const next = new Map(states.map((s) => [connectionKey(s), JSON.stringify([s.state, s.reason, s.since, s.retryAt])]));
    const published = this.published;
    const changed = states.filter((s) => published?.get(connectionKey(s)) !== next.get(connectionKey(s)));
    const gone = published ? [...published.keys()].filter((k) => !next.has(k)) : [];
    if (published && changed.length === 0 && gone.length === 0) return;
    this.db.transaction(() => {
      if (!published) this.db.exec('DELETE FROM live_state');
      const upsert = this.statement(
        `INSERT INTO live_state (uuid, device_id, state, reason, since, retry_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (uuid, device_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, since = excluded.since, retry_at = excluded.retry_at`,
      );
      for (const s of changed) upsert.run(s.uuid, s.deviceId, s.state, s.reason, s.since, s.retryAt ?? null);
      const remove = this.statement('DELETE FROM live_state WHERE uuid = ? AND device_id = ?');
      for (const k of gone) {
        const dot = k.lastIndexOf('.');
        remove.run(k.slice(0, dot), Number(k.slice(dot + 1)));
      }
    })();
    this.published = next;
  }

  async liveStates(): Promise<LiveState[]> {
    if (!this.hasTable('live_state')) return []; // a file read as it is, from before schema 3
    return (
      this.statement('SELECT * FROM live_state').all() as {
        uuid: string;
        device_id: number;
        state: string;
        reason: string;
        since: number;
        retry_at?: number | null;
      }[]
    ).map((r) => ({
      uuid: r.uuid,
      deviceId: r.device_id,
      state: r.state,
      reason: r.reason,
      since: r.since,
      ...(typeof r.retry_at === 'number' && { retryAt: r.retry_at }),
    }));
  }

  /** The file's one server writes its heartbeat every few seconds (see `heartbeats` in open.ts). */
  async beat(h: Heartbeat): Promise<void> {
    this.statement(
      `INSERT INTO heartbeat (id, pid, version, started_at, seen_at) VALUES (1, @pid, @version, @startedAt, @seenAt)
         ON CONFLICT (id) DO UPDATE SET pid = @pid, version = @version, started_at = @startedAt, seen_at = @seenAt`,
    ).run(h);
  }

  /** The one server of this file: no name needed. */
  async heartbeat(): Promise<Heartbeat | undefined> {
    if (!this.hasTable('heartbeat')) return undefined;
    const r = this.statement('SELECT * FROM heartbeat WHERE id = 1').get() as { pid: number; version: string; started_at: number; seen_at: number } | undefined;
    return r && { pid: r.pid, version: r.version, startedAt: r.started_at, seenAt: r.seen_at };
  }

  /** The server records the VAPID public key it signs with. */
  async recordVapidKey(publicKey: string): Promise<void> {
    this.statement(`INSERT INTO server_info (name, value) VALUES ('vapid_public_key', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value`).run(
      publicKey,
    );
  }

  /** The VAPID public key the server last started with; undefined when no server of this version ran on the file. */
  async recordedVapidKey(): Promise<string | undefined> {
    if (!this.hasTable('server_info')) return undefined;
    const r = this.statement(`SELECT value FROM server_info WHERE name = 'vapid_public_key'`).get() as { value: string } | undefined;
    return r?.value;
  }

  /** The server stopped: nothing it published is current any more. */
  async clearLive(): Promise<void> {
    this.published = undefined;
    this.db.transaction(() => {
      this.db.exec('DELETE FROM live_state');
      this.db.exec('DELETE FROM heartbeat');
    })();
  }

  /** Whether the database file is still the one opened (not deleted or replaced) and readable. */
  async healthy(): Promise<boolean> {
    return this.present();
  }

  private present(): boolean {
    try {
      this.db.pragma('schema_version'); // the file answers (a read of its header, no table scanned)
      const { dev, ino } = statSync(this.path);
      return dev === this.identity.dev && ino === this.identity.ino;
    } catch {
      return false;
    }
  }

  /** Answers SQLite gives while another connection holds the lock: worth waiting for. */
  isTransient(err: unknown): boolean {
    return /^SQLITE_(BUSY|LOCKED)/.test((err as { code?: string }).code ?? '');
  }

  /** Constraint, size and type errors: about what was written, not about the file. */
  isDataError(err: unknown): boolean {
    return /^SQLITE_(CONSTRAINT|TOOBIG|MISMATCH)/.test((err as { code?: string }).code ?? '');
  }

  /** Throws when what is written now would be lost (the file was deleted or replaced under the server). */
  private assertPresent(): void {
    if (!this.present()) {
      throw new StoreError(`the database ${this.path} was deleted or replaced while the server runs: restore it and restart`);
    }
  }

  async keepOwedWakeups(keys: ConnectionKey[]): Promise<void> {
    this.db.transaction(() => {
      this.db.exec('DELETE FROM owed_wakeups');
      const insert = this.statement('INSERT OR IGNORE INTO owed_wakeups (uuid, device_id) VALUES (?, ?)');
      for (const k of keys) insert.run(k.uuid, k.deviceId);
    })();
  }

  async takeOwedWakeups(): Promise<ConnectionKey[]> {
    return this.db.transaction(() => {
      const rows = this.statement('SELECT uuid, device_id FROM owed_wakeups').all() as { uuid: string; device_id: number }[];
      this.db.exec('DELETE FROM owed_wakeups');
      return rows.map((r) => ({ uuid: r.uuid, deviceId: r.device_id }));
    })();
  }

  async importConnections(conns: Connection[]): Promise<void> {
    const insert = this.statement(
      `INSERT INTO connections (uuid, device_id, password, endpoint, forbidden, forbidden_reason, forbidden_at, last_registration, created_at, updated_at)
       VALUES (@uuid, @deviceId, @password, @endpoint, @forbidden, @forbiddenReason, @forbiddenAt, @lastRegistration, @createdAt, @updatedAt)`,
    );
    this.db.transaction(() => {
      for (const c of conns) insert.run({ ...c, forbidden: c.forbidden ? 1 : 0, owner: undefined, epoch: undefined });
    })();
  }

  async removeForbidden(key: ConnectionKey): Promise<boolean> {
    return this.statement('DELETE FROM connections WHERE uuid = ? AND device_id = ? AND forbidden = 1').run(key.uuid, key.deviceId).changes > 0;
  }

  async forbiddenWithNewerDevices(before: number, after: ForbiddenCursor | undefined, limit: number): Promise<LeftBehindCandidate[]> {
    const rows = this.statement(
      `SELECT o.*, ${FORBIDDEN_SINCE} AS since,
           (SELECT group_concat(n.device_id) FROM connections n
            WHERE n.uuid = o.uuid AND n.device_id <> o.device_id AND n.forbidden = 0 AND n.created_at > o.created_at) AS newer
         FROM connections o
         WHERE o.forbidden = 1 AND ${FORBIDDEN_SINCE} <= @before AND (${FORBIDDEN_SINCE}, o.uuid, o.device_id) > (@since, @uuid, @deviceId)
         ORDER BY ${FORBIDDEN_SINCE}, o.uuid, o.device_id LIMIT @limit`,
    ).all({ before, limit, ...(after ?? { since: -1, uuid: '', deviceId: 0 }) }) as (Row & { since: number; newer: string | null })[];
    return rows.map((r) => ({
      conn: fromRow(r),
      cursor: { since: r.since, uuid: r.uuid, deviceId: r.device_id },
      newerDevices: r.newer === null ? [] : r.newer.split(',').map(Number),
    }));
  }

  async removeForbiddenSince(before: number, limit: number): Promise<ConnectionKey[]> {
    const rows = this.statement(
      `DELETE FROM connections WHERE rowid IN (
           SELECT rowid FROM connections WHERE forbidden = 1 AND ${FORBIDDEN_SINCE} <= ? ORDER BY ${FORBIDDEN_SINCE} LIMIT ?)
         RETURNING uuid, device_id`,
    ).all(before, limit) as { uuid: string; device_id: number }[];
    return rows.map((r) => ({ uuid: r.uuid, deviceId: r.device_id }));
  }

  /** Changes whenever another connection (the CLI) commits to the file. */
  dataVersion(): number {
    return this.db.pragma('data_version', { simple: true }) as number;
  }

  async close(): Promise<void> {
    this.db.close();
  }
}
