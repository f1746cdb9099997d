import Database from 'better-sqlite3';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { InstanceRow } from './postgres.js';
import { StoreError } from './store.js';

/**
 * One server per SQLite database. Two servers on one file would open two sockets per device, which Signal answers
 * with 4409 on both, over and over.
 *
 * The lock is SQLite's own write lock on a small database beside the file (`<db>.lock`, in WAL mode), held for the
 * server's life by an open write transaction. It is an OS lock (fcntl), so the kernel releases it when the process
 * dies, kill -9 included: the next server takes it at once, and no stale lock can block a start. A pid file or an mtime lock
 * (proper-lockfile) would judge liveness by a pid, which a container reuses (pid 1 again after a restart), or by a
 * timestamp, which a stalled but live server lets age; and Node has no flock of its own. In WAL mode other processes
 * can still read the committed row naming the holder while the write lock is held, so a refusal names its pid.
 */
const lockPath = (db: string): string => `${db}.lock`;

/** Who holds the lock. */
export interface LockHolder {
  pid: number;
  /** ms since the epoch. */
  since: number;
}

/** Another server runs on this database: exit 2, naming the database and the process. */
class DatabaseInUseError extends StoreError {
  override name = 'DatabaseInUseError';
  constructor(
    db: string,
    holder: LockHolder | undefined,
    what = 'another mollysocket server',
    fix = 'one server per database: stop that one first, or give this one another db',
  ) {
    super(`${what} is running on the database ${db}${holder ? ` (pid ${holder.pid}, since ${new Date(holder.since).toISOString()})` : ' (starting)'}: ${fix}`);
  }
}

/**
 * How long taking the lock waits for another process that holds it only for a moment (a CLI command asking whether a
 * server runs, or a second server between its two steps); a running server holds it for good, and the wait ends.
 */
const MOMENT_MS = 1_000;

const isBusy = (err: unknown): boolean => (err as { code?: string }).code?.startsWith('SQLITE_BUSY') === true;

function openLockDb(path: string): Database.Database {
  const db = new Database(path);
  db.pragma(`busy_timeout = ${MOMENT_MS}`);
  if (db.pragma('journal_mode', { simple: true }) !== 'wal') db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE IF NOT EXISTS holder(id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, since INTEGER NOT NULL)');
  return db;
}

const readHolder = (db: Database.Database): LockHolder | undefined => db.prepare('SELECT pid, since FROM holder WHERE id = 1').get() as LockHolder | undefined;

/** Held for the server's life; `release` at a clean shutdown (death releases it too). */
export class ServerLock {
  private constructor(private readonly db: Database.Database) {}

  /**
   * Takes the lock of the SQLite database `dbPath`, or throws DatabaseInUseError. The holder's row is committed
   * first (readers see only what is committed) and the write lock taken again at once; whoever slipped in between
   * has written its own row, which this process then sees, lets go and finds the lock held.
   */
  static take(dbPath: string, pid = process.pid): ServerLock {
    const path = lockPath(dbPath);
    let db: Database.Database;
    try {
      db = openLockDb(path);
    } catch (err) {
      if (isBusy(err)) throw new DatabaseInUseError(resolve(dbPath), undefined);
      throw new StoreError(
        `cannot open the database ${dbPath} (setting "db"): cannot create its lock file ${path}: ${(err as Error).message}; ` +
          'check that the directory exists and is writable by this user',
        { cause: err },
      );
    }
    try {
      for (;;) {
        db.exec('BEGIN IMMEDIATE');
        db.prepare('INSERT INTO holder (id, pid, since) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, since = excluded.since').run(
          pid,
          Date.now(),
        );
        db.exec('COMMIT');
        db.exec('BEGIN IMMEDIATE');
        if (readHolder(db)?.pid === pid) return new ServerLock(db);
        db.exec('ROLLBACK');
      }
    } catch (err) {
      const holder = isBusy(err) ? readHolder(db) : undefined;
      db.close();
      if (isBusy(err)) throw new DatabaseInUseError(resolve(dbPath), holder);
      throw err;
    }
  }

  release(): void {
    if (this.db.open) this.db.close(); // rolls the open transaction back, which lets go of the lock
  }
}

/**
 * The server running on the SQLite database `dbPath`, if one does: for commands whose result a running server would
 * make wrong. It takes the lock for a moment, which a starting server waits out.
 */
export function serverOn(dbPath: string): { holder: LockHolder | undefined } | undefined {
  const path = lockPath(dbPath);
  if (!existsSync(path)) return undefined; // every server since this lock existed has made it
  const db = new Database(path);
  try {
    db.pragma('busy_timeout = 0');
    try {
      db.exec('BEGIN IMMEDIATE');
      db.exec('ROLLBACK');
      return undefined;
    } catch (err) {
      if (isBusy(err)) return { holder: readHolder(db) };
      throw new StoreError(`cannot tell whether a server runs on ${dbPath}: its lock file ${path}: ${(err as Error).message}`, { cause: err });
    }
  } finally {
    db.close();
  }
}

/**
 * A live lease row of the same name is either a running instance (it renews every third of a lease) or the row of
 * one killed a moment ago (kill -9: it stays live until its lease runs out, then the others reap it). It is watched
 * until it renews (running: refused) or its lease runs out (dead: the start goes on), so a restart after a crash is
 * never refused and waits at most one lease. Durations only, so the database's clock and ours need not agree.
 */
export async function refuseLiveNamesake(instances: () => Promise<InstanceRow[]>, name: string, leaseMs: number, db: string): Promise<void> {
  const namesakes = async () => (await instances()).filter((i) => i.name === name && i.live && !i.leaving);
  if ((await namesakes()).length === 0) return;
  const seenAt = Date.now();
  for (;;) {
    await new Promise((r) => setTimeout(r, leaseMs / 6));
    const live = await namesakes();
    if (live.length === 0) return;
    const renewed = live.find((i) => i.renewedAgoMs < Date.now() - seenAt);
    if (renewed) {
      throw new DatabaseInUseError(
        db,
        { pid: renewed.pid, since: renewed.startedAt },
        `another instance named ${JSON.stringify(name)}`,
        'each instance needs its own instance_name (MOLLY_INSTANCE_NAME): stop that one first, or name this one differently',
      );
    }
  }
}
