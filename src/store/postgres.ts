import pg from 'pg';
import { bucketOf } from '../cluster/shares.js';
import { StoreError, connectionKey, type Connection, type ConnectionKey, type ForbiddenFor, type Heartbeat, type LiveState, type NewConnection, type OpenMode, type Store } from './store.js';
import { redactUrl } from './location.js';

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
];

interface Row {
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

const fromRow = (r: Row): Connection => ({
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

/** A live or expired instance, as its lease row says (ages by the database's clock). */
export interface InstanceRow {
  id: string;
  name: string;
  pid: number;
  version: string;
  startedAt: number;
  /** Whether its lease is still valid by the database's clock. */
  live: boolean;
  /** It is stopping and handing its devices over: it takes none. */
  leaving: boolean;
  /** How long until the lease runs out (negative: ran out that long ago). */
  leaseLeftMs: number;
  /** Milliseconds since it last renewed. */
  renewedAgoMs: number;
  /** How many devices it owns (when asked for). */
  owned: number | undefined;
}

/** A claimed row, and whether its former owner died owing it a wake-up push. */
export interface Claimed {
  conn: Connection;
  owedWake: boolean;
}


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
  /** The instance whose states `publishStates` writes (set by the lease driver once it has joined). */
  instance: string | undefined;

  private constructor(
    private readonly pool: pg.Pool,
    readonly url: string,
  ) {}

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

  // ---- Leases and ownership (src/cluster/leases.ts drives these) ----

  /** Adds this instance's lease row, valid for `leaseMs` from the database's now. */
  async join(inst: { id: string; name: string; pid: number; version: string }, leaseMs: number): Promise<void> {
    this.published.clear(); // a new row: the states published under an old one went with it
    await this.rows(
      `INSERT INTO instances (id, name, pid, version, lease_until) VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')`,
      [inst.id, inst.name, inst.pid, inst.version, leaseMs],
    );
    await this.notify('owners');
  }

  /** Extends the lease; false when the row is gone (the others found it expired and reaped it). Fails fast. */
  async renew(id: string, leaseMs: number, timeoutMs: number): Promise<boolean> {
    const rows = await this.rows(
      `UPDATE instances SET lease_until = now() + $2 * interval '1 millisecond', renewed_at = now() WHERE id = $1 RETURNING 1`,
      [id, leaseMs],
      timeoutMs,
    );
    return rows.length > 0;
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
      left_ms: number;
      renewed_ago_ms: number;
      owned: number | null;
    }>(
      `SELECT i.id, i.name, i.pid, i.version, (extract(epoch FROM i.started_at) * 1000)::int8 AS started_ms,
              i.lease_until > now() AS live, i.leaving,
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
      leaseLeftMs: r.left_ms,
      renewedAgoMs: r.renewed_ago_ms,
      owned: r.owned ?? undefined,
    }));
  }

  /**
   * Deletes the instances whose lease ran out by the database's clock, freeing their devices, each marked as owed a
   * wake-up push (the dead instance may have acknowledged envelopes it never pushed). Their rows are locked first, so a
   * late renewal waits and then finds its row gone. Returns the reaped ids.
   */
  async reap(timeoutMs: number): Promise<string[]> {
    return this.transaction(async (c) => {
      const dead = (await c.query<{ id: string }>({ text: 'SELECT id FROM instances WHERE lease_until < now() FOR UPDATE SKIP LOCKED', query_timeout: timeoutMs } as pg.QueryConfig)).rows.map((r) => r.id);
      if (dead.length === 0) return [];
      await c.query('UPDATE connections SET owner = NULL, owed_wake = true WHERE owner = ANY($1)', [dead]);
      await c.query('DELETE FROM instances WHERE id = ANY($1)', [dead]);
      await c.query(`SELECT pg_notify('${CHANNEL}', 'owners')`);
      return dead;
    });
  }

  /** Takes the unowned devices of these buckets, skipping rows another instance is claiming at the same moment. */
  async claim(me: string, buckets: number[], timeoutMs: number): Promise<Claimed[]> {
    const rows = await this.rows<Row & { woken: boolean }>(
      `WITH c AS (
         SELECT uuid, device_id, owed_wake FROM connections
         WHERE owner IS NULL AND bucket = ANY($2) FOR UPDATE SKIP LOCKED)
       UPDATE connections t SET owner = $1, epoch = t.epoch + 1, owed_wake = false
       FROM c WHERE t.uuid = c.uuid AND t.device_id = c.device_id
         AND EXISTS (SELECT 1 FROM instances WHERE id = $1 AND lease_until > now())
       RETURNING t.*, c.owed_wake AS woken`,
      [me, buckets],
      timeoutMs,
    );
    return rows.map((r) => ({ conn: fromRow(r), owedWake: r.woken }));
  }

  /** Gives this instance's devices in these buckets to a live instance, and tells it. Returns the moved rows. */
  async handOver(me: string, to: string, buckets: number[], timeoutMs: number): Promise<ConnectionKey[]> {
    const rows = await this.rows<{ uuid: string; device_id: number }>(
      `WITH m AS (
         UPDATE connections SET owner = $2, epoch = epoch + 1
         WHERE owner = $1 AND bucket = ANY($3)
           AND EXISTS (SELECT 1 FROM instances WHERE id = $2 AND lease_until > now() AND NOT leaving)
         RETURNING uuid, device_id)
       SELECT m.uuid, m.device_id, pg_notify('${CHANNEL}', 'owners') FROM m`,
      [me, to, buckets],
      timeoutMs,
    );
    return rows.map((r) => ({ uuid: r.uuid, deviceId: r.device_id }));
  }

  /** The devices this instance owns. */
  async owned(me: string, timeoutMs?: number): Promise<Connection[]> {
    return (await this.rows<Row>('SELECT * FROM connections WHERE owner = $1', [me], timeoutMs)).map(fromRow);
  }

  /** This instance is stopping: the others stop counting it in their shares, and hand it nothing. */
  async leaving(me: string): Promise<void> {
    await this.rows(`WITH r AS (UPDATE instances SET leaving = true WHERE id = $1 RETURNING id) SELECT pg_notify('${CHANNEL}', 'owners') FROM r`, [me]);
  }

  /** Removes this instance's lease row: whatever it still owns is free for the others at once. */
  async leave(me: string): Promise<void> {
    await this.transaction(async (c) => {
      await c.query('DELETE FROM instances WHERE id = $1', [me]);
      await c.query(`SELECT pg_notify('${CHANNEL}', 'owners')`);
    });
  }

  async notify(payload: string): Promise<void> {
    await this.rows(`SELECT pg_notify('${CHANNEL}', $1)`, [payload]);
  }

  /**
   * A dedicated client (LISTEN needs one session; behind PgBouncer it must be a direct or session-mode connection)
   * that hands every notification to `onNote`. It reconnects by itself; `onListening` runs after each (re)LISTEN,
   * when notifications may have been missed. `ping` proves it still works: a dead listener can stay silent.
   */
  listener(onNote: (payload: string) => void, onListening: () => void, onError: (err: Error) => void): { ping(timeoutMs: number): Promise<void>; close(): Promise<void> } {
    let client: pg.Client | undefined;
    let closed = false;
    let retry: NodeJS.Timeout | undefined;
    const drop = (c: pg.Client, err: Error): void => {
      if (client !== c) return;
      client = undefined;
      c.removeAllListeners();
      c.on('error', () => {});
      void c.end().catch(() => {});
      if (closed) return;
      onError(err);
      retry = setTimeout(connect, 1_000);
    };
    const connect = (): void => {
      if (closed) return;
      const c = new pg.Client({ connectionString: this.url, keepAlive: true, connectionTimeoutMillis: 5_000, application_name: 'mollysocket-listen' });
      client = c;
      c.on('notification', (n) => n.channel === CHANNEL && onNote(n.payload ?? ''));
      c.on('error', (err) => drop(c, err));
      c.on('end', () => drop(c, new Error('connection ended')));
      c.connect()
        .then(() => c.query(`LISTEN ${CHANNEL}`))
        .then(() => client === c && onListening())
        .catch((err: Error) => drop(c, err));
    };
    connect();
    return {
      ping: async (timeoutMs) => {
        const c = client;
        if (!c) throw new Error('not listening');
        try {
          await c.query({ text: 'SELECT 1', query_timeout: timeoutMs } as pg.QueryConfig);
        } catch (err) {
          drop(c, err as Error);
          throw err;
        }
      },
      close: async () => {
        closed = true;
        clearTimeout(retry);
        const c = client;
        client = undefined;
        if (c) {
          c.removeAllListeners();
          c.on('error', () => {});
          await c.end().catch(() => {});
        }
      },
    };
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
