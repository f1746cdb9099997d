import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { Clock } from '../clock.js';
import { Leases, type LeasesOptions } from '../cluster/leases.js';
import { PgLeaseStore } from '../cluster/postgres-leases.js';
import type { Ownership } from '../cluster/ownership.js';
import { Solo } from '../cluster/solo.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { clusterVapidKey, keptKeyPath, parsePrivateKey, publicKeyOf, resolveVapidKey, type ResolvedKey } from '../push/vapid.js';
import { isPostgresUrl } from './location.js';
import { refuseLiveNamesake, serverOn, ServerLock } from './lock.js';
import type { InstanceRow, PostgresStore } from './postgres.js';
import { SqliteStore } from './sqlite.js';
import { StoreError, type Heartbeat, type OpenMode, type Store } from './store.js';

/**
 * What a backend can do besides the queries of the `Store` contract, as its opening provides it: nothing outside
 * src/store/ asks which backend it has. A capability only one backend has is offered by that one alone.
 */
export interface Backend {
  readonly store: Store;
  /** What this open found or did that the user hears of. */
  readonly report: OpenReport;
  /** Which connections this process runs: every one of a file's (`Solo`), or its share on PostgreSQL (`Leases`). */
  ownership(ctx: OwnershipContext): Ownership;
  /** Where the generated VAPID key is kept: a file beside the database (SQLite), or the database (PostgreSQL). */
  readonly vapidKey: KeptVapidKey;
  /** A file's one server writes a heartbeat; instances on PostgreSQL renew their lease instead. */
  readonly heartbeats?: { beat(h: Heartbeat): Promise<void> };
  /** The instances sharing the database, for `status` (with how many devices each owns). */
  readonly instances?: () => Promise<InstanceRow[]>;
  /** The server(s) running on this database, in words (for commands whose result a running one would make wrong). */
  runningServer(): Promise<string | undefined>;
}

interface OpenReport {
  /** This open migrated MollySocket's file: the copy kept of it as it was. */
  migratedFrom: { backup: string } | undefined;
  /**
   * Opened for the server: the last server on this database did not stop cleanly (a file's heartbeat is still there),
   * so it may have acknowledged envelopes it never pushed. On PostgreSQL a dead instance's devices are claimed owing a
   * wake-up instead.
   */
  uncleanStop: boolean;
}

/** What an ownership driver needs from the server: what a lease driver takes, and how a file is followed. */
interface OwnershipContext extends LeasesOptions {
  /** How often a file is checked for changes made by another process (the CLI). */
  pollMs: number;
  /** A separate PostgreSQL URL for LISTEN (db_listen_url), when the main one goes through a pooler. */
  listenUrl: string | undefined;
  clock: Clock;
  log: Logger;
  metrics?: Metrics;
}

type KeyConfig = Pick<Config, 'vapid_key_file' | 'vapid_privkey'>;

interface KeptVapidKey {
  /**
   * The key a server or command signs with: the configured one, else the kept one; with `generate`, one is generated
   * and kept when there is none. On PostgreSQL every instance must sign with the same key: another one is refused.
   */
  resolve(config: KeyConfig, opts: { generate: boolean }): Promise<ResolvedKey | undefined>;
  /** The kept (generated) private key, for `db copy`. */
  read(): Promise<string | undefined>;
  /** The public half of the key kept for this database's servers, if one is. */
  publicKey(): Promise<string | undefined>;
  /** Keeps `key` for this database's servers unless another one is kept already: a line saying which happened. */
  keep(key: string): Promise<string>;
}

export interface OpenOptions {
  mode?: OpenMode;
  /** How long a statement of a file waits, blocking, for another process's lock. */
  busyTimeoutMs?: number;
  /** The server opens it: a vanished file is not recreated, and the last stop is reported. */
  server?: boolean;
}

/**
 * Opens the store `db` names (setting "db" / MOLLY_DB). A SQLite file as `mode` says; PostgreSQL always has its
 * schema created and migrated (a server, not a file that a wrong directory would create).
 */
export async function openStore(db: string, opts: OpenOptions = {}): Promise<Backend> {
  if (!isPostgresUrl(db)) return openSqlite(db, opts);
  const { PostgresStore } = await import('./postgres.js');
  return postgresBackend(await PostgresStore.open(db, opts.mode === undefined ? {} : { mode: opts.mode }));
}

async function openSqlite(path: string, opts: OpenOptions): Promise<Backend> {
  const keyFile = keptKeyPath({ db: path });
  if (opts.server) refuseVanished(path, keyFile);
  const store = SqliteStore.open(path, opts);
  return {
    store,
    report: {
      migratedFrom: store.migratedFrom,
      // A clean shutdown removes the heartbeat: one left behind means the last run ended without one.
      uncleanStop: opts.server === true && (await store.heartbeat()) !== undefined,
    },
    ownership: (ctx) => new Solo(store, ctx.pollMs, ctx.clock, ctx.log),
    vapidKey: {
      resolve: async (config, o) => resolveVapidKey({ ...config, db: path }, o),
      read: async () => (existsSync(keyFile) ? readFileSync(keyFile, 'utf8').trim() : undefined),
      publicKey: async () => (existsSync(keyFile) ? publicKeyOf(parsePrivateKey(readFileSync(keyFile, 'utf8').trim(), keyFile)) : undefined),
      keep: async (key) => {
        if (existsSync(keyFile)) {
          const kept = readFileSync(keyFile, 'utf8').trim();
          return kept === key
            ? `VAPID key: ${keyFile} already holds it`
            : `VAPID key: ${keyFile} holds another one (${publicKeyOf(parsePrivateKey(kept, keyFile))}); it was kept, so Molly users must scan a new code`;
        }
        writeFileSync(keyFile, `${key}\n`, { mode: 0o600, flag: 'wx' });
        return `VAPID key: copied to ${keyFile}, beside the database, where the server finds it`;
      },
    },
    heartbeats: { beat: (h) => store.beat(h) },
    runningServer: async () => {
      const running = serverOn(path);
      return running && `a server${running.holder ? ` (pid ${running.holder.pid})` : ''}`;
    },
  };
}

/**
 * A server ran here before (its kept VAPID key is beside the database) but the database is gone: starting would
 * silently create an empty one, and every registration would be lost for good.
 */
function refuseVanished(path: string, keyFile: string): void {
  if (existsSync(path) || !existsSync(keyFile)) return;
  throw new StoreError(
    `the database ${path} (setting "db") is missing, but the VAPID key kept beside it (${keyFile}) shows that a server ` +
      `ran here: restore the database from your backup, or create an empty one on purpose with \`touch ${path}\``,
  );
}

function postgresBackend(store: PostgresStore): Backend {
  return {
    store,
    report: { migratedFrom: undefined, uncleanStop: false },
    ownership: (ctx) =>
      new Leases(
        new PgLeaseStore(store, { answerMs: ctx.leaseSeconds * 1000, ...(ctx.listenUrl !== undefined && { listenUrl: ctx.listenUrl }) }),
        ctx,
        ctx.clock,
        ctx.log,
        ctx.metrics,
      ),
    vapidKey: {
      resolve: async (config, { generate }) => {
        const none = config.vapid_key_file === undefined && config.vapid_privkey === undefined && (await store.setting('vapid_private_key')) === undefined;
        return none && !generate ? undefined : clusterVapidKey(config, store);
      },
      read: () => store.setting('vapid_private_key'),
      publicKey: () => store.setting('vapid_public_key'),
      keep: async (key) => {
        const publicKey = publicKeyOf(parsePrivateKey(key, 'the kept VAPID key'));
        const kept = await store.setting('vapid_public_key', publicKey);
        if (kept !== publicKey) return `VAPID key: ${store.location} already has another one (${kept}); it was kept, so Molly users must scan a new code`;
        await store.setting('vapid_private_key', key);
        return `VAPID key: copied into ${store.location}, where every instance finds it`;
      },
    },
    instances: () => store.instances({ counts: true }),
    runningServer: async () => {
      const live = (await store.instances()).filter((i) => i.live);
      return live.length === 0 ? undefined : `${live.length} instance(s) (${live.map((i) => `${i.name}, pid ${i.pid}`).join('; ')})`;
    },
  };
}

/**
 * Refuses to start a second server on this database, before the server opens the store (so that it never takes a
 * live server's heartbeat for an unclean stop). A file: its lock, held until the process ends. PostgreSQL: no live
 * instance of the same name (two would claim the same share of the devices).
 */
export async function claimServer(db: string, name: string, leaseMs: number): Promise<ServerLock | undefined> {
  if (!isPostgresUrl(db)) return ServerLock.take(db);
  const { PostgresStore } = await import('./postgres.js');
  const store = await PostgresStore.open(db);
  try {
    await refuseLiveNamesake(() => store.instances(), name, leaseMs, store.location);
  } finally {
    await store.close();
  }
  return undefined;
}
