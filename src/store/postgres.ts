import pg from 'pg';
import { bucketOf } from '../buckets.js';
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
import { redactUrl } from './location.js';
import type { InstanceRow } from '../cluster/lease-store.js';

export type { InstanceRow };

/**
 * The NOTIFY channel: payloads `changed:<uuid>.<device>` (a row to re-read) or `owners` (ownership moved).
 * @public the lease listener reads it too
 */
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
  // When a connection in backoff tries next, for `status`.
  `ALTER TABLE live_state ADD COLUMN retry_at BIGINT`,
  // Forbidden connections by the time they became forbidden, for the sweeps that remove them.
  'CREATE INDEX connections_forbidden_since ON connections((COALESCE(forbidden_at, updated_at)), uuid, device_id) WHERE forbidden',
];

/** Since when a forbidden connection is forbidden: unknown for a row forbidden in MollySocket, then its last change. */
const FORBIDDEN_SINCE = 'COALESCE(forbidden_at, updated_at)';

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

/** Compare-and-set on what a registration's decision was made on, its parameters from `$first` on (see `decidedFor`). */
const UNCHANGED = (first: number): string =>
  `password = $${first} AND endpoint = $${first + 1} AND forbidden = $${first + 2} AND forbidden_reason IS NOT DISTINCT FROM $${first + 3}::text`;
const decidedFor = (c: Connection): unknown[] => [c.password, c.endpoint, c.forbidden, c.forbiddenReason];

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

  /** One statement per filter shape, each answered from the primary key (the CLI's whole list aside). */
  async list(filter: { uuid?: string; deviceId?: number } = {}): Promise<Connection[]> {
    const { uuid, deviceId } = filter;
    const order = 'ORDER BY uuid COLLATE "C", device_id';
    const rows =
      uuid !== undefined && deviceId !== undefined
        ? await this.rows<Row>('SELECT * FROM connections WHERE uuid = $1 AND device_id = $2', [uuid, deviceId])
        : uuid !== undefined
          ? await this.rows<Row>(`SELECT * FROM connections WHERE uuid = $1 ${order}`, [uuid])
          : deviceId !== undefined
            ? await this.rows<Row>(`SELECT * FROM connections WHERE device_id = $1 ${order}`, [deviceId])
            : await this.rows<Row>(`SELECT * FROM connections ${order}`);
    return rows.map(fromRow);
  }

  async count(): Promise<number> {
    const [row] = await this.rows<{ n: number }>('SELECT count(*) AS n FROM connections');
    return row!.n;
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

  async putIf(c: NewConnection, now: number, decidedOn: Connection | undefined): Promise<Connection | undefined> {
    const [write, values] =
      decidedOn === undefined
        ? [
            `INSERT INTO connections (uuid, device_id, password, endpoint, forbidden, last_registration, created_at, updated_at, bucket)
             VALUES ($1, $2, $3, $4, false, $5, $5, $5, $6)
             ON CONFLICT (uuid, device_id) DO NOTHING RETURNING *`,
            [bucketOf(c.uuid, c.deviceId)],
          ]
        : [
            `UPDATE connections SET password = $3, endpoint = $4, forbidden = false, forbidden_reason = NULL, forbidden_at = NULL,
               last_registration = $5, updated_at = $5
             WHERE uuid = $1 AND device_id = $2 AND ${UNCHANGED(6)} RETURNING *`,
            decidedFor(decidedOn),
          ];
    const [row] = await this.rows<Row>(`WITH r AS (${write}) SELECT r.*, pg_notify('${CHANNEL}', 'changed:' || r.uuid || '.' || r.device_id) FROM r`, [
      c.uuid,
      c.deviceId,
      c.password,
      c.endpoint,
      now,
      ...values,
    ]);
    return row && fromRow(row);
  }

  async touchIf(key: ConnectionKey, now: number, decidedOn: Connection): Promise<Connection | undefined> {
    const [row] = await this.rows<Row>(`UPDATE connections SET last_registration = $1 WHERE uuid = $2 AND device_id = $3 AND ${UNCHANGED(4)} RETURNING *`, [
      now,
      key.uuid,
      key.deviceId,
      ...decidedFor(decidedOn),
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

  async forbiddenWithNewerDevices(before: number, after: ForbiddenCursor | undefined, limit: number): Promise<LeftBehindCandidate[]> {
    const start = after ?? { since: -1, uuid: '', deviceId: 0 };
    const rows = await this.rows<Row & { since: number; newer: number[] | null }>(
      `SELECT o.*, ${FORBIDDEN_SINCE} AS since,
         (SELECT array_agg(n.device_id) FROM connections n
          WHERE n.uuid = o.uuid AND n.device_id <> o.device_id AND NOT n.forbidden AND n.created_at > o.created_at) AS newer
       FROM connections o
       WHERE o.forbidden AND ${FORBIDDEN_SINCE} <= $1 AND (${FORBIDDEN_SINCE}, o.uuid, o.device_id) > ($2, $3, $4)
       ORDER BY ${FORBIDDEN_SINCE}, o.uuid, o.device_id LIMIT $5`,
      [before, start.since, start.uuid, start.deviceId, limit],
    );
    return rows.map((r) => ({ conn: fromRow(r), cursor: { since: r.since, uuid: r.uuid, deviceId: r.device_id }, newerDevices: r.newer ?? [] }));
  }

  /** Removes and announces them; a row that a registration enables meanwhile is skipped (the lock re-checks it). */
  async removeForbiddenSince(before: number, limit: number): Promise<ConnectionKey[]> {
    const rows = await this.rows<{ uuid: string; device_id: number }>(
      `WITH r AS (
         DELETE FROM connections WHERE (uuid, device_id) IN (
           SELECT uuid, device_id FROM connections WHERE forbidden AND ${FORBIDDEN_SINCE} <= $1
           ORDER BY ${FORBIDDEN_SINCE} LIMIT $2 FOR UPDATE SKIP LOCKED)
         AND forbidden
         RETURNING uuid, device_id)
       SELECT uuid, device_id, pg_notify('${CHANNEL}', 'changed:' || uuid || '.' || device_id) FROM r`,
      [before, limit],
    );
    return rows.map((r) => ({ uuid: r.uuid, deviceId: r.device_id }));
  }

  /** Writes only the states that changed since the last call, and deletes those no longer there. */
  async publishStates(states: LiveState[]): Promise<void> {
    const instance = this.instance;
    if (instance === undefined) return; // not joined yet: there is no instance row to publish under
    const next = new Map(states.map((s) => [connectionKey(s), JSON.stringify([s.state, s.reason, s.since, s.retryAt])]));
    const changed = states.filter((s) => this.published.get(connectionKey(s)) !== next.get(connectionKey(s)));
    const gone = [...this.published.keys()].filter((k) => !next.has(k));
    if (changed.length === 0 && gone.length === 0) return;
    await this.transaction(async (c) => {
      if (changed.length > 0) {
        await c.query(
          `INSERT INTO live_state (instance, uuid, device_id, state, reason, since, retry_at)
           SELECT $1, * FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])
           ON CONFLICT (instance, uuid, device_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, since = excluded.since, retry_at = excluded.retry_at`,
          [
            instance,
            changed.map((s) => s.uuid),
            changed.map((s) => s.deviceId),
            changed.map((s) => s.state),
            changed.map((s) => s.reason),
            changed.map((s) => s.since),
            changed.map((s) => s.retryAt ?? null),
          ],
        );
      }
      if (gone.length > 0) {
        const keys = gone.map((k) => k.split('.'));
        await c.query(`DELETE FROM live_state WHERE instance = $1 AND (uuid, device_id) IN (SELECT * FROM unnest($2::text[], $3::int[]))`, [
          instance,
          keys.map(([u]) => u),
          keys.map(([, d]) => Number(d)),
        ]);
      }
    });
    this.published = next;
  }

  /** The states published by the owner of each device (a device being handed over is also listed by its old owner). */
  async liveStates(): Promise<LiveState[]> {
    const rows = await this.rows<{ uuid: string; device_id: number; state: string; reason: string; since: number; retry_at: number | null }>(
      `SELECT DISTINCT ON (l.uuid, l.device_id) l.uuid, l.device_id, l.state, l.reason, l.since, l.retry_at
       FROM live_state l JOIN instances i ON i.id = l.instance AND i.lease_until > now()
       LEFT JOIN connections c ON c.uuid = l.uuid AND c.device_id = l.device_id
       ORDER BY l.uuid, l.device_id, (c.owner = l.instance) DESC`,
    );
    return rows.map((r) => ({
      uuid: r.uuid,
      deviceId: r.device_id,
      state: r.state,
      reason: r.reason,
      since: r.since,
      ...(r.retry_at !== null && { retryAt: r.retry_at }),
    }));
  }

  /**
   * The most recently renewed instance (of this name, if given): an instance's lease renewal is its heartbeat. Ages come
   * from the database's clock.
   */
  async heartbeat(name?: string): Promise<Heartbeat | undefined> {
    const live = (await this.instances()).filter((i) => name === undefined || i.name === name).sort((a, b) => a.renewedAgoMs - b.renewedAgoMs)[0];
    return live && { pid: live.pid, version: live.version, startedAt: live.startedAt, seenAt: Date.now() - live.renewedAgoMs };
  }

  /** This instance's published states (its lease row, its heartbeat, goes when it leaves). */
  async clearLive(): Promise<void> {
    if (this.instance === undefined) return; // never joined: it published nothing
    await this.rows('DELETE FROM live_state WHERE instance = $1', [this.instance]);
    this.published.clear();
  }

  async healthy(): Promise<boolean> {
    try {
      await this.rows('SELECT 1', [], 2_000);
      return true;
    } catch {
      return false;
    }
  }

  /** In settings, where every instance and command reads it (clusterVapidKey refuses a key other than the one kept). */
  async recordVapidKey(publicKey: string): Promise<void> {
    await this.rows(`INSERT INTO settings (name, value) VALUES ('vapid_public_key', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value`, [publicKey]);
  }

  async recordedVapidKey(): Promise<string | undefined> {
    return this.setting('vapid_public_key');
  }

  /**
   * Conflicts PostgreSQL resolves by aborting one side, worth trying again: serialization failure, deadlock, a lock
   * not available in time.
   */
  isTransient(err: unknown): boolean {
    return ['40001', '40P01', '55P03'].includes((err as { code?: string }).code ?? '');
  }

  /** Data exceptions (class 22: a NUL byte in text is 22021, an untranslatable character 22P05) and integrity violations (23). */
  isDataError(err: unknown): boolean {
    return /^2[23][0-9A-Z]{3}$/.test((err as { code?: string }).code ?? '');
  }

  /** Owed wake-ups travel with the rows: whoever claims them next pushes once connected. */
  async keepOwedWakeups(keys: ConnectionKey[]): Promise<void> {
    if (keys.length === 0) return;
    await this.rows('UPDATE connections SET owed_wake = true WHERE (uuid, device_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))', [
      keys.map((k) => k.uuid),
      keys.map((k) => k.deviceId),
    ]);
  }

  /**
   * Rows owed a wake-up carry owed_wake: a claim takes it with the row (see `claim`); this takes it from the rows this
   * instance owns without a claim (handed over to it by an instance that stopped owing them one).
   */
  async takeOwedWakeups(): Promise<ConnectionKey[]> {
    if (this.instance === undefined) return []; // never joined: it owns nothing
    const rows = await this.rows<{ uuid: string; device_id: number }>(
      'UPDATE connections SET owed_wake = false WHERE owner = $1 AND owed_wake RETURNING uuid, device_id',
      [this.instance],
    );
    return rows.map((r) => ({ uuid: r.uuid, deviceId: r.device_id }));
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
