import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { PgLeaseStore } from '../../src/cluster/postgres-leases.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { eventually } from '../helpers/index.js';
import { pgbouncerMissing, startPgBouncer } from '../helpers/pgbouncer.js';
import { freshDatabase, postgres, postgresMissing } from '../helpers/postgres.js';
import { startPostgres, type PrivatePostgres } from '../helpers/private-postgres.mjs';

const UUID = '6e3b5c1a-5a8e-4b6e-9c3e-1f2a3b4c5d6e';
const conn = (i: number) => ({ uuid: UUID, deviceId: i + 1, password: `pw-${i}`, endpoint: `https://e/${i}` });

/**
 * The PostgreSQL clients survive the server going away: whatever PostgreSQL does to a session, a query fails (as in an
 * outage) and the next one works; nothing becomes an uncaught exception, which would end the server.
 */
describe.skipIf(postgresMissing !== undefined)('PostgreSQL clients when the server goes away', () => {
  const uncaught: unknown[] = [];
  const record = (err: unknown) => void uncaught.push(err);
  beforeEach(() => {
    uncaught.length = 0;
    process.on('uncaughtException', record);
  });
  afterEach(() => void process.off('uncaughtException', record));

  it('a transaction whose session is terminated (pg_terminate_backend) between its statements fails; the next works', async () => {
    const url = await freshDatabase();
    const store = await PostgresStore.open(url);
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      // The import waits on the lock after its BEGIN: terminated there, in the middle of its transaction.
      await admin.query('BEGIN');
      await admin.query('LOCK TABLE connections IN ACCESS EXCLUSIVE MODE');
      const blocked = store.importConnections([
        { ...conn(0), forbidden: false, forbiddenReason: null, forbiddenAt: null, lastRegistration: 1, createdAt: 1, updatedAt: 1, owner: null, epoch: 0 },
      ]);
      const outcome = blocked.then(
        () => 'stored',
        (err: Error) => err.message,
      );
      let pid: number | undefined;
      await eventually(async () => {
        pid = (await admin.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE application_name = 'mollysocket' AND wait_event_type = 'Lock'`))
          .rows[0]?.pid;
        return pid !== undefined;
      }, 'the import waiting for the lock');
      await admin.query('SELECT pg_terminate_backend($1)', [pid]);
      await admin.query('ROLLBACK');
      expect(await outcome).toMatch(/terminat/);
      await new Promise((r) => setTimeout(r, 100)); // the socket's end arrives after the query's error
      expect(await store.put(conn(1), 2)).toMatchObject({ deviceId: 2 });
      expect(uncaught).toEqual([]);
    } finally {
      await admin.end();
      await store.close();
    }
  });

  describe('restarts under traffic', () => {
    let server: PrivatePostgres;
    beforeAll(async () => {
      server = (await startPostgres())!; // its own server: restarted here
    });
    afterAll(() => server?.stop());

    for (const mode of ['fast', 'immediate'] as const) {
      it(`pg_ctl restart -m ${mode} while writes and transactions run: they fail or succeed, nothing throws, and afterwards all work`, async () => {
        const store = await PostgresStore.open(await freshDatabase(server.url));
        await store.rows(`INSERT INTO instances (id, name, pid, version, lease_until) VALUES ('i1', 'one', 1, 'v', now() + interval '1 hour')`);
        store.instance = 'i1';
        let running = true;
        let done = 0;
        const traffic = (async () => {
          for (let i = 0; running; i++) {
            const states = [{ uuid: UUID, deviceId: 1 + (i % 5), state: 'connected', reason: String(i), since: i }];
            await Promise.allSettled([store.put(conn(i % 5), i), store.publishStates(states), store.list(), store.healthy()]);
            done++;
          }
        })();
        try {
          await eventually(() => done > 5, 'traffic');
          await server.restart(mode);
          const after = done;
          await eventually(() => done > after + 5, 'traffic after the restart', 10_000);
        } finally {
          running = false;
          await traffic;
        }
        // Every client of the pool sees the new server: a burst as wide as the pool works.
        const burst = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => store.put(conn(i), 1_000 + i)));
        expect(burst).toHaveLength(6);
        await store.publishStates([{ uuid: UUID, deviceId: 1, state: 'backoff', reason: 'x', since: 1 }]);
        expect(await store.liveStates()).toEqual([{ uuid: UUID, deviceId: 1, state: 'backoff', reason: 'x', since: 1 }]);
        expect(uncaught).toEqual([]);
        await store.close();
      });
    }
  });
});

describe.skipIf(postgresMissing !== undefined || pgbouncerMissing !== undefined)('the lease statements on PostgreSQL, and through PgBouncer', () => {
  let bouncer: Awaited<ReturnType<typeof startPgBouncer>>;
  beforeAll(async () => {
    bouncer = await startPgBouncer('url' in postgres ? postgres.url : '');
  });
  afterAll(() => bouncer?.stop());

  /** Renews with a self-notification and says whether the listener heard it. */
  async function pingHeard(leases: PgLeaseStore, id: string): Promise<boolean> {
    const heard: string[] = [];
    let listening!: () => void;
    const ready = new Promise<void>((r) => (listening = r));
    const listener = leases.listen({ onNote: (p) => heard.push(p), onListening: () => listening(), onLost: () => {} });
    await ready;
    expect(await leases.renew(id, 60_000, { reachesSignal: false, ping: `ping:${id}:1` })).toBe(true);
    // A statement on the listening client after the commit: a listening session receives the notification first.
    await listener.ping();
    await listener.close();
    return heard.includes(`ping:${id}:1`);
  }

  it('through PgBouncer in transaction mode the lease statements work, notifications are lost; a direct db_listen_url hears them', async () => {
    const database = new URL(await freshDatabase()).pathname.slice(1);
    const direct = ('url' in postgres ? postgres.url : '').replace(/\/postgres$/, `/${database}`);
    const store = await PostgresStore.open(bouncer.url(database));
    try {
      const viaBouncer = new PgLeaseStore(store, { answerMs: 5_000 });
      await viaBouncer.join({ id: 'a', name: 'a', pid: 1, version: 'v' }, 60_000);
      expect((await viaBouncer.instances()).map((i) => [i.id, i.live, i.reachesSignal])).toEqual([['a', true, true]]);
      expect(await pingHeard(viaBouncer, 'a')).toBe(false); // LISTEN through the bouncer: silently nothing
      expect((await viaBouncer.instances()).map((i) => i.reachesSignal)).toEqual([false]); // the renewal said so
      expect(await pingHeard(new PgLeaseStore(store, { answerMs: 5_000, listenUrl: direct }), 'a')).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('keeps an owed wake-up on the row until its owner recorded it, and tells where a handed-over device stands', async () => {
    const store = await PostgresStore.open(await freshDatabase());
    const leases = new PgLeaseStore(store, { answerMs: 5_000 });
    const all = Array.from({ length: 4096 }, (_, b) => b);
    const [k1, k2, k3] = [0, 1, 2].map((i) => ({ uuid: UUID, deviceId: i + 1 }));
    for (const [i, k] of [k1!, k2!, k3!].entries()) await store.put({ ...k, password: `p${i}`, endpoint: `https://e/${i}` }, 1);
    await leases.join({ id: 'a', name: 'a', pid: 1, version: 'v' }, 60_000);
    await leases.join({ id: 'b', name: 'b', pid: 2, version: 'v' }, 60_000);
    await leases.claim('a', all);
    await store.rows(`UPDATE instances SET lease_until = now() - interval '1 millisecond' WHERE id = 'a'`);
    expect(await leases.reap()).toEqual(['a']);
    expect((await leases.claim('b', all)).map((c) => c.owedWake)).toEqual([true, true, true]);
    expect((await leases.owned('b')).map((c) => c.owedWake)).toEqual([true, true, true]); // a lost answer loses nothing
    await leases.woken('b', [k1!]);
    expect(
      (await leases.owned('b'))
        .filter((c) => c.owedWake)
        .map((c) => c.conn.deviceId)
        .sort(),
    ).toEqual([2, 3]);
    // b hands k1..k3 to c; c connects k1 (published), k2 is removed, k3 waits.
    await leases.join({ id: 'c', name: 'c', pid: 3, version: 'v' }, 60_000);
    await leases.handOver('b', 'c', all);
    store.instance = 'c';
    await store.publishStates([
      { ...k1!, state: 'connected', reason: 'open', since: 1 },
      { ...k3!, state: 'connecting', reason: 'started', since: 1 },
    ]);
    await store.remove(k2!);
    const states = await leases.handOverStates([k1!, k2!, k3!]);
    expect(states.map((s) => [s.key.deviceId, s.exists, s.owner, s.ownerLive, s.ownerConnected]).sort()).toEqual([
      [1, true, 'c', true, true],
      [2, false, null, false, false],
      [3, true, 'c', true, false],
    ]);
    await leases.setLeaving('c', true);
    expect((await leases.instances()).find((i) => i.id === 'c')?.leaving).toBe(true);
    await leases.join({ id: 'c', name: 'c', pid: 3, version: 'v' }, 60_000); // idempotent: a join sent again
    expect((await leases.instances()).find((i) => i.id === 'c')?.leaving).toBe(false);
    await leases.join({ id: 'c', name: 'c', pid: 3, version: 'v' }, 60_000, true); // reaped, back on probation
    expect((await leases.instances()).find((i) => i.id === 'c')?.leaving).toBe(true);
    await leases.close();
    await store.close();
  });

  it('a renewal never waits behind other statements: it has its own connections while every one of the pool is busy', async () => {
    const url = await freshDatabase();
    const store = await PostgresStore.open(url);
    const leases = new PgLeaseStore(store, { answerMs: 60_000 });
    const blocker = new pg.Client({ connectionString: url });
    await blocker.connect();
    try {
      await leases.join({ id: 'a', name: 'a', pid: 1, version: 'v' }, 60_000);
      await blocker.query('SELECT pg_advisory_lock(19)');
      // Every connection of the store's pool waits for the lock (slow registrations on a slow link, say).
      const busy = Array.from({ length: 8 }, () => store.rows('SELECT pg_advisory_xact_lock(19)'));
      const waiting = async () =>
        (await blocker.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`)).rows[0]!.n;
      await eventually(async () => (await waiting()) >= 4, 'the pool busy');
      expect(await leases.renew('a', 60_000, { reachesSignal: true, ping: 'ping:a:1' })).toBe(true);
      await blocker.query('SELECT pg_advisory_unlock(19)');
      await Promise.all(busy);
    } finally {
      await blocker.end();
      await leases.close();
      await store.close();
    }
  });
});
