import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { planDowngrade, writeMollySocketDb } from '../downgrade.js';
import { serverOn } from '../lock.js';
import { keptKeyPath, parsePrivateKey, publicKeyOf, resolveVapidKey } from '../push/vapid.js';
import { isPostgresUrl, redactUrl } from '../store/location.js';
import { openStore } from '../store/open.js';
import { type Store } from '../store/store.js';
import {PostgresStore} from '../store/postgres.js';
import { ENDPOINT_GONE } from '../registrations.js';
import { formatTime, loadFor, print, UsageError, withStore } from './common.js';

/**
 * The server running on a database, in words, or undefined: SQLite, the one holding its lock; PostgreSQL, the live
 * instances.
 */
async function runningServer(store: Store, db: string): Promise<string | undefined> {
  if (store instanceof PostgresStore) {
    const live = (await store.instances()).filter((i) => i.live);
    return live.length === 0 ? undefined : `${live.length} instance(s) (${live.map((i) => `${i.name}, pid ${i.pid}`).join('; ')})`;
  }
  const running = serverOn(db);
  return running && `a server${running.holder ? ` (pid ${running.holder.pid})` : ''}`;
}

/** A copy taken while a server runs misses whatever it writes afterwards (registrations, forbidden connections). */
async function refuseWhileRunning(store: Store, db: string, force: boolean | undefined): Promise<string | undefined> {
  const running = await runningServer(store, db);
  if (running && !force) {
    throw new UsageError(
      `${running} is running on ${store instanceof PostgresStore ? store.location : resolve(store.location)}: what it writes after the copy would be lost; stop it first, or pass --force to copy anyway`,
    );
  }
  return running;
}

export function registerDb(program: Command): void {
  const db = program.command('db').description('the database (file or PostgreSQL)');

  db.command('downgrade')
    .description("write the configured database's connections to a new file that MollySocket 1.7 opens")
    .argument('<output-file>', 'the new file to write (never overwritten)')
    .option('--force', 'write it even while a server runs on the database')
    .action(async (output: string, opts: { force?: boolean }, cmd: Command) => {
      const loaded = loadFor(cmd);
      const { config } = loaded;
      if (existsSync(output)) {
        throw new UsageError(`output-file ${output} already exists: downgrade never overwrites a file, name a new one`);
      }
      const { plan, running } = await withStore(loaded, 'read', async (store) => {
        const running = await refuseWhileRunning(store, config.db, opts.force);
        return { plan: planDowngrade(await store.list()), running };
      });
      writeMollySocketDb(output, plan.kept);
      print(`Wrote ${plan.kept.length} connection(s) to ${output} in MollySocket 1.7's format (one per account).`);
      for (const { conn, keptInstead, because } of plan.leftOut) {
        print(
          `Left out: ${conn.uuid} device ${conn.deviceId} (${conn.forbidden ? 'forbidden' : 'ok'}, last registration ` +
            `${formatTime(conn.lastRegistration)}): MollySocket keeps one device per account; device ${keptInstead.deviceId} ` +
            `is kept because ${because}. MollySocket answers internal_error to that device's registrations while device ` +
            `${keptInstead.deviceId}'s connection is healthy.`,
        );
      }
      for (const c of plan.kept.filter((k) => k.forbiddenReason === ENDPOINT_GONE)) {
        print(
          `Forbidden: ${c.uuid} device ${c.deviceId} stopped because its push endpoint was gone; MollySocket answers ` +
            "`forbidden` to that Molly until it is linked again (this server would have taken a new endpoint).",
        );
      }
      const key = resolveVapidKey(config, { generate: false });
      if (key?.source === 'kept') {
        print(
          `VAPID key: MollySocket does not look for ${key.path}: set vapid_key_file = "${resolve(key.path as string)}" ` +
            '(MOLLY_VAPID_KEY_FILE) in its configuration, or Molly users must scan a new code.',
        );
      } else if (key) {
        print(`VAPID key: keep ${key.source} as it is in MollySocket's configuration, or Molly users must scan a new code.`);
      }
      print(`Next: ${running ? `stop ${running}, and ` : ''}start MollySocket with db = "${resolve(output)}".`);
    });

  registerDbCopy(db);
}

/** The generated VAPID key a store's server uses: in the database (PostgreSQL) or in the file beside it (SQLite). */
function keptKey(store: Store, db: string): Promise<string | undefined> | string | undefined {
  if (store instanceof PostgresStore) return store.setting('vapid_private_key');
  const path = keptKeyPath({ db });
  return existsSync(path) ? readFileSync(path, 'utf8').trim() : undefined;
}

/** The VAPID key a target's server already has, if any: its public half. */
async function targetKey(store: Store, db: string): Promise<string | undefined> {
  if (store instanceof PostgresStore) return store.setting('vapid_public_key');
  const path = keptKeyPath({ db });
  return existsSync(path) ? publicKeyOf(parsePrivateKey(readFileSync(path, 'utf8').trim(), path)) : undefined;
}

/** Keeps `key` where the target's server looks for it; a different key already there wins (only with --force). */
async function keepKey(store: Store, db: string, key: string): Promise<string> {
  const publicKey = publicKeyOf(parsePrivateKey(key, 'the kept VAPID key'));
  if (store instanceof PostgresStore) {
    const kept = await store.setting('vapid_public_key', publicKey);
    if (kept !== publicKey) return `VAPID key: ${redactUrl(db)} already has another one (${kept}); it was kept, so Molly users must scan a new code`;
    await store.setting('vapid_private_key', key);
    return `VAPID key: copied into ${redactUrl(db)}, where every instance finds it`;
  }
  const path = keptKeyPath({ db });
  if (existsSync(path)) {
    return readFileSync(path, 'utf8').trim() === key
      ? `VAPID key: ${path} already holds it`
      : `VAPID key: ${path} holds another one (${await targetKey(store, db)}); it was kept, so Molly users must scan a new code`;
  }
  writeFileSync(path, `${key}\n`, { mode: 0o600, flag: 'wx' });
  return `VAPID key: copied to ${path}, beside the database, where the server finds it`;
}

/** `db copy`: every connection, and the generated VAPID key, from one store into an empty one. */
function registerDbCopy(db: Command): void {
  db.command('copy')
    .description('copy every connection and the kept VAPID key into an empty database: a SQLite file to a PostgreSQL URL, or back')
    .argument('<from>', 'a SQLite file path or a postgres:// URL')
    .argument('<to>', 'a SQLite file path or a postgres:// URL, holding no connection yet')
    .option('--force', 'copy even while a server runs on <from>, or keep the VAPID key the target already has')
    .action(async (from: string, to: string, opts: { force?: boolean }) => {
      if (from === to) throw new UsageError('from and to are the same database: name another one as <to>');
      if (!isPostgresUrl(from) && !existsSync(from)) throw new UsageError(`from ${from} does not exist: name the database to copy`);
      const source = await openStore(from);
      try {
        const target = await openStore(to);
        try {
          const present = (await target.list()).length;
          if (present > 0) {
            throw new UsageError(`to ${target.location} already holds ${present} connection(s): copy into an empty database`);
          }
          await refuseWhileRunning(source, from, opts.force);
          const key = await keptKey(source, from);
          // Checked before anything is written: Molly signs up with the source's key, so another one means a new code.
          const theirs = key === undefined ? undefined : await targetKey(target, to);
          const ours = key === undefined ? undefined : publicKeyOf(parsePrivateKey(key, 'the kept VAPID key'));
          if (theirs !== undefined && theirs !== ours && !opts.force) {
            throw new UsageError(
              `to ${target.location} already has another VAPID key (public key ${theirs}) than from ${source.location} (public key ${ours}): ` +
                "Molly users would have to scan a new code; copy into a place without a key (move the target's vapid.key away), or pass --force to keep the target's key",
            );
          }
          const conns = await source.list();
          await target.importConnections(conns);
          print(`Copied ${conns.length} connection(s) from ${source.location} to ${target.location}.`);
          print(
            key
              ? await keepKey(target, to, key)
              : 'VAPID key: none kept with the source (it is configured): configure the same vapid_privkey or vapid_key_file for the target',
          );
        } finally {
          await target.close();
        }
      } finally {
        await source.close();
      }
    });
}
