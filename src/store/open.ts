import { isPostgresUrl } from './location.js';
import { SqliteStore } from './sqlite.js';
import type { OpenMode, Store } from './store.js';

/**
 * Opens the store `db` names (setting "db" / MOLLY_DB). A SQLite file as `mode` says; PostgreSQL always has its
 * schema created and migrated (a server, not a file that a wrong directory would create).
 */
export async function openStore(db: string, opts: { mode?: OpenMode; busyTimeoutMs?: number } = {}): Promise<Store> {
  if (!isPostgresUrl(db)) return SqliteStore.open(db, opts);
  const { PostgresStore } = await import('./postgres.js');
  return PostgresStore.open(db, opts.mode === undefined ? {} : { mode: opts.mode });
}

