import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { Clock } from '../clock.js';
import { Leases } from '../cluster/leases.js';
import type { Ownership } from '../cluster/ownership.js';
import { Solo } from '../cluster/solo.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { clusterVapidKey, keptKeyPath, parsePrivateKey, publicKeyOf, resolveVapidKey, type ResolvedKey } from '../push/vapid.js';
import { isPostgresUrl } from './location.js';
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

/** What an ownership driver needs from the server. */
interface OwnershipContext {
  /** How often a file is checked for changes made by another process (the CLI). */
  pollMs: number;
  leaseSeconds: number;
  /** This instance's stable name (instance_name, else the host's). */
  name: string;
  version: string;
  /** How often an instance reads its whole owned set again, in case a notification was missed. */
  reconcileMs: number;
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
      keep: async (key) => {
        if (existsSync(keyFile)) {
          return readFileSync(keyFile, 'utf8').trim() === key
            ? `VAPID key: ${keyFile} already holds it`
            : `VAPID key: ${keyFile} holds another one; it was kept, so Molly users must scan a new code`;
        }
        writeFileSync(keyFile, `${key}\n`, { mode: 0o600, flag: 'wx' });
        return `VAPID key: copied to ${keyFile}, beside the database, where the server finds it`;
      },
    },
    heartbeats: { beat: (h) => store.beat(h) },
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
      new Leases(store, { leaseSeconds: ctx.leaseSeconds, name: ctx.name, version: ctx.version, reconcileMs: ctx.reconcileMs }, ctx.log, ctx.metrics),
    vapidKey: {
      resolve: async (config, { generate }) => {
        const none = config.vapid_key_file === undefined && config.vapid_privkey === undefined && (await store.setting('vapid_private_key')) === undefined;
        return none && !generate ? undefined : clusterVapidKey(config, store);
      },
      read: () => store.setting('vapid_private_key'),
      keep: async (key) => {
        const publicKey = publicKeyOf(parsePrivateKey(key, 'the kept VAPID key'));
        const kept = await store.setting('vapid_public_key', publicKey);
        if (kept !== publicKey) return `VAPID key: ${store.location} already has another one; it was kept, so Molly users must scan a new code`;
        await store.setting('vapid_private_key', key);
        return `VAPID key: copied into ${store.location}, where every instance finds it`;
      },
    },
    instances: () => store.instances({ counts: true }),
  };
}
