import pg from 'pg';
import { CHANNEL, fromRow, type PostgresStore, type Row } from '../store/postgres.js';
import type { Connection, ConnectionKey } from '../store/store.js';
import {
  RENEWALS_IN_FLIGHT,
  type Claimed,
  type HandOverState,
  type InstanceRow,
  type LeaseStore,
  type NoteHandlers,
  type NoteListener,
  type Renewal,
} from './lease-store.js';

/**
 * The lease queries on PostgreSQL, through the store's pool (unnamed statements: they also work through PgBouncer in
 * transaction mode), and the LISTEN session on a client of its own (`listenUrl`: a direct connection when the pool
 * goes through such a bouncer, which drops notifications). The lease row's own statements (join, renew) have
 * connections nothing else uses: on a slow link registrations can hold every connection of the store's pool, and a
 * renewal waiting behind them would let the lease run out although the database answers.
 *
 * Every query may take up to `answerMs` (a lease): a late answer still counts, and one later than a lease could not
 * change anything. So no client-side timer decides a lease; a stalled connection is still given up in the end.
 */
export class PgLeaseStore implements LeaseStore {
  private leasePool: pg.Pool | undefined;

  constructor(
    private readonly store: PostgresStore,
    private readonly opts: { answerMs: number; listenUrl?: string },
  ) {}

  private rows<R extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<R[]> {
    return this.store.rows<R>(text, values, this.opts.answerMs);
  }

  /**
   * On the lease row's own pool: one connection per renewal that may be under way at once (a late answer does not
   * hold up the next). A connection that fails is replaced at the next statement; its errors are listened for.
   */
  private async leaseRows(text: string, values: unknown[]): Promise<unknown[]> {
    this.leasePool ??= this.newLeasePool();
    return (await this.leasePool.query({ text, values, query_timeout: this.opts.answerMs } as pg.QueryConfig)).rows;
  }

  private newLeasePool(): pg.Pool {
    const pool = new pg.Pool({
      connectionString: this.store.url,
      max: RENEWALS_IN_FLIGHT,
      keepAlive: true,
      connectionTimeoutMillis: this.opts.answerMs,
      allowExitOnIdle: true,
      application_name: 'mollysocket-lease',
    });
    pool.on('error', () => {}); // an idle connection lost its server: the next renewal opens another
    return pool;
  }

  /** Idempotent: a join whose answer was lost can be sent again. */
  async join(inst: { id: string; name: string; pid: number; version: string }, leaseMs: number, leaving = false): Promise<void> {
    await this.leaseRows(
      `WITH r AS (
         INSERT INTO instances (id, name, pid, version, lease_until, leaving)
         VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond', $6)
         ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until, renewed_at = now(), leaving = excluded.leaving
         RETURNING id)
       SELECT pg_notify('${CHANNEL}', 'owners') FROM r`,
      [inst.id, inst.name, inst.pid, inst.version, leaseMs, leaving],
    );
    this.store.instance = inst.id; // a new row: the states published under an old one went with it
  }

  async renew(id: string, leaseMs: number, renewal: Renewal): Promise<boolean> {
    const rows = await this.leaseRows(
      `WITH r AS (
         UPDATE instances SET lease_until = now() + $2 * interval '1 millisecond', renewed_at = now(), reaches_signal = $3
         WHERE id = $1 RETURNING id)
       SELECT pg_notify('${CHANNEL}', $4) FROM r`,
      [id, leaseMs, renewal.reachesSignal, renewal.ping],
    );
    return rows.length > 0;
  }

  instances(): Promise<InstanceRow[]> {
    return this.store.instances({ timeoutMs: this.opts.answerMs });
  }

  /**
   * The dead instances' rows are locked first (SKIP LOCKED: two reapers do not wait on each other), so a late renewal
   * waits and then finds its row gone. Their devices are freed, each owed a wake-up push: the dead instance may have
   * acknowledged envelopes it never pushed.
   */
  reap(): Promise<string[]> {
    return this.store.transaction(async (c) => {
      const q = (text: string, values: unknown[] = []) => c.query({ text, values, query_timeout: this.opts.answerMs } as pg.QueryConfig);
      const dead = (await q('SELECT id FROM instances WHERE lease_until < now() FOR UPDATE SKIP LOCKED')).rows.map((r: { id: string }) => r.id);
      if (dead.length === 0) return [];
      await q('UPDATE connections SET owner = NULL, owed_wake = true WHERE owner = ANY($1)', [dead]);
      await q('DELETE FROM instances WHERE id = ANY($1)', [dead]);
      await q(`SELECT pg_notify('${CHANNEL}', 'owners')`);
      return dead;
    });
  }

  /** The owed wake-up stays on the row until `woken`: an answer lost on the way loses no wake-up. */
  async claim(me: string, buckets: number[]): Promise<Claimed[]> {
    const rows = await this.rows<Row & { owed_wake: boolean }>(
      `WITH c AS (
         SELECT uuid, device_id FROM connections
         WHERE owner IS NULL AND bucket = ANY($2) FOR UPDATE SKIP LOCKED)
       UPDATE connections t SET owner = $1, epoch = t.epoch + 1
       FROM c WHERE t.uuid = c.uuid AND t.device_id = c.device_id
         AND EXISTS (SELECT 1 FROM instances WHERE id = $1 AND lease_until > now())
       RETURNING t.*`,
      [me, buckets],
    );
    return rows.map((r) => ({ conn: fromRow(r), owedWake: r.owed_wake }));
  }

  async handOver(me: string, to: string, buckets: number[]): Promise<ConnectionKey[]> {
    const rows = await this.rows<{ uuid: string; device_id: number }>(
      `WITH m AS (
         UPDATE connections SET owner = $2, epoch = epoch + 1
         WHERE owner = $1 AND bucket = ANY($3)
           AND EXISTS (SELECT 1 FROM instances WHERE id = $2 AND lease_until > now() AND NOT leaving)
         RETURNING uuid, device_id)
       SELECT m.uuid, m.device_id, pg_notify('${CHANNEL}', 'owners') FROM m`,
      [me, to, buckets],
    );
    return rows.map((r) => ({ uuid: r.uuid, deviceId: r.device_id }));
  }

  async owned(me: string): Promise<Claimed[]> {
    const rows = await this.rows<Row & { owed_wake: boolean }>('SELECT * FROM connections WHERE owner = $1', [me]);
    return rows.map((r) => ({ conn: fromRow(r), owedWake: r.owed_wake }));
  }

  async woken(me: string, keys: ConnectionKey[]): Promise<void> {
    if (keys.length === 0) return;
    await this.rows('UPDATE connections SET owed_wake = false WHERE owner = $1 AND (uuid, device_id) IN (SELECT * FROM unnest($2::text[], $3::int[]))', [
      me,
      keys.map((k) => k.uuid),
      keys.map((k) => k.deviceId),
    ]);
  }

  async get(key: ConnectionKey): Promise<Connection | undefined> {
    const [row] = await this.rows<Row>('SELECT * FROM connections WHERE uuid = $1 AND device_id = $2', [key.uuid, key.deviceId]);
    return row && fromRow(row);
  }

  async handOverStates(keys: ConnectionKey[]): Promise<HandOverState[]> {
    const rows = await this.rows<{ uuid: string; device_id: number; stored: boolean; owner: string | null; owner_live: boolean; owner_connected: boolean }>(
      `SELECT k.uuid, k.device_id, c.uuid IS NOT NULL AS stored, c.owner,
              COALESCE(i.lease_until > now(), false) AS owner_live, COALESCE(l.state = 'connected', false) AS owner_connected
       FROM unnest($1::text[], $2::int[]) AS k(uuid, device_id)
       LEFT JOIN connections c ON c.uuid = k.uuid AND c.device_id = k.device_id
       LEFT JOIN instances i ON i.id = c.owner
       LEFT JOIN live_state l ON l.instance = c.owner AND l.uuid = k.uuid AND l.device_id = k.device_id`,
      [keys.map((k) => k.uuid), keys.map((k) => k.deviceId)],
    );
    return rows.map((r) => ({
      key: { uuid: r.uuid, deviceId: r.device_id },
      exists: r.stored,
      owner: r.owner,
      ownerLive: r.owner_live,
      ownerConnected: r.owner_connected,
    }));
  }

  async setLeaving(me: string, leaving: boolean): Promise<void> {
    await this.rows(`WITH r AS (UPDATE instances SET leaving = $2 WHERE id = $1 RETURNING id) SELECT pg_notify('${CHANNEL}', 'owners') FROM r`, [me, leaving]);
  }

  async leave(me: string): Promise<void> {
    await this.rows(`WITH r AS (DELETE FROM instances WHERE id = $1 RETURNING id) SELECT pg_notify('${CHANNEL}', 'owners') FROM r`, [me]);
  }

  async close(): Promise<void> {
    const pool = this.leasePool;
    this.leasePool = undefined;
    await pool?.end().catch(() => {});
  }

  /**
   * A dedicated client (LISTEN needs one session) that hands every notification on. It reconnects by itself, a
   * second after losing its session; every error of the client is listened for, so none ends the process.
   */
  listen(handlers: NoteHandlers): NoteListener {
    let client: pg.Client | undefined;
    let closed = false;
    let retry: NodeJS.Timeout | undefined;
    const retire = (c: pg.Client): Promise<void> => {
      c.removeAllListeners();
      c.on('error', () => {}); // late errors of a client given up
      return c.end().catch(() => {});
    };
    const drop = (c: pg.Client, err: Error): void => {
      if (client !== c) return;
      client = undefined;
      void retire(c);
      if (closed) return;
      handlers.onLost(err);
      retry = setTimeout(connect, 1_000);
    };
    const connect = (): void => {
      if (closed) return;
      const c = new pg.Client({
        connectionString: this.opts.listenUrl ?? this.store.url,
        keepAlive: true,
        connectionTimeoutMillis: 5_000,
        application_name: 'mollysocket-listen',
      });
      client = c;
      c.on('notification', (n) => n.channel === CHANNEL && handlers.onNote(n.payload ?? ''));
      c.on('error', (err) => drop(c, err));
      c.on('end', () => drop(c, new Error('connection ended')));
      c.connect()
        .then(() => c.query(`LISTEN ${CHANNEL}`))
        .then(() => client === c && handlers.onListening())
        .catch((err: Error) => drop(c, err));
    };
    connect();
    return {
      ping: async () => {
        const c = client;
        if (!c) throw new Error('not listening');
        try {
          await c.query({ text: 'SELECT 1', query_timeout: this.opts.answerMs } as pg.QueryConfig);
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
        if (c) await retire(c);
      },
    };
  }
}
