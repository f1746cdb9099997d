import pg from 'pg';
import { bucketOf } from '../cluster/shares.js';
import { StoreError, connectionKey, type Connection, type ConnectionKey, type ForbiddenFor, type Heartbeat, type LiveState, type NewConnection, type OpenMode, type Store } from './store.js';
import { redactUrl } from './location.js';
import type { InstanceRow } from '../cluster/lease-store.js';

export type { InstanceRow };

/** The NOTIFY channel: payloads `changed:<uuid>.<device>` (a row to re-read) or `owners` (ownership moved). */
export const CHANNEL = 'mollysocket';

/** bigint columns (epochs, unix times) as numbers: they stay far below 2^53. */
const types = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/** Each migration brings the schema from its index to the next version. */
const MIGRATIONS = [
  `CREATE TABLE instances(
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     pid INTEGER NOT NULL,
     version TEXT NOT NULL,
     started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
     renewed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
     lease_until TIMESTAMPTZ NOT NULL,
     leaving BOOLEAN NOT NULL DEFAULT false
   );
   CREATE TABLE connections(
     uuid TEXT NOT NULL,
     device_id INTEGER NOT NULL CHECK (device_id >= 1),
     password TEXT NOT NULL,
     endpoint TEXT NOT NULL,
     forbidden BOOLEAN NOT NULL DEFAULT false,
     forbidden_reason TEXT,
     forbidden_at BIGINT,
     last_registration BIGINT NOT NULL DEFAULT 0,
     created_at BIGINT NOT NULL,
     updated_at BIGINT NOT NULL,
     bucket SMALLINT NOT NULL,
     owner TEXT REFERENCES instances(id) ON DELETE SET NULL,
     epoch BIGINT NOT NULL DEFAULT 0,
     owed_wake BOOLEAN NOT NULL DEFAULT false,
     PRIMARY KEY (uuid, device_id)
   );
   CREATE INDEX connections_owner ON connections(owner);
   CREATE INDEX connections_unowned ON connections(bucket) WHERE owner IS NULL;
   CREATE TABLE live_state(
     instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
     uuid TEXT NOT NULL,
     device_id INTEGER NOT NULL,
     state TEXT NOT NULL,
     reason TEXT NOT NULL,
     since BIGINT NOT NULL,
     PRIMARY KEY (instance, uuid, device_id)
   );
   CREATE TABLE settings(name TEXT PRIMARY KEY, value TEXT NOT NULL)`,
  // Whether an instance's sockets reach Signal: one that cannot while others can gives its devices up.
  `ALTER TABLE instances ADD COLUMN reaches_signal BOOLEAN NOT NULL DEFAULT true`,
];

/** A `connections` row as selected. */
export interface Row {
  uuid: string;
  device_id: number;
  password: string;
  endpoint: string;
  forbidden: boolean;
  forbidden_reason: string | null;
  forbidden_at: number | null;
  last_registration: number;
  created_at: number;
  updated_at: number;
  owner: string | null;
  epoch: number;
}

export const fromRow = (r: Row): Connection => ({
  uuid: r.uuid,
  deviceId: r.device_id,
  password: r.password,
  endpoint: r.endpoint,
  forbidden: r.forbidden,
  forbiddenReason: r.forbidden_reason,
  forbiddenAt: r.forbidden_at,
  lastRegistration: r.last_registration,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
  owner: r.owner,
  epoch: r.epoch,
});


/**
 * How long an ordinary query may take before it fails: a frozen or unreachable server must not hang a caller, and Molly
 * gets internal_error (and tries again later) rather than no answer.
 */
const QUERY_TIMEOUT_MS = 5_000;

/**
 * The PostgreSQL store: the same queries as the SQLite file, plus the lease rows and ownership columns several
 * instances share. Statements are unnamed (no prepared statements), so it also works behind PgBouncer; LISTEN gets
 * its own client (see `listen`).
 */
export class PostgresStore implements Store {
  /** What this instance last published, to write only what changed. */
  private published = new Map<string, string>();
  private publishing: string | undefined;

  private constructor(
    private readonly pool: pg.Pool,
    readonly url: string,
  ) {}

  /** The instance whose states `publishStates` writes (set by the leases once joined): a new row has none yet. */
  get instance(): string | undefined {
    return this.publishing;
  }

  set instance(id: string | undefined) {
    this.publishing = id;
    this.published.clear();
  }

  get location(): string {
    return redactUrl(this.url);
  }

  /**
   * Connects, and creates or migrates the schema, except in `read` mode (the read-only commands): there a database
   * without this program's current schema is an error, and nothing is changed.
   */
  static async open(url: string, opts: { mode?: OpenMode } = {}): Promise<PostgresStore> {
    const pool = new pg.Pool({
      connectionString: url,
      max: 4,
      types,
      keepAlive: true,
      connectionTimeoutMillis: 5_000,
      query_timeout: QUERY_TIMEOUT_MS,
      application_name: 'mollysocket',
    });
    pool.on('error', () => {}); // an idle client lost its server: the next query opens another
    const store = new PostgresStore(pool, url);
    try {
      if (opts.mode === 'read') await store.checkSchema();
      else await store.migrate();
    } catch (err) {
      await pool.end().catch(() => {});
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot open the database ${store.location} (setting "db"): ${(err as Error).message}`, { cause: err });
    }
    return store;
  }

  /** For read-only commands: the schema must be there, as this version of the server leaves it. */
  private async checkSchema(): Promise<void> {
    const [table] = await this.rows<{ name: string | null }>(`SELECT to_regclass('schema_version')::text AS name`);
    const [row] = table?.name ? await this.rows<{ version: number }>('SELECT version FROM schema_version') : [];
    if (row === undefined) {
      throw new StoreError(`no mollysocket tables in the database ${this.location} (setting "db"): start the server on it first, or check db / MOLLY_DB / -c`);
    }
    if (row.version !== MIGRATIONS.length) {
      throw new StoreError(
        `the database ${this.location} has schema version ${row.version}, this program ${MIGRATIONS.length}: start this version's server on it first (it migrates), or use the matching mollysocket`,
      );
    }
  }

  /** Creates or migrates the schema, once, however many instances start at the same moment. */
  private async migrate(): Promise<void> {
    await this.transaction(async (c) => {
      await c.query(`SELECT pg_advisory_xact_lock(hashtext('mollysocket schema'))`);
      await c.query('CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)');
      const row = (await c.query<{ version: number }>('SELECT version FROM schema_version')).rows[0];
      const version = row?.version ?? 0;
      if (version > MIGRATIONS.length) {
        throw new StoreError(`the database has schema version ${version}, newer than this program knows (${MIGRATIONS.length}): upgrade mollysocket`);
      }
      for (let v = version; v < MIGRATIONS.length; v++) await c.query(MIGRATIONS[v]!);
      if (!row) await c.query('INSERT INTO schema_version (version) VALUES ($1)', [MIGRATIONS.length]);
      else if (version < MIGRATIONS.length) await c.query('UPDATE schema_version SET version = $1', [MIGRATIONS.length]);
    });
  }

  /**
   * Runs `fn` in a transaction on one client of the pool. While a client is checked out the pool does not listen for
   * its errors: the server going away between two statements (a restart, pg_terminate_backend) would be an uncaught
   * exception. Listened for here instead; the statement under way fails, as in an outage.
   */
  async transaction<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    let broken: Error | undefined;
    const onError = (err: Error): void => void (broken ??= err);
    c.on('error', onError);
    try {
      await c.query('BEGIN');
      const result = await fn(c);
      await c.query('COMMIT');
      c.off('error', onError);
      c.release(broken); // a client that lost its server is not reused
      return result;
    } catch (err) {
      if (!broken) await c.query('ROLLBACK').catch(() => {});
      c.off('error', onError);
      c.release(broken ?? (err as Error));
      throw err;
    }
  }

  /** One statement, unnamed (PgBouncer), failing after `timeoutMs` if given. */
  async rows<R extends pg.QueryResultRow>(text: string, values: unknown[] = [], timeoutMs?: number): Promise<R[]> {
    return (await this.pool.query<R>({ text, values, ...(timeoutMs !== undefined && { query_timeout: timeoutMs }) } as pg.QueryConfig)).rows;
  }

  async get(key: ConnectionKey): Promise<Connection | undefined> {
    const [row] = await this.rows<Row>('SELECT * FROM connections WHERE uuid = $1 AND device_id = $2', [key.uuid, key.deviceId]);
    return row && fromRow(row);
  }

  async list(filter: { uuid?: string; deviceId?: number } = {}): Promise<Connection[]> {
    const rows = await this.rows<Row>(
      `SELECT * FROM connections WHERE ($1::text IS NULL OR uuid = $1) AND ($2::int IS NULL OR device_id = $2)
       ORDER BY uuid COLLATE "C", device_id`,
      [filter.uuid ?? null, filter.deviceId ?? null],
    );
    return rows.map(fromRow);
  }

  /** Written and announced in one statement: the owner (or the bucket's owner, for a new row) applies it at once. */
  async put(c: NewConnection, now: number): Promise<Connection> {
    const [row] = await this.rows<Row>(
      `WITH r AS (
         INSERT INTO connections (uuid, device_id, password, endpoint, forbidden, last_registration, created_at, updated_at, bucket)
         VALUES ($1, $2, $3, $4, false, $5, $5, $5, $6)
         ON CONFLICT (uuid, device_id) DO UPDATE SET password = $3, endpoint = $4, forbidden = false,
           forbidden_reason = NULL, forbidden_at = NULL, last_registration = $5, updated_at = $5
         RETURNING *)
       SELECT r.*, pg_notify('${CHANNEL}', 'changed:' || r.uuid || '.' || r.device_id) FROM r`,
      [c.uuid, c.deviceId, c.password, c.endpoint, now, bucketOf(c.uuid, c.deviceId)],
    );
    return fromRow(row!);
  }

  async touchRegistration(key: ConnectionKey, now: number): Promise<Connection | undefined> {
    const [row] = await this.rows<Row>('UPDATE connections SET last_registration = $1 WHERE uuid = $2 AND device_id = $3 RETURNING *', [
      now,
      key.uuid,
      key.deviceId,
    ]);
    return row && fromRow(row);
  }

  async setForbidden(key: ConnectionKey, reason: string, decidedFor: ForbiddenFor, now: number, fence?: Pick<Connection, 'epoch'>): Promise<boolean> {
    const rows = await this.rows(
      `WITH r AS (
         UPDATE connections SET forbidden = true, forbidden_reason = $1, forbidden_at = $2, updated_at = $2
         WHERE uuid = $3 AND device_id = $4 AND NOT forbidden AND ($5::bigint IS NULL OR epoch = $5)
           AND ($6::text IS NULL OR endpoint = $6) AND ($7::text IS NULL OR password = $7)
         RETURNING uuid, device_id)
       SELECT pg_notify('${CHANNEL}', 'changed:' || uuid || '.' || device_id) FROM r`,
      [
        reason,
        now,
        key.uuid,
        key.deviceId,
        fence?.epoch ?? null,
        'endpoint' in decidedFor ? decidedFor.endpoint : null,
        'password' in decidedFor ? decidedFor.password : null,
      ],
    );
    return rows.length > 0;
  }

  async enable(key: ConnectionKey, now: number): Promise<void> {
    await this.rows(
      `WITH r AS (
         UPDATE connections SET forbidden = false, forbidden_reason = NULL, forbidden_at = NULL, updated_at = $1
         WHERE uuid = $2 AND device_id = $3 RETURNING uuid, device_id)
       SELECT pg_notify('${CHANNEL}', 'changed:' || uuid || '.' || device_id) FROM r`,
      [now, key.uuid, key.deviceId],
    );
  }

  async remove(key: { uuid: string; deviceId?: number }): Promise<number> {
    const rows = await this.rows(
      `WITH r AS (DELETE FROM connections WHERE uuid = $1 AND ($2::int IS NULL OR device_id = $2) RETURNING uuid, device_id)
       SELECT pg_notify('${CHANNEL}', 'changed:' || uuid || '.' || device_id) FROM r`,
      [key.uuid, key.deviceId ?? null],
    );
    return rows.length;
  }

  async importConnections(conns: Connection[]): Promise<void> {
    await this.transaction(async (c) => {
      for (let i = 0; i < conns.length; i += 1_000) {
        const part = conns.slice(i, i + 1_000);
        const column = <T>(f: (c: Connection) => T): T[] => part.map(f);
        await c.query(
          `INSERT INTO connections (uuid, device_id, password, endpoint, forbidden, forbidden_reason, forbidden_at,
             last_registration, created_at, updated_at, bucket)
           SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bool[], $6::text[], $7::int8[], $8::int8[],
             $9::int8[], $10::int8[], $11::int2[])`,
          [
            column((x) => x.uuid),
            column((x) => x.deviceId),
            column((x) => x.password),
            column((x) => x.endpoint),
            column((x) => x.forbidden),
            column((x) => x.forbiddenReason),
            column((x) => x.forbiddenAt),
            column((x) => x.lastRegistration),
            column((x) => x.createdAt),
            column((x) => x.updatedAt),
            column((x) => bucketOf(x.uuid, x.deviceId)),
          ],
        );
      }
      await c.query(`SELECT pg_notify('${CHANNEL}', 'owners')`); // running instances claim them at once
    });
  }

  async removeForbidden(key: ConnectionKey): Promise<boolean> {
    const rows = await this.rows(
      `WITH r AS (DELETE FROM connections WHERE uuid = $1 AND device_id = $2 AND forbidden RETURNING uuid, device_id)
       SELECT pg_notify('${CHANNEL}', 'changed:' || uuid || '.' || device_id) FROM r`,
      [key.uuid, key.deviceId],
    );
    return rows.length > 0;
  }

  /** Writes only the states that changed since the last call, and deletes those no longer there. */
  async publishStates(states: LiveState[]): Promise<void> {
    const instance = this.instance;
    if (instance === undefined) return; // not joined yet: there is no instance row to publish under
    const next = new Map(states.map((s) => [connectionKey(s), JSON.stringify([s.state, s.reason, s.since])]));
    const changed = states.filter((s) => this.published.get(connectionKey(s)) !== next.get(connectionKey(s)));
    const gone = [...this.published.keys()].filter((k) => !next.has(k));
    if (changed.length === 0 && gone.length === 0) return;
    await this.transaction(async (c) => {
      if (changed.length > 0) {
        await c.query(
          `INSERT INTO live_state (instance, uuid, device_id, state, reason, since)
           SELECT $1, * FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::bigint[])
           ON CONFLICT (instance, uuid, device_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, since = excluded.since`,
          [instance, changed.map((s) => s.uuid), changed.map((s) => s.deviceId), changed.map((s) => s.state), changed.map((s) => s.reason), changed.map((s) => s.since)],
        );
      }
      if (gone.length > 0) {
        const keys = gone.map((k) => k.split('.'));
        await c.query(
          `DELETE FROM live_state WHERE instance = $1 AND (uuid, device_id) IN (SELECT * FROM unnest($2::text[], $3::int[]))`,
          [instance, keys.map(([u]) => u), keys.map(([, d]) => Number(d))],
        );
      }
    });
    this.published = next;
  }

  /** The states published by the owner of each device (a device being handed over is also listed by its old owner). */
  async liveStates(): Promise<LiveState[]> {
    const rows = await this.rows<{ uuid: string; device_id: number; state: string; reason: string; since: number }>(
      `SELECT DISTINCT ON (l.uuid, l.device_id) l.uuid, l.device_id, l.state, l.reason, l.since
       FROM live_state l JOIN instances i ON i.id = l.instance AND i.lease_until > now()
       LEFT JOIN connections c ON c.uuid = l.uuid AND c.device_id = l.device_id
       ORDER BY l.uuid, l.device_id, (c.owner = l.instance) DESC`,
    );
    return rows.map((r) => ({ uuid: r.uuid, deviceId: r.device_id, state: r.state, reason: r.reason, since: r.since }));
  }

  /** Nothing to write: an instance's lease renewal is its heartbeat (see `renew`). */
  async beat(_h: Heartbeat): Promise<void> {}

  /** The most recently renewed instance (of this name, if given); ages come from the database's clock. */
  async heartbeat(name?: string): Promise<Heartbeat | undefined> {
    const live = (await this.instances())
      .filter((i) => name === undefined || i.name === name)
      .sort((a, b) => a.renewedAgoMs - b.renewedAgoMs)[0];
    return live && { pid: live.pid, version: live.version, startedAt: live.startedAt, seenAt: Date.now() - live.renewedAgoMs };
  }

  /** Every instance leaves its own rows when it stops (`leave`); nothing is shared to clear. */
  async clearLive(): Promise<void> {}

  async healthy(): Promise<boolean> {
    try {
      await this.rows('SELECT 1', [], 2_000);
      return true;
    } catch {
      return false;
    }
  }

  /** clusterVapidKey keeps the cluster's public key in settings, where commands read it. */
  async recordVapidKey(): Promise<void> {}

  async recordedVapidKey(): Promise<string | undefined> {
    return this.setting('vapid_public_key');
  }

  /** A database server is not a file that can vanish under the program: a failure shows as a failing query. */
  async assertPresent(): Promise<void> {}

  /** Owed wake-ups travel with the rows: whoever claims them next pushes once connected. */
  async keepOwedWakeups(keys: ConnectionKey[]): Promise<void> {
    if (keys.length === 0) return;
    await this.rows(
      'UPDATE connections SET owed_wake = true WHERE (uuid, device_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))',
      [keys.map((k) => k.uuid), keys.map((k) => k.deviceId)],
    );
  }

  /** Nothing to take at start: rows owed a wake-up carry owed_wake, and their claim pushes (see `claim`). */
  async takeOwedWakeups(): Promise<ConnectionKey[]> {
    return [];
  }

  /** A stored setting; `init` is stored first when there is none yet, and whatever is stored wins. */
  async setting(name: string, init?: string): Promise<string | undefined> {
    if (init !== undefined) await this.rows('INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING', [name, init]);
    return (await this.rows<{ value: string }>('SELECT value FROM settings WHERE name = $1', [name]))[0]?.value;
  }

  /**
   * Every instance row, live or expired; with `counts`, how many devices each owns (for `status`: it reads every row,
   * so the lease tick, whose cost must not grow with the devices, leaves it out).
   */
  async instances(opts: { timeoutMs?: number; counts?: boolean } = {}): Promise<InstanceRow[]> {
    const rows = await this.rows<{
      id: string;
      name: string;
      pid: number;
      version: string;
      started_ms: number;
      live: boolean;
      leaving: boolean;
      reaches_signal: boolean;
      left_ms: number;
      renewed_ago_ms: number;
      owned: number | null;
    }>(
      `SELECT i.id, i.name, i.pid, i.version, (extract(epoch FROM i.started_at) * 1000)::int8 AS started_ms,
              i.lease_until > now() AS live, i.leaving, i.reaches_signal,
              (extract(epoch FROM i.lease_until - now()) * 1000)::int8 AS left_ms,
              (extract(epoch FROM now() - i.renewed_at) * 1000)::int8 AS renewed_ago_ms,
              CASE WHEN $1 THEN (SELECT count(*) FROM connections c WHERE c.owner = i.id) END AS owned
       FROM instances i ORDER BY i.name, i.id`,
      [opts.counts ?? false],
      opts.timeoutMs,
    );
    return rows.map((r) => ({
      id: r.id,
      name: r.name,
      pid: r.pid,
      version: r.version,
      startedAt: r.started_ms,
      live: r.live,
      leaving: r.leaving,
      reachesSignal: r.reaches_signal,
      leaseLeftMs: r.left_ms,
      renewedAgoMs: r.renewed_ago_ms,
      owned: r.owned ?? undefined,
    }));
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
